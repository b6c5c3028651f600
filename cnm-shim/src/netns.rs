//! Staging network namespaces and the few link moves the shim needs (rtnetlink).
//!
//! Invariant: `unshare`/`setns` happen only on a short-lived std thread spawned for that one
//! job (never on a tokio worker or the caller's thread); every netlink socket is opened on the
//! thread that is in the namespace it talks to. Removal is idempotent. (To be folded into
//! `plugnet::netlink`/`plugnet::netns` once those land on main.)

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::{Handle, LinkUnspec};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

fn nix_err(step: &str, e: nix::Error) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{step}: {e}"))
}

fn nl_err(step: &str, e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let io = m.to_io();
            io::Error::new(io.kind(), format!("{step}: {io}"))
        }
        other => io::Error::other(format!("{step}: {other}")),
    }
}

fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(libc::ENODEV))
}

/// Run `f` with a netlink handle opened inside the namespace at `ns` (None: the caller's).
fn with_netlink<T, F, Fut>(ns: Option<&Path>, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<T>>,
{
    let ns_file =
        match ns {
            Some(p) => Some(File::open(p).map_err(|e| {
                io::Error::new(e.kind(), format!("open netns {}: {e}", p.display()))
            })?),
            None => None,
        };
    std::thread::spawn(move || -> io::Result<T> {
        // Build the runtime before entering the namespace: tokio lazily creates process-wide
        // sockets (its signal pipe) with the first runtime, and a socket pins its netns.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        if let Some(f) = &ns_file {
            setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| nix_err("setns", e))?;
        }
        // The connection runs beside the work on this thread and is dropped with it, closing
        // the socket (a socket would keep a staging namespace alive).
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::select! {
                r = f(handle) => r,
                _ = conn => Err(io::Error::other("netlink connection closed")),
            }
        })
    })
    .join()
    .map_err(|_| io::Error::other("netlink thread panicked"))?
}

async fn link_by_name(h: &Handle, name: &str) -> io::Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if is_enodev(&e) => Ok(None),
        Err(e) => Err(nl_err(&format!("get link {name}"), e)),
    }
}

async fn link_by_index(h: &Handle, index: u32) -> io::Result<Option<LinkMessage>> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(m) => Ok(m),
        Err(e) if is_enodev(&e) => Ok(None),
        Err(e) => Err(nl_err(&format!("get link #{index}"), e)),
    }
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Make `dir` a shared bind mount of itself (as `ip netns` does for /run/netns), so netns
/// mounts under it propagate consistently into mount namespaces created later.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| nix_err(&format!("bind-mount {}", dir.display()), e))?;
            shared().map_err(|e| nix_err(&format!("make {} shared", dir.display()), e))
        }
        Err(e) => Err(nix_err(&format!("make {} shared", dir.display()), e)),
    }
}

