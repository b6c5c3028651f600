//! Per cluster network, the address blocks this host holds, kept in step with etcd and written
//! to the network file plugnet-ipam allocates from.
//!
//! - Ahead of demand: each tick (1 s) a network whose active blocks have fewer than
//!   `--low-watermark` free addresses of a family claims enough blocks in one transaction;
//!   an ADD that finds its blocks full asks ([`Blocks::grow`]) and is answered within the etcd
//!   timeout.
//! - Back after a cooldown: a block empty for `--cooldown`, whose going leaves the watermark
//!   met, is marked releasing under the store's lock (no ADD can start in it), then deleted
//!   from etcd by compare-and-swap.
//! - Resync (start, every 30 s, etcd back): blocks etcd says are ours are active; a block that
//!   was taken back while this host was cut off is retaken if still free and this host still
//!   has containers in it, revoked (no new addresses, its containers reported) if another host
//!   holds it, dropped if empty. Blocks etcd has for us that the file lacks (a kill between
//!   claim and write) are adopted.
//! - Fence: the file's `allocUntil` is the last acknowledged keep-alive plus the network's
//!   grace; past it plugnet-ipam hands out nothing new, because from then on other hosts may
//!   reclaim this host's blocks.
//!
//! Invariant: every network's state changes under one async mutex, so claims, releases and
//! resyncs of a network never interleave; capacity only shrinks under the store's lock.

pub mod claim;
mod reconcile;
mod sync;
pub mod usage;

use crate::config::ClusterConfig;
use crate::etcd::Etcd;
use crate::host::{Host, Liveness};
use crate::metrics::{Metrics, Net as NetLabel, NetResult};
use crate::runtime::Shutdown;
use crate::schema::{self, BlockValue, HostRecord, NetworkDef};
use crate::state::{Identity, LocalState};
use anyhow::{anyhow, Context, Result};
use ipnetwork::IpNetwork;
use plugnet::ipam::cluster::ask::Answer;
use plugnet::ipam::cluster::local::{
    boot_id, boottime_ms, unix_ms, BlockState, Deadline, EtcdView, HeldBlock, NetworkFile, FORMAT,
};
use plugnet::ipam::cluster::{block_capacity, GROW_WAIT};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::{error, info, warn};

pub const TICK: Duration = Duration::from_secs(1);
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The agent's copy of a network definition, kept in the network file (`definition`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cached {
    pub create_revision: i64,
    pub def: NetworkDef,
}

struct Held {
    /// Claim order: the network file lists blocks oldest first, so plugnet-ipam's round-robin
    /// moves on from a full block to the newest ones and never walks full blocks to find room.
    seq: u64,
    state: BlockState,
    /// The block key's mod revision when last seen ours (0: not yet seen in this run).
    mod_rev: i64,
    empty_since: Option<Instant>,
}

struct Net {
    def: NetworkDef,
    def_rev: i64,
    blocks: BTreeMap<IpNetwork, Held>,
    removed: bool,
    /// The deadline found in the file at start, until this run reaches etcd.
    inherited: Deadline,
    written: Option<NetworkFile>,
    /// Revoked holders last reported, to log each change once.
    reported: BTreeSet<(String, String, IpAddr)>,
    fenced: bool,
}

type Task = Pin<Box<dyn Future<Output = Result<()>>>>;

pub struct Blocks {
    cfg: ClusterConfig,
    ident: Identity,
    state: PathBuf,
    etcd: Etcd,
    metrics: Arc<Metrics>,
    pub live: Arc<Liveness>,
    host: Arc<Host>,
    nets: Mutex<BTreeMap<String, Net>>,
    /// Fired by the watch when etcd changed under a network this host serves.
    resync_now: tokio::sync::Notify,
    /// The underlay link's MTU (the data plane's MTU is derived from it, see `file`).
    underlay_mtu: Option<u32>,
}

