//! [`FileStore`]: plugnet-ipam's store on disk, a directory per network of symlinks under a
//! lock (the layout below); invariant: every mutation is one atomic filesystem call, and every
//! directory a mutation changed is fsynced before the operation reports success.

use std::fs;
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::entries::*;
use crate::ipam::hostlocal;

/// Files with a lock, one directory per network:
///
/// ```text
/// <dataDir>/<network>/format            "plugnet-ipam store 1"
/// <dataDir>/<network>/lock              flock(2) target
/// <dataDir>/<network>/ip/<ip>           symlink → "<containerID>:<ifname>"   (a claim)
/// <dataDir>/<network>/owner/<id>:<if>   symlink → "attached <ip> [<ip>…]"     (a record)
/// <dataDir>/<network>/last_reserved.<i> symlink → "<ip>"   (round-robin hint, range set i)
/// ```
///
/// Claims and records are symlinks: `symlink(2)` creates one atomically and exclusively
/// (EEXIST), with its content, in a single system call, so there is no window in which a file
/// exists half-written; replacements go through a temporary symlink and `rename(2)`. Every
/// directory a mutation changed is fsynced before the operation reports success (the round-robin
/// hint excepted: losing it only changes where the next search starts).
pub struct FileStore {
    dir: PathBuf,
    ip_dir: PathBuf,
    owner_dir: PathBuf,
    /// Directories changed since the last sync: bit 0 `ip/`, bit 1 `owner/`, bit 2 the top.
    dirty: std::cell::Cell<u8>,
}

const DIRTY_IP: u8 = 1;
const DIRTY_OWNER: u8 = 2;
const DIRTY_TOP: u8 = 4;

