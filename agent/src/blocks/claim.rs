//! Choosing blocks to claim and claiming them in one etcd transaction.
//!
//! Invariant: a claim is a compare-and-swap — it succeeds only if the network is the one this
//! host knows (same create revision) and every chosen block is still free (no key) or still the
//! reclaimed value that was read (same mod revision); one claim of any number of blocks is one
//! etcd revision. Never-used blocks go first; reclaimed ones (whose former host's containers
//! may come back) only when no other is left.

use crate::etcd::{Etcd, Kv};
use crate::schema::{self, BlockValue, NetworkDef};
use anyhow::{bail, Result};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use ipnetwork::IpNetwork;
use plugnet::ipam::config::{from_u128, to_u128};
use std::collections::{BTreeMap, HashSet};

/// The blocks of a network's subnets of one family, `step` apart, lowest first, skipping
/// `taken`; at most `limit`.
pub fn free_blocks(
    def: &NetworkDef,
    v4: bool,
    taken: &HashSet<IpNetwork>,
    limit: usize,
) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    let prefix = if v4 {
        def.block_prefix_v4
    } else {
        def.block_prefix_v6
    };
    for subnet in def.subnets.iter().filter(|s| s.is_ipv4() == v4) {
        if prefix < subnet.prefix() {
            continue;
        }
        let bits = if v4 { 32 } else { 128 };
        let step: u128 = 1u128 << (bits - prefix);
        let count: u128 = 1u128
            .checked_shl(u32::from(prefix - subnet.prefix()))
            .unwrap_or(u128::MAX);
        let base = to_u128(subnet.network());
        // Taken blocks are skipped one by one: the walk is bounded by taken + limit.
        let mut i: u128 = 0;
        while i < count && out.len() < limit {
            let b = IpNetwork::new(from_u128(base + i * step, v4), prefix).expect("valid block");
            if !taken.contains(&b) {
                out.push(b);
            }
            i += 1;
        }
        if out.len() >= limit {
            break;
        }
    }
    out
}

/// Claim `want` blocks of one family for `host`. `salt` spreads hosts claiming at the same
/// moment over different free blocks. Returns the blocks and their new mod revision.
pub async fn claim(
    etcd: &Etcd,
    def: &NetworkDef,
    def_rev: i64,
    v4: bool,
    want: usize,
    held: &BlockValue,
    salt: u64,
) -> Result<(Vec<IpNetwork>, i64)> {
    let (kvs, _) = etcd.get_prefix(&schema::blocks_prefix(&def.name)).await?;
    let mut taken = HashSet::new();
    let mut reclaimed: Vec<(u64, IpNetwork, i64)> = Vec::new();
    for kv in &kvs {
        let Some((_, block)) = schema::parse_block_key(&kv.key) else {
            continue;
        };
        taken.insert(block);
        if let Ok(BlockValue::Reclaimed { at_unix }) = schema::decode(&kv.key, &kv.value) {
            if block.is_ipv4() == v4 {
                reclaimed.push((at_unix, block, kv.mod_revision));
            }
        }
    }
    let pool = free_blocks(def, v4, &taken, want * 8);
    let mut chosen: Vec<(IpNetwork, Option<i64>)> = Vec::new();
    if !pool.is_empty() {
        let start = (salt as usize) % pool.len().min(8);
        for k in 0..want.min(pool.len()) {
            chosen.push((pool[(start + k) % pool.len()], None));
        }
    }
    reclaimed.sort();
    for (_, b, rev) in reclaimed {
        if chosen.len() >= want {
            break;
        }
        chosen.push((b, Some(rev)));
    }
    if chosen.is_empty() {
        bail!(
            "no free IPv{} block left in {} (subnets {})",
            if v4 { 4 } else { 6 },
            def.name,
            def.subnets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut cmp = vec![Compare::create_revision(
        schema::network_key(&def.name),
        CompareOp::Equal,
        def_rev,
    )];
    let mut ops = Vec::new();
    let value = schema::encode(held);
    for (b, rev) in &chosen {
        let key = schema::block_key(&def.name, *b);
        cmp.push(match rev {
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
            Some(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, *r),
        });
        ops.push(TxnOp::put(key, value.clone(), None));
    }
    let r = etcd.txn(Txn::new().when(cmp).and_then(ops)).await?;
    if !r.succeeded() {
        bail!(Conflict);
    }
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    Ok((chosen.into_iter().map(|(b, _)| b).collect(), rev))
}

/// A compare-and-swap lost to another writer: read again and retry.
#[derive(Debug)]
pub struct Conflict;

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another host changed the blocks at the same moment")
    }
}

impl std::error::Error for Conflict {}

/// Return `block` (held by us at `mod_rev`) to the cluster.
pub async fn release(etcd: &Etcd, net: &str, block: IpNetwork, mod_rev: i64) -> Result<bool> {
    let key = schema::block_key(net, block);
    let r = etcd
        .txn(
            Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    mod_rev,
                )])
                .and_then([TxnOp::delete(key, None)]),
        )
        .await?;
    Ok(r.succeeded())
}

/// Take back a block this host used to hold and still has containers in, if it is free or
/// reclaimed and unclaimed since (`kv` as read; `None`: no key).
pub async fn retake(
    etcd: &Etcd,
    net: &str,
    def_rev: i64,
    block: IpNetwork,
    kv: Option<&Kv>,
    held: &BlockValue,
) -> Result<Option<i64>> {
    let key = schema::block_key(net, block);
    let cmp = match kv {
        None => Compare::version(key.clone(), CompareOp::Equal, 0),
        Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision),
    };
    let r = etcd
        .txn(
            Txn::new()
                .when([
                    Compare::create_revision(schema::network_key(net), CompareOp::Equal, def_rev),
                    cmp,
                ])
                .and_then([TxnOp::put(key, schema::encode(held), None)]),
        )
        .await?;
    Ok(r.succeeded()
        .then(|| r.header().map(|h| h.revision()).unwrap_or(0)))
}

/// The blocks of `net` in etcd, by block.
pub fn by_block(kvs: &[Kv]) -> BTreeMap<IpNetwork, Kv> {
    kvs.iter()
        .filter_map(|kv| schema::parse_block_key(&kv.key).map(|(_, b)| (b, kv.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Mode;

    fn def(subnets: &[&str]) -> NetworkDef {
        NetworkDef {
            name: "n".into(),
            subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
            block_prefix_v4: 26,
            block_prefix_v6: 122,
            mode: Mode::HostGw,
            vni: None,
            reclaim_grace_secs: 600,
            created_unix: 0,
        }
    }

    #[test]
    fn free_blocks_skip_taken_and_cross_subnets() {
        let d = def(&["10.1.0.0/25", "10.2.0.0/26", "fd00::/64"]);
        let b = |s: &str| s.parse::<IpNetwork>().unwrap();
        let taken: HashSet<_> = [b("10.1.0.0/26")].into_iter().collect();
        assert_eq!(
            free_blocks(&d, true, &taken, 10),
            vec![b("10.1.0.64/26"), b("10.2.0.0/26")]
        );
        assert_eq!(
            free_blocks(&d, false, &HashSet::new(), 2),
            vec![b("fd00::/122"), b("fd00::40/122")]
        );
        let all: HashSet<_> = free_blocks(&d, true, &HashSet::new(), 10)
            .into_iter()
            .collect();
        assert!(free_blocks(&d, true, &all, 10).is_empty());
    }
}
