//! Taking back the blocks of hosts that are gone: a block whose holder has had no host key
//! (its lease expired, or it never registered) at two observations at least the network's
//! grace period apart is rewritten as `reclaimed` by compare-and-swap — still requiring the
//! host key to be absent and the block unchanged. Every agent does this; the transactions make
//! it happen once.
//!
//! Invariant: absence is timed on this agent's monotonic clock from its own first observation,
//! and forgotten whenever the host is seen present; observations are at most [`MAX_INTERVAL`]
//! apart, shorter than any lease TTL the agent accepts ×5, so a host that came back between two
//! observations is seen. A reclaimed block keeps a key that names no host.

use crate::etcd::Etcd;
use crate::host::Liveness;
use crate::metrics::{Metrics, Net};
use crate::runtime::Shutdown;
use crate::schema::{self, BlockValue, NetworkDef};
use anyhow::Result;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A block key and the mod revision it was read at; grouped by (network, holder).
type KeyRev = (Vec<u8>, i64);

pub const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// etcd refuses transactions of more than 128 operations by default.
const CHUNK: usize = 60;

pub struct Reclaim {
    etcd: Etcd,
    metrics: Arc<Metrics>,
    /// Host → when this agent first saw it absent while it still held blocks.
    absent: HashMap<String, Instant>,
}

impl Reclaim {
    pub fn new(etcd: Etcd, metrics: Arc<Metrics>) -> Reclaim {
        Reclaim {
            etcd,
            metrics,
            absent: HashMap::new(),
        }
    }

    pub async fn run(mut self, live: Arc<Liveness>, mut shutdown: Shutdown) -> Result<()> {
        let mut interval = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            if !live.reachable() {
                // Blind: what was seen before may have changed unseen.
                self.absent.clear();
                continue;
            }
            match self.pass().await {
                Ok(next) => interval = next,
                Err(e) => {
                    self.absent.clear();
                    warn!("reclaim pass: {e:#}");
                }
            }
        }
    }

    /// One observation; returns when to make the next.
    pub async fn pass(&mut self) -> Result<Duration> {
        let (hosts, _) = self.etcd.get_prefix(schema::HOSTS).await?;
        let present: HashSet<String> = hosts
            .iter()
            .filter_map(|kv| schema::name_after(schema::HOSTS, &kv.key).map(String::from))
            .collect();
        let (nets, _) = self.etcd.get_prefix(schema::NETWORKS).await?;
        let mut defs: BTreeMap<String, NetworkDef> = BTreeMap::new();
        for kv in &nets {
            if let Ok(d) = schema::decode::<NetworkDef>(&kv.key, &kv.value) {
                defs.insert(d.name.clone(), d);
            }
        }
        let (blocks, _) = self.etcd.get_prefix(schema::BLOCKS).await?;
        let mut held: BTreeMap<(String, String), Vec<KeyRev>> = BTreeMap::new();
        for kv in &blocks {
            let Some((net, _)) = schema::parse_block_key(&kv.key) else {
                continue;
            };
            if let Ok(BlockValue::Held { host, .. }) = schema::decode(&kv.key, &kv.value) {
                held.entry((net, host))
                    .or_default()
                    .push((kv.key.clone(), kv.mod_revision));
            }
        }
        self.absent.retain(|h, _| !present.contains(h));
        let now = Instant::now();
        let mut next = MAX_INTERVAL;
        for ((net, host), keys) in held {
            if present.contains(&host) {
                continue;
            }
            let first = *self.absent.entry(host.clone()).or_insert(now);
            let grace = defs.get(&net).map_or(Duration::from_secs(600), |d| {
                Duration::from_secs(d.reclaim_grace_secs)
            });
            next = next.min((grace / 4).max(Duration::from_millis(500)));
            if now.duration_since(first) < grace {
                continue;
            }
            let mut n = 0;
            for chunk in keys.chunks(CHUNK) {
                let mut cmp = vec![Compare::version(
                    schema::host_key(&host),
                    CompareOp::Equal,
                    0,
                )];
                let mut ops = Vec::new();
                let value = schema::encode(&BlockValue::Reclaimed {
                    at_unix: schema::now_unix(),
                });
                for (key, rev) in chunk {
                    cmp.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
                    ops.push(TxnOp::put(key.clone(), value.clone(), None));
                }
                if self
                    .etcd
                    .txn(Txn::new().when(cmp).and_then(ops))
                    .await?
                    .succeeded()
                {
                    n += chunk.len();
                }
            }
            if n > 0 {
                info!(network = %net, host = %host, blocks = n, grace_secs = grace.as_secs(),
                    "reclaimed the blocks of a host gone past the grace period");
                self.metrics
                    .reclaims
                    .get_or_create(&Net {
                        network: net.clone(),
                    })
                    .inc_by(n as u64);
            }
        }
        Ok(next)
    }
}
