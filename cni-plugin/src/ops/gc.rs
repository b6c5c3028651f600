//! `plugnet gc`: reclaim IPAM records, host veths and libcni result caches whose owner (a
//! container id) is provably gone.
//!
//! Invariant (the conservative rule): an owner is reclaimed only when (1) no owner source
//! (runner state, plugnet-shim state) holds its id, (2) at least one netns path is recorded for
//! it and every recorded path is gone — or, with no path recorded (a chain whose later plugin
//! failed: no cache), plugnet's firewall recorded a completed ADD of it and every host veth
//! those records name is gone (the veth exists from before the record is written until DEL;
//! the kernel destroys it with its namespace) — and (3) none of its plugnet host veths still
//! has a peer in another namespace (a surviving peer means the namespace is alive, held by a
//! process). Anything else is kept and the report says why. IPAM records are released through
//! the allocator under the store lock, firewall records through the firewall, like a DEL.

use super::owners::{NetnsProbe, NetnsState, OwnerSource};
use crate::attachment::{self, host_veth_name, is_host_veth_name};
use crate::error::CniError;
use crate::ipam::report;
use crate::libcni::{self, CacheEntry};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A plugnet-shaped host veth as gc sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVeth {
    pub name: String,
    pub alias: Option<String>,
    /// Its MAC, plugnet's mark from birth ([`attachment::owner_mac`]).
    pub mac: Option<crate::netlink::Mac>,
    /// The peer lives in another (therefore live) namespace.
    pub peer_elsewhere: bool,
}

/// The host namespace's links, behind a trait so tests can script them.
pub trait HostLinks {
    /// Links with plugnet's host veth name shape.
    fn veths(&self) -> Result<Vec<HostVeth>, CniError>;
    fn delete(&self, name: &str) -> Result<(), CniError>;
}

impl HostVeth {
    /// Whether this veth carries `network`'s owner mark.
    fn owned_by(&self, network: &str) -> bool {
        attachment::owned_by(network, &self.name, self.alias.as_deref(), self.mac)
    }
}

/// One attachment plugnet's firewall recorded (written once ADD's veth exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwRecord {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub host_veth: String,
}

/// Firewall state dirs, behind a trait so tests can script them.
pub trait FirewallRecords {
    fn list(&self, dir: &Path) -> Result<Vec<FwRecord>, CniError>;
    /// Removes the attachment's rules and record (the table goes with the last one).
    fn remove(&self, dir: &Path, r: &FwRecord) -> Result<(), CniError>;
}

/// Where to look.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// plugnet-ipam data dirs (each holds one store per network).
    pub data_dirs: Vec<PathBuf>,
    /// libcni cache dirs (each holds `results/`).
    pub cache_dirs: Vec<PathBuf>,
    /// plugnet firewall state dirs (`firewallStateDir`).
    pub firewall_dirs: Vec<PathBuf>,
    pub dry_run: bool,
}

/// The decision about one owner.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `live`, `kept` (cannot prove dead) or `dead`.
    pub verdict: &'static str,
    pub reason: String,
}

/// One reclaim step; `done` is false on a dry run or when it failed (see `error`).
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `remove-firewall`, `delete-veth`, `release-ipam` or `remove-cache`.
    pub kind: &'static str,
    pub what: String,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    #[serde(rename = "dryRun")]
    pub dry_run: bool,
    /// Sources consulted, e.g. `runner state /var/lib/plugnet/runner: 2 containers`.
    pub sources: Vec<String>,
    pub owners: Vec<Verdict>,
    pub actions: Vec<Action>,
    /// Store entries that cannot be read (held by nobody, never handed out): the network's
    /// CNI GC repairs them; listed here so they are not a secret.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
}

impl GcReport {
    pub fn failed(&self) -> bool {
        self.actions.iter().any(|a| a.error.is_some())
    }
}

/// An IPAM record found in a store.
#[derive(Debug, Clone)]
struct Held {
    data_dir: PathBuf,
    network: String,
    ifname: String,
    ips: Vec<IpAddr>,
}

/// Everything known about one container id.
#[derive(Debug, Default)]
struct Owner {
    held: Vec<Held>,
    caches: Vec<CacheEntry>,
    firewall: Vec<(PathBuf, FwRecord)>,
    /// (network, ifname) pairs from records and caches.
    attachments: BTreeSet<(String, String)>,
}

