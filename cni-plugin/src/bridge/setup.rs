//! The steps of a bridge ADD, each small and named; `bridge/mod.rs` sequences them.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::config::BridgeConf;
use super::cx::kernel;
use crate::attachment::{owner_alias, owner_mac};
use crate::error::{CniError, ErrorCode};
use crate::netlink::{
    first_host, BridgeOptions, IpFamily, Link, Netlink, RouteSpec, VethOptions, VethPair,
};
use crate::netns::{self, Netns};
use crate::skel::Request;
use crate::types::{CniResult, Interface, Route};

/// The index of the container interface in the result's `interfaces`.
const CONTAINER_IFACE: usize = 2;

/// The bridge, created when missing. A new bridge gets the configured MTU or, by default, the
/// MTU of the link carrying the host's default route (the reference plugin leaves the kernel's
/// 1500, which breaks on overlays and clouds with smaller MTUs); an existing bridge keeps its own.
pub async fn bridge(conf: &BridgeConf, host: &Netlink) -> Result<Link, CniError> {
    let mut opts = BridgeOptions {
        name: conf.bridge.clone(),
        mtu: conf.mtu,
        promisc: conf.promisc_mode,
        vlan_filtering: conf.uses_vlans(),
    };
    let made = match host.link_by_name(&conf.bridge).await.map_err(kernel)? {
        Some(existing) => host.adopt_bridge(existing, &opts).await,
        None => {
            if opts.mtu.is_none() {
                opts.mtu = host.default_route_mtu().await.map_err(kernel)?;
            }
            host.ensure_bridge(&opts).await
        }
    };
    made.map_err(|e| match e.errno() {
        Some(libc::EOPNOTSUPP) if opts.vlan_filtering => no_vlan_filtering(conf, &e),
        _ => kernel(e),
    })
}

/// The bridge refused VLAN filtering: a kernel built without `CONFIG_BRIDGE_VLAN_FILTERING`
/// answers EOPNOTSUPP. Names the feature and the configuration keys that asked for it; the
/// kernel's error (and its errno) stays in the message.
fn no_vlan_filtering(conf: &BridgeConf, e: &crate::netlink::NetlinkError) -> CniError {
    let mut keys = Vec::new();
    if let Some(vid) = conf.vlan {
        keys.push(format!("\"vlan\": {vid}"));
    }
    if !conf.vlan_trunk.is_empty() {
        keys.push("\"vlanTrunk\"".to_string());
    }
    CniError::new(
        ErrorCode::UnsupportedField,
        format!(
            "{e}: {} needs bridge VLAN filtering, which this kernel lacks \
             (built without CONFIG_BRIDGE_VLAN_FILTERING)",
            keys.join(" and ")
        ),
    )
    .details(format!(
        "remove {} from the configuration, or run a kernel with CONFIG_BRIDGE_VLAN_FILTERING=y",
        keys.join(" and ")
    ))
}

/// With `isGateway`, every address gets a gateway (the subnet's first address unless IPAM named
/// one); with `isDefaultGateway`, each family with a gateway gets a default route through it
/// unless IPAM already returned one.
pub fn fill_gateways(conf: &BridgeConf, result: &mut CniResult) -> Result<(), CniError> {
    if !conf.is_gateway {
        return Ok(());
    }
    for ip in &mut result.ips {
        if ip.gateway.is_none() {
            let gw = first_host(&ip.address);
            if gw == ip.address.ip() {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("address {} is its subnet's gateway address", ip.address),
                ));
            }
            ip.gateway = Some(gw);
        }
    }
    if conf.is_default_gateway {
        for family in [IpFamily::V4, IpFamily::V6] {
            let Some(gw) = family_gateway(result, family) else {
                continue;
            };
            let has_default = result
                .routes
                .iter()
                .any(|r| r.dst.prefix() == 0 && IpFamily::of(&r.dst.ip()) == family);
            if !has_default {
                let dst = match family {
                    IpFamily::V4 => "0.0.0.0/0",
                    IpFamily::V6 => "::/0",
                };
                let mut route = Route::to(dst.parse().expect("literal default network"));
                route.gw = Some(gw);
                result.routes.push(route);
            }
        }
    }
    Ok(())
}

/// The gateway routes of `family` use when they name none: the first address's gateway.
fn family_gateway(result: &CniResult, family: IpFamily) -> Option<IpAddr> {
    result
        .ips
        .iter()
        .filter(|ip| IpFamily::of(&ip.address.ip()) == family)
        .find_map(|ip| ip.gateway)
}

