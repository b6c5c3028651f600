//! plugnet's packet filtering and NAT for container attachments (ipMasq, port mappings, egress
//! rules), in an nftables table of its own, and coexistence with host firewalls that drop
//! forwarded traffic (Docker's iptables: `hostfw`; the host's own nftables chains: `hostnft`);
//! invariant: every `apply`/`remove` is one nftables transaction that touches only the
//! attachment's own chains and map elements (plus shared objects on their first/last use), and
//! the state directory always describes what is installed, so `reload` can rebuild it.
//!
//! Layout (`nft list table inet plugnet`): verdict maps keyed per container (`pm_any`,
//! `pm_ip4`, `pm_ip6` for port mappings; `egress4/6` by bridge . source address) jump to
//! per-container chains `c-<key>-dnat` / `c-<key>-out`; sets keyed per container (`masq4/6`,
//! `members4/6`) drive masquerading and hairpin NAT; `routed` holds the host veths of routed
//! attachments (whose "bridge" is their own host veth: traffic out to one keeps its source
//! address); base chains `guard`, `prerouting`,
//! `output`, `postrouting`, `forward` hold a fixed handful of rules. See docs/firewall.md.

mod conntrack;
pub mod hostfw;
mod hostnft;
pub mod l2;
pub mod names;
mod nft;
pub mod plan;
pub mod state;
pub mod types;
pub mod vocab;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use hostfw::forward_may_drop as host_forward_may_drop;
pub use types::{
    Attachment, IcmpMatch, NetOut, NetOutDefault, NetOutProtocol, NetOutRule, NetRange,
    PortMapping, PortRange, Protocol,
};

use names::{attachment_key, check_cni_name, check_ifname, egress_chain};
use plan::{Op, SharedEdges, Table};
use state::{Shared, Store};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/plugnet/firewall";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("invalid firewall input: {0}")]
    Invalid(String),
    #[error("firewall state: {step}: {source}")]
    State {
        step: &'static str,
        source: io::Error,
    },
    #[error("nftables: {step}: {op}: {source}")]
    Nft {
        step: &'static str,
        op: String,
        source: io::Error,
    },
    #[error("port mapping conflict: {0}")]
    PortConflict(String),
    #[error("host firewall: {0}")]
    HostFirewall(String),
    #[error("sysctl {path}: {source}")]
    Sysctl { path: String, source: io::Error },
    #[error("firewall check: {0}")]
    Check(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<FirewallError>),
}

impl FirewallError {
    /// The kernel errno behind this error, if any (EEXIST, ENOENT, EPERM, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            FirewallError::Nft { source, .. }
            | FirewallError::State { source, .. }
            | FirewallError::Sysctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn state_err(step: &'static str) -> impl FnOnce(io::Error) -> FirewallError {
    move |source| FirewallError::State { step, source }
}

fn nft_err(step: &'static str) -> impl FnOnce(nft::NftError) -> FirewallError {
    move |e| {
        if e.source.raw_os_error() == Some(libc::EEXIST)
            && e.op.starts_with("add element inet plugnet pm")
        {
            return FirewallError::PortConflict(format!(
                "host port already mapped by another attachment ({})",
                e.op
            ));
        }
        FirewallError::Nft {
            step,
            op: e.op,
            source: e.source,
        }
    }
}

/// How the firewall runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where attachments and reference counts are kept.
    pub state_dir: PathBuf,
    /// Keep iptables' FORWARD path (Docker's DOCKER-USER) open for plugnet bridges.
    pub host_firewall: bool,
    /// Flush stale UDP conntrack entries of mapped ports on apply/remove.
    pub flush_conntrack: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            host_firewall: true,
            flush_conntrack: true,
        }
    }
}

/// What `reload` rebuilt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadReport {
    pub attachments: usize,
    pub bridges: usize,
}

/// The firewall over one state directory.
#[derive(Clone, Debug)]
pub struct Firewall {
    opts: Options,
    store: Store,
}

impl Firewall {
    /// The firewall whose state lives in `state_dir`, with the default options otherwise (the
    /// plugin, the CLI and plugnet-shim all use these).
    pub fn at(state_dir: impl Into<PathBuf>) -> Firewall {
        Firewall::new(Options {
            state_dir: state_dir.into(),
            ..Options::default()
        })
    }

    pub fn new(opts: Options) -> Firewall {
        let store = Store::new(opts.state_dir.clone());
        Firewall { opts, store }
    }

