//! Atomic file replacement and the cleanup of what killed writers leave behind — the one
//! implementation every state file of the workspace uses (result caches, runner, firewall, shim).
//!
//! Invariant: a reader sees the old content or the new, never a torn file; a temporary file is
//! named `.<name>.<pid>.<seq>.tmp`, unique per writer, so concurrent writers never share one and
//! [`sweep_dead_temporaries`] can tell a dead writer's leftovers from a live writer's work.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// How hard a write is pushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Atomic only: survives the writer being killed, not a power loss.
    Atomic,
    /// The file's data is fsynced before the rename.
    File,
    /// The file and then its directory are fsynced: the new name survives a power loss.
    FileAndDir,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Replace `path` with `data` atomically: temporary file (`mode`), write, fsync as asked,
/// rename. The temporary is removed if any step fails.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, durability: Durability) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        if durability != Durability::Atomic {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durability == Durability::FileAndDir {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The pid of the writer that made temporary file `name`, if `name` is one of ours.
fn writer_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = rest.rsplitn(3, '.');
    let _seq: u64 = parts.next()?.parse().ok()?;
    let pid: i32 = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

fn alive(pid: i32) -> bool {
    // Signal 0 probes existence; EPERM still means the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Remove temporaries in `dir` whose writer is dead (killed between create and rename).
/// Returns how many were removed; a missing directory is empty.
pub fn sweep_dead_temporaries(dir: &Path) -> io::Result<usize> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(writer_pid) else {
            continue;
        };
        if !alive(pid) {
            match fs::remove_file(entry.path()) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_atomically_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        for durability in [Durability::Atomic, Durability::File, Durability::FileAndDir] {
            write_atomic(&p, b"{}", 0o600, durability).unwrap();
        }
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        assert!(write_atomic(&d.path().join("missing/x"), b"", 0o600, Durability::File).is_err());
    }

    #[test]
    fn sweeps_only_dead_writers_temporaries() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot exist (above pid_max's hard ceiling) and our own, live one.
        let dead = d.path().join(".a.json.4194305.0.tmp");
        let live = d
            .path()
            .join(format!(".b.json.{}.7.tmp", std::process::id()));
        let other = d.path().join(".not-ours.tmp");
        for f in [&dead, &live, &other] {
            fs::write(f, "").unwrap();
        }
        assert_eq!(sweep_dead_temporaries(d.path()).unwrap(), 1);
        assert!(!dead.exists() && live.exists() && other.exists());
        assert_eq!(writer_pid(".x.y.12.3.tmp"), Some(12));
        assert_eq!(writer_pid(".x.tmp"), None);
        assert_eq!(sweep_dead_temporaries(&d.path().join("nope")).unwrap(), 0);
    }
}