/// The veth pair (both modes): host side up, on `bridge` when there is one (routed mode has
/// none), peer born in `ns` as `CNI_IFNAME` (or as the handoff name).
pub async fn veth(
    conf: &BridgeConf,
    req: &Request,
    host: &Netlink,
    ns: &Netns,
    bridge: Option<&Link>,
    host_name: &str,
    mtu: Option<u32>,
) -> Result<VethPair, CniError> {
    let opts = VethOptions {
        host_name: host_name.to_string(),
        peer_name: conf.handoff.clone().unwrap_or_else(|| req.ifname.clone()),
        peer_netns: ns.fd(),
        master: bridge.map(|b| b.index),
        mtu,
        host_mac: Some(owner_mac(&req.config.name, host_name)),
        peer_mac: conf.mac,
    };
    host.create_veth_pair(&opts).await.map_err(|e| {
        let mut err = kernel(e);
        if err.errno == Some(libc::EEXIST) {
            err = err.details(format!(
                "either the container already has an interface {} or attachment ({}, {}) was \
                 added before without a DEL",
                req.ifname, req.container_id, req.ifname
            ));
        }
        err
    })
}

/// Bridge-port settings of the host side: owner alias (for GC), hairpin, isolation, VLANs.
pub async fn port(
    conf: &BridgeConf,
    host: &Netlink,
    pair: &VethPair,
    network: &str,
) -> Result<(), CniError> {
    let port = pair.host.index;
    host.set_alias(port, &owner_alias(network))
        .await
        .map_err(kernel)?;
    if conf.hairpin_mode {
        host.set_hairpin(port, true).await.map_err(kernel)?;
    }
    if conf.port_isolation {
        host.set_port_isolated(port, true).await.map_err(kernel)?;
    }
    if let Some(vid) = conf.vlan {
        host.bridge_vlan_add(port, vid, true)
            .await
            .map_err(kernel)?;
    }
    for &vid in &conf.vlan_trunk {
        host.bridge_vlan_add(port, vid, false)
            .await
            .map_err(kernel)?;
    }
    if conf.uses_vlans() && !conf.preserve_default_vlan {
        match host.bridge_vlan_del(port, 1).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(kernel(e)),
        }
    }
    Ok(())
}

/// The gateway addresses on the bridge (with the subnet's prefix) and forwarding on.
pub async fn gateways_on_bridge(
    conf: &BridgeConf,
    host: &Netlink,
    br: &Link,
    result: &CniResult,
) -> Result<(), CniError> {
    let mut seen = HashSet::new();
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let gw_net = IpNetwork::new(gw, ip.address.prefix())
            .map_err(|e| CniError::internal(format!("gateway {gw}: {e}")))?;
        if seen.insert(gw_net) {
            gateway_addr(conf, host, br, gw_net).await?;
        }
    }
    let (v4, v6) = seen.iter().fold((false, false), |(a, b), n| {
        (a || n.is_ipv4(), b || n.is_ipv6())
    });
    let mut forwarding = Vec::new();
    if v4 {
        forwarding.push("net/ipv4/ip_forward");
    }
    if v6 {
        forwarding.push("net/ipv6/conf/all/forwarding");
    }
    for key in forwarding {
        netns::ensure_sysctl(key, "1")
            .map_err(|e| CniError::internal(format!("enable forwarding: {e}")))?;
    }
    Ok(())
}

/// Puts `gw` on the bridge. Already there: nothing to do (one request). Newly added: the bridge
/// must not carry another address of the same subnet, unless `forceAddress` replaces it.
async fn gateway_addr(
    conf: &BridgeConf,
    host: &Netlink,
    br: &Link,
    gw: IpNetwork,
) -> Result<(), CniError> {
    match host.add_addr(br.index, gw).await {
        Ok(()) => {}
        Err(e) if e.is_exists() => return Ok(()),
        Err(e) => return Err(kernel(e)),
    }
    let family = IpFamily::of(&gw.ip());
    let others: Vec<IpNetwork> = host
        .addrs(br.index, Some(family))
        .await
        .map_err(kernel)?
        .into_iter()
        .filter(|a| *a != gw && !is_link_local(a) && (a.contains(gw.ip()) || gw.contains(a.ip())))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    if !conf.force_address {
        let _ = host.del_addr(br.index, gw).await;
        return Err(CniError::internal(format!(
            "{:?} already has an IP address different from {gw}: {}",
            br.name, others[0]
        ))
        .details("set forceAddress to replace it"));
    }
    // Removing a primary IPv4 address takes its secondaries (ours) with it: remove the
    // others first, then make sure ours is there.
    for other in others {
        host.del_addr(br.index, other).await.map_err(kernel)?;
    }
    match host.add_addr(br.index, gw).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => Ok(()),
        Err(e) => Err(kernel(e)),
    }
}

