//! What a store holds — owners, their records, the claims on addresses, damage — and what the
//! allocator needs of a store (the [`Store`] trait); invariant: no I/O here.

use std::io::{self, ErrorKind};
use std::net::IpAddr;
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
    /// The owner a key names, if it is one plugnet could have written (both parts valid).
    pub fn from_key(key: &str) -> Option<Owner> {
        let (id, ifname) = key.split_once(':')?;
        (crate::validate::is_valid_id(id) && crate::validate::interface_name(ifname).is_ok())
            .then(|| Owner::new(id, ifname))
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
    pub(super) fn encode(&self) -> String {
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

    pub(super) fn decode(owner: Owner, text: &str, since: u64) -> io::Result<Record> {
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

/// What one address's entry in the store says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Free,
    /// plugnet's claim (`ip/<ip>`).
    Held(Owner),
    /// A lease file host-local left in the network's directory (`<ip>`), honoured after a host
    /// switched the network from `host-local` to `plugnet-ipam` (see [`crate::ipam::hostlocal`]).
    HostLocal(Owner),
    /// An entry that cannot be read as a claim (tampering, a disk error): held by nobody we can
    /// name, so never handed out; GC repairs it, STATUS and `plugnet ipam ls` report it.
    Damaged(String),
}

impl Claim {
    pub fn is_free(&self) -> bool {
        *self == Claim::Free
    }
    /// A plugnet claim of `owner`.
    pub fn is_held_by(&self, owner: &Owner) -> bool {
        matches!(self, Claim::Held(o) if o == owner)
    }
}

/// A store entry that is not what its place says it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The entry, relative to the network's directory (`owner/c1:eth0`, `ip/10.0.0.5`).
    pub entry: String,
    /// The owner a damaged record belongs to (its name still says it).
    pub owner: Option<Owner>,
    pub why: String,
}

/// What the allocator needs from a store.
/// Durability work to run later or elsewhere ([`Store::sync_job`]).
pub type SyncJob = Box<dyn FnOnce() -> io::Result<()> + Send>;

pub trait Store {
    type Guard;
    /// Take the exclusive lock; released when the guard drops (or the process dies).
    fn lock(&self) -> io::Result<Self::Guard>;
    /// The owner's record; a record that cannot be read is an error of kind `InvalidData`.
    fn record(&self, owner: &Owner) -> io::Result<Option<Record>>;
    /// Create or atomically replace an owner's record.
    fn put_record(&self, record: &Record) -> io::Result<()>;
    fn remove_record(&self, owner: &Owner) -> io::Result<()>;
    /// What the store says about `ip`.
    fn claim_of(&self, ip: IpAddr) -> io::Result<Claim>;
    /// Who holds `ip` through a plugnet claim, if anyone.
    fn holder(&self, ip: IpAddr) -> io::Result<Option<Owner>> {
        Ok(match self.claim_of(ip)? {
            Claim::Held(o) => Some(o),
            _ => None,
        })
    }
    /// Claim a free `ip` for `owner`; `Ok(false)` if it is already held.
    fn claim(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool>;
    /// Atomically re-point an existing claim to another owner.
    fn reassign(&self, ip: IpAddr, owner: &Owner) -> io::Result<()>;
    fn unclaim(&self, ip: IpAddr) -> io::Result<()>;
    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>>;
    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()>;
    /// Every readable record (damaged ones are in [`Store::damage`]).
    fn records(&self) -> io::Result<Vec<Record>>;
    /// Every plugnet claim: [`Claim::Held`] or [`Claim::Damaged`].
    fn claims(&self) -> io::Result<Vec<(IpAddr, Claim)>>;
    /// Records that cannot be read, and entries plugnet did not write (reported, not touched).
    fn damage(&self) -> io::Result<Vec<Damage>> {
        Ok(Vec::new())
    }
    /// host-local's leases in the store: [`Claim::HostLocal`] or [`Claim::Damaged`].
    fn host_local(&self) -> io::Result<Vec<(IpAddr, Claim)>> {
        Ok(Vec::new())
    }
    /// Remove host-local's lease of `ip` (its owner was released).
    fn remove_host_local(&self, _ip: IpAddr) -> io::Result<()> {
        Ok(())
    }
    /// Make every change so far durable (called after the lock is released).
    fn sync(&self) -> io::Result<()>;
    /// The same work as [`Store::sync`], handed over to run elsewhere (a thread of its own,
    /// see [`crate::ipam::Durable`]); the changes so far count as synced once it has run. By default
    /// the work is done at once and the job only reports its outcome.
    fn sync_job(&self) -> SyncJob {
        let outcome = self.sync();
        Box::new(move || outcome)
    }
    /// Can the store be written (STATUS asks before any ADD does)?
    fn probe_writable(&self) -> io::Result<()> {
        Ok(())
    }
    /// Where the store lives, for messages.
    fn location(&self) -> String {
        "ipam store".into()
    }
    /// Remove leftovers of writers killed mid-way (under the lock). Returns how many.
    fn sweep(&self) -> io::Result<usize> {
        Ok(0)
    }
}
