//! The cluster data plane's vocabulary (plugnet-agent's `dataplane`): VXLAN devices, their
//! forwarding entries (FDB: remote VTEP MAC → underlay address), static neighbours, and
//! routes tagged with plugnet's own route protocol ([`PLUGNET_RTPROT`]) so the agent can
//! list exactly the routes it owns and never touch anyone else's.
//!
//! Invariant: every route added here carries [`PLUGNET_RTPROT`]; [`Netlink::tagged_routes`]
//! returns only those; FDB and neighbour verbs act on one device's entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::LinkUnspec;

use super::neigh::{dst_and_lladdr, neigh_address};
use super::{IpFamily, Link, Mac, Netlink, NetlinkError};

/// The route protocol number plugnet's cluster routes carry (`ip route show proto 112`).
/// Unassigned in iproute2's `rt_protos`; the agent deletes only routes with this tag.
pub const PLUGNET_RTPROT: u8 = 112;

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// What a VXLAN device is created with (learning is always off: the agent programs the FDB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanOptions {
    pub name: String,
    pub vni: u32,
    /// Source address of the encapsulated packets (this host's underlay address).
    pub local: IpAddr,
    /// The underlay device the tunnel sends through.
    pub dev: Option<u32>,
    pub port: u16,
    pub mac: Mac,
    pub mtu: u32,
}

/// A VXLAN device as the kernel reports it.
#[derive(Clone, Debug)]
pub struct Vxlan {
    pub link: Link,
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
}

impl Vxlan {
    /// Whether the device is what `o` asks for in what cannot be changed in place (VNI,
    /// local address, port, learning); MAC and MTU can be set on the running device.
    pub fn matches(&self, o: &VxlanOptions) -> bool {
        self.vni == Some(o.vni)
            && self.local == Some(o.local)
            && self.port.unwrap_or(VXLAN_PORT) == o.port
            && self.learning != Some(true)
    }
}

/// One forwarding entry of a VXLAN device: frames to `mac` go to `dst` (all-zeros `mac`: the
/// default entry, flooded frames go to every such `dst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// A route the data plane owns: `dst` via `via` (same family), optionally out of `oif` and
/// `onlink` (the next hop is on that link whatever its addresses say).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaggedRoute {
    pub dst: IpNetwork,
    pub via: IpAddr,
    pub oif: Option<u32>,
    pub onlink: bool,
}