/// Run gc (or plan it, with `opts.dry_run`).
pub fn run(
    opts: &GcOptions,
    sources: &[&dyn OwnerSource],
    probe: &dyn NetnsProbe,
    links: &dyn HostLinks,
    firewall: &dyn FirewallRecords,
) -> Result<GcReport, CniError> {
    let mut rep = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    for s in sources {
        match s.live_ids()? {
            None => rep.sources.push(format!("{}: absent", s.describe())),
            Some(ids) => {
                rep.sources
                    .push(format!("{}: {} container(s)", s.describe(), ids.len()));
                for id in ids {
                    live.entry(id).or_insert_with(|| s.describe());
                }
            }
        }
    }
    let owners = collect(opts, firewall, &mut rep.damaged)?;
    let veths: HashMap<String, HostVeth> = links
        .veths()?
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    for (id, owner) in &owners {
        let (verdict, reason) = judge(id, owner, &live, probe, &veths);
        rep.owners.push(Verdict {
            container_id: id.clone(),
            verdict,
            reason,
        });
        if verdict == "dead" {
            let kernel = Reclaim {
                veths: &veths,
                links,
                firewall,
            };
            reclaim(id, owner, &kernel, opts.dry_run, &mut rep.actions);
        }
    }
    Ok(rep)
}

fn collect(
    opts: &GcOptions,
    firewall: &dyn FirewallRecords,
    damaged: &mut Vec<String>,
) -> Result<BTreeMap<String, Owner>, CniError> {
    let mut owners: BTreeMap<String, Owner> = BTreeMap::new();
    for dir in &opts.data_dirs {
        for network in report::networks(dir) {
            let usage = report::usage(dir, &network, None)?;
            for d in usage.damaged {
                damaged.push(format!(
                    "{}: {} (held by nobody; the network's CNI GC repairs it)",
                    dir.join(&network).join(&d.entry).display(),
                    d.why
                ));
            }
            // host-local's leases in a store the host switched to plugnet-ipam.
            for h in usage.holders.iter().filter(|h| h.hold == "host-local") {
                let o = owners.entry(h.container_id.clone()).or_default();
                o.attachments.insert((network.clone(), h.ifname.clone()));
                o.held.push(Held {
                    data_dir: dir.clone(),
                    network: network.clone(),
                    ifname: h.ifname.clone(),
                    ips: vec![h.address],
                });
            }
            // Every record, including one whose claims a crashed ADD never completed: release
            // cleans both.
            for r in crate::ipam::records(dir, &network)? {
                let o = owners.entry(r.owner.container_id.clone()).or_default();
                o.attachments
                    .insert((network.clone(), r.owner.ifname.clone()));
                o.held.push(Held {
                    data_dir: dir.clone(),
                    network: network.clone(),
                    ifname: r.owner.ifname,
                    ips: r.ips,
                });
            }
        }
    }
    for dir in &opts.cache_dirs {
        for e in libcni::cache_entries(dir) {
            let o = owners.entry(e.container_id.clone()).or_default();
            o.attachments.insert((e.network.clone(), e.ifname.clone()));
            o.caches.push(e);
        }
    }
    for dir in &opts.firewall_dirs {
        for r in firewall.list(dir)? {
            let o = owners.entry(r.container_id.clone()).or_default();
            o.attachments.insert((r.network.clone(), r.ifname.clone()));
            o.firewall.push((dir.clone(), r));
        }
    }
    Ok(owners)
}

