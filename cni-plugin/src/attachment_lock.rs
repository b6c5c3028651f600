//! One ADD or DEL at a time per attachment `(network, container id, ifname)`, across processes.
//!
//! The spec forbids a runtime to run ADD and DEL of one attachment at once; a runtime that does
//! anyway (a late DEL of a retried ADD) must not leave a live container whose address was
//! released under it. Each command holds an open-file-description record lock
//! (`F_OFD_SETLKW`) on one byte of a single lock file, at an offset hashed from the attachment:
//! commands of one attachment queue, others never wait on each other (two attachments sharing a
//! byte only queue too), and there is no file per attachment to clean up.
//!
//! Invariant: the lock is released when its guard drops or the process dies (the kernel drops
//! OFD locks with the last descriptor), so a killed plugin never blocks the next command.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the lock file lives: a runtime directory (nothing in it must survive a reboot).
pub const DEFAULT_DIR: &str = "/run/plugnet";
const FILE: &str = "attachments.lock";

/// Held while one command of the attachment runs.
#[derive(Debug)]
pub struct AttachmentLock {
    _file: File,
}

/// FNV-1a 64 ([`crate::attachment`]'s) over the three names with separators none of them can
/// contain.
fn offset(network: &str, container_id: &str, ifname: &str) -> i64 {
    let h = crate::attachment::fnv1a64(&[
        network.as_bytes(),
        b"\0",
        container_id.as_bytes(),
        b"\0",
        ifname.as_bytes(),
    ]);
    // Well inside off_t; a byte range lock needs no file that long.
    (h >> 16) as i64
}

/// Waits for, then takes, the lock of the attachment in `dir`'s lock file.
pub fn lock_in(
    dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> io::Result<AttachmentLock> {
    let path: PathBuf = dir.join(FILE);
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
    };
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            open()?
        }
        other => other?,
    };
    // SAFETY: a zeroed flock is a valid value; the fields we use are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset(network, container_id, ifname);
    fl.l_len = 1;
    loop {
        // SAFETY: F_OFD_SETLKW reads the flock we own; the fd is valid for the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
        if rc == 0 {
            return Ok(AttachmentLock { _file: file });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::new(
                e.kind(),
                format!("lock attachment in {}: {e}", path.display()),
            ));
        }
    }
}

/// [`lock_in`] the default directory.
pub fn lock(network: &str, container_id: &str, ifname: &str) -> io::Result<AttachmentLock> {
    lock_in(Path::new(DEFAULT_DIR), network, container_id, ifname)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn one_attachment_queues_others_do_not() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        let held = lock_in(&dir, "n", "c1", "eth0").unwrap();
        // Another attachment goes straight through, in this process too (OFD locks are per
        // open file description, not per process).
        drop(lock_in(&dir, "n", "c1", "eth1").unwrap());
        drop(lock_in(&dir, "n2", "c1", "eth0").unwrap());
        let (tx, rx) = mpsc::channel();
        let dir2 = dir.clone();
        let waiter = std::thread::spawn(move || {
            let l = lock_in(&dir2, "n", "c1", "eth0").unwrap();
            tx.send(()).unwrap();
            drop(l);
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the same attachment must wait"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn offsets_separate_the_parts() {
        assert_ne!(offset("ab", "c", "eth0"), offset("a", "bc", "eth0"));
        assert!(offset("n", "c", "eth0") >= 0);
        // Pinned: the value the hash had before it moved to `attachment::fnv1a64`.
        assert_eq!(offset("n", "c", "eth0"), 169_620_188_256_941);
    }
}
