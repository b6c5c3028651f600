//! One tick of one network: claims ahead of demand, releases after the cooldown (under the
//! store's lock), the fence, the report of containers in revoked blocks, and the metrics.

use super::{claim, usage, Blocks, Net};
use crate::metrics::{Net as NetLabel, NetFamily};
use anyhow::Result;
use ipnetwork::IpNetwork;
use plugnet::ipam::cluster::block_capacity;
use plugnet::ipam::cluster::local::BlockState;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tracing::{error, info, warn};

impl Blocks {
    /// One tick of one network (see the module doc).
    pub(super) async fn reconcile(
        &self,
        nets: &mut BTreeMap<String, Net>,
        name: &str,
    ) -> Result<()> {
        let Some(net) = nets.get_mut(name) else {
            return Ok(());
        };
        let claimed = usage::claimed(&self.state, name);
        let all: Vec<IpNetwork> = net.blocks.keys().copied().collect();
        let used = usage::per_block(&claimed, &all);
        if net.removed {
            if usage::remove_if_unused(&self.state, name)? {
                info!(network = %name, "removed network: local state gone");
                nets.remove(name);
                return Ok(());
            }
            return self.write(name, net, true);
        }
        let fenced = self.deadline(net).remaining_ms() == 0;
        if fenced != net.fenced {
            if fenced {
                error!(network = %name, host = %self.ident.name,
                    "fenced: etcd out of reach for the network's grace period; other hosts may \
                     reclaim this host's blocks, so no new addresses are handed out here");
            } else {
                info!(network = %name, host = %self.ident.name, "fence lifted");
            }
            net.fenced = fenced;
        }
        let ready = self.live.reachable() && self.live.registered() && !fenced;
        let wm = u64::from(self.cfg.low_watermark);
        for v4 in [true, false] {
            if !net.def.subnets.iter().any(|s| s.is_ipv4() == v4) {
                continue;
            }
            let (free, _) = Self::free(net, &used, v4);
            if ready && free < wm {
                let prefix = if v4 {
                    net.def.block_prefix_v4
                } else {
                    net.def.block_prefix_v6
                };
                let cap = net
                    .def
                    .subnets
                    .iter()
                    .find(|s| s.is_ipv4() == v4)
                    .and_then(|s| IpNetwork::new(s.network(), prefix).ok())
                    .map_or(1, block_capacity)
                    .max(1);
                let want = (wm - free).div_ceil(cap) as usize;
                if let Err(e) = self.claim(name, net, v4, want.max(1)).await {
                    warn!(network = %name, host = %self.ident.name, "claim ahead of demand: {e:#}");
                }
                if net.removed {
                    return Ok(());
                }
            }
        }
        // Releases: empty long enough, and the rest still meets the watermark.
        let now = Instant::now();
        let mut release = Vec::new();
        for (b, h) in net.blocks.iter_mut() {
            let n = used.get(b).copied().unwrap_or(0);
            if n > 0 {
                h.empty_since = None;
                continue;
            }
            let since = *h.empty_since.get_or_insert(now);
            if h.state == BlockState::Releasing
                || (h.state == BlockState::Active && now.duration_since(since) >= self.cfg.cooldown)
            {
                release.push(*b);
            }
        }
        for b in release {
            let v4 = b.is_ipv4();
            let (free, _) = Self::free(net, &used, v4);
            let h = &net.blocks[&b];
            if h.state == BlockState::Active && free.saturating_sub(block_capacity(b)) < wm {
                continue;
            }
            if !ready || h.mod_rev == 0 {
                continue;
            }
            if h.state == BlockState::Active {
                net.blocks.get_mut(&b).expect("listed").state = BlockState::Releasing;
                let file = self.file(net);
                let empty = usage::write_locked(&self.state, &file, |claims| {
                    !claims.iter().any(|ip| b.contains(*ip))
                })?;
                if !empty {
                    net.blocks.get_mut(&b).expect("listed").state = BlockState::Active;
                    continue;
                }
                net.written = Some(file);
            }
            let mod_rev = net.blocks[&b].mod_rev;
            match claim::release(&self.etcd, name, b, mod_rev).await {
                Ok(ours) => {
                    if ours {
                        info!(network = %name, block = %b, host = %self.ident.name, "released empty block");
                        self.metrics
                            .releases
                            .get_or_create(&NetLabel {
                                network: name.into(),
                            })
                            .inc();
                    }
                    net.blocks.remove(&b);
                    self.write(name, net, true)?;
                }
                Err(e) => warn!(network = %name, block = %b, "release: {e:#}; retried"),
            }
        }
        // Revoked blocks: report their containers until they are gone.
        let mut holders = BTreeSet::new();
        let revoked: Vec<IpNetwork> = net
            .blocks
            .iter()
            .filter(|(_, h)| h.state == BlockState::Revoked)
            .map(|(b, _)| *b)
            .collect();
        for b in revoked {
            if used.get(&b).copied().unwrap_or(0) == 0 {
                net.blocks.remove(&b);
                info!(network = %name, block = %b, "revoked block empty: forgotten");
                continue;
            }
            holders.extend(usage::holders(&self.state, name, b));
        }
        if holders != net.reported {
            for (id, ifname, ip) in holders.difference(&net.reported) {
                error!(network = %name, host = %self.ident.name, container = %id, ifname = %ifname, address = %ip,
                    "container uses an address in a block another host now holds: restart it on \
                     a fresh address (delete and add it)");
            }
            net.reported = holders;
        }
        self.metrics
            .revoked_addresses
            .get_or_create(&NetLabel {
                network: name.into(),
            })
            .set(net.reported.len() as i64);
        self.metrics
            .fenced
            .get_or_create(&NetLabel {
                network: name.into(),
            })
            .set(i64::from(net.fenced));
        let used_now = usage::per_block(&claimed, &net.blocks.keys().copied().collect::<Vec<_>>());
        for v4 in [true, false] {
            if !net.def.subnets.iter().any(|s| s.is_ipv4() == v4) {
                continue;
            }
            let l = NetFamily {
                network: name.into(),
                family: if v4 { "4" } else { "6" }.into(),
            };
            let (free, n) = Self::free(net, &used_now, v4);
            let count = net
                .blocks
                .iter()
                .filter(|(b, h)| b.is_ipv4() == v4 && h.state == BlockState::Active)
                .count();
            self.metrics.blocks_held.get_or_create(&l).set(count as i64);
            self.metrics
                .addresses_free
                .get_or_create(&l)
                .set(free as i64);
            self.metrics.addresses_used.get_or_create(&l).set(n as i64);
        }
        self.write(name, net, true)
    }
}
