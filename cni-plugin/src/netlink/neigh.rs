//! Neighbour (ARP / NDP) entries: permanent entries a routed container uses to reach its
//! link-local next hop without asking, and the dump CHECK compares them against.

use std::net::IpAddr;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::{IpFamily, Mac, Netlink, NetlinkError};

/// One neighbour entry as plugnet reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

pub(super) fn neigh_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

pub(super) fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        // An FDB entry (family AF_BRIDGE) carries its NDA_DST as raw bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// The destination address and link-layer address of a neighbour or FDB entry.
pub(super) fn dst_and_lladdr(n: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut ip = None;
    let mut mac = None;
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Destination(d) => ip = neigh_ip(d),
            NeighbourAttribute::LinkLayerAddress(l) => {
                mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(Mac)
            }
            _ => {}
        }
    }
    (ip, mac)
}

fn permanent_message(index: u32, ip: IpAddr, mac: Mac) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = IpFamily::of(&ip).netlink();
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(neigh_address(ip)));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg
}

impl Netlink {
    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub async fn set_permanent_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: Mac,
    ) -> Result<(), NetlinkError> {
        self.command(
            RouteNetlinkMessage::NewNeighbour(permanent_message(index, ip, mac)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &|| format!("add neighbour {ip} lladdr {mac} on link {index}"),
        )
        .await
    }

    /// The neighbour entries of one link and family.
    pub async fn neighbours(
        &self,
        index: u32,
        family: IpFamily,
    ) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family.netlink();
        // Strict dump checking filters by the NDA_IFINDEX attribute, not the header's index.
        msg.attributes.push(NeighbourAttribute::IfIndex(index));
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetNeighbour(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
                &|| format!("list neighbours of link {index}"),
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
            let (ip, mac) = dst_and_lladdr(&n);
            if let Some(ip) = ip {
                out.push(Neighbour {
                    index,
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_message_names_address_and_lladdr() {
        let mac: Mac = "02:00:00:00:00:07".parse().unwrap();
        let m = permanent_message(4, "169.254.1.1".parse().unwrap(), mac);
        assert_eq!(m.header.ifindex, 4);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert!(m
            .attributes
            .contains(&NeighbourAttribute::LinkLayerAddress(mac.0.to_vec())));
        assert!(m
            .attributes
            .contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet(
                "169.254.1.1".parse().unwrap()
            ))));
    }
}
