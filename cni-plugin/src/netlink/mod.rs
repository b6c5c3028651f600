//! netlink: the only module that speaks rtnetlink. A small vocabulary (`ensure_bridge`,
//! `create_veth_pair`, `add_addr`, `add_route`, `set_up`, `del_link`, `link_by_name`,
//! `set_permanent_neighbour`, `move_link_to_netns`, tc qdiscs and filters, the cluster data
//! plane's VXLAN devices, FDB entries and tagged routes (`overlay`), …) over
//! ONE connection per network namespace, reused for every request.
//!
//! Invariants: nothing outside this module builds a netlink message; the socket for another
//! namespace is opened on a thread that entered it with `setns` (see [`crate::netns`]) and is
//! then driven on the caller's tokio runtime; every error names its step and keeps the errno.

mod addr;
mod blocking;
mod error;
mod link;
mod mac;
mod neigh;
mod overlay;
mod route;
mod tc;
mod watch;

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::Handle;

pub use addr::{first_host, IpFamily};
pub use blocking::block_on;
pub use error::{Cause, NetlinkError};
pub use link::{BridgeOptions, Link, LinkStats, VethOptions, VethPair};
pub use mac::Mac;
pub use neigh::Neighbour;
pub use overlay::{
    link_local_of, FdbEntry, TaggedRoute, Vxlan, VxlanOptions, PLUGNET_RTPROT, VXLAN_PORT,
};
pub use route::RouteSpec;
pub use tc::{tbf_options, Qdisc, QdiscParent};
pub use watch::{DeletionOver, LinkRemoval};

use crate::netns::Netns;

/// One rtnetlink connection bound to one network namespace.
pub struct Netlink {
    handle: Handle,
    sent: AtomicU32,
}

impl Netlink {
    /// A connection in the caller's network namespace (the runtime's, i.e. the host's).
    /// Must be called inside a tokio runtime, which then drives the connection.
    pub fn host() -> Result<Self, NetlinkError> {
        let socket = open_socket().map_err(|e| NetlinkError::io("open netlink socket", e))?;
        Self::from_socket(socket)
    }

    /// A connection inside the namespace at `path` (e.g. `CNI_NETNS`).
    pub fn in_netns(path: impl AsRef<Path>) -> Result<Self, NetlinkError> {
        let path = path.as_ref();
        let ns = Netns::open(path)
            .map_err(|e| NetlinkError::io(format!("open netns {}", path.display()), e))?;
        Self::in_open_netns(&ns)
    }

    /// A connection inside an already opened namespace.
    pub fn in_open_netns(ns: &Netns) -> Result<Self, NetlinkError> {
        let step = || format!("open netlink socket in netns {}", ns.path().display());
        let socket = ns
            .open_socket_in(open_socket)
            .map_err(|e| NetlinkError::io(step(), e))?;
        Self::from_socket(socket)
    }

    fn from_socket(socket: Socket) -> Result<Self, NetlinkError> {
        // SAFETY: the fd comes straight from a Socket we own; ownership moves into TokioSocket.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            sent: AtomicU32::new(0),
        })
    }

    /// How many requests this connection has sent (each is one kernel round trip).
    pub fn requests_sent(&self) -> u32 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends one request and collects the kernel's answers (dump parts, echoes). An error
    /// message from the kernel becomes `Cause::Kernel(errno)` named by `step`.
    async fn exchange(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        step: &dyn Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut req = NetlinkMessage::from(message);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(req)
            .map_err(|_| NetlinkError::protocol(step(), "netlink connection closed"))?;
        let mut out = Vec::new();
        while let Some(msg) = answers.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::new(step(), Cause::Kernel(e.raw_code().abs())));
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(NetlinkError::protocol(step(), "netlink buffer overrun"));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// One request the kernel only acknowledges (set, delete, add without echo; `flags` on top
    /// of REQUEST|ACK, e.g. CREATE|EXCL): `Ok` or the errno, named by `step`.
    async fn command(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        step: &dyn Fn() -> String,
    ) -> Result<(), NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags, step)
            .await
            .map(drop)
    }
}

fn open_socket() -> std::io::Result<Socket> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    // Make the kernel honour the filters of dump requests (addresses of one link, routes of
    // one table) instead of dumping everything.
    socket.set_netlink_get_strict_chk(true)?;
    Ok(socket)
}
