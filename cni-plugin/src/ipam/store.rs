//! The address store: who holds which address, on disk ([`FileStore`]) or in memory
//! ([`MemStore`], for tests).
//!
//! Invariants, kept by the allocator and by every store operation being atomic:
//! - every claim (`ip → owner`) is listed in its owner's record (records are written before
//!   claims and removed after them), so a process killed at any instruction never leaves an
//!   address held by nobody;
//! - mutations happen only under the store's exclusive lock.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The on-disk format version written to `<network>/format`.
pub const FORMAT: &str = "plugnet-ipam store 1";

/// An attachment that holds addresses: (container id, ifname). Both parts are validated before
/// they reach a path (see [`crate::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Owner {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
    /// `<id>:<ifname>`: unambiguous, `:` is in neither charset.
    pub fn key(&self) -> String {
        format!("{}:{}", self.container_id, self.ifname)
    }
    pub fn from_key(key: &str) -> Option<Owner> {
        let (id, ifname) = key.split_once(':')?;
        Some(Owner::new(id, ifname))
    }
}

/// How an owner holds its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Held by a CNI attachment (ADD succeeded or is under way).
    Attached,
    /// Held ahead of an ADD (Docker's IPAM picks addresses before the endpoint exists); the
    /// owner's next ADD adopts the addresses instead of failing as a duplicate.
    Reserved,
}

/// An owner's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub owner: Owner,
    pub hold: Hold,
    pub ips: Vec<IpAddr>,
    /// Seconds since the epoch when the record was written.
    pub since: u64,
}

impl Record {
    /// `attached 10.1.0.5 fd00::5`
    fn encode(&self) -> String {
        let mut s = String::from(match self.hold {
            Hold::Attached => "attached",
            Hold::Reserved => "reserved",
        });
        for ip in &self.ips {
            s.push(' ');
            s.push_str(&ip.to_string());
        }
        s
    }

