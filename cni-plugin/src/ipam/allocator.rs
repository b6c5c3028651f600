//! Allocation over any [`Store`]: round-robin from the last reserved address, requested
//! addresses, adoption of reservations, release, check, GC.
//!
//! Invariant: every mutation runs under the store lock and writes an owner's record before its
//! claims and removes claims before the record, so the store is consistent after a kill at any
//! point; an entry that cannot be read is held (never handed out, never an endless retry) and
//! reported; no operation scans every reservation except GC, listing, exhaustion and the
//! recovery of a damaged record.

use super::config::{from_u128, set_of, to_u128, Range, RangeSet};
use super::hostlocal;
use super::store::{now, Claim, Hold, Owner, Record, Store};
use crate::error::{CniError, ErrorCode};
use crate::types::IpConfig;
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::io;
use std::net::IpAddr;

pub(crate) fn store_err(step: &str) -> impl Fn(io::Error) -> CniError + '_ {
    move |e| CniError::io(format!("ipam store: {step}: {e}"))
}

/// The result entry for `ip` taken from `range`.
fn ip_config(ip: IpAddr, range: &Range) -> IpConfig {
    IpConfig {
        address: IpNetwork::new(ip, range.subnet.prefix()).expect("prefix of a valid subnet"),
        gateway: range.gateway,
        interface: None,
    }
}

fn range_of(set: &RangeSet, ip: IpAddr) -> Option<&Range> {
    set.iter().find(|r| r.subnet.contains(ip))
}

/// Addresses of `set` in round-robin order, starting after `last`; gateways skipped.
fn candidates(set: &RangeSet, last: Option<IpAddr>) -> impl Iterator<Item = (IpAddr, &Range)> {
    let (mut idx, mut cur) = (0usize, to_u128(set[0].start));
    if let Some(last) = last {
        if let Some(k) = set.iter().position(|r| r.contains(last)) {
            if to_u128(last) < to_u128(set[k].end) {
                (idx, cur) = (k, to_u128(last) + 1);
            } else {
                idx = (k + 1) % set.len();
                cur = to_u128(set[idx].start);
            }
        }
    }
    // A `::/0` range has 2^128 addresses: counts saturate (nobody walks that far).
    let mut remaining: u128 = set
        .iter()
        .map(Range::span)
        .fold(0u128, u128::saturating_add);
    std::iter::from_fn(move || loop {
        if remaining == 0 {
            return None;
        }
        remaining -= 1;
        let r = &set[idx];
        let v4 = r.subnet.is_ipv4();
        let ip = from_u128(cur, v4);
        if cur >= to_u128(r.end) {
            idx = (idx + 1) % set.len();
            cur = to_u128(set[idx].start);
        } else {
            cur += 1;
        }
        if Some(ip) != r.gateway {
            return Some((ip, r));
        }
    })
}

fn exhausted(set: &RangeSet, damaged: &[(IpAddr, String)]) -> CniError {
    let ranges: Vec<String> = set.iter().map(Range::describe).collect();
    let mut details = ranges.join(",");
    if !damaged.is_empty() {
        details.push_str(&format!(
            "; {} of the held entries are damaged and held by nobody ({}): `plugnet gc` repairs \
             them, `plugnet ipam ls` lists them",
            damaged.len(),
            describe_damage(damaged)
        ));
    }
    CniError::new(
        ErrorCode::NotAvailable,
        "no IP addresses available in range set",
    )
    .details(details)
}

fn describe_damage(damaged: &[(IpAddr, String)]) -> String {
    let shown: Vec<String> = damaged
        .iter()
        .take(3)
        .map(|(ip, why)| format!("ip/{ip}: {why}"))
        .collect();
    let more = damaged.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{}, and {more} more", shown.join("; "))
    } else {
        shown.join("; ")
    }
}

/// Logs the damaged entries an allocation stepped over: held, never handed out.
fn warn_damaged(damaged: &[(IpAddr, String)]) {
    if !damaged.is_empty() {
        tracing::warn!(
            "ipam store: skipped {} damaged entr{} (held by nobody; `plugnet gc` repairs, \
             `plugnet ipam ls` lists): {}",
            damaged.len(),
            if damaged.len() == 1 { "y" } else { "ies" },
            describe_damage(damaged)
        );
    }
}

