//! plugnet-ipam: host-local-compatible configuration over a files-with-lock store that stays
//! O(1) per ADD/DEL/CHECK however many addresses are held.
//!
//! Invariant: the functions here are the only entry points to the store for CNI requests, the
//! bridge plugin (in-process) and the Docker shim (reservations), so every caller shares one
//! allocator and one on-disk format.

pub mod allocator;
pub mod cluster;
pub mod config;
pub mod gc;
pub mod hostlocal;
pub mod report;
pub mod store;

pub use allocator::GcReport;
pub use config::IpamConfig;
pub use store::{FileStore, Hold, Owner, Record, Store, SyncJob};

use crate::error::CniError;
use crate::skel::{Plugin, Request};
use crate::types::CniResult;
use crate::validate;
use ipnetwork::IpNetwork;
use serde_json::Value;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Opens a network's store: the seam a store other than plugnet-ipam's files plugs into.
/// Every entry point below runs over one (the cluster store of [`cluster`] brings its own).
pub trait Stores {
    type Store: Store;
    /// The store of `network`; `None` when it does not exist and `create` is false.
    fn open(&self, network: &str, create: bool) -> Result<Option<Self::Store>, CniError>;
}

/// plugnet-ipam's own stores: a [`FileStore`] per network under `ipam.dataDir`.
pub struct Files<'a>(pub &'a Path);

impl Stores for Files<'_> {
    type Store = FileStore;
    fn open(&self, network: &str, create: bool) -> Result<Option<FileStore>, CniError> {
        validate::network_name(network)?;
        FileStore::open(self.0, network, create).map_err(|e| {
            CniError::io(format!(
                "ipam store {}: {e}",
                self.0.join(network).display()
            ))
        })
    }
}

fn created<S: Stores>(stores: &S, network: &str) -> Result<S::Store, CniError> {
    stores
        .open(network, true)?
        .ok_or_else(|| CniError::internal(format!("ipam store of {network}: not created")))
}

/// `ipam.dataDir` without validating the rest (DEL must work even if the config went bad).
fn data_dir_of(conf: &Value) -> PathBuf {
    conf.pointer("/ipam/dataDir")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR))
}

fn owner_of(req: &Request) -> Owner {
    Owner::new(req.container_id.clone(), req.ifname.clone())
}

/// ADD: allocate (or adopt a reservation) for the request's (container id, ifname).
pub fn add(req: &Request) -> Result<CniResult, CniError> {
    if let Some(c) = cluster::alloc::ClusterRef::of(&req.raw)? {
        let (result, store) = cluster::alloc::take(&c, req)?;
        store.sync().map_err(allocator::store_err("sync"))?;
        return Ok(result);
    }
    let cfg = IpamConfig::from_request(&req.raw, req.args.get("IP"))?;
    let (result, store) = take(&Files(&cfg.data_dir), &cfg, req)?;
    store.sync().map_err(allocator::store_err("sync"))?;
    Ok(result)
}

/// [`add`] for a caller with more work to do before it answers (the bridge plugin): returns
/// once the addresses are taken, while the store makes them durable on a thread. The caller
/// reports success only after [`Durable::wait`] did.
pub fn add_deferred(req: &Request) -> Result<(CniResult, Durable), CniError> {
    if let Some(c) = cluster::alloc::ClusterRef::of(&req.raw)? {
        let (result, store) = cluster::alloc::take(&c, req)?;
        return Ok((result, Durable::start(store.sync_job())));
    }
    let cfg = IpamConfig::from_request(&req.raw, req.args.get("IP"))?;
    let (result, store) = take(&Files(&cfg.data_dir), &cfg, req)?;
    Ok((result, Durable::start(store.sync_job())))
}

fn take<S: Stores>(
    stores: &S,
    cfg: &IpamConfig,
    req: &Request,
) -> Result<(CniResult, S::Store), CniError> {
    let store = created(stores, &req.config.name)?;
    let ips = allocator::allocate_unsynced(
        &store,
        &cfg.ranges,
        &owner_of(req),
        &cfg.requested,
        Hold::Attached,
    )?;
    let result = CniResult {
        interfaces: Vec::new(),
        ips,
        routes: cfg.routes.clone(),
        dns: cfg.dns.clone(),
    };
    Ok((result, store))
}

