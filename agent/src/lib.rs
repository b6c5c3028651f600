//! plugnet-agent: the per-host daemon of plugnet.
//!
//! One process per host, independent tasks started by [`runtime`], each in its own module:
//! - [`blocks`]: per cluster network, the address blocks this host holds (claimed ahead of
//!   demand by etcd transaction, returned after a cooldown, resynced after outages), written to
//!   the local state plugnet-ipam allocates from;
//! - [`socket`]: the local socket plugnet-ipam asks when its blocks are full;
//! - [`dataplane`]: per cluster network, the routes / VXLAN entries to other hosts' blocks;
//! - [`metrics`]: Prometheus exposition;
//! - [`names`]: the name resolver, with and without `--etcd`.
//!
//! Without `--etcd` the cluster tasks do not run (single host): the socket and metrics do,
//! and so will the tasks later issues add (the data plane, the name resolver) — each a module
//! started from [`runtime`]. [`schema`] is the layout in etcd; [`state`] owns the local state
//! dir; [`etcd`] the client.

pub mod blocks;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod etcd;
pub mod host;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod reclaim;
pub mod runtime;
pub mod schema;
pub mod socket;
pub mod state;
