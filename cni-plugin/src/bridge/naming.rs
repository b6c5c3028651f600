//! Host-side veth names derived from the attachment: `pn` + 13 hex digits of a stable hash of
//! (container id, ifname). DEL, CHECK and GC find the host side from the attachment alone,
//! without the container's namespace.
//!
//! Invariant: the derivation never changes between releases (FNV-1a 64, fixed separator), or
//! DEL after an upgrade would miss veths created before it.

/// Every host veth plugnet creates starts with this.
pub const PREFIX: &str = "pn";
const HEX_DIGITS: usize = 13;

/// FNV-1a, 64 bit: tiny, stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The host-side veth name of the attachment `(container_id, ifname)`; 15 bytes, the kernel's
/// limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(&[container_id.as_bytes(), b"\0", ifname.as_bytes()]);
    let hex = format!("{h:016x}");
    format!("{PREFIX}{}", &hex[..HEX_DIGITS])
}

/// True if `name` has the shape of a name [`host_veth_name`] produces.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == PREFIX.len() + HEX_DIGITS
        && name.starts_with(PREFIX)
        && name[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
    }
}
