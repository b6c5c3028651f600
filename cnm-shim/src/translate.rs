//! Pure translations between Docker's view and CNI's: derived conflists, pools read from a
//! conflist, port mappings, CNI result → Join reply, and free-address/free-pool search.
//!
//! Invariant: no I/O here; every function is a total function of its inputs (bad input is an
//! `Err` with the offending value named), so all of it is unit-tested.

use crate::api::{JoinResponse, PortBinding, StaticRoute, ROUTE_CONNECTED, ROUTE_NEXTHOP};
use anyhow::{bail, Context, Result};
use ipnetwork::IpNetwork;
use plugnet::types::CniResult;
use serde_json::{json, Value};
use std::net::IpAddr;

/// CNI spec version of derived conflists: the highest libcni 1.1.2 (Debian's podman) reads.
pub const DERIVED_CNI_VERSION: &str = "1.0.0";

/// One address range of a pool, in host-local/plugnet-ipam terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub start: Option<IpAddr>,
    pub end: Option<IpAddr>,
}

impl Range {
    /// The range as a host-local range object.
    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("subnet".into(), json!(self.subnet.to_string()));
        if let Some(g) = self.gateway {
            o.insert("gateway".into(), json!(g.to_string()));
        }
        if let Some(s) = self.start {
            o.insert("rangeStart".into(), json!(s.to_string()));
        }
        if let Some(e) = self.end {
            o.insert("rangeEnd".into(), json!(e.to_string()));
        }
        Value::Object(o)
    }

    /// The range restricted to `sub` (Docker's `--ip-range`).
    pub fn with_sub_pool(mut self, sub: Option<IpNetwork>) -> Self {
        if let Some(sub) = sub {
            let (first, last) = usable_bounds(&sub);
            self.start = Some(first);
            self.end = Some(last);
        }
        self
    }
}

/// Options of a derived (mode 1) conflist.
#[derive(Debug, Clone, Default)]
pub struct DeriveOptions {
    /// Main plugin type: `plugnet` (or the reference `bridge`, which takes the same fields).
    pub plugin: String,
    pub bridge: String,
    /// plugnet's routed mode (`-o plugnet.mode=routed`): no bridge, /32 per container, host
    /// routes; `bridge` is then unused.
    pub routed: bool,
    pub mtu: Option<u32>,
    pub ip_masq: bool,
    /// `dataDir` for plugnet-ipam (None: its default).
    pub ipam_data_dir: Option<String>,
}

/// The conflist the shim derives for a Docker network: one plugnet bridge, plugnet-ipam with
/// one range set per pool. The bridge carries the gateway; no default route is installed in
/// the container by CNI (Docker installs it from the Join reply, trap 22).
pub fn derive_conflist(name: &str, ranges: &[Range], o: &DeriveOptions) -> Value {
    let mut ipam = json!({
        "type": "plugnet-ipam",
        "ranges": ranges.iter().map(|r| json!([r.to_json()])).collect::<Vec<_>>(),
    });
    if let Some(d) = &o.ipam_data_dir {
        ipam["dataDir"] = json!(d);
    }
    let mut plugin = if o.routed {
        json!({
            "type": o.plugin,
            "mode": "routed",
            "ipMasq": o.ip_masq,
            "ipam": ipam,
        })
    } else {
        json!({
            "type": o.plugin,
            "bridge": o.bridge,
            "isGateway": true,
            "ipMasq": o.ip_masq,
            "ipam": ipam,
        })
    };
    if let Some(mtu) = o.mtu {
        plugin["mtu"] = json!(mtu);
    }
    // Docker's `-p` arrives as the portMappings capability; libcni-style runners pass it only
    // to plugins that declare it. `ips` too: podman 4.3, given a static address (`--ip`,
    // `podman network reload`) for an exported network, replaces the first plugin's
    // capabilities with `{"ips": true}` unless it declares `ips`, dropping `portMappings`.
    plugin["capabilities"] = json!({"portMappings": true, "ips": true});
    json!({"cniVersion": DERIVED_CNI_VERSION, "name": name, "plugins": [plugin]})
}

