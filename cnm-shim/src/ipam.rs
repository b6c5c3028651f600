//! The IpamDriver: Docker pools and addresses backed by the same store CNI ADD allocates from.
//!
//! Invariant: an address Docker holds is reserved in the CNI network's IPAM store under a
//! placeholder owner until CreateEndpoint hands it to the endpoint's attachment owner, so a
//! concurrent CNI runtime (podman) on the same network can never be given it, and the CNI ADD
//! adopts exactly the address Docker chose. Identical explicit pool requests share one pool
//! (reference counted); automatic requests always get a pool no held pool overlaps (trap 26).

use crate::api::*;
use crate::backend::{CniBackend, Holder, PoolCtx};
use crate::driver::{Driver, OPT_CLUSTER, OPT_CNI_NETWORK, OPT_NAME};
use crate::state::{valid_id, AddrKind, Kind, PoolRecord, State};
use crate::translate::{self, pool_name, Range};
use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::IpNetwork;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use tracing::{info, warn};

/// Option Docker puts on endpoint address requests.
const ENDPOINT_NAME_OPTION: &str = "com.docker.network.endpoint.name";

impl<B: CniBackend> Driver<B> {
    pub fn ipam_capabilities(&self) -> IpamCapabilities {
        IpamCapabilities {
            requires_mac_address: false,
            requires_request_replay: false,
        }
    }

    pub fn address_spaces(&self) -> AddressSpaces {
        AddressSpaces {
            local: "plugnet-local".into(),
            global: "plugnet-global".into(),
        }
    }

    /// The store context of a pool: which CNI network and `ipam` object it allocates in.
    pub(crate) fn pool_ctx(&self, p: &PoolRecord) -> PoolCtx {
        if let Some(cluster) = &p.cluster {
            return PoolCtx {
                cni_network: p.cni_network.clone(),
                ipam: self.cluster_ipam(cluster),
                range: Range {
                    subnet: p.pool,
                    gateway: p.gateway,
                    start: None,
                    end: None,
                },
                last: p.last,
            };
        }
        if p.from_conflist.is_some() {
            let range = translate::ipam_ranges(&p.conflist_ipam)
                .ok()
                .and_then(|rs| rs.into_iter().find(|r| r.subnet == p.pool))
                .unwrap_or(Range {
                    subnet: p.pool,
                    gateway: p.gateway,
                    start: None,
                    end: None,
                });
            // host-local's implicit gateway (the first address) is never handed out either.
            let range = Range {
                gateway: range.gateway.or(p.gateway),
                ..range
            };
            return PoolCtx {
                cni_network: p.cni_network.clone(),
                ipam: p.conflist_ipam.clone(),
                range,
                last: p.last,
            };
        }
        let range = Range {
            subnet: p.pool,
            gateway: p.gateway,
            start: None,
            end: None,
        }
        .with_sub_pool(p.sub_pool);
        let mut ipam = json!({"type": "plugnet-ipam", "ranges": [[range.to_json()]]});
        if let Some(d) = &self.cfg.ipam_data_dir {
            ipam["dataDir"] = json!(d);
        }
        PoolCtx {
            cni_network: p.cni_network.clone(),
            ipam,
            range,
            last: p.last,
        }
    }

    /// The `ipam` object of a cluster network's conflist (and of its pools' store calls).
    pub(crate) fn cluster_ipam(&self, cluster: &str) -> serde_json::Value {
        let mut ipam = json!({"type": "plugnet-ipam", "cluster": cluster});
        if let Some(d) = &self.cfg.agent_dir {
            ipam["agentDir"] = json!(d);
        }
        ipam
    }

