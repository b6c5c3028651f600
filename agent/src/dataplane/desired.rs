//! What the data plane should be on this host, computed from the cluster as etcd describes it
//! (networks, registered hosts, blocks and their holders): a pure function, no I/O.
//!
//! - `host-gw`: a route per remote block via its holder's underlay address (IPv6 blocks via
//!   the holder's IPv6 link-local address on the underlay link, which it publishes).
//! - `vxlan`: one device per network (`pnvx<8 hex>`, VNI of the network, VTEP MAC from the host
//!   id), per remote VTEP an all-zeros and a unicast FDB entry and static neighbours for its
//!   next hops (IPv4: its underlay address; IPv6: the link-local address of its VTEP MAC), and
//!   a route per remote block via that next hop on the device.
//!
//! Invariant: peers are the registered hosts and the departed ones (registration gone while
//! they still hold blocks: the agent down past its lease, its containers still running); a
//! block whose holder is neither gets no route. A host leaves — its routes go — when its blocks
//! do (released, reclaimed after the grace period, or `release-host`).

use crate::schema::{BlockValue, HostRecord, Mode, NetworkDef};
use ipnetwork::IpNetwork;
use plugnet::netlink::{link_local_of, FdbEntry, Mac, TaggedRoute};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// VXLAN encapsulation overhead over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14) and over IPv6 (40 instead of 20).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// The MTU of a cluster network's devices (VXLAN device, bridge, veths) on a host whose
/// underlay link has `underlay_mtu`.
pub fn network_mtu(mode: Mode, underlay: IpAddr, underlay_mtu: u32) -> u32 {
    match (mode, underlay) {
        (Mode::HostGw, _) => underlay_mtu,
        (Mode::Vxlan, IpAddr::V4(_)) => underlay_mtu.saturating_sub(VXLAN_OVERHEAD_V4),
        (Mode::Vxlan, IpAddr::V6(_)) => underlay_mtu.saturating_sub(VXLAN_OVERHEAD_V6),
    }
}

/// The VXLAN device of network `net`: `pnvx` and 8 hex digits of its name's FNV-1a hash.
pub fn vxlan_name(net: &str) -> String {
    format!(
        "pnvx{:08x}",
        crate::identity::fnv1a(net.as_bytes()) & 0xffff_ffff
    )
}

/// The alias a VXLAN device of plugnet carries: only devices with it are ever deleted.
pub fn vxlan_alias(net: &str) -> String {
    format!("plugnet cluster {net}")
}

/// The cluster as read from etcd.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    pub networks: BTreeMap<String, NetworkDef>,
    /// Registered hosts, and departed ones (see `departed`).
    pub hosts: BTreeMap<String, HostRecord>,
    /// Hosts in `hosts` whose registration went while they hold blocks: still peers.
    pub departed: BTreeSet<String>,
    /// network → block → holder
    pub blocks: BTreeMap<String, BTreeMap<IpNetwork, BlockValue>>,
}

/// This host, as the data plane needs it.
#[derive(Debug, Clone)]
pub struct Me {
    pub name: String,
    pub underlay: IpAddr,
    pub underlay_index: u32,
    pub underlay_mtu: u32,
    pub vtep_mac: Mac,
}

/// The VXLAN device a network wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub alias: String,
    pub vni: u32,
    pub mtu: u32,
    pub fdb: BTreeSet<FdbEntry>,
    /// next hop → remote VTEP MAC
    pub neighbours: BTreeMap<IpAddr, Mac>,
}

/// One network's wants on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub mode: Mode,
    pub mtu: u32,
    pub device: Option<Device>,
    /// Routes to remote blocks, by destination. The VXLAN routes name the device by its
    /// name in `oif_name` until the device's index is known.
    pub routes: BTreeMap<IpNetwork, PlannedRoute>,
    /// Remote blocks that get no route, and why (e.g. no IPv6 next hop published).
    pub unroutable: BTreeMap<IpNetwork, String>,
    /// block → holding peer (for the status per peer)
    pub holders: BTreeMap<IpNetwork, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRoute {
    pub via: IpAddr,
    /// `None`: the kernel picks the link (host-gw IPv4); `Some(name)`: this link.
    pub oif_name: Option<String>,
    pub oif: Option<u32>,
    pub onlink: bool,
}

impl PlannedRoute {
    pub fn tagged(&self, dst: IpNetwork, oif: Option<u32>) -> TaggedRoute {
        TaggedRoute {
            dst,
            via: self.via,
            oif: self.oif.or(oif),
            onlink: self.onlink,
        }
    }
}

