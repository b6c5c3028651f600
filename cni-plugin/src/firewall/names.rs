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
    fn chains_are_named_by_the_attachment_key() {
        assert_eq!(egress_chain("0123456789abcdef"), "c-0123456789abcdef-out");
    }
}