fn family(b: &IpNetwork) -> &'static str {
    if b.is_ipv4() {
        "4"
    } else {
        "6"
    }
}

impl Blocks {
    pub async fn start(
        cfg: &ClusterConfig,
        state: &LocalState,
        metrics: Arc<Metrics>,
        _shutdown: &Shutdown,
    ) -> Result<Arc<Blocks>> {
        let ident = state.identity(&cfg.host)?;
        let etcd = Etcd::connect(&cfg.etcd, metrics.clone()).await?;
        let live = Arc::new(Liveness::default());
        let record = HostRecord {
            name: ident.name.clone(),
            id: ident.id.clone(),
            underlay: cfg.underlay,
            vtep_mac: crate::identity::vtep_mac(&ident.id),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            started_unix: schema::now_unix(),
            underlay_link_local: crate::dataplane::underlay_link_local(cfg.underlay),
        };
        let host = Arc::new(Host {
            record,
            etcd: etcd.clone(),
            ttl: cfg.lease_ttl,
            live: live.clone(),
        });
        let mut nets = BTreeMap::new();
        for name in state.networks() {
            match NetworkFile::read(state.dir(), &name) {
                Ok(Some(f)) => match serde_json::from_value::<Cached>(f.definition.clone()) {
                    Ok(c) => {
                        let blocks = f
                            .blocks
                            .iter()
                            .enumerate()
                            .map(|(seq, b)| {
                                let held = Held {
                                    seq: seq as u64,
                                    state: b.state,
                                    mod_rev: 0,
                                    empty_since: None,
                                };
                                (b.cidr, held)
                            })
                            .collect();
                        info!(network = %name, blocks = f.blocks.len(), "loaded from local state");
                        nets.insert(
                            name.clone(),
                            Net {
                                def: c.def,
                                def_rev: c.create_revision,
                                blocks,
                                removed: f.removed,
                                inherited: f.alloc_until,
                                written: Some(f),
                                reported: BTreeSet::new(),
                                fenced: false,
                            },
                        );
                    }
                    Err(e) => warn!(network = %name, "network file without a definition: {e}"),
                },
                Ok(None) => {}
                Err(e) => error!(network = %name, "{e}"),
            }
        }
        Ok(Arc::new(Blocks {
            cfg: cfg.clone(),
            ident,
            state: state.dir().to_path_buf(),
            etcd,
            metrics,
            live,
            host,
            nets: Mutex::new(nets),
            resync_now: tokio::sync::Notify::new(),
            underlay_mtu: crate::dataplane::underlay_mtu(cfg.underlay),
        }))
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// This host's record in etcd (name, underlay, VTEP MAC).
    pub fn record(&self) -> &HostRecord {
        &self.host.record
    }

    /// The cluster tasks: the host's lease, the blocks' reconciliation, the reclaim of dead
    /// hosts' blocks.
    pub fn tasks(self: Arc<Self>, shutdown: Shutdown) -> Vec<(&'static str, Task)> {
        let reclaim = crate::reclaim::Reclaim::new(self.etcd.clone(), self.metrics.clone());
        vec![
            ("host", Box::pin(self.host.clone().run(shutdown.clone()))),
            ("blocks", Box::pin(self.clone().run(shutdown.clone()))),
            ("watch", Box::pin(self.clone().watch(shutdown.clone()))),
            (
                "reclaim",
                Box::pin(reclaim.run(self.live.clone(), shutdown)),
            ),
        ]
    }

    fn held_value(&self) -> BlockValue {
        BlockValue::Held {
            host: self.ident.name.clone(),
            host_id: self.ident.id.clone(),
            claimed_unix: schema::now_unix(),
        }
    }

    fn mine(&self, kv: &crate::etcd::Kv) -> bool {
        matches!(schema::decode(&kv.key, &kv.value),
            Ok(BlockValue::Held { host, host_id, .. }) if host == self.ident.name && host_id == self.ident.id)
    }

    async fn run(self: Arc<Self>, mut shutdown: Shutdown) -> Result<()> {
        let mut last_resync: Option<Instant> = None;
        let mut was_reachable = false;
        loop {
            let mut now = false;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.live.changed.notified() => {}
                _ = self.resync_now.notified() => now = true,
                _ = shutdown.wait() => return Ok(()),
            }
            let reachable = self.live.reachable() && self.live.registered();
            let due = now || last_resync.is_none_or(|t| t.elapsed() >= RESYNC_EVERY);
            if reachable && (due || !was_reachable) {
                if let Err(e) = self.resync_all().await {
                    warn!(host = %self.ident.name, "resync: {e:#}");
                } else {
                    last_resync = Some(Instant::now());
                }
            }
            was_reachable = reachable;
            let mut nets = self.nets.lock().await;
            let names: Vec<String> = nets.keys().cloned().collect();
            for name in names {
                let start = Instant::now();
                if let Err(e) = self.reconcile(&mut nets, &name).await {
                    warn!(network = %name, host = %self.ident.name, "reconcile: {e:#}");
                }
                self.metrics
                    .reconcile
                    .get_or_create(&NetLabel {
                        network: name.clone(),
                    })
                    .observe(start.elapsed().as_secs_f64());
            }
        }
    }

