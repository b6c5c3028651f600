//! runner: a container's ordered list of named networks, attached and detached as a unit
//! (Garden-style `plugnet up/down/check/info/metrics/list`), on top of [`crate::libcni`].
//!
//! Invariants: one `up`/`down`/`check` at a time per container (an fs2 lock per id); `up` is a
//! transaction — if entry k fails, entry k and then k-1 … 0 of that call are DELeted in reverse
//! before the error is returned, so nothing it attached stays attached; every attachment is
//! recorded before its ADD, so `down` can always DEL what an interrupted `up` began; `down` is
//! best-effort, idempotent and works after the netns is gone.

mod capabilities;
mod report;
pub mod spec;
pub mod state;

pub use report::{
    AttachmentInfo, CheckOutcome, Kernel, LinkInfo, Metrics, NetlinkKernel, NetworkMetrics,
};
pub use spec::{Entry, Source, Spec, MAX_SPEC_BYTES};
pub use state::{AttachmentState, ContainerState, StateDir, Status};

use crate::error::{CniError, ErrorCode};
use crate::invoke::{find_in_path, Exec};
use crate::libcni::{CacheNames, CniConfig, NetworkList, RuntimeConf};
use crate::validate;
use crate::version::CniVersion;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default state dir when neither `--state-dir` nor `PLUGNET_STATE_DIR` is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/plugnet/runner";
/// Default plugin path when `CNI_PATH` is unset (cnitool's convention).
pub const DEFAULT_CNI_PATH: &str = "/opt/cni/bin";
/// Default conflist dir when `NETCONFPATH` is unset.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// Where the runner keeps state and finds plugins and conflists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerOptions {
    pub state_dir: PathBuf,
    pub cni_path: Vec<PathBuf>,
    pub conf_dir: PathBuf,
}

impl RunnerOptions {
    /// `--state-dir`, else `PLUGNET_STATE_DIR`, else the default; `CNI_PATH` (`:`-separated)
    /// and `NETCONFPATH` as cnitool reads them. Empty variables count as unset.
    pub fn from_env(state_dir: Option<PathBuf>, getenv: &dyn Fn(&str) -> Option<String>) -> Self {
        let var = |k: &str| getenv(k).filter(|v| !v.is_empty());
        RunnerOptions {
            state_dir: state_dir
                .or_else(|| var("PLUGNET_STATE_DIR").map(PathBuf::from))
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            cni_path: var("CNI_PATH")
                .unwrap_or_else(|| DEFAULT_CNI_PATH.into())
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
            conf_dir: var("NETCONFPATH")
                .unwrap_or_else(|| DEFAULT_CONF_DIR.into())
                .into(),
        }
    }
}

/// One container of `list`: its state and each network's cached result (same order).
#[derive(Debug, Clone)]
pub struct Listed {
    pub state: ContainerState,
    pub results: Vec<Option<crate::CniResult>>,
}

/// Attaches and detaches containers' network lists.
pub struct Runner {
    state: StateDir,
    conf_dir: PathBuf,
    cni: CniConfig,
}

