//! Routed mode (`"mode": "routed"`): one veth pair per container and no bridge. The container
//! carries its IPAM address as /32 (IPv6 /128) and reaches everything through a fixed link-local
//! next hop on its interface (169.254.1.1, fe80::1); the host routes each container's /32 to its
//! host veth, so containers reach each other and the host through the host's routing table.
//!
//! Invariants: the host side answers for the next hop in two ways, so any runtime works —
//! a permanent neighbour entry in the container (written here) and, for runtimes that configure
//! the interface themselves (Docker through the shim), the next hop itself on the host veth
//! (169.254.1.1/32, fe80::1/64: the kernel answers ARP/NDP for it at once, with no proxy delay
//! and no dependence on the host's other routes). Everything on the host hangs off the host veth: deleting it
//! (DEL) takes the host routes with it. The CNI result says exactly what was configured: /32
//! addresses, the next-hop and default routes, [host veth, container interface].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::cx::{kernel, Cx};
use super::undo::Undo;
use super::{ipam, setup};
use crate::attachment::AttachmentId;
use crate::error::{CniError, ErrorCode};
use crate::netlink::{IpFamily, Link, Mac, Netlink, RouteSpec, VethPair};
use crate::netns::{self};
use crate::types::{CniResult, IpConfig, Route};

/// The IPv4 next hop every routed container uses (an address of every routed host veth).
pub const NEXT_HOP_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 next hop: a link-local address on every routed host veth.
pub const NEXT_HOP_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The index of the container interface in a routed result's `interfaces`.
const CONTAINER_IFACE: usize = 1;

/// The next hop of `family`.
pub fn next_hop(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(NEXT_HOP_V4),
        IpFamily::V6 => IpAddr::V6(NEXT_HOP_V6),
    }
}

pub(super) fn host_route(ip: IpAddr) -> IpNetwork {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, prefix).expect("full-length prefix")
}

/// What the container gets: its addresses as host routes, each with the family's next hop as
/// gateway; the next-hop routes, a default route per family (unless IPAM gave one) and IPAM's
/// other routes, all through the next hop.
pub fn plan(ipam: &CniResult) -> (Vec<IpConfig>, Vec<Route>) {
    let ips: Vec<IpConfig> = ipam
        .ips
        .iter()
        .map(|ip| IpConfig {
            address: host_route(ip.address.ip()),
            gateway: Some(next_hop(IpFamily::of(&ip.address.ip()))),
            interface: Some(CONTAINER_IFACE),
        })
        .collect();
    let mut routes = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        if !ips
            .iter()
            .any(|ip| IpFamily::of(&ip.address.ip()) == family)
        {
            continue;
        }
        let hop = next_hop(family);
        routes.push(Route::to(host_route(hop)));
        let mut theirs: Vec<Route> = ipam
            .routes
            .iter()
            .filter(|r| IpFamily::of(&r.dst.ip()) == family)
            .cloned()
            .map(|mut r| {
                r.gw = Some(hop);
                r
            })
            .collect();
        if !theirs.iter().any(|r| r.dst.prefix() == 0) {
            let any = match family {
                IpFamily::V4 => IpNetwork::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                IpFamily::V6 => IpNetwork::new(Ipv6Addr::UNSPECIFIED.into(), 0),
            }
            .expect("default network");
            let mut default = Route::to(any);
            default.gw = Some(hop);
            routes.push(default);
        }
        routes.append(&mut theirs);
    }
    (ips, routes)
}

/// ADD in routed mode. Registers every undo it needs on `undo` (the caller rolls back).
pub(super) async fn add_steps(cx: &Cx<'_>, undo: &mut Undo) -> Result<CniResult, CniError> {
    let Cx {
        exec,
        conf,
        feats,
        req,
        ns,
        host,
    } = *cx;
    let (from_ipam, durable) = ipam::add(exec, &conf.ipam, req)?;
    undo.release_ipam();
    if from_ipam.ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "routed mode needs addresses: the IPAM returned none",
        ));
    }
    let (ips, routes) = plan(&from_ipam);
    let has = |f: IpFamily| ips.iter().any(|ip| IpFamily::of(&ip.address.ip()) == f);
    let (v4, v6) = (has(IpFamily::V4), has(IpFamily::V6));

    let host_name = AttachmentId::of(req).host_veth();
    // The cluster network's file is read only when the configuration sets no MTU.
    let mtu = match conf.mtu.or_else(|| crate::ipam::cluster::mtu_of(&req.raw)) {
        Some(m) => Some(m),
        None => host.default_route_mtu().await.map_err(kernel)?,
    };
    let pair = setup::veth(conf, req, host, ns, None, &host_name, mtu).await?;
    undo.delete_link(host_name.clone());
    let host_mac = pair
        .host
        .mac
        .ok_or_else(|| CniError::internal(format!("host veth {host_name} has no MAC")))?;
    host.set_alias(pair.host.index, &AttachmentId::of(req).alias())
        .await
        .map_err(kernel)?;
    host_side(host, &pair.host, v4, v6).await?;

    if conf.handoff.is_none() {
        let ctr = Netlink::in_open_netns(ns).map_err(kernel)?;
        container(&ctr, pair.peer_index, host_mac, &ips, &routes).await?;
    }

    for ip in &ips {
        let mut r = RouteSpec::new(ip.address);
        r.oif = Some(pair.host.index);
        match host.add_route(&r).await {
            Ok(()) => {}
            Err(e) if e.is_exists() => {
                return Err(kernel(e).details(format!(
                    "the host already routes {} elsewhere: is the address used by another \
                     network?",
                    ip.address
                )))
            }
            Err(e) => return Err(kernel(e)),
        }
    }

    let result = result(cx, &pair, &host_name, mtu, ips, routes, from_ipam);
    // ipMasq, port mappings, egress rules and bandwidth key on the host veth, as in bridge mode.
    feats
        .apply(conf, req, host, &host_name, &result, undo)
        .await?;
    ipam::durable(durable)?;
    Ok(result)
}

