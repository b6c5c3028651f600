//! The agent's local state dir (default /var/lib/plugnet/agent; docs/cluster.md):
//!
//! ```text
//! format               "plugnet-agent state 1"
//! agent.lock           flock(2): one agent per state dir
//! agent.sock           the local socket (see plugnet::ipam::cluster::ask)
//! host.json            {"format":1,"name":…,"id":…}: this host's identity, written once
//! networks/<net>.json  per cluster network: the blocks plugnet-ipam allocates in
//! ipam/<net>/          per cluster network: plugnet-ipam's files-with-lock store
//! bindings/<net>       symlink → the CNI network using the cluster network here
//! ```
//!
//! Invariant: every file is replaced atomically (temporary, fsync, rename); the identity of a
//! state dir never changes; a second agent on the same state dir refuses to start.

use anyhow::{bail, Context, Result};
use plugnet::fsutil::{write_atomic, Durability};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "plugnet-agent state 1";

/// This host as the state dir knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub name: String,
    pub id: String,
}

/// The open state dir, locked for this process.
pub struct LocalState {
    dir: PathBuf,
    _lock: fs::File,
}

fn mkdir(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .with_context(|| format!("create {}", p.display()))
}

impl LocalState {
    pub fn open(dir: &Path) -> Result<LocalState> {
        mkdir(dir)?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("agent.lock"))
            .with_context(|| format!("open {}/agent.lock", dir.display()))?;
        if fs2::FileExt::try_lock_exclusive(&lock).is_err() {
            bail!(
                "another plugnet-agent runs with state dir {} (one agent per state dir)",
                dir.display()
            );
        }
        let format = dir.join("format");
        match fs::read_to_string(&format) {
            Ok(f) if f.trim_end() == FORMAT => {}
            Ok(f) => bail!(
                "{}: unsupported state format {:?} (this agent reads {FORMAT:?})",
                dir.display(),
                f.trim_end()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(
                    &format,
                    format!("{FORMAT}\n").as_bytes(),
                    0o644,
                    Durability::FileAndDir,
                )
                .with_context(|| format!("write {}", format.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("read {}", format.display())),
        }
        for sub in ["networks", "ipam", "bindings"] {
            mkdir(&dir.join(sub))?;
        }
        let _ = plugnet::fsutil::sweep_dead_temporaries(&dir.join("networks"));
        let _ = plugnet::fsutil::sweep_dead_temporaries(dir);
        Ok(LocalState {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This host's identity for cluster name `name`: created on first use; a state dir made
    /// for another name is refused (its blocks belong to that host).
    pub fn identity(&self, name: &str) -> Result<Identity> {
        let path = self.dir.join("host.json");
        match fs::read(&path) {
            Ok(data) => {
                let id: Identity = serde_json::from_slice(&data)
                    .with_context(|| format!("read {}", path.display()))?;
                if id.format != 1 {
                    bail!("{}: unsupported format {}", path.display(), id.format);
                }
                if id.name != name {
                    bail!(
                        "state dir {} belongs to host {:?}, not {name:?}: start with --host {} \
                         or give this host a state dir of its own",
                        self.dir.display(),
                        id.name,
                        id.name
                    );
                }
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity {
                    format: 1,
                    name: name.to_string(),
                    id: crate::identity::derive_id(name),
                };
                let data = serde_json::to_vec_pretty(&id).expect("serialises");
                write_atomic(&path, &data, 0o644, Durability::FileAndDir)
                    .with_context(|| format!("write {}", path.display()))?;
                Ok(id)
            }
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// The cluster networks this host has a network file for.
    pub fn networks(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.dir.join("networks"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let net = name.strip_suffix(".json")?;
                (!net.starts_with('.')).then(|| net.to_string())
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_per_dir_and_a_stable_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let s = LocalState::open(tmp.path()).unwrap();
        let e = LocalState::open(tmp.path()).err().unwrap();
        assert!(e.to_string().contains("another plugnet-agent"), "{e}");
        let id = s.identity("h1").unwrap();
        assert_eq!(s.identity("h1").unwrap(), id);
        let e = s.identity("h2").unwrap_err();
        assert!(e.to_string().contains("belongs to host"), "{e}");
        drop(s);
        let s = LocalState::open(tmp.path()).unwrap();
        assert_eq!(s.identity("h1").unwrap(), id);
        fs::write(tmp.path().join("networks/prod.json"), "{}").unwrap();
        fs::write(tmp.path().join("networks/.x.json.1.2.tmp"), "").unwrap();
        assert_eq!(s.networks(), vec!["prod".to_string()]);
        fs::write(tmp.path().join("format"), "plugnet-agent state 9\n").unwrap();
        drop(s);
        assert!(LocalState::open(tmp.path()).is_err());
    }
}
