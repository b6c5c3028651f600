//! The per-attachment transaction: `apply` (ADD), `remove` (DEL), `check` (CHECK); invariant:
//! one nftables transaction per call touching only the attachment's own objects (and shared
//! ones on first/last use), host-side effects undone when it fails, and the record written
//! before the commit so a DEL always finds what an ADD may have installed.

use std::collections::BTreeSet;
use std::io;

use super::error::{nft_err, state_err, FirewallError};
use super::ledger::{active_bridges, rebuild_ops, recount, table_exists};
use super::names::{check_cni_name, check_ifname, egress_chain};
use super::plan::{self, Op, SharedEdges, Table};
use super::undo::Undo;
use super::{hostfw, l2, Attachment, Firewall, Protocol};
use crate::attachment::AttachmentId;

impl Firewall {
    /// Installs the attachment's rules in one nftables transaction (idempotent for an identical
    /// attachment; a changed one replaces the recorded one).
    pub fn apply(&self, att: &Attachment) -> Result<(), FirewallError> {
        att.validate()?;
        let _lock = self.store.lock().map_err(state_err("lock state"))?;
        let key = att.id().firewall_key();
        if let Some(old) = self
            .store
            .load_attachment(&key)
            .map_err(state_err("read attachment"))?
        {
            if old == *att && self.check_kernel(att, &key).is_ok() {
                return Ok(());
            }
            self.remove_locked(&key, &old)?;
        }
        let mut shared = self
            .store
            .load_shared()
            .map_err(state_err("read shared state"))?;
        let mut ops = Vec::new();
        let table = table_exists(&*self.kernel, Table::Inet)?;
        // A table made by a plugnet without routed mode lacks the `routed` set (and its rule):
        // a routed attachment rebuilds the table, in the same transaction.
        // Likewise a table without the cluster networks' `keepsrc4` map (and its rule), for an
        // attachment that keeps its source address inside its cluster network.
        let lacks = |set: &str| {
            self.kernel
                .set_exists(set)
                .map(|e| !e)
                .map_err(|e| FirewallError::Nft {
                    step: "look up set",
                    op: format!("get set inet plugnet {set}"),
                    source: e,
                })
        };
        let outdated = table
            && ((att.is_routed() && lacks(plan::SET_ROUTED)?)
                || (att.ip_masq && !att.keep_source_to.is_empty() && lacks(plan::MAP_KEEP4)?));
        if outdated {
            ops.push(Op::DelTable(Table::Inet));
        }
        let rebuilt = !table || outdated;
        // The bridge table is asked about only when it matters: a rebuild replaces it too, and
        // an attachment with a MAC check needs it.
        let bridge_table =
            (rebuilt || att.source_mac.is_some()) && table_exists(&*self.kernel, Table::Bridge)?;
        if rebuilt && bridge_table {
            ops.push(Op::DelTable(Table::Bridge));
        }
        if rebuilt {
            // Fresh host, someone flushed our table, or it is outdated: rebuild what the state
            // records.
            let atts = self
                .store
                .all_attachments()
                .map_err(state_err("read attachments"))?;
            // The counters are a cache of the attachment files: trust the files.
            shared = recount(&atts, &shared);
            ops.extend(rebuild_ops(&shared, &atts));
        }
        let bridge = shared.bridges.get(&att.bridge).cloned().unwrap_or_default();
        let have_bridge_table = if rebuilt {
            shared.mac_checks > 0
        } else {
            bridge_table
        };
        let edges = SharedEdges {
            bridge_portmap: !att.port_mappings.is_empty() && bridge.portmap_refs == 0,
            bridge_table: att.source_mac.is_some() && !have_bridge_table,
        };
        ops.extend(plan::attach_ops(att, &key, &edges));

        // Host-side effects that nftables cannot roll back: do them first, undo on failure.
        let mut undo = Undo::default();
        let result = (|| {
            // The holds are read only for a bridge's first attachment, not on every ADD.
            let held = if self.opts.host_firewall && bridge.refs == 0 {
                Some(self.held().map_err(state_err("read holds"))?)
            } else {
                None
            };
            if let Some(held) = held.filter(|h| !h.contains(&att.bridge)) {
                let mut bridges = active_bridges(&shared);
                bridges.extend(held);
                let before = bridges.clone();
                bridges.insert(att.bridge.clone());
                self.kernel
                    .host_sync(&bridges, hostfw::Families::of(&att.container_ips))?;
                undo.host_firewall(before);
            }
            let mut route_localnet_was = bridge.route_localnet_was.clone();
            if edges.bridge_portmap && att.addrs().any(|a| a.is_ipv4()) {
                // Remember the value before changing it: a kill between the change and the
                // counters below must leave what GC restores (`reconcile_sysctls`).
                if route_localnet_was.is_none() {
                    let mut pending = shared.clone();
                    pending
                        .bridges
                        .entry(att.bridge.clone())
                        .or_default()
                        .route_localnet_was = Some(self.kernel.route_localnet(&att.bridge)?);
                    self.store
                        .save_shared(&pending)
                        .map_err(state_err("write state"))?;
                }
                let was = self.kernel.set_route_localnet(&att.bridge, "1")?;
                undo.route_localnet(att.bridge.clone(), was.clone());
                route_localnet_was = Some(was);
            }
            // Record first: a process killed right after the commit must leave a record that
            // DEL finds (DEL of a record whose rules never landed is harmless: ENOENT per op).
            self.store
                .save_attachment(&key, att)
                .map_err(state_err("write attachment"))?;
            if let Err(e) = self.kernel.run(&ops) {
                let _ = self.store.delete_attachment(&key);
                return Err(nft_err("apply attachment")(e));
            }
            // The counters are a cache of the attachment files (decisions that reach zero are
            // confirmed against the files), so a kill before this write loses nothing.
            shared.attachments += 1;
            if att.source_mac.is_some() {
                shared.mac_checks += 1;
            }
            let b = shared.bridges.entry(att.bridge.clone()).or_default();
            b.refs += 1;
            if !att.port_mappings.is_empty() {
                b.portmap_refs += 1;
                b.route_localnet_was = route_localnet_was;
            }
            self.store
                .save_shared(&shared)
                .map_err(state_err("write state"))?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.flush_udp(att);
                Ok(())
            }
            Err(e) => {
                undo.rollback(&*self.kernel);
                Err(e)
            }
        }
    }

