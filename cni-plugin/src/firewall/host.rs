//! Host maintenance over the whole state directory: `reload` and `repair` (rebuild what the
//! state records), bridge holds, CNI GC, the listing, and `watch` (repair on every ruleset
//! change); invariant: the kernel is made to match the records, never the other way round.

use std::collections::BTreeSet;
use std::io;
use std::time::Duration;

use super::error::{nft_err, state_err, FirewallError};
use super::ledger::{active_bridges, rebuild_ops, recount, table_exists};
use super::names::{check_cni_name, check_ifname};
use super::plan::{Op, Table};
use super::{hostfw, nft, Attachment, Firewall, ReloadReport};

impl Firewall {
    /// Re-installs everything the state records, in one transaction (after `nft flush ruleset`,
    /// a firewalld reload or a Docker restart). Reference counts are recomputed from the
    /// recorded attachments.
    pub fn reload(&self) -> Result<ReloadReport, FirewallError> {
        let _lock = self.store.lock().map_err(state_err("lock state"))?;
        let atts = self
            .store
            .all_attachments()
            .map_err(state_err("read attachments"))?;
        let old = self
            .store
            .load_shared()
            .map_err(state_err("read shared state"))?;
        let shared = recount(&atts, &old);
        let mut ops = Vec::new();
        for t in [Table::Inet, Table::Bridge] {
            if table_exists(&*self.kernel, t)? {
                ops.push(Op::DelTable(t));
            }
        }
        if !atts.is_empty() {
            ops.extend(rebuild_ops(&shared, &atts));
        }
        self.kernel.run(&ops).map_err(nft_err("reload"))?;
        let bridges = active_bridges(&shared);
        if self.opts.host_firewall {
            let mut all = bridges.clone();
            all.extend(self.held().map_err(state_err("read holds"))?);
            // Where forwarding is off, the families the recorded containers use get their
            // rules beforehand again (after a flush, nothing of plugnet's is left to keep).
            let carried = hostfw::Families::of(atts.iter().flat_map(|(_, a)| &a.container_ips));
            self.kernel.host_sync_exact(&all, carried)?;
        }
        for (name, b) in &shared.bridges {
            if b.portmap_refs > 0 && b.route_localnet_was.is_some() {
                self.kernel.set_route_localnet(name, "1")?;
            }
        }
        self.store
            .save_shared(&shared)
            .map_err(state_err("write state"))?;
        Ok(ReloadReport {
            attachments: atts.len(),
            bridges: bridges.len(),
        })
    }

    /// Re-applies the state ([`Firewall::reload`]) when the kernel lost it while attachments it
    /// records are alive: plugnet's table is gone (`nft flush ruleset`, a firewalld reload), or
    /// the host firewall lost the jump or a bridge's accept rules (a Docker restart re-creates
    /// DOCKER-USER). An attachment is alive while its host veth exists; after a reboot none
    /// is, and nothing is re-applied (GC and the runtimes' DELs clear those records). Returns
    /// the reload's report when it reloaded. Cheap when nothing is lost: one netlink query,
    /// plus one `iptables -S` when the host firewall is managed.
    pub fn repair(&self) -> Result<Option<ReloadReport>, FirewallError> {
        // if_nametoindex asks this network namespace (sysfs may show another's).
        let exists = |name: &str| nix::net::if_::if_nametoindex(name).is_ok();
        let (attached, mac_checked, live_bridges): (bool, bool, Vec<String>) = {
            let _lock = self.store.lock().map_err(state_err("lock state"))?;
            let atts = self
                .store
                .all_attachments()
                .map_err(state_err("read attachments"))?;
            let alive: Vec<&Attachment> = atts
                .iter()
                .map(|(_, a)| a)
                .filter(|a| exists(&a.host_veth))
                .collect();
            let mut live: BTreeSet<String> = alive.iter().map(|a| a.bridge.clone()).collect();
            let attached = !live.is_empty();
            let mac_checked = alive.iter().any(|a| a.source_mac.is_some());
            let held = self.held().map_err(state_err("read holds"))?;
            live.extend(held.into_iter().filter(|b| exists(b)));
            (attached, mac_checked, live.into_iter().collect())
        };
        if live_bridges.is_empty() {
            return Ok(None);
        }
        // Plugnet's table exists while attachments do (the bridge table while one of them has
        // a MAC check); holds alone need only the host firewall.
        let table = !attached || table_exists(&*self.kernel, Table::Inet)?;
        let bridge_table = !mac_checked || table_exists(&*self.kernel, Table::Bridge)?;
        let host_ok = !self.opts.host_firewall || self.kernel.host_in_place(&live_bridges)?;
        if table && bridge_table && host_ok {
            return Ok(None);
        }
        self.reload().map(Some)
    }

    /// Holds `bridge` open in the host firewall on behalf of `holder` (plugnet-shim: a Docker
    /// network, from CreateNetwork to DeleteNetwork), as Docker keeps its rules per network:
    /// the bridge's accept rules stay while a hold or an attachment remains, so a network whose
    /// only container comes and goes does not rewrite iptables twice per container.
    /// Idempotent; the hold is a file in the state dir and survives restarts.
    pub fn hold(&self, bridge: &str, holder: &str) -> Result<(), FirewallError> {
        self.set_hold(bridge, holder, true)
    }

