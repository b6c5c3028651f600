//! Bringing the kernel in step with the plan: read what plugnet owns (tagged routes, `pnvx…`
//! devices with plugnet's alias, their FDB and permanent neighbours), change only what
//! differs, delete what nobody wants. Also the per-peer status of the result.
//!
//! Invariant: an entry that is already right is never rewritten (an agent restart sends no
//! change request for a data plane in place); a failure is recorded with the step that failed
//! and the rest goes on.

use super::desired::{Cluster, Me, NetworkPlan};
use ipnetwork::IpNetwork;
use plugnet::netlink::{FdbEntry, IpFamily, Mac, Netlink, TaggedRoute, VxlanOptions, VXLAN_PORT};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;
use tracing::info;

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests that changed the kernel (adds, replaces, deletes).
    pub changes: usize,
    pub errors: Vec<String>,
    /// Per network: routes and FDB entries in place after the reconcile.
    pub routes: BTreeMap<String, i64>,
    pub fdb: BTreeMap<String, i64>,
    /// Blocks whose route failed, FDB destinations that failed.
    failed_routes: BTreeSet<IpNetwork>,
    failed_fdb: BTreeSet<IpAddr>,
}

const PREFIX: &str = "pnvx";
const ALIAS_PREFIX: &str = "plugnet cluster ";

/// Reconcile the kernel with `plans` (every network's wants on this host).
pub async fn reconcile(nl: &Netlink, me: &Me, plans: &BTreeMap<String, NetworkPlan>) -> Outcome {
    let mut o = Outcome::default();
    let mut dev_index: BTreeMap<String, u32> = BTreeMap::new();
    for (net, p) in plans {
        let Some(d) = &p.device else { continue };
        match device(nl, me, d, &mut o).await {
            Ok(index) => {
                dev_index.insert(d.name.clone(), index);
                let n = entries(nl, index, d, &mut o).await;
                o.fdb.insert(net.clone(), n);
            }
            Err(e) => o.errors.push(e),
        }
    }
    // Devices of networks nobody wants any more (removed from the cluster).
    let wanted: BTreeSet<&str> = plans
        .values()
        .filter_map(|p| p.device.as_ref().map(|d| d.name.as_str()))
        .collect();
    match nl.links().await {
        Ok(links) => {
            for l in links {
                let ours = l.name.starts_with(PREFIX)
                    && l.alias
                        .as_deref()
                        .is_some_and(|a| a.starts_with(ALIAS_PREFIX));
                if ours && !wanted.contains(l.name.as_str()) {
                    info!(device = %l.name, "data plane: deleting the VXLAN device of a removed network");
                    match nl.del_link(l.index).await {
                        Ok(()) => o.changes += 1,
                        Err(e) => o.errors.push(e.to_string()),
                    }
                }
            }
        }
        Err(e) => o.errors.push(e.to_string()),
    }
    routes(nl, plans, &dev_index, &mut o).await;
    o
}

/// The network's VXLAN device, created or corrected; its index.
async fn device(
    nl: &Netlink,
    me: &Me,
    d: &super::desired::Device,
    o: &mut Outcome,
) -> Result<u32, String> {
    let opts = VxlanOptions {
        name: d.name.clone(),
        vni: d.vni,
        local: me.underlay,
        dev: Some(me.underlay_index),
        port: VXLAN_PORT,
        mac: me.vtep_mac,
        mtu: d.mtu,
    };
    let existing = nl.vxlan_by_name(&d.name).await.map_err(|e| e.to_string())?;
    let vx = match existing {
        Some(vx) if vx.matches(&opts) => vx,
        other => {
            if let Some(vx) = other {
                info!(device = %d.name, "data plane: VXLAN device differs in VNI/local/port: recreating");
                nl.del_link(vx.link.index)
                    .await
                    .map_err(|e| e.to_string())?;
                o.changes += 1;
            } else if let Some(l) = nl.link_by_name(&d.name).await.map_err(|e| e.to_string())? {
                return Err(format!(
                    "a link {} (not a VXLAN device of plugnet, index {}) is in the way",
                    d.name, l.index
                ));
            }
            o.changes += 1;
            info!(device = %d.name, vni = d.vni, mtu = d.mtu, "data plane: creating the VXLAN device");
            nl.create_vxlan(&opts).await.map_err(|e| e.to_string())?
        }
    };
    let index = vx.link.index;
    if vx.link.mac != Some(me.vtep_mac) {
        nl.set_mac(index, me.vtep_mac)
            .await
            .map_err(|e| e.to_string())?;
        o.changes += 1;
    }
    if vx.link.mtu != Some(d.mtu) {
        nl.set_mtu(index, d.mtu).await.map_err(|e| e.to_string())?;
        o.changes += 1;
    }
    if vx.link.alias.as_deref() != Some(d.alias.as_str()) {
        nl.set_alias(index, &d.alias)
            .await
            .map_err(|e| e.to_string())?;
        o.changes += 1;
    }
    if !vx.link.up {
        nl.set_up(index).await.map_err(|e| e.to_string())?;
        o.changes += 1;
    }
    Ok(index)
}