    /// Does the state record this attachment? One `stat`, no lock: lets DEL skip the firewall
    /// entirely for attachments that never used it.
    pub fn is_recorded(&self, network: &str, container_id: &str, ifname: &str) -> bool {
        let key = AttachmentId::new(network, container_id, ifname).firewall_key();
        self.store.has_attachment(&key)
    }

    /// Removes the attachment's rules; success when nothing is recorded or installed.
    pub fn remove(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), FirewallError> {
        check_cni_name("network name", network)?;
        check_cni_name("container id", container_id)?;
        check_ifname("ifname", ifname)?;
        let _lock = self.store.lock().map_err(state_err("lock state"))?;
        let key = AttachmentId::new(network, container_id, ifname).firewall_key();
        match self
            .store
            .load_attachment(&key)
            .map_err(state_err("read attachment"))?
        {
            // Nothing recorded, or a record a power loss tore: drop the file if there is one.
            None => self
                .store
                .delete_attachment(&key)
                .map_err(state_err("remove torn attachment record")),
            Some(old) => self.remove_locked(&key, &old),
        }
    }

    fn remove_locked(&self, key: &str, att: &Attachment) -> Result<(), FirewallError> {
        let mut errors = Vec::new();
        let before = self
            .store
            .load_shared()
            .map_err(state_err("read shared state"))?;
        let counted = before.bridges.get(&att.bridge).cloned().unwrap_or_default();
        // What is left without this attachment. The counters are a cache: when one of them is
        // about to reach zero (last attachment, bridge or port-mapping user), the attachment
        // files decide — a directory scan, only then.
        let reaches_zero = before.attachments <= 1
            || counted.refs <= 1
            || (!att.port_mappings.is_empty() && counted.portmap_refs <= 1)
            || (att.source_mac.is_some() && before.mac_checks <= 1);
        let shared = if reaches_zero {
            let others: Vec<(String, Attachment)> = self
                .store
                .all_attachments()
                .map_err(state_err("read attachments"))?
                .into_iter()
                .filter(|(k, _)| k != key)
                .collect();
            recount(&others, &before)
        } else {
            let mut s = before.clone();
            s.attachments -= 1;
            if att.source_mac.is_some() {
                s.mac_checks -= 1;
            }
            if let Some(b) = s.bridges.get_mut(&att.bridge) {
                b.refs -= 1;
                if !att.port_mappings.is_empty() {
                    b.portmap_refs -= 1;
                }
            }
            s
        };
        let left = shared.bridges.get(&att.bridge).cloned().unwrap_or_default();
        let edges = SharedEdges {
            bridge_portmap: !att.port_mappings.is_empty() && left.portmap_refs == 0,
            bridge_table: att.source_mac.is_some() && shared.mac_checks == 0,
        };
        let table = self.kernel.table_exists(Table::Inet).unwrap_or(true);
        // The bridge table's elements go whether or not the inet table is still there.
        let ops = if shared.attachments == 0 {
            let mut ops = Vec::new();
            if table {
                ops.push(Op::DelTable(Table::Inet));
            }
            if att.source_mac.is_some() || before.mac_checks > 0 {
                ops.push(Op::DelTable(Table::Bridge));
            }
            ops
        } else if table || att.source_mac.is_some() {
            plan::detach_ops(att, key, &edges)
        } else {
            Vec::new()
        };
        if let Err(e) = self.kernel.run(&ops) {
            if e.source.raw_os_error() == Some(libc::ENOENT) {
                // Partly gone already (someone deleted rules by hand, or the ADD that recorded
                // this attachment died before its commit): delete what is left.
                for op in &ops {
                    match self.kernel.run(std::slice::from_ref(op)) {
                        Err(e) if e.source.raw_os_error() != Some(libc::ENOENT) => {
                            errors.push(nft_err("remove attachment")(e))
                        }
                        _ => {}
                    }
                }
            } else {
                errors.push(nft_err("remove attachment")(e));
            }
        }
        if !att.port_mappings.is_empty() && left.portmap_refs == 0 {
            if let Some(was) = counted.route_localnet_was.clone() {
                if let Err(e) = self.kernel.set_route_localnet(&att.bridge, &was) {
                    // The bridge may be gone already: nothing to restore then.
                    if !matches!(&e, FirewallError::Sysctl { source, .. } if source.kind() == io::ErrorKind::NotFound)
                    {
                        errors.push(e);
                    }
                }
            }
        }
        let bridge_gone = left.refs == 0;
        if bridge_gone && self.opts.host_firewall {
            match self.held() {
                // Held open (a Docker network's lifetime): its rules stay.
                Ok(held) if held.contains(&att.bridge) => {}
                Ok(held) => {
                    let mut bridges = active_bridges(&shared);
                    bridges.extend(held);
                    if let Err(e) = self.kernel.host_sync(&bridges, hostfw::Families::NONE) {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(state_err("read holds")(e)),
            }
        }
        // Counters first, then the record: a kill in between leaves a counter one too low,
        // which the next decision that reaches zero corrects from the files; a counter one
        // too high would make the last DEL keep the table.
        if let Err(e) = self
            .store
            .save_shared(&shared)
            .and_then(|()| self.store.delete_attachment(key))
        {
            errors.push(state_err("write state")(e));
        }
        self.flush_udp(att);
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(FirewallError::Multiple(errors)),
        }
    }

    /// Verifies that the attachment is recorded as given and its chains and map elements are in
    /// the kernel.
    pub fn check(&self, att: &Attachment) -> Result<(), FirewallError> {
        att.validate()?;
        let key = att.id().firewall_key();
        match self
            .store
            .load_attachment(&key)
            .map_err(state_err("read attachment"))?
        {
            None => {
                return Err(FirewallError::Check(
                    "no firewall state for this attachment".into(),
                ))
            }
            Some(rec) if rec != *att => {
                return Err(FirewallError::Check(
                    "recorded firewall state differs from the configuration".into(),
                ))
            }
            Some(_) => {}
        }
        self.check_kernel(att, &key)?;
        if self.opts.host_firewall {
            self.kernel.host_check(&att.bridge)?;
        }
        Ok(())
    }

    fn check_kernel(&self, att: &Attachment, key: &str) -> Result<(), FirewallError> {
        let io_err = |e: io::Error| FirewallError::Check(format!("query nftables: {e}"));
        let tables = [Table::Inet]
            .into_iter()
            .chain(att.source_mac.map(|_| Table::Bridge));
        for t in tables {
            if !self.kernel.table_exists(t).map_err(io_err)? {
                return Err(FirewallError::Check(format!(
                    "table {t} is missing (run `plugnet firewall reload`)"
                )));
            }
        }
        if att.source_mac.is_some()
            && !self
                .kernel
                .chain_holds(plan::CHAIN_MACSPOOF, &l2::macspoof_rules())
                .map_err(io_err)?
        {
            return Err(FirewallError::Check(format!(
                "chain {} {} lacks its rules or holds others (run `plugnet firewall reload`)",
                Table::Bridge,
                plan::CHAIN_MACSPOOF
            )));
        }
        let mut chains = Vec::new();
        let mut elems = Vec::new();
        elems.extend(
            plan::portmap_elems(att)
                .into_iter()
                .map(|(set, k, _)| (set, k)),
        );
        if att.ip_masq {
            elems.extend(plan::masq_elems(att));
        }
        if att.net_out.is_some() {
            chains.push(egress_chain(key));
            elems.extend(plan::egress_elems(att));
        }
        elems.extend(plan::member_elems(att));
        elems.extend(plan::routed_elems(att));
        elems.extend(l2::mac_elems(att));
        for c in chains {
            if !self.kernel.chain_exists(&c).map_err(io_err)? {
                return Err(FirewallError::Check(format!("chain {c} is missing")));
            }
        }
        for (set, k) in elems {
            if !self.kernel.elem_exists(&set, &k).map_err(io_err)? {
                let shown: Vec<String> = k.iter().map(|x| x.to_string()).collect();
                return Err(FirewallError::Check(format!(
                    "element {} missing from {set}",
                    shown.join(" . ")
                )));
            }
        }
        Ok(())
    }

    pub(super) fn held(&self) -> io::Result<BTreeSet<String>> {
        self.store.held_bridges()
    }

    fn flush_udp(&self, att: &Attachment) {
        if !self.opts.flush_conntrack {
            return;
        }
        let ports: Vec<u16> = att
            .port_mappings
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| p.host_port)
            .collect();
        if let Err(e) = self.kernel.flush_udp_ports(&ports) {
            tracing::warn!(
                "plugnet firewall: flush UDP conntrack entries for ports {ports:?}: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn del_of_a_record_a_power_loss_tore_succeeds_and_drops_the_file() {
        let d = tempfile::tempdir().unwrap();
        let fw = Firewall::at(d.path().join("fw"));
        drop(fw.store.lock().unwrap()); // makes the directories
        let torn = d.path().join("fw/attachments").join(format!(
            "{}.json",
            AttachmentId::new("n", "c1", "eth0").firewall_key()
        ));
        std::fs::write(&torn, b"").unwrap();
        assert!(fw.is_recorded("n", "c1", "eth0"));
        fw.remove("n", "c1", "eth0").unwrap();
        assert!(!torn.exists());
        assert!(!fw.is_recorded("n", "c1", "eth0"));
        // And with nothing recorded at all, DEL is still success.
        fw.remove("n", "c1", "eth0").unwrap();
    }
}
