//! The identity of one attachment, `{network, container id, ifname}`, and every name derived
//! from it: the host veth, its owner alias and birth MAC, the ifb device that shapes it, the
//! firewall's key and the IPAM store's owner. DEL, CHECK and GC find everything an ADD made
//! from the identity alone, without the container's namespace.
//!
//! Invariant: no derivation ever changes between releases (FNV-1a 64, fixed separators), or DEL
//! after an upgrade would miss what was created before it; the tests pin each one.

use crate::ipam::Owner;
use crate::netlink::Mac;
use crate::skel::Request;

/// One attachment: a container's interface `ifname` on `network`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentId {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentId {
    pub fn new(
        network: impl Into<String>,
        container_id: impl Into<String>,
        ifname: impl Into<String>,
    ) -> AttachmentId {
        AttachmentId {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// The attachment a CNI request is about.
    pub fn of(req: &Request) -> AttachmentId {
        AttachmentId::new(&req.config.name, &req.container_id, &req.ifname)
    }

    /// The host-side veth ([`host_veth_name`]).
    pub fn host_veth(&self) -> String {
        host_veth_name(&self.container_id, &self.ifname)
    }

    /// The alias marking the host veth as the network's ([`owner_alias`]).
    pub fn alias(&self) -> String {
        owner_alias(&self.network)
    }

    /// The host veth's MAC from birth ([`owner_mac`]).
    pub fn host_mac(&self) -> Mac {
        owner_mac(&self.network, &self.host_veth())
    }

    /// The ifb device that shapes the attachment's ingress: `pnb` + 12 hex digits (≤ 15
    /// bytes).
    pub fn ifb(&self) -> String {
        format!("pnb{}", &self.firewall_key()[..12])
    }

    /// The digest naming the attachment's firewall objects (chains, state file).
    pub fn firewall_key(&self) -> String {
        digest(&[&self.network, &self.container_id, &self.ifname])
    }

    /// The owner of the attachment's addresses in the IPAM store (one store per network).
    pub fn store_owner(&self) -> Owner {
        Owner::new(self.container_id.clone(), self.ifname.clone())
    }
}

/// Every host veth plugnet creates starts with this.
pub const HOST_VETH_PREFIX: &str = "pn";
const HEX_DIGITS: usize = 13;

/// FNV-1a, 64 bit: tiny, stable across Rust versions (unlike `DefaultHasher`).
pub(crate) fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The host-side veth name of the attachment `(container_id, ifname)`: `pn` + 13 hex digits
/// of a stable hash; 15 bytes, the kernel's limit. (The network is not part of it: one
/// container interface has one host veth.)
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(&[container_id.as_bytes(), b"\0", ifname.as_bytes()]);
    let hex = format!("{h:016x}");
    format!("{HOST_VETH_PREFIX}{}", &hex[..HEX_DIGITS])
}

/// True if `name` has the shape of a name [`host_veth_name`] produces.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_VETH_PREFIX.len() + HEX_DIGITS
        && name.starts_with(HOST_VETH_PREFIX)
        && is_lower_hex(&name[HOST_VETH_PREFIX.len()..])
}

/// `pnb` + 12 lowercase hex digits: the shape of [`AttachmentId::ifb`].
pub fn is_ifb_name(name: &str) -> bool {
    name.len() == 15 && name.starts_with("pnb") && is_lower_hex(&name[3..])
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The alias marking a host veth as belonging to `network`. The kernel ignores IFLA_IFALIAS
/// in the request that creates a link, so the alias comes one request later; see
/// [`owner_mac`] for the mark the veth carries from birth.
pub fn owner_alias(network: &str) -> String {
    format!("plugnet:{network}")
}

/// The host veth's MAC address, set in the request that creates the pair: a locally
/// administered unicast address hashed (FNV-1a) from the network and the host veth's name.
/// A veth whose ADD was killed before its alias was set is still recognisable as
/// `network`'s: GC and `plugnet gc` accept either mark. (46 hashed bits: two host veths
/// sharing one is a 1-in-10^13 event per pair.)
pub fn owner_mac(network: &str, host_veth: &str) -> Mac {
    let h = fnv1a64(&[
        b"plugnet-veth",
        b"\0",
        network.as_bytes(),
        b"\0",
        host_veth.as_bytes(),
    ]);
    let mut m = [0u8; 6];
    m.copy_from_slice(&h.to_be_bytes()[..6]);
    m[0] = (m[0] & 0xfc) | 0x02;
    Mac(m)
}

/// Whether a host veth `name` with `alias` and `mac` is `network`'s: its alias says so, or,
/// without an alias (its ADD was killed before the alias was set), its birth MAC does.
pub fn owned_by(network: &str, name: &str, alias: Option<&str>, mac: Option<Mac>) -> bool {
    match alias {
        Some(a) => a == owner_alias(network),
        None => mac == Some(owner_mac(network, name)),
    }
}

/// 64-bit FNV-1a over parts joined by 0xff; stable across builds and platforms (identifiers
/// outlive the process).
pub fn digest(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a.len(), 15);
        assert!(is_host_veth_name(&a));
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert_ne!(a, host_veth_name("c1", "eth1"));
        assert_ne!(a, host_veth_name("c2", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
        // Pinned value: changing the derivation breaks DEL of existing containers.
        assert_eq!(
            host_veth_name("c1", "eth0"),
            format!(
                "pn{}",
                &format!("{:016x}", fnv1a64(&[b"c1", b"\0", b"eth0"]))[..13]
            )
        );
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn shape_check_rejects_other_links() {
        for n in [
            "pnbv0",
            "pn123",
            "eth0",
            "pn0123456789abcz",
            "pn0123456789ABC",
            "xx0123456789abc",
        ] {
            assert!(!is_host_veth_name(n), "{n}");
        }
        assert!(is_ifb_name(&AttachmentId::new("n", "c", "eth0").ifb()));
        assert!(!is_ifb_name("pnb0"));
        assert!(!is_ifb_name("pnbXXXXXXXXXXXX"));
    }

    #[test]
    fn every_derived_name_is_pinned() {
        let id = AttachmentId::new("net-a", "c1", "eth0");
        assert_eq!(id.host_veth(), host_veth_name("c1", "eth0"));
        assert_eq!(id.alias(), "plugnet:net-a");
        assert_eq!(id.host_mac(), owner_mac("net-a", &id.host_veth()));
        // The firewall key and the ifb name share one digest (chains, state files and ifb
        // devices made by earlier releases are found again).
        assert_eq!(id.firewall_key(), digest(&["net-a", "c1", "eth0"]));
        assert_eq!(digest(&["a"]), "af63dc4c8601ec8c");
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_eq!(id.ifb(), format!("pnb{}", &id.firewall_key()[..12]));
        assert_eq!(id.store_owner(), Owner::new("c1", "eth0"));
    }

    #[test]
    fn the_birth_mac_is_local_unicast_stable_and_names_the_network() {
        let m = owner_mac("net-a", "pn0123456789abc");
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast: {m}");
        assert_eq!(m, owner_mac("net-a", "pn0123456789abc"));
        assert_ne!(m, owner_mac("net-b", "pn0123456789abc"));
        assert_ne!(m, owner_mac("net-a", "pn0123456789abd"));
        let name = "pn0123456789abc";
        assert!(owned_by("net-a", name, Some("plugnet:net-a"), None));
        assert!(!owned_by("net-b", name, Some("plugnet:net-a"), Some(m)));
        assert!(owned_by("net-a", name, None, Some(m)));
        assert!(!owned_by("net-b", name, None, Some(m)));
    }
}
