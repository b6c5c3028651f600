//! plugnet: CNI plugin library — protocol core, IPAM, netlink vocabulary and the bridge plugin.

pub mod netlink;
pub mod netns;