    /// Ends [`Firewall::hold`]; the bridge's rules go if nothing else keeps them. Idempotent.
    pub fn release(&self, bridge: &str, holder: &str) -> Result<(), FirewallError> {
        self.set_hold(bridge, holder, false)
    }

    fn set_hold(&self, bridge: &str, holder: &str, on: bool) -> Result<(), FirewallError> {
        check_ifname("bridge name", bridge)?;
        check_cni_name("holder", holder)?;
        let _lock = self.store.lock().map_err(state_err("lock state"))?;
        let before = self.held().map_err(state_err("read holds"))?;
        self.store
            .set_hold(bridge, holder, on)
            .map_err(state_err("write hold"))?;
        let after = self.held().map_err(state_err("read holds"))?;
        let shared = self
            .store
            .load_shared()
            .map_err(state_err("read shared state"))?;
        let active = active_bridges(&shared);
        if self.opts.host_firewall
            && before.contains(bridge) != after.contains(bridge)
            && !active.contains(bridge)
        {
            let mut bridges = active;
            bridges.extend(after);
            if let Err(e) = self.kernel.host_sync(&bridges, hostfw::Families::NONE) {
                if on {
                    let _ = self.store.set_hold(bridge, holder, false);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// CNI GC: removes the recorded attachments of `network` whose (container id, ifname) is
    /// not in `valid`. Returns how many were removed.
    pub fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<usize, FirewallError> {
        check_cni_name("network name", network)?;
        let atts = {
            let _lock = self.store.lock().map_err(state_err("lock state"))?;
            self.store
                .sweep_temporaries()
                .map_err(state_err("sweep temporaries"))?;
            self.store
                .all_attachments()
                .map_err(state_err("read attachments"))?
        };
        let mut n = 0;
        let mut errors = Vec::new();
        for (_, a) in atts.iter().filter(|(_, a)| a.network == network) {
            if !valid
                .iter()
                .any(|(c, i)| *c == a.container_id && *i == a.ifname)
            {
                match self.remove(&a.network, &a.container_id, &a.ifname) {
                    Ok(()) => n += 1,
                    Err(e) => errors.push(e),
                }
            }
        }
        if let Err(e) = self.reconcile_sysctls() {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(n)
        } else {
            Err(FirewallError::Multiple(errors))
        }
    }

    /// Restores `route_localnet` on every bridge whose remembered value no recorded port
    /// mapping needs any more (an ADD killed after it changed the sysctl, before it recorded
    /// the attachment), and makes the counters what the files say.
    fn reconcile_sysctls(&self) -> Result<(), FirewallError> {
        let _lock = self.store.lock().map_err(state_err("lock state"))?;
        let shared = self
            .store
            .load_shared()
            .map_err(state_err("read shared state"))?;
        let users = |name: &str, atts: &[(String, Attachment)]| {
            atts.iter()
                .filter(|(_, a)| a.bridge == name && !a.port_mappings.is_empty())
                .count()
        };
        let stale: Vec<(&String, &String)> = shared
            .bridges
            .iter()
            .filter_map(|(n, b)| b.route_localnet_was.as_ref().map(|w| (n, w)))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let atts = self
            .store
            .all_attachments()
            .map_err(state_err("read attachments"))?;
        let mut restored = false;
        for (name, was) in stale {
            if users(name, &atts) > 0 {
                continue;
            }
            match self.kernel.set_route_localnet(name, was) {
                Ok(_) => {}
                Err(FirewallError::Sysctl { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            restored = true;
        }
        if restored {
            self.store
                .save_shared(&recount(&atts, &shared))
                .map_err(state_err("write state"))?;
        }
        Ok(())
    }

    /// Every recorded attachment.
    pub fn list(&self) -> Result<Vec<Attachment>, FirewallError> {
        Ok(self
            .store
            .all_attachments()
            .map_err(state_err("read attachments"))?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }
}

/// A firewalld reload or a `docker run` is a burst of ruleset transactions: [`watch`] checks
/// once the ruleset has been unchanged for `WATCH_QUIET`, or `WATCH_MOST` after the first.
const WATCH_QUIET: Duration = Duration::from_millis(200);
const WATCH_MOST: Duration = Duration::from_secs(2);

/// Keeps plugnet's rules in place without being asked: runs `check` (a [`Firewall::repair`])
/// now, then after every change to this network namespace's nftables ruleset once it has
/// settled (`nft flush ruleset`, a firewalld reload or start, Docker's iptables-nft rules,
/// plugnet's own changes: a check that finds nothing lost changes nothing, so this settles),
/// and at least every `every` if given (iptables-legacy rules change without an event).
/// Returns only if the kernel's notification socket fails.
pub fn watch(every: Option<Duration>, mut check: impl FnMut()) -> io::Error {
    // Subscribed before the first check: a change made while it runs is not missed.
    let monitor = match nft::Monitor::open() {
        Ok(m) => m,
        Err(e) => return e,
    };
    loop {
        check();
        if let Err(e) = monitor.next_change(every, WATCH_QUIET, WATCH_MOST) {
            return e;
        }
    }
}