/// The peers (registered hosts other than this one) and their VTEP MACs.
fn peers<'a>(c: &'a Cluster, me: &Me) -> Vec<(&'a HostRecord, Option<Mac>)> {
    c.hosts
        .values()
        .filter(|h| h.name != me.name)
        .map(|h| (h, h.vtep_mac.parse::<Mac>().ok()))
        .collect()
}

/// What every network in `c` wants on this host.
pub fn plan(c: &Cluster, me: &Me) -> BTreeMap<String, NetworkPlan> {
    let mut out = BTreeMap::new();
    for (name, def) in &c.networks {
        let mtu = network_mtu(def.mode, me.underlay, me.underlay_mtu);
        let mut p = NetworkPlan {
            mode: def.mode,
            mtu,
            device: None,
            routes: BTreeMap::new(),
            unroutable: BTreeMap::new(),
            holders: BTreeMap::new(),
        };
        let dev_name = vxlan_name(name);
        if def.mode == Mode::Vxlan {
            let mut dev = Device {
                name: dev_name.clone(),
                alias: vxlan_alias(name),
                vni: def.vni.unwrap_or(0),
                mtu,
                fdb: BTreeSet::new(),
                neighbours: BTreeMap::new(),
            };
            for (h, mac) in peers(c, me) {
                let Some(mac) = mac else { continue };
                if h.underlay.is_ipv4() != me.underlay.is_ipv4() {
                    continue;
                }
                dev.fdb.insert(FdbEntry {
                    mac: [0; 6],
                    dst: h.underlay,
                });
                dev.fdb.insert(FdbEntry {
                    mac: mac.0,
                    dst: h.underlay,
                });
                if h.underlay.is_ipv4() {
                    dev.neighbours.insert(h.underlay, mac);
                }
                dev.neighbours.insert(IpAddr::V6(link_local_of(mac)), mac);
            }
            p.device = Some(dev);
        }
        let hosts: BTreeMap<&str, (&HostRecord, Option<Mac>)> = peers(c, me)
            .into_iter()
            .map(|(h, m)| (h.name.as_str(), (h, m)))
            .collect();
        for (block, value) in c.blocks.get(name).into_iter().flatten() {
            let Some(holder) = value.holder() else {
                continue;
            };
            if holder == me.name {
                continue;
            }
            let Some((h, mac)) = hosts.get(holder) else {
                continue; // not registered: gone, or not yet back
            };
            p.holders.insert(*block, holder.to_string());
            let route = match def.mode {
                Mode::HostGw => {
                    if block.is_ipv4() == h.underlay.is_ipv4() {
                        Ok(PlannedRoute {
                            via: h.underlay,
                            oif_name: None,
                            oif: None,
                            onlink: false,
                        })
                    } else if let (false, Some(ll)) = (block.is_ipv4(), h.underlay_link_local) {
                        Ok(PlannedRoute {
                            via: IpAddr::V6(ll),
                            oif_name: None,
                            oif: Some(me.underlay_index),
                            onlink: false,
                        })
                    } else {
                        Err(format!(
                            "host {holder} published no IPv{} next hop on the underlay",
                            if block.is_ipv4() { 4 } else { 6 }
                        ))
                    }
                }
                Mode::Vxlan => match mac {
                    None => Err(format!("host {holder} published no valid VTEP MAC")),
                    Some(_) if h.underlay.is_ipv4() != me.underlay.is_ipv4() => Err(format!(
                        "host {holder}'s underlay {} is of another family than this host's",
                        h.underlay
                    )),
                    Some(mac) if block.is_ipv6() => Ok(PlannedRoute {
                        via: IpAddr::V6(link_local_of(*mac)),
                        oif_name: Some(dev_name.clone()),
                        oif: None,
                        onlink: false,
                    }),
                    Some(_) if h.underlay.is_ipv4() => Ok(PlannedRoute {
                        via: h.underlay,
                        oif_name: Some(dev_name.clone()),
                        oif: None,
                        onlink: true,
                    }),
                    Some(_) => Err(format!(
                        "IPv4 block over an IPv6 underlay (host {holder}): not supported"
                    )),
                },
            };
            match route {
                Ok(r) => {
                    p.routes.insert(*block, r);
                }
                Err(why) => {
                    p.unroutable.insert(*block, why);
                }
            }
        }
        out.insert(name.clone(), p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, underlay: &str, ll: Option<&str>) -> HostRecord {
        HostRecord {
            name: name.into(),
            id: format!("id-{name}"),
            underlay: underlay.parse().unwrap(),
            vtep_mac: crate::identity::vtep_mac(&format!("id-{name}")),
            agent_version: "t".into(),
            started_unix: 0,
            underlay_link_local: ll.map(|s| s.parse().unwrap()),
        }
    }

    fn held(h: &str) -> BlockValue {
        BlockValue::Held {
            host: h.into(),
            host_id: format!("id-{h}"),
            claimed_unix: 0,
        }
    }

    fn cluster(mode: Mode) -> Cluster {
        let mut c = Cluster::default();
        c.networks.insert(
            "n".into(),
            NetworkDef {
                name: "n".into(),
                subnets: vec![
                    "10.173.0.0/16".parse().unwrap(),
                    "fd00:173::/64".parse().unwrap(),
                ],
                block_prefix_v4: 26,
                block_prefix_v6: 122,
                mode,
                vni: (mode == Mode::Vxlan).then_some(4096),
                reclaim_grace_secs: 600,
                created_unix: 0,
            },
        );
        for (n, u, ll) in [
            ("a", "10.173.200.1", Some("fe80::a")),
            ("b", "10.173.200.2", Some("fe80::b")),
            ("c", "10.173.201.3", None),
        ] {
            c.hosts.insert(n.into(), host(n, u, ll));
        }
        let blocks = c.blocks.entry("n".into()).or_default();
        blocks.insert("10.173.0.0/26".parse().unwrap(), held("a"));
        blocks.insert("10.173.0.64/26".parse().unwrap(), held("b"));
        blocks.insert("fd00:173::40/122".parse().unwrap(), held("b"));
        blocks.insert("fd00:173::80/122".parse().unwrap(), held("c"));
        blocks.insert("10.173.0.128/26".parse().unwrap(), held("gone"));
        blocks.insert(
            "10.173.0.192/26".parse().unwrap(),
            BlockValue::Reclaimed { at_unix: 1 },
        );
        c
    }

    fn me() -> Me {
        Me {
            name: "a".into(),
            underlay: "10.173.200.1".parse().unwrap(),
            underlay_index: 2,
            underlay_mtu: 1500,
            vtep_mac: crate::identity::vtep_mac("id-a").parse().unwrap(),
        }
    }

    #[test]
    fn host_gw_routes_remote_blocks_of_registered_hosts() {
        let p = &plan(&cluster(Mode::HostGw), &me())["n"];
        assert_eq!(p.mtu, 1500);
        assert!(p.device.is_none());
        let r4 = &p.routes[&"10.173.0.64/26".parse().unwrap()];
        assert_eq!(r4.via, "10.173.200.2".parse::<IpAddr>().unwrap());
        let r6 = &p.routes[&"fd00:173::40/122".parse().unwrap()];
        assert_eq!(r6.via, "fe80::b".parse::<IpAddr>().unwrap());
        assert_eq!(r6.oif, Some(2));
        // Own block, a holder without registration, a reclaimed block: no route.
        assert_eq!(p.routes.len(), 2, "{:?}", p.routes);
        assert!(p
            .unroutable
            .contains_key(&"fd00:173::80/122".parse().unwrap()));
    }

    #[test]
    fn vxlan_plans_device_fdb_neighbours_and_routes() {
        let p = &plan(&cluster(Mode::Vxlan), &me())["n"];
        assert_eq!(p.mtu, 1450);
        let d = p.device.as_ref().unwrap();
        assert_eq!(d.name, vxlan_name("n"));
        assert!(d.name.len() <= 15);
        assert_eq!(d.vni, 4096);
        assert_eq!(d.fdb.len(), 4, "two entries per peer: {:?}", d.fdb);
        let bmac: Mac = crate::identity::vtep_mac("id-b").parse().unwrap();
        assert_eq!(
            d.neighbours[&"10.173.200.2".parse::<IpAddr>().unwrap()],
            bmac
        );
        let r6 = &p.routes[&"fd00:173::40/122".parse().unwrap()];
        assert_eq!(r6.via, IpAddr::V6(link_local_of(bmac)));
        let r4 = &p.routes[&"10.173.0.64/26".parse().unwrap()];
        assert!(r4.onlink);
        assert_eq!(r4.oif_name.as_deref(), Some(d.name.as_str()));
        assert_eq!(p.routes.len(), 3);
        assert_eq!(
            network_mtu(Mode::Vxlan, "fd00::1".parse().unwrap(), 1500),
            1430
        );
    }
}
