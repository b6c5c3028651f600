//! ADD, DEL, CHECK, STATUS and GC of plugnet-ipam for a cluster network: the same allocator
//! and files-with-lock store as a local network, over the blocks the agent wrote down.
//!
//! Invariant: the network file is read while the store's lock is held (the agent shrinks it
//! only under that lock), so an address is only ever taken in a block this host holds; waiting
//! for the agent happens with the lock released and ends within [`super::GROW_WAIT`].

use super::ask::{self, Request as Ask};
use super::local::{self, BlockState, NetworkFile};
use crate::error::{CniError, ErrorCode};
use crate::ipam::allocator::{self, GcReport};
use crate::ipam::store::{Claim, Damage, FileStore, Hold, Owner, Record, Store};
use crate::ipam::IpamConfig;
use crate::skel::Request;
use crate::types::{CniResult, Route};
use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `ipam.cluster` and `ipam.agentDir` of a configuration, if it names a cluster network.
pub struct ClusterRef {
    pub network: String,
    pub agent_dir: PathBuf,
}

impl ClusterRef {
    pub fn of(conf: &Value) -> Result<Option<ClusterRef>, CniError> {
        let Some(name) = conf.pointer("/ipam/cluster").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let name = name
            .as_str()
            .ok_or_else(|| CniError::config("ipam.cluster must be a string"))?;
        crate::validate::network_name(name)
            .map_err(|e| CniError::config(format!("ipam.cluster {name:?}: {}", e.msg)))?;
        let agent_dir = match conf.pointer("/ipam/agentDir") {
            None | Some(Value::Null) => PathBuf::from(local::DEFAULT_AGENT_DIR),
            Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
            Some(other) => {
                return Err(CniError::config(format!(
                    "ipam.agentDir must be an absolute path, got {other}"
                )))
            }
        };
        for key in ["ranges", "subnet", "dataDir"] {
            if conf.pointer(&format!("/ipam/{key}")).is_some() {
                return Err(CniError::config(format!(
                    "ipam.{key} has no meaning with ipam.cluster: the cluster network's blocks \
                     decide the addresses"
                )));
            }
        }
        Ok(Some(ClusterRef {
            network: name.to_string(),
            agent_dir,
        }))
    }

    fn store_dir(&self) -> PathBuf {
        local::store_dir(&self.agent_dir)
    }

    fn open(&self, create: bool) -> Result<Option<FileStore>, CniError> {
        FileStore::open(&self.store_dir(), &self.network, create).map_err(|e| {
            CniError::io(format!(
                "cluster network {}: store {}: {e}",
                self.network,
                self.store_dir().join(&self.network).display()
            ))
        })
    }

    fn read(&self) -> Result<Option<NetworkFile>, CniError> {
        NetworkFile::read(&self.agent_dir, &self.network)
            .map_err(|e| CniError::io(format!("cluster network {}: {e}", self.network)))
    }

    fn fail(&self, code: ErrorCode, why: impl std::fmt::Display) -> CniError {
        CniError::new(code, format!("cluster network {}: {why}", self.network))
    }
}

/// The store with its lock already held by the caller: the allocator's `lock` is a no-op.
struct Locked<'a>(&'a FileStore);

