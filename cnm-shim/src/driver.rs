//! The NetworkDriver: Docker networks and endpoints translated into CNI attachments.
//!
//! Invariant: every state change is on disk before the reply leaves; an attachment is
//! recorded (`attaching`) before its CNI ADD runs so a crash at any point is undone by
//! `reconcile`; teardown calls (Leave, DeleteEndpoint, DeleteNetwork) succeed for unknown ids.
//! Calls for one endpoint are serialized; calls for different endpoints run in parallel, and
//! the state lock is never held across a CNI invocation.

use crate::api::*;
use crate::backend::{AttachRequest, CniBackend, Holder, PoolCtx};
use crate::state::{
    valid_id, AttachmentRecord, EndpointRecord, Kind, Mode, NetworkRecord, Phase, State, Store,
    SubnetInfo,
};
use crate::translate::{self, DeriveOptions, Range};
use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::IpNetwork;
use plugnet::bridge::config::HANDOFF_ARG;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{info, warn};

/// CNI_IFNAME of every attachment inside its staging netns.
pub const CNI_IFNAME: &str = "eth0";
/// `-o` option: use an existing conflist (mode 2).
pub const OPT_CNI_NETWORK: &str = "cni.network";
/// `-o` option: write the derived conflist to the CNI conf dir.
pub const OPT_EXPORT: &str = "plugnet.export";
/// `-o` option: `routed` derives a conflist in plugnet's routed mode (default `bridge`).
pub const OPT_MODE: &str = "plugnet.mode";
/// `--ipam-opt` option: name of the CNI network (and store) for a derived pool.
pub const OPT_NAME: &str = "plugnet.name";

/// Static configuration of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Directory of staging netns bind mounts (`/run/plugnet-shim/<name>/ns`).
    pub staging_dir: PathBuf,
    /// Address blocks auto pools are cut from.
    pub default_pools_v4: Vec<IpNetwork>,
    pub default_pools_v6: Vec<IpNetwork>,
    pub pool_prefix_v4: u8,
    pub pool_prefix_v6: u8,
    /// `dataDir` written into derived conflists.
    pub ipam_data_dir: Option<String>,
    /// Main plugin of derived conflists.
    pub bridge_plugin: String,
    /// `ipMasq` of derived conflists unless `-o com.docker.network.bridge.enable_ip_masquerade`.
    pub default_ip_masq: bool,
}

impl DriverConfig {
    pub fn new(staging_dir: PathBuf) -> Self {
        DriverConfig {
            staging_dir,
            default_pools_v4: vec!["10.200.0.0/16".parse().expect("literal")],
            default_pools_v6: vec!["fd70:706e::/48".parse().expect("literal")],
            pool_prefix_v4: 24,
            pool_prefix_v6: 64,
            ipam_data_dir: None,
            bridge_plugin: "plugnet".into(),
            default_ip_masq: false,
        }
    }
}

/// NetworkDriver + IpamDriver over a [`CniBackend`].
pub struct Driver<B: CniBackend> {
    pub(crate) cfg: DriverConfig,
    pub(crate) backend: B,
    pub(crate) store: Store,
    pub(crate) state: Mutex<State>,
    ep_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    pub(crate) counter: std::sync::atomic::AtomicU64,
    swept: std::sync::atomic::AtomicBool,
}