/// True when the conflist's first plugin is plugnet in routed mode.
pub fn conflist_is_routed(conflist: &Value) -> bool {
    conflist.pointer("/plugins/0/mode").and_then(Value::as_str) == Some("routed")
}

/// The `ipam` object of a conflist: the first plugin that has one.
pub fn conflist_ipam(conflist: &Value) -> Option<&Value> {
    conflist
        .get("plugins")?
        .as_array()?
        .iter()
        .find_map(|p| p.get("ipam").filter(|i| i.is_object()))
}

/// The ranges of an `ipam` object (host-local/plugnet-ipam shape: `ranges` and the legacy
/// single-range form), in order, as `plugnet::ipam::config` reads them.
pub fn ipam_ranges(ipam: &Value) -> Result<Vec<Range>> {
    let written = plugnet::ipam::config::written_ranges(ipam).context("ipam ranges")?;
    Ok(written
        .into_iter()
        .map(|w| Range {
            subnet: w.subnet,
            gateway: w.gateway,
            start: w.start,
            end: w.end,
        })
        .collect())
}

/// First and last usable host addresses of a subnet (IPv4 skips network and broadcast).
pub fn usable_bounds(net: &IpNetwork) -> (IpAddr, IpAddr) {
    match net {
        IpNetwork::V4(n) => {
            let base = u32::from(n.network());
            let last = u32::from(n.broadcast());
            if n.prefix() >= 31 {
                (n.network().into(), n.broadcast().into())
            } else {
                (
                    std::net::Ipv4Addr::from(base + 1).into(),
                    std::net::Ipv4Addr::from(last - 1).into(),
                )
            }
        }
        IpNetwork::V6(n) => {
            let base = u128::from(n.network());
            let size = if n.prefix() == 0 {
                u128::MAX
            } else {
                (1u128 << (128 - n.prefix())) - 1
            };
            let first = if n.prefix() >= 127 { base } else { base + 1 };
            (
                std::net::Ipv6Addr::from(first).into(),
                std::net::Ipv6Addr::from(base | size).into(),
            )
        }
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        std::net::Ipv6Addr::from(v).into()
    } else {
        std::net::Ipv4Addr::from(v as u32).into()
    }
}

/// Pick a free address of `range` round-robin after `last`, skipping the gateway and every
/// address for which `taken` is true. Scans at most `limit` candidates.
pub fn pick_address(
    range: &Range,
    last: Option<IpAddr>,
    taken: &dyn Fn(IpAddr) -> bool,
    limit: u128,
) -> Option<IpAddr> {
    let v6 = range.subnet.is_ipv6();
    let (first, lastb) = usable_bounds(&range.subnet);
    let lo = to_u128(range.start.unwrap_or(first));
    let hi = to_u128(range.end.unwrap_or(lastb));
    if lo > hi {
        return None;
    }
    // Sizes up to 2^128 (`::/0` from `::`) saturate: the scan is bounded by `limit` anyway.
    let span = (hi - lo).saturating_add(1);
    let start = match last.map(to_u128) {
        Some(l) if l >= lo && l < hi => l + 1,
        _ => lo,
    };
    let off = start - lo; // < span
    for i in 0..span.min(limit) {
        // (off + i) mod span without overflow.
        let room = span - off;
        let idx = if i >= room { i - room } else { off + i };
        let cand = from_u128(lo + idx, v6);
        if Some(cand) != range.gateway && !taken(cand) {
            return Some(cand);
        }
    }
    None
}

/// Pick the first subnet of size `prefix` inside one of `defaults` that overlaps none of `held`.
pub fn pick_pool(defaults: &[IpNetwork], prefix: u8, held: &[IpNetwork]) -> Option<IpNetwork> {
    for d in defaults {
        if prefix < d.prefix() {
            continue;
        }
        let bits: u32 = if d.is_ipv4() { 32 } else { 128 };
        if prefix as u32 > bits || prefix == 0 {
            continue;
        }
        let step: u128 = 1u128 << (bits - prefix as u32);
        let count: u128 = 1u128 << (prefix - d.prefix()).min(20);
        let base = to_u128(d.network());
        for i in 0..count {
            let cand = IpNetwork::new(from_u128(base + i * step, d.is_ipv6()), prefix).ok()?;
            if !held.iter().any(|h| overlaps(h, &cand)) {
                return Some(cand);
            }
        }
    }
    None
}

