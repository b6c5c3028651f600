//! The seam between Docker logic and CNI work: the `CniBackend` trait the driver calls.
//!
//! Invariant: every method is blocking and self-contained: `attach` either fully succeeds or
//! leaves nothing behind (its own undo), `detach` is best-effort and idempotent. The real
//! implementation is `cni::RealBackend`; tests use `fake::FakeBackend`.

use crate::state::AttachmentRecord;
use anyhow::Result;
use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;

/// Who holds an address in the IPAM store: a CNI attachment key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    pub container_id: String,
    pub ifname: String,
}

impl Holder {
    /// The owner of an endpoint's attachment (= CNI_CONTAINERID, CNI_IFNAME).
    pub fn endpoint(endpoint_id: &str) -> Holder {
        Holder {
            container_id: endpoint_id.to_string(),
            ifname: crate::driver::CNI_IFNAME.into(),
        }
    }
}

/// A pool as the IPAM store sees it.
#[derive(Debug, Clone)]
pub struct PoolCtx {
    /// CNI network name (the store's namespace).
    pub cni_network: String,
    /// The `ipam` object of the CNI config the pool belongs to.
    pub ipam: Value,
    /// The pool range (gateway and sub-pool applied).
    pub range: crate::translate::Range,
    /// The last address handed out (round-robin cursor for stores without their own).
    pub last: Option<IpAddr>,
}

/// Parameters of one CNI attachment in a staging netns.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub conflist: Value,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// Name the container interface gets when moved back to the host netns.
    pub tmp_name: String,
    /// The handoff (`CniBackend::handoff_arg`, plugnet's): the plugin leaves the container end
    /// in the host as `tmp_name`; `netns` is only reported, never created.
    pub handoff: bool,
    pub args: Vec<(String, String)>,
    pub capability_args: Map<String, Value>,
}

/// What `attach` produced.
#[derive(Debug, Clone)]
pub struct AttachOutcome {
    /// The final CNI result as 1.0.0 JSON.
    pub result: Value,
    /// Host-side peer of the container interface, when it has one (veth).
    pub peer: Option<String>,
}

/// Everything the driver needs from the CNI world.
pub trait CniBackend: Send + Sync + 'static {
    /// Read the conflist `name` from the CNI conf dir.
    fn load_conflist(&self, name: &str) -> Result<Value>;
    /// Write a derived conflist to the CNI conf dir (`plugnet.export=true`).
    fn export_conflist(&self, conflist: &Value) -> Result<()>;
    /// Remove an exported conflist; absent is success.
    fn unexport_conflist(&self, name: &str) -> Result<()>;

    /// Reserve `requested` (or any free address) for `owner` in the pool's store.
    /// `docker_held` says which addresses Docker already holds (for stores that cannot know).
    fn ipam_reserve(
        &self,
        pool: &PoolCtx,
        owner: &Holder,
        requested: Option<IpAddr>,
        docker_held: &dyn Fn(IpAddr) -> bool,
    ) -> Result<IpNetwork>;
    /// A cluster network's subnets and this host's first block of a family (`ipam` names the
    /// network: `{"type":"plugnet-ipam","cluster":…}`), asking the agent to serve it here first.
    fn cluster_view(&self, _ipam: &Value, _v6: bool) -> Result<(Vec<IpNetwork>, IpNetwork)> {
        anyhow::bail!("cluster networks are not supported by this backend")
    }
    /// Hand a reservation from one owner to another (before the CNI ADD adopts it).
    fn ipam_transfer(&self, pool: &PoolCtx, from: &Holder, to: &Holder) -> Result<()>;
    /// Release everything `owner` holds in the pool's store; unknown owner is success.
    fn ipam_release(&self, pool: &PoolCtx, owner: &Holder) -> Result<()>;
    /// Release every address still only *reserved* (never attached) inside the pool's range:
    /// called when the pool itself goes, so a hand-off whose ReleaseAddress was lost (dockerd
    /// only logs release errors) cannot outlive it. Returns how many owners were released.
    fn ipam_release_reserved(&self, _pool: &PoolCtx) -> Result<usize> {
        Ok(0)
    }

    /// Delete a bridge the shim's derived network used, if no port is attached to it any more.
    fn remove_bridge(&self, name: &str) -> Result<()>;
    /// Whether a link named `name` exists in the shim's namespace (CreateNetwork records a
    /// bridge that already exists as not plugnet's).
    fn link_exists(&self, name: &str) -> Result<bool>;

    /// The `CNI_ARGS` key (valued with the interface's host name) with which this conflist's
    /// ADD leaves the container end in the host netns for Docker to move, if its plugin can
    /// (plugnet's: `adapter::handoff_arg`); None: ADD runs in a staging namespace.
    fn handoff_arg(&self, _conflist: &Value) -> Option<&'static str> {
        None
    }

    /// Hold (`on`) or release a derived network's bridge in its plugin's host firewall for
    /// `holder` (plugnet's: `adapter::held_bridge`; other plugins have none): its accept rules
    /// live as long as the Docker network, as Docker's own do, instead of being rewritten with
    /// every first and last container.
    fn hold_network(&self, _conflist: &Value, _holder: &str, _on: bool) -> Result<()> {
        Ok(())
    }

    /// Re-apply host firewall state the kernel lost for the plugins of `conflists` (plugnet's:
    /// `adapter::repair`). Returns how many state dirs were re-applied.
    fn repair_firewalls(&self, _conflists: &[&Value]) -> usize {
        0
    }

    /// Create the staging netns, run CNI ADD in it, move the container interface back to the
    /// host netns as `tmp_name`. On failure everything done is undone.
    fn attach(&self, req: &AttachRequest) -> Result<AttachOutcome>;
    /// Undo an attachment: interface back into the staging netns if it is in the host, CNI DEL
    /// with the cached result, staging netns removed. Best-effort and idempotent.
    fn detach(&self, container_id: &str, rec: &AttachmentRecord) -> Result<()>;
    /// False once the attachment's container side is gone for good (its netns died).
    fn attachment_alive(&self, rec: &AttachmentRecord) -> bool;
    /// Remove staging namespaces in `dir` that no attachment refers to (left by a crash).
    fn sweep_staging(&self, dir: &std::path::Path, keep: &[PathBuf]) -> usize;
}

