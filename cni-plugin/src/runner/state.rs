//! The runner's state dir: one versioned JSON file per container naming its attachments in
//! attach order, one lock file per container, and libcni-format result caches.
//!
//! ```text
//! <state>/containers/<id>.json          {"kind":"plugnetRunnerV1", "containerId", "netns", "networks":[…]}
//! <state>/locks/<id>.lock               fs2 exclusive lock held for the whole of up/down/check
//! <state>/results/<net>:<id>:<ifname>   libcni's cniCacheV1 (written by crate::libcni)
//! ```
//!
//! The result caches are named with `:`, which none of the three names can contain, so no two
//! attachments share a file. Caches of older plugnets (libcni's `<net>-<id>-<ifname>`, where
//! network `a` + container `b-c` and network `a-b` + container `c` collide) are still read when
//! their content names the attachment, and are replaced by the new name on the next ADD.
//!
//! Invariants: every file is replaced atomically (temp, fsync, rename); an attachment is
//! recorded *before* its ADD runs, so a crash mid-`up` still leaves the record `down` needs to
//! DEL it; an attachment is complete iff its cached result exists (libcni's invariant), so
//! the container file is written once per `up`/`down`, not once per network; ids are validated
//! before they become file names.

use crate::error::CniError;
use crate::libcni::{write_atomic, NetworkList};
use crate::validate;
use fs2::FileExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// `kind` of a container state file; bump on an incompatible change.
pub const STATE_KIND: &str = "plugnetRunnerV1";

/// Where the ADD of an attachment got to: derived, not stored — `Attached` iff the attachment
/// has a cached result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// ADD started and has not (yet) succeeded: DEL it before forgetting it.
    Attaching,
    /// ADD succeeded; the result is cached.
    Attached,
}

/// One network attached to a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentState {
    /// The spec entry's name (the runner's key).
    pub name: String,
    pub ifname: String,
    /// The network list exactly as run for ADD, so DEL and CHECK see the same configuration
    /// even if the conf dir changes in between.
    pub list: Value,
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub runtime_config: Map<String, Value>,
}

impl AttachmentState {
    /// The recorded network list.
    pub fn network_list(&self) -> Result<NetworkList, CniError> {
        NetworkList::from_bytes(self.list.to_string().as_bytes())
            .map_err(|e| e.context(format!("recorded network {:?}", self.name)))
    }

    /// The CNI network name (the list's `name`), used for the result cache and IPAM.
    pub fn cni_network(&self) -> &str {
        self.list
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Everything the runner knows about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    pub netns: PathBuf,
    /// In attach order.
    pub networks: Vec<AttachmentState>,
}

impl ContainerState {
    pub fn new(container_id: &str, netns: &Path) -> ContainerState {
        ContainerState {
            kind: STATE_KIND.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            networks: Vec::new(),
        }
    }

    pub fn find(&self, name: &str) -> Option<&AttachmentState> {
        self.networks.iter().find(|a| a.name == name)
    }
}

/// The state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// An exclusive per-container lock; released on drop.
#[derive(Debug)]
pub struct ContainerLock {
    file: fs::File,
}

impl Drop for ContainerLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn container_path(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(format!("{id}.json"))
    }

    fn mkdir(&self, sub: &str) -> Result<PathBuf, CniError> {
        let dir = self.root.join(sub);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| CniError::io(format!("create state dir {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Take the container's lock, waiting for another `up`/`down` on it to finish.
    pub fn lock(&self, id: &str) -> Result<ContainerLock, CniError> {
        validate::container_id(id)?;
        let path = self.mkdir("locks")?.join(format!("{id}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(format!("open lock {}: {e}", path.display())))?;
        file.lock_exclusive()
            .map_err(|e| CniError::io(format!("lock {}: {e}", path.display())))?;
        Ok(ContainerLock { file })
    }

    /// The container's state, `None` if the runner has nothing for it.
    pub fn load(&self, id: &str) -> Result<Option<ContainerState>, CniError> {
        validate::container_id(id)?;
        let path = self.container_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CniError::io(format!("read {}: {e}", path.display()))),
        };
        let state: ContainerState = serde_json::from_slice(&bytes)
            .map_err(|e| CniError::decode(format!("corrupt state {}: {e}", path.display())))?;
        if state.kind != STATE_KIND {
            return Err(CniError::decode(format!(
                "state {} has kind {:?}; this plugnet reads {STATE_KIND:?}",
                path.display(),
                state.kind
            )));
        }
        Ok(Some(state))
    }

    /// Remove temporaries whose writer died between create and rename (best effort).
    pub fn sweep_temporaries(&self) {
        for sub in ["containers", "results"] {
            let _ = crate::fsutil::sweep_dead_temporaries(&self.root.join(sub));
        }
    }

    /// Persist the container's state atomically; an empty state removes the file.
    pub fn save(&self, state: &ContainerState) -> Result<(), CniError> {
        validate::container_id(&state.container_id)?;
        let path = self.container_path(&state.container_id);
        if state.networks.is_empty() {
            // The container is gone: also take what writers killed mid-write left behind.
            self.sweep_temporaries();
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(CniError::io(format!("remove {}: {e}", path.display())))
                }
                _ => Ok(()),
            };
        }
        self.mkdir("containers")?;
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        write_atomic(&path, &bytes)
            .map_err(|e| CniError::io(format!("write {}: {e}", path.display())))
    }

    /// Every container with state, sorted by id. Unreadable files are reported, not skipped.
    pub fn list(&self) -> Result<Vec<ContainerState>, CniError> {
        let dir = self.root.join("containers");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CniError::io(format!("read {}: {e}", dir.display()))),
        };
        let mut ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".json")
                    .filter(|id| validate::is_valid_id(id))
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.load(&id)? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_round_trips_and_empty_state_removes_the_file() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path());
        assert!(sd.load("c1").unwrap().is_none());
        let mut s = ContainerState::new("c1", Path::new("/run/netns/x"));
        s.networks.push(AttachmentState {
            name: "a".into(),
            ifname: "eth0".into(),
            list: json!({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "t"}]}),
            runtime_config: Map::new(),
        });
        sd.save(&s).unwrap();
        assert_eq!(sd.load("c1").unwrap().unwrap(), s);
        assert_eq!(sd.list().unwrap(), vec![s.clone()]);
        let text = fs::read_to_string(d.path().join("containers/c1.json")).unwrap();
        assert!(text.contains("\"kind\": \"plugnetRunnerV1\""), "{text}");
        s.networks.clear();
        sd.save(&s).unwrap();
        assert!(sd.load("c1").unwrap().is_none());
        assert!(sd.list().unwrap().is_empty());
    }

    #[test]
    fn bad_ids_and_corrupt_files_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path());
        assert!(sd.load("../etc/passwd").is_err());
        assert!(sd.lock("a/b").is_err());
        fs::create_dir_all(d.path().join("containers")).unwrap();
        fs::write(d.path().join("containers/c2.json"), "{").unwrap();
        assert!(sd.load("c2").unwrap_err().msg.contains("corrupt"));
        fs::write(
            d.path().join("containers/c2.json"),
            r#"{"kind":"other","containerId":"c2","netns":"/x","networks":[]}"#,
        )
        .unwrap();
        assert!(sd.load("c2").unwrap_err().msg.contains("kind"));
    }

    #[test]
    fn the_lock_excludes_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path());
        let held = sd.lock("c1").unwrap();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("locks/c1.lock"))
            .unwrap();
        assert!(f.try_lock_exclusive().is_err(), "second lock must wait");
        drop(held);
        f.try_lock_exclusive().unwrap();
    }
}