    /// Installs the attachment's rules in one nftables transaction (idempotent for an identical
    /// attachment; a changed one replaces the recorded one).
    pub fn apply(&self, att: &Attachment) -> Result<(), FirewallError> {
        att.validate()?;
        let _lock = self.store.lock().map_err(state_err("lock state"))?;
        let key = attachment_key(&att.network, &att.container_id, &att.ifname);
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
        let table = table_exists(Table::Inet)?;
        // A table made by a plugnet without routed mode lacks the `routed` set (and its rule):
        // a routed attachment rebuilds the table, in the same transaction.
        // Likewise a table without the cluster networks' `keepsrc4` map (and its rule), for an
        // attachment that keeps its source address inside its cluster network.
        let lacks = |set: &str| {
            nft::set_exists(set)
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
        let bridge_table = (rebuilt || att.source_mac.is_some()) && table_exists(Table::Bridge)?;
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
        let mut undo: Vec<Box<dyn FnOnce()>> = Vec::new();
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
                hostfw::sync(&bridges, hostfw::Families::of(&att.container_ips))?;
                undo.push(Box::new(move || {
                    let _ = hostfw::sync(&before, hostfw::Families::NONE);
                }));
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
                        .route_localnet_was = Some(read_route_localnet(&att.bridge)?);
                    self.store
                        .save_shared(&pending)
                        .map_err(state_err("write state"))?;
                }
                let was = set_route_localnet(&att.bridge, "1")?;
                let b = att.bridge.clone();
                let prev = was.clone();
                undo.push(Box::new(move || {
                    let _ = set_route_localnet(&b, &prev);
                }));
                route_localnet_was = Some(was);
            }
            // Record first: a process killed right after the commit must leave a record that
            // DEL finds (DEL of a record whose rules never landed is harmless: ENOENT per op).
            self.store
                .save_attachment(&key, att)
                .map_err(state_err("write attachment"))?;
            if let Err(e) = nft::run(&ops) {
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
                for u in undo.into_iter().rev() {
                    u();
                }
                Err(e)
            }
        }
    }

    /// Does the state record this attachment? One `stat`, no lock: lets DEL skip the firewall
    /// entirely for attachments that never used it.
    pub fn is_recorded(&self, network: &str, container_id: &str, ifname: &str) -> bool {
        let key = attachment_key(network, container_id, ifname);
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
        let key = attachment_key(network, container_id, ifname);
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
        let table = nft::table_exists(Table::Inet).unwrap_or(true);
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
        if let Err(e) = nft::run(&ops) {
            if e.source.raw_os_error() == Some(libc::ENOENT) {
                // Partly gone already (someone deleted rules by hand, or the ADD that recorded
                // this attachment died before its commit): delete what is left.
                for op in &ops {
                    match nft::run(std::slice::from_ref(op)) {
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
                if let Err(e) = set_route_localnet(&att.bridge, &was) {
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
                    if let Err(e) = hostfw::sync(&bridges, hostfw::Families::NONE) {
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
        let key = attachment_key(&att.network, &att.container_id, &att.ifname);
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
            hostfw::check(&att.bridge)?;
        }
        Ok(())
    }

    fn check_kernel(&self, att: &Attachment, key: &str) -> Result<(), FirewallError> {
        let io_err = |e: io::Error| FirewallError::Check(format!("query nftables: {e}"));
        let tables = [Table::Inet]
            .into_iter()
            .chain(att.source_mac.map(|_| Table::Bridge));
        for t in tables {
            if !nft::table_exists(t).map_err(io_err)? {
                return Err(FirewallError::Check(format!(
                    "table {t} is missing (run `plugnet firewall reload`)"
                )));
            }
        }
        if att.source_mac.is_some()
            && !nft::chain_holds(plan::CHAIN_MACSPOOF, &l2::macspoof_rules()).map_err(io_err)?
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
            if !nft::chain_exists(&c).map_err(io_err)? {
                return Err(FirewallError::Check(format!("chain {c} is missing")));
            }
        }
        for (set, k) in elems {
            if !nft::elem_exists(&set, &k).map_err(io_err)? {
                let shown: Vec<String> = k.iter().map(|x| x.to_string()).collect();
                return Err(FirewallError::Check(format!(
                    "element {} missing from {set}",
                    shown.join(" . ")
                )));
            }
        }
        Ok(())
    }

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
            if table_exists(t)? {
                ops.push(Op::DelTable(t));
            }
        }
        if !atts.is_empty() {
            ops.extend(rebuild_ops(&shared, &atts));
        }
        nft::run(&ops).map_err(nft_err("reload"))?;
        let bridges = active_bridges(&shared);
        if self.opts.host_firewall {
            let mut all = bridges.clone();
            all.extend(self.held().map_err(state_err("read holds"))?);
            // Where forwarding is off, the families the recorded containers use get their
            // rules beforehand again (after a flush, nothing of plugnet's is left to keep).
            let carried = hostfw::Families::of(atts.iter().flat_map(|(_, a)| &a.container_ips));
            hostfw::sync_exact(&all, carried)?;
        }
        for (name, b) in &shared.bridges {
            if b.portmap_refs > 0 && b.route_localnet_was.is_some() {
                set_route_localnet(name, "1")?;
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
        let table = !attached || table_exists(Table::Inet)?;
        let bridge_table = !mac_checked || table_exists(Table::Bridge)?;
        let host_ok = !self.opts.host_firewall || hostfw::in_place(&live_bridges)?;
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
            if let Err(e) = hostfw::sync(&bridges, hostfw::Families::NONE) {
                if on {
                    let _ = self.store.set_hold(bridge, holder, false);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn held(&self) -> io::Result<BTreeSet<String>> {
        self.store.held_bridges()
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
            match set_route_localnet(name, was) {
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
        if let Err(e) = conntrack::flush_udp_ports(&ports) {
            eprintln!("plugnet firewall: flush UDP conntrack entries for ports {ports:?}: {e}");
        }
    }
}

/// Does plugnet's table `t` exist? (An nftables query.)
fn table_exists(t: Table) -> Result<bool, FirewallError> {
    nft::table_exists(t).map_err(|e| FirewallError::Nft {
        step: "look up table",
        op: format!("get table {t}"),
        source: e,
    })
}

/// Bridges with at least one attachment.
fn active_bridges(shared: &Shared) -> BTreeSet<String> {
    shared
        .bridges
        .iter()
        .filter(|(_, b)| b.refs > 0)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Shared counters as the recorded attachments imply (keeps remembered sysctl values).
fn recount(atts: &[(String, Attachment)], old: &Shared) -> Shared {
    let mut s = Shared {
        version: state::VERSION,
        attachments: atts.len() as u64,
        ..Shared::default()
    };
    for (_, a) in atts {
        if a.source_mac.is_some() {
            s.mac_checks += 1;
        }
        let b = s.bridges.entry(a.bridge.clone()).or_default();
        b.refs += 1;
        if !a.port_mappings.is_empty() {
            b.portmap_refs += 1;
            b.route_localnet_was = old
                .bridges
                .get(&a.bridge)
                .and_then(|o| o.route_localnet_was.clone())
                .or_else(|| Some("0".into()));
        }
    }
    s
}

/// The whole table from state: infrastructure, shared chains and elements, then every
/// attachment's own objects.
fn rebuild_ops(shared: &Shared, atts: &[(String, Attachment)]) -> Vec<Op> {
    let mut ops = plan::infrastructure();
    if shared.mac_checks > 0 {
        ops.extend(l2::bridge_infrastructure());
    }
    for (name, b) in &shared.bridges {
        if b.portmap_refs > 0 {
            ops.extend(
                plan::bridge_elems(name)
                    .into_iter()
                    .map(|(set, key)| Op::AddElem {
                        set,
                        key,
                        data: None,
                    }),
            );
        }
    }
    for (key, a) in atts {
        ops.extend(plan::attach_ops(a, key, &SharedEdges::default()));
    }
    ops
}

/// `net.ipv4.conf.<bridge>.route_localnet`.
fn read_route_localnet(bridge: &str) -> Result<String, FirewallError> {
    check_ifname("bridge name", bridge)?;
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| FirewallError::Sysctl { path, source })
}

/// Sets `net.ipv4.conf.<bridge>.route_localnet`, returning the previous value.
fn set_route_localnet(bridge: &str, value: &str) -> Result<String, FirewallError> {
    check_ifname("bridge name", bridge)?;
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    let err = |source| FirewallError::Sysctl {
        path: path.clone(),
        source,
    };
    let was = fs::read_to_string(&path).map_err(err)?.trim().to_string();
    if was != value {
        fs::write(&path, value).map_err(err)?;
    }
    Ok(was)
}

/// [`Firewall::apply`] with default options.
pub fn apply(att: &Attachment) -> Result<(), FirewallError> {
    Firewall::new(Options::default()).apply(att)
}

/// [`Firewall::remove`] with default options.
pub fn remove(network: &str, container_id: &str, ifname: &str) -> Result<(), FirewallError> {
    Firewall::new(Options::default()).remove(network, container_id, ifname)
}

/// [`Firewall::check`] with default options.
pub fn check(att: &Attachment) -> Result<(), FirewallError> {
    Firewall::new(Options::default()).check(att)
}

/// [`Firewall::repair`] over `state_dir` (default options otherwise); `Ok(None)` also when
/// the directory does not exist.
pub fn repair(state_dir: impl Into<PathBuf>) -> Result<Option<ReloadReport>, FirewallError> {
    let state_dir = state_dir.into();
    if !state_dir.exists() {
        return Ok(None);
    }
    Firewall::at(state_dir).repair()
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

/// [`Firewall::reload`] over `state_dir`.
pub fn reload(state_dir: impl Into<PathBuf>) -> Result<ReloadReport, FirewallError> {
    Firewall::at(state_dir).reload()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn del_of_a_record_a_power_loss_tore_succeeds_and_drops_the_file() {
        let d = tempfile::tempdir().unwrap();
        let fw = Firewall::at(d.path().join("fw"));
        drop(fw.store.lock().unwrap()); // makes the directories
        let torn = d
            .path()
            .join("fw/attachments")
            .join(format!("{}.json", attachment_key("n", "c1", "eth0")));
        std::fs::write(&torn, b"").unwrap();
        assert!(fw.is_recorded("n", "c1", "eth0"));
        fw.remove("n", "c1", "eth0").unwrap();
        assert!(!torn.exists());
        assert!(!fw.is_recorded("n", "c1", "eth0"));
        // And with nothing recorded at all, DEL is still success.
        fw.remove("n", "c1", "eth0").unwrap();
    }
}