impl Store for Locked<'_> {
    type Guard = ();
    fn lock(&self) -> io::Result<()> {
        Ok(())
    }
    fn record(&self, owner: &Owner) -> io::Result<Option<Record>> {
        self.0.record(owner)
    }
    fn put_record(&self, record: &Record) -> io::Result<()> {
        self.0.put_record(record)
    }
    fn remove_record(&self, owner: &Owner) -> io::Result<()> {
        self.0.remove_record(owner)
    }
    fn claim_of(&self, ip: IpAddr) -> io::Result<Claim> {
        self.0.claim_of(ip)
    }
    fn claim(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool> {
        self.0.claim(ip, owner)
    }
    fn reassign(&self, ip: IpAddr, owner: &Owner) -> io::Result<()> {
        self.0.reassign(ip, owner)
    }
    fn unclaim(&self, ip: IpAddr) -> io::Result<()> {
        self.0.unclaim(ip)
    }
    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
        self.0.last_reserved(set)
    }
    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()> {
        self.0.set_last_reserved(set, ip)
    }
    fn records(&self) -> io::Result<Vec<Record>> {
        self.0.records()
    }
    fn claims(&self) -> io::Result<Vec<(IpAddr, Claim)>> {
        self.0.claims()
    }
    fn damage(&self) -> io::Result<Vec<Damage>> {
        self.0.damage()
    }
    fn host_local(&self) -> io::Result<Vec<(IpAddr, Claim)>> {
        self.0.host_local()
    }
    fn remove_host_local(&self, ip: IpAddr) -> io::Result<()> {
        self.0.remove_host_local(ip)
    }
    fn sweep(&self) -> io::Result<usize> {
        self.0.sweep()
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// One cluster network, one store per host, so one CNI network may use it here: the first ADD
/// binds it (`<agentDir>/bindings/<net>`); GC of another CNI network would otherwise release
/// this one's attachments.
fn bind(c: &ClusterRef, cni_network: &str) -> Result<(), CniError> {
    let path = local::binding(&c.agent_dir, &c.network);
    let bound = |p: &Path| {
        std::fs::read_link(p)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    };
    match bound(&path) {
        Some(n) if n == cni_network => return Ok(()),
        Some(n) => {
            return Err(c.fail(
                ErrorCode::InvalidConfig,
                format!(
                    "used on this host by CNI network {n:?}, not {cni_network:?} (one CNI network \
                     per cluster network and host; remove {} once {n:?} has no containers)",
                    path.display()
                ),
            ))
        }
        None => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| c.fail(ErrorCode::Io, format!("{}: {e}", dir.display())))?;
    }
    match std::os::unix::fs::symlink(cni_network, &path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match bound(&path) {
            Some(n) if n == cni_network => Ok(()),
            _ => bind(c, cni_network),
        },
        Err(e) => Err(c.fail(ErrorCode::Io, format!("bind {}: {e}", path.display()))),
    }
}

/// The families (4, 6) of the network's subnets that have no active block.
fn missing_families(f: &NetworkFile) -> Vec<u8> {
    let mut out = Vec::new();
    for (fam, v4) in [(4u8, true), (6u8, false)] {
        if f.subnets.iter().any(|s| s.is_ipv4() == v4) && !f.active().any(|b| b.is_ipv4() == v4) {
            out.push(fam);
        }
    }
    out
}

/// The local configuration an ADD allocates with: the active blocks as range sets (one per
/// family), the request's other ipam keys (routes, requested addresses) as they are.
fn config(req: &Request, f: &NetworkFile) -> Result<IpamConfig, CniError> {
    let mut conf = req.raw.clone();
    let ipam = conf
        .get_mut("ipam")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| CniError::config("IPAM config missing 'ipam' key"))?;
    ipam.remove("cluster");
    ipam.remove("agentDir");
    let set = |v4: bool| -> Vec<Value> {
        f.active()
            .filter(|b| b.is_ipv4() == v4)
            .map(|b| json!({"subnet": b.to_string()}))
            .collect()
    };
    let sets: Vec<Value> = [set(true), set(false)]
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(Value::Array)
        .collect();
    ipam.insert("ranges".into(), Value::Array(sets));
    let mut cfg = IpamConfig::from_request(&conf, req.args.get("IP"))?;
    // Every container reaches the whole cluster network through its block's gateway.
    for s in &f.subnets {
        if !cfg.routes.iter().any(|r| r.dst == *s) {
            cfg.routes.push(Route::to(*s));
        }
    }
    Ok(cfg)
}