#[cfg(any(test, feature = "fake-backend"))]
pub mod fake {
    //! An in-memory backend recording every call (also built with the `fake-backend`
    //! feature, for the `shim_session` fuzz target).
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeBackend {
        pub conflists: Mutex<HashMap<String, Value>>,
        pub exported: Mutex<HashMap<String, Value>>,
        /// (network, ip) → owner
        pub store: Mutex<BTreeMap<(String, IpAddr), Holder>>,
        pub attached: Mutex<HashMap<String, AttachRequest>>,
        pub dead: Mutex<Vec<String>>,
        pub calls: Mutex<Vec<String>>,
        pub fail_attach: Mutex<Option<String>>,
        /// Links that exist "in the kernel" before the driver makes any.
        pub links: Mutex<Vec<String>>,
        /// Cluster networks: name → (subnets, this host's block).
        pub clusters: Mutex<HashMap<String, (Vec<IpNetwork>, IpNetwork)>>,
    }

    impl FakeBackend {
        pub fn log(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        pub fn held_by(&self, network: &str) -> Vec<(IpAddr, Holder)> {
            self.store
                .lock()
                .unwrap()
                .iter()
                .filter(|((n, _), _)| n == network)
                .map(|((_, ip), h)| (*ip, h.clone()))
                .collect()
        }
    }

