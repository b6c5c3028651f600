//! The cluster data plane (issue 22): per cluster network, the routes (host-gw) or the VXLAN
//! device, FDB and neighbour entries and routes (vxlan) that carry packets to the blocks other
//! hosts hold, kept by reconciliation.
//!
//! - Desired ([`desired`]) from etcd: networks, registered hosts (underlay address, VTEP MAC),
//!   blocks and holders. Listed once, then watched from the listed revision; the watch's events
//!   update the cached copy and start a reconcile at once. A compacted or broken watch lists
//!   again. Every [`FULL_EVERY`] the list and the full diff run regardless.
//! - Actual ([`apply`]): routes tagged with plugnet's route protocol, the `pnvx…` devices with
//!   plugnet's alias, their FDB and permanent neighbours. Only differences are applied: an
//!   agent restart changes nothing that is already right (no flow is interrupted); entries
//!   plugnet tagged that nobody wants (a host gone, a network removed, downtime) are deleted.
//!
//! - FORWARD ([`forward`]): where the host's iptables FORWARD path drops, a chain of the
//!   agent's own accepts traffic inside each cluster network's subnets.
//!
//! Invariant: the agent touches only routes with protocol [`plugnet::netlink::PLUGNET_RTPROT`]
//! and VXLAN devices named `pnvx…` carrying the alias `plugnet cluster <net>`; with etcd out of
//! reach it leaves the programmed data plane as it is.

pub mod apply;
pub mod desired;
pub mod forward;

use crate::etcd::Etcd;
use crate::metrics::Metrics;
use crate::runtime::Shutdown;
use crate::schema::{self, BlockValue, HostRecord, NetworkDef};
use anyhow::{Context, Result};
use desired::{Cluster, Me};
use plugnet::netlink::{Mac, Netlink};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The full list-and-diff period.
pub const FULL_EVERY: Duration = Duration::from_secs(60);

/// The IPv6 link-local address of the link holding `underlay` (host-gw's IPv6 next hop), if
/// the underlay is IPv4 and the link has one.
pub fn underlay_link_local(underlay: IpAddr) -> Option<Ipv6Addr> {
    if underlay.is_ipv6() {
        return None;
    }
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs().ok()?.collect();
    let ifname = addrs.iter().find_map(|a| {
        let sin = a.address.as_ref()?.as_sockaddr_in()?;
        (IpAddr::V4(sin.ip()) == underlay).then(|| a.interface_name.clone())
    })?;
    addrs.iter().find_map(|a| {
        if a.interface_name != ifname {
            return None;
        }
        let ip = a.address.as_ref()?.as_sockaddr_in6()?.ip();
        ((ip.segments()[0] & 0xffc0) == 0xfe80).then_some(ip)
    })
}

/// The MTU of the link holding `underlay` (read once at start; the data plane's MTU is the
/// underlay's less the encapsulation).
pub fn underlay_mtu(underlay: IpAddr) -> Option<u32> {
    let ifname = nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let addr = a.address.as_ref()?;
        let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
            (Some(v4), _) => IpAddr::V4(v4.ip()),
            (_, Some(v6)) => IpAddr::V6(v6.ip()),
            _ => return None,
        };
        (ip == underlay).then(|| a.interface_name.clone())
    })?;
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The cached copy of the cluster keys (networks, hosts, blocks) and its revision.
#[derive(Default)]
struct Cache {
    kvs: BTreeMap<Vec<u8>, Vec<u8>>,
    revision: i64,
    /// Hosts whose registration went (lease expired: agent down longer than its TTL) while
    /// they still hold blocks: their containers still run, so their routes and FDB entries stay
    /// — until their blocks are released or reclaimed, or they register again.
    departed: BTreeMap<String, HostRecord>,
    /// `departed` as last written to the state dir (so an agent restart still routes to them).
    departed_written: BTreeMap<String, HostRecord>,
}

/// `<state-dir>/dataplane-departed.json`: the departed hosts' last records.
const DEPARTED_FILE: &str = "dataplane-departed.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct DepartedFile {
    format: u32,
    departed: BTreeMap<String, HostRecord>,
}

