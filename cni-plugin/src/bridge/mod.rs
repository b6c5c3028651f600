//! The bridge plugin (`"type": "plugnet"`): a Linux bridge, one veth pair per attachment,
//! addresses and routes from IPAM — a drop-in for the reference `bridge` plugin.
//!
//! This file is orchestration only: configuration lives in [`config`], the attachment's names
//! in [`crate::attachment`], the IPAM seam in [`ipam`], the container/host setup steps in [`setup`], CHECK in
//! [`check`] (the shared part, then its bridge and routed halves), GC in [`gc`], ipMasq / port mappings / netOut / bandwidth in [`features`], routed
//! mode (no bridge, /32 + host routes) in [`routed`]; all kernel work goes through
//! [`crate::netlink`], [`crate::firewall`] and [`crate::tc`].
//! Invariants: ADD either completes or undoes every step it took; DEL is idempotent and never
//! needs the container's namespace (the host veth name derives from the attachment).

pub mod check;
pub mod config;
mod cx;
pub mod features;
pub mod gc;
pub mod ipam;
/// The host veth names, kept here for plugnet-shim's `cni.rs` and the black-box tests, which
/// name them by this path; they live in [`crate::attachment`].
pub mod naming {
    pub use crate::attachment::{host_veth_name, is_host_veth_name};
}
pub mod routed;
pub mod setup;
mod undo;

use std::future::Future;

use crate::attachment::AttachmentId;
use crate::error::CniError;
use crate::invoke::{Exec, RawExec};
use crate::netlink::{LinkRemoval, Netlink};
use crate::netns::Netns;
use crate::skel::{Command, Plugin, Request};
use crate::types::CniResult;

use config::{BridgeConf, Mode};
// The public face: the plugin and the handoff argument plugnet-shim passes (the names an
// attachment's host side carries are crate::attachment's).
pub use config::{firewall_state_dir, HANDOFF_ARG};

pub(crate) use cx::kernel;
use cx::Cx;
use features::Features;
use undo::Undo;

/// The `plugnet` CNI plugin. `exec` runs delegated IPAM plugins (a fake in tests).
pub struct BridgePlugin {
    exec: Box<dyn Exec>,
}

impl Default for BridgePlugin {
    fn default() -> Self {
        BridgePlugin::with_exec(Box::new(RawExec))
    }
}

impl BridgePlugin {
    pub fn with_exec(exec: Box<dyn Exec>) -> Self {
        BridgePlugin { exec }
    }
}

impl Plugin for BridgePlugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let conf = BridgeConf::from_request(req)?;
        let feats = Features::from_request(req, &conf)?;
        let names = crate::names::NamesConf::from_config(&req.raw)?;
        let _serial = serialise(req);
        let mut result = block_on(add(&*self.exec, &conf, &feats, req))??;
        if let Some(names) = &names {
            // The record is the last step: if it cannot be written, the attachment goes.
            let routed = conf.mode == Mode::Routed;
            if let Err(e) = crate::names::add(names, req, routed, &mut result) {
                let _ = del(&*self.exec, &conf, &feats, req);
                return Err(e);
            }
        }
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let parse = |r: &Request| -> Result<(BridgeConf, Features), CniError> {
            let conf = BridgeConf::from_request(r)?;
            let feats = Features::from_request(r, &conf)?;
            Ok((conf, feats))
        };
        // DEL needs no capability args (the firewall's record and the attachment's names say
        // what ADD made): a value ADD would refuse must not make the DEL fail too, or nothing
        // could ever remove the attachment.
        let bare;
        let (req, (conf, feats)) = match parse(req) {
            Ok(parsed) => (req, parsed),
            Err(e) if !req.config.runtime_config.is_empty() => {
                bare = without_runtime_config(req);
                (&bare, parse(&bare).map_err(|_| e)?)
            }
            Err(e) => return Err(e),
        };
        let _serial = serialise(req);
        let mut outcome = del(&*self.exec, &conf, &feats, req);
        // The name record goes with the attachment (a config that no longer parses has none
        // to find; the agent drops records of a previous boot anyway).
        if let Ok(Some(names)) = crate::names::NamesConf::from_config(&req.raw) {
            if let Err(e) = crate::names::del(&names, req) {
                outcome = match outcome {
                    Ok(()) => Err(CniError::internal(e)),
                    Err(mut err) => {
                        err.msg = format!("{}; {e}", err.msg);
                        Err(err)
                    }
                };
            }
        }
        outcome
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let conf = BridgeConf::from_request(req)?;
        let feats = Features::from_request(req, &conf)?;
        match conf.mode {
            Mode::Bridge => block_on(check::bridge::check(&*self.exec, &conf, &feats, req))?,
            Mode::Routed => block_on(check::routed::check(&*self.exec, &conf, &feats, req))?,
        }
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let conf = BridgeConf::from_request(req)?;
        ipam::exec(&*self.exec, &conf.ipam, Command::Status, req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let conf = BridgeConf::from_request(req)?;
        let feats = Features::from_request(req, &conf)?;
        let gc = block_on(gc::gc(&*self.exec, &conf, &feats, req))?;
        if let (Some(names), Some(valid)) = (
            crate::names::NamesConf::from_config(&req.raw)?,
            &req.config.valid_attachments,
        ) {
            let pairs: Vec<(String, String)> = valid
                .iter()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect();
            if let Err(e) = crate::names::gc(&names, &req.config.name, &pairs) {
                return Err(match gc {
                    Ok(()) => CniError::internal(format!("name records: {e}")),
                    Err(mut err) => {
                        err.msg = format!("{}; name records: {e}", err.msg);
                        err
                    }
                });
            }
        }
        gc
    }

    fn known_args(&self) -> &'static [&'static str] {
        &[
            "IP",
            "MAC",
            config::HANDOFF_ARG,
            crate::ipam::KEEP_RESERVATION_ARG,
            "K8S_POD_NAME",
            crate::names::DOCKER_SANDBOX_ARG,
        ]
    }
}