    impl CniBackend for FakeBackend {
        fn load_conflist(&self, name: &str) -> Result<Value> {
            self.conflists
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no CNI network {name:?} in conf dir"))
        }
        fn export_conflist(&self, c: &Value) -> Result<()> {
            self.exported
                .lock()
                .unwrap()
                .insert(c["name"].as_str().unwrap().into(), c.clone());
            Ok(())
        }
        fn unexport_conflist(&self, name: &str) -> Result<()> {
            self.exported.lock().unwrap().remove(name);
            Ok(())
        }
        fn ipam_reserve(
            &self,
            pool: &PoolCtx,
            owner: &Holder,
            requested: Option<IpAddr>,
            docker_held: &dyn Fn(IpAddr) -> bool,
        ) -> Result<IpNetwork> {
            let mut st = self.store.lock().unwrap();
            let net = pool.cni_network.clone();
            let ip = match requested {
                Some(ip) => {
                    if st.contains_key(&(net.clone(), ip)) {
                        anyhow::bail!("requested address {ip} is already allocated");
                    }
                    ip
                }
                None => crate::translate::pick_address(
                    &pool.range,
                    pool.last,
                    &|ip| st.contains_key(&(net.clone(), ip)) || docker_held(ip),
                    1 << 16,
                )
                .ok_or_else(|| anyhow::anyhow!("no free address"))?,
            };
            st.insert((net, ip), owner.clone());
            Ok(IpNetwork::new(ip, pool.range.subnet.prefix())?)
        }
        fn cluster_view(&self, ipam: &Value, v6: bool) -> Result<(Vec<IpNetwork>, IpNetwork)> {
            let name = ipam["cluster"].as_str().unwrap_or_default();
            let (subnets, block) = self
                .clusters
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("cluster network {name}: not running here"))?;
            anyhow::ensure!(block.is_ipv6() == v6, "no block of the family");
            Ok((subnets, block))
        }
        fn ipam_transfer(&self, pool: &PoolCtx, from: &Holder, to: &Holder) -> Result<()> {
            let mut st = self.store.lock().unwrap();
            for ((n, _), h) in st.iter_mut() {
                if *n == pool.cni_network && h == from {
                    *h = to.clone();
                }
            }
            Ok(())
        }
        fn ipam_release(&self, pool: &PoolCtx, owner: &Holder) -> Result<()> {
            self.store
                .lock()
                .unwrap()
                .retain(|(n, _), h| !(*n == pool.cni_network && h == owner));
            Ok(())
        }
        fn remove_bridge(&self, name: &str) -> Result<()> {
            self.log(format!("remove_bridge {name}"));
            Ok(())
        }
        fn link_exists(&self, name: &str) -> Result<bool> {
            Ok(self.links.lock().unwrap().iter().any(|l| l == name))
        }
        fn handoff_arg(&self, conflist: &Value) -> Option<&'static str> {
            crate::adapter::handoff_arg(conflist)
        }
        fn hold_network(&self, conflist: &Value, holder: &str, on: bool) -> Result<()> {
            let Some((_, bridge)) = crate::adapter::held_bridge(conflist) else {
                return Ok(());
            };
            self.log(format!("hold_bridge {bridge} {holder} {on}"));
            Ok(())
        }
        fn attach(&self, req: &AttachRequest) -> Result<AttachOutcome> {
            self.log(format!("attach {}", req.container_id));
            let fail = self.fail_attach.lock().unwrap().clone();
            if let Some(e) = fail {
                // A handler bug: the router must answer 500 and keep serving.
                assert!(e != "panic", "fake backend: attach panicked");
                anyhow::bail!(e);
            }
            let ips = req.capability_args.get("ips").cloned().unwrap_or_default();
            let ips: Vec<Value> = ips
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| {
                    let net: IpNetwork = a.as_str().unwrap().parse().unwrap();
                    let conf_gw = crate::translate::conflist_ipam(&req.conflist)
                        .and_then(|i| crate::translate::ipam_ranges(i).ok())
                        .and_then(|rs| rs.into_iter().find(|r| r.subnet.contains(net.ip())))
                        .and_then(|r| r.gateway);
                    let gw = conf_gw.unwrap_or_else(|| {
                        crate::translate::usable_bounds(
                            &IpNetwork::new(net.network(), net.prefix()).unwrap(),
                        )
                        .0
                    });
                    serde_json::json!({"address": a, "gateway": gw.to_string(), "interface": 2})
                })
                .collect();
            self.attached
                .lock()
                .unwrap()
                .insert(req.container_id.clone(), req.clone());
            Ok(AttachOutcome {
                result: serde_json::json!({"cniVersion":"1.0.0","interfaces":[{"name":"br"},{"name":"veth"},{"name":req.ifname,"sandbox":req.netns}],"ips":ips}),
                peer: Some("veth".into()),
            })
        }
        fn detach(&self, container_id: &str, _rec: &AttachmentRecord) -> Result<()> {
            self.log(format!("detach {container_id}"));
            self.attached.lock().unwrap().remove(container_id);
            let mut st = self.store.lock().unwrap();
            st.retain(|_, h| h.container_id != container_id);
            Ok(())
        }
        fn sweep_staging(&self, _dir: &std::path::Path, keep: &[PathBuf]) -> usize {
            self.log(format!("sweep keep={}", keep.len()));
            0
        }
        fn attachment_alive(&self, rec: &AttachmentRecord) -> bool {
            !self.dead.lock().unwrap().contains(&rec.tmp_name)
        }
    }
}