/// The next hop's address on the host veth of `family`: 169.254.1.1/32, fe80::1/64.
pub(super) fn host_hop(family: IpFamily) -> IpNetwork {
    match family {
        IpFamily::V4 => IpNetwork::new(IpAddr::V4(NEXT_HOP_V4), 32),
        IpFamily::V6 => IpNetwork::new(IpAddr::V6(NEXT_HOP_V6), 64),
    }
    .expect("valid prefix")
}

/// The host veth carries the next hop (every routed veth the same address: the kernel answers
/// ARP/NDP for it on each) and the host forwards.
async fn host_side(host: &Netlink, veth: &Link, v4: bool, v6: bool) -> Result<(), CniError> {
    for (on, family, key) in [
        (v4, IpFamily::V4, "net/ipv4/ip_forward"),
        (v6, IpFamily::V6, "net/ipv6/conf/all/forwarding"),
    ] {
        if !on {
            continue;
        }
        match host.add_addr(veth.index, host_hop(family)).await {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(kernel(e)),
        }
        netns::ensure_sysctl(key, "1")
            .map_err(|e| CniError::internal(format!("enable forwarding: {e}")))?;
    }
    Ok(())
}

/// The container side: addresses (IPv6 without DAD), up, permanent neighbours for the next
/// hops, then the routes (next hop on-link first).
async fn container(
    ctr: &Netlink,
    index: u32,
    host_mac: Mac,
    ips: &[IpConfig],
    routes: &[Route],
) -> Result<(), CniError> {
    for ip in ips {
        ctr.add_addr(index, ip.address).await.map_err(kernel)?;
    }
    ctr.set_up(index).await.map_err(kernel)?;
    let mut hops: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.gateway).collect();
    hops.dedup();
    for hop in hops {
        ctr.set_permanent_neighbour(index, hop, host_mac)
            .await
            .map_err(kernel)?;
    }
    for r in routes {
        let mut spec = RouteSpec::new(r.dst);
        spec.gw = r.gw;
        spec.oif = Some(index);
        spec.mtu = r.mtu;
        spec.advmss = r.advmss;
        spec.priority = r.priority;
        spec.table = r.table;
        match ctr.add_route(&spec).await {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(kernel(e)),
        }
    }
    Ok(())
}

fn result(
    cx: &Cx<'_>,
    pair: &VethPair,
    host_name: &str,
    mtu: Option<u32>,
    ips: Vec<IpConfig>,
    routes: Vec<Route>,
    from_ipam: CniResult,
) -> CniResult {
    CniResult {
        interfaces: setup::veth_interfaces(cx.req, pair, host_name, mtu).into(),
        ips,
        routes,
        dns: cx.conf.dns.clone().unwrap_or(from_ipam.dns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(addrs: &[&str], routes: &[&str]) -> CniResult {
        CniResult {
            ips: addrs
                .iter()
                .map(|a| IpConfig {
                    address: a.parse().unwrap(),
                    gateway: Some("100.70.0.1".parse().unwrap()),
                    interface: None,
                })
                .collect(),
            routes: routes
                .iter()
                .map(|r| Route::to(r.parse().unwrap()))
                .collect(),
            ..CniResult::default()
        }
    }

    #[test]
    fn plan_gives_host_routes_next_hops_and_defaults() {
        let (ips, routes) = plan(&ipam(&["100.70.0.5/16", "fd11:70::5/64"], &[]));
        let shown: Vec<String> = ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(shown, vec!["100.70.0.5/32", "fd11:70::5/128"]);
        assert_eq!(ips[0].gateway, Some("169.254.1.1".parse().unwrap()));
        assert_eq!(ips[1].gateway, Some("fe80::1".parse().unwrap()));
        assert!(ips.iter().all(|i| i.interface == Some(1)));
        let shown: Vec<String> = routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gw.map(|g| g.to_string())))
            .collect();
        assert_eq!(
            shown,
            vec![
                "169.254.1.1/32 None",
                "0.0.0.0/0 Some(\"169.254.1.1\")",
                "fe80::1/128 None",
                "::/0 Some(\"fe80::1\")",
            ]
        );
    }

    #[test]
    fn ipam_routes_go_through_the_next_hop_and_its_default_wins() {
        let (_, routes) = plan(&ipam(&["100.70.0.5/16"], &["0.0.0.0/0", "10.110.0.0/16"]));
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[1].dst.to_string(), "0.0.0.0/0");
        assert_eq!(routes[2].dst.to_string(), "10.110.0.0/16");
        assert!(routes[1..]
            .iter()
            .all(|r| r.gw == Some(IpAddr::V4(NEXT_HOP_V4))));
    }
}
