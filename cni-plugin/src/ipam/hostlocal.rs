//! host-local's lease files, honoured inside a plugnet-ipam store so a host can switch a live
//! network from `host-local` to `plugnet-ipam` (same network name, same `dataDir`): both keep
//! a network's state in `<dataDir>/<network>/` and lock the same `lock` file.
//!
//! host-local's layout (containernetworking/plugins, `backend/disk`): one regular file per held
//! address named by the address, holding `<containerID>\r\n<ifname>` (only `<containerID>` before
//! v0.8), and `last_reserved_ip.<rangeSet>` holding its round-robin position.
//!
//! Invariant: plugnet never creates these files. A lease is held for allocation, named by
//! `plugnet ipam ls`, and removed only when its owner is released (DEL, GC, `ipam release`);
//! a lease that cannot be read is a damaged entry (held, reported), never a free address.

use super::store::entries::{Claim, Owner};
use std::fs;
use std::io::{self, ErrorKind, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// host-local's round-robin hint of range set `i`.
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Longer than any lease host-local writes (a 200-byte id, CRLF, a 15-byte ifname).
const MAX_LEASE_BYTES: u64 = 1024;

pub fn lease_path(dir: &Path, ip: IpAddr) -> PathBuf {
    dir.join(ip.to_string())
}

/// The owner a lease names: `id\r\nifname`, `id\nifname`, or a bare `id` (old host-local;
/// the ifname is then empty and matches every interface of that container).
pub fn parse(content: &str) -> Result<Owner, String> {
    let text = content.trim();
    let (id, ifname) = match text.split_once('\n') {
        Some((id, ifname)) => (id.trim_end_matches('\r'), ifname.trim()),
        None => (text, ""),
    };
    if !crate::validate::is_valid_id(id) {
        return Err(format!("lease content {text:?} names no container"));
    }
    if !ifname.is_empty() {
        crate::validate::interface_name(ifname).map_err(|e| format!("lease content: {e}"))?;
    }
    Ok(Owner::new(id, ifname))
}

/// Whether a lease naming `lease` belongs to `owner` (a bare-id lease: any of its interfaces).
pub fn owned_by(lease: &Owner, owner: &Owner) -> bool {
    lease.container_id == owner.container_id
        && (lease.ifname.is_empty() || lease.ifname == owner.ifname)
}

/// The lease of `ip` in `dir`, if host-local left one.
pub fn read_lease(dir: &Path, ip: IpAddr) -> io::Result<Option<Claim>> {
    let path = lease_path(dir, ip);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
            return Ok(Some(Claim::Damaged(format!("host-local lease: {e}"))))
        }
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(Some(Claim::Damaged(
            "host-local lease is not a regular file".into(),
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_LEASE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_LEASE_BYTES {
        return Ok(Some(Claim::Damaged(format!(
            "host-local lease longer than {MAX_LEASE_BYTES} bytes"
        ))));
    }
    Ok(Some(
        match std::str::from_utf8(&bytes).map_err(|_| "host-local lease is not UTF-8".to_string()) {
            Ok(text) => match parse(text) {
                Ok(owner) => Claim::HostLocal(owner),
                Err(why) => Claim::Damaged(format!("host-local {why}")),
            },
            Err(why) => Claim::Damaged(why),
        },
    ))
}

/// Every lease in `dir`, by address.
pub fn leases(dir: &Path) -> io::Result<Vec<(IpAddr, Claim)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let Some(ip) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if let Some(claim) = read_lease(dir, ip)? {
            out.push((ip, claim));
        }
    }
    out.sort_by_key(|(ip, _)| *ip);
    Ok(out)
}

/// When host-local wrote the lease of `ip` (seconds since the epoch; 0 when unknown).
pub fn since(dir: &Path, ip: IpAddr) -> u64 {
    fs::metadata(lease_path(dir, ip))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// host-local's round-robin position in range set `set` (a hint: unreadable is none).
pub fn last_reserved(dir: &Path, set: usize) -> Option<IpAddr> {
    let mut text = String::new();
    fs::File::open(dir.join(format!("{LAST_RESERVED_PREFIX}{set}")))
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_in_every_format_host_local_wrote() {
        assert_eq!(parse("c1\r\neth0").unwrap(), Owner::new("c1", "eth0"));
        assert_eq!(parse("c1\neth0\n").unwrap(), Owner::new("c1", "eth0"));
        assert_eq!(parse("c1").unwrap(), Owner::new("c1", ""));
        for bad in ["", "../x\r\neth0", "c1\r\na/b", "é"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let bare = Owner::new("c1", "");
        assert!(owned_by(&bare, &Owner::new("c1", "eth3")));
        assert!(!owned_by(
            &Owner::new("c1", "eth0"),
            &Owner::new("c1", "eth1")
        ));
        assert!(!owned_by(&bare, &Owner::new("c2", "eth0")));
    }

    #[test]
    fn a_directory_of_leases_reads_as_claims_and_damage() {
        let d = tempfile::tempdir().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        fs::write(d.path().join("10.0.0.2"), "c1\r\neth0").unwrap();
        fs::write(d.path().join("fd00::2"), "c2").unwrap();
        fs::write(d.path().join("10.0.0.3"), [0xff, 0xfe]).unwrap();
        fs::create_dir(d.path().join("10.0.0.4")).unwrap();
        fs::write(d.path().join("lock"), "").unwrap();
        fs::write(d.path().join("last_reserved_ip.0"), "10.0.0.3\n").unwrap();
        let got = leases(d.path()).unwrap();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(
            got[0],
            (ip("10.0.0.2"), Claim::HostLocal(Owner::new("c1", "eth0")))
        );
        assert!(matches!(got[1].1, Claim::Damaged(_)));
        assert!(matches!(got[2].1, Claim::Damaged(_)));
        assert_eq!(
            got[3],
            (ip("fd00::2"), Claim::HostLocal(Owner::new("c2", "")))
        );
        assert_eq!(read_lease(d.path(), ip("10.0.0.9")).unwrap(), None);
        assert_eq!(last_reserved(d.path(), 0), Some(ip("10.0.0.3")));
        assert_eq!(last_reserved(d.path(), 1), None);
        assert!(since(d.path(), ip("10.0.0.2")) > 0);
    }
}
