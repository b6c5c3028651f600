//! IPAM GC: release every attachment the runtime no longer lists, take back abandoned
//! reservations, repair what tampering or a torn write left (claims no record names, damaged
//! claims and records) and report what it cannot.
//!
//! Invariant: runs under the store lock like any DEL, releases through the allocator's own
//! release, and never removes an entry plugnet did not write (foreign names are reported).

use super::allocator::{read_record, release_locked, store_err};
use super::hostlocal;
use super::store::{now, Claim, Hold, Owner, Store};
use crate::error::CniError;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// Reservations older than this are abandoned hand-offs and GC may take them back.
pub const RESERVATION_TTL_SECS: u64 = 3600;

/// What GC did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Owners released, with what they held (host-local leases included).
    pub released: Vec<(Owner, Vec<IpAddr>)>,
    /// Claims no record named (only possible through outside tampering); removed.
    pub repaired: Vec<IpAddr>,
    /// Temporary links of writers killed mid-way; removed.
    pub swept: usize,
    /// Damaged entries found, each with what GC did about it.
    pub damaged: Vec<String>,
}

/// Release every attachment not in `valid`; keep fresh reservations; repair what can be
/// repaired (claims no record names, damaged claims and records) and report the rest.
pub fn gc<S: Store>(store: &S, valid: &HashSet<Owner>) -> Result<GcReport, CniError> {
    let guard = store.lock().map_err(store_err("lock"))?;
    let result = gc_locked(store, valid);
    drop(guard);
    let report = result?;
    store.sync().map_err(store_err("sync"))?;
    if !report.damaged.is_empty() {
        tracing::warn!("ipam GC: {}", report.damaged.join("; "));
    }
    Ok(report)
}

fn gc_locked<S: Store>(store: &S, valid: &HashSet<Owner>) -> Result<GcReport, CniError> {
    let mut report = GcReport {
        swept: store.sweep().map_err(store_err("sweep"))?,
        ..Default::default()
    };
    let now = now();
    // Damaged records: rebuilt from their claims for a valid owner, released otherwise.
    for d in store.damage().map_err(store_err("list damage"))? {
        let Some(owner) = d.owner else {
            report
                .damaged
                .push(format!("{}: {} (left alone)", d.entry, d.why));
            continue;
        };
        if valid.contains(&owner) {
            let rebuilt = read_record(store, &owner)?.expect("a damaged record is recovered");
            store
                .put_record(&rebuilt)
                .map_err(store_err("rewrite record"))?;
            report
                .damaged
                .push(format!("{}: {} (rebuilt from its claims)", d.entry, d.why));
        } else {
            let ips = release_locked(store, &owner)?;
            report
                .damaged
                .push(format!("{}: {} (released)", d.entry, d.why));
            report.released.push((owner, ips));
        }
    }
    let records = store.records().map_err(store_err("list records"))?;
    let mut named: HashMap<IpAddr, Owner> = HashMap::new();
    for r in &records {
        let stale = match r.hold {
            Hold::Attached => !valid.contains(&r.owner),
            Hold::Reserved => now.saturating_sub(r.since) > RESERVATION_TTL_SECS,
        };
        if stale {
            let ips = release_locked(store, &r.owner)?;
            report.released.push((r.owner.clone(), ips));
        } else {
            named.extend(r.ips.iter().map(|ip| (*ip, r.owner.clone())));
        }
    }
    for (ip, claim) in store.claims().map_err(store_err("list claims"))? {
        match claim {
            Claim::Held(owner) if named.get(&ip) == Some(&owner) => {}
            Claim::Held(_) => {
                store.unclaim(ip).map_err(store_err("release claim"))?;
                report.repaired.push(ip);
            }
            Claim::Damaged(why) => {
                // The record naming the address says whose it is; with none, nobody's.
                let done = match named.get(&ip) {
                    Some(owner) => {
                        store
                            .reassign(ip, owner)
                            .map_err(store_err("repair claim"))?;
                        format!("given back to {}", owner.key())
                    }
                    None => {
                        store.unclaim(ip).map_err(store_err("remove claim"))?;
                        "removed: no record names the address".to_string()
                    }
                };
                report.damaged.push(format!("ip/{ip}: {why} ({done})"));
                report.repaired.push(ip);
            }
            Claim::Free | Claim::HostLocal(_) => {}
        }
    }
    // host-local's leases: released like records when their owner is not valid.
    let mut host_local: HashMap<Owner, Vec<IpAddr>> = HashMap::new();
    for (ip, claim) in store.host_local().map_err(store_err("list host-local"))? {
        match claim {
            Claim::HostLocal(lease) if !valid.iter().any(|v| hostlocal::owned_by(&lease, v)) => {
                store
                    .remove_host_local(ip)
                    .map_err(store_err("release host-local lease"))?;
                host_local.entry(lease).or_default().push(ip);
            }
            Claim::Damaged(why) => report
                .damaged
                .push(format!("{ip}: {why} (left alone: host-local's file)")),
            _ => {}
        }
    }
    let mut host_local: Vec<(Owner, Vec<IpAddr>)> = host_local.into_iter().collect();
    host_local.sort();
    report.released.extend(host_local);
    Ok(report)
}