fn judge(
    id: &str,
    owner: &Owner,
    live: &BTreeMap<String, String>,
    probe: &dyn NetnsProbe,
    veths: &HashMap<String, HostVeth>,
) -> (&'static str, String) {
    if let Some(src) = live.get(id) {
        return ("live", format!("in {src}"));
    }
    let paths: BTreeSet<&Path> = owner
        .caches
        .iter()
        .flat_map(|c| c.netns.iter().map(PathBuf::as_path))
        .collect();
    if paths.is_empty() {
        // No netns recorded (no cache: a later plugin of the chain failed, or the runtime
        // keeps none), but plugnet's own record of a completed ADD, whose veth is gone.
        let gone = |(_, r): &&(PathBuf, FwRecord)| !veths.contains_key(&r.host_veth);
        if !owner.firewall.is_empty() && owner.firewall.iter().all(|r| gone(&r)) {
            let names: BTreeSet<&str> = owner
                .firewall
                .iter()
                .map(|(_, r)| r.host_veth.as_str())
                .collect();
            return (
                "dead",
                format!(
                    "no netns recorded, but plugnet's firewall recorded its ADD and host veth \
                     {} is gone (the kernel removes a veth with its namespace)",
                    names.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        return (
            "kept",
            "no netns recorded for it (no libcni cache, not in runner or shim state): cannot \
             prove it dead; if you know it is gone, run `plugnet ipam release`"
                .into(),
        );
    }
    for p in &paths {
        match probe.probe(p) {
            NetnsState::Alive => return ("live", format!("netns {} exists", p.display())),
            NetnsState::Unknown(why) => return ("kept", format!("cannot check netns: {why}")),
            NetnsState::Gone => {}
        }
    }
    for (network, ifname) in &owner.attachments {
        let name = host_veth_name(id, ifname);
        if let Some(v) = veths.get(&name) {
            if v.peer_elsewhere && v.owned_by(network) {
                return (
                    "kept",
                    format!(
                        "netns path gone but veth {name}'s peer is still in a namespace (held \
                         by a process): the container may still run"
                    ),
                );
            }
        }
    }
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    ("dead", format!("netns {} gone", list.join(", ")))
}

/// What reclaiming acts on.
struct Reclaim<'a> {
    veths: &'a HashMap<String, HostVeth>,
    links: &'a dyn HostLinks,
    firewall: &'a dyn FirewallRecords,
}

fn reclaim(id: &str, owner: &Owner, k: &Reclaim, dry_run: bool, out: &mut Vec<Action>) {
    let mut act = |kind, what: String, f: &mut dyn FnMut() -> Result<(), String>| {
        let error = if dry_run { None } else { f().err() };
        out.push(Action {
            container_id: id.to_string(),
            kind,
            done: !dry_run && error.is_none(),
            what,
            error,
        });
    };
    // As DEL does: firewall rules and host links first, the addresses last (an address is
    // never free while something keyed on it remains), then the caches that name them.
    for (dir, r) in &owner.firewall {
        act(
            "remove-firewall",
            format!("{} on {} ({})", r.ifname, r.network, dir.display()),
            &mut || k.firewall.remove(dir, r).map_err(|e| e.msg),
        );
    }
    for (network, ifname) in &owner.attachments {
        let name = host_veth_name(id, ifname);
        let Some(v) = k.veths.get(&name) else {
            continue;
        };
        if !v.owned_by(network) {
            continue;
        }
        act(
            "delete-veth",
            format!("{name} ({ifname} on {network})"),
            &mut || k.links.delete(&name).map_err(|e| e.msg),
        );
    }
    for h in &owner.held {
        let ips: Vec<String> = h.ips.iter().map(ToString::to_string).collect();
        let what = format!("{} {} on {}", ips.join(","), h.ifname, h.network);
        act("release-ipam", what, &mut || {
            report::release(&h.data_dir, &h.network, id, Some(&h.ifname))
                .map(drop)
                .map_err(|e| e.msg)
        });
    }
    for c in &owner.caches {
        act("remove-cache", c.path.display().to_string(), &mut || {
            libcni::remove_cache_entry(c).map_err(|e| e.to_string())
        });
    }
}

/// The firewall's state dirs, through [`crate::firewall::Firewall`].
pub struct StateFirewall;

impl FirewallRecords for StateFirewall {
    fn list(&self, dir: &Path) -> Result<Vec<FwRecord>, CniError> {
        if !dir.join("attachments").is_dir() {
            return Ok(Vec::new());
        }
        let atts = crate::firewall::Firewall::at(dir).list().map_err(|e| {
            CniError::io(format!(
                "read firewall state {} (gc reclaims nothing until it is readable): {e}",
                dir.display()
            ))
        })?;
        Ok(atts
            .into_iter()
            .map(|a| FwRecord {
                network: a.network,
                container_id: a.container_id,
                ifname: a.ifname,
                host_veth: a.host_veth,
            })
            .collect())
    }

    fn remove(&self, dir: &Path, r: &FwRecord) -> Result<(), CniError> {
        crate::firewall::Firewall::at(dir)
            .remove(&r.network, &r.container_id, &r.ifname)
            .map_err(|e| CniError::internal(format!("remove firewall rules: {e}")))
    }
}

/// The host namespace through rtnetlink.
pub struct NetlinkLinks;

impl NetlinkLinks {
    fn block_on<T>(
        f: impl std::future::Future<Output = Result<T, crate::netlink::NetlinkError>>,
    ) -> Result<T, CniError> {
        crate::netlink::block_on(f)
            .and_then(|r| r)
            .map_err(|e| CniError::internal(e.to_string()))
    }
}

impl HostLinks for NetlinkLinks {
    fn veths(&self) -> Result<Vec<HostVeth>, CniError> {
        let links = Self::block_on(async {
            let host = crate::netlink::Netlink::host()?;
            host.links().await
        })
        .map_err(|e| e.context("list host links"))?;
        Ok(links
            .into_iter()
            .filter(|l| is_host_veth_name(&l.name) && l.kind.as_deref() == Some("veth"))
            .map(|l| HostVeth {
                peer_elsewhere: l.link_netnsid.is_some(),
                name: l.name,
                alias: l.alias,
                mac: l.mac,
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<(), CniError> {
        let r = Self::block_on(async {
            let host = crate::netlink::Netlink::host()?;
            match host.del_link_by_name(name).await {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            }
        });
        r.map_err(|e| e.context(format!("delete veth {name}")))
    }
}

#[cfg(test)]
mod tests;
