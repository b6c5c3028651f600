//! Names: charset checks for everything user-supplied, and the short stable nftables identifiers
//! derived from it; invariant: no user string reaches an nftables identifier — identifiers are
//! fixed prefixes plus hex digests, and interface names are checked before they become match data.

use super::FirewallError;

/// CNI's rule for container ids and network names (the workspace's one definition,
/// [`crate::validate::is_valid_id`]).
pub fn check_cni_name(what: &str, s: &str) -> Result<(), FirewallError> {
    if crate::validate::is_valid_id(s) {
        Ok(())
    } else {
        Err(FirewallError::Invalid(format!(
            "{what} {s:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ (at most {} bytes)",
            crate::validate::MAX_ID_LEN
        )))
    }
}

/// A Linux interface name: 1..=15 bytes, not `.`/`..`, and (stricter than the kernel) only
/// `[A-Za-z0-9_.@+-]` so that it is safe in logs, file names and iptables arguments.
pub fn check_ifname(what: &str, s: &str) -> Result<(), FirewallError> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FirewallError::Invalid(format!(
            "{what} {s:?} must be 1-15 bytes of [A-Za-z0-9_.@+-]"
        )))
    }
}

/// 64-bit FNV-1a; stable across builds and platforms (identifiers outlive the process).
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

/// The digest naming one attachment's objects (chains, state file).
pub fn attachment_key(network: &str, container_id: &str, ifname: &str) -> String {
    digest(&[network, container_id, ifname])
}

/// Per-container egress chain (netOut).
pub fn egress_chain(key: &str) -> String {
    format!("c-{key}-out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_names() {
        assert!(check_cni_name("x", "a1_.-b").is_ok());
        for bad in ["", "-a", "a b", "a/b", "a;b", "ä"] {
            assert!(check_cni_name("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("x", "veth0@x+1").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "0123456789abcdef",
            "a\"b",
        ] {
            assert!(check_ifname("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_stable_and_separate_parts() {
        assert_eq!(digest(&["a"]), digest(&["a"]));
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_eq!(attachment_key("n", "c", "eth0").len(), 16);
        assert_eq!(egress_chain("0123456789abcdef"), "c-0123456789abcdef-out");
        // FNV-1a reference value for "a".
        assert_eq!(digest(&["a"]), "af63dc4c8601ec8c");
    }
}
