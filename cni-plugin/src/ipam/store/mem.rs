//! [`MemStore`]: the store's semantics in memory, for allocator tests, the fuzz target and
//! fault injection (a mutation that fails after n successes, damaged entries on demand).

use super::entries::{Claim, Owner, Record, Store};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::Mutex;

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
    claims: HashMap<IpAddr, Claim>,
    last: HashMap<usize, IpAddr>,
}

impl MemStore {
    /// Puts a damaged entry at `ip` (what tampering leaves on disk).
    pub fn damage_claim(&self, ip: IpAddr, why: &str) {
        let mut i = self.inner.lock().unwrap();
        i.claims.insert(ip, Claim::Damaged(why.into()));
    }

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
    fn claim_of(&self, ip: IpAddr) -> io::Result<Claim> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .claims
            .get(&ip)
            .cloned()
            .unwrap_or(Claim::Free))
    }
    fn claim(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool> {
        self.mutate()?;
        let mut i = self.inner.lock().unwrap();
        if i.claims.contains_key(&ip) {
            return Ok(false);
        }
        i.claims.insert(ip, Claim::Held(owner.clone()));
        Ok(true)
    }
    fn reassign(&self, ip: IpAddr, owner: &Owner) -> io::Result<()> {
        self.mutate()?;
        let mut i = self.inner.lock().unwrap();
        i.claims.insert(ip, Claim::Held(owner.clone()));
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
    fn claims(&self) -> io::Result<Vec<(IpAddr, Claim)>> {
        let i = self.inner.lock().unwrap();
        Ok(i.claims.iter().map(|(a, c)| (*a, c.clone())).collect())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}