/// An allocation on its way to disk (see [`add_deferred`]). Dropping it waits too, so the
/// fsync never outlives the request, whatever path the caller leaves by.
pub struct Durable {
    state: Option<Syncing>,
}

enum Syncing {
    Thread(std::thread::JoinHandle<std::io::Result<()>>),
    /// No thread could be had (a process limit): the fsyncs ran inline; their outcome.
    Done(std::io::Result<()>),
}

impl Durable {
    /// Starts the store's durability work ([`Store::sync_job`]) on a thread of its own.
    fn start(job: SyncJob) -> Durable {
        // Kept for the inline fallback: a failed spawn drops its closure, the job with it.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(job)));
        let theirs = slot.clone();
        let state = match std::thread::Builder::new()
            .name("plugnet-fsync".into())
            .stack_size(64 * 1024)
            .spawn(move || run_job(&theirs))
        {
            Ok(h) => Syncing::Thread(h),
            Err(_) => Syncing::Done(run_job(&slot)),
        };
        Durable { state: Some(state) }
    }

    /// Blocks until the addresses are durable.
    pub fn wait(mut self) -> Result<(), CniError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), CniError> {
        let outcome = match self.state.take() {
            None => return Ok(()),
            Some(Syncing::Done(r)) => r,
            Some(Syncing::Thread(h)) => h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked"))),
        };
        outcome.map_err(allocator::store_err("sync"))
    }
}

fn run_job(slot: &std::sync::Mutex<Option<SyncJob>>) -> std::io::Result<()> {
    let job = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    job.map_or(Ok(()), |job| job())
}

impl Drop for Durable {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// `CNI_ARGS` key (`PLUGNET_KEEP_RESERVATION=1`): DEL keeps the attachment's addresses
/// claimed as a reservation instead of releasing them. plugnet-shim passes it with every
/// attachment of a Docker endpoint: the address Docker reserved belongs to the endpoint until
/// DeleteEndpoint, so a failed ADD's rollback, an interrupted attachment's undo and the DEL
/// before the endpoint's release must not free it (issue 17). Honoured by plugnet-ipam
/// whichever main plugin runs it (plugnet, or the reference bridge, which passes `CNI_ARGS`
/// on to its IPAM).
pub const KEEP_RESERVATION_ARG: &str = "PLUGNET_KEEP_RESERVATION";

fn keep_reservation(req: &Request) -> bool {
    matches!(
        req.args
            .get(KEEP_RESERVATION_ARG)
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("1" | "true")
    )
}

/// DEL: release everything the attachment holds (or, with [`KEEP_RESERVATION_ARG`], hold it
/// again as a reservation); unknown attachments are success.
pub fn del(req: &Request) -> Result<(), CniError> {
    if let Some(c) = cluster::alloc::ClusterRef::of(&req.raw).ok().flatten() {
        return cluster::alloc::del(&c, req, keep_reservation(req));
    }
    match Files(&data_dir_of(&req.raw)).open(&req.config.name, false)? {
        Some(store) if keep_reservation(req) => {
            allocator::keep_as_reservation(&store, &owner_of(req)).map(|_| ())
        }
        Some(store) => allocator::release(&store, &owner_of(req)).map(|_| ()),
        None => Ok(()),
    }
}

/// CHECK: the attachment still holds every address it was given.
pub fn check(req: &Request) -> Result<(), CniError> {
    if let Some(c) = cluster::alloc::ClusterRef::of(&req.raw)? {
        return cluster::alloc::check(&c, req);
    }
    let cfg = IpamConfig::from_request(&req.raw, None)?;
    let store = Files(&cfg.data_dir)
        .open(&req.config.name, false)?
        .ok_or_else(|| {
            CniError::internal(format!(
                "plugnet-ipam: failed to find address added by container {}",
                req.container_id
            ))
        })?;
    allocator::check(&store, &owner_of(req)).map(|_| ())
}

/// STATUS: the store can be written (what every ADD does) and every range set has a free
/// address; else code 50 with the reason.
pub fn status(req: &Request) -> Result<(), CniError> {
    if let Some(c) = cluster::alloc::ClusterRef::of(&req.raw)? {
        return cluster::alloc::status(&c);
    }
    let cfg = IpamConfig::from_request(&req.raw, None)?;
    let not_available = |msg: &str, details: String| {
        CniError::new(crate::ErrorCode::NotAvailable, msg).details(details)
    };
    let store = created(&Files(&cfg.data_dir), &req.config.name)
        .map_err(|e| not_available("ipam store is not usable", e.msg))?;
    store.probe_writable().map_err(|e| {
        not_available(
            "ipam store is not writable: ADD cannot allocate",
            format!("{}: {e}", store.location()),
        )
    })?;
    allocator::can_allocate(&store, &cfg.ranges)
}

/// GC: release every attachment of this network not in `cni.dev/valid-attachments`.
pub fn gc(req: &Request) -> Result<(), CniError> {
    if let Some(c) = cluster::alloc::ClusterRef::of(&req.raw)? {
        return cluster::alloc::gc(&c, req).map(drop);
    }
    let Some(store) = Files(&data_dir_of(&req.raw)).open(&req.config.name, false)? else {
        return Ok(());
    };
    let valid: HashSet<Owner> = req
        .config
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| Owner::new(a.container_id.clone(), a.ifname.clone()))
        .collect();
    allocator::gc(&store, &valid).map(|_| ())
}

