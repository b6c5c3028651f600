//! CHECK in routed mode: the host veth unbridged and carrying the next hop, one host route
//! per address, the container's /32s, routes and next-hop neighbours.

use super::{container_side, failed, start, Start};
use crate::bridge::config::BridgeConf;
use crate::bridge::cx::kernel;
use crate::bridge::features::{self, Features};
use crate::bridge::routed::{host_hop, host_route};
use crate::error::CniError;
use crate::invoke::Exec;
use crate::netlink::IpFamily;
use crate::skel::Request;
use crate::types::IpConfig;

/// CHECK in routed mode: IPAM reservation, host veth (up, unbridged, peer of the container
/// interface, carrying the next hop), one host route per address through it, the container's /32s, routes and
/// permanent next-hop neighbours, firewall rules and shaping.
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
    if veth.master.is_some() {
        return Err(failed(format!(
            "host interface {host_name} is a bridge port; routed mode has no bridge"
        )));
    }
    let ips: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .collect();

    let on_veth = host.addrs(veth.index, None).await.map_err(kernel)?;
    for family in [IpFamily::V4, IpFamily::V6] {
        let hop = host_hop(family);
        let used = ips
            .iter()
            .any(|ip| IpFamily::of(&ip.address.ip()) == family);
        if used && !on_veth.contains(&hop) {
            return Err(failed(format!(
                "host interface {host_name} lacks the next hop {hop}"
            )));
        }
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let mine: Vec<&&IpConfig> = ips
            .iter()
            .filter(|ip| IpFamily::of(&ip.address.ip()) == family)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let installed = host.routes(family, None).await.map_err(kernel)?;
        for ip in mine {
            let dst = host_route(ip.address.ip());
            if !installed
                .iter()
                .any(|r| r.dst == dst && r.oif == Some(veth.index) && r.gw.is_none())
            {
                return Err(failed(format!(
                    "host route {dst} dev {host_name} not found"
                )));
            }
        }
    }

    let (ctr, link) = container_side(req, &host_name, &veth, want).await?;
    let have = ctr.addrs(link.index, None).await.map_err(kernel)?;
    for ip in &ips {
        if !have.contains(&ip.address) {
            return Err(failed(format!(
                "interface {} lacks address {}",
                req.ifname, ip.address
            )));
        }
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let Some(hop) = ips
            .iter()
            .filter(|ip| IpFamily::of(&ip.address.ip()) == family)
            .find_map(|ip| ip.gateway)
        else {
            continue;
        };
        let neighbours = ctr.neighbours(link.index, family).await.map_err(kernel)?;
        let ok = neighbours
            .iter()
            .any(|n| n.ip == hop && n.permanent && n.mac == veth.mac);
        if !ok {
            return Err(failed(format!(
                "permanent neighbour {hop} lladdr {} not found on {}",
                veth.mac.map(|m| m.to_string()).unwrap_or_default(),
                req.ifname
            )));
        }
        let installed = ctr.routes(family, None).await.map_err(kernel)?;
        for r in prev
            .routes
            .iter()
            .filter(|r| IpFamily::of(&r.dst.ip()) == family && r.table.is_none())
        {
            if !installed
                .iter()
                .any(|i| i.dst == r.dst && i.gw == r.gw && i.oif == Some(link.index))
            {
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