/// The owner's record. A damaged record is rebuilt from the claims naming the owner (a scan:
/// the rare path), so the owner keeps what it holds and DEL still releases it.
pub(super) fn read_record<S: Store>(store: &S, owner: &Owner) -> Result<Option<Record>, CniError> {
    match store.record(owner) {
        Ok(r) => Ok(r),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!("ipam store: {e}; recovering it from the claims that name it");
            let mut ips: Vec<IpAddr> = store
                .claims()
                .map_err(store_err("list claims"))?
                .into_iter()
                .filter(|(_, c)| c.is_held_by(owner))
                .map(|(ip, _)| ip)
                .collect();
            ips.sort();
            Ok(Some(Record {
                owner: owner.clone(),
                hold: Hold::Attached,
                ips,
                since: now(),
            }))
        }
        Err(e) => Err(store_err("read record")(e)),
    }
}

fn claim_of<S: Store>(store: &S, ip: IpAddr) -> Result<Claim, CniError> {
    store.claim_of(ip).map_err(store_err("read claim"))
}

/// Give `owner` one address from every range set (a requested one where asked), or adopt the
/// addresses it holds as a reservation. A second ADD for an attached owner is refused.
pub fn allocate<S: Store>(
    store: &S,
    ranges: &[RangeSet],
    owner: &Owner,
    requested: &[IpAddr],
    hold: Hold,
) -> Result<Vec<IpConfig>, CniError> {
    let ips = allocate_unsynced(store, ranges, owner, requested, hold)?;
    store.sync().map_err(store_err("sync"))?;
    Ok(ips)
}

/// [`allocate`] without its final `sync`: the addresses are taken and every other caller sees
/// them (the lock is released), but they are not durable yet. The caller syncs the store
/// before it reports success (`ipam::add_deferred` does it on a thread, beside other work).
pub fn allocate_unsynced<S: Store>(
    store: &S,
    ranges: &[RangeSet],
    owner: &Owner,
    requested: &[IpAddr],
    hold: Hold,
) -> Result<Vec<IpConfig>, CniError> {
    let _guard = store.lock().map_err(store_err("lock"))?;
    allocate_locked(store, ranges, owner, requested, hold)
}

/// Why `ip` cannot be asked for in any range set: the sets whose subnet holds it, with their
/// allocatable ranges.
fn outside_ranges(ranges: &[RangeSet], ip: IpAddr) -> CniError {
    let sets: Vec<String> = ranges
        .iter()
        .enumerate()
        .filter(|(_, set)| set.iter().any(|r| r.subnet.contains(ip)))
        .map(|(i, set)| {
            let rs: Vec<String> = set.iter().map(Range::describe).collect();
            format!("range set {i} ({})", rs.join(","))
        })
        .collect();
    CniError::internal(format!(
        "requested IP address {ip} is not in the allocatable range of {}",
        sets.join(" or ")
    ))
}