/// Undo [`prepare_dir`] when no staging namespace is left in `dir` (clean shutdown).
pub fn release_dir_if_empty(dir: &Path) {
    if fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
    {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(dir);
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// True when `path` is a mounted network namespace.
pub fn exists(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    nix::sys::statfs::fstatfs(&f)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Create a new network namespace bound at `path` (a stale one there is replaced).
pub fn create(path: &Path) -> io::Result<()> {
    if path.exists() {
        remove(path)?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
    let target: PathBuf = path.to_path_buf();
    let res = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| nix_err("unshare netns", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| nix_err(&format!("bind netns to {}", target.display()), e))
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?;
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

/// Unmount and remove a namespace file; absent is success.
pub fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(nix_err(&format!("unmount {}", path.display()), e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("remove {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Open the caller's current network namespace (the host's, at start-up).
pub fn current() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Move `ifname` out of the namespace at `ns` into `target` (an open netns fd), renamed to
/// `new_name`, down. Returns the name of its peer in `target` (veth), if it has one there.
pub fn move_out(
    ns: &Path,
    ifname: &str,
    target: &File,
    new_name: &str,
) -> io::Result<Option<String>> {
    let ns_file = File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {}: {e}", ns.display())))?;
    let (ifname, new_name) = (ifname.to_string(), new_name.to_string());
    let fd = target.as_raw_fd();
    // One thread: a socket in the caller's (host) namespace opened first, then one inside.
    std::thread::spawn(move || -> io::Result<Option<String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (host_conn, host, _) = rt.block_on(async { rtnetlink::new_connection() })?;
        setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(|e| nix_err("setns", e))?;
        rt.block_on(async move {
            let (conn, h, _) = rtnetlink::new_connection()?;
            let work = async move {
                let link = link_by_name(&h, &ifname).await?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no link {ifname} in staging netns"),
                    )
                })?;
                let peer = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Link(i) => Some(*i),
                    _ => None,
                });
                h.link()
                    .set(
                        LinkUnspec::new_with_index(link.header.index)
                            .down()
                            .setns_by_fd(fd)
                            .name(new_name.clone())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| nl_err(&format!("move {ifname} to the host as {new_name}"), e))?;
                // The peer index is in the target namespace, the host's.
                match peer {
                    Some(idx) => Ok(link_by_index(&host, idx)
                        .await?
                        .as_ref()
                        .and_then(link_name)),
                    None => Ok(None),
                }
            };
            tokio::select! {
                r = work => r,
                _ = conn => Err(io::Error::other("netlink connection closed")),
                _ = host_conn => Err(io::Error::other("netlink connection closed")),
            }
        })
    })
    .join()
    .map_err(|_| io::Error::other("netlink thread panicked"))?
}

/// Move `name` from the caller's namespace into the namespace at `ns`, renamed to
/// `new_name`. Returns false when there is no such link (already gone).
pub fn move_in(name: &str, ns: &Path, new_name: &str) -> io::Result<bool> {
    let ns_file = File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {}: {e}", ns.display())))?;
    let (name, new_name) = (name.to_string(), new_name.to_string());
    with_netlink(None, move |h| async move {
        let Some(link) = link_by_name(&h, &name).await? else {
            return Ok(false);
        };
        h.link()
            .set(
                LinkUnspec::new_with_index(link.header.index)
                    .down()
                    .setns_by_fd(ns_file.as_raw_fd())
                    .name(new_name.clone())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| nl_err(&format!("move {name} into staging netns as {new_name}"), e))?;
        Ok(true)
    })
}

/// True when a link called `name` exists in the caller's namespace.
pub fn link_exists(name: &str) -> io::Result<bool> {
    let name = name.to_string();
    with_netlink(None, move |h| async move {
        Ok(link_by_name(&h, &name).await?.is_some())
    })
}

/// Delete link `name` from the caller's namespace; absent is success.
pub fn delete_link(name: &str) -> io::Result<()> {
    let name = name.to_string();
    with_netlink(None, move |h| async move {
        let Some(link) = link_by_name(&h, &name).await? else {
            return Ok(());
        };
        match h.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_enodev(&e) => Ok(()),
            Err(e) => Err(nl_err(&format!("delete link {name}"), e)),
        }
    })
}

/// Delete bridge `name` if no port is enslaved to it. Returns whether it was deleted.
pub fn delete_bridge_if_unused(name: &str) -> io::Result<bool> {
    let name = name.to_string();
    with_netlink(None, move |h| async move {
        let Some(br) = link_by_name(&h, &name).await? else {
            return Ok(false);
        };
        let idx = br.header.index;
        let mut links = h.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| nl_err("list links", e))?
        {
            if l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == idx))
            {
                return Ok(false);
            }
        }
        h.link()
            .del(idx)
            .execute()
            .await
            .map_err(|e| nl_err(&format!("delete bridge {name}"), e))?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    //! Kernel tests: need root; skipped otherwise. Objects are named `pns-t-<pid>-*`.
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    struct Cleanup(Vec<PathBuf>, Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for l in &self.1 {
                let _ = delete_link(l);
            }
            for p in &self.0 {
                let _ = remove(p);
            }
        }
    }

    #[test]
    fn staging_netns_roundtrip_and_link_moves() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let ns = dir.path().join(format!("pns-t-{pid}"));
        let tmp = format!("pnst{}", pid % 100000);
        let peer = format!("pnsp{}", pid % 100000);
        let _c = Cleanup(vec![ns.clone()], vec![tmp.clone(), peer.clone()]);
        create(&ns).unwrap();
        assert!(exists(&ns));
        create(&ns).unwrap(); // replacing a stale one works
                              // A veth with one end in the staging netns, the other in the host.
        let st = std::process::Command::new("ip")
            .args([
                "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns",
            ])
            .arg(&ns)
            .status()
            .unwrap();
        assert!(st.success());
        let host = current().unwrap();
        let got = move_out(&ns, "eth0", &host, &tmp).unwrap();
        assert_eq!(got.as_deref(), Some(peer.as_str()));
        assert!(link_exists(&tmp).unwrap());
        assert!(move_in(&tmp, &ns, "eth0").unwrap());
        assert!(!link_exists(&tmp).unwrap());
        assert!(
            !move_in(&tmp, &ns, "eth0").unwrap(),
            "absent link is reported, not an error"
        );
        remove(&ns).unwrap();
        remove(&ns).unwrap();
        assert!(!exists(&ns));
        // The netns died with its mount: the veth pair goes with it (asynchronously).
        let mut gone = false;
        for _ in 0..100 {
            if !link_exists(&peer).unwrap() {
                gone = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(gone, "peer {peer} outlived its netns");
    }
}
