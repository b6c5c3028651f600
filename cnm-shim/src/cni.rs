//! The real backend: CNI lists run through `plugnet::libcni`, addresses held in the
//! `plugnet::ipam` store, interfaces staged in namespaces the shim owns (`netns`).
//!
//! Invariant: `attach` leaves nothing behind when it fails (CNI DEL of the partial chain,
//! staging netns removed); `detach` always tries every step (interface back into its staging
//! netns, CNI DEL with the cached prevResult, leftover links, the netns) and reports the
//! collected errors.

use crate::backend::{AttachOutcome, AttachRequest, CniBackend, Holder, PoolCtx};
use crate::netns;
use crate::state::{AttachmentRecord, Phase};
use crate::translate;
use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::IpNetwork;
use plugnet::ipam::{Hold, Owner};
use plugnet::libcni::{CniConfig, NetworkList, RuntimeConf};
use plugnet::CniVersion;
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// `ipam.type` whose store the shim shares directly.
const PLUGNET_IPAM: &str = "plugnet-ipam";
/// host-local's default `dataDir`.
const HOST_LOCAL_DIR: &str = "/var/lib/cni/networks";

pub struct RealBackend {
    conf_dir: PathBuf,
    cni: CniConfig,
    host_ns: netns::Netns,
}

impl RealBackend {
    /// `host_ns` must be the namespace Docker's daemon lives in (the shim's at start-up).
    pub fn new(
        conf_dir: PathBuf,
        cni_path: Vec<PathBuf>,
        cache_dir: PathBuf,
        host_ns: netns::Netns,
    ) -> Self {
        RealBackend {
            conf_dir,
            cni: CniConfig::new(cni_path, cache_dir, Arc::new(plugnet::invoke::RawExec)),
            host_ns,
        }
    }

    fn runtime(
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        args: &[(String, String)],
        caps: &serde_json::Map<String, Value>,
    ) -> RuntimeConf {
        RuntimeConf {
            container_id: container_id.to_string(),
            netns: netns.map(Path::to_path_buf),
            ifname: ifname.to_string(),
            args: args.to_vec(),
            capability_args: caps.clone(),
        }
    }
}

fn list_of(conflist: &Value) -> Result<NetworkList> {
    NetworkList::from_json(conflist).map_err(|e| anyhow!("{e}"))
}

fn owner(h: &Holder) -> Owner {
    Owner::new(h.container_id.clone(), h.ifname.clone())
}

fn ipam_type(ipam: &Value) -> &str {
    ipam.get("type").and_then(Value::as_str).unwrap_or_default()
}

impl RealBackend {
    /// The CNI runtime configuration of an attach request (CNI_NETNS = `req.netns`).
    fn runtime_of(req: &AttachRequest) -> RuntimeConf {
        Self::runtime(
            &req.container_id,
            Some(&req.netns),
            &req.ifname,
            &req.args,
            &req.capability_args,
        )
    }

    /// ADD with plugnet's handoff: the container end is born in the host as `tmp_name`, where
    /// Docker takes it; no staging netns and no netns move (each move costs an RCU grace
    /// period, 10-50 ms here). The host-side peer is the name plugnet derives for the
    /// attachment.
    fn attach_handoff(&self, req: &AttachRequest) -> Result<AttachOutcome> {
        let nl = list_of(&req.conflist)?;
        let t = Instant::now();
        let rt = Self::runtime_of(req);
        let result = self
            .cni
            .add_network_list(&nl, &rt)
            .map_err(|e| anyhow!("{e}"))?;
        // A plugnet that predates the handoff ignores the argument and puts the interface in
        // CNI_NETNS: say so rather than hand Docker a name that does not exist.
        if !netns::link_exists(&req.tmp_name).unwrap_or(false) {
            if let Err(e) = self.cni.del_network_list(&nl, &rt) {
                warn!(container = %req.container_id, "undo: CNI DEL: {e}");
            }
            bail!(
                "the plugnet plugin did not leave {} in the host (is it older than this shim?)",
                req.tmp_name
            );
        }
        debug!(container = %req.container_id, add_us = t.elapsed().as_micros() as u64, "attach timing (handoff)");
        Ok(AttachOutcome {
            result: result.to_json(CniVersion::V1_0_0),
            peer: Some(plugnet::bridge::naming::host_veth_name(
                &req.container_id,
                &req.ifname,
            )),
        })
    }
}