/// True when two networks share an address.
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Docker's `com.docker.network.portmap` → CNI `portMappings` capability entries.
/// Bindings without a host port (Docker did not allocate one for a remote driver) are skipped.
pub fn port_mappings(bindings: &[PortBinding]) -> Vec<Value> {
    bindings
        .iter()
        .filter(|b| b.host_port != 0 && b.port != 0)
        .filter_map(|b| {
            let proto = match b.proto {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                _ => return None,
            };
            let mut m =
                json!({"hostPort": b.host_port, "containerPort": b.port, "protocol": proto});
            if !b.host_ip.is_empty() {
                m["hostIP"] = json!(b.host_ip);
            }
            Some(m)
        })
        .collect()
}

/// The addresses (with prefix) of a CNI result, any version ≥ 0.3.0 (none if it does not decode).
pub fn result_addresses(result: &Value) -> Vec<IpNetwork> {
    CniResult::from_json(result)
        .map(|r| r.ips.iter().map(|i| i.address).collect())
        .unwrap_or_default()
}

/// Build the Join reply from a CNI result: the default route (or the family's `ips[].gateway`)
/// becomes `Gateway`/`GatewayIPv6`, other routes become `StaticRoutes`; gateway-less routes
/// go via the family's gateway like the reference plugins install them, else on-link. A
/// gateway-less host route to the gateway itself (plugnet's routed mode: `169.254.1.1/32`,
/// `fe80::1/128`) is CONNECTED, so Docker makes the next hop on-link before the default route.
pub fn join_reply(result: &Value, src_name: &str) -> Result<JoinResponse> {
    let result = CniResult::from_json(result).context("CNI result")?;
    let gw_of = |v6: bool| -> Option<IpAddr> {
        result.ips.iter().find_map(|i| {
            let g = i.gateway?;
            (i.address.is_ipv6() == v6 && g.is_ipv6() == v6).then_some(g)
        })
    };
    let (mut gw4, mut gw6) = (None, None);
    let mut routes = Vec::new();
    for r in &result.routes {
        let (dst, gw) = (r.dst, r.gw);
        let family_gw = gw_of(dst.is_ipv6());
        let full = if dst.is_ipv6() { 128 } else { 32 };
        if gw.is_none() && dst.prefix() == full && Some(dst.ip()) == family_gw {
            routes.push(StaticRoute {
                destination: dst.to_string(),
                route_type: ROUTE_CONNECTED,
                next_hop: String::new(),
            });
            continue;
        }
        let gw = gw.or(family_gw);
        if dst.prefix() == 0 {
            match (dst.is_ipv6(), gw) {
                (false, Some(g)) => gw4 = Some(g),
                (true, Some(g)) => gw6 = Some(g),
                _ => bail!("CNI result default route {dst} has no gateway"),
            }
            continue;
        }
        routes.push(match gw {
            Some(g) => StaticRoute {
                destination: dst.to_string(),
                route_type: ROUTE_NEXTHOP,
                next_hop: g.to_string(),
            },
            None => StaticRoute {
                destination: dst.to_string(),
                route_type: ROUTE_CONNECTED,
                next_hop: String::new(),
            },
        });
    }
    let gw4 = gw4.or_else(|| gw_of(false));
    let gw6 = gw6.or_else(|| gw_of(true));
    Ok(JoinResponse {
        interface_name: Some(crate::api::InterfaceName {
            src_name: src_name.to_string(),
            dst_prefix: "eth".into(),
        }),
        gateway: gw4.map(|g| g.to_string()).unwrap_or_default(),
        gateway_ipv6: gw6.map(|g| g.to_string()).unwrap_or_default(),
        static_routes: routes,
        disable_gateway_service: true,
    })
}