/// The `plugnet-ipam` executable.
pub struct IpamPlugin;

impl Plugin for IpamPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add(req)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        check(req)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        status(req)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        gc(req)
    }
    fn known_args(&self) -> &'static [&'static str] {
        &["IP", KEEP_RESERVATION_ARG]
    }
}

fn validate_owner(owner: &Owner) -> Result<(), CniError> {
    validate::container_id(&owner.container_id)?;
    validate::interface_name(&owner.ifname).map_err(CniError::config)
}

fn lib_config(ipam_conf: &Value) -> Result<IpamConfig, CniError> {
    IpamConfig::from_request(&serde_json::json!({ "ipam": ipam_conf }), None)
}

/// Hold one address of a family for `owner` ahead of its ADD (Docker's IPAM asks for addresses
/// before the endpoint exists). `requested` picks a specific one.
pub fn reserve(
    ipam_conf: &Value,
    network: &str,
    owner: &Owner,
    requested: Option<IpAddr>,
    v6: bool,
) -> Result<IpNetwork, CniError> {
    validate_owner(owner)?;
    if let Some(c) = cluster_of(ipam_conf)? {
        return cluster::alloc::reserve(&c, network, owner, requested, v6);
    }
    let mut cfg = lib_config(ipam_conf)?;
    cfg.ranges
        .retain(|set| set.first().is_some_and(|r| r.subnet.is_ipv6() == v6));
    cfg.ranges.truncate(1);
    if cfg.ranges.is_empty() {
        return Err(CniError::config(format!(
            "no IPv{} range configured",
            if v6 { 6 } else { 4 }
        )));
    }
    let store = created(&Files(&cfg.data_dir), network)?;
    let requested: Vec<IpAddr> = requested.into_iter().collect();
    let got = allocator::allocate(&store, &cfg.ranges, owner, &requested, Hold::Reserved)?;
    Ok(got[0].address)
}

/// Move `from`'s addresses to `to`, which then holds them (and any it already held) as `hold`.
pub fn transfer(
    ipam_conf: &Value,
    network: &str,
    from: &Owner,
    to: &Owner,
    hold: Hold,
) -> Result<(), CniError> {
    validate_owner(from)?;
    validate_owner(to)?;
    if let Some(c) = cluster_of(ipam_conf)? {
        return match cluster::alloc::store(&c)? {
            Some(store) => allocator::transfer(&store, from, to, hold),
            None => Ok(()),
        };
    }
    let store = created(
        &Files(&data_dir_of(&serde_json::json!({ "ipam": ipam_conf }))),
        network,
    )?;
    allocator::transfer(&store, from, to, hold)
}