    /// Until when `net` may hand out new addresses.
    fn deadline(&self, net: &Net) -> Deadline {
        let last = self.live.last_ok_ms();
        if last == 0 {
            return net.inherited;
        }
        let until = last.saturating_add(net.def.reclaim_grace_secs.saturating_mul(1000));
        let now = boottime_ms();
        Deadline {
            boot_id: boot_id(),
            boottime_ms: until,
            unix_ms: unix_ms().saturating_add(until.saturating_sub(now)),
        }
    }

    fn next_seq(net: &Net) -> u64 {
        net.blocks.values().map(|h| h.seq + 1).max().unwrap_or(0)
    }

    fn file(&self, net: &Net) -> NetworkFile {
        let mut held: Vec<(&IpNetwork, &Held)> = net.blocks.iter().collect();
        held.sort_by_key(|(b, h)| (h.seq, **b));
        NetworkFile {
            format: FORMAT.into(),
            network: net.def.name.clone(),
            host: self.ident.name.clone(),
            subnets: net.def.subnets.clone(),
            blocks: held
                .into_iter()
                .map(|(b, h)| HeldBlock {
                    cidr: *b,
                    state: h.state,
                })
                .collect(),
            alloc_until: self.deadline(net),
            etcd: EtcdView {
                reachable: self.live.reachable(),
                last_contact_unix: if self.live.last_ok_ms() == 0 {
                    net.written.as_ref().map_or(0, |w| w.etcd.last_contact_unix)
                } else {
                    unix_ms().saturating_sub(boottime_ms().saturating_sub(self.live.last_ok_ms()))
                        / 1000
                },
            },
            removed: net.removed,
            definition: serde_json::to_value(Cached {
                create_revision: net.def_rev,
                def: net.def.clone(),
            })
            .expect("serialises"),
            mtu: self.underlay_mtu.map(|m| {
                crate::dataplane::desired::network_mtu(net.def.mode, self.cfg.underlay, m)
            }),
        }
    }

