//! Who this host is: its name, a stable id (from the machine id and the name, kept in the state
//! dir), the VTEP MAC derived from the id (so a reboot changes nothing a peer programmed), and
//! its underlay address.
//!
//! Invariant: the id of a state dir never changes once written; the MAC is a pure function of it.

use anyhow::{bail, Context, Result};
use std::net::{IpAddr, UdpSocket};

pub fn hostname() -> Result<String> {
    let h = nix::unistd::gethostname().context("read the hostname (pass --host NAME)")?;
    let h = h
        .into_string()
        .map_err(|_| anyhow::anyhow!("the hostname is not UTF-8 (pass --host NAME)"))?;
    // A fully qualified hostname names the host by its first label, as kubelet does.
    Ok(h.split('.').next().unwrap_or_default().to_string())
}

/// The source address the kernel picks for the default route (no packet is sent).
pub fn default_underlay() -> Result<IpAddr> {
    for (bind, probe) in [("0.0.0.0:0", "192.0.2.1:9"), ("[::]:0", "[2001:db8::1]:9")] {
        let Ok(s) = UdpSocket::bind(bind) else {
            continue;
        };
        if s.connect(probe).is_ok() {
            if let Ok(a) = s.local_addr() {
                if !a.ip().is_unspecified() {
                    return Ok(a.ip());
                }
            }
        }
    }
    bail!("no default route")
}

/// FNV-1a, 64 bits: a stable hash (std's `DefaultHasher` may change between Rust releases).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A new id for host `name` on this machine: derived from `/etc/machine-id` (the same after a
/// reinstall of the agent's state), random where the machine has none.
pub fn derive_id(name: &str) -> String {
    let seed = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let mut b = [0u8; 16];
            let _ = std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
            b.iter().map(|x| format!("{x:02x}")).collect()
        });
    let a = fnv1a(format!("{seed}\0{name}").as_bytes());
    let b = fnv1a(format!("{name}\0{seed}").as_bytes());
    format!("{a:016x}{b:016x}")
}

/// The VTEP MAC of host `id`: locally administered, unicast, from the id's first bytes.
pub fn vtep_mac(id: &str) -> String {
    let h = fnv1a(id.as_bytes()).to_be_bytes();
    let first = (h[0] & 0xfe) | 0x02;
    format!(
        "{first:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[1], h[2], h[3], h[4], h[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_macs_are_stable_and_distinct() {
        assert_eq!(derive_id("a"), derive_id("a"));
        assert_ne!(derive_id("a"), derive_id("b"));
        assert_eq!(derive_id("a").len(), 32);
        let m = vtep_mac("0123456789abcdef0123456789abcdef");
        assert_eq!(m, vtep_mac("0123456789abcdef0123456789abcdef"));
        let first = u8::from_str_radix(&m[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "locally administered unicast: {m}");
        // Golden: the derivation never changes (peers programmed it). FNV-1a 64 of "a" is the
        // published test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(vtep_mac("a"), "ae:63:dc:4c:86:01");
    }
}