impl FileStore {
    /// The store of `network` under `data_dir`. With `create`, directories and the format
    /// marker are made on first use; without it, a missing store is `Ok(None)`.
    pub fn open(data_dir: &Path, network: &str, create: bool) -> io::Result<Option<FileStore>> {
        let dir = data_dir.join(network);
        let store = FileStore {
            ip_dir: dir.join("ip"),
            owner_dir: dir.join("owner"),
            dir,
            dirty: std::cell::Cell::new(0),
        };
        match fs::read_to_string(store.dir.join("format")) {
            Ok(f) if f.trim_end() == FORMAT => return Ok(Some(store)),
            Ok(f) => {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "{}: unsupported store format {:?} (this plugnet reads {FORMAT:?})",
                        store.dir.display(),
                        f.trim_end()
                    ),
                ))
            }
            // host-local's directory of the same network (a host that switched to plugnet-ipam
            // and has not allocated through it yet): its leases are still to be honoured.
            Err(e) if e.kind() == ErrorKind::NotFound && !create => {
                return Ok(store.dir.is_dir().then_some(store))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for d in [&store.ip_dir, &store.owner_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        let tmp = store.dir.join(format!(".format.{}", std::process::id()));
        fs::write(&tmp, format!("{FORMAT}\n"))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, store.dir.join("format"))?;
        sync_dir(&store.dir)?;
        Ok(Some(store))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates and removes a claim-shaped symlink in `ip/`, as an ADD would: fails when the
    /// store cannot take a claim (read-only remount, no inodes, quota). Named like a writer's
    /// temporary, so GC sweeps one a kill left behind.
    pub fn probe_writable(&self) -> io::Result<()> {
        let probe = self
            .ip_dir
            .join(format!(".probe.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&probe);
        symlink("probe", &probe)?;
        fs::remove_file(&probe)
    }

    fn read_link(path: &Path) -> io::Result<Option<String>> {
        match fs::read_link(path) {
            Ok(t) => t
                .into_os_string()
                .into_string()
                .map(Some)
                .map_err(|_| io::Error::new(ErrorKind::InvalidData, "non-UTF-8 link")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            // Something other than a symlink where plugnet keeps only symlinks.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(io::Error::new(
                ErrorKind::InvalidData,
                "not a symbolic link",
            )),
            Err(e) => Err(e),
        }
    }

    /// The claim entry `ip/<ip>`: `None` when absent, damaged when it cannot be read as one.
    fn read_claim(&self, ip: IpAddr) -> io::Result<Option<Claim>> {
        match Self::read_link(&self.ip_dir.join(ip.to_string())) {
            Ok(None) => Ok(None),
            Ok(Some(text)) => Ok(Some(match Owner::from_key(&text) {
                Some(o) => Claim::Held(o),
                None => Claim::Damaged(format!("content {text:?} names no attachment")),
            })),
            Err(e) if is_damage(&e) => Ok(Some(Claim::Damaged(e.to_string()))),
            Err(e) => Err(e),
        }
    }

    /// Entries of `dir` (none when it does not exist: a host-local directory has no `ip/`).
    fn entries(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
        match fs::read_dir(dir) {
            Ok(rd) => rd.collect(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Readable records and the damage found among `owner/`'s entries.
    fn scan_records(&self) -> io::Result<(Vec<Record>, Vec<Damage>)> {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for entry in Self::entries(&self.owner_dir)? {
            let name = entry.file_name();
            let shown = format!("owner/{}", name.to_string_lossy());
            let foreign = |why: &str| Damage {
                entry: shown.clone(),
                owner: None,
                why: format!("a name plugnet never writes ({why})"),
            };
            let Some(text) = name.to_str() else {
                bad.push(foreign("not UTF-8"));
                continue;
            };
            if text.starts_with('.') {
                continue; // a writer's temporary (swept by GC)
            }
            let Some(owner) = Owner::from_key(text) else {
                bad.push(foreign("not <containerID>:<ifname>"));
                continue;
            };
            match self.record(&owner) {
                Ok(Some(r)) => good.push(r),
                Ok(None) => {} // removed meanwhile
                Err(e) if is_damage(&e) => bad.push(Damage {
                    entry: shown,
                    owner: Some(owner),
                    why: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok((good, bad))
    }

    fn mark(&self, bits: u8) {
        self.dirty.set(self.dirty.get() | bits);
    }

    /// Atomically create or replace the symlink `path` → `target`.
    fn replace_link(&self, path: &Path, target: &str) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("x");
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        if let Err(e) = symlink(target, &tmp) {
            // Left by a killed writer that had this pid: it is ours to replace.
            if e.kind() != ErrorKind::AlreadyExists {
                return Err(e);
            }
            fs::remove_file(&tmp)?;
            symlink(target, &tmp)?;
        }
        fs::rename(&tmp, path)
    }

    fn since(path: &Path) -> u64 {
        fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// An error reading one entry that says the entry is damaged (not that the store is unusable).
fn is_damage(e: &io::Error) -> bool {
    e.kind() == ErrorKind::InvalidData || e.raw_os_error() == Some(libc::EIO)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Store for FileStore {
    type Guard = fs::File;

    fn lock(&self) -> io::Result<fs::File> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join("lock"))?;
        fs2::FileExt::lock_exclusive(&f)?;
        Ok(f)
    }

    fn record(&self, owner: &Owner) -> io::Result<Option<Record>> {
        let path = self.owner_dir.join(owner.key());
        let damaged = |e: io::Error| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("damaged record owner/{}: {e}", owner.key()),
            )
        };
        match Self::read_link(&path) {
            Ok(Some(text)) => Record::decode(owner.clone(), &text, Self::since(&path))
                .map(Some)
                .map_err(damaged),
            Ok(None) => Ok(None),
            Err(e) if is_damage(&e) => Err(damaged(e)),
            Err(e) => Err(e),
        }
    }

    fn put_record(&self, record: &Record) -> io::Result<()> {
        self.mark(DIRTY_OWNER);
        self.replace_link(&self.owner_dir.join(record.owner.key()), &record.encode())
    }

    fn remove_record(&self, owner: &Owner) -> io::Result<()> {
        match fs::remove_file(self.owner_dir.join(owner.key())) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => {
                self.mark(DIRTY_OWNER);
                Ok(())
            }
        }
    }

    fn claim_of(&self, ip: IpAddr) -> io::Result<Claim> {
        if let Some(c) = self.read_claim(ip)? {
            return Ok(c);
        }
        Ok(hostlocal::read_lease(&self.dir, ip)?.unwrap_or(Claim::Free))
    }

    fn claim(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool> {
        match symlink(owner.key(), self.ip_dir.join(ip.to_string())) {
            Ok(()) => {
                self.mark(DIRTY_IP);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn reassign(&self, ip: IpAddr, owner: &Owner) -> io::Result<()> {
        self.mark(DIRTY_IP);
        self.replace_link(&self.ip_dir.join(ip.to_string()), &owner.key())
    }

    fn unclaim(&self, ip: IpAddr) -> io::Result<()> {
        match fs::remove_file(self.ip_dir.join(ip.to_string())) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => {
                self.mark(DIRTY_IP);
                Ok(())
            }
        }
    }

    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
        // A hint only: anything unreadable means "start at the beginning". Until plugnet-ipam
        // allocated in this set, host-local's hint (a host that switched) says where to go on.
        Ok(
            Self::read_link(&self.dir.join(format!("last_reserved.{set}")))
                .ok()
                .flatten()
                .and_then(|t| t.parse().ok())
                .or_else(|| hostlocal::last_reserved(&self.dir, set)),
        )
    }

    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()> {
        // A hint: atomic, but not worth a journal commit of its own.
        self.replace_link(
            &self.dir.join(format!("last_reserved.{set}")),
            &ip.to_string(),
        )
    }

    fn records(&self) -> io::Result<Vec<Record>> {
        Ok(self.scan_records()?.0)
    }

    fn claims(&self) -> io::Result<Vec<(IpAddr, Claim)>> {
        let mut out = Vec::new();
        for entry in Self::entries(&self.ip_dir)? {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue; // temporaries; foreign names are reported by `damage`
            };
            if let Some(c) = self.read_claim(ip)? {
                out.push((ip, c));
            }
        }
        Ok(out)
    }

    fn damage(&self) -> io::Result<Vec<Damage>> {
        let mut out = self.scan_records()?.1;
        for entry in Self::entries(&self.ip_dir)? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') && name.parse::<IpAddr>().is_err() {
                out.push(Damage {
                    entry: format!("ip/{name}"),
                    owner: None,
                    why: "a name plugnet never writes (not an IP address)".into(),
                });
            }
        }
        Ok(out)
    }

    fn host_local(&self) -> io::Result<Vec<(IpAddr, Claim)>> {
        hostlocal::leases(&self.dir)
    }

    fn remove_host_local(&self, ip: IpAddr) -> io::Result<()> {
        match fs::remove_file(hostlocal::lease_path(&self.dir, ip)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => {
                self.mark(DIRTY_TOP);
                Ok(())
            }
        }
    }

    fn sweep(&self) -> io::Result<usize> {
        let mut n = 0;
        for dir in [&self.ip_dir, &self.owner_dir, &self.dir] {
            for entry in Self::entries(dir)? {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    fs::remove_file(entry.path())?;
                    n += 1;
                }
            }
        }
        if n > 0 {
            self.mark(DIRTY_IP | DIRTY_OWNER | DIRTY_TOP);
        }
        Ok(n)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_dirs(true)
    }
    fn sync_job(&self) -> SyncJob {
        let dirs = self.take_dirty();
        Box::new(move || sync_paths(&dirs, false))
    }
    fn probe_writable(&self) -> io::Result<()> {
        FileStore::probe_writable(self)
    }
    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

impl FileStore {
    /// Fsyncs the directories changed since the last sync: at once (one thread per extra
    /// directory) when `parallel`, else one after another.
    pub fn sync_dirs(&self, parallel: bool) -> io::Result<()> {
        sync_paths(&self.take_dirty(), parallel)
    }

    /// The directories changed since the last sync, which now count as clean: the caller
    /// fsyncs them ([`sync_paths`]) before it reports success.
    pub fn take_dirty(&self) -> Vec<PathBuf> {
        let dirty = self.dirty.replace(0);
        [
            (DIRTY_OWNER, &self.owner_dir),
            (DIRTY_IP, &self.ip_dir),
            (DIRTY_TOP, &self.dir),
        ]
        .into_iter()
        .filter(|(bit, _)| dirty & bit != 0)
        .map(|(_, d)| d.clone())
        .collect()
    }
}

/// Fsyncs `dirs`, at once (one thread per extra directory) when `parallel`, else one after
/// another (for a caller already off the request's critical path).
pub fn sync_paths(dirs: &[PathBuf], parallel: bool) -> io::Result<()> {
    match dirs {
        [] => Ok(()),
        [one] => sync_dir(one),
        all if !parallel => all.iter().try_for_each(|d| sync_dir(d)),
        // Concurrent fsyncs of directories on one journaling filesystem wait for the same
        // journal commit: the wall time of one instead of one per directory.
        [first, rest @ ..] => std::thread::scope(|s| {
            let others: Vec<_> = rest.iter().map(|d| s.spawn(move || sync_dir(d))).collect();
            let mut result = sync_dir(first);
            for h in others {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("fsync thread")));
                result = result.and(r);
            }
            result
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(FileStore::open(tmp.path(), "n", false).unwrap().is_none());
        let s = FileStore::open(tmp.path(), "n", true).unwrap().unwrap();
        let _g = s.lock().unwrap();
        let o = Owner::new("c1", "eth0");
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let ip6: IpAddr = "fd00::2".parse().unwrap();
        let rec = Record {
            owner: o.clone(),
            hold: Hold::Attached,
            ips: vec![ip, ip6],
            since: 0,
        };
        s.put_record(&rec).unwrap();
        assert!(s.claim(ip, &o).unwrap());
        assert!(!s.claim(ip, &Owner::new("c2", "eth0")).unwrap());
        assert!(s.claim(ip6, &o).unwrap());
        assert_eq!(s.holder(ip).unwrap(), Some(o.clone()));
        let got = s.record(&o).unwrap().unwrap();
        assert_eq!(got.ips, rec.ips);
        assert!(got.since > 0);
        s.set_last_reserved(0, ip).unwrap();
        assert_eq!(s.last_reserved(0).unwrap(), Some(ip));
        assert_eq!(s.claims().unwrap().len(), 2);
        assert_eq!(s.records().unwrap().len(), 1);
        s.sync().unwrap();
        s.unclaim(ip).unwrap();
        s.unclaim(ip).unwrap();
        s.remove_record(&o).unwrap();
        s.remove_record(&o).unwrap();
        assert_eq!(s.record(&o).unwrap(), None);
        // Reopening finds the format marker.
        assert!(FileStore::open(tmp.path(), "n", false).unwrap().is_some());
        std::fs::write(tmp.path().join("n/format"), "something else 9\n").unwrap();
        assert!(FileStore::open(tmp.path(), "n", false).is_err());
    }

    #[test]
    fn a_temporary_link_left_by_a_killed_writer_with_our_pid_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStore::open(tmp.path(), "n", true).unwrap().unwrap();
        let o = Owner::new("c1", "eth0");
        let stale = s
            .owner_dir
            .join(format!(".{}.{}.tmp", o.key(), std::process::id()));
        symlink("attached 10.9.9.9", &stale).unwrap();
        let rec = Record {
            owner: o.clone(),
            hold: Hold::Attached,
            ips: vec!["10.0.0.2".parse().unwrap()],
            since: 0,
        };
        s.put_record(&rec).unwrap();
        assert_eq!(s.record(&o).unwrap().unwrap().ips, rec.ips);
        assert!(fs::symlink_metadata(&stale).is_err(), "renamed into place");
    }

    #[test]
    fn dirty_directories_are_handed_out_once_and_synced_either_way() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStore::open(tmp.path(), "n", true).unwrap().unwrap();
        let o = Owner::new("c1", "eth0");
        assert!(s.claim("10.0.0.2".parse().unwrap(), &o).unwrap());
        s.set_last_reserved(0, "10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            s.take_dirty(),
            vec![s.ip_dir.clone()],
            "the hint is not synced"
        );
        assert!(s.take_dirty().is_empty());
        let both = [s.owner_dir.clone(), s.ip_dir.clone()];
        sync_paths(&both, false).unwrap();
        sync_paths(&both, true).unwrap();
        let gone = tmp.path().join("missing");
        assert_eq!(
            sync_paths(&[s.ip_dir.clone(), gone], false)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn damaged_entries_on_disk_are_claims_held_by_nobody_and_reported() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStore::open(tmp.path(), "n", true).unwrap().unwrap();
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        symlink("garbage", s.ip_dir.join("10.0.0.2")).unwrap();
        fs::write(s.ip_dir.join("10.0.0.3"), "c1:eth0").unwrap();
        symlink(
            std::ffi::OsStr::from_bytes(b"c\xff:eth0"),
            s.ip_dir.join("10.0.0.4"),
        )
        .unwrap();
        symlink("../x:eth0", s.ip_dir.join("10.0.0.5")).unwrap();
        symlink("c1:eth0", s.ip_dir.join("10.0.0.6")).unwrap();
        symlink("c9:eth0", s.ip_dir.join("not-an-ip")).unwrap();
        for bad in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"] {
            assert!(
                matches!(s.claim_of(ip(bad)).unwrap(), Claim::Damaged(_)),
                "{bad}"
            );
        }
        assert_eq!(
            s.claim_of(ip("10.0.0.6")).unwrap(),
            Claim::Held(Owner::new("c1", "eth0"))
        );
        assert_eq!(s.claims().unwrap().len(), 5);
        symlink("attached 10.0.0.6", s.owner_dir.join("c1:eth0")).unwrap();
        symlink("attached nonsense", s.owner_dir.join("c2:eth0")).unwrap();
        symlink("attached 10.0.0.9", s.owner_dir.join("junk")).unwrap();
        let e = s.record(&Owner::new("c2", "eth0")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        assert_eq!(s.records().unwrap().len(), 1, "the readable one");
        let damage = s.damage().unwrap();
        let entries: Vec<&str> = damage.iter().map(|d| d.entry.as_str()).collect();
        assert_eq!(entries.len(), 3, "{damage:?}");
        for e in ["owner/c2:eth0", "owner/junk", "ip/not-an-ip"] {
            assert!(entries.contains(&e), "{e} in {damage:?}");
        }
        let c2 = damage.iter().find(|d| d.entry == "owner/c2:eth0").unwrap();
        assert_eq!(c2.owner, Some(Owner::new("c2", "eth0")));
        s.probe_writable().unwrap();
    }

    #[test]
    fn a_host_local_directory_opens_without_being_converted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("10.0.0.2"), "c1\r\neth0").unwrap();
        fs::write(dir.join("last_reserved_ip.0"), "10.0.0.2").unwrap();
        let s = FileStore::open(tmp.path(), "n", false)
            .unwrap()
            .expect("opens");
        assert!(!dir.join("format").exists(), "reading converts nothing");
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            s.claim_of(ip).unwrap(),
            Claim::HostLocal(Owner::new("c1", "eth0"))
        );
        assert_eq!(s.last_reserved(0).unwrap(), Some(ip));
        assert!(s.records().unwrap().is_empty() && s.claims().unwrap().is_empty());
        assert!(FileStore::open(tmp.path(), "absent", false)
            .unwrap()
            .is_none());
    }
}
