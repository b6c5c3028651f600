//! plugnet-shim: a Docker libnetwork remote NetworkDriver + IpamDriver that runs CNI plugins.
//!
//! `server` speaks Docker's plugin protocol (wire types in `api`) and routes each call to the
//! `driver` (networks, endpoints, Join) or `ipam` (pools, addresses) half of one `Driver`,
//! which keeps its `state` on disk and does CNI work through the `backend::CniBackend` trait;
//! `cni` is the real backend (libcni + the IPAM store), `netns` its staging namespaces,
//! `adapter` what it knows about plugnet as the plugin (holds, firewall repair).

pub mod adapter;
pub mod api;
pub mod backend;
pub mod cni;
pub mod driver;
pub mod ipam;
pub mod metrics;
pub mod netns;
pub mod server;
pub mod state;
pub mod status;
#[cfg(test)]
mod tests;
pub mod translate;
pub mod validate;