fn load_departed(dir: &std::path::Path) -> BTreeMap<String, HostRecord> {
    std::fs::read(dir.join(DEPARTED_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<DepartedFile>(&b).ok())
        .filter(|f| f.format == 1)
        .map(|f| f.departed)
        .unwrap_or_default()
}

fn save_departed(dir: &std::path::Path, d: &BTreeMap<String, HostRecord>) -> std::io::Result<()> {
    let f = DepartedFile {
        format: 1,
        departed: d.clone(),
    };
    plugnet::fsutil::write_atomic(
        &dir.join(DEPARTED_FILE),
        schema::encode(&f).as_bytes(),
        0o600,
        plugnet::fsutil::Durability::File,
    )
}

impl Cache {
    /// A host key deleted (or gone at a re-list): remember its last record.
    fn depart(&mut self, key: &[u8], value: &[u8]) {
        if let Some(name) = schema::name_after(schema::HOSTS, key) {
            if let Ok(h) = schema::decode::<HostRecord>(key, value) {
                self.departed.insert(name.to_string(), h);
            }
        }
    }

    /// Replace the whole copy (a list), keeping what left in between as departed.
    fn replace(&mut self, kvs: BTreeMap<Vec<u8>, Vec<u8>>, revision: i64) {
        let gone: Vec<(Vec<u8>, Vec<u8>)> = self
            .kvs
            .iter()
            .filter(|(k, _)| k.starts_with(schema::HOSTS.as_bytes()) && !kvs.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in gone {
            self.depart(&k, &v);
        }
        self.kvs = kvs;
        self.revision = revision;
    }

    fn cluster(&mut self) -> Cluster {
        let mut c = Cluster::default();
        for (k, v) in &self.kvs {
            if let Some(name) = schema::name_after(schema::NETWORKS, k) {
                if let Ok(def) = schema::decode::<NetworkDef>(k, v) {
                    c.networks.insert(name.to_string(), def);
                }
            } else if let Some(name) = schema::name_after(schema::HOSTS, k) {
                if let Ok(h) = schema::decode::<HostRecord>(k, v) {
                    c.hosts.insert(name.to_string(), h);
                }
            } else if let Some((net, block)) = schema::parse_block_key(k) {
                if let Ok(b) = schema::decode::<BlockValue>(k, v) {
                    c.blocks.entry(net).or_default().insert(block, b);
                }
            }
        }
        // Departed hosts stay peers while they hold a block; registered again, they are
        // simply registered.
        let holding = |name: &str| {
            c.blocks
                .values()
                .flat_map(|b| b.values())
                .any(|v| v.holder() == Some(name))
        };
        let keep: BTreeMap<String, HostRecord> = self
            .departed
            .iter()
            .filter(|(n, _)| !c.hosts.contains_key(*n) && holding(n))
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect();
        self.departed = keep;
        for (n, h) in &self.departed {
            c.hosts.insert(n.clone(), h.clone());
            c.departed.insert(n.clone());
        }
        c
    }
}

/// What the last reconcile found, for `plugnet cluster status`.
#[derive(Default)]
struct View {
    status: Value,
}

pub struct Dataplane {
    me: Me,
    etcd: Etcd,
    metrics: Arc<Metrics>,
    nl: Netlink,
    view: Mutex<View>,
    /// The subnets the FORWARD accept rules were last synced for.
    forwarded: Mutex<Option<Vec<ipnetwork::IpNetwork>>>,
    state_dir: std::path::PathBuf,
}

impl Dataplane {
    /// Finds the underlay link (by the `--underlay` address) and opens the netlink connection.
    pub async fn start(
        host: &HostRecord,
        etcd: Etcd,
        metrics: Arc<Metrics>,
        state_dir: &std::path::Path,
    ) -> Result<Arc<Dataplane>> {
        let nl = Netlink::host().context("data plane: open netlink")?;
        let link = nl
            .link_with_addr(host.underlay)
            .await
            .context("data plane: find the underlay link")?
            .with_context(|| {
                format!(
                    "data plane: no link holds the underlay address {} (--underlay)",
                    host.underlay
                )
            })?;
        let vtep_mac: Mac = host
            .vtep_mac
            .parse()
            .map_err(|e| anyhow::anyhow!("data plane: VTEP MAC: {e}"))?;
        let me = Me {
            name: host.name.clone(),
            underlay: host.underlay,
            underlay_index: link.index,
            underlay_mtu: link.mtu.unwrap_or(1500),
            vtep_mac,
        };
        info!(host = %me.name, underlay = %me.underlay, link = %link.name,
              mtu = me.underlay_mtu, vtep_mac = %vtep_mac, "data plane: underlay found");
        Ok(Arc::new(Dataplane {
            me,
            etcd,
            metrics,
            nl,
            view: Mutex::new(View::default()),
            forwarded: Mutex::new(None),
            state_dir: state_dir.to_path_buf(),
        }))
    }

    /// The task: find the underlay link (again every 5 s until it is there: an address that
    /// comes up after the agent), publish the data plane in `slot`, then [`Dataplane::run`].
    pub async fn task(
        host: HostRecord,
        etcd: Etcd,
        metrics: Arc<Metrics>,
        state_dir: std::path::PathBuf,
        slot: Arc<std::sync::OnceLock<Arc<Dataplane>>>,
        mut shutdown: Shutdown,
    ) -> Result<()> {
        let mut told = false;
        let dp = loop {
            match Dataplane::start(&host, etcd.clone(), metrics.clone(), &state_dir).await {
                Ok(d) => break d,
                Err(e) => {
                    if !told {
                        warn!(host = %host.name, "{e:#}: no routes to other hosts until it is found (retrying every 5 s)");
                        told = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.wait() => return Ok(()),
                    }
                }
            }
        };
        let _ = slot.set(dp.clone());
        dp.run(shutdown).await
    }

    /// The MTU the devices of a network in `mode` get on this host.
    pub fn mtu(&self, mode: schema::Mode) -> u32 {
        desired::network_mtu(mode, self.me.underlay, self.me.underlay_mtu)
    }

    /// The last reconcile's view, per network and peer.
    pub fn status(&self) -> Value {
        self.view
            .lock()
            .map(|v| v.status.clone())
            .unwrap_or(Value::Null)
    }

    async fn list(&self, cache: &mut Cache) -> Result<()> {
        let (kvs, rev) = self.etcd.get_prefix(schema::ROOT).await?;
        cache.replace(kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(), rev);
        Ok(())
    }

    async fn reconcile(&self, cache: &mut Cache, why: &str) {
        let start = Instant::now();
        let cluster = cache.cluster();
        if cache.departed != cache.departed_written {
            match save_departed(&self.state_dir, &cache.departed) {
                Ok(()) => cache.departed_written = cache.departed.clone(),
                Err(e) => warn!(host = %self.me.name, "data plane: write {DEPARTED_FILE}: {e}"),
            }
        }
        let plans = desired::plan(&cluster, &self.me);
        let mut outcome = apply::reconcile(&self.nl, &self.me, &plans).await;
        let subnets: Vec<ipnetwork::IpNetwork> = cluster
            .networks
            .values()
            .flat_map(|d| d.subnets.iter().copied())
            .collect();
        let synced = self.forwarded.lock().ok().and_then(|f| f.clone());
        if why == "list" || synced.as_ref() != Some(&subnets) {
            let s = subnets.clone();
            match tokio::task::spawn_blocking(move || forward::sync(&s)).await {
                Ok(Ok(n)) => {
                    outcome.changes += n;
                    if let Ok(mut f) = self.forwarded.lock() {
                        *f = Some(subnets);
                    }
                }
                Ok(Err(e)) => outcome.errors.push(format!("FORWARD accept rules: {e}")),
                Err(e) => outcome.errors.push(format!("FORWARD accept rules: {e}")),
            }
        }
        let took = start.elapsed();
        self.metrics.dataplane_observed(
            took,
            outcome.changes as i64,
            &outcome.routes,
            &outcome.fdb,
        );
        if outcome.changes > 0 || !outcome.errors.is_empty() {
            info!(host = %self.me.name, why, changes = outcome.changes,
                  errors = outcome.errors.len(), took_ms = took.as_millis() as u64,
                  "data plane reconciled");
        } else {
            debug!(host = %self.me.name, why, took_us = took.as_micros() as u64,
                   "data plane: nothing to change");
        }
        for e in &outcome.errors {
            warn!(host = %self.me.name, "data plane: {e}");
        }
        let mut status = apply::status(&self.me, &cluster, &plans, &outcome, cache.revision, took);
        status["inPlace"] = json!(!degraded(&status));
        if let Ok(mut v) = self.view.lock() {
            v.status = status;
        }
    }

    /// The task: list, reconcile, watch from the listed revision; list again after a
    /// compaction, a broken watch, or every [`FULL_EVERY`].
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) -> Result<()> {
        use etcd_client::{EventType, WatchOptions};
        let departed = load_departed(&self.state_dir);
        let mut cache = Cache {
            departed: departed.clone(),
            departed_written: departed,
            ..Cache::default()
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            if let Err(e) = self.list(&mut cache).await {
                warn!(host = %self.me.name, "data plane: list: {e:#} (the data plane stays as programmed)");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            backoff = Duration::from_millis(200);
            self.reconcile(&mut cache, "list").await;
            let listed = Instant::now();
            let mut c = self.etcd.client();
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(cache.revision + 1);
            let stream = tokio::select! {
                s = tokio::time::timeout(self.etcd.timeout, c.watch(schema::ROOT, Some(opts))) => s,
                _ = shutdown.wait() => return Ok(()),
            };
            let Ok(Ok(mut stream)) = stream else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                continue;
            };
            loop {
                let left = FULL_EVERY.saturating_sub(listed.elapsed());
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tokio::time::sleep(left) => break,
                    _ = shutdown.wait() => return Ok(()),
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => break,
                };
                if resp.compact_revision() > 0 {
                    info!(host = %self.me.name, "data plane: watch compacted; listing again");
                    break;
                }
                if resp.canceled() {
                    break;
                }
                let mut changed = false;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    changed = true;
                    match ev.event_type() {
                        EventType::Put => {
                            cache.kvs.insert(kv.key().to_vec(), kv.value().to_vec());
                        }
                        EventType::Delete => {
                            if let Some(old) = cache.kvs.remove(kv.key()) {
                                cache.depart(kv.key(), &old);
                            }
                        }
                    }
                    cache.revision = cache.revision.max(kv.mod_revision());
                }
                if let Some(h) = resp.header() {
                    cache.revision = cache.revision.max(h.revision());
                }
                if changed {
                    self.reconcile(&mut cache, "watch").await;
                }
            }
        }
    }
}