/// ADD: bridge, IPAM, veth, port settings, gateway, container side, firewall, bandwidth,
/// result. Every step that creates something registers its undo; on failure the undo list runs
/// in reverse.
async fn add(
    exec: &dyn Exec,
    conf: &BridgeConf,
    feats: &Features,
    req: &Request,
) -> Result<CniResult, CniError> {
    let netns_path = req
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("required env variables [CNI_NETNS] missing"))?;
    // A handoff leaves the container end in the plugin's namespace, unconfigured: CNI_NETNS
    // only names where the runtime will put it (the result's `sandbox`).
    let ns = if conf.handoff.is_some() {
        Netns::current().map_err(|e| CniError::internal(format!("open own netns: {e}")))?
    } else {
        let ns = Netns::open(netns_path).map_err(|e| {
            let msg = format!("failed to open netns {}: {e}", netns_path.display());
            // A path that is not a network namespace is the caller's mistake (code 4).
            match e.kind() {
                std::io::ErrorKind::InvalidInput => CniError::env(msg),
                _ => CniError::internal(msg),
            }
        })?;
        // The plugin's own namespace as the "container" would put eth0, addresses and a
        // default route on the host itself.
        if ns.is_current().unwrap_or(false) {
            return Err(CniError::env(format!(
                "CNI_NETNS {} is the plugin's own network namespace",
                netns_path.display()
            )));
        }
        ns
    };
    let host = Netlink::host().map_err(kernel)?;
    let mut undo = Undo::default();
    let cx = Cx {
        exec,
        conf,
        feats,
        req,
        ns: &ns,
        host: &host,
    };
    let added = match conf.mode {
        Mode::Bridge => add_steps(&cx, &mut undo).await,
        Mode::Routed => routed::add_steps(&cx, &mut undo).await,
    };
    match added {
        Ok(result) => Ok(result),
        Err(e) => {
            undo.rollback(exec, conf, req, &host).await;
            Err(e)
        }
    }
}

async fn add_steps(cx: &Cx<'_>, undo: &mut Undo) -> Result<CniResult, CniError> {
    let Cx {
        exec,
        conf,
        feats,
        req,
        ns,
        host,
    } = *cx;
    let br = setup::bridge(conf, host).await?;

    let (mut result, durable) = ipam::add(exec, &conf.ipam, req)?;
    undo.release_ipam();
    setup::fill_gateways(conf, &mut result)?;

    let host_name = AttachmentId::of(req).host_veth();
    let mtu = conf
        .mtu
        .or(cluster_mtu(conf, req, host, &br).await?)
        .or(br.mtu);
    let pair = setup::veth(conf, req, host, ns, Some(&br), &host_name, mtu).await?;
    undo.delete_link(host_name.clone());
    setup::port(conf, host, &pair, &req.config.name).await?;

    if conf.is_gateway {
        setup::gateways_on_bridge(conf, host, &br, &result).await?;
    }
    if !conf.disable_container_interface && conf.handoff.is_none() {
        let container = Netlink::in_open_netns(ns).map_err(kernel)?;
        setup::container(conf, &container, pair.peer_index, &mut result).await?;
    }

    let result = setup::result(conf, req, &br, &pair, &host_name, mtu, result);

    feats
        .apply(conf, req, host, &host_name, &result, undo)
        .await?;
    ipam::durable(durable)?;
    Ok(result)
}

