//! Keeping a network's blocks in step with etcd: the watch that notices changes made by
//! others, activation of a network on this host, and resync (ours → active; free or reclaimed
//! with containers still here → retaken; another host's → revoked; etcd's blocks for us that
//! the file lacks → adopted).

use super::{claim, usage, Blocks, Held, Net};
use crate::runtime::Shutdown;
use crate::schema::{self, BlockValue, NetworkDef};
use anyhow::{anyhow, Result};
use ipnetwork::IpNetwork;
use plugnet::ipam::cluster::local::{BlockState, Deadline};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

impl Blocks {
    /// Watch the networks and blocks in etcd: a change made by someone else to a network this
    /// host serves (removed, a block taken over by `release-host --force`) starts a resync at
    /// once instead of at the next periodic one.
    pub(super) async fn watch(self: Arc<Self>, mut shutdown: Shutdown) -> Result<()> {
        use etcd_client::{EventType, WatchOptions};
        loop {
            let mut c = self.etcd.client();
            let opts = WatchOptions::new().with_prefix();
            let stream = tokio::select! {
                s = tokio::time::timeout(self.etcd.timeout, c.watch(schema::ROOT, Some(opts))) => s,
                _ = shutdown.wait() => return Ok(()),
            };
            if let Ok(Ok(mut stream)) = stream {
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        _ = shutdown.wait() => return Ok(()),
                    };
                    let Ok(Some(resp)) = msg else { break };
                    if resp.canceled() {
                        break;
                    }
                    let concerns = resp.events().iter().any(|ev| {
                        let Some(kv) = ev.kv() else { return false };
                        let key = kv.key();
                        if key.starts_with(schema::NETWORKS.as_bytes()) {
                            return true;
                        }
                        if !key.starts_with(schema::BLOCKS.as_bytes()) {
                            return false;
                        }
                        ev.event_type() == EventType::Delete
                            || !self.mine(&crate::etcd::Kv::from(kv))
                    });
                    if concerns {
                        self.resync_now.notify_one();
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    pub(super) async fn resync_all(&self) -> Result<()> {
        let mut nets = self.nets.lock().await;
        for name in &self.cfg.networks {
            if !nets.contains_key(name) {
                if let Err(e) = self.activate(&mut nets, name).await {
                    warn!(network = %name, "--network: {e:#}");
                }
            }
        }
        let names: Vec<String> = nets.keys().cloned().collect();
        for name in names {
            self.resync(&mut nets, &name).await?;
        }
        Ok(())
    }

    /// Start serving `name` here: its definition from etcd.
    pub(super) async fn activate(
        &self,
        nets: &mut BTreeMap<String, Net>,
        name: &str,
    ) -> Result<()> {
        schema::check_name("network", name)?;
        crate::cluster::check_schema(&self.etcd).await?;
        let kv = self
            .etcd
            .get(&schema::network_key(name))
            .await?
            .ok_or_else(|| {
                anyhow!("no cluster network {name:?} in etcd (plugnet cluster network ls)")
            })?;
        let def: NetworkDef = schema::decode(&kv.key, &kv.value)?;
        info!(network = %name, host = %self.ident.name, "serving cluster network");
        nets.insert(
            name.to_string(),
            Net {
                def,
                def_rev: kv.create_revision,
                blocks: BTreeMap::new(),
                removed: false,
                inherited: Deadline::PAST,
                written: None,
                reported: BTreeSet::new(),
                fenced: false,
            },
        );
        self.resync(nets, name).await
    }

    /// Bring one network's blocks in step with etcd (see the module doc).
    pub(super) async fn resync(&self, nets: &mut BTreeMap<String, Net>, name: &str) -> Result<()> {
        let Some(net) = nets.get_mut(name) else {
            return Ok(());
        };
        match self.etcd.get(&schema::network_key(name)).await? {
            Some(kv) if kv.create_revision == net.def_rev => {
                net.def = schema::decode(&kv.key, &kv.value)?;
            }
            _ => {
                if !net.removed {
                    warn!(network = %name, "removed from the cluster: no new addresses here");
                }
                net.removed = true;
                return self.write(name, net, true);
            }
        }
        let (kvs, _) = self.etcd.get_prefix(&schema::blocks_prefix(name)).await?;
        let in_etcd = claim::by_block(&kvs);
        let claimed = usage::claimed(&self.state, name);
        let local: Vec<IpNetwork> = net.blocks.keys().copied().collect();
        let used = usage::per_block(&claimed, &local);
        let held = self.held_value();
        for b in local {
            let kv = in_etcd.get(&b);
            let in_use = used.get(&b).copied().unwrap_or(0) > 0;
            let h = net.blocks.get_mut(&b).expect("listed");
            if let Some(kv) = kv.filter(|kv| self.mine(kv)) {
                h.mod_rev = kv.mod_revision;
                if h.state == BlockState::Revoked {
                    h.state = BlockState::Active;
                }
                continue;
            }
            let other = kv.and_then(|kv| schema::decode::<BlockValue>(&kv.key, &kv.value).ok());
            match other.as_ref().and_then(BlockValue::holder) {
                Some(holder) if in_use => {
                    if h.state != BlockState::Revoked {
                        error!(network = %name, block = %b, holder, host = %self.ident.name,
                            "block taken over by another host while this host was cut off: \
                             no new addresses in it; its containers here are reported");
                    }
                    h.state = BlockState::Revoked;
                }
                Some(_) => {
                    net.blocks.remove(&b);
                }
                None if in_use => {
                    match claim::retake(&self.etcd, name, net.def_rev, b, kv, &held).await? {
                        Some(rev) => {
                            warn!(network = %name, block = %b, host = %self.ident.name,
                                "block was released or reclaimed while this host was away; \
                                 taken back (its containers here still use it)");
                            h.mod_rev = rev;
                            h.state = BlockState::Active;
                        }
                        None => {
                            warn!(network = %name, block = %b, "retake lost a race; next resync")
                        }
                    }
                }
                None => {
                    net.blocks.remove(&b);
                }
            }
        }
        for (b, kv) in &in_etcd {
            if !net.blocks.contains_key(b) && self.mine(kv) {
                info!(network = %name, block = %b, "adopted a block etcd records as ours");
                let seq = Self::next_seq(net);
                net.blocks.insert(
                    *b,
                    Held {
                        seq,
                        state: BlockState::Active,
                        mod_rev: kv.mod_revision,
                        empty_since: None,
                    },
                );
            }
        }
        self.write(name, net, true)
    }
}