/// A CNI-legal, file-name-safe name for a pool: `pn-10.60.1.0_24`, `pn-fd60-1--_64`.
pub fn pool_name(pool: &IpNetwork) -> String {
    format!(
        "pn-{}_{}",
        pool.network().to_string().replace(':', "-"),
        pool.prefix()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        Range {
            subnet: s.parse().unwrap(),
            gateway: None,
            start: None,
            end: None,
        }
    }

    #[test]
    fn derived_conflist_shape() {
        let mut a = r("10.60.1.0/24");
        a.gateway = Some("10.60.1.1".parse().unwrap());
        let c = derive_conflist(
            "pn-10.60.1.0_24",
            &[a.with_sub_pool(Some("10.60.1.128/25".parse().unwrap()))],
            &DeriveOptions {
                plugin: "plugnet".into(),
                bridge: "pnb0123".into(),
                routed: false,
                mtu: Some(1400),
                ip_masq: true,
                ipam_data_dir: None,
            },
        );
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["plugins"][0]["type"], "plugnet");
        assert_eq!(c["plugins"][0]["mtu"], 1400);
        assert_eq!(c["plugins"][0]["isGateway"], true);
        assert!(c["plugins"][0].get("isDefaultGateway").is_none());
        assert_eq!(
            c["plugins"][0]["capabilities"]["portMappings"], true,
            "Docker's -p reaches plugnet only through the declared capability"
        );
        assert_eq!(
            c["plugins"][0]["capabilities"]["ips"], true,
            "podman keeps a first plugin's capabilities on --ip only if it declares ips"
        );
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0],
            json!({"subnet":"10.60.1.0/24","gateway":"10.60.1.1","rangeStart":"10.60.1.129","rangeEnd":"10.60.1.254"})
        );
        let back = ipam_ranges(conflist_ipam(&c).unwrap()).unwrap();
        assert_eq!(back[0].subnet.to_string(), "10.60.1.0/24");
    }

    #[test]
    fn routed_conflist_and_join_reply() {
        let c = derive_conflist(
            "pn-100.70.0.0_16",
            &[r("100.70.0.0/16")],
            &DeriveOptions {
                plugin: "plugnet".into(),
                bridge: "unused".into(),
                routed: true,
                ..DeriveOptions::default()
            },
        );
        let p = &c["plugins"][0];
        assert_eq!(p["mode"], "routed");
        assert!(conflist_is_routed(&c));
        assert!(p.get("bridge").is_none() && p.get("isGateway").is_none());
        // The result plugnet's routed mode prints.
        let res = json!({"cniVersion":"1.0.0",
            "ips":[{"address":"100.70.0.5/32","gateway":"169.254.1.1","interface":1},
                   {"address":"fd11:70::5/128","gateway":"fe80::1","interface":1}],
            "routes":[{"dst":"169.254.1.1/32"},{"dst":"0.0.0.0/0","gw":"169.254.1.1"},
                      {"dst":"fe80::1/128"},{"dst":"::/0","gw":"fe80::1"}]});
        let j = join_reply(&res, "pnjabc").unwrap();
        assert_eq!(j.gateway, "169.254.1.1");
        assert_eq!(j.gateway_ipv6, "fe80::1");
        let shown: Vec<(String, u8, String)> = j
            .static_routes
            .iter()
            .map(|r| (r.destination.clone(), r.route_type, r.next_hop.clone()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("169.254.1.1/32".into(), ROUTE_CONNECTED, String::new()),
                ("fe80::1/128".into(), ROUTE_CONNECTED, String::new()),
            ]
        );
    }

    #[test]
    fn legacy_single_range_and_bad_subnet() {
        let ipam = json!({"type":"host-local","subnet":"10.61.0.0/24","ranges":[[{"subnet":"fd61::/64"}]]});
        let rs = ipam_ranges(&ipam).unwrap();
        assert_eq!(rs.len(), 2);
        assert!(rs[1].subnet.is_ipv6());
        let e = ipam_ranges(&json!({"ranges":[[{"subnet":"10.0.0.0/99"}]]})).unwrap_err();
        assert!(format!("{e:#}").contains("10.0.0.0/99"));
    }

    #[test]
    fn pick_address_round_robin_skips_gateway_and_taken() {
        let mut rg = r("10.60.2.0/29");
        rg.gateway = Some("10.60.2.1".parse().unwrap());
        let taken = |ip: IpAddr| ip == "10.60.2.2".parse::<IpAddr>().unwrap();
        assert_eq!(
            pick_address(&rg, None, &taken, 1000),
            Some("10.60.2.3".parse().unwrap())
        );
        assert_eq!(
            pick_address(&rg, Some("10.60.2.6".parse().unwrap()), &taken, 1000),
            Some("10.60.2.3".parse().unwrap()),
            "wraps around"
        );
        assert_eq!(pick_address(&rg, None, &|_| true, 1000), None);
        let v6 = r("fd60::/120");
        assert_eq!(
            pick_address(&v6, None, &|_| false, 10),
            Some("fd60::1".parse().unwrap())
        );
    }

    #[test]
    fn pick_pool_avoids_held() {
        let d: Vec<IpNetwork> = vec!["10.66.0.0/16".parse().unwrap()];
        let held: Vec<IpNetwork> = vec![
            "10.66.0.0/24".parse().unwrap(),
            "10.66.1.0/25".parse().unwrap(),
        ];
        assert_eq!(
            pick_pool(&d, 24, &held).unwrap().to_string(),
            "10.66.2.0/24"
        );
        assert!(pick_pool(&d, 24, &["10.66.0.0/16".parse().unwrap()]).is_none());
    }

    #[test]
    fn ports_translate_and_skip_unallocated() {
        let b = vec![
            PortBinding {
                proto: 6,
                port: 80,
                host_port: 8080,
                host_port_end: 8080,
                ..Default::default()
            },
            PortBinding {
                proto: 17,
                port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
                ..Default::default()
            },
            PortBinding {
                proto: 6,
                port: 81,
                host_port: 0,
                ..Default::default()
            },
        ];
        assert_eq!(
            port_mappings(&b),
            vec![
                json!({"hostPort":8080,"containerPort":80,"protocol":"tcp"}),
                json!({"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"})
            ]
        );
    }

    #[test]
    fn join_reply_from_result() {
        let res = json!({"cniVersion":"1.0.0",
            "ips":[{"address":"10.60.3.5/24","gateway":"10.60.3.1","interface":2},
                   {"address":"fd60:3::5/64","gateway":"fd60:3::1","interface":2}],
            "routes":[{"dst":"0.0.0.0/0","gw":"10.60.3.254"},{"dst":"10.99.0.0/16"},{"dst":"fd61::/64","gw":"fd60:3::9"}]});
        let j = join_reply(&res, "pnjabc").unwrap();
        assert_eq!(j.gateway, "10.60.3.254");
        assert_eq!(j.gateway_ipv6, "fd60:3::1");
        assert_eq!(j.static_routes.len(), 2);
        assert_eq!(j.static_routes[0].next_hop, "10.60.3.1");
        assert_eq!(j.static_routes[1].next_hop, "fd60:3::9");
        assert!(j.disable_gateway_service);
        // no gateways anywhere: connected routes, no Gateway.
        let j = join_reply(
            &json!({"ips":[{"address":"10.60.4.2/24"}],"routes":[{"dst":"10.98.0.0/16"}]}),
            "x",
        )
        .unwrap();
        assert_eq!(j.gateway, "");
        assert_eq!(j.static_routes[0].route_type, ROUTE_CONNECTED);
        assert!(join_reply(&json!({"routes":[{"dst":"0.0.0.0/0"}]}), "x").is_err());
        assert!(join_reply(&json!({"routes":[{"dst":"garbage"}]}), "x").is_err());
    }

    #[test]
    fn pool_names_are_cni_and_file_safe() {
        assert_eq!(
            pool_name(&"10.60.1.0/24".parse().unwrap()),
            "pn-10.60.1.0_24"
        );
        let n = pool_name(&"fd60:1::/64".parse().unwrap());
        assert!(crate::state::valid_id(&n), "{n}");
    }
}