    fn decode(owner: Owner, text: &str, since: u64) -> io::Result<Record> {
        let bad = || io::Error::new(ErrorKind::InvalidData, format!("bad record {text:?}"));
        let mut words = text.split(' ');
        let hold = match words.next() {
            Some("attached") => Hold::Attached,
            Some("reserved") => Hold::Reserved,
            _ => return Err(bad()),
        };
        let ips = words
            .map(|w| w.parse().map_err(|_| bad()))
            .collect::<io::Result<Vec<IpAddr>>>()?;
        Ok(Record {
            owner,
            hold,
            ips,
            since,
        })
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the allocator needs from a store.
pub trait Store {
    type Guard;
    /// Take the exclusive lock; released when the guard drops (or the process dies).
    fn lock(&self) -> io::Result<Self::Guard>;
    fn record(&self, owner: &Owner) -> io::Result<Option<Record>>;
    /// Create or atomically replace an owner's record.
    fn put_record(&self, record: &Record) -> io::Result<()>;
    fn remove_record(&self, owner: &Owner) -> io::Result<()>;
    /// Who holds `ip`, if anyone.
    fn holder(&self, ip: IpAddr) -> io::Result<Option<Owner>>;
    /// Claim a free `ip` for `owner`; `Ok(false)` if it is already held.
    fn claim(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool>;
    /// Atomically re-point an existing claim to another owner.
    fn reassign(&self, ip: IpAddr, owner: &Owner) -> io::Result<()>;
    fn unclaim(&self, ip: IpAddr) -> io::Result<()>;
    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>>;
    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()>;
    fn records(&self) -> io::Result<Vec<Record>>;
    fn claims(&self) -> io::Result<Vec<(IpAddr, Owner)>>;
    /// Make every change so far durable (called after the lock is released).
    fn sync(&self) -> io::Result<()>;
    /// Remove leftovers of writers killed mid-way (under the lock). Returns how many.
    fn sweep(&self) -> io::Result<usize> {
        Ok(0)
    }
}

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
            Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
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

    fn read_link(path: &Path) -> io::Result<Option<String>> {
        match fs::read_link(path) {
            Ok(t) => t
                .into_os_string()
                .into_string()
                .map(Some)
                .map_err(|_| io::Error::new(ErrorKind::InvalidData, "non-UTF-8 link")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
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
        match Self::read_link(&path)? {
            Some(text) => Record::decode(owner.clone(), &text, Self::since(&path)).map(Some),
            None => Ok(None),
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

    fn holder(&self, ip: IpAddr) -> io::Result<Option<Owner>> {
        Ok(Self::read_link(&self.ip_dir.join(ip.to_string()))?
            .as_deref()
            .and_then(Owner::from_key))
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
        // A hint only: anything unreadable means "start at the beginning".
        Ok(
            Self::read_link(&self.dir.join(format!("last_reserved.{set}")))
                .ok()
                .flatten()
                .and_then(|t| t.parse().ok()),
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
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.owner_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(owner) = name
                .to_str()
                .filter(|n| !n.starts_with('.'))
                .and_then(Owner::from_key)
            else {
                continue;
            };
            if let Some(r) = self.record(&owner)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn claims(&self) -> io::Result<Vec<(IpAddr, Owner)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.ip_dir)? {
            let entry = entry?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if let Some(owner) = self.holder(ip)? {
                out.push((ip, owner));
            }
        }
        Ok(out)
    }

    fn sweep(&self) -> io::Result<usize> {
        let mut n = 0;
        for dir in [&self.ip_dir, &self.owner_dir, &self.dir] {
            for entry in fs::read_dir(dir)?.flatten() {
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

/// An in-memory store with the same semantics, for allocator tests and fault injection.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
    /// Fail every mutation after this many succeeded (simulates a process killed mid-way).
    pub fail_after: Mutex<Option<usize>>,
}

#[derive(Default)]
struct MemInner {
    records: BTreeMap<Owner, Record>,
    claims: HashMap<IpAddr, Owner>,
    last: HashMap<usize, IpAddr>,
}

impl MemStore {
    fn mutate(&self) -> io::Result<()> {
        let mut f = self.fail_after.lock().unwrap();
        match f.as_mut() {
            Some(0) => Err(io::Error::other("injected failure")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Store for MemStore {
    type Guard = ();
    fn lock(&self) -> io::Result<()> {
        Ok(())
    }
    fn record(&self, owner: &Owner) -> io::Result<Option<Record>> {
        Ok(self.inner.lock().unwrap().records.get(owner).cloned())
    }
    fn put_record(&self, record: &Record) -> io::Result<()> {
        self.mutate()?;
        let mut i = self.inner.lock().unwrap();
        i.records.insert(record.owner.clone(), record.clone());
        Ok(())
    }
    fn remove_record(&self, owner: &Owner) -> io::Result<()> {
        self.mutate()?;
        self.inner.lock().unwrap().records.remove(owner);
        Ok(())
    }
    fn holder(&self, ip: IpAddr) -> io::Result<Option<Owner>> {
        Ok(self.inner.lock().unwrap().claims.get(&ip).cloned())
    }
    fn claim(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool> {
        self.mutate()?;
        let mut i = self.inner.lock().unwrap();
        if i.claims.contains_key(&ip) {
            return Ok(false);
        }
        i.claims.insert(ip, owner.clone());
        Ok(true)
    }
    fn reassign(&self, ip: IpAddr, owner: &Owner) -> io::Result<()> {
        self.mutate()?;
        self.inner.lock().unwrap().claims.insert(ip, owner.clone());
        Ok(())
    }
    fn unclaim(&self, ip: IpAddr) -> io::Result<()> {
        self.mutate()?;
        self.inner.lock().unwrap().claims.remove(&ip);
        Ok(())
    }
    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
        Ok(self.inner.lock().unwrap().last.get(&set).copied())
    }
    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()> {
        self.mutate()?;
        self.inner.lock().unwrap().last.insert(set, ip);
        Ok(())
    }
    fn records(&self) -> io::Result<Vec<Record>> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .records
            .values()
            .cloned()
            .collect())
    }
    fn claims(&self) -> io::Result<Vec<(IpAddr, Owner)>> {
        let i = self.inner.lock().unwrap();
        Ok(i.claims.iter().map(|(a, o)| (*a, o.clone())).collect())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
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
}