fn is_link_local(a: &IpNetwork) -> bool {
    match a.ip() {
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// The container side, in an order that lets the kernel announce the addresses: arp_notify,
/// addresses (IPv6 without DAD unless `enabledad`), up (gratuitous ARP goes out), then routes.
pub async fn container(
    conf: &BridgeConf,
    ctr: &Netlink,
    index: u32,
    result: &mut CniResult,
) -> Result<(), CniError> {
    if result.ips.iter().any(|ip| ip.address.is_ipv4()) {
        ctr.enable_arp_notify(index).await.map_err(kernel)?;
    }
    for ip in &result.ips {
        let added = if conf.enable_dad {
            ctr.add_addr_with_dad(index, ip.address).await
        } else {
            ctr.add_addr(index, ip.address).await
        };
        added.map_err(kernel)?;
    }
    ctr.set_up(index).await.map_err(kernel)?;
    for r in &result.routes {
        let spec = RouteSpec {
            dst: r.dst,
            gw: r
                .gw
                .or_else(|| family_gateway(result, IpFamily::of(&r.dst.ip()))),
            oif: Some(index),
            mtu: r.mtu,
            advmss: r.advmss,
            priority: r.priority,
            table: r.table,
            scope: r.scope,
        };
        match ctr.add_route(&spec).await {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(kernel(e)),
        }
    }
    Ok(())
}

/// The ADD result: interfaces [bridge, host veth, container interface], every address on the
/// container interface, routes, and DNS (the plugin's own `dns` overrides IPAM's).
pub fn result(
    conf: &BridgeConf,
    req: &Request,
    br: &Link,
    pair: &VethPair,
    host_name: &str,
    mtu: Option<u32>,
    ipam: CniResult,
) -> CniResult {
    let bridge = Interface {
        name: br.name.clone(),
        mac: br.mac.map(|m| m.to_string()),
        mtu: br.mtu,
        ..Interface::default()
    };
    let [host_side, container_side] = veth_interfaces(req, pair, host_name, mtu);
    let interfaces = vec![bridge, host_side, container_side];
    let ips = ipam
        .ips
        .into_iter()
        .map(|mut ip| {
            ip.interface = Some(CONTAINER_IFACE);
            ip
        })
        .collect();
    CniResult {
        interfaces,
        ips,
        routes: ipam.routes,
        dns: conf.dns.clone().unwrap_or(ipam.dns),
    }
}

/// The result's entries for a veth pair: the host side, then the container side (with
/// `sandbox`) — the same in both modes.
pub(super) fn veth_interfaces(
    req: &Request,
    pair: &VethPair,
    host_name: &str,
    mtu: Option<u32>,
) -> [Interface; 2] {
    [
        Interface {
            name: host_name.to_string(),
            mac: pair.host.mac.map(|m| m.to_string()),
            mtu,
            ..Interface::default()
        },
        Interface {
            name: req.ifname.clone(),
            mac: Some(pair.peer_mac.to_string()),
            mtu,
            sandbox: req.netns.as_ref().map(|p| p.display().to_string()),
            ..Interface::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::tests::request;
    use crate::types::IpConfig;
    use serde_json::json;

    fn conf(extra: serde_json::Value) -> BridgeConf {
        let mut raw = json!({"cniVersion": "1.0.0", "name": "n", "type": "plugnet"});
        raw.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        BridgeConf::from_request(&request(raw, "")).unwrap()
    }

    fn ipam(addrs: &[&str]) -> CniResult {
        CniResult {
            ips: addrs
                .iter()
                .map(|a| IpConfig {
                    address: a.parse().unwrap(),
                    gateway: None,
                    interface: None,
                })
                .collect(),
            ..CniResult::default()
        }
    }

    #[test]
    fn default_gateway_fills_gateways_and_default_routes_per_family() {
        let mut r = ipam(&["10.50.0.5/24", "fd50::5/64"]);
        fill_gateways(&conf(json!({"isDefaultGateway": true})), &mut r).unwrap();
        assert_eq!(r.ips[0].gateway, Some("10.50.0.1".parse().unwrap()));
        assert_eq!(r.ips[1].gateway, Some("fd50::1".parse().unwrap()));
        let dsts: Vec<String> = r.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, vec!["0.0.0.0/0", "::/0"]);
        assert_eq!(r.routes[0].gw, Some("10.50.0.1".parse().unwrap()));
    }

    #[test]
    fn ipam_default_route_and_gateway_win() {
        let mut r = ipam(&["10.50.0.5/24"]);
        r.ips[0].gateway = Some("10.50.0.254".parse().unwrap());
        r.routes.push(Route::to("0.0.0.0/0".parse().unwrap()));
        fill_gateways(&conf(json!({"isDefaultGateway": true})), &mut r).unwrap();
        assert_eq!(r.ips[0].gateway, Some("10.50.0.254".parse().unwrap()));
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].gw, None);
    }

    #[test]
    fn no_gateway_flags_leave_result_alone() {
        let mut r = ipam(&["10.50.0.5/24"]);
        fill_gateways(&conf(json!({})), &mut r).unwrap();
        assert_eq!(r.ips[0].gateway, None);
        assert!(r.routes.is_empty());
        let mut r = ipam(&["10.50.0.1/24"]);
        assert!(fill_gateways(&conf(json!({"isGateway": true})), &mut r).is_err());
    }
}