    /// Write the network file if it changed. A change that takes capacity away (a block no
    /// longer active, the network removed) is written under the store's lock and made durable
    /// with its directory; more blocks are written durably without the lock; a deadline that
    /// only moved forward (each keep-alive) is written without fsync, and only once it moved
    /// by a tenth of the grace period (at least 1 s) — the ADD path never waits on it.
    fn write(&self, name: &str, net: &mut Net, _locked: bool) -> Result<()> {
        use plugnet::fsutil::Durability;
        let file = self.file(net);
        let Some(old) = net.written.as_ref() else {
            usage::write_locked(&self.state, &file, |_| true)?;
            net.written = Some(file);
            return Ok(());
        };
        if *old == file {
            return Ok(());
        }
        let active: BTreeSet<IpNetwork> = file.active().collect();
        let shrinks = old.active().any(|b| !active.contains(&b)) || (file.removed && !old.removed);
        let same_blocks =
            old.blocks == file.blocks && old.removed == file.removed && old.subnets == file.subnets;
        if shrinks {
            usage::write_locked(&self.state, &file, |_| true)?;
        } else if !same_blocks || old.definition != file.definition {
            file.write_with(&self.state, Durability::File)
                .with_context(|| format!("write the network file of {name}"))?;
        } else {
            let step = (net.def.reclaim_grace_secs * 100).clamp(1000, 60_000);
            let moved = file
                .alloc_until
                .remaining_ms()
                .saturating_sub(old.alloc_until.remaining_ms());
            let fell = old.alloc_until.remaining_ms() == 0 && file.alloc_until.remaining_ms() > 0;
            if moved < step && !fell && old.etcd.reachable == file.etcd.reachable {
                return Ok(());
            }
            file.write_with(&self.state, Durability::Atomic)
                .with_context(|| format!("write the network file of {name}"))?;
        }
        net.written = Some(file);
        Ok(())
    }

    /// Free and used addresses of one family in the active blocks.
    fn free(net: &Net, used: &BTreeMap<IpNetwork, u64>, v4: bool) -> (u64, u64) {
        let mut cap = 0;
        let mut n = 0;
        for (b, h) in &net.blocks {
            if h.state == BlockState::Active && b.is_ipv4() == v4 {
                cap += block_capacity(*b);
                n += used.get(b).copied().unwrap_or(0);
            }
        }
        (cap.saturating_sub(n), n)
    }

    /// Claim `want` blocks of a family for `net`, retrying lost races.
    async fn claim(&self, name: &str, net: &mut Net, v4: bool, want: usize) -> Result<()> {
        let salt =
            u64::from_str_radix(&self.ident.id[..8.min(self.ident.id.len())], 16).unwrap_or(0);
        let label = |result: &str| NetResult {
            network: name.to_string(),
            result: result.into(),
        };
        for attempt in 0..6u64 {
            match claim::claim(
                &self.etcd,
                &net.def,
                net.def_rev,
                v4,
                want,
                &self.held_value(),
                salt + attempt,
            )
            .await
            {
                Ok((got, rev)) => {
                    self.metrics.claims.get_or_create(&label("ok")).inc();
                    for b in got {
                        info!(network = %name, block = %b, host = %self.ident.name, "claimed block");
                        let seq = Self::next_seq(net);
                        net.blocks.insert(
                            b,
                            Held {
                                seq,
                                state: BlockState::Active,
                                mod_rev: rev,
                                empty_since: None,
                            },
                        );
                    }
                    return self.write(name, net, false);
                }
                Err(e) if e.is::<claim::Conflict>() => {
                    self.metrics.claims.get_or_create(&label("conflict")).inc();
                    // The network itself may be gone: a conflict on its create revision.
                    if self
                        .etcd
                        .get(&schema::network_key(name))
                        .await?
                        .map(|kv| kv.create_revision)
                        != Some(net.def_rev)
                    {
                        net.removed = true;
                        self.write(name, net, true)?;
                        return Err(anyhow!("cluster network {name} was removed"));
                    }
                    tokio::time::sleep(Duration::from_millis(5 + attempt * 10)).await;
                }
                Err(e) => {
                    self.metrics.claims.get_or_create(&label("error")).inc();
                    return Err(e);
                }
            }
        }
        Err(anyhow!(
            "claim kept losing races with other hosts; retrying later"
        ))
    }