/// FDB and permanent neighbours of one device; the FDB entries in place afterwards.
async fn entries(nl: &Netlink, index: u32, d: &super::desired::Device, o: &mut Outcome) -> i64 {
    let mut in_place = 0;
    match nl.fdb(index).await {
        Ok(actual) => {
            let actual: BTreeSet<FdbEntry> = actual.into_iter().collect();
            for e in d.fdb.difference(&actual) {
                match nl.add_fdb(index, e).await {
                    Ok(()) => o.changes += 1,
                    Err(err) => {
                        o.failed_fdb.insert(e.dst);
                        o.errors.push(err.to_string());
                    }
                }
            }
            for e in actual.difference(&d.fdb) {
                match nl.del_fdb(index, e).await {
                    Ok(()) => o.changes += 1,
                    Err(err) => o.errors.push(err.to_string()),
                }
            }
            in_place = d
                .fdb
                .iter()
                .filter(|e| !o.failed_fdb.contains(&e.dst))
                .count() as i64;
        }
        Err(e) => {
            o.failed_fdb.extend(d.fdb.iter().map(|e| e.dst));
            o.errors.push(e.to_string());
        }
    }
    let mut actual: BTreeMap<IpAddr, Option<Mac>> = BTreeMap::new();
    for fam in [IpFamily::V4, IpFamily::V6] {
        match nl.neighbours(index, fam).await {
            Ok(ns) => actual.extend(
                ns.into_iter()
                    .filter(|n| n.permanent)
                    .map(|n| (n.ip, n.mac)),
            ),
            Err(e) => o.errors.push(e.to_string()),
        }
    }
    for (ip, mac) in &d.neighbours {
        if actual.get(ip) != Some(&Some(*mac)) {
            match nl.set_permanent_neighbour(index, *ip, *mac).await {
                Ok(()) => o.changes += 1,
                Err(e) => o.errors.push(e.to_string()),
            }
        }
    }
    for ip in actual.keys() {
        if !d.neighbours.contains_key(ip) {
            match nl.del_neighbour(index, *ip).await {
                Ok(()) => o.changes += 1,
                Err(e) => o.errors.push(e.to_string()),
            }
        }
    }
    in_place
}