impl Runner {
    pub fn new(opts: RunnerOptions, exec: Arc<dyn Exec>) -> Runner {
        Runner {
            state: StateDir::new(&opts.state_dir),
            conf_dir: opts.conf_dir,
            // Results are cached in libcni's format under <state>/results, named so that no
            // two attachments share a file (libcni's own naming is ambiguous).
            cni: CniConfig {
                cache_names: CacheNames::Unambiguous,
                ..CniConfig::new(opts.cni_path, opts.state_dir, exec)
            },
        }
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Attach every network of `spec`, in order, to container `id` in `netns` (hot plug if the
    /// container already has networks). Returns each new network's CNI result by name.
    pub fn up(&self, id: &str, netns: &Path, spec: &Spec) -> Result<Map<String, Value>, CniError> {
        validate::container_id(id)?;
        if !crate::netns::exists(netns) {
            return Err(CniError::new(
                ErrorCode::UnknownContainer,
                format!(
                    "netns {} does not exist or is not a network namespace",
                    netns.display()
                ),
            ));
        }
        let _lock = self.state.lock(id)?;
        let mut state = match self.state.load(id)? {
            Some(s) if !same_path(&s.netns, netns) => {
                return Err(CniError::config(format!(
                    "container {id:?} is attached in netns {}, not {}: run `plugnet down --id {id}` first",
                    s.netns.display(),
                    netns.display()
                )))
            }
            Some(s) => s,
            None => ContainerState::new(id, netns),
        };
        // Resolve everything before the first ADD: a missing conflist or a clash fails early.
        let plan = self.plan(&state, spec)?;
        let first_new = state.networks.len();
        // Record every network before the first ADD (one durable write for the whole call):
        // whatever happens next, `down` knows what to DEL. DEL of a network whose ADD never
        // ran is harmless (DEL is idempotent).
        for (entry, ifname, list) in &plan {
            state.networks.push(AttachmentState {
                name: entry.name.clone(),
                ifname: ifname.clone(),
                list: serde_json::from_slice(&list.bytes)
                    .map_err(|e| CniError::decode(format!("network list: {e}")))?,
                runtime_config: entry.runtime_config.clone(),
            });
        }
        self.state.save(&state)?;
        let mut results = Map::new();
        for (k, (entry, ifname, list)) in plan.iter().enumerate() {
            let added = self
                .cni
                .add_network_list(list, &self.runtime_conf(&state, first_new + k))
                .and_then(|r| Ok(r.to_json(CniVersion::parse(&list.cni_version)?)));
            match added {
                Ok(result) => {
                    results.insert(entry.name.clone(), result);
                }
                Err(e) => {
                    let e = e.context(format!(
                        "attach network {:?} (entry {k}) as {ifname}",
                        entry.name
                    ));
                    // Networks after k were never ADDed: forget them without a DEL.
                    state.networks.truncate(first_new + k + 1);
                    return Err(self.rollback(&mut state, first_new, e));
                }
            }
        }
        Ok(results)
    }

    /// The entries of `spec` with their interface names and network lists, in order.
    fn plan<'s>(
        &self,
        state: &ContainerState,
        spec: &'s Spec,
    ) -> Result<Vec<(&'s Entry, String, NetworkList)>, CniError> {
        let mut taken: Vec<String> = state.networks.iter().map(|a| a.ifname.clone()).collect();
        for e in &spec.networks {
            if state.find(&e.name).is_some() {
                return Err(CniError::config(format!(
                    "network {:?} is already attached to container {:?}",
                    e.name, state.container_id
                )));
            }
            if let Some(i) = &e.ifname {
                if taken.contains(i) {
                    return Err(CniError::config(format!(
                        "network {:?}: interface {i:?} is already in use in container {:?}",
                        e.name, state.container_id
                    )));
                }
                taken.push(i.clone());
            }
        }
        let mut plan = Vec::with_capacity(spec.networks.len());
        for e in &spec.networks {
            let ifname = match &e.ifname {
                Some(i) => i.clone(),
                None => {
                    let free = (0..)
                        .map(|n| format!("eth{n}"))
                        .find(|c| !taken.contains(c))
                        .expect("an unused ethN exists");
                    taken.push(free.clone());
                    free
                }
            };
            let list = e.network_list(&self.conf_dir)?;
            for p in &list.plugins {
                let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
                find_in_path(t, &self.cni.path)
                    .map_err(|err| err.context(format!("network {:?}", e.name)))?;
            }
            plan.push((e, ifname, list));
        }
        Ok(plan)
    }

    /// Undo an `up` that failed: DEL networks `from..` of `state` in reverse order (the failed
    /// one first: a failed ADD is still followed by DEL). Returns `cause`, extended with what
    /// could not be undone (those stay recorded for a later `down`).
    fn rollback(&self, state: &mut ContainerState, from: usize, cause: CniError) -> CniError {
        let mut failed = Vec::new();
        for i in (from..state.networks.len()).rev() {
            if let Err(e) = self.del_attachment(state, i) {
                failed.push(format!("{}: {e}", state.networks[i].name));
            } else {
                state.networks.remove(i);
            }
        }
        let saved = self.state.save(state);
        let note = if !failed.is_empty() {
            format!(
                "rollback incomplete ({}); run `plugnet down --id {}` to retry",
                failed.join("; "),
                state.container_id
            )
        } else if let Err(e) = saved {
            format!("rolled back, but saving state failed: {e}")
        } else {
            return cause;
        };
        let mut err = cause;
        err.details = if err.details.is_empty() {
            note
        } else {
            format!("{}; {note}", err.details)
        };
        err
    }

    fn runtime_conf(&self, state: &ContainerState, i: usize) -> RuntimeConf {
        let a = &state.networks[i];
        RuntimeConf {
            container_id: state.container_id.clone(),
            // DEL after the netns is gone runs without one (CNI_NETNS is optional on DEL); the
            // host side of a veth disappears with its namespace.
            netns: crate::netns::exists(&state.netns).then(|| state.netns.clone()),
            ifname: a.ifname.clone(),
            args: Vec::new(),
            capability_args: a.runtime_config.clone(),
        }
    }

    /// DEL one attachment. A DEL that fails while the attachment carries capability args is
    /// tried once more without them, as a runtime that lost them would send it: DEL needs none
    /// (plugins find what ADD made from the attachment's names), and a value a plugin cannot
    /// decode (a record an older plugnet accepted) must not pin the attachment forever.
    fn del_attachment(&self, state: &ContainerState, i: usize) -> Result<(), CniError> {
        let list = state.networks[i].network_list()?;
        let rt = self.runtime_conf(state, i);
        match self.cni.del_network_list(&list, &rt) {
            Err(e) if !rt.capability_args.is_empty() => {
                let bare = RuntimeConf {
                    capability_args: Map::new(),
                    ..rt
                };
                self.cni.del_network_list(&list, &bare).map_err(|_| e)?;
                tracing::warn!(
                    "network {:?}: DEL succeeded only without its runtimeConfig",
                    state.networks[i].name
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Detach network `network` (or, with `None`, every network in reverse attach order).
    /// Unknown containers and networks are success. Keeps going after a failure; networks whose
    /// DEL failed stay recorded and the error names each of them.
    pub fn down(&self, id: &str, network: Option<&str>) -> Result<(), CniError> {
        validate::container_id(id)?;
        if let Some(n) = network {
            validate::network_name(n)?;
        }
        let _lock = self.state.lock(id)?;
        let Some(mut state) = self.state.load(id)? else {
            // Nothing recorded: an `up` killed while writing its first state leaves only a
            // temporary behind. Take it.
            self.state.sweep_temporaries();
            return Ok(());
        };
        let mut failed = Vec::new();
        for i in (0..state.networks.len()).rev() {
            if network.is_some_and(|n| n != state.networks[i].name) {
                continue;
            }
            match self.del_attachment(&state, i) {
                Ok(()) => {
                    state.networks.remove(i);
                }
                Err(e) => failed.push(format!("{}: {e}", state.networks[i].name)),
            }
        }
        // One write at the end (an unlink when nothing is left): if we die before it, the next
        // `down` repeats DELs that already succeeded, which is harmless.
        self.state.save(&state)?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CniError::internal(format!(
                "down {id:?}: {}",
                failed.join("; ")
            )))
        }
    }

    fn load_known(&self, id: &str) -> Result<ContainerState, CniError> {
        self.state.load(id)?.ok_or_else(|| {
            CniError::new(
                ErrorCode::UnknownContainer,
                format!(
                    "container {id:?} has no networks in {} (`plugnet list` shows the containers \
                     it knows; --state-dir / PLUGNET_STATE_DIR if they live elsewhere)",
                    self.state.root().display()
                ),
            )
        })
    }

    /// CNI CHECK of every attachment with its cached result, in attach order.
    pub fn check(&self, id: &str) -> Result<Vec<CheckOutcome>, CniError> {
        validate::container_id(id)?;
        let _lock = self.state.lock(id)?;
        let state = self.load_known(id)?;
        let mut out = Vec::new();
        for (i, a) in state.networks.iter().enumerate() {
            let result = match self.cached(&state, i) {
                None => Err(CniError::internal(
                    "no cached result: ADD did not complete; run `plugnet down` for this network",
                )),
                Some(_) => a.network_list().and_then(|l| {
                    self.cni
                        .check_network_list(&l, &self.runtime_conf(&state, i))
                }),
            };
            out.push(CheckOutcome {
                network: a.name.clone(),
                error: result.err().map(|e| e.to_string()),
            });
        }
        Ok(out)
    }

    /// What each network gave the container, from the cached results and the host's view.
    pub fn info(&self, id: &str, kernel: &dyn Kernel) -> Result<Vec<AttachmentInfo>, CniError> {
        validate::container_id(id)?;
        let state = self.load_known(id)?;
        Ok(state
            .networks
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let cached = self.cached(&state, i);
                AttachmentInfo::build(a, cached.as_ref(), kernel)
            })
            .collect())
    }

    /// Interface counters of each network's container interface, read in the container netns.
    pub fn metrics(&self, id: &str, kernel: &dyn Kernel) -> Result<Metrics, CniError> {
        validate::container_id(id)?;
        let state = self.load_known(id)?;
        Metrics::read(&state, kernel)
    }

    /// Every container the runner knows and its networks, sorted by id.
    pub fn list(&self) -> Result<Vec<Listed>, CniError> {
        Ok(self
            .state
            .list()?
            .into_iter()
            .map(|state| {
                let results = (0..state.networks.len())
                    .map(|i| self.cached(&state, i))
                    .collect();
                Listed { state, results }
            })
            .collect())
    }

    fn cached(&self, state: &ContainerState, i: usize) -> Option<crate::CniResult> {
        let list = state.networks[i].network_list().ok()?;
        self.cni.cached_result(&list, &self.runtime_conf(state, i))
    }
}

/// The same file, allowing for symlinks such as /var/run -> /run.
fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests;