fn generic(options: &Map<String, Value>) -> HashMap<String, String> {
    options
        .get(GENERIC_OPTION)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn truthy(v: Option<&String>) -> bool {
    matches!(
        v.map(|s| s.to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes")
    )
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl<B: CniBackend> Driver<B> {
    /// Load the state directory; never talks to dockerd.
    pub fn new(cfg: DriverConfig, backend: B, store: Store) -> Self {
        let (state, warnings) = store.load();
        for w in warnings {
            warn!("state: {w}");
        }
        Driver {
            cfg,
            backend,
            store,
            state: Mutex::new(state),
            ep_locks: Mutex::new(HashMap::new()),
            counter: std::sync::atomic::AtomicU64::new(0),
            swept: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ep_lock(&self, id: &str) -> Arc<Mutex<()>> {
        let mut m = self.ep_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    fn forget_ep_lock(&self, id: &str) {
        let mut m = self.ep_locks.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(id).is_some_and(|l| Arc::strong_count(l) == 1) {
            m.remove(id);
        }
    }

    /// A snapshot of the state (tests, diagnostics).
    pub fn snapshot(&self) -> State {
        self.lock().clone()
    }

    /// Drop a network from memory only, as if it had been deleted while the shim was down.
    #[cfg(test)]
    pub(crate) fn forget_network_for_test(&self, id: &str) {
        self.lock().networks.remove(id);
    }

    pub fn capabilities(&self) -> NetCapabilities {
        NetCapabilities {
            scope: "local".into(),
            connectivity_scope: "local".into(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Networks

    pub fn create_network(&self, req: CreateNetworkRequest) -> Result<Empty> {
        if !valid_id(&req.network_id) {
            bail!("invalid NetworkID {:?}", req.network_id);
        }
        let opts = generic(&req.options);
        let internal = req
            .options
            .get(INTERNAL_OPTION)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut subnets = Vec::new();
        for d in req.ipv4_data.iter().chain(&req.ipv6_data) {
            if d.pool.is_empty() {
                continue;
            }
            let pool: IpNetwork = d
                .pool
                .parse()
                .with_context(|| format!("IPAM pool {:?}", d.pool))?;
            let gateway = match d.gateway.as_str() {
                "" => None,
                g => Some(
                    g.parse::<IpNetwork>()
                        .with_context(|| format!("IPAM gateway {g:?}"))?
                        .ip(),
                ),
            };
            subnets.push(SubnetInfo {
                pool,
                gateway,
                pool_id: None,
            });
        }

        if let Some(name) = opts.get(OPT_CNI_NETWORK) {
            let conflist = self.backend.load_conflist(name)?;
            let ranges = translate::conflist_ipam(&conflist)
                .map(translate::ipam_ranges)
                .transpose()?;
            if let Some(ranges) = ranges.filter(|r| !r.is_empty()) {
                for s in &subnets {
                    if !ranges.iter().any(|r| {
                        r.subnet.contains(s.pool.network()) && r.subnet.prefix() <= s.pool.prefix()
                    }) {
                        bail!(
                            "pool {} is not part of CNI network {name:?} ({}); create the network with \
                             this driver as --ipam-driver and --ipam-opt {OPT_CNI_NETWORK}={name}, or \
                             a matching --subnet",
                            s.pool,
                            ranges.iter().map(|r| r.subnet.to_string()).collect::<Vec<_>>().join(", ")
                        );
                    }
                }
            }
            let mut st = self.lock();
            for s in &mut subnets {
                s.pool_id = find_pool(&st, &s.pool);
            }
            let rec = NetworkRecord {
                id: req.network_id.clone(),
                mode: Mode::Existing,
                cni_name: name.clone(),
                conflist: Value::Null,
                exported: false,
                internal,
                subnets,
            };
            self.store
                .put(Kind::Network, &rec.id, &rec)
                .context("persist network")?;
            info!(network = %short(&rec.id), cni = %name, "created network (existing conflist)");
            st.networks.insert(rec.id.clone(), rec);
            return Ok(Empty {});
        }

        // Mode 1: derive a conflist.
        let mut st = self.lock();
        if let Some(existing) = st.networks.get(&req.network_id) {
            if existing
                .subnets
                .iter()
                .map(|s| s.pool)
                .eq(subnets.iter().map(|s| s.pool))
            {
                return Ok(Empty {});
            }
            bail!(
                "network {} already exists with other pools",
                short(&req.network_id)
            );
        }
        let mut ranges = Vec::new();
        let mut cni_name = None;
        for s in &mut subnets {
            s.pool_id = find_pool(&st, &s.pool);
            let mut r = Range {
                subnet: s.pool,
                gateway: s.gateway,
                start: None,
                end: None,
            };
            if let Some(p) = s.pool_id.as_ref().and_then(|id| st.pools.get(id)) {
                r = r.with_sub_pool(p.sub_pool);
                cni_name.get_or_insert_with(|| p.cni_network.clone());
            }
            ranges.push(r);
        }
        let cni_name = cni_name.unwrap_or_else(|| format!("docker-{}", short(&req.network_id)));
        if let Some(other) = st.networks.values().find(|n| n.cni_name == cni_name) {
            bail!(
                "CNI network {cni_name:?} is already used by Docker network {}",
                short(&other.id)
            );
        }
        // A dual-stack network's second pool joins the first one's store.
        for s in &subnets {
            if let Some(pid) = &s.pool_id {
                self.rehome_pool(&mut st, pid, &cni_name)?;
            }
        }
        let routed = match opts.get(OPT_MODE).map(String::as_str) {
            None | Some("") | Some("bridge") => false,
            Some("routed") => true,
            Some(m) => bail!("{OPT_MODE}={m:?}: must be \"bridge\" or \"routed\""),
        };
        let derive = DeriveOptions {
            plugin: self.cfg.bridge_plugin.clone(),
            routed,
            bridge: opts
                .get("com.docker.network.bridge.name")
                .cloned()
                .unwrap_or_else(|| format!("pnb{}", short(&req.network_id))),
            mtu: match opts.get("com.docker.network.driver.mtu") {
                Some(m) => Some(m.parse().with_context(|| format!("mtu {m:?}"))?),
                None => None,
            },
            ip_masq: !internal
                && opts
                    .get("com.docker.network.bridge.enable_ip_masquerade")
                    .map(|v| truthy(Some(v)))
                    .unwrap_or(self.cfg.default_ip_masq),
            ipam_data_dir: self.cfg.ipam_data_dir.clone(),
        };
        if !routed && derive.bridge.len() > 15 {
            bail!("bridge name {:?} is longer than 15 bytes", derive.bridge);
        }
        let conflist = translate::derive_conflist(&cni_name, &ranges, &derive);
        let exported = truthy(opts.get(OPT_EXPORT));
        if exported {
            self.backend
                .export_conflist(&conflist)
                .context("export conflist")?;
        }
        let rec = NetworkRecord {
            id: req.network_id.clone(),
            mode: Mode::Derived,
            cni_name: cni_name.clone(),
            conflist,
            exported,
            internal,
            subnets,
        };
        if let Err(e) = self.store.put(Kind::Network, &rec.id, &rec) {
            if exported {
                let _ = self.backend.unexport_conflist(&cni_name);
            }
            return Err(e).context("persist network");
        }
        info!(network = %short(&rec.id), cni = %cni_name, exported, "created network (derived conflist)");
        st.networks.insert(rec.id.clone(), rec.clone());
        // Outside the state lock: the hold may run iptables.
        drop(st);
        self.hold_bridge(&rec, true);
        Ok(Empty {})
    }

    /// A derived plugnet bridge network is held open in plugnet's host firewall for its
    /// lifetime (see `CniBackend::hold_bridge`). Best effort: without the hold the bridge's
    /// rules follow its first and last container, which is slower, not wrong.
    fn hold_bridge(&self, rec: &NetworkRecord, on: bool) {
        let plugin = &rec.conflist["plugins"][0];
        let Some(bridge) = plugin["bridge"].as_str() else {
            return; // routed: no bridge
        };
        if rec.mode != Mode::Derived || plugin["type"] != "plugnet" {
            return;
        }
        let holder = format!("docker-network.{}", short(&rec.id));
        if let Err(e) = self
            .backend
            .hold_bridge(&firewall_state_dir(plugin), bridge, &holder, on)
        {
            warn!(network = %short(&rec.id), bridge, "host firewall hold ({on}): {e:#}");
        }
    }

    pub fn delete_network(&self, req: NetworkRequest) -> Result<Empty> {
        // Docker deletes a network only when it knows no endpoint on it: an endpoint we still
        // hold is one Docker forgot (a dockerd killed between our Join and its own store write
        // never sends the DeleteEndpoint). Take it down now, while its network is still known.
        let orphans: Vec<String> = self
            .lock()
            .endpoints
            .values()
            .filter(|e| e.network_id == req.network_id)
            .map(|e| e.id.clone())
            .collect();
        for id in orphans {
            info!(network = %short(&req.network_id), endpoint = %short(&id), "collecting an endpoint Docker forgot");
            self.collect_endpoint(&id);
        }
        let rec = {
            let mut st = self.lock();
            let Some(rec) = st.networks.get(&req.network_id).cloned() else {
                return Ok(Empty {});
            };
            self.store
                .delete(Kind::Network, &rec.id)
                .context("remove network state")?;
            st.networks.remove(&rec.id);
            rec
        };
        if rec.exported {
            if let Err(e) = self.backend.unexport_conflist(&rec.cni_name) {
                warn!("unexport {}: {e:#}", rec.cni_name);
            }
        }
        self.hold_bridge(&rec, false);
        if rec.mode == Mode::Derived {
            if let Some(br) = rec.conflist["plugins"][0]["bridge"].as_str() {
                if let Err(e) = self.backend.remove_bridge(br) {
                    warn!("remove bridge {br}: {e:#}");
                }
            }
        }
        info!(network = %short(&rec.id), "deleted network");
        Ok(Empty {})
    }

    // -----------------------------------------------------------------------------------------
    // Endpoints

    pub fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<CreateEndpointResponse> {
        if !valid_id(&req.endpoint_id) {
            bail!("invalid EndpointID {:?}", req.endpoint_id);
        }
        let lock = self.ep_lock(&req.endpoint_id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut addresses = Vec::new();
        for a in [&req.interface.address, &req.interface.address_ipv6] {
            if !a.is_empty() {
                addresses.push(
                    a.parse::<IpNetwork>()
                        .with_context(|| format!("endpoint address {a:?}"))?,
                );
            }
        }
        let ports: Vec<PortBinding> = match req.options.get(PORTMAP_OPTION) {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).context("decode port mappings")?
            }
            _ => Vec::new(),
        };
        let mut st = self.lock();
        let net = st.networks.get(&req.network_id).cloned().ok_or_else(|| {
            anyhow!(
                "network {} is not known to this driver",
                short(&req.network_id)
            )
        })?;
        if let Some(ep) = st.endpoints.get(&req.endpoint_id) {
            return Ok(mac_reply(&req.interface.mac_address, ep.mac.as_deref()));
        }
        // Like Docker's bridge: a MAC derived from the IPv4 address, so a reused address keeps
        // its MAC and peers' ARP caches stay right.
        let mac = match req.interface.mac_address.as_str() {
            "" => addresses.iter().find_map(|a| match a.ip() {
                IpAddr::V4(v4) => {
                    let o = v4.octets();
                    Some(format!(
                        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
                        o[0], o[1], o[2], o[3]
                    ))
                }
                IpAddr::V6(_) => None,
            }),
            m => Some(m.to_string()),
        };
        // Docker's placeholder reservations become the endpoint's (the CNI ADD adopts them).
        for a in &addresses {
            self.claim_address(&mut st, &net, a.ip(), &req.endpoint_id)?;
        }
        let rec = EndpointRecord {
            id: req.endpoint_id.clone(),
            network_id: req.network_id.clone(),
            addresses,
            mac,
            port_mappings: translate::port_mappings(&ports),
            attachment: None,
        };
        self.store
            .put(Kind::Endpoint, &rec.id, &rec)
            .context("persist endpoint")?;
        let reply = mac_reply(&req.interface.mac_address, rec.mac.as_deref());
        st.endpoints.insert(rec.id.clone(), rec);
        Ok(reply)
    }

    pub fn endpoint_oper_info(&self, _req: EndpointRequest) -> Result<EndpointOperInfoResponse> {
        Ok(EndpointOperInfoResponse::default())
    }

    pub fn delete_endpoint(&self, req: EndpointRequest) -> Result<Empty> {
        let lock = self.ep_lock(&req.endpoint_id);
        let g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let rec = self.lock().endpoints.get(&req.endpoint_id).cloned();
        if let Some(rec) = rec {
            // Docker still holds the addresses until its ReleaseAddress.
            self.teardown_endpoint(&rec, false);
        }
        drop(g);
        self.forget_ep_lock(&req.endpoint_id);
        Ok(Empty {})
    }

    /// Tear down endpoint `id` under its lock (no-op if it is gone meanwhile).
    fn collect_endpoint(&self, id: &str) {
        let lock = self.ep_lock(id);
        let g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let rec = self.lock().endpoints.get(id).cloned();
        if let Some(rec) = rec {
            self.teardown_endpoint(&rec, true);
        }
        drop(g);
        self.forget_ep_lock(id);
    }

    /// CNI DEL (if attached), release the endpoint's store reservations, forget it.
    /// Best-effort: errors are logged; a failed DEL keeps the record for the reaper.
    fn teardown_endpoint(&self, rec: &EndpointRecord, forget_addresses: bool) {
        if let Some(att) = &rec.attachment {
            if let Err(e) = self.backend.detach(&rec.id, att) {
                warn!(endpoint = %short(&rec.id), "CNI DEL failed, kept for retry: {e:#}");
                return;
            }
        }
        let mut st = self.lock();
        if let Some(net) = st.networks.get(&rec.network_id).cloned() {
            for a in &rec.addresses {
                if let Some((pid, ctx)) = self.pool_ctx_for(&st, &net, a.ip()) {
                    if let Err(e) = self.backend.ipam_release(&ctx, &Holder::endpoint(&rec.id)) {
                        warn!(endpoint = %short(&rec.id), "release {a}: {e:#}");
                    }
                    if let Some(pool) = st.pools.get_mut(&pid) {
                        let mut changed = false;
                        if pool.endpoint_of.get(&a.ip()) == Some(&rec.id) {
                            pool.endpoint_of.remove(&a.ip());
                            changed = true;
                        }
                        // Docker will never release it (it forgot the endpoint): we do.
                        if forget_addresses {
                            changed |= pool.addresses.remove(&a.ip()).is_some();
                        }
                        if changed {
                            let p = pool.clone();
                            if let Err(e) = self.store.put(Kind::Pool, &p.id, &p) {
                                warn!("persist pool {}: {e:#}", p.id);
                            }
                        }
                    }
                }
            }
        }
        if let Err(e) = self.store.delete(Kind::Endpoint, &rec.id) {
            warn!("remove endpoint state {}: {e:#}", short(&rec.id));
        }
        st.endpoints.remove(&rec.id);
    }

    pub fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        let lock = self.ep_lock(&req.endpoint_id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (mut ep, net) = {
            let st = self.lock();
            let ep = st.endpoints.get(&req.endpoint_id).cloned().ok_or_else(|| {
                anyhow!(
                    "endpoint {} is not known to this driver",
                    short(&req.endpoint_id)
                )
            })?;
            let net = st.networks.get(&ep.network_id).cloned().ok_or_else(|| {
                anyhow!(
                    "network {} is not known to this driver",
                    short(&ep.network_id)
                )
            })?;
            (ep, net)
        };
        if let Some(att) = ep.attachment.as_ref().filter(|a| a.phase == Phase::Joined) {
            return self.reply_for(&net, att);
        }
        let conflist = match net.mode {
            Mode::Derived => net.conflist.clone(),
            Mode::Existing => self.backend.load_conflist(&net.cni_name)?,
        };
        let ports: Vec<PortBinding> = match req.options.get(PORTMAP_OPTION) {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).context("decode port mappings")?
            }
            _ => Vec::new(),
        };
        let ports = if ports.is_empty() {
            ep.port_mappings.clone()
        } else {
            translate::port_mappings(&ports)
        };
        let mut caps = Map::new();
        if !ep.addresses.is_empty() {
            caps.insert(
                "ips".into(),
                json!(ep
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()),
            );
        }
        if !ports.is_empty() {
            caps.insert("portMappings".into(), Value::Array(ports));
        }
        if let Some(mac) = &ep.mac {
            caps.insert("mac".into(), json!(mac));
        }
        let mut args = vec![("IgnoreUnknown".to_string(), "1".to_string())];
        if !ep.addresses.is_empty() {
            let ips: Vec<String> = ep.addresses.iter().map(|a| a.ip().to_string()).collect();
            args.push(("IP".into(), ips.join(",")));
        }
        if let Some(mac) = &ep.mac {
            args.push(("MAC".into(), mac.clone()));
        }
        if !req.sandbox_key.is_empty() {
            // Names (issue 20): the resolver asks Docker's DNS inside this sandbox.
            let key = plugnet::names::DOCKER_SANDBOX_ARG;
            args.push((key.into(), req.sandbox_key.clone()));
        }
        let tmp_name = format!("pnj{}", short(&ep.id));
        // Derived plugnet networks: plugnet leaves the container end in the host for Docker
        // to move (one netns move, as Docker's own bridge driver; no staging namespace).
        let handoff = net.mode == Mode::Derived && translate::supports_handoff(&conflist);
        let netns = if handoff && !req.sandbox_key.is_empty() {
            PathBuf::from(&req.sandbox_key)
        } else {
            self.cfg.staging_dir.join(short(&ep.id))
        };
        if handoff {
            args.push((HANDOFF_ARG.into(), tmp_name.clone()));
        }
        let att = AttachmentRecord {
            phase: Phase::Attaching,
            cni_name: net.cni_name.clone(),
            conflist: conflist.clone(),
            netns,
            handoff,
            ifname: CNI_IFNAME.into(),
            tmp_name,
            peer: None,
            args: args.clone(),
            capability_args: caps.clone(),
            result: Value::Null,
        };
        ep.attachment = Some(att.clone());
        self.put_endpoint(&ep)?;
        let outcome = self.backend.attach(&AttachRequest {
            conflist,
            container_id: ep.id.clone(),
            netns: att.netns.clone(),
            ifname: att.ifname.clone(),
            tmp_name: att.tmp_name.clone(),
            handoff,
            args,
            capability_args: caps,
        });
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                ep.attachment = None;
                self.put_endpoint(&ep)?;
                return Err(e.context(format!("CNI ADD on network {:?}", net.cni_name)));
            }
        };
        let mut att = att;
        att.phase = Phase::Joined;
        att.result = outcome.result;
        att.peer = outcome.peer;
        let got = translate::result_addresses(&att.result);
        let missing: Vec<_> = ep
            .addresses
            .iter()
            .filter(|a| !got.iter().any(|g| g.ip() == a.ip()))
            .collect();
        let reply = if missing.is_empty() {
            self.reply_for(&net, &att)
        } else {
            Err(anyhow!(
                "CNI network {:?} assigned {:?} instead of Docker's {:?}",
                net.cni_name,
                got.iter().map(ToString::to_string).collect::<Vec<_>>(),
                missing.iter().map(ToString::to_string).collect::<Vec<_>>()
            ))
        };
        match reply {
            Ok(r) => {
                ep.attachment = Some(att);
                self.put_endpoint(&ep)?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.backend.detach(&ep.id, &att);
                ep.attachment = None;
                self.put_endpoint(&ep)?;
                Err(e)
            }
        }
    }

    fn reply_for(&self, net: &NetworkRecord, att: &AttachmentRecord) -> Result<JoinResponse> {
        let mut r = translate::join_reply(&att.result, &att.tmp_name)?;
        if net.internal {
            r.gateway.clear();
            r.gateway_ipv6.clear();
        }
        Ok(r)
    }

    fn put_endpoint(&self, ep: &EndpointRecord) -> Result<()> {
        let mut st = self.lock();
        self.store
            .put(Kind::Endpoint, &ep.id, ep)
            .context("persist endpoint")?;
        st.endpoints.insert(ep.id.clone(), ep.clone());
        Ok(())
    }

    /// Leave: the interface is still inside the container; nothing to destroy (trap 24).
    pub fn leave(&self, _req: EndpointRequest) -> Result<Empty> {
        Ok(Empty {})
    }

    pub fn program_external_connectivity(
        &self,
        _req: ProgramExternalConnectivityRequest,
    ) -> Result<Empty> {
        Ok(Empty {})
    }

    pub fn revoke_external_connectivity(&self, _req: EndpointRequest) -> Result<Empty> {
        Ok(Empty {})
    }

    // -----------------------------------------------------------------------------------------
    // Recovery

    /// Undo half-done attachments and collect endpoints whose container died without Docker
    /// telling us (dockerd restart). Never talks to dockerd. Returns how many were cleaned.
    pub fn reconcile(&self) -> usize {
        let eps: Vec<EndpointRecord> = self.lock().endpoints.values().cloned().collect();
        let mut cleaned = 0;
        if !self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // Once, at start-up: staging namespaces no record refers to (a crash mid-cleanup).
            let keep: Vec<PathBuf> = eps
                .iter()
                .filter_map(|e| e.attachment.as_ref().map(|a| a.netns.clone()))
                .collect();
            cleaned += self.backend.sweep_staging(&self.cfg.staging_dir, &keep);
        }
        for ep in eps {
            let lock = self.ep_lock(&ep.id);
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            // Re-read under the endpoint lock: a handler may have changed it meanwhile.
            let Some(ep) = self.lock().endpoints.get(&ep.id).cloned() else {
                continue;
            };
            match &ep.attachment {
                Some(att) if att.phase == Phase::Attaching => {
                    info!(endpoint = %short(&ep.id), "undoing interrupted attachment");
                    if self.backend.detach(&ep.id, att).is_ok() {
                        let mut ep2 = ep.clone();
                        ep2.attachment = None;
                        if self.put_endpoint(&ep2).is_ok() {
                            cleaned += 1;
                        }
                    }
                }
                Some(att) if !self.backend.attachment_alive(att) => {
                    info!(endpoint = %short(&ep.id), "container side gone: collecting endpoint");
                    self.teardown_endpoint(&ep, true);
                    cleaned += 1;
                }
                // Its network is gone (deleted while a shim that knew the endpoint was down).
                _ if !self.lock().networks.contains_key(&ep.network_id) => {
                    info!(endpoint = %short(&ep.id), "network gone: collecting endpoint");
                    self.teardown_endpoint(&ep, true);
                    cleaned += 1;
                }
                _ => {}
            }
        }
        cleaned
    }

    /// The firewall state directories of plugnet plugins this shim's networks and
    /// attachments use (`firewallStateDir`, else plugnet's default).
    pub fn firewall_state_dirs(&self) -> std::collections::BTreeSet<PathBuf> {
        let st = self.lock();
        let lists = st.networks.values().map(|n| &n.conflist).chain(
            st.endpoints
                .values()
                .filter_map(|e| e.attachment.as_ref().map(|a| &a.conflist)),
        );
        let mut dirs = std::collections::BTreeSet::new();
        for list in lists {
            for p in list["plugins"].as_array().into_iter().flatten() {
                if p["type"] == "plugnet" {
                    dirs.insert(firewall_state_dir(p));
                }
            }
        }
        dirs
    }

    /// Re-applies plugnet's firewall state where the kernel lost it (`plugnet firewall
    /// repair` for each of [`Driver::firewall_state_dirs`]): after `nft flush ruleset`, a
    /// firewalld reload or a Docker restart. Returns how many state dirs were re-applied.
    pub fn repair_firewalls(&self) -> usize {
        let mut n = 0;
        for dir in self.firewall_state_dirs() {
            match plugnet::firewall::repair(&dir) {
                Ok(Some(r)) => {
                    info!(state_dir = %dir.display(), attachments = r.attachments, bridges = r.bridges,
                        "firewall rules were lost: re-applied");
                    n += 1;
                }
                Ok(None) => {}
                Err(e) => warn!(state_dir = %dir.display(), "firewall repair: {e}"),
            }
        }
        n
    }

    // -----------------------------------------------------------------------------------------
    // Address bookkeeping shared with the IPAM half

    /// The pool (id, store context) of `net` containing `ip`.
    pub(crate) fn pool_ctx_for(
        &self,
        st: &State,
        net: &NetworkRecord,
        ip: IpAddr,
    ) -> Option<(String, PoolCtx)> {
        net.subnets
            .iter()
            .filter(|s| s.pool.contains(ip))
            .find_map(|s| s.pool_id.clone())
            .and_then(|pid| st.pools.get(&pid).map(|p| (pid, self.pool_ctx(p))))
    }

    fn claim_address(
        &self,
        st: &mut State,
        net: &NetworkRecord,
        ip: IpAddr,
        endpoint_id: &str,
    ) -> Result<()> {
        let Some((pid, ctx)) = self.pool_ctx_for(st, net, ip) else {
            return Ok(());
        };
        let Some(pool) = st.pools.get_mut(&pid) else {
            return Ok(());
        };
        let Some(owner) = pool.owners.get(&ip).cloned() else {
            return Ok(());
        };
        self.backend
            .ipam_transfer(
                &ctx,
                &Holder {
                    container_id: owner,
                    ifname: "reserved".into(),
                },
                &Holder::endpoint(endpoint_id),
            )
            .with_context(|| format!("hand {ip} to endpoint {}", short(endpoint_id)))?;
        pool.owners.remove(&ip);
        pool.endpoint_of.insert(ip, endpoint_id.to_string());
        let p = pool.clone();
        self.store
            .put(Kind::Pool, &p.id, &p)
            .context("persist pool")?;
        Ok(())
    }
}

/// The CreateEndpoint reply: only a MAC the driver chose (never echo Docker's, trap 20).
fn mac_reply(docker_mac: &str, ours: Option<&str>) -> CreateEndpointResponse {
    match ours {
        Some(m) if docker_mac.is_empty() => CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: m.to_string(),
                ..Default::default()
            }),
        },
        _ => CreateEndpointResponse::default(),
    }
}

fn find_pool(st: &State, pool: &IpNetwork) -> Option<String> {
    let mut ids: Vec<&String> = st
        .pools
        .values()
        .filter(|p| p.pool == *pool)
        .map(|p| &p.id)
        .collect();
    ids.sort();
    ids.first().map(|s| s.to_string())
}

/// The firewall state dir of a plugnet plugin config (`firewallStateDir`, else plugnet's
/// default).
fn firewall_state_dir(plugin: &Value) -> PathBuf {
    PathBuf::from(
        plugin["firewallStateDir"]
            .as_str()
            .unwrap_or(plugnet::firewall::DEFAULT_STATE_DIR),
    )
}