fn allocate_locked<S: Store>(
    store: &S,
    ranges: &[RangeSet],
    owner: &Owner,
    requested: &[IpAddr],
    hold: Hold,
) -> Result<Vec<IpConfig>, CniError> {
    // Which set each requested address belongs to.
    let mut wanted: Vec<Option<IpAddr>> = vec![None; ranges.len()];
    for ip in requested {
        let set = set_of(ranges, *ip).ok_or_else(|| {
            CniError::internal(format!(
                "failed to allocate all requested IPs: {ip} is in no configured range"
            ))
        })?;
        if wanted[set].replace(*ip).is_some() {
            return Err(CniError::config(format!(
                "more than one requested IP for range set {set}"
            )));
        }
    }

    // Addresses the owner already holds and still has claimed.
    let mut chosen: Vec<Option<(IpAddr, &Range)>> = vec![None; ranges.len()];
    if let Some(existing) = read_record(store, owner)? {
        let mut live = Vec::new();
        for ip in &existing.ips {
            if claim_of(store, *ip)?.is_held_by(owner) {
                live.push(*ip);
            }
        }
        if !live.is_empty() {
            if existing.hold == Hold::Attached && hold == Hold::Attached {
                return Err(CniError::internal(format!(
                    "{} has been allocated to {}, duplicate allocation is not allowed",
                    live[0], owner.container_id
                )));
            }
            for ip in live {
                let set = set_of(ranges, ip).ok_or_else(|| {
                    CniError::config(format!(
                        "reserved address {ip} of {} is outside the configured ranges",
                        owner.key()
                    ))
                })?;
                if let Some(w) = wanted[set] {
                    if w != ip {
                        return Err(CniError::internal(format!(
                            "requested IP {w} but {} holds {ip} in the same range set",
                            owner.key()
                        )));
                    }
                }
                let range = range_of(&ranges[set], ip).expect("set_of found it");
                // Adopting one and dropping the other would leave a claim no record names.
                if let Some((other, _)) = chosen[set].replace((ip, range)) {
                    return Err(CniError::config(format!(
                        "{} holds {other} and {ip}, both in range set {set}",
                        owner.key()
                    )));
                }
            }
        }
    }
    let adopted: HashSet<IpAddr> = chosen.iter().flatten().map(|(ip, _)| *ip).collect();
    // Addresses already claimed by this owner (adopted, or requested again after a crash).
    let mut already = adopted.clone();
    // The owner's own host-local leases it asked for again: claimed, then the lease goes.
    let mut leases = Vec::new();
    let mut damaged = Vec::new();

    for (i, set) in ranges.iter().enumerate() {
        if chosen[i].is_some() {
            continue;
        }
        if let Some(ip) = wanted[i] {
            let range = set
                .iter()
                .find(|r| r.contains(ip))
                .ok_or_else(|| outside_ranges(ranges, ip))?;
            if Some(ip) == range.gateway {
                return Err(CniError::internal(format!(
                    "requested ip {ip} is subnet's gateway"
                )));
            }
            let taken = |by: String| {
                CniError::internal(format!(
                    "requested IP address {ip} is not available in range set {i}: {by}"
                ))
            };
            match claim_of(store, ip)? {
                Claim::Free => chosen[i] = Some((ip, range)),
                Claim::Held(h) if &h == owner => {
                    already.insert(ip);
                    chosen[i] = Some((ip, range));
                }
                Claim::HostLocal(h) if hostlocal::owned_by(&h, owner) => {
                    leases.push(ip);
                    chosen[i] = Some((ip, range));
                }
                Claim::Held(h) => return Err(taken(format!("held by {}", h.key()))),
                Claim::HostLocal(h) => {
                    return Err(taken(format!("held by {} (a host-local lease)", h.key())))
                }
                Claim::Damaged(why) => {
                    return Err(taken(format!(
                        "its store entry is damaged ({why}); `plugnet gc` repairs it"
                    )))
                }
            }
            continue;
        }
        let last = store.last_reserved(i).map_err(store_err("read hint"))?;
        let mut found = None;
        for (ip, range) in candidates(set, last) {
            match claim_of(store, ip)? {
                Claim::Free => {
                    found = Some((ip, range));
                    break;
                }
                Claim::Damaged(why) => damaged.push((ip, why)),
                _ => {}
            }
        }
        warn_damaged(&damaged);
        chosen[i] = Some(found.ok_or_else(|| exhausted(set, &damaged))?);
    }

    let picked: Vec<(usize, IpAddr, &Range)> = chosen
        .into_iter()
        .enumerate()
        .filter_map(|(set, c)| c.map(|(ip, r)| (set, ip, r)))
        .collect();
    let record = Record {
        owner: owner.clone(),
        hold,
        ips: picked.iter().map(|(_, ip, _)| *ip).collect(),
        since: now(),
    };
    // Record first, then claims: a kill in between leaves a record naming addresses it does
    // not hold (harmless, removed by DEL), never a claim nobody's record names.
    store
        .put_record(&record)
        .map_err(store_err("write record"))?;
    let mut claimed = Vec::new();
    let mut commit = || -> Result<(), CniError> {
        for (set, ip, _) in &picked {
            if already.contains(ip) {
                continue;
            }
            if !store.claim(*ip, owner).map_err(store_err("claim"))? {
                return Err(CniError::new(
                    ErrorCode::TryAgain,
                    format!("address {ip} was claimed concurrently"),
                ));
            }
            claimed.push(*ip);
            if wanted[*set].is_none() {
                store
                    .set_last_reserved(*set, *ip)
                    .map_err(store_err("write hint"))?;
            }
        }
        Ok(())
    };
    if let Err(e) = commit() {
        for ip in &claimed {
            let _ = store.unclaim(*ip);
        }
        if adopted.is_empty() {
            let _ = store.remove_record(owner);
        }
        return Err(e);
    }
    for ip in leases {
        store
            .remove_host_local(ip)
            .map_err(store_err("remove host-local lease"))?;
    }
    Ok(picked.iter().map(|(_, ip, r)| ip_config(*ip, r)).collect())
}