/// Whether the data plane's status shows a problem: the last reconcile failed somewhere, or a
/// peer's routes or FDB entries are not in place (the status's `inPlace: false`; the cluster's
/// `degraded` stays about etcd and blocks).
pub fn degraded(status: &Value) -> bool {
    let errors = status["errors"].as_array().is_some_and(|e| !e.is_empty());
    let peer_missing = status["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["peers"].as_array().into_iter().flatten())
        .any(|p| p["routesInPlace"] == false || p["fdbInPlace"] == false);
    errors || peer_missing
}

/// The data plane's part of the agent's status answer.
pub fn status_of(dp: Option<&Arc<Dataplane>>) -> Value {
    match dp {
        Some(d) => d.status(),
        None => json!({"error": "the data plane has not found the underlay link (see the log)"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> (Vec<u8>, Vec<u8>) {
        let h = HostRecord {
            name: name.into(),
            id: format!("id-{name}"),
            underlay: "10.173.200.9".parse().unwrap(),
            vtep_mac: "02:00:00:00:00:09".into(),
            agent_version: "t".into(),
            started_unix: 0,
            underlay_link_local: None,
        };
        (
            schema::host_key(name).into_bytes(),
            schema::encode(&h).into_bytes(),
        )
    }

    fn block(holder: &str, b: &str) -> (Vec<u8>, Vec<u8>) {
        let v = BlockValue::Held {
            host: holder.into(),
            host_id: format!("id-{holder}"),
            claimed_unix: 0,
        };
        (
            schema::block_key("n", b.parse().unwrap()).into_bytes(),
            schema::encode(&v).into_bytes(),
        )
    }

    #[test]
    fn a_host_gone_from_a_list_departs_and_stays_while_it_holds_blocks() {
        let mut c = Cache::default();
        let (hk, hv) = host("b");
        let (bk, bv) = block("b", "10.173.0.64/26");
        c.replace([(hk.clone(), hv), (bk.clone(), bv.clone())].into(), 5);
        assert!(c.cluster().departed.is_empty());
        // The registration lapses between two lists: b departs, still a peer.
        c.replace([(bk.clone(), bv)].into(), 9);
        let cl = c.cluster();
        assert!(cl.departed.contains("b") && cl.hosts.contains_key("b"));
        assert_eq!(c.revision, 9);
        // Its block goes: so does b.
        c.replace(BTreeMap::new(), 12);
        let cl = c.cluster();
        assert!(cl.departed.is_empty() && cl.hosts.is_empty());
        assert!(c.departed.is_empty());
    }

    #[test]
    fn a_deleted_host_key_departs_and_a_new_registration_replaces_it() {
        let mut c = Cache::default();
        let (hk, hv) = host("b");
        let (bk, bv) = block("b", "10.173.0.64/26");
        c.kvs.insert(bk, bv);
        c.depart(&hk, &hv);
        assert!(c.cluster().departed.contains("b"));
        c.kvs.insert(hk, hv);
        let cl = c.cluster();
        assert!(cl.departed.is_empty() && cl.hosts.contains_key("b"));
    }

    #[test]
    fn degraded_reads_errors_and_peers() {
        assert!(!degraded(&json!({"errors": [], "networks": []})));
        assert!(degraded(&json!({"errors": ["x"], "networks": []})));
        assert!(degraded(
            &json!({"errors": [], "networks": [{"peers": [{"routesInPlace": false}]}]})
        ));
    }
}