/// A cluster network's MTU (see `ipam::cluster::mtu_of`) when the configuration sets none;
/// a bridge with a larger MTU is lowered to it (the bridge's own MTU is pinned at creation).
async fn cluster_mtu(
    conf: &BridgeConf,
    req: &Request,
    host: &Netlink,
    br: &crate::netlink::Link,
) -> Result<Option<u32>, CniError> {
    if conf.mtu.is_some() {
        return Ok(None);
    }
    let Some(mtu) = crate::ipam::cluster::mtu_of(&req.raw) else {
        return Ok(None);
    };
    if br.mtu.is_some_and(|b| b > mtu) {
        host.set_mtu(br.index, mtu).await.map_err(kernel)?;
    }
    Ok(Some(mtu))
}

/// DEL (both modes): the firewall rules (on a thread, beside the rest), shaping, the host veth
/// (its peer and, in routed mode, the host routes through it go with it), then the addresses —
/// only once the host veth is gone and the firewall rules are, so that an address is never
/// free while something keyed on it remains. Missing netns, link, lease or rule are success;
/// every failure is collected and reported, and later steps still run.
///
/// The addresses are released on a thread that waits for the kernel's announcement of the
/// host veth's removal ([`LinkRemoval`]): it comes once the veth is unlisted with its
/// addresses, routes and bridge port, while the deleting request still waits 10-20 ms in the
/// kernel's `rcu_barrier()`. The release and its fsync run inside that wait instead of after
/// it; DEL still answers only when the release is on disk.
fn del(
    exec: &dyn Exec,
    conf: &BridgeConf,
    feats: &Features,
    req: &Request,
) -> Result<(), CniError> {
    let host_name = AttachmentId::of(req).host_veth();
    let firewall = features::start_firewall_removal(feats, req);
    // No notice socket (a descriptor limit): the release waits for the deletion to return.
    let (removal, over) = match LinkRemoval::watch() {
        Ok((r, o)) => (Some(r), Some(o)),
        Err(_) => (None, None),
    };
    let (mut errors, released) = std::thread::scope(|s| {
        let releaser = s.spawn(|| {
            if let Some(r) = removal {
                r.wait(&host_name);
            }
            let mut errors = Vec::new();
            features::finish_firewall_removal(firewall, &mut errors);
            // The addresses go last, whatever failed before: a DEL killed half-way then keeps
            // them held until the runtime's retry, so no new container can be handed an
            // address that stale firewall elements or host routes still name.
            if let Err(e) = ipam::exec(exec, &conf.ipam, Command::Del, req) {
                errors.push(format!("release addresses: {}", e.msg));
            }
            errors
        });
        let errors = match block_on(del_links(feats, req, &host_name)) {
            Ok(e) => e,
            Err(e) => vec![e.msg],
        };
        // The deletion returned (or there was nothing to delete): the releaser stops waiting.
        drop(over);
        let released = releaser
            .join()
            .unwrap_or_else(|_| vec!["release addresses: the releasing thread panicked".into()]);
        (errors, released)
    });
    errors.extend(released);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(errors.join("; ")))
    }
}

/// Waits until no other ADD or DEL of this attachment runs (a runtime racing a late DEL
/// against an ADD would otherwise release the address of a container that got it). Without a
/// lock file (an unwritable /run) the command runs unserialised, as it always did, and says so.
fn serialise(req: &Request) -> Option<crate::attachment_lock::AttachmentLock> {
    crate::attachment_lock::lock(&req.config.name, &req.container_id, &req.ifname)
        .map_err(|e| tracing::warn!("{e}; running without per-attachment serialisation"))
        .ok()
}

/// `req` as a runtime without capability args would send it.
fn without_runtime_config(req: &Request) -> Request {
    let mut bare = req.clone();
    bare.config.runtime_config.clear();
    if let Some(obj) = bare.raw.as_object_mut() {
        obj.remove("runtimeConfig");
    }
    // What a delegated IPAM plugin reads.
    bare.stdin = serde_json::to_vec(&bare.raw).expect("a JSON value serialises");
    bare
}

/// DEL's kernel part: shaping, then the host veth. Returns the failures.
async fn del_links(feats: &Features, req: &Request, host_name: &str) -> Vec<String> {
    let mut errors = Vec::new();
    match Netlink::host() {
        Ok(host) => {
            features::del_shaping(feats, req, &host, host_name, &mut errors).await;
            match host.del_link_by_name(host_name).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    errors
}

/// Runs one command's async body ([`crate::netlink::block_on`]).
fn block_on<F: Future>(f: F) -> Result<F::Output, CniError> {
    crate::netlink::block_on(f).map_err(|e| CniError::internal(e.to_string()))
}