/// Release every address `owner` holds. Unknown owners are success.
pub fn release<S: Store>(store: &S, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
    let guard = store.lock().map_err(store_err("lock"))?;
    let released = release_locked(store, owner)?;
    drop(guard);
    store.sync().map_err(store_err("sync"))?;
    Ok(released)
}

/// DEL with [`super::KEEP_RESERVATION_ARG`]: the owner's addresses stay claimed, held again as
/// a reservation its next ADD adopts (Docker's address belongs to the endpoint until
/// DeleteEndpoint, whatever happens to an attachment). Unknown owners are success.
pub fn keep_as_reservation<S: Store>(store: &S, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
    let guard = store.lock().map_err(store_err("lock"))?;
    let mut kept = Vec::new();
    if let Some(record) = read_record(store, owner)? {
        kept = record.ips.clone();
        if record.hold != Hold::Reserved {
            store
                .put_record(&Record {
                    hold: Hold::Reserved,
                    since: now(),
                    ..record
                })
                .map_err(store_err("write record"))?;
        }
    }
    drop(guard);
    store.sync().map_err(store_err("sync"))?;
    Ok(kept)
}

pub(super) fn release_locked<S: Store>(store: &S, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
    let mut released = Vec::new();
    if let Some(record) = read_record(store, owner)? {
        for ip in &record.ips {
            if claim_of(store, *ip)?.is_held_by(owner) {
                store.unclaim(*ip).map_err(store_err("release claim"))?;
                released.push(*ip);
            }
        }
        store
            .remove_record(owner)
            .map_err(store_err("remove record"))?;
    }
    // Leases host-local gave the owner before the host switched to plugnet-ipam.
    for (ip, claim) in store.host_local().map_err(store_err("list host-local"))? {
        if matches!(&claim, Claim::HostLocal(h) if hostlocal::owned_by(h, owner)) {
            store
                .remove_host_local(ip)
                .map_err(store_err("release host-local lease"))?;
            released.push(ip);
        }
    }
    Ok(released)
}

/// The owner's record if it holds every address it names as an attachment.
pub fn check<S: Store>(store: &S, owner: &Owner) -> Result<Record, CniError> {
    let missing = || {
        CniError::internal(format!(
            "plugnet-ipam: failed to find address added by container {} ({})",
            owner.container_id, owner.ifname
        ))
    };
    let record = read_record(store, owner)?.ok_or_else(missing)?;
    if record.ips.is_empty() {
        return Err(missing());
    }
    for ip in &record.ips {
        if !claim_of(store, *ip)?.is_held_by(owner) {
            return Err(CniError::internal(format!(
                "plugnet-ipam: {} no longer holds {ip}",
                owner.key()
            )));
        }
    }
    Ok(record)
}

