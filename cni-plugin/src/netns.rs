//! netns: handles on network namespaces, running work inside one, and named namespaces bound
//! to a file (what `ip netns add/del` does, for the Docker shim's staging namespaces).
//!
//! Invariants: `setns` and `unshare` happen on a short-lived std thread spawned for that
//! purpose ([`Netns::run`]), never on a tokio worker; the caller's namespace is untouched
//! whatever the closure does. The one exception, [`Netns::open_socket_in`], moves the calling
//! thread for a single socket call and back before anything else runs on it (or aborts the
//! process). Nothing here creates a tokio runtime or a socket in another namespace unless the
//! closure does: a socket pins the namespace it was made in, and tokio's first runtime creates
//! process-wide sockets (its signal pipe), so a caller that drives netlink must build its
//! runtime before entering a namespace (see [`crate::netlink::Netlink::in_open_netns`], which
//! opens only the netlink socket inside). Removal is idempotent.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `statfs` magic of nsfs: the filesystem namespace handles live on (bind mounts in
/// /run/netns, /proc/<pid>/ns/net).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Stack of the short-lived namespace threads: they open a socket or write a sysctl, nothing
/// deep; a small stack keeps the spawn cheap (no 2 MiB mapping).
const NETNS_THREAD_STACK: usize = 256 * 1024;

/// An open network namespace handle (a file on nsfs).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path`; fails with ENOENT if it is missing and InvalidInput if the
    /// file is not a network namespace (an unmounted bind-mount target, or a namespace of
    /// another kind such as `/proc/self/ns/mnt`).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)?;
        let not_netns = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is {what}, not a network namespace", path.display()),
            )
        };
        if !is_nsfs(&file)? {
            return Err(not_netns("not a namespace"));
        }
        match ns_type(&file)? {
            NET_NS_TYPE => {}
            other => return Err(not_netns(ns_type_name(other))),
        }
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The namespace the calling thread is in (the host's, for a process that never moved).
    pub fn current() -> io::Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// True if this handle names the namespace the calling thread is in.
    pub fn is_current(&self) -> io::Result<bool> {
        let mine = std::fs::metadata("/proc/thread-self/ns/net")?;
        let theirs = self.file.metadata()?;
        Ok(mine.dev() == theirs.dev() && mine.ino() == theirs.ino())
    }

    /// Runs `f` on a fresh std thread that has entered this namespace and returns its value.
    /// The thread ends with the closure, so the namespace switch never leaks to other work.
    pub fn run<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("plugnet-netns".into())
                .stack_size(NETNS_THREAD_STACK)
                .spawn_scoped(scope, || {
                    nix::sched::setns(self.fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                    Ok(f())
                })?
                .join()
                .map_err(|_| io::Error::other("thread inside the netns panicked"))?
        })
    }

    /// Makes a socket inside this namespace with the calling thread: `open` runs in it and the
    /// thread returns to its own namespace before this returns. For a single socket call (a
    /// socket keeps the namespace it was made in) this is far cheaper than [`Netns::run`]: a
    /// thread start and join costs ≈ 0.1 ms on a VM (the idle vCPU's wake-up), the two
    /// `setns` calls microseconds. `open` must do nothing but make the socket. Coming back is
    /// the one step with no undo — a thread left in the container's namespace would act on it
    /// as if it were the host — so if it fails (it cannot short of ENOMEM: the namespace is held
    /// open and was entered with the same rights) the process aborts.
    pub fn open_socket_in<S>(&self, open: impl FnOnce() -> io::Result<S>) -> io::Result<S> {
        let home = File::open("/proc/thread-self/ns/net")?;
        nix::sched::setns(self.fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        let socket = open();
        if let Err(e) = nix::sched::setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            tracing::error!(
                "plugnet: cannot return from netns {} to the plugin's own: {e}; aborting",
                self.path.display()
            );
            std::process::abort();
        }
        socket
    }
}

/// True if `path` exists and is a network namespace handle. A path whose bind mount is gone
/// (a plain file left behind) or a namespace of another kind is not one.
pub fn exists(path: impl AsRef<Path>) -> bool {
    File::open(path.as_ref())
        .and_then(|f| Ok(is_nsfs(&f)? && ns_type(&f)? == NET_NS_TYPE))
        .unwrap_or(false)
}

/// `NS_GET_NSTYPE` (linux/nsfs.h): the `CLONE_NEW*` flag of the namespace behind an nsfs fd.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
const NET_NS_TYPE: i32 = libc::CLONE_NEWNET;

fn ns_type(file: &File) -> io::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns an int; the fd is valid for the call.
    let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if t < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

fn ns_type_name(t: i32) -> &'static str {
    match t {
        libc::CLONE_NEWNS => "a mount namespace",
        libc::CLONE_NEWUTS => "a UTS namespace",
        libc::CLONE_NEWIPC => "an IPC namespace",
        libc::CLONE_NEWUSER => "a user namespace",
        libc::CLONE_NEWPID => "a PID namespace",
        libc::CLONE_NEWCGROUP => "a cgroup namespace",
        _ => "a namespace of another kind",
    }
}

fn is_nsfs(file: &File) -> io::Result<bool> {
    // SAFETY: fstatfs writes into the zeroed struct we own; the fd is valid for the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == NSFS_MAGIC)
}

