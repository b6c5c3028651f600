//! What every step of one ADD reads ([`Cx`]: the request, its parsed configuration and
//! features, the namespaces and connections), and the one place a netlink failure becomes a
//! CNI error; invariant: nothing here changes the kernel.

use crate::error::CniError;
use crate::invoke::Exec;
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::Netns;
use crate::skel::Request;

use super::config::BridgeConf;
use super::features::Features;

/// The context of one ADD's steps (bridge and routed mode alike); the undo list travels
/// beside it, as the one thing the steps change.
#[derive(Clone, Copy)]
pub(super) struct Cx<'a> {
    /// Runs delegated IPAM plugins.
    pub exec: &'a dyn Exec,
    pub conf: &'a BridgeConf,
    pub feats: &'a Features,
    pub req: &'a Request,
    /// The container's namespace (the plugin's own for a handoff).
    pub ns: &'a Netns,
    /// The connection in the host namespace.
    pub host: &'a Netlink,
}

/// The one place a netlink failure becomes a CNI error (keeping its errno).
pub(crate) fn kernel(e: NetlinkError) -> CniError {
    CniError::internal(e.to_string()).with_errno(e.errno())
}
