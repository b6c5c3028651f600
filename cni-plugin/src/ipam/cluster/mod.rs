//! Cluster networks in plugnet-ipam: `"ipam": {"type": "plugnet-ipam", "cluster": "NAME"}`
//! allocates only inside the address blocks plugnet-agent holds for this host ([`local`]),
//! with the files-with-lock store and its guarantees; when they are full it asks the agent for
//! another block over its local socket ([`ask`]) and waits at most [`GROW_WAIT`].
//!
//! Invariant: nothing here talks to etcd or links its client; DEL touches only the local
//! store.

pub mod alloc;
pub mod ask;
pub mod local;

pub use local::DEFAULT_AGENT_DIR;

/// The MTU the agent wrote for the cluster network a configuration names (`ipam.cluster`),
/// read after the IPAM ADD (the network file exists by then): the bridge and veths of a
/// cluster network get it when the configuration sets no `mtu` (underlay − 50 for VXLAN).
pub fn mtu_of(raw: &serde_json::Value) -> Option<u32> {
    let c = alloc::ClusterRef::of(raw).ok()??;
    local::NetworkFile::read(&c.agent_dir, &c.network)
        .ok()??
        .mtu
}

/// The subnets of the cluster network a configuration names (empty: none, or no network
/// file): traffic between its containers keeps its source address even with ipMasq.
pub fn subnets_of(raw: &serde_json::Value) -> Vec<IpNetwork> {
    let Ok(Some(c)) = alloc::ClusterRef::of(raw) else {
        return Vec::new();
    };
    match local::NetworkFile::read(&c.agent_dir, &c.network) {
        Ok(Some(f)) => f.subnets,
        _ => Vec::new(),
    }
}

/// The longest an ADD waits for the agent to find room.
pub const GROW_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

use super::config::{from_u128, to_u128, Range};
use ipnetwork::IpNetwork;

/// The allocatable range of a block, as host-local treats a subnet: its first address is the
/// gateway (on the bridge in bridge mode), the network address and (IPv4) the broadcast address
/// are never handed out — 61 addresses in a /26, 62 in a /122.
pub fn block_range(block: IpNetwork) -> Range {
    let v4 = block.is_ipv4();
    let net = to_u128(block.network());
    let bits = if v4 { 32 } else { 128 };
    let host_bits = u32::from(bits - block.prefix());
    let last = net | u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    Range {
        subnet: block,
        start: from_u128(net + 1, v4),
        end: from_u128(if v4 { last - 1 } else { last }, v4),
        gateway: Some(from_u128(net + 1, v4)),
    }
}

/// How many addresses a block gives containers.
pub fn block_capacity(block: IpNetwork) -> u64 {
    block_range(block).size().min(u128::from(u64::MAX)) as u64
}
