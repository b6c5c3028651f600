//! `plugnet gc`: reclaim IPAM records, host veths and libcni result caches whose owner (a
//! container id) is provably gone.
//!
//! Invariant (the conservative rule): an owner is reclaimed only when (1) no owner source
//! (runner state, plugnet-shim state) holds its id, (2) at least one netns path is recorded for
//! it and every recorded path is gone, and (3) none of its plugnet host veths still has a peer
//! in another namespace (the kernel destroys a veth with its namespace, so a surviving peer
//! means the namespace is alive, held by a process). Anything else is kept and the report says
//! why. IPAM records are released through the allocator under the store lock, like a DEL.

use super::owners::{NetnsProbe, NetnsState, OwnerSource};
use crate::bridge::{naming, setup::owner_alias};
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
    /// The peer lives in another (therefore live) namespace.
    pub peer_elsewhere: bool,
}

/// The host namespace's links, behind a trait so tests can script them.
pub trait HostLinks {
    /// Links with plugnet's host veth name shape.
    fn veths(&self) -> Result<Vec<HostVeth>, CniError>;
    fn delete(&self, name: &str) -> Result<(), CniError>;
}

/// Where to look.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// plugnet-ipam data dirs (each holds one store per network).
    pub data_dirs: Vec<PathBuf>,
    /// libcni cache dirs (each holds `results/`).
    pub cache_dirs: Vec<PathBuf>,
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
    /// `release-ipam`, `delete-veth` or `remove-cache`.
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
    /// (network, ifname) pairs from records and caches.
    attachments: BTreeSet<(String, String)>,
}

/// Run gc (or plan it, with `opts.dry_run`).
pub fn run(
    opts: &GcOptions,
    sources: &[&dyn OwnerSource],
    probe: &dyn NetnsProbe,
    links: &dyn HostLinks,
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
    let owners = collect(opts)?;
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
            reclaim(id, owner, &veths, links, opts.dry_run, &mut rep.actions);
        }
    }
    Ok(rep)
}

fn collect(opts: &GcOptions) -> Result<BTreeMap<String, Owner>, CniError> {
    let mut owners: BTreeMap<String, Owner> = BTreeMap::new();
    for dir in &opts.data_dirs {
        for network in report::networks(dir) {
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
        let name = naming::host_veth_name(id, ifname);
        if let Some(v) = veths.get(&name) {
            if v.peer_elsewhere && v.alias.as_deref() == Some(owner_alias(network).as_str()) {
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

fn reclaim(
    id: &str,
    owner: &Owner,
    veths: &HashMap<String, HostVeth>,
    links: &dyn HostLinks,
    dry_run: bool,
    out: &mut Vec<Action>,
) {
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
    // IPAM first (as DEL does), then host links, then the caches that name them.
    for h in &owner.held {
        let ips: Vec<String> = h.ips.iter().map(ToString::to_string).collect();
        let what = format!("{} {} on {}", ips.join(","), h.ifname, h.network);
        act("release-ipam", what, &mut || {
            report::release(&h.data_dir, &h.network, id, Some(&h.ifname))
                .map(drop)
                .map_err(|e| e.msg)
        });
    }
    for (network, ifname) in &owner.attachments {
        let name = naming::host_veth_name(id, ifname);
        let Some(v) = veths.get(&name) else { continue };
        if v.alias.as_deref() != Some(owner_alias(network).as_str()) {
            continue;
        }
        act(
            "delete-veth",
            format!("{name} ({ifname} on {network})"),
            &mut || links.delete(&name).map_err(|e| e.msg),
        );
    }
    for c in &owner.caches {
        act("remove-cache", c.path.display().to_string(), &mut || {
            libcni::remove_cache_entry(c).map_err(|e| e.to_string())
        });
    }
}

/// The host namespace through rtnetlink.
pub struct NetlinkLinks;

impl NetlinkLinks {
    fn block_on<T>(
        f: impl std::future::Future<Output = Result<T, crate::netlink::NetlinkError>>,
    ) -> Result<T, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| CniError::internal(format!("start async runtime: {e}")))?;
        rt.block_on(f)
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
            .filter(|l| naming::is_host_veth_name(&l.name) && l.kind.as_deref() == Some("veth"))
            .map(|l| HostVeth {
                peer_elsewhere: l.link_netnsid.is_some(),
                name: l.name,
                alias: l.alias,
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
