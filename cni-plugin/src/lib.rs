//! plugnet: container networking for every CNI runtime and for Docker.
//!
//! The library holds all logic; the binaries (`plugnet`, `plugnet-ipam`) are thin.
//! - [`skel`]: the CNI dispatcher (env + stdin in, result or error out), unit-testable.
//! - [`types`], [`version`], [`error`], [`args`], [`validate`]: the protocol core.
//! - [`ipam`]: plugnet-ipam, the files-with-lock address store.
//! - [`invoke`] and [`libcni`]: running other plugins and whole network lists, as libcni does.
//! - [`netlink`] and [`netns`]: the only code that talks rtnetlink / enters namespaces.
//! - [`bridge`]: the `plugnet` bridge plugin (Linux bridge + veth + routes).
//! - [`runner`] and [`cli`]: ordered network lists for a container (`plugnet up/down/…`).
//! - [`ops`]: day-two operations (`plugnet ipam ls|release`, `plugnet gc`); [`log`]: plugin logging.
//! - [`firewall`]: nftables masquerading, port mappings, egress rules, Docker coexistence.
//! - [`tc`]: bandwidth shaping policy (tbf, ifb) over the netlink vocabulary.
//! - [`names`]: the name records the resolver (plugnet-agent) serves (`"resolver": true`).
//! - [`heap`]: the allocator the plugin executables run on.

pub mod args;
pub mod attachment;
pub mod attachment_lock;
pub mod bridge;
pub mod cli;
pub mod error;
pub mod firewall;
pub mod fsutil;
pub mod heap;
pub mod invoke;
pub mod ipam;
pub mod libcni;
pub mod log;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod ops;
pub mod runner;
pub mod skel;
pub mod tc;
pub mod types;
pub mod validate;
pub mod version;

pub use error::{CniError, ErrorCode};
pub use skel::{Command, Request};
pub use types::CniResult;
pub use version::CniVersion;