/// ADD: addresses from this host's blocks, asking the agent for room when they are full.
pub fn take(c: &ClusterRef, req: &Request) -> Result<(CniResult, FileStore), CniError> {
    bind(c, &req.config.name)?;
    let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
    with_room(c, &[4, 6], |store, f| {
        let cfg = config(req, f)?;
        match allocator::allocate_unsynced(
            &Locked(store),
            &cfg.ranges,
            &owner,
            &cfg.requested,
            Hold::Attached,
        ) {
            Ok(ips) => Ok(Some(CniResult {
                interfaces: Vec::new(),
                ips,
                routes: cfg.routes,
                dns: cfg.dns,
            })),
            Err(e) if e.code == ErrorCode::NotAvailable && cfg.requested.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    })
}

/// Docker's reservation ahead of its ADD (plugnet-shim's IpamDriver): one address of one
/// family in this host's blocks, held as a reservation by `owner` in the same store CNI ADDs
/// allocate from; the ADD of the CNI network `cni_network` adopts it. Returns the address
/// with its block's prefix (the container's on-link network is its block, as for CNI).
pub fn reserve(
    c: &ClusterRef,
    cni_network: &str,
    owner: &Owner,
    requested: Option<IpAddr>,
    v6: bool,
) -> Result<IpNetwork, CniError> {
    bind(c, cni_network)?;
    let fam = if v6 { 6 } else { 4 };
    let requested: Vec<IpAddr> = requested.into_iter().collect();
    let (ip, store) = with_room(c, &[fam], |store, f| {
        let ranges: Vec<Vec<crate::ipam::config::Range>> = f
            .active()
            .filter(|b| b.is_ipv6() == v6)
            .map(|b| vec![super::block_range(b)])
            .collect();
        // One range set of the family, every active block a range of it.
        let set: Vec<_> = ranges.into_iter().flatten().collect();
        if let Some(ip) = requested.first() {
            if !set.iter().any(|r| r.subnet.contains(*ip)) {
                return Err(c.fail(
                    ErrorCode::InvalidConfig,
                    format!("{ip} is in no block this host holds"),
                ));
            }
        }
        match allocator::allocate_unsynced(
            &Locked(store),
            &[set],
            owner,
            &requested,
            Hold::Reserved,
        ) {
            Ok(ips) => Ok(ips.into_iter().next().map(|i| i.address)),
            Err(e) if e.code == ErrorCode::NotAvailable && requested.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    })?;
    store.sync().map_err(allocator::store_err("sync"))?;
    Ok(ip)
}

/// The subnets of the cluster network and this host's first active block of a family, asking
/// the agent to serve the network here (and claim a block) when it does not yet: what
/// plugnet-shim's RequestPool answers Docker.
pub fn host_view(c: &ClusterRef, v6: bool) -> Result<(Vec<IpNetwork>, IpNetwork), CniError> {
    let fam = if v6 { 6 } else { 4 };
    let (view, _) = with_room(c, &[fam], |_, f| {
        Ok(f.active()
            .find(|b| b.is_ipv6() == v6)
            .map(|b| (f.subnets.clone(), b)))
    })?;
    Ok(view)
}

/// Run `attempt` under the store's lock over the network file while this host holds blocks
/// of every family in `families`; when it finds no room (`Ok(None)`) or a family has no block,
/// ask the agent for one and try again, for at most [`super::GROW_WAIT`].
fn with_room<T>(
    c: &ClusterRef,
    families: &[u8],
    mut attempt: impl FnMut(&FileStore, &NetworkFile) -> Result<Option<T>, CniError>,
) -> Result<(T, FileStore), CniError> {
    let start = Instant::now();
    let mut asked = 0;
    loop {
        let store = c.open(true)?.expect("created");
        let need: Vec<u8> = {
            let guard = store
                .lock()
                .map_err(|e| c.fail(ErrorCode::Io, format!("lock the store: {e}")))?;
            match c.read()? {
                None => families.to_vec(),
                Some(f) if f.removed => {
                    return Err(c.fail(
                        ErrorCode::NotAvailable,
                        "removed from the cluster (plugnet cluster network ls)",
                    ))
                }
                Some(f) if f.alloc_until.remaining_ms() == 0 => {
                    return Err(c.fail(
                        ErrorCode::TryAgain,
                        format!(
                            "no new addresses: this host has been out of reach of etcd since {} \
                             (unix), past the network's grace period, so other hosts may take its \
                             blocks; they are handed out again once plugnet-agent reaches etcd",
                            f.etcd.last_contact_unix
                        ),
                    ))
                }
                Some(f) => {
                    let missing: Vec<u8> = missing_families(&f)
                        .into_iter()
                        .filter(|m| families.contains(m))
                        .collect();
                    if !missing.is_empty() {
                        missing
                    } else {
                        match attempt(&store, &f)? {
                            Some(v) => {
                                drop(guard);
                                return Ok((v, store));
                            }
                            None => families.to_vec(),
                        }
                    }
                }
            }
        };
        let left = super::GROW_WAIT.saturating_sub(start.elapsed());
        if asked >= 3 || left.is_zero() {
            return Err(c.fail(
                ErrorCode::TryAgain,
                format!(
                    "no free address in this host's blocks after {:?}",
                    start.elapsed()
                ),
            ));
        }
        asked += 1;
        let ask = Ask::Grow {
            network: c.network.clone(),
            families: need,
        };
        match ask::ask(&c.agent_dir, &ask, left) {
            Ok(a) if a.ok => continue,
            Ok(a) => {
                return Err(c.fail(
                    ErrorCode::TryAgain,
                    format!(
                        "no free address in this host's blocks: {}",
                        a.error.unwrap_or_default()
                    ),
                ))
            }
            Err(e) => {
                return Err(c.fail(
                    ErrorCode::TryAgain,
                    format!("no free address in this host's blocks, and {e}"),
                ))
            }
        }
    }
}

/// DEL: release the attachment's addresses in the local store (etcd is never asked), or with
/// `keep`, hold them again as a reservation (a Docker endpoint's, until DeleteEndpoint).
pub fn del(c: &ClusterRef, req: &Request, keep: bool) -> Result<(), CniError> {
    let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
    match c.open(false)? {
        Some(store) if keep => allocator::keep_as_reservation(&store, &owner).map(drop),
        Some(store) => allocator::release(&store, &owner).map(drop),
        None => Ok(()),
    }
}

/// The store of the cluster network on this host (`None` before its first allocation).
pub fn store(c: &ClusterRef) -> Result<Option<FileStore>, CniError> {
    c.open(false)
}

/// CHECK: the attachment holds its addresses, in blocks this host still holds.
pub fn check(c: &ClusterRef, req: &Request) -> Result<(), CniError> {
    let store = c.open(false)?.ok_or_else(|| {
        CniError::internal(format!(
            "plugnet-ipam: failed to find address added by container {}",
            req.container_id
        ))
    })?;
    let record = allocator::check(
        &store,
        &Owner::new(req.container_id.clone(), req.ifname.clone()),
    )?;
    let f = c.read()?;
    for ip in &record.ips {
        let held = f
            .as_ref()
            .and_then(|f| f.blocks.iter().find(|b| b.cidr.contains(*ip)));
        match held.map(|b| b.state) {
            Some(BlockState::Active | BlockState::Releasing) => {}
            Some(BlockState::Revoked) => {
                return Err(c.fail(
                    ErrorCode::Internal,
                    format!(
                        "{ip} is in a block another host took over while this host was cut off: \
                         the address may be in use there; delete and add this container again"
                    ),
                ))
            }
            None => {
                return Err(c.fail(
                    ErrorCode::Internal,
                    format!("{ip} is in no block this host holds"),
                ))
            }
        }
    }
    Ok(())
}

/// STATUS, as the spec reads: 0 while ADD can be served (even with etcd out of reach, from
/// held blocks), 50 when it cannot, 51 when containers here sit in revoked blocks.
pub fn status(c: &ClusterRef) -> Result<(), CniError> {
    let Some(f) = c.read()? else {
        // Not served here yet: the first ADD asks the agent, which must be there.
        return ask::ask(
            &c.agent_dir,
            &Ask::Status,
            std::time::Duration::from_secs(1),
        )
        .map(drop)
        .map_err(|e| c.fail(ErrorCode::NotAvailable, e));
    };
    if f.removed {
        return Err(c.fail(ErrorCode::NotAvailable, "removed from the cluster"));
    }
    let store = c.open(false)?;
    let claimed: HashSet<IpAddr> = match &store {
        Some(s) => s
            .claims()
            .map_err(|e| c.fail(ErrorCode::Io, e))?
            .into_iter()
            .map(|(ip, _)| ip)
            .collect(),
        None => HashSet::new(),
    };
    let revoked: Vec<IpNetwork> = f
        .blocks
        .iter()
        .filter(|b| b.state == BlockState::Revoked)
        .map(|b| b.cidr)
        .collect();
    let in_revoked = claimed
        .iter()
        .filter(|ip| revoked.iter().any(|b| b.contains(**ip)))
        .count();
    if in_revoked > 0 {
        return Err(c.fail(
            ErrorCode::LimitedConnectivity,
            format!("{in_revoked} container address(es) sit in blocks another host took over (plugnet cluster status)"),
        ));
    }
    if f.alloc_until.remaining_ms() == 0 {
        return Err(c.fail(
            ErrorCode::NotAvailable,
            "fenced: out of reach of etcd past the grace period",
        ));
    }
    // Every ADD takes an address of each family: one family full is full.
    let free = |v4: bool| {
        f.active()
            .filter(|b| b.is_ipv4() == v4)
            .map(|b| {
                let used = claimed.iter().filter(|ip| b.contains(**ip)).count() as u128;
                super::block_range(b).size().saturating_sub(used)
            })
            .sum::<u128>()
    };
    let full = [true, false]
        .into_iter()
        .any(|v4| f.subnets.iter().any(|s| s.is_ipv4() == v4) && free(v4) == 0);
    if !f.etcd.reachable && full {
        return Err(c.fail(
            ErrorCode::NotAvailable,
            "degraded: etcd out of reach and this host's blocks are full",
        ));
    }
    Ok(())
}

/// GC: release attachments of the bound CNI network that are not valid.
pub fn gc(c: &ClusterRef, req: &Request) -> Result<GcReport, CniError> {
    let path = local::binding(&c.agent_dir, &c.network);
    if let Ok(bound) = std::fs::read_link(&path) {
        if bound.to_string_lossy() != req.config.name {
            // Another CNI network's attachments: not ours to judge.
            return Ok(GcReport::default());
        }
    }
    let Some(store) = c.open(false)? else {
        return Ok(GcReport::default());
    };
    let valid: HashSet<Owner> = req
        .config
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| Owner::new(a.container_id.clone(), a.ifname.clone()))
        .collect();
    allocator::gc(&store, &valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::tests::request;
    use crate::ipam::cluster::local::{Deadline, EtcdView, HeldBlock, FORMAT};

    fn file(blocks: &[(&str, BlockState)], until: Deadline) -> NetworkFile {
        NetworkFile {
            format: FORMAT.into(),
            network: "pnc-n".into(),
            host: "h".into(),
            subnets: vec![
                "10.77.0.0/16".parse().unwrap(),
                "fd77::/64".parse().unwrap(),
            ],
            blocks: blocks
                .iter()
                .map(|(c, s)| HeldBlock {
                    cidr: c.parse().unwrap(),
                    state: *s,
                })
                .collect(),
            alloc_until: until,
            etcd: EtcdView {
                reachable: true,
                last_contact_unix: 1,
            },
            removed: false,
            definition: Value::Null,
            mtu: None,
        }
    }

    fn conf(dir: &Path) -> Value {
        json!({"cniVersion": "1.1.0", "name": "pnc-cni", "type": "plugnet",
               "ipam": {"type": "plugnet-ipam", "cluster": "pnc-n", "agentDir": dir}})
    }

    #[test]
    fn cluster_keys_are_checked() {
        assert!(ClusterRef::of(&json!({"ipam": {"type": "plugnet-ipam"}}))
            .unwrap()
            .is_none());
        let c = ClusterRef::of(&json!({"ipam": {"cluster": "prod"}}))
            .unwrap()
            .unwrap();
        assert_eq!(c.agent_dir, PathBuf::from(local::DEFAULT_AGENT_DIR));
        for (ipam, needle) in [
            (json!({"cluster": 5}), "must be a string"),
            (json!({"cluster": "../x"}), "ipam.cluster"),
            (json!({"cluster": "p", "agentDir": "rel"}), "absolute"),
            (
                json!({"cluster": "p", "ranges": [[{"subnet": "10.0.0.0/24"}]]}),
                "no meaning",
            ),
        ] {
            let e = ClusterRef::of(&json!({ "ipam": ipam })).err().unwrap();
            assert!(e.msg.contains(needle), "{ipam}: {e}");
        }
    }

    #[test]
    fn allocates_only_in_active_blocks_and_binds_one_cni_network() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("networks")).unwrap();
        let alive = Deadline::after(std::time::Duration::from_secs(60));
        file(
            &[
                ("10.77.0.0/26", BlockState::Revoked),
                ("10.77.0.64/26", BlockState::Active),
                ("10.77.0.128/26", BlockState::Releasing),
                ("fd77::/122", BlockState::Active),
            ],
            alive,
        )
        .write(tmp.path())
        .unwrap();
        let req = request(conf(tmp.path()), "");
        let c = ClusterRef::of(&req.raw).unwrap().unwrap();
        let (r, _) = take(&c, &req).unwrap();
        let got: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(got, ["10.77.0.66/26", "fd77::2/122"]);
        assert_eq!(r.ips[0].gateway, Some("10.77.0.65".parse().unwrap()));
        assert!(r.routes.iter().any(|x| x.dst.to_string() == "10.77.0.0/16"));
        check(&c, &req).unwrap();
        // Another CNI network on the same cluster network and host is refused.
        let mut other = conf(tmp.path());
        other["name"] = json!("pnc-other");
        let e = take(&c, &request(other, "")).err().unwrap();
        assert!(e.msg.contains("used on this host by CNI network"), "{e}");
        // CHECK fails once the block is revoked; STATUS says 51.
        file(
            &[
                ("10.77.0.64/26", BlockState::Revoked),
                ("fd77::/122", BlockState::Active),
            ],
            alive,
        )
        .write(tmp.path())
        .unwrap();
        assert!(check(&c, &req).unwrap_err().msg.contains("took over"));
        assert_eq!(status(&c).unwrap_err().code, ErrorCode::LimitedConnectivity);
        del(&c, &req, false).unwrap();
        del(&c, &req, false).unwrap();
        assert_eq!(status(&c).map_err(|e| e.msg), Ok(()));
    }

    #[test]
    fn docker_reservations_live_in_the_blocks_and_the_add_adopts_them() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("networks")).unwrap();
        let alive = Deadline::after(std::time::Duration::from_secs(60));
        file(
            &[
                ("10.77.0.64/26", BlockState::Active),
                ("fd77::/122", BlockState::Active),
            ],
            alive,
        )
        .write(tmp.path())
        .unwrap();
        let ipam = json!({"type": "plugnet-ipam", "cluster": "pnc-n", "agentDir": tmp.path()});
        let c = ClusterRef::of(&json!({ "ipam": ipam })).unwrap().unwrap();
        // What the shim's RequestPool answers: the subnets and this host's block.
        let (subnets, block) = host_view(&c, false).unwrap();
        assert_eq!(subnets.len(), 2);
        assert_eq!(block.to_string(), "10.77.0.64/26");
        // RequestAddress: a reservation with the block's prefix, never the gateway.
        let placeholder = Owner::new("docker-1", "reserved");
        let got = crate::ipam::reserve(&ipam, "pnc-cni", &placeholder, None, false).unwrap();
        assert_eq!(got.to_string(), "10.77.0.66/26");
        // An address in no block of this host is refused.
        let e = crate::ipam::reserve(
            &ipam,
            "pnc-cni",
            &Owner::new("docker-2", "reserved"),
            Some("10.77.1.5".parse().unwrap()),
            false,
        )
        .unwrap_err();
        assert!(e.msg.contains("in no block this host holds"), "{e}");
        // CreateEndpoint hands it to the attachment; the ADD (told the address) adopts it.
        let req = request(conf(tmp.path()), "IP=10.77.0.66");
        let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
        crate::ipam::transfer(&ipam, "pnc-cni", &placeholder, &owner, Hold::Reserved).unwrap();
        let (r, _) = take(&c, &req).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.77.0.66/26");
        // A DEL that keeps the reservation (a failed Join's rollback) holds it again.
        del(&c, &req, true).unwrap();
        let recs = crate::ipam::records_of(&ipam, "pnc-cni").unwrap();
        assert!(
            recs.iter()
                .any(|r| r.owner == owner && r.hold == Hold::Reserved),
            "{recs:?}"
        );
        crate::ipam::release_owner(&ipam, "pnc-cni", &owner).unwrap();
        assert!(crate::ipam::records_of(&ipam, "pnc-cni")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn past_the_deadline_nothing_new_is_handed_out() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("networks")).unwrap();
        file(
            &[
                ("10.77.0.0/26", BlockState::Active),
                ("fd77::/122", BlockState::Active),
            ],
            Deadline::PAST,
        )
        .write(tmp.path())
        .unwrap();
        let req = request(conf(tmp.path()), "");
        let c = ClusterRef::of(&req.raw).unwrap().unwrap();
        let e = take(&c, &req).err().unwrap();
        assert_eq!(e.code, ErrorCode::TryAgain);
        assert!(e.msg.contains("out of reach of etcd"), "{e}");
        assert_eq!(status(&c).unwrap_err().code, ErrorCode::NotAvailable);
    }

    #[test]
    fn no_agent_fails_fast_and_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        let req = request(conf(tmp.path()), "");
        let c = ClusterRef::of(&req.raw).unwrap().unwrap();
        let t = Instant::now();
        let e = take(&c, &req).err().unwrap();
        assert!(t.elapsed() < super::super::GROW_WAIT);
        assert!(
            e.msg.contains("pnc-n") && e.msg.contains("not running"),
            "{e}"
        );
    }
}
