//! Validation of every name or id that can reach a path, an interface name or a firewall
//! identifier.
//!
//! Invariant: a value that passed these checks contains no `/`, no NUL, is not `.` or `..`, and
//! fits the kernel's and filesystem's limits.

use crate::error::{CniError, ErrorCode};

/// Longest container id or network name plugnet stores (file names are ≤ 255 bytes and hold an
/// id and an ifname).
pub const MAX_ID_LEN: usize = 200;
/// IFNAMSIZ - 1.
pub const MAX_IFNAME_LEN: usize = 15;

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, the charset libcni enforces for container ids and network names.
pub fn is_valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    s.len() <= MAX_ID_LEN && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

pub fn container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            "missing containerID",
        ));
    }
    if !is_valid_id(id) {
        return Err(CniError::env(format!(
            "invalid characters in containerID {id:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]* and be at most {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

pub fn network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::config("missing network name"));
    }
    if !is_valid_id(name) {
        return Err(CniError::config(format!(
            "invalid characters in network name {name:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]* and be at most {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

/// The kernel's and libcni's rules for interface names.
pub fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "interface name {name:?} is longer than {MAX_IFNAME_LEN} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(format!(
            "interface name {name:?} contains '/', ':', NUL or whitespace"
        ));
    }
    Ok(())
}

pub fn ifname_env(name: &str) -> Result<(), CniError> {
    interface_name(name).map_err(|e| CniError::env(format!("CNI_IFNAME: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc-1.2_3", "0f3e", "X"] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "-a",
            ".a",
            "a/b",
            "a b",
            "a:b",
            "ä",
            &"a".repeat(201),
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        assert_eq!(
            container_id("").unwrap_err().code,
            ErrorCode::UnknownContainer
        );
        assert_eq!(
            container_id("../x").unwrap_err().code,
            ErrorCode::InvalidEnv
        );
        assert_eq!(
            network_name("../x").unwrap_err().code,
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "a", "x".repeat(15).as_str(), "veth-1@x"] {
            assert!(interface_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", &"x".repeat(16)] {
            assert!(interface_name(bad).is_err(), "{bad:?}");
        }
    }
}
