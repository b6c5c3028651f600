//! The IPAM allocator over arbitrary ranges (any family, any prefix from /0, any start and end,
//! several sets) and an arbitrary sequence of allocations, requests, reservations, transfers,
//! releases, GCs, STATUS checks and damaged entries. Never a panic (fuzz.sh builds with overflow
//! checks), and after every step the store keeps its invariants: each claim is named by its
//! owner's record, each address handed out lies in its set's range and is not a gateway, and a
//! damaged entry is never handed out.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet::ipam::allocator::{self, GcReport};
use plugnet::ipam::config::RangeSet;
use plugnet::ipam::store::{Claim, MemStore, Store};
use plugnet::ipam::{Hold, IpamConfig, Owner};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes consumed from the front; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u128(&mut self, n: usize) -> u128 {
        (0..n).fold(0u128, |acc, _| (acc << 8) | u128::from(self.byte()))
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn addr(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// One range: a subnet (prefix from the input; host bits cleared), and start/end/gateway as
/// offsets into it, each present or not.
fn range(inp: &mut Input, v4: bool) -> Value {
    let bits: u32 = if v4 { 32 } else { 128 };
    let prefix = u32::from(inp.byte()) % (bits + 1);
    let raw = inp.u128(if v4 { 4 } else { 16 });
    let host = bits - prefix;
    let mask = if host == 128 { u128::MAX } else { (1u128 << host) - 1 };
    let net = raw & !mask;
    let mut r = json!({"subnet": format!("{}/{prefix}", addr(v4, net))});
    let flags = inp.byte();
    let offset = |inp: &mut Input| addr(v4, net | (inp.u128(if v4 { 4 } else { 16 }) & mask));
    if flags & 1 != 0 {
        r["rangeStart"] = json!(offset(inp).to_string());
    }
    if flags & 2 != 0 {
        r["rangeEnd"] = json!(offset(inp).to_string());
    }
    if flags & 4 != 0 {
        r["gateway"] = json!(offset(inp).to_string());
    }
    r
}

fn ranges(inp: &mut Input) -> Option<Vec<RangeSet>> {
    let sets: Vec<Value> = (0..1 + inp.byte() % 3)
        .map(|_| {
            let v4 = inp.byte() % 2 == 0;
            Value::Array((0..1 + inp.byte() % 3).map(|_| range(inp, v4)).collect())
        })
        .collect();
    let conf = json!({"ipam": {"ranges": sets}});
    IpamConfig::from_request(&conf, None).ok().map(|c| c.ranges)
}

fn owner(k: u8) -> Owner {
    Owner::new(format!("c{}", k % 4), "eth0")
}

/// A candidate address for requests and damage: near some range's start or end.
fn near(inp: &mut Input, sets: &[RangeSet]) -> IpAddr {
    let set = &sets[usize::from(inp.byte()) % sets.len()];
    let r = &set[usize::from(inp.byte()) % set.len()];
    let v4 = r.subnet.is_ipv4();
    let base = if inp.byte() % 2 == 0 { r.start } else { r.end };
    let n = match base {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let delta = u128::from(inp.byte() % 4);
    let n = if inp.byte() % 2 == 0 { n.wrapping_add(delta) } else { n.wrapping_sub(delta) };
    addr(v4, if v4 { n & 0xffff_ffff } else { n })
}

fn invariants(store: &MemStore, sets: &[RangeSet], damaged: &HashSet<IpAddr>) {
    for (ip, claim) in store.claims().unwrap() {
        if let Claim::Held(o) = claim {
            assert!(!damaged.contains(&ip), "damaged {ip} was handed out");
            let rec = store.record(&o).unwrap().expect("a claim without a record");
            assert!(rec.ips.contains(&ip), "{ip} not named by {}'s record", o.key());
            let in_range = sets.iter().flatten().any(|r| r.contains(ip) && r.gateway != Some(ip));
            assert!(in_range, "{ip} outside every range or a gateway");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Some(sets) = ranges(&mut inp) else { return };
    let store = MemStore::default();
    let mut damaged: HashSet<IpAddr> = HashSet::new();
    for _ in 0..64 {
        if inp.done() {
            break;
        }
        let op = inp.byte() % 8;
        let who = owner(inp.byte());
        let trace = std::env::var_os("PNB_FUZZ_TRACE").is_some();
        if trace {
            eprintln!("op {op} {}: {:?}", who.key(), store.claims().unwrap());
        }
        match op {
            0 | 1 => {
                if let Ok(got) = allocator::allocate(&store, &sets, &who, &[], Hold::Attached) {
                    assert_eq!(got.len(), sets.len());
                }
            }
            2 => {
                let ip = near(&mut inp, &sets);
                if let Ok(got) = allocator::allocate(&store, &sets, &who, &[ip], Hold::Attached) {
                    assert!(got.iter().any(|c| c.address.ip() == ip), "request ignored");
                }
            }
            3 => {
                let _ = allocator::allocate(&store, &sets[..1], &who, &[], Hold::Reserved);
            }
            4 => {
                let _ = allocator::transfer(&store, &who, &owner(inp.byte()), Hold::Reserved);
            }
            5 => {
                let _ = allocator::release(&store, &who).unwrap();
                assert!(store.records().unwrap().iter().all(|r| r.owner != who));
            }
            6 => {
                let valid: HashSet<Owner> = (0..4u8)
                    .filter(|k| inp.byte() & (1 << k) != 0)
                    .map(owner)
                    .collect();
                let report: GcReport = allocator::gc(&store, &valid).unwrap();
                for ip in &report.repaired {
                    damaged.remove(ip);
                }
                let _ = allocator::can_allocate(&store, &sets);
            }
            _ => {
                let ip = near(&mut inp, &sets);
                if store.claim_of(ip).unwrap() == Claim::Free {
                    store.damage_claim(ip, "fuzzed");
                    damaged.insert(ip);
                }
            }
        }
        invariants(&store, &sets, &damaged);
    }
});
