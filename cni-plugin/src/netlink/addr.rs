//! Addresses on links. IPv6 addresses are added with IFA_F_NODAD so they are usable at once.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    pub(super) fn netlink(self) -> AddressFamily {
        match self {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        }
    }
}

fn addr_message(index: u32, addr: &IpNetwork, dad: bool) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = addr.prefix();
    msg.header.scope = AddressScope::Universe;
    match addr {
        IpNetwork::V4(n) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes
                .push(AddressAttribute::Local(IpAddr::V4(n.ip())));
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V4(n.ip())));
            if n.prefix() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(n.broadcast()));
            }
        }
        IpNetwork::V6(n) => {
            msg.header.family = AddressFamily::Inet6;
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V6(n.ip())));
            if !dad {
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
    }
    msg
}

impl Netlink {
    /// Adds `addr` (with its prefix length) to the link; EEXIST if it is already there.
    /// IPv6 addresses skip duplicate address detection (IFA_F_NODAD): usable at once.
    pub async fn add_addr(&self, index: u32, addr: IpNetwork) -> Result<(), NetlinkError> {
        self.add_addr_opts(index, addr, false).await
    }

    /// Like [`Netlink::add_addr`], but an IPv6 address goes through DAD (tentative ~1-2 s).
    pub async fn add_addr_with_dad(&self, index: u32, addr: IpNetwork) -> Result<(), NetlinkError> {
        self.add_addr_opts(index, addr, true).await
    }

    async fn add_addr_opts(
        &self,
        index: u32,
        addr: IpNetwork,
        dad: bool,
    ) -> Result<(), NetlinkError> {
        self.command(
            RouteNetlinkMessage::NewAddress(addr_message(index, &addr, dad)),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("add address {addr} to link {index}"),
        )
        .await
    }

    /// Removes `addr` from the link; EADDRNOTAVAIL if it is not there.
    pub async fn del_addr(&self, index: u32, addr: IpNetwork) -> Result<(), NetlinkError> {
        self.command(
            RouteNetlinkMessage::DelAddress(addr_message(index, &addr, true)),
            0,
            &|| format!("remove address {addr} from link {index}"),
        )
        .await
    }

    /// The addresses of the link (global and link scope), optionally of one family.
    pub async fn addrs(
        &self,
        index: u32,
        family: Option<IpFamily>,
    ) -> Result<Vec<IpNetwork>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        if let Some(f) = family {
            msg.header.family = f.netlink();
        }
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetAddress(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
                &|| format!("list addresses of link {index}"),
            )
            .await?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            // Without strict checking the kernel ignores the index filter: filter here too.
            if a.header.index != index {
                continue;
            }
            let mut ip = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(l) => ip = Some(*l),
                    AddressAttribute::Address(l) if ip.is_none() => ip = Some(*l),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                if let Ok(n) = IpNetwork::new(ip, a.header.prefix_len) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }
}

/// The first usable address of `net` (the conventional gateway): network + 1.
pub fn first_host(net: &IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))),
        IpNetwork::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()).wrapping_add(1),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_addresses_skip_dad_and_v4_get_broadcast() {
        let m = addr_message(3, &"fd50::5/64".parse().unwrap(), false);
        assert!(m
            .attributes
            .contains(&AddressAttribute::Flags(AddressFlags::Nodad)));
        let m = addr_message(3, &"fd50::5/64".parse().unwrap(), true);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Flags(_))));
        let m = addr_message(3, &"10.50.0.5/24".parse().unwrap(), false);
        assert!(m
            .attributes
            .contains(&AddressAttribute::Broadcast("10.50.0.255".parse().unwrap())));
        let m = addr_message(3, &"10.50.0.5/31".parse().unwrap(), false);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
    }

    #[test]
    fn first_host_is_network_plus_one() {
        assert_eq!(
            first_host(&"10.50.3.7/24".parse().unwrap()),
            "10.50.3.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            first_host(&"fd50::9/64".parse().unwrap()),
            "fd50::1".parse::<IpAddr>().unwrap()
        );
    }
}
