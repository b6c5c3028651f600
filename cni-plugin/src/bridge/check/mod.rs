//! CHECK: the attachment still looks the way ADD left it, judged against `prevResult`. This
//! file is the part both modes share (the IPAM reservation, the host veth, the container
//! interface and what `prevResult` says of it); `bridge` and `routed` are the halves
//! that differ; invariant: CHECK only reads.

pub(super) mod bridge;
pub(super) mod routed;

use crate::attachment::AttachmentId;
use crate::bridge::config::BridgeConf;
use crate::bridge::cx::kernel;
use crate::bridge::ipam;
use crate::error::CniError;
use crate::invoke::Exec;
use crate::netlink::{Link, Netlink};
use crate::skel::{Command, Request};
use crate::types::{CniResult, Interface};

pub(super) fn failed(msg: impl Into<String>) -> CniError {
    CniError::internal(msg)
}

/// The container side every mode checks the same way: the interface exists in `CNI_NETNS`, is
/// the peer of the host veth and carries the MAC the result names. Returns the container's
/// netlink connection and the interface.
pub(super) async fn container_side(
    req: &Request,
    host_name: &str,
    veth: &Link,
    want: &Interface,
) -> Result<(Netlink, Link), CniError> {
    let netns = req
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("required env variables [CNI_NETNS] missing"))?;
    let ctr = Netlink::in_netns(netns).map_err(kernel)?;
    let link = ctr
        .link_by_name(&req.ifname)
        .await
        .map_err(kernel)?
        .ok_or_else(|| {
            failed(format!(
                "interface {} not found in {}",
                req.ifname,
                netns.display()
            ))
        })?;
    if veth.link != Some(link.index) {
        return Err(failed(format!(
            "interface {} is not the peer of host interface {host_name}",
            req.ifname
        )));
    }
    if let (Some(want), Some(have)) = (&want.mac, link.mac) {
        if !want.eq_ignore_ascii_case(&have.to_string()) {
            return Err(failed(format!(
                "interface {} has MAC {have}, expected {want}",
                req.ifname
            )));
        }
    }
    Ok((ctr, link))
}

/// What CHECK starts from in every mode, once `prevResult` and the IPAM reservation passed:
/// the host connection, the attachment's host veth (by its derived name) and the container
/// interface `prevResult` names, with its index there.
pub(super) struct Start<'a> {
    pub prev: &'a CniResult,
    pub host: Netlink,
    pub host_name: String,
    pub veth: Link,
    pub idx: usize,
    pub want: &'a Interface,
}

pub(super) async fn start<'a>(
    exec: &dyn Exec,
    conf: &BridgeConf,
    req: &'a Request,
) -> Result<Start<'a>, CniError> {
    let prev = req
        .config
        .prev_result
        .as_ref()
        .ok_or_else(|| failed("Required prevResult missing"))?;
    ipam::exec(exec, &conf.ipam, Command::Check, req)?;
    let host = Netlink::host().map_err(kernel)?;
    let host_name = AttachmentId::of(req).host_veth();
    let veth = host
        .link_by_name(&host_name)
        .await
        .map_err(kernel)?
        .ok_or_else(|| failed(format!("host interface {host_name} not found")))?;
    if !veth.up {
        return Err(failed(format!("host interface {host_name} is down")));
    }
    let (idx, want) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == req.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in a sandbox",
                req.ifname
            ))
        })?;
    Ok(Start {
        prev,
        host,
        host_name,
        veth,
        idx,
        want,
    })
}