impl TaggedRoute {
    fn message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = IpFamily::of(&self.dst.ip()).netlink();
        msg.header.destination_prefix_length = self.dst.prefix();
        msg.header.protocol = RouteProtocol::from(PLUGNET_RTPROT);
        msg.header.kind = RouteType::Unicast;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.scope = RouteScope::Universe;
        if self.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                self.dst.network(),
            )));
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(self.via)));
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<TaggedRoute> {
        if u8::from(msg.header.protocol) != PLUGNET_RTPROT {
            return None;
        }
        let ip = |a: &RouteAddress| match a {
            RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
            RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
            _ => None,
        };
        let mut dst = None;
        let mut via = None;
        let mut oif = None;
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip(d),
                RouteAttribute::Gateway(g) => via = ip(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Some(TaggedRoute {
            dst: IpNetwork::new(dst?, msg.header.destination_prefix_length).ok()?,
            via: via?,
            oif,
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

fn fdb_message(index: u32, e: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(neigh_address(e.dst)));
    msg
}

/// The IPv6 link-local address EUI-64 derives from `mac` (`fe80::…ff:fe…`): a next hop on a
/// VXLAN device that needs no address plan, stable as long as the MAC is.
pub fn link_local_of(mac: Mac) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

impl Netlink {
    /// `ip link add NAME address MAC mtu MTU type vxlan id VNI local IP dev DEV dstport PORT
    /// nolearning`, then up. EEXIST if a link of that name exists.
    pub async fn create_vxlan(&self, o: &VxlanOptions) -> Result<Vxlan, NetlinkError> {
        let mut data = vec![
            InfoVxlan::Id(o.vni),
            InfoVxlan::Port(o.port),
            InfoVxlan::Learning(false),
        ];
        match o.local {
            IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
            IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
        }
        if let Some(dev) = o.dev {
            data.push(InfoVxlan::Link(dev));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(o.name.clone()));
        msg.attributes
            .push(LinkAttribute::Address(o.mac.0.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(o.mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.exchange(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("create vxlan {} (vni {})", o.name, o.vni),
        )
        .await?;
        self.vxlan_by_name(&o.name).await?.ok_or_else(|| {
            NetlinkError::protocol(format!("create vxlan {}", o.name), "gone after creation")
        })
    }

    /// The VXLAN device called `name` (`None`: no link, or a link of another kind).
    pub async fn vxlan_by_name(&self, name: &str) -> Result<Option<Vxlan>, NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).build();
        let step = || format!("get link {name}");
        let answers = match self
            .exchange(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST, &step)
            .await
        {
            Ok(a) => a,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        for m in answers {
            if let RouteNetlinkMessage::NewLink(l) = m {
                return Ok(vxlan_from_message(&l));
            }
        }
        Ok(None)
    }

    /// `ip link set <index> mtu <mtu>`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.exchange(
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            &|| format!("set mtu of link {index} to {mtu}"),
        )
        .await
        .map(drop)
    }

    /// `bridge fdb append|replace MAC dst IP dev <index> self permanent`: the all-zeros MAC
    /// is appended (one default entry per remote VTEP), a unicast MAC replaced.
    pub async fn add_fdb(&self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError> {
        let flags = if e.mac == [0; 6] {
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
        } else {
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        };
        self.exchange(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, e)),
            flags,
            &|| format!("add fdb {} dst {} on link {index}", Mac(e.mac), e.dst),
        )
        .await
        .map(drop)
    }

    /// `bridge fdb del MAC dst IP dev <index> self`.
    pub async fn del_fdb(&self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError> {
        self.exchange(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, e)),
            NLM_F_REQUEST | NLM_F_ACK,
            &|| format!("delete fdb {} dst {} on link {index}", Mac(e.mac), e.dst),
        )
        .await
        .map(drop)
    }

    /// The FDB entries with a destination address of the device `index`.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetNeighbour(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
                &|| format!("list fdb of link {index}"),
            )
            .await?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index {
                continue;
            }
            if let (Some(dst), Some(mac)) = dst_and_lladdr(&n) {
                out.push(FdbEntry { mac: mac.0, dst });
            }
        }
        Ok(out)
    }

    /// `ip neigh del IP dev <index>`.
    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = IpFamily::of(&ip).netlink();
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_address(ip)));
        self.exchange(
            RouteNetlinkMessage::DelNeighbour(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            &|| format!("delete neighbour {ip} on link {index}"),
        )
        .await
        .map(drop)
    }

    /// Adds or replaces a tagged route (`ip route replace … proto 112`).
    pub async fn replace_tagged_route(&self, r: &TaggedRoute) -> Result<(), NetlinkError> {
        self.exchange(
            RouteNetlinkMessage::NewRoute(r.message()),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &|| format!("add route {} via {} proto {PLUGNET_RTPROT}", r.dst, r.via),
        )
        .await
        .map(drop)
    }

    /// Deletes a tagged route; ESRCH if there is none.
    pub async fn del_tagged_route(&self, r: &TaggedRoute) -> Result<(), NetlinkError> {
        self.exchange(
            RouteNetlinkMessage::DelRoute(r.message()),
            NLM_F_REQUEST | NLM_F_ACK,
            &|| format!("delete route {} via {}", r.dst, r.via),
        )
        .await
        .map(drop)
    }

    /// The routes of the main table tagged [`PLUGNET_RTPROT`], both families.
    pub async fn tagged_routes(&self) -> Result<Vec<TaggedRoute>, NetlinkError> {
        let mut out = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family.netlink();
            msg.header.table = RouteHeader::RT_TABLE_MAIN;
            let answers = self
                .exchange(
                    RouteNetlinkMessage::GetRoute(msg),
                    NLM_F_REQUEST | NLM_F_DUMP,
                    &|| format!("list {family:?} routes"),
                )
                .await?;
            out.extend(answers.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    TaggedRoute::from_message(r)
                }
                _ => None,
            }));
        }
        Ok(out)
    }

    /// The link that holds address `ip`, if any.
    pub async fn link_with_addr(&self, ip: IpAddr) -> Result<Option<Link>, NetlinkError> {
        for link in self.links().await? {
            if self
                .addrs(link.index, Some(IpFamily::of(&ip)))
                .await?
                .iter()
                .any(|a| a.ip() == ip)
            {
                return Ok(Some(link));
            }
        }
        Ok(None)
    }
}

fn vxlan_from_message(l: &LinkMessage) -> Option<Vxlan> {
    let link = Link::from_message(l);
    let mut vx = Vxlan {
        link,
        vni: None,
        local: None,
        port: None,
        learning: None,
    };
    let mut is_vxlan = false;
    for a in &l.attributes {
        let LinkAttribute::LinkInfo(infos) = a else {
            continue;
        };
        for i in infos {
            match i {
                LinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                LinkInfo::Data(InfoData::Vxlan(data)) => {
                    for d in data {
                        match d {
                            InfoVxlan::Id(v) => vx.vni = Some(*v),
                            InfoVxlan::Local(a) if *a != Ipv4Addr::UNSPECIFIED => {
                                vx.local = Some(IpAddr::V4(*a))
                            }
                            InfoVxlan::Local6(a) if !a.is_unspecified() => {
                                vx.local = Some(IpAddr::V6(*a))
                            }
                            InfoVxlan::Port(p) => vx.port = Some(*p),
                            InfoVxlan::Learning(b) => vx.learning = Some(*b),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    is_vxlan.then_some(vx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_routes_round_trip_and_others_are_not_ours() {
        let r = TaggedRoute {
            dst: "10.173.0.64/26".parse().unwrap(),
            via: "10.173.200.2".parse().unwrap(),
            oif: Some(7),
            onlink: true,
        };
        let m = r.message();
        assert_eq!(u8::from(m.header.protocol), PLUGNET_RTPROT);
        assert_eq!(TaggedRoute::from_message(&m), Some(r.clone()));
        let mut other = m.clone();
        other.header.protocol = RouteProtocol::Boot;
        assert_eq!(TaggedRoute::from_message(&other), None);
    }

    #[test]
    fn link_local_is_eui64() {
        let mac: Mac = "02:11:22:33:44:55".parse().unwrap();
        assert_eq!(
            link_local_of(mac),
            "fe80::11:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn fdb_message_is_a_bridge_self_entry() {
        let e = FdbEntry {
            mac: [0; 6],
            dst: "10.173.201.3".parse().unwrap(),
        };
        let m = fdb_message(3, &e);
        assert_eq!(m.header.family, AddressFamily::Bridge);
        assert!(m.header.flags.contains(NeighbourFlags::Own));
        assert_eq!(m.header.state, NeighbourState::Permanent);
    }
}