impl CniBackend for RealBackend {
    fn load_conflist(&self, name: &str) -> Result<Value> {
        let nl = NetworkList::load(&self.conf_dir, name).map_err(|e| {
            anyhow!(
                "load CNI network {name:?} from {}: {e}",
                self.conf_dir.display()
            )
        })?;
        Ok(nl.to_json())
    }

    fn export_conflist(&self, conflist: &Value) -> Result<()> {
        let name = conflist["name"]
            .as_str()
            .ok_or_else(|| anyhow!("conflist without name"))?;
        std::fs::create_dir_all(&self.conf_dir)
            .with_context(|| format!("create {}", self.conf_dir.display()))?;
        let path = self.conf_dir.join(format!("{name}.conflist"));
        crate::state::write_atomic(&path, &serde_json::to_vec_pretty(conflist)?, 0o644)
            .with_context(|| format!("write {}", path.display()))
    }

    fn unexport_conflist(&self, name: &str) -> Result<()> {
        let path = self.conf_dir.join(format!("{name}.conflist"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    fn ipam_reserve(
        &self,
        pool: &PoolCtx,
        h: &Holder,
        requested: Option<IpAddr>,
        docker_held: &dyn Fn(IpAddr) -> bool,
    ) -> Result<IpNetwork> {
        if ipam_type(&pool.ipam) == PLUGNET_IPAM {
            return plugnet::ipam::reserve(
                &pool.ipam,
                &pool.cni_network,
                &owner(h),
                requested,
                pool.range.subnet.is_ipv6(),
            )
            .map_err(|e| anyhow!("{e}"));
        }
        // Another IPAM (host-local, …): it cannot hold addresses for us, so avoid what Docker
        // holds and what its host-local-format store already has on disk.
        let dir = pool
            .ipam
            .get("dataDir")
            .and_then(Value::as_str)
            .unwrap_or(HOST_LOCAL_DIR);
        let store = Path::new(dir).join(&pool.cni_network);
        let taken = |ip: IpAddr| docker_held(ip) || store.join(ip.to_string()).exists();
        let ip = match requested {
            Some(ip) if taken(ip) => bail!("requested address {ip} is already allocated"),
            Some(ip) => ip,
            None => translate::pick_address(&pool.range, pool.last, &taken, 1 << 20)
                .ok_or_else(|| anyhow!("no free address left in {}", pool.range.subnet))?,
        };
        Ok(IpNetwork::new(ip, pool.range.subnet.prefix())?)
    }

    fn cluster_view(&self, ipam: &Value, v6: bool) -> Result<(Vec<IpNetwork>, IpNetwork)> {
        let c = plugnet::ipam::cluster::alloc::ClusterRef::of(&serde_json::json!({ "ipam": ipam }))
            .map_err(|e| anyhow!("{e}"))?
            .ok_or_else(|| anyhow!("ipam names no cluster network"))?;
        plugnet::ipam::cluster::alloc::host_view(&c, v6).map_err(|e| anyhow!("{e}"))
    }

    fn ipam_transfer(&self, pool: &PoolCtx, from: &Holder, to: &Holder) -> Result<()> {
        if ipam_type(&pool.ipam) != PLUGNET_IPAM {
            return Ok(());
        }
        plugnet::ipam::transfer(
            &pool.ipam,
            &pool.cni_network,
            &owner(from),
            &owner(to),
            Hold::Reserved,
        )
        .map_err(|e| anyhow!("{e}"))
    }

    fn ipam_release(&self, pool: &PoolCtx, h: &Holder) -> Result<()> {
        if ipam_type(&pool.ipam) != PLUGNET_IPAM {
            return Ok(());
        }
        plugnet::ipam::release_owner(&pool.ipam, &pool.cni_network, &owner(h))
            .map(|_| ())
            .map_err(|e| anyhow!("{e}"))
    }

    fn ipam_release_reserved(&self, pool: &PoolCtx) -> Result<usize> {
        if ipam_type(&pool.ipam) != PLUGNET_IPAM {
            return Ok(0);
        }
        let records =
            plugnet::ipam::records_of(&pool.ipam, &pool.cni_network).map_err(|e| anyhow!("{e}"))?;
        let mut n = 0;
        for r in records {
            let in_pool = r.ips.iter().any(|ip| pool.range.subnet.contains(*ip));
            if r.hold == plugnet::ipam::Hold::Reserved && in_pool {
                plugnet::ipam::release_owner(&pool.ipam, &pool.cni_network, &r.owner)
                    .map_err(|e| anyhow!("{e}"))?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn handoff_arg(&self, conflist: &Value) -> Option<&'static str> {
        crate::adapter::handoff_arg(conflist)
    }

    fn hold_network(&self, conflist: &Value, holder: &str, on: bool) -> Result<()> {
        let Some((state_dir, bridge)) = crate::adapter::held_bridge(conflist) else {
            return Ok(()); // not plugnet, or routed: no bridge
        };
        let fw = plugnet::firewall::Firewall::at(&state_dir);
        if on {
            fw.hold(&bridge, holder)
                .with_context(|| format!("hold bridge {bridge}"))?;
        } else {
            fw.release(&bridge, holder)
                .with_context(|| format!("release bridge {bridge}"))?;
        }
        Ok(())
    }

    fn repair_firewalls(&self, conflists: &[&Value]) -> usize {
        crate::adapter::repair(conflists.iter().copied())
    }

    fn link_exists(&self, name: &str) -> Result<bool> {
        netns::link_exists(name).with_context(|| format!("look up link {name}"))
    }

    fn remove_bridge(&self, name: &str) -> Result<()> {
        netns::delete_bridge_if_unused(name).with_context(|| format!("remove bridge {name}"))?;
        Ok(())
    }

    fn attach(&self, req: &AttachRequest) -> Result<AttachOutcome> {
        if req.handoff {
            return self.attach_handoff(req);
        }
        let nl = list_of(&req.conflist)?;
        let t = Instant::now();
        netns::create(&req.netns).context("create staging netns")?;
        let t_ns = t.elapsed();
        let rt = Self::runtime_of(req);
        let undo = |rt: &RuntimeConf| {
            if let Err(e) = self.cni.del_network_list(&nl, rt) {
                warn!(container = %req.container_id, "undo: CNI DEL: {e}");
            }
            if let Err(e) = netns::remove(&req.netns) {
                warn!(container = %req.container_id, "undo: {e}");
            }
        };
        let result = match self.cni.add_network_list(&nl, &rt) {
            Ok(r) => r,
            Err(e) => {
                undo(&rt);
                bail!("{e}");
            }
        };
        let t_add = t.elapsed();
        match netns::move_out(&req.netns, &req.ifname, &self.host_ns, &req.tmp_name) {
            Ok(peer) => {
                debug!(container = %req.container_id, netns_us = t_ns.as_micros() as u64,
                    add_us = (t_add - t_ns).as_micros() as u64, move_us = (t.elapsed() - t_add).as_micros() as u64, "attach timing");
                Ok(AttachOutcome {
                    result: result.to_json(CniVersion::V1_0_0),
                    peer,
                })
            }
            Err(e) => {
                undo(&rt);
                Err(e).context("hand the container interface to Docker")
            }
        }
    }

    fn detach(&self, container_id: &str, rec: &AttachmentRecord) -> Result<()> {
        let mut errors = Vec::new();
        let t = Instant::now();
        // A handoff's netns is Docker's sandbox: named in CNI_NETNS while it exists, never
        // removed here.
        let ns_ok = if rec.handoff {
            rec.netns.exists()
        } else {
            netns::exists(&rec.netns)
        };
        // After Leave, Docker moved the interface back to the host as SrcName. It is not moved
        // back into the staging netns (a netns move costs an RCU grace period): plugins' DEL
        // tolerates the missing link, and it is deleted below with its peer.
        let t_in = t.elapsed();
        match list_of(&rec.conflist) {
            Ok(nl) => {
                let rt = Self::runtime(
                    container_id,
                    ns_ok.then_some(rec.netns.as_path()),
                    &rec.ifname,
                    &rec.args,
                    &rec.capability_args,
                );
                if let Err(e) = self.cni.del_network_list(&nl, &rt) {
                    errors.push(format!("CNI DEL: {e}"));
                }
            }
            Err(e) => errors.push(format!("stored conflist: {e:#}")),
        }
        let t_del = t.elapsed();
        // Links a plugin's DEL did not remove (the interface may still sit in a container) and
        // the staging netns go in the background: deleting a veth costs an RCU grace period
        // (~15-30 ms here) that Docker's disconnect/stop need not wait for. Nothing refers to
        // either any more; a failure is logged.
        // Only names this shim and plugnet give an attachment's links are deleted: a
        // hand-edited state file must not make the cleanup delete a foreign interface.
        let links: Vec<String> = owned_links(container_id, rec);
        let ns = (!rec.handoff).then(|| rec.netns.clone());
        let id = container_id.to_string();
        std::thread::spawn(move || {
            let t = Instant::now();
            for name in &links {
                if let Err(e) = netns::delete_link(name) {
                    warn!(container = %id, "cleanup: {e}");
                }
            }
            if let Some(ns) = ns {
                if let Err(e) = netns::remove(&ns) {
                    warn!(container = %id, "cleanup: {e}");
                }
            }
            debug!(container = %id, cleanup_us = t.elapsed().as_micros() as u64, "detach cleanup timing");
        });
        debug!(container = %container_id, del_us = (t_del - t_in).as_micros() as u64, "detach timing");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }

    fn sweep_staging(&self, dir: &Path, keep: &[PathBuf]) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let p = e.path();
            if !keep.contains(&p) {
                match netns::remove(&p) {
                    Ok(()) => n += 1,
                    Err(err) => warn!("sweep {}: {err}", p.display()),
                }
            }
        }
        n
    }

    fn attachment_alive(&self, rec: &AttachmentRecord) -> bool {
        if rec.phase != Phase::Joined {
            return true;
        }
        match &rec.peer {
            Some(p) => {
                netns::link_exists(p).unwrap_or(true)
                    || netns::link_exists(&rec.tmp_name).unwrap_or(true)
            }
            None => true,
        }
    }
}

/// The links of attachment `rec` that plugnet created, by the names it gives them: the
/// container end `pnj<id>` and plugnet's host-side veth. A recorded name other than these
/// (a hand-edited state file) is never deleted.
pub fn owned_links(container_id: &str, rec: &AttachmentRecord) -> Vec<String> {
    let mut out = Vec::new();
    if rec.tmp_name == crate::driver::tmp_name_for(container_id) {
        out.push(rec.tmp_name.clone());
    } else {
        warn!(container = %crate::driver::short(container_id), link = %rec.tmp_name, "not deleting a link this shim did not name");
    }
    if let Some(peer) = &rec.peer {
        if *peer == plugnet::bridge::naming::host_veth_name(container_id, &rec.ifname) {
            out.push(peer.clone());
        }
        // Any other peer is a veth of the container end above and goes with it.
    }
    out
}
