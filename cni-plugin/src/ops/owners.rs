//! Evidence about who is alive: the owner sources `plugnet gc` consults (the runner's state, the
//! plugnet-shim's state) and the probe that tells a live network namespace from a gone one.
//!
//! Invariant: a source either answers completely or fails; a source that is present but cannot
//! be read is an error (gc then reclaims nothing), never an empty answer, because an empty
//! answer would make every owner of that source look dead.

use crate::error::CniError;
use crate::runner::state::StateDir;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Default state dir of plugnet-shim (its `--state-dir`).
pub const DEFAULT_SHIM_STATE_DIR: &str = "/var/lib/plugnet/shim";

/// A place that knows container ids whose attachments are wanted.
pub trait OwnerSource {
    /// What to call the source in a report (`runner state /var/lib/plugnet/runner`).
    fn describe(&self) -> String;
    /// The container ids this source holds; `Ok(None)` when the source is not installed.
    fn live_ids(&self) -> Result<Option<BTreeSet<String>>, CniError>;
}

/// The runner's state dir: every container listed there is live (`plugnet down` owns it).
pub struct RunnerSource {
    pub state_dir: PathBuf,
}

impl OwnerSource for RunnerSource {
    fn describe(&self) -> String {
        format!("runner state {}", self.state_dir.display())
    }
    fn live_ids(&self) -> Result<Option<BTreeSet<String>>, CniError> {
        if !self.state_dir.exists() {
            return Ok(None);
        }
        let list = StateDir::new(&self.state_dir).list().map_err(|e| {
            e.context(format!(
                "read runner state {} (fix or move the file named; gc reclaims nothing until \
                 every state it knows of is readable)",
                self.state_dir.display()
            ))
        })?;
        Ok(Some(list.into_iter().map(|s| s.container_id).collect()))
    }
}

/// plugnet-shim's state dir: each endpoint (`endpoints/<EndpointID>.json`, the endpoint id is
/// the CNI container id) and each pool's placeholder owners (`pools/<PoolID>.json`, `owners`)
/// are live. Absent dir: the shim is not installed here.
pub struct ShimSource {
    pub state_dir: PathBuf,
}

impl OwnerSource for ShimSource {
    fn describe(&self) -> String {
        format!("plugnet-shim state {}", self.state_dir.display())
    }
    fn live_ids(&self) -> Result<Option<BTreeSet<String>>, CniError> {
        if !self.state_dir.is_dir() {
            return Ok(None);
        }
        let mut ids = BTreeSet::new();
        for (sub, what) in [("endpoints", "endpoint"), ("pools", "pool")] {
            let dir = self.state_dir.join(sub);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(shim_err(&dir, &e.to_string())),
            };
            for entry in rd.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".json") else {
                    continue; // temp files of an atomic write
                };
                if what == "endpoint" {
                    ids.insert(stem.to_string());
                    continue;
                }
                let bytes = fs::read(&path).map_err(|e| shim_err(&path, &e.to_string()))?;
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| shim_err(&path, &format!("not JSON: {e}")))?;
                if let Some(owners) = v.get("owners").and_then(Value::as_object) {
                    ids.extend(owners.values().filter_map(Value::as_str).map(String::from));
                }
            }
        }
        Ok(Some(ids))
    }
}

fn shim_err(path: &Path, why: &str) -> CniError {
    CniError::io(format!(
        "read plugnet-shim state {}: {why} (gc reclaims nothing while the shim's state is \
         unreadable; fix the file or point --shim-state-dir elsewhere)",
        path.display()
    ))
}

/// What a recorded netns path says about its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsState {
    /// The path is a network namespace.
    Alive,
    /// The path does not exist, or is a plain file whose bind mount is gone.
    Gone,
    /// Could not tell (permission, I/O error): never treated as gone.
    Unknown(String),
}

/// Probes netns paths; a trait so tests can script it.
pub trait NetnsProbe {
    fn probe(&self, path: &Path) -> NetnsState;
}

/// The real probe: open the path and check the filesystem type (nsfs).
pub struct FsProbe;

const NSFS_MAGIC: i64 = 0x6e73_6673;

impl NetnsProbe for FsProbe {
    fn probe(&self, path: &Path) -> NetnsState {
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return NetnsState::Gone,
            Err(e) => return NetnsState::Unknown(format!("open {}: {e}", path.display())),
        };
        // SAFETY: fstatfs writes into the zeroed struct we own; the fd is valid for the call.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
            let e = std::io::Error::last_os_error();
            return NetnsState::Unknown(format!("statfs {}: {e}", path.display()));
        }
        if st.f_type as i64 == NSFS_MAGIC {
            NetnsState::Alive
        } else {
            NetnsState::Gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tells_alive_gone_and_plain_files_apart() {
        assert_eq!(
            FsProbe.probe(Path::new("/proc/self/ns/net")),
            NetnsState::Alive
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(FsProbe.probe(&d.path().join("none")), NetnsState::Gone);
        let f = d.path().join("leftover");
        fs::write(&f, "").unwrap();
        assert_eq!(FsProbe.probe(&f), NetnsState::Gone);
    }

    #[test]
    fn shim_source_reads_endpoints_and_pool_owners_and_refuses_garbage() {
        let d = tempfile::tempdir().unwrap();
        let src = ShimSource {
            state_dir: d.path().join("shim"),
        };
        assert_eq!(src.live_ids().unwrap(), None);
        fs::create_dir_all(d.path().join("shim/endpoints")).unwrap();
        fs::create_dir_all(d.path().join("shim/pools")).unwrap();
        fs::write(d.path().join("shim/endpoints/ep1.json"), "{}").unwrap();
        fs::write(d.path().join("shim/endpoints/.ep2.json.tmp"), "{").unwrap();
        fs::write(
            d.path().join("shim/pools/p1.json"),
            r#"{"version":1,"owners":{"10.0.0.5":"docker-1-2"}}"#,
        )
        .unwrap();
        let ids = src.live_ids().unwrap().unwrap();
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            vec!["docker-1-2".to_string(), "ep1".to_string()]
        );
        fs::write(d.path().join("shim/pools/p2.json"), "{").unwrap();
        let e = src.live_ids().unwrap_err();
        assert!(e.msg.contains("reclaims nothing"), "{}", e.msg);
    }

    #[test]
    fn runner_source_lists_state_and_is_absent_without_dir() {
        let d = tempfile::tempdir().unwrap();
        let src = RunnerSource {
            state_dir: d.path().join("none"),
        };
        assert_eq!(src.live_ids().unwrap(), None);
        let src = RunnerSource {
            state_dir: d.path().to_path_buf(),
        };
        assert!(src.live_ids().unwrap().unwrap().is_empty());
        fs::create_dir_all(d.path().join("containers")).unwrap();
        fs::write(d.path().join("containers/c1.json"), "{").unwrap();
        assert!(src.live_ids().is_err());
    }
}
