//! The NetworkDriver: Docker networks and endpoints translated into CNI attachments.
//!
//! Invariant: every state change is on disk before the reply leaves; an attachment is
//! recorded (`attaching`) before its CNI ADD runs so a crash at any point is undone by
//! `reconcile`; teardown calls (Leave, DeleteEndpoint, DeleteNetwork) succeed for unknown ids.
//! Calls for one endpoint are serialized; calls for different endpoints run in parallel, and
//! the state lock is never held across a CNI invocation.
//!
//! Split by job: `network` (CreateNetwork, DeleteNetwork, bridge ownership), `endpoint`
//! (CreateEndpoint, Join, teardown), `recovery` (reconcile, firewall repair); this file holds
//! the driver, its per-endpoint locks and the address bookkeeping shared with `ipam`.

mod endpoint;
mod network;
mod recovery;

use crate::api::*;
use crate::backend::{AttachRequest, CniBackend, Holder, PoolCtx};
use crate::state::{
    valid_id, AttachmentRecord, EndpointRecord, Kind, Mode, NetworkRecord, Phase, State, Store,
    SubnetInfo,
};
use crate::translate::{self, DeriveOptions, Range};
use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{info, warn};

/// CNI_IFNAME of every attachment inside its staging netns.
pub const CNI_IFNAME: &str = "eth0";
/// `CNI_ARGS` key telling plugnet-ipam's DEL to keep the endpoint's addresses reserved.
pub use plugnet::ipam::KEEP_RESERVATION_ARG;
/// `-o` option: use an existing conflist (mode 2).
pub const OPT_CNI_NETWORK: &str = "cni.network";
/// `-o` option: write the derived conflist to the CNI conf dir.
pub const OPT_EXPORT: &str = "plugnet.export";
/// `-o` option: `routed` derives a conflist in plugnet's routed mode (default `bridge`).
pub const OPT_MODE: &str = "plugnet.mode";
/// `--ipam-opt` option: name of the CNI network (and store) for a derived pool.
pub const OPT_NAME: &str = "plugnet.name";
/// `--ipam-opt` (and, optionally, `-o`) option: the cluster network (docs/cluster.md) whose
/// blocks on this host the pool's addresses come from.
pub const OPT_CLUSTER: &str = "plugnet.cluster";

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
    /// plugnet-agent's state dir written as `agentDir` into cluster networks' IPAM (None: the
    /// agent's default, `/var/lib/plugnet/agent`).
    pub agent_dir: Option<String>,
    /// `firewallStateDir` of derived conflists (None: plugnet's default).
    pub firewall_state_dir: Option<String>,
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
            agent_dir: None,
            firewall_state_dir: None,
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

/// The host name of endpoint `id`'s container end until Docker moves it (`pnj` + 12 chars).
pub(crate) fn tmp_name_for(id: &str) -> String {
    format!("pnj{}", short(id))
}

/// The first 12 characters of an id (ids are ASCII once validated; any input is safe).
pub(crate) fn short(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
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

    /// Run `f` holding endpoint `id`'s lock. The lock's entry lives only while a call for
    /// that id is in progress: it is removed by the last holder, so the table never grows
    /// with the ids callers invent (issue 17).
    fn with_ep_lock<R>(&self, id: &str, f: impl FnOnce() -> R) -> R {
        /// Removes the entry when the call ends, also when it unwinds.
        struct Release<'a> {
            map: &'a Mutex<HashMap<String, Arc<Mutex<()>>>>,
            id: &'a str,
            lock: Option<Arc<Mutex<()>>>,
        }
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                drop(self.lock.take());
                let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
                if m.get(self.id).is_some_and(|l| Arc::strong_count(l) == 1) {
                    m.remove(self.id);
                }
            }
        }
        let lock = {
            let mut m = self.ep_locks.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(id.to_string()).or_default().clone()
        };
        // The only clone outside the table lives in `release`, so its drop (also on unwind)
        // sees the true count.
        let release = Release {
            map: &self.ep_locks,
            id,
            lock: Some(lock),
        };
        match &release.lock {
            Some(l) => {
                let _g = l.lock().unwrap_or_else(|p| p.into_inner());
                f()
            }
            None => f(),
        }
    }

    /// The CNI backend (tests and fuzzing inject faults through it).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Entries of the endpoint lock table (tests: it must not grow with unknown ids).
    pub fn ep_lock_entries(&self) -> usize {
        self.ep_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
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
