//! Cluster networks in plugnet-ipam: `"ipam": {"type": "plugnet-ipam", "cluster": "NAME"}`
//! allocates only inside the address blocks plugnet-agent holds for this host ([`local`]),
//! with the files-with-lock store and its guarantees; when they are full it asks the agent for
//! another block over its local socket ([`ask`]) and waits at most [`GROW_WAIT`].
//!
//! Invariant: nothing here talks to etcd or links its client; DEL touches only the local
//! store.

pub mod ask;
pub mod local;

pub use local::DEFAULT_AGENT_DIR;

/// The longest an ADD waits for the agent to find room.
pub const GROW_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
