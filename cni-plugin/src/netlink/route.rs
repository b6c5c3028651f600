//! Routes. A route without a gateway is link-scoped unless a scope is given.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::{IpFamily, Netlink, NetlinkError};

/// A route as plugnet adds and reads it (the CNI result's route fields plus the device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

impl RouteSpec {
    pub fn new(dst: IpNetwork) -> RouteSpec {
        RouteSpec {
            dst,
            gw: None,
            oif: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    fn message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let family = if self.dst.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        msg.header.address_family = family.netlink();
        msg.header.destination_prefix_length = self.dst.prefix();
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        let table = self.table.unwrap_or(u32::from(RouteHeader::RT_TABLE_MAIN));
        msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.header.scope = match self.scope {
            Some(s) => RouteScope::from(s),
            None if self.gw.is_none() => RouteScope::Link,
            None => RouteScope::Universe,
        };
        if self.dst.prefix() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.network(),
                )));
        }
        if let Some(gw) = self.gw {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(p) = self.priority {
            msg.attributes.push(RouteAttribute::Priority(p));
        }
        if table > 255 {
            msg.attributes.push(RouteAttribute::Table(table));
        }
        let mut metrics = Vec::new();
        if let Some(m) = self.mtu {
            metrics.push(RouteMetric::Mtu(m));
        }
        if let Some(m) = self.advmss {
            metrics.push(RouteMetric::Advmss(m));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<RouteSpec> {
        let mut dst = None;
        let mut spec = RouteSpec::new(IpNetwork::new(IpAddr::V4(0.into()), 0).ok()?);
        let mut table = u32::from(msg.header.table);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = route_ip(a),
                RouteAttribute::Gateway(a) => spec.gw = route_ip(a),
                RouteAttribute::Oif(i) => spec.oif = Some(*i),
                RouteAttribute::Priority(p) => spec.priority = Some(*p),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        match m {
                            RouteMetric::Mtu(v) => spec.mtu = Some(*v),
                            RouteMetric::Advmss(v) => spec.advmss = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let dst = match (dst, msg.header.address_family) {
            (Some(ip), _) => ip,
            (None, rtnetlink::packet_route::AddressFamily::Inet6) => IpAddr::V6(0.into()),
            (None, _) => IpAddr::V4(0.into()),
        };
        spec.dst = IpNetwork::new(dst, msg.header.destination_prefix_length).ok()?;
        spec.table = Some(table);
        spec.scope = Some(msg.header.scope.into());
        Some(spec)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Netlink {
    /// Adds the route; EEXIST if an identical one is there.
    pub async fn add_route(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        self.command(
            RouteNetlinkMessage::NewRoute(route.message()),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| describe("add", route),
        )
        .await
    }

    /// Deletes the route; ESRCH if there is none.
    pub async fn del_route(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        self.command(RouteNetlinkMessage::DelRoute(route.message()), 0, &|| {
            describe("delete", route)
        })
        .await
    }

    /// The unicast routes of one family in the main table (or `table`).
    pub async fn routes(
        &self,
        family: IpFamily,
        table: Option<u32>,
    ) -> Result<Vec<RouteSpec>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family.netlink();
        let want = table.unwrap_or(u32::from(RouteHeader::RT_TABLE_MAIN));
        msg.header.table = u8::try_from(want).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetRoute(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
                &|| format!("list {family:?} routes"),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) if r.header.kind == RouteType::Unicast => {
                    RouteSpec::from_message(r)
                }
                _ => None,
            })
            .filter(|r| r.table == Some(want))
            .collect())
    }
}

impl Netlink {
    /// The MTU of the link carrying the default route (IPv4 first, then IPv6), if any.
    pub async fn default_route_mtu(&self) -> Result<Option<u32>, NetlinkError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let routes = self.routes(family, None).await?;
            let oif = routes
                .iter()
                .filter(|r| r.dst.prefix() == 0)
                .min_by_key(|r| r.priority.unwrap_or(0))
                .and_then(|r| r.oif);
            if let Some(oif) = oif {
                if let Some(link) = self.link_by_index(oif).await? {
                    return Ok(link.mtu);
                }
            }
        }
        Ok(None)
    }
}

fn describe(verb: &str, r: &RouteSpec) -> String {
    let mut s = format!("{verb} route {}", r.dst);
    if let Some(gw) = r.gw {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev {oif}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips() {
        let mut r = RouteSpec::new("10.50.0.0/16".parse().unwrap());
        r.gw = Some("10.50.0.1".parse().unwrap());
        r.oif = Some(4);
        r.mtu = Some(1400);
        r.priority = Some(10);
        let back = RouteSpec::from_message(&r.message()).unwrap();
        assert_eq!(back.dst, r.dst);
        assert_eq!(back.gw, r.gw);
        assert_eq!(back.oif, Some(4));
        assert_eq!(back.mtu, Some(1400));
        assert_eq!(back.priority, Some(10));
        assert_eq!(back.scope, Some(0));
        assert_eq!(back.table, Some(254));
    }

    #[test]
    fn gatewayless_route_is_link_scoped_and_default_has_no_dst() {
        let r = RouteSpec::new("0.0.0.0/0".parse().unwrap());
        let m = r.message();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        let mut big = RouteSpec::new("fd50::/64".parse().unwrap());
        big.table = Some(1000);
        assert!(big
            .message()
            .attributes
            .contains(&RouteAttribute::Table(1000)));
    }
}