    /// A plugin found no free address: make room in `network` for `families`, or say why not.
    pub async fn grow(&self, network: &str, families: &[u8]) -> Answer {
        let label = |r: &str| NetResult {
            network: network.to_string(),
            result: r.into(),
        };
        // Leave the plugin time to read the answer within its own wait.
        let within = GROW_WAIT.saturating_sub(Duration::from_millis(300));
        let r = match tokio::time::timeout(within, self.grow_inner(network, families)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("etcd did not answer within {within:?}")),
        };
        match r {
            Ok(()) => {
                self.metrics.grow_requests.get_or_create(&label("ok")).inc();
                Answer::ok()
            }
            Err(e) => {
                self.metrics
                    .grow_requests
                    .get_or_create(&label("error"))
                    .inc();
                warn!(network, host = %self.ident.name, "no room for an ADD: {e:#}");
                Answer::err(format!("{e:#}"))
            }
        }
    }

    async fn grow_inner(&self, name: &str, families: &[u8]) -> Result<()> {
        schema::check_name("network", name)?;
        let mut nets = self.nets.lock().await;
        if !nets.contains_key(name) {
            if !self.live.registered() {
                return Err(anyhow!(
                    "this host is not registered in the cluster yet (etcd out of reach?)"
                ));
            }
            self.activate(&mut nets, name).await?;
        }
        let net = nets.get_mut(name).expect("activated");
        if net.removed {
            return Err(anyhow!(
                "cluster network {name} was removed from the cluster"
            ));
        }
        if self.deadline(net).remaining_ms() == 0 {
            return Err(anyhow!(
                "this host has been cut off from etcd longer than the network's grace period \
                 ({} s): its blocks may be reclaimed by other hosts",
                net.def.reclaim_grace_secs
            ));
        }
        let claimed = usage::claimed(&self.state, name);
        let all: Vec<IpNetwork> = net.blocks.keys().copied().collect();
        let used = usage::per_block(&claimed, &all);
        for fam in families {
            let v4 = match fam {
                4 => true,
                6 => false,
                _ => continue,
            };
            if !net.def.subnets.iter().any(|s| s.is_ipv4() == v4) {
                continue;
            }
            let (free, _) = Self::free(net, &used, v4);
            if free == 0 {
                // Tried whatever the keep-alive last saw: another member may answer.
                self.claim(name, net, v4, 1).await.map_err(|e| {
                    anyhow!("this host's blocks are full and no block could be claimed: {e:#}")
                })?;
            }
        }
        self.write(name, net, false)
    }

    /// The agent's view, for `plugnet cluster status` (through the local socket).
    pub async fn status(&self) -> Value {
        let nets = self.nets.lock().await;
        let last = self.live.last_ok_ms();
        let networks: Vec<Value> = nets
            .iter()
            .map(|(name, net)| {
                let claimed = usage::claimed(&self.state, name);
                let all: Vec<IpNetwork> = net.blocks.keys().copied().collect();
                let used = usage::per_block(&claimed, &all);
                json!({
                    "name": name,
                    "removed": net.removed,
                    "fenced": net.fenced,
                    "allocatableForMs": self.deadline(net).remaining_ms(),
                    "blocks": net.blocks.iter().map(|(b, h)| json!({
                        "block": b.to_string(), "family": family(b), "state": h.state,
                        "used": used.get(b).copied().unwrap_or(0), "capacity": block_capacity(*b),
                    })).collect::<Vec<_>>(),
                    "revoked": net.reported.iter().map(|(id, ifname, ip)| json!({
                        "containerId": id, "ifname": ifname, "address": ip.to_string(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "cluster": true,
            "host": self.ident.name,
            "id": self.ident.id,
            "underlay": self.cfg.underlay.to_string(),
            "registered": self.live.registered(),
            "etcd": {
                "reachable": self.live.reachable(),
                "lastContactAgoMs": (last > 0).then(|| boottime_ms().saturating_sub(last)),
            },
            "degraded": !self.live.reachable() || !self.live.registered()
                || nets.values().any(|n| n.fenced || !n.reported.is_empty()),
            "networks": networks,
        })
    }
}
