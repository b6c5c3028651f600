//! The shim's staging namespaces and link moves, as blocking calls over `plugnet::netns` and
//! `plugnet::netlink` (which own `unshare`/`setns` and every netlink message).
//!
//! Invariant: every call runs its netlink work on a fresh std thread that builds its own
//! current-thread tokio runtime BEFORE any namespace is entered (the library then opens the
//! staging-side socket on its own short-lived `setns` thread); so no tokio worker ever changes
//! namespace, tokio's process-wide sockets are born in the host namespace, and every socket
//! into a staging namespace is closed when the call returns (a socket would keep the staging
//! namespace alive after `remove`).

use plugnet::netlink::{Cause, Netlink, NetlinkError};
use std::future::Future;
use std::path::Path;

pub use plugnet::netns::{create, exists, prepare_dir, release_dir_if_empty, remove, Netns};

/// Opens the caller's current network namespace (the host's, at start-up).
pub fn current() -> std::io::Result<Netns> {
    Netns::current()
}

/// Runs the netlink job `f` to completion on a fresh thread with its own runtime.
fn run<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("shim-netlink".into())
            .spawn_scoped(scope, || plugnet::netlink::block_on(f())?)
            .map_err(|e| NetlinkError::io("spawn netlink thread", e))?
            .join()
            .map_err(|_| NetlinkError::protocol("netlink thread", "panicked"))?
    })
}

/// Moves `ifname` out of the namespace at `ns` into `target`, renamed to `new_name`, down.
/// Returns the name of its peer in `target` (veth), if it has one there.
pub fn move_out(
    ns: &Path,
    ifname: &str,
    target: &Netns,
    new_name: &str,
) -> Result<Option<String>, NetlinkError> {
    run(|| async {
        let staging = Netlink::in_netns(ns)?;
        let link = staging.link_by_name(ifname).await?.ok_or_else(|| {
            NetlinkError::new(
                format!("find {ifname} in staging netns {}", ns.display()),
                Cause::Kernel(libc::ENODEV),
            )
        })?;
        staging
            .move_link_to_netns(link.index, target.fd(), new_name)
            .await?;
        drop(staging);
        // The peer index is one in the target namespace.
        let Some(peer) = link.link else {
            return Ok(None);
        };
        let there = if target.is_current().unwrap_or(false) {
            Netlink::host()?
        } else {
            Netlink::in_open_netns(target)?
        };
        Ok(there.link_by_index(peer).await?.map(|l| l.name))
    })
}

/// True when a link called `name` exists in the caller's namespace.
pub fn link_exists(name: &str) -> Result<bool, NetlinkError> {
    run(|| async { Ok(Netlink::host()?.link_by_name(name).await?.is_some()) })
}

/// Deletes link `name` from the caller's namespace; absent is success.
pub fn delete_link(name: &str) -> Result<(), NetlinkError> {
    run(|| async {
        match Netlink::host()?.del_link_by_name(name).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    })
}

/// Deletes bridge `name` if no port is enslaved to it. Returns whether it was deleted.
pub fn delete_bridge_if_unused(name: &str) -> Result<bool, NetlinkError> {
    run(|| async { Netlink::host()?.del_bridge_if_unused(name).await })
}

#[cfg(test)]
mod tests {
    //! Kernel test of the adapter: needs root; skipped otherwise. Objects are named
    //! `pnz-sh-<pid>` (netns, in a private temp dir) and `pnzs*`/`pnzp*` (links).
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    struct Cleanup(Vec<std::path::PathBuf>, Vec<String>);
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
    fn staging_netns_roundtrip_and_move_out() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let ns = dir.path().join(format!("pnz-sh-{pid}"));
        let tmp = format!("pnzs{}", pid % 100000);
        let peer = format!("pnzp{}", pid % 100000);
        let _c = Cleanup(vec![ns.clone()], vec![tmp.clone(), peer.clone()]);
        create(&ns).unwrap();
        assert!(exists(&ns));
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
        let err = move_out(&ns, "eth0", &host, &tmp).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        // Back in, so the pair dies with the namespace.
        let st = std::process::Command::new("ip")
            .args(["link", "set", &tmp, "netns"])
            .arg(&ns)
            .status()
            .unwrap();
        assert!(st.success());
        remove(&ns).unwrap();
        remove(&ns).unwrap();
        assert!(!exists(&ns));
        // Nothing of ours pins the namespace: the veth pair goes with it (asynchronously).
        let mut gone = false;
        for _ in 0..100 {
            if !link_exists(&peer).unwrap() {
                gone = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(gone, "peer {peer} outlived its netns");
        delete_link(&peer).unwrap(); // absent is success
    }
}