/// Release everything `owner` holds (idempotent).
pub fn release_owner(
    ipam_conf: &Value,
    network: &str,
    owner: &Owner,
) -> Result<Vec<IpAddr>, CniError> {
    validate_owner(owner)?;
    if let Some(c) = cluster_of(ipam_conf)? {
        return match cluster::alloc::store(&c)? {
            Some(store) => allocator::release(&store, owner),
            None => Ok(Vec::new()),
        };
    }
    match Files(&data_dir_of(&serde_json::json!({ "ipam": ipam_conf }))).open(network, false)? {
        Some(store) => allocator::release(&store, owner),
        None => Ok(Vec::new()),
    }
}

/// The cluster network an `ipam` object names (`"cluster"`), if any: the library entry points
/// below then work in that network's store on this host (the agent's blocks).
fn cluster_of(ipam_conf: &Value) -> Result<Option<cluster::alloc::ClusterRef>, CniError> {
    cluster::alloc::ClusterRef::of(&serde_json::json!({ "ipam": ipam_conf }))
}

/// Every record of the store an `ipam` object allocates in (a cluster network's on this host,
/// or `network`'s under its `dataDir`).
pub fn records_of(ipam_conf: &Value, network: &str) -> Result<Vec<Record>, CniError> {
    if let Some(c) = cluster_of(ipam_conf)? {
        return match cluster::alloc::store(&c)? {
            Some(store) => store
                .records()
                .map_err(|e| CniError::io(format!("ipam store: list records: {e}"))),
            None => Ok(Vec::new()),
        };
    }
    records(
        &data_dir_of(&serde_json::json!({ "ipam": ipam_conf })),
        network,
    )
}

/// Every record of a network's store (for listing and reconciliation).
pub fn records(data_dir: &Path, network: &str) -> Result<Vec<Record>, CniError> {
    match Files(data_dir).open(network, false)? {
        Some(store) => store
            .records()
            .map_err(|e| CniError::io(format!("ipam store: list records: {e}"))),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::tests::request;
    use crate::ipam::store::Store;
    use serde_json::json;

    fn conf(dir: &Path) -> Value {
        json!({"cniVersion": "1.0.0", "name": "pnd-net", "type": "plugnet",
               "ipam": {"type": "plugnet-ipam", "dataDir": dir,
                        "ranges": [[{"subnet": "10.77.0.0/24"}]]}})
    }

    #[test]
    fn a_deferred_add_holds_its_address_before_and_after_the_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let req = request(conf(tmp.path()), "");
        let (result, durable) = add_deferred(&req).unwrap();
        let ip = result.ips[0].address.ip();
        // Visible to everyone at once: the lock is already released.
        let store = Files(tmp.path()).open("pnd-net", false).unwrap().unwrap();
        assert_eq!(store.holder(ip).unwrap(), Some(owner_of(&req)));
        durable.wait().unwrap();
        // A second ADD of the same attachment is refused, as after a synchronous one.
        assert!(add(&req).is_err());
        del(&req).unwrap();
        assert_eq!(store.holder(ip).unwrap(), None);
    }

    #[test]
    fn a_failed_fsync_is_what_wait_reports() {
        let tmp = tempfile::tempdir().unwrap();
        // An allocation's directories, one of them gone before its fsync.
        let req = request(conf(tmp.path()), "");
        let cfg = IpamConfig::from_request(&req.raw, None).unwrap();
        let (_, store) = take(&Files(tmp.path()), &cfg, &req).unwrap();
        std::fs::remove_dir_all(tmp.path().join("pnd-net/owner")).unwrap();
        let err = Durable::start(store.sync_job()).wait().unwrap_err();
        assert!(err.msg.contains("ipam store: sync"), "{}", err.msg);
    }
}