/// Creates a new network namespace bound at `path` (`ip netns add`); a stale one there is
/// removed first. The directory must exist (see [`prepare_dir`]). On failure nothing is left.
pub fn create(path: impl AsRef<Path>) -> io::Result<()> {
    let path = path.as_ref();
    if fs::symlink_metadata(path).is_ok() {
        remove(path)?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| step_err(format!("create {}", path.display()), e))?;
    let res = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("plugnet-netns".into())
            .stack_size(NETNS_THREAD_STACK)
            .spawn_scoped(scope, || -> io::Result<()> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| step_err("unshare netns", e.into()))?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| step_err(format!("bind netns to {}", path.display()), e.into()))
            })?
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    });
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

/// Unmounts and removes a namespace bound at `path` (`ip netns del`); absent is success. The
/// namespace dies once no process, socket or other mount refers to it.
pub fn remove(path: impl AsRef<Path>) -> io::Result<()> {
    let path = path.as_ref();
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a plain file left behind).
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(step_err(format!("unmount {}", path.display()), e.into())),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(step_err(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Makes `dir` (created if missing) a shared bind mount of itself, as `ip netns` does for
/// /run/netns, so namespace mounts under it propagate into mount namespaces created later
/// (a container runtime's) and can be unmounted from everywhere.
pub fn prepare_dir(dir: impl AsRef<Path>) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let dir = dir.as_ref();
    fs::create_dir_all(dir).map_err(|e| step_err(format!("create {}", dir.display()), e))?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    let shared_step = || format!("make {} shared", dir.display());
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(nix::Error::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| step_err(format!("bind-mount {}", dir.display()), e.into()))?;
            make_shared().map_err(|e| step_err(shared_step(), e.into()))
        }
        Err(e) => Err(step_err(shared_step(), e.into())),
    }
}

/// Undoes [`prepare_dir`] when no namespace is left in `dir`: unmounts it and removes it and
/// its parent if they are empty. Returns whether it did. Best effort (clean shutdown).
pub fn release_dir_if_empty(dir: impl AsRef<Path>) -> bool {
    let dir = dir.as_ref();
    let empty = fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty {
        let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(dir);
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    empty
}

fn step_err(step: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{step}: {e}"))
}

/// Writes `value` to the sysctl at `/proc/sys/<key>` (key with `/` separators, e.g.
/// `net/ipv4/ip_forward`) in the calling thread's network namespace, skipping the write when the
/// value is already set. Returns whether it wrote.
pub fn ensure_sysctl(key: &str, value: &str) -> io::Result<bool> {
    let path = Path::new("/proc/sys").join(key);
    let current = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))?;
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_is_not_a_netns() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!exists(f.path()));
        let err = Netns::open(f.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn namespaces_of_other_kinds_are_not_a_netns() {
        for (path, kind) in [
            ("/proc/self/ns/mnt", "a mount namespace"),
            ("/proc/self/ns/uts", "a UTS namespace"),
            ("/proc/self/ns/pid", "a PID namespace"),
        ] {
            assert!(!exists(path), "{path}");
            let err = Netns::open(path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{path}");
            assert_eq!(
                err.to_string(),
                format!("{path} is {kind}, not a network namespace")
            );
        }
        assert!(exists("/proc/self/ns/net"));
    }

    #[test]
    fn missing_path_is_not_a_netns() {
        assert!(!exists("/nonexistent/pnb-netns"));
        assert_eq!(
            Netns::open("/nonexistent/pnb-netns").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn own_netns_is_current() {
        let ns = Netns::open("/proc/self/ns/net").unwrap();
        assert!(ns.is_current().unwrap());
        // The closure runs on another thread but in the same namespace.
        let inside = ns
            .run(|| {
                Netns::open("/proc/thread-self/ns/net")
                    .unwrap()
                    .file
                    .metadata()
                    .unwrap()
                    .ino()
            })
            .unwrap();
        assert_eq!(inside, ns.file.metadata().unwrap().ino());
    }

    /// The namespace a socket was made in (ioctl SIOCGSKNS), as its nsfs inode.
    fn socket_netns(fd: i32) -> u64 {
        const SIOCGSKNS: libc::c_ulong = 0x894C;
        // SAFETY: SIOCGSKNS takes no argument and returns a new fd we own.
        let ns = unsafe { libc::ioctl(fd, SIOCGSKNS as _) };
        assert!(ns >= 0, "{}", io::Error::last_os_error());
        // SAFETY: the fd was just returned to us.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(ns) };
        f.metadata().unwrap().ino()
    }

    #[test]
    fn a_socket_opened_inside_lives_there_and_the_thread_comes_home() {
        /// Unbinds the namespace however the test ends.
        struct Bound(PathBuf);
        impl Drop for Bound {
            fn drop(&mut self) {
                let _ = remove(&self.0);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pnd-sock");
        create(&path).unwrap();
        let _bound = Bound(path.clone());
        let ns = Netns::open(&path).unwrap();
        let home = Netns::current().unwrap().file.metadata().unwrap().ino();
        let sock = ns
            .open_socket_in(|| netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE))
            .unwrap();
        assert_eq!(
            socket_netns(sock.as_raw_fd()),
            ns.file.metadata().unwrap().ino()
        );
        assert_eq!(
            Netns::current().unwrap().file.metadata().unwrap().ino(),
            home
        );
        // A failing open still brings the thread home.
        let err = ns
            .open_socket_in(|| -> io::Result<()> { Err(io::Error::other("no")) })
            .unwrap_err();
        assert_eq!(err.to_string(), "no");
        assert_eq!(
            Netns::current().unwrap().file.metadata().unwrap().ino(),
            home
        );
        drop(ns);
        remove(&path).unwrap();
        assert!(!exists(&path));
    }
}