/// Every tagged route: wanted ones made right, the others deleted.
async fn routes(
    nl: &Netlink,
    plans: &BTreeMap<String, NetworkPlan>,
    dev_index: &BTreeMap<String, u32>,
    o: &mut Outcome,
) {
    let actual = match nl.tagged_routes().await {
        Ok(r) => r,
        Err(e) => {
            o.errors.push(e.to_string());
            for p in plans.values() {
                o.failed_routes.extend(p.routes.keys());
            }
            return;
        }
    };
    let mut by_dst: BTreeMap<IpNetwork, Vec<TaggedRoute>> = BTreeMap::new();
    for r in actual {
        by_dst.entry(r.dst).or_default().push(r);
    }
    let mut wanted: BTreeSet<IpNetwork> = BTreeSet::new();
    for (net, p) in plans {
        let mut n = 0;
        for (dst, planned) in &p.routes {
            wanted.insert(*dst);
            let oif = match &planned.oif_name {
                Some(name) => match dev_index.get(name) {
                    Some(i) => Some(*i),
                    None => {
                        o.failed_routes.insert(*dst);
                        continue; // the device failed; already reported
                    }
                },
                None => None,
            };
            let want = planned.tagged(*dst, oif);
            let have = by_dst.get(dst).map(Vec::as_slice).unwrap_or(&[]);
            let right = have.len() == 1
                && have.iter().all(|h| {
                    h.via == want.via
                        && h.onlink == want.onlink
                        && (want.oif.is_none() || h.oif == want.oif)
                });
            if !right {
                for extra in have.iter().skip(1) {
                    let _ = nl.del_tagged_route(extra).await;
                }
                match nl.replace_tagged_route(&want).await {
                    Ok(()) => o.changes += 1,
                    Err(e) => {
                        o.failed_routes.insert(*dst);
                        let hint = if e.errno() == Some(libc::ENETUNREACH) && !want.onlink {
                            " (host-gw needs the hosts on one L2 segment: this next hop is \
                             on no connected subnet here; use --mode vxlan)"
                        } else {
                            ""
                        };
                        o.errors.push(format!("network {net}: {e}{hint}"));
                        continue;
                    }
                }
            }
            n += 1;
        }
        o.routes.insert(net.clone(), n);
    }
    for (dst, rs) in &by_dst {
        if wanted.contains(dst) {
            continue;
        }
        for r in rs {
            info!(route = %r.dst, via = %r.via, "data plane: deleting a route nobody wants");
            match nl.del_tagged_route(r).await {
                Ok(()) => o.changes += 1,
                Err(e) if e.errno() == Some(libc::ESRCH) => {}
                Err(e) => o.errors.push(e.to_string()),
            }
        }
    }
}

/// Per network and peer: its blocks and whether their routes and its FDB entries are in place.
pub fn status(
    me: &Me,
    c: &Cluster,
    plans: &BTreeMap<String, NetworkPlan>,
    o: &Outcome,
    revision: i64,
    took: Duration,
) -> Value {
    let networks: Vec<Value> = plans
        .iter()
        .map(|(net, p)| {
            let mut peers: BTreeMap<&str, (Vec<String>, bool)> = BTreeMap::new();
            for h in c.hosts.keys().filter(|h| **h != me.name) {
                peers.insert(h, (Vec::new(), true));
            }
            for (block, holder) in &p.holders {
                let e = peers.entry(holder).or_insert((Vec::new(), true));
                e.0.push(block.to_string());
                if o.failed_routes.contains(block) || p.unroutable.contains_key(block) {
                    e.1 = false;
                }
            }
            let peers: Vec<Value> = peers
                .into_iter()
                .map(|(h, (blocks, routes_ok))| {
                    let underlay = c.hosts.get(h).map(|r| r.underlay);
                    let fdb_ok =
                        p.device.is_none() || underlay.is_some_and(|u| !o.failed_fdb.contains(&u));
                    json!({
                        "host": h,
                        "registered": !c.departed.contains(h),
                        "underlay": underlay.map(|u| u.to_string()),
                        "blocks": blocks,
                        "routesInPlace": routes_ok,
                        "fdbInPlace": fdb_ok,
                    })
                })
                .collect();
            json!({
                "network": net,
                "mode": p.mode,
                "mtu": p.mtu,
                "device": p.device.as_ref().map(|d| d.name.clone()),
                "routes": o.routes.get(net).copied().unwrap_or(0),
                "fdbEntries": o.fdb.get(net).copied().unwrap_or(0),
                "peers": peers,
                "unroutable": p.unroutable.iter()
                    .map(|(b, why)| json!({"block": b.to_string(), "why": why}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "vtepMac": me.vtep_mac.to_string(),
        "underlayMtu": me.underlay_mtu,
        "revision": revision,
        "lastReconcileMs": took.as_secs_f64() * 1000.0,
        "lastChanges": o.changes,
        "errors": o.errors,
        "networks": networks,
    })
}
