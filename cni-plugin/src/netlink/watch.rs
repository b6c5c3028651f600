//! Link-removal notices: a socket subscribed to this network namespace's link events, so that a
//! caller can act the moment the kernel has unlisted a link while the request deleting it still
//! waits in the kernel. Invariant: [`LinkRemoval::wait`] returns only once the kernel announced
//! the link's removal (`RTM_DELLINK`, sent after the `NETDEV_UNREGISTER` notifiers removed the
//! link's addresses, routes, neighbours and bridge port) or the deleter said it is over.
//!
//! Why: deleting a veth spends most of its time after that announcement, in `netdev_run_todo`'s
//! `rcu_barrier()` (10-20 ms here, see `perf sched timehist`); work that needs the link gone,
//! not destroyed, overlaps that wait instead of following it.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// rtnetlink's multicast group for link events (`RTNLGRP_LINK`).
const RTNLGRP_LINK: u32 = 1;

/// Waits for one link's removal; made before the deletion is asked for, so no notice is missed.
pub struct LinkRemoval {
    sock: Socket,
    over: UnixStream,
}

/// The deleter's end: dropping it (or [`DeletionOver::over`]) tells [`LinkRemoval::wait`] that
/// the deletion returned, whether or not a link was removed.
pub struct DeletionOver(#[allow(dead_code)] UnixStream);

impl DeletionOver {
    pub fn over(self) {}
}

impl LinkRemoval {
    /// Subscribes to link events in the caller's network namespace.
    pub fn watch() -> io::Result<(LinkRemoval, DeletionOver)> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.add_membership(RTNLGRP_LINK)?;
        let (over, deleter) = UnixStream::pair()?;
        Ok((LinkRemoval { sock, over }, DeletionOver(deleter)))
    }

    /// Blocks until the kernel announces that the link `name` is gone (true), or until the
    /// deleter's [`DeletionOver`] is dropped (false: the deletion returned first, failed, or
    /// there was no such link). A lost notice (the socket overran) or a socket error waits for
    /// the deleter.
    pub fn wait(self, name: &str) -> bool {
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut listening = true;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: if listening { libc::POLLIN } else { 0 },
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.over.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfd structs, owned for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return false;
            }
            if fds[0].revents != 0 {
                buf.clear();
                match self.sock.recv(&mut buf, libc::MSG_DONTWAIT) {
                    Ok(_) if announces_removal(&buf, name) => return true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // ENOBUFS (an overrun) or anything else: notices may be lost.
                    Err(_) => listening = false,
                }
            }
            if fds[1].revents != 0 {
                return false;
            }
        }
    }
}

/// Whether the datagram `buf` holds the `RTM_DELLINK` announcing that the link called `name`
/// is unregistered. Its family is `AF_UNSPEC`: the bridge sends an `AF_BRIDGE` `RTM_DELLINK`
/// for a port leaving it (in the middle of the unregistration, or on `nomaster`), which does
/// not count.
fn announces_removal(buf: &[u8], name: &str) -> bool {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || off + len > buf.len() {
            return false;
        }
        if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len]) {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = m.payload {
                let named = link.header.interface_family == AddressFamily::Unspec
                    && link
                        .attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name));
                if named {
                    return true;
                }
            }
        }
        off += len.div_ceil(4) * 4;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkMessage;
    use std::time::Duration;

    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut m = NetlinkMessage::from(m);
            m.finalize();
            let off = out.len();
            out.resize(off + m.buffer_len().div_ceil(4) * 4, 0);
            m.serialize(&mut out[off..off + m.buffer_len()]);
        }
        out
    }

    fn link(name: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    #[test]
    fn only_a_dellink_naming_the_link_counts() {
        let mut port_leaves = link("pnveth0");
        port_leaves.header.interface_family = AddressFamily::Bridge;
        let buf = datagram(vec![
            RouteNetlinkMessage::NewLink(link("pnveth0")),
            RouteNetlinkMessage::DelLink(port_leaves),
            RouteNetlinkMessage::DelLink(link("pnveth1")),
        ]);
        assert!(!announces_removal(&buf, "pnveth0"));
        assert!(announces_removal(&buf, "pnveth1"));
        assert!(!announces_removal(&buf[..20], "pnveth1"), "a cut message");
        assert!(!announces_removal(&[], "pnveth1"));
    }

    #[test]
    fn the_deleters_end_releases_the_waiter() {
        // Not root-only: an unprivileged process may subscribe to link events of its netns.
        let (removal, over) = LinkRemoval::watch().unwrap();
        let waiter = std::thread::spawn(move || removal.wait("pn-no-such-link"));
        over.over();
        assert!(!waiter.join().unwrap());
    }

    /// `ip` with `args` in namespace `ns`; panics on failure.
    fn ip(ns: &str, args: &str) {
        let mut full = vec!["-n", ns];
        full.extend(args.split_whitespace());
        let out = std::process::Command::new("ip")
            .args(&full)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {full:?}: {out:?}");
    }

    #[test]
    fn wakes_when_the_link_is_unregistered_not_when_it_leaves_its_bridge() {
        if unsafe { libc::geteuid() } != 0 {
            return; // needs a namespace of its own
        }
        struct Scratch(String);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .output();
            }
        }
        let ns = Scratch(format!("pnd-watch-{}", std::process::id()));
        let _ = std::process::Command::new("ip")
            .args(["netns", "add", &ns.0])
            .output();
        ip(&ns.0, "link add pndwbr type bridge");
        ip(
            &ns.0,
            "link add pndw0 master pndwbr up type veth peer name pndw1",
        );
        ip(&ns.0, "addr add 10.126.9.1/24 dev pndw0");
        let handle = crate::netns::Netns::open(format!("/run/netns/{}", ns.0)).unwrap();
        let (removal, over) = handle.run(LinkRemoval::watch).unwrap().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(removal.wait("pndw0")));
        // The bridge's AF_BRIDGE RTM_DELLINK for a port leaving it is not the link's removal.
        ip(&ns.0, "link set pndw0 nomaster");
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        ip(&ns.0, "link del pndw0");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        drop(over);
    }
}
