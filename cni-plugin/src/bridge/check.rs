//! CHECK: the attachment still looks the way ADD left it, judged against `prevResult`:
//! IPAM reservation, bridge, host veth on the bridge, container interface (peer of that veth,
//! MAC), its addresses and its routes.

use super::config::BridgeConf;
use super::cx::kernel;
use super::features::{self, Features};
use super::{ipam, naming};
use crate::error::CniError;
use crate::invoke::Exec;
use crate::netlink::{IpFamily, Link, Netlink};
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
    let host_name = naming::host_veth_name(&req.container_id, &req.ifname);
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

pub async fn check(
    exec: &dyn Exec,
    conf: &BridgeConf,
    feats: &Features,
    req: &Request,
) -> Result<(), CniError> {
    let Start {
        prev,
        host,
        host_name,
        veth,
        idx,
        want,
    } = start(exec, conf, req).await?;
    let br = host
        .link_by_name(&conf.bridge)
        .await
        .map_err(kernel)?
        .filter(|l| l.is_bridge())
        .ok_or_else(|| failed(format!("bridge {} not found", conf.bridge)))?;
    if veth.master != Some(br.index) {
        return Err(failed(format!(
            "host interface {host_name} is not a port of bridge {}",
            conf.bridge
        )));
    }
    let (ctr, link) = container_side(req, &host_name, &veth, want).await?;

    let have = ctr.addrs(link.index, None).await.map_err(kernel)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(idx)) {
        if !have.contains(&ip.address) {
            return Err(failed(format!(
                "interface {} lacks address {}",
                req.ifname, ip.address
            )));
        }
    }

    for family in [IpFamily::V4, IpFamily::V6] {
        let wanted: Vec<_> = prev
            .routes
            .iter()
            .filter(|r| IpFamily::of(&r.dst.ip()) == family)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let mut installed = Vec::new();
        for table in wanted
            .iter()
            .map(|r| r.table)
            .collect::<std::collections::BTreeSet<_>>()
        {
            installed.extend(ctr.routes(family, table).await.map_err(kernel)?);
        }
        for r in wanted {
            let found = installed
                .iter()
                .any(|i| i.dst == r.dst && (r.gw.is_none() || i.gw == r.gw));
            if !found {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(failed(format!(
                    "route {}{via} not found in the container",
                    r.dst
                )));
            }
        }
    }
    features::check(feats, conf, req, &host, &host_name, prev).await
}