/// Move `from`'s live addresses to `to`, which then holds them, together with any it already
/// holds, as `hold`. A dual-stack Docker endpoint receives its IPv4 and its IPv6 placeholder
/// one after the other, so the target may already hold addresses.
pub fn transfer<S: Store>(store: &S, from: &Owner, to: &Owner, hold: Hold) -> Result<(), CniError> {
    let guard = store.lock().map_err(store_err("lock"))?;
    let result = (|| -> Result<(), CniError> {
        let moving = live_ips(store, from)?;
        if moving.is_empty() {
            return Err(CniError::internal(format!(
                "{} holds no addresses",
                from.key()
            )));
        }
        if from == to {
            // Nothing moves; only the hold changes (removing "the source" would orphan them).
            return store
                .put_record(&Record {
                    owner: to.clone(),
                    hold,
                    ips: moving,
                    since: now(),
                })
                .map_err(store_err("write record"));
        }
        let mut ips = live_ips(store, to)?;
        for ip in &moving {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        // Same order as ADD: the target's record first, then the claims, the source last.
        store
            .put_record(&Record {
                owner: to.clone(),
                hold,
                ips,
                since: now(),
            })
            .map_err(store_err("write record"))?;
        for ip in moving {
            store
                .reassign(ip, to)
                .map_err(store_err("reassign claim"))?;
        }
        store
            .remove_record(from)
            .map_err(store_err("remove record"))
    })();
    drop(guard);
    result?;
    store.sync().map_err(store_err("sync"))
}

/// The addresses `owner`'s record names that it still has claimed.
fn live_ips<S: Store>(store: &S, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
    let mut ips = Vec::new();
    if let Some(rec) = read_record(store, owner)? {
        for ip in rec.ips {
            if claim_of(store, ip)?.is_held_by(owner) {
                ips.push(ip);
            }
        }
    }
    Ok(ips)
}

pub use super::gc::{gc, GcReport, RESERVATION_TTL_SECS};

/// STATUS: can every range set still hand out an address? Damaged entries met on the way are
/// held, and reported (a warning; in the error when they are why nothing is free).
pub fn can_allocate<S: Store>(store: &S, ranges: &[RangeSet]) -> Result<(), CniError> {
    for (i, set) in ranges.iter().enumerate() {
        let last = store.last_reserved(i).map_err(store_err("read hint"))?;
        let mut free = false;
        let mut damaged = Vec::new();
        for (ip, _) in candidates(set, last) {
            match claim_of(store, ip)? {
                Claim::Free => {
                    free = true;
                    break;
                }
                Claim::Damaged(why) => damaged.push((ip, why)),
                _ => {}
            }
        }
        warn_damaged(&damaged);
        if !free {
            return Err(exhausted(set, &damaged));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::config::IpamConfig;
    use super::super::store::MemStore;
    use super::*;
    use serde_json::json;

    fn ranges(ipam: serde_json::Value) -> Vec<RangeSet> {
        IpamConfig::from_request(&json!({"ipam": ipam}), None)
            .unwrap()
            .ranges
    }

    fn o(id: &str) -> Owner {
        Owner::new(id, "eth0")
    }

    fn addr(v: &[IpConfig]) -> Vec<String> {
        v.iter().map(|c| c.address.to_string()).collect()
    }

    #[test]
    fn round_robin_skips_gateway_and_wraps() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/29"}]]}));
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                addr(&allocate(&s, &r, &o(&format!("c{i}")), &[], Hold::Attached).unwrap())[0]
                    .clone(),
            );
        }
        assert_eq!(
            got,
            [
                "10.0.0.2/29",
                "10.0.0.3/29",
                "10.0.0.4/29",
                "10.0.0.5/29",
                "10.0.0.6/29"
            ]
        );
        let e = allocate(&s, &r, &o("c9"), &[], Hold::Attached).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotAvailable);
        assert!(can_allocate(&s, &r).is_err());
        release(&s, &o("c1")).unwrap();
        assert!(can_allocate(&s, &r).is_ok());
        // Round-robin continues after .6, wraps and finds .3.
        let got = allocate(&s, &r, &o("c9"), &[], Hold::Attached).unwrap();
        assert_eq!(addr(&got), ["10.0.0.3/29"]);
        assert_eq!(got[0].gateway, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn dual_stack_and_multi_range_sets() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [
            [{"subnet": "10.0.0.0/30"}, {"subnet": "10.0.1.0/30"}],
            [{"subnet": "fd00::/120", "rangeStart": "fd00::10"}]
        ]}));
        let a = allocate(&s, &r, &o("a"), &[], Hold::Attached).unwrap();
        assert_eq!(addr(&a), ["10.0.0.2/30", "fd00::10/120"]);
        let b = allocate(&s, &r, &o("b"), &[], Hold::Attached).unwrap();
        // 10.0.0.0/30 has only .2 after the gateway; the next range's gateway is skipped too.
        assert_eq!(addr(&b), ["10.0.1.2/30", "fd00::11/120"]);
    }

    #[test]
    fn duplicate_add_refused_and_del_idempotent() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]}));
        allocate(&s, &r, &o("a"), &[], Hold::Attached).unwrap();
        let e = allocate(&s, &r, &o("a"), &[], Hold::Attached).unwrap_err();
        assert!(e.msg.contains("duplicate allocation"), "{e}");
        assert_eq!(release(&s, &o("a")).unwrap().len(), 1);
        assert!(release(&s, &o("a")).unwrap().is_empty());
        assert!(release(&s, &o("never")).unwrap().is_empty());
        assert!(check(&s, &o("a")).is_err());
        assert!(s.claims().unwrap().is_empty() && s.records().unwrap().is_empty());
    }

    #[test]
    fn requested_addresses() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"}]]}));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = allocate(&s, &r, &o("a"), &[ip("10.0.0.50")], Hold::Attached).unwrap();
        assert_eq!(addr(&a), ["10.0.0.50/24"]);
        for (want, needle) in [
            ("10.0.0.50", "not available"),
            ("10.0.0.1", "gateway"),
            ("10.0.0.200", "allocatable range"),
            ("10.9.0.1", "no configured range"),
        ] {
            let e = allocate(&s, &r, &o("b"), &[ip(want)], Hold::Attached).unwrap_err();
            assert!(e.msg.contains(needle), "{want}: {e}");
        }
        // Failed attempts left nothing behind.
        assert_eq!(s.records().unwrap().len(), 1);
        // Requesting addresses does not move the round-robin hint.
        let b = allocate(&s, &r, &o("b"), &[], Hold::Attached).unwrap();
        assert_eq!(addr(&b), ["10.0.0.2/24"]);
    }

    #[test]
    fn reservations_are_adopted_by_the_owners_add() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]}));
        let pending = Owner::new("docker-pending-10.0.0.2", "pending");
        let got = allocate(&s, &r, &pending, &[], Hold::Reserved).unwrap();
        assert_eq!(addr(&got), ["10.0.0.2/24"]);
        transfer(&s, &pending, &o("ep1"), Hold::Reserved).unwrap();
        assert!(s.record(&pending).unwrap().is_none());
        assert!(
            transfer(&s, &pending, &o("ep1"), Hold::Reserved).is_err(),
            "nothing left to move"
        );
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let adopted = allocate(&s, &r, &o("ep1"), &[ip], Hold::Attached).unwrap();
        assert_eq!(addr(&adopted), ["10.0.0.2/24"]);
        assert_eq!(check(&s, &o("ep1")).unwrap().hold, Hold::Attached);
        // Now attached: a second ADD is a duplicate.
        assert!(allocate(&s, &r, &o("ep1"), &[ip], Hold::Attached).is_err());
    }

    /// Issue 17, finding 5: a DEL with PLUGNET_KEEP_RESERVATION holds the adopted address again
    /// as the owner's reservation (claimed, adoptable by the next ADD, invisible to others).
    #[test]
    fn keep_as_reservation_holds_an_adopted_address_again() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]}));
        let got = allocate(&s, &r, &o("ep1"), &[], Hold::Reserved).unwrap();
        let ip: IpAddr = got[0].address.ip();
        allocate(&s, &r, &o("ep1"), &[ip], Hold::Attached).unwrap();
        assert_eq!(keep_as_reservation(&s, &o("ep1")).unwrap(), vec![ip]);
        assert_eq!(s.record(&o("ep1")).unwrap().unwrap().hold, Hold::Reserved);
        // Nobody else gets it, not even by asking.
        assert!(allocate(&s, &r, &o("podman"), &[ip], Hold::Attached).is_err());
        let other = allocate(&s, &r, &o("podman2"), &[], Hold::Attached).unwrap();
        assert_ne!(other[0].address.ip(), ip);
        // The owner's retry adopts it; unknown owners are success.
        let again = allocate(&s, &r, &o("ep1"), &[ip], Hold::Attached).unwrap();
        assert_eq!(again[0].address.ip(), ip);
        assert!(keep_as_reservation(&s, &o("never")).unwrap().is_empty());
        // A plain release frees it.
        assert_eq!(release(&s, &o("ep1")).unwrap(), vec![ip]);
    }

    #[test]
    fn an_owner_holding_two_addresses_of_one_set_is_refused_not_half_adopted() {
        // Found by the ipam_allocator fuzz target: two sets in one subnet; a reservation over
        // the first set alone mapped both held addresses to it and kept only one in the record.
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"}],
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"}]
        ]}));
        allocate(&s, &r, &o("a"), &[], Hold::Reserved).unwrap();
        let e = allocate(&s, &r[..1], &o("a"), &[], Hold::Reserved).unwrap_err();
        assert!(e.msg.contains("both in range set 0"), "{e}");
        assert_eq!(s.record(&o("a")).unwrap().unwrap().ips.len(), 2);
    }

    #[test]
    fn a_transfer_to_itself_keeps_the_record() {
        // Found by the ipam_allocator fuzz target: the source's record was removed after the
        // target's (the same) was written, leaving claims no record named.
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]}));
        allocate(&s, &r, &o("a"), &[], Hold::Reserved).unwrap();
        transfer(&s, &o("a"), &o("a"), Hold::Attached).unwrap();
        let rec = s.record(&o("a")).unwrap().expect("record kept");
        assert_eq!((rec.hold, rec.ips.len()), (Hold::Attached, 1));
    }

    #[test]
    fn dual_stack_placeholders_merge_into_one_owner() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}));
        let (p4, p6) = (
            Owner::new("docker-a", "reserved"),
            Owner::new("docker-b", "reserved"),
        );
        let v4 = allocate(&s, &r[..1], &p4, &[], Hold::Reserved).unwrap();
        let v6 = allocate(&s, &r[1..], &p6, &[], Hold::Reserved).unwrap();
        transfer(&s, &p4, &o("ep"), Hold::Reserved).unwrap();
        transfer(&s, &p6, &o("ep"), Hold::Reserved).unwrap();
        let rec = s.record(&o("ep")).unwrap().unwrap();
        assert_eq!(rec.ips, vec![v4[0].address.ip(), v6[0].address.ip()]);
        // The endpoint's ADD adopts both.
        let got = allocate(&s, &r, &o("ep"), &[], Hold::Attached).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(s.records().unwrap().len(), 1);
    }

    #[test]
    fn kill_at_every_step_leaves_no_orphan() {
        // Fail the n-th mutation of an ADD for every n; the store must stay consistent
        // (every claim named by its owner's record) and DEL must clean everything.
        for n in 0..4 {
            let s = MemStore::default();
            let r =
                ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}));
            *s.fail_after.lock().unwrap() = Some(n);
            let _ = allocate(&s, &r, &o("a"), &[], Hold::Attached);
            *s.fail_after.lock().unwrap() = None;
            for (ip, claim) in s.claims().unwrap() {
                let Claim::Held(owner) = claim else {
                    panic!("{ip}: {claim:?}")
                };
                let rec = s.record(&owner).unwrap().expect("claim without record");
                assert!(rec.ips.contains(&ip));
            }
            release(&s, &o("a")).unwrap();
            assert!(s.claims().unwrap().is_empty(), "n={n}");
            assert!(s.records().unwrap().is_empty(), "n={n}");
        }
    }

    #[test]
    fn gc_releases_all_but_valid() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]}));
        for id in ["a", "b", "c"] {
            allocate(&s, &r, &o(id), &[], Hold::Attached).unwrap();
        }
        allocate(&s, &r, &Owner::new("res", "x"), &[], Hold::Reserved).unwrap();
        // An orphan claim, as only outside tampering could leave.
        s.claim("10.0.0.99".parse().unwrap(), &o("ghost")).unwrap();
        let valid: HashSet<Owner> = [o("b")].into_iter().collect();
        let report = gc(&s, &valid).unwrap();
        assert_eq!(report.released.len(), 2);
        assert_eq!(
            report.repaired,
            vec!["10.0.0.99".parse::<IpAddr>().unwrap()]
        );
        let left: HashSet<String> = s
            .records()
            .unwrap()
            .iter()
            .map(|r| r.owner.container_id.clone())
            .collect();
        assert_eq!(
            left,
            ["b".to_string(), "res".to_string()].into_iter().collect()
        );
    }

    #[test]
    fn the_whole_ipv6_space_neither_overflows_nor_panics() {
        // ::/0 from "::": 2^128 addresses, one more than u128 holds.
        let r = ranges(json!({"ranges": [[{"subnet": "::/0", "rangeStart": "::"}]]}));
        assert_eq!(r[0][0].span(), u128::MAX);
        assert_eq!(r[0][0].size(), u128::MAX, "2^128 minus the gateway");
        let s = MemStore::default();
        let got = allocate(&s, &r, &o("a"), &[], Hold::Attached).unwrap();
        assert_eq!(addr(&got), ["::/0"]);
        let got = allocate(&s, &r, &o("b"), &[], Hold::Attached).unwrap();
        assert_eq!(addr(&got), ["::2/0"], "the gateway ::1 is skipped");
        can_allocate(&s, &r).unwrap();
        // The top of the space wraps to the bottom.
        let top = ranges(json!({"ranges": [[{"subnet": "::/0",
            "rangeStart": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"}]]}));
        let s = MemStore::default();
        for id in ["a", "b"] {
            allocate(&s, &top, &o(id), &[], Hold::Attached).unwrap();
        }
        assert!(allocate(&s, &top, &o("c"), &[], Hold::Attached).is_err());
        for prefix in 0..=8 {
            let r = ranges(json!({"ranges": [[{"subnet": format!("::/{prefix}")}]]}));
            assert!(r[0][0].size() > 0);
            allocate(&MemStore::default(), &r, &o("a"), &[], Hold::Attached).unwrap();
        }
    }

    #[test]
    fn a_damaged_claim_is_held_skipped_and_repaired_by_gc() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [[{"subnet": "10.0.0.0/29"}]]}));
        // The next round-robin address is damaged: ADD goes past it, every time.
        let bad: IpAddr = "10.0.0.2".parse().unwrap();
        s.damage_claim(bad, "content \"garbage\" names no attachment");
        for id in ["a", "b"] {
            let got = allocate(&s, &r, &o(id), &[], Hold::Attached).unwrap();
            assert_ne!(got[0].address.ip(), bad);
        }
        can_allocate(&s, &r).unwrap();
        let e = allocate(&s, &r, &o("c"), &[bad], Hold::Attached).unwrap_err();
        assert!(e.msg.contains("damaged"), "{e}");
        // Exhaustion names the damage.
        for id in ["c", "d"] {
            allocate(&s, &r, &o(id), &[], Hold::Attached).unwrap();
        }
        let e = allocate(&s, &r, &o("f"), &[], Hold::Attached).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotAvailable);
        assert!(e.details.contains("damaged"), "{}", e.details);
        let e = can_allocate(&s, &r).unwrap_err();
        assert!(e.details.contains("ip/10.0.0.2"), "{}", e.details);
        // GC removes it (no record names it) and says so.
        let valid: HashSet<Owner> = ["a", "b", "c", "d"].into_iter().map(o).collect();
        let report = gc(&s, &valid).unwrap();
        assert_eq!(report.repaired, vec![bad]);
        assert!(report.damaged[0].contains("ip/10.0.0.2"), "{report:?}");
        assert_eq!(s.claim_of(bad).unwrap(), Claim::Free);
    }

    #[test]
    fn two_range_sets_in_one_subnet_take_requests_in_the_right_set() {
        let s = MemStore::default();
        let r = ranges(json!({"ranges": [
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"}],
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"}]
        ]}));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let got = allocate(&s, &r, &o("a"), &[ip("10.0.0.25")], Hold::Attached).unwrap();
        assert_eq!(addr(&got), ["10.0.0.10/24", "10.0.0.25/24"]);
        let e = allocate(&s, &r, &o("b"), &[ip("10.0.0.50")], Hold::Attached).unwrap_err();
        assert!(
            e.msg
                .contains("range set 0 (10.0.0.10-10.0.0.19) or range set 1 (10.0.0.20-10.0.0.29)"),
            "{e}"
        );
    }
}