    pub fn request_pool(&self, req: RequestPoolRequest) -> Result<RequestPoolResponse> {
        if req.pool.is_empty() && !req.sub_pool.is_empty() {
            bail!("a sub-pool ({}) needs an explicit pool", req.sub_pool);
        }
        let parse = |s: &str, what: &str| -> Result<Option<IpNetwork>> {
            if s.is_empty() {
                return Ok(None);
            }
            let n: IpNetwork = s.parse().with_context(|| format!("{what} {s:?}"))?;
            if n.ip() != n.network() {
                bail!(
                    "{what} {s} has host bits set (use {}/{})",
                    n.network(),
                    n.prefix()
                );
            }
            if n.is_ipv6() != req.v6 {
                bail!(
                    "{what} {s} is not an IPv{} network",
                    if req.v6 { 6 } else { 4 }
                );
            }
            Ok(Some(n))
        };
        let want = parse(&req.pool, "pool")?;
        let sub = parse(&req.sub_pool, "sub-pool")?;
        if let (Some(p), Some(s)) = (want, sub) {
            if !p.contains(s.network()) || s.prefix() < p.prefix() {
                bail!("sub-pool {s} is not inside pool {p}");
            }
        }
        let mut st = self.lock();
        let mut rec = if let Some(cluster) = req.options.get(OPT_CLUSTER) {
            if req.options.contains_key(OPT_CNI_NETWORK) {
                bail!("{OPT_CLUSTER} and {OPT_CNI_NETWORK} exclude each other");
            }
            if sub.is_some() {
                bail!("a cluster network's pool has no sub-pool (--ip-range): its blocks decide");
            }
            if !valid_id(cluster) {
                bail!("{OPT_CLUSTER} {cluster:?} is not a valid cluster network name");
            }
            // Outside the state lock: this may wait for the agent (at most 2 s).
            drop(st);
            let (subnets, block) = self
                .backend
                .cluster_view(&self.cluster_ipam(cluster), req.v6)
                .with_context(|| format!("cluster network {cluster} on this host"))?;
            st = self.lock();
            let pool = subnets
                .iter()
                .copied()
                .find(|s| s.is_ipv6() == req.v6 && want.is_none_or(|w| w == *s))
                .ok_or_else(|| {
                    anyhow!(
                        "cluster network {cluster} has no IPv{} subnet{} (its subnets: {})",
                        if req.v6 { 6 } else { 4 },
                        want.map(|w| format!(" equal to {w}")).unwrap_or_default(),
                        subnets
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let cni_network = cni_network_option(&req.options, || format!("pn-cluster-{cluster}"))?;
            PoolRecord {
                id: format!("{cni_network}.{}", pool_name(&pool)),
                pool,
                sub_pool: None,
                v6: req.v6,
                refs: 0,
                // The gateway Docker records for the network: this host's first block's
                // (containers get their own block's in the Join reply).
                gateway: Some(translate::usable_bounds(&block).0),
                cni_network,
                from_conflist: None,
                conflist_ipam: serde_json::Value::Null,
                addresses: BTreeMap::new(),
                owners: BTreeMap::new(),
                endpoint_of: BTreeMap::new(),
                last: None,
                cluster: Some(cluster.clone()),
                cluster_subnets: subnets.clone(),
            }
        } else if let Some(name) = req.options.get(OPT_CNI_NETWORK) {
            let conflist = self.backend.load_conflist(name)?;
            let cni_name = conflist["name"].as_str().unwrap_or(name).to_string();
            let ipam = translate::conflist_ipam(&conflist)
                .cloned()
                .ok_or_else(|| {
                    anyhow!("CNI network {name:?} has no ipam section to take a pool from")
                })?;
            let range = translate::ipam_ranges(&ipam)?
                .into_iter()
                .find(|r| r.subnet.is_ipv6() == req.v6 && want.is_none_or(|w| w == r.subnet))
                .ok_or_else(|| {
                    anyhow!(
                        "CNI network {name:?} has no IPv{} range{}",
                        if req.v6 { 6 } else { 4 },
                        want.map(|w| format!(" equal to {w}")).unwrap_or_default()
                    )
                })?;
            let gateway = range
                .gateway
                .unwrap_or_else(|| translate::usable_bounds(&range.subnet).0);
            PoolRecord {
                id: format!("{cni_name}.{}", pool_name(&range.subnet)),
                pool: range.subnet,
                sub_pool: sub,
                v6: req.v6,
                refs: 0,
                gateway: Some(gateway),
                cni_network: cni_name,
                from_conflist: Some(name.clone()),
                conflist_ipam: ipam,
                addresses: BTreeMap::new(),
                owners: BTreeMap::new(),
                endpoint_of: BTreeMap::new(),
                last: None,
                cluster: None,
                cluster_subnets: Vec::new(),
            }
        } else {
            let pool = match want {
                Some(p) => p,
                None => {
                    let held: Vec<IpNetwork> = st.pools.values().map(|p| p.pool).collect();
                    let (defaults, prefix) = if req.v6 {
                        (&self.cfg.default_pools_v6, self.cfg.pool_prefix_v6)
                    } else {
                        (&self.cfg.default_pools_v4, self.cfg.pool_prefix_v4)
                    };
                    translate::pick_pool(defaults, prefix, &held).ok_or_else(|| {
                        anyhow!("no free /{prefix} left in the default address pools")
                    })?
                }
            };
            let mut id = pool_name(&pool);
            if let Some(s) = sub {
                let sub_name = pool_name(&s);
                id = format!("{id}-{}", sub_name.strip_prefix("pn-").unwrap_or(&sub_name));
            }
            let cni_network = cni_network_option(&req.options, || pool_name(&pool))?;
            PoolRecord {
                id,
                pool,
                sub_pool: sub,
                v6: req.v6,
                refs: 0,
                gateway: None,
                cni_network,
                from_conflist: None,
                conflist_ipam: serde_json::Value::Null,
                addresses: BTreeMap::new(),
                owners: BTreeMap::new(),
                endpoint_of: BTreeMap::new(),
                last: None,
                cluster: None,
                cluster_subnets: Vec::new(),
            }
        };
        if let Some(existing) = st.pools.get(&rec.id) {
            // dockerd re-requests an empty-`Pool` request while the pool it got overlaps a host
            // route (the conflist's bridge already exists), holding the earlier ones. A conflist
            // pool cannot change: stop that loop with an error that says what to do (trap 26).
            let pending = !st.networks.values().any(|n| {
                n.subnets
                    .iter()
                    .any(|s| s.pool_id.as_deref() == Some(&existing.id))
            });
            if want.is_none() && existing.from_conflist.is_some() && existing.refs > 0 && pending {
                bail!(
                    "pool {} of CNI network {:?} overlaps a route of this host (its bridge exists); \
                     add --subnet {} so Docker skips its overlap check",
                    existing.pool,
                    existing.cni_network,
                    existing.pool
                );
            }
            if want.is_none() && existing.cluster.is_some() && existing.refs > 0 && pending {
                bail!(
                    "cluster network {} ({}) overlaps routes of this host (to other hosts' blocks, \
                     or its own bridge); add --subnet {} so Docker skips its overlap check",
                    existing.cluster.as_deref().unwrap_or_default(),
                    existing.pool,
                    existing.pool
                );
            }
            rec = existing.clone();
        } else if let Some(o) = st
            .pools
            .values()
            .find(|p| translate::overlaps(&p.pool, &rec.pool))
        {
            bail!(
                "pool {} overlaps pool {} already held by this driver",
                rec.pool,
                o.pool
            );
        }
        rec.refs += 1;
        self.store
            .put(Kind::Pool, &rec.id, &rec)
            .context("persist pool")?;
        let mut data = BTreeMap::new();
        if rec.from_conflist.is_some() || rec.cluster.is_some() {
            if let Some(g) = rec.gateway {
                data.insert(
                    GATEWAY_OPTION.to_string(),
                    format!("{g}/{}", rec.pool.prefix()),
                );
            }
        }
        info!(pool = %rec.pool, id = %rec.id, refs = rec.refs, "pool requested");
        let resp = RequestPoolResponse {
            pool_id: rec.id.clone(),
            pool: rec.pool.to_string(),
            data,
        };
        st.pools.insert(rec.id.clone(), rec);
        Ok(resp)
    }

    pub fn release_pool(&self, req: ReleasePoolRequest) -> Result<Empty> {
        let mut st = self.lock();
        let Some(mut rec) = st.pools.get(&req.pool_id).cloned() else {
            return Ok(Empty {});
        };
        rec.refs = rec.refs.saturating_sub(1);
        if rec.refs > 0 {
            self.store
                .put(Kind::Pool, &rec.id, &rec)
                .context("persist pool")?;
            st.pools.insert(rec.id.clone(), rec);
            return Ok(Empty {});
        }
        let ctx = self.pool_ctx(&rec);
        for owner in rec.owners.values() {
            if let Err(e) = self.backend.ipam_release(&ctx, &placeholder(owner)) {
                warn!("release {owner} in {}: {e:#}", ctx.cni_network);
            }
        }
        for ep in rec.endpoint_of.values() {
            if !st.endpoints.contains_key(ep) {
                let _ = self.backend.ipam_release(&ctx, &Holder::endpoint(ep));
            }
        }
        match self.backend.ipam_release_reserved(&ctx) {
            Ok(0) => {}
            Ok(n) => {
                info!(pool = %rec.pool, "released {n} reservation(s) whose ReleaseAddress never came")
            }
            Err(e) => warn!(
                "release leftover reservations in {}: {e:#}",
                ctx.cni_network
            ),
        }
        self.store
            .delete(Kind::Pool, &rec.id)
            .context("remove pool state")?;
        st.pools.remove(&rec.id);
        info!(pool = %rec.pool, "pool released");
        Ok(Empty {})
    }

    pub fn request_address(&self, req: RequestAddressRequest) -> Result<RequestAddressResponse> {
        let mut st = self.lock();
        let mut rec = st
            .pools
            .get(&req.pool_id)
            .cloned()
            .ok_or_else(|| anyhow!("unknown pool {:?}", req.pool_id))?;
        let requested: Option<IpAddr> = match req.address.as_str() {
            "" => None,
            a => Some(
                a.parse()
                    .with_context(|| format!("requested address {a:?}"))?,
            ),
        };
        if let Some(ip) = requested {
            if !rec.pool.contains(ip) {
                bail!("requested address {ip} is outside pool {}", rec.pool);
            }
            if rec.pool.is_ipv4()
                && rec.pool.prefix() < 31
                && (ip == rec.pool.network() || ip == rec.pool.broadcast())
            {
                bail!(
                    "requested address {ip} is the network or broadcast address of {}",
                    rec.pool
                );
            }
        }
        let cidr = |ip: IpAddr| format!("{ip}/{}", rec.pool.prefix());
        // A routed network's endpoints carry a host address (/32, /128), exactly as plugnet's
        // routed mode configures CNI containers: Docker puts the reply's prefix on the
        // interface, and with the pool's prefix it would treat the pool as on-link.
        let routed = st
            .networks
            .values()
            .any(|n| n.cni_name == rec.cni_network && translate::conflist_is_routed(&n.conflist));
        let endpoint_cidr = |ip: IpAddr| {
            if routed {
                format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
            } else {
                cidr(ip)
            }
        };
        if req.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_OPTION) {
            let gw = match (requested, rec.gateway, rec.from_conflist.is_some()) {
                (Some(r), Some(g), true) if r != g => {
                    bail!("gateway {r} differs from the CNI network's gateway {g}")
                }
                (Some(r), Some(g), _) if r != g && rec.cluster.is_some() => {
                    bail!(
                        "gateway {r}: a cluster network's gateways are its blocks' first \
                         addresses (this host's: {g}); create it without --gateway"
                    )
                }
                (Some(r), _, _) => r,
                (None, Some(g), _) => g,
                (None, None, _) => translate::usable_bounds(&rec.pool).0,
            };
            if rec
                .addresses
                .get(&gw)
                .is_some_and(|k| *k != AddrKind::Gateway)
            {
                bail!("gateway {gw} is already in use");
            }
            rec.gateway = Some(gw);
            rec.addresses.insert(gw, AddrKind::Gateway);
            self.store
                .put(Kind::Pool, &rec.id, &rec)
                .context("persist pool")?;
            let resp = RequestAddressResponse {
                address: cidr(gw),
                data: BTreeMap::new(),
            };
            st.pools.insert(rec.id.clone(), rec);
            return Ok(resp);
        }
        if let Some(ip) = requested {
            if Some(ip) == rec.gateway {
                bail!("requested address {ip} is the gateway of {}", rec.pool);
            }
            if rec.addresses.contains_key(&ip) {
                bail!("requested address {ip} is already in use");
            }
        }
        let kind = if req.options.contains_key(ENDPOINT_NAME_OPTION) || requested.is_none() {
            AddrKind::Endpoint
        } else {
            AddrKind::Aux
        };
        let ctx = self.pool_ctx(&rec);
        let in_range = requested.is_none_or(|ip| in_bounds(&ctx.range, ip));
        let owner = format!(
            "docker-{:x}-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        // A cluster pool's address carries its block's prefix: the container's on-link network
        // is its block, as for CNI containers; the rest of the cluster is behind the gateway.
        let mut block_prefix = None;
        let ip = if in_range {
            let held = |ip: IpAddr| rec.addresses.contains_key(&ip);
            let got = self
                .backend
                .ipam_reserve(&ctx, &placeholder(&owner), requested, &held)
                .with_context(|| format!("reserve address in {}", ctx.cni_network))?;
            if rec.cluster.is_some() {
                block_prefix = Some(got.prefix());
            }
            got.ip()
        } else {
            // An aux address outside the allocatable range: the store never hands it out.
            requested.expect("out of range implies requested")
        };
        rec.addresses.insert(ip, kind);
        if in_range {
            rec.owners.insert(ip, owner.clone());
        }
        rec.last = Some(ip);
        if let Err(e) = self.store.put(Kind::Pool, &rec.id, &rec) {
            if in_range {
                let _ = self.backend.ipam_release(&ctx, &placeholder(&owner));
            }
            return Err(e).context("persist pool");
        }
        let resp = RequestAddressResponse {
            address: match block_prefix {
                Some(p) if !routed => format!("{ip}/{p}"),
                _ => endpoint_cidr(ip),
            },
            data: BTreeMap::new(),
        };
        st.pools.insert(rec.id.clone(), rec);
        Ok(resp)
    }

    pub fn release_address(&self, req: ReleaseAddressRequest) -> Result<Empty> {
        let ip: IpAddr = req
            .address
            .parse()
            .with_context(|| format!("address {:?}", req.address))?;
        let mut st = self.lock();
        let Some(mut rec) = st.pools.get(&req.pool_id).cloned() else {
            return Ok(Empty {});
        };
        let ctx = self.pool_ctx(&rec);
        let mut changed = rec.addresses.remove(&ip).is_some();
        if let Some(owner) = rec.owners.remove(&ip) {
            self.backend
                .ipam_release(&ctx, &placeholder(&owner))
                .with_context(|| format!("release {ip} in {}", ctx.cni_network))?;
            changed = true;
        }
        if let Some(ep) = rec.endpoint_of.remove(&ip) {
            if !st.endpoints.contains_key(&ep) {
                self.backend.ipam_release(&ctx, &Holder::endpoint(&ep))?;
            }
            changed = true;
        }
        if changed {
            self.store
                .put(Kind::Pool, &rec.id, &rec)
                .context("persist pool")?;
            st.pools.insert(rec.id.clone(), rec);
        }
        Ok(Empty {})
    }

    /// Move a pool's placeholder reservations into the store of `cni_name` (a dual-stack
    /// network's second pool joins the first pool's CNI network).
    pub(crate) fn rehome_pool(&self, st: &mut State, pid: &str, cni_name: &str) -> Result<()> {
        let Some(mut rec) = st.pools.get(pid).cloned() else {
            return Ok(());
        };
        if rec.cni_network == cni_name || rec.from_conflist.is_some() {
            return Ok(());
        }
        let old = self.pool_ctx(&rec);
        let mut new_rec = rec.clone();
        new_rec.cni_network = cni_name.to_string();
        let new = self.pool_ctx(&new_rec);
        for (ip, owner) in &rec.owners {
            let h = placeholder(owner);
            self.backend.ipam_reserve(&new, &h, Some(*ip), &|_| false)?;
            let _ = self.backend.ipam_release(&old, &h);
        }
        rec.cni_network = cni_name.to_string();
        self.store
            .put(Kind::Pool, &rec.id, &rec)
            .context("persist pool")?;
        st.pools.insert(rec.id.clone(), rec);
        Ok(())
    }
}

/// The CNI network name a pool request asks for with `OPT_NAME`, else `default()`.
fn cni_network_option(
    options: &BTreeMap<String, String>,
    default: impl FnOnce() -> String,
) -> Result<String> {
    match options.get(OPT_NAME) {
        Some(n) if valid_id(n) => Ok(n.clone()),
        Some(n) => bail!("{OPT_NAME} {n:?} is not a valid CNI network name"),
        None => Ok(default()),
    }
}

fn placeholder(owner: &str) -> Holder {
    Holder {
        container_id: owner.to_string(),
        ifname: "reserved".into(),
    }
}

fn in_bounds(r: &Range, ip: IpAddr) -> bool {
    let (first, last) = translate::usable_bounds(&r.subnet);
    let (lo, hi) = (r.start.unwrap_or(first), r.end.unwrap_or(last));
    r.subnet.contains(ip) && ip >= lo && ip <= hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_network_option_takes_a_valid_name_else_the_default() {
        let mut o = BTreeMap::new();
        assert_eq!(cni_network_option(&o, || "dflt".into()).unwrap(), "dflt");
        o.insert(OPT_NAME.to_string(), "mynet".to_string());
        assert_eq!(cni_network_option(&o, || "dflt".into()).unwrap(), "mynet");
        o.insert(OPT_NAME.to_string(), "../etc".to_string());
        let e = cni_network_option(&o, || "dflt".into()).unwrap_err();
        assert!(
            e.to_string().contains("not a valid CNI network name"),
            "{e}"
        );
    }
}
