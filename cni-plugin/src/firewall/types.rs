//! What the firewall is asked to do for one attachment, and the wire shapes it comes from;
//! invariant: a value that passed [`Attachment::validate`] holds only names and numbers that are
//! safe to put into nftables objects, and every rule it describes can be built.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::names::{check_cni_name, check_ifname};
use super::FirewallError;
use crate::netlink::Mac;

/// One container interface on one network: everything the firewall needs to install, check and
/// remove its rules. Keyed by `(network, container_id, ifname)` as CNI keys attachments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The Linux bridge the host veth is a port of (routed traffic enters/leaves through it).
    /// Equal to `host_veth` for a routed attachment (no bridge; see [`Attachment::is_routed`]).
    pub bridge: String,
    pub host_veth: String,
    /// The container's addresses with their subnet prefix (e.g. `10.70.0.2/24`).
    pub container_ips: Vec<IpNetwork>,
    pub ip_masq: bool,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub net_out: Option<NetOut>,
    /// macspoofchk: the only source MAC the container may send from through its bridge port
    /// (its interface's MAC at ADD). Absent: no check.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_mac")]
    pub source_mac: Option<Mac>,
    /// Destinations this container's traffic keeps its source address to even with ipMasq:
    /// the subnets of its cluster network (other hosts' containers see who talks to them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_source_to: Vec<IpNetwork>,
}

/// `runtimeConfig.portMappings[]` entry, named exactly as the CNI `portMappings` capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Only packets to this host address are mapped; absent or empty means every local address.
    #[serde(
        rename = "hostIP",
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_ip"
    )]
    pub host_ip: Option<IpAddr>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Egress policy (Garden's NetOutRule list): `rules` are the exceptions to `default` — with
/// `deny` they are what is allowed, with `allow` they are what is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetOut {
    #[serde(default)]
    pub default: NetOutDefault,
    #[serde(default)]
    pub rules: Vec<NetOutRule>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetOutDefault {
    Allow,
    #[default]
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetOutRule {
    #[serde(default)]
    pub protocol: NetOutProtocol,
    /// Absent or empty: any destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetRange>,
    /// Absent or empty: any port (tcp/udp only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// ICMP type/code (protocol icmp only); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<IcmpMatch>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetOutProtocol {
    #[default]
    All,
    Tcp,
    Udp,
    Icmp,
}

/// `{"start": ip, "end": ip}` or `{"cidr": "a.b.c.d/n"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NetRange {
    Cidr { cidr: IpNetwork },
    Range { start: IpAddr, end: IpAddr },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpMatch {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

impl NetRange {
    /// Inclusive (first, last) address pair; both of one family after validation.
    pub fn bounds(&self) -> (IpAddr, IpAddr) {
        match self {
            NetRange::Cidr { cidr } => (cidr.network(), cidr.broadcast_or_last()),
            NetRange::Range { start, end } => (*start, *end),
        }
    }
}

trait LastAddr {
    fn broadcast_or_last(&self) -> IpAddr;
}
impl LastAddr for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => {
                let host_bits = 128 - u32::from(n.prefix());
                let mask = if host_bits == 128 {
                    u128::MAX
                } else {
                    (1u128 << host_bits) - 1
                };
                IpAddr::V6((u128::from(n.network()) | mask).into())
            }
        }
    }
}

impl Attachment {
    /// The attachment's identity, which names its firewall objects (its `firewall_key`).
    pub fn id(&self) -> crate::attachment::AttachmentId {
        crate::attachment::AttachmentId::new(&self.network, &self.container_id, &self.ifname)
    }

    /// Checks every field that ends up in a netlink message or an nftables identifier.
    pub fn validate(&self) -> Result<(), FirewallError> {
        check_cni_name("network name", &self.network)?;
        check_cni_name("container id", &self.container_id)?;
        check_ifname("ifname", &self.ifname)?;
        check_ifname("bridge name", &self.bridge)?;
        check_ifname("host veth name", &self.host_veth)?;
        // A MAC check alone needs no address (an L2-only network).
        if self.container_ips.is_empty() && self.source_mac.is_none() {
            return Err(invalid("attachment has no container IP"));
        }
        if let Some(mac) = self.source_mac {
            if mac.0[0] & 1 == 1 || mac.0 == [0; 6] {
                return Err(invalid(format!(
                    "source MAC {mac} is not a unicast address"
                )));
            }
            if self.is_routed() {
                return Err(invalid(
                    "a source MAC check needs a bridge port (this attachment is routed)",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for pm in &self.port_mappings {
            if pm.host_port == 0 || pm.container_port == 0 {
                return Err(invalid(format!(
                    "port mapping {}:{}/{}: ports must be 1-65535",
                    pm.host_port,
                    pm.container_port,
                    pm.protocol.name()
                )));
            }
            if let Some(ip) = pm.host_ip {
                if ip.is_multicast() || ip.is_unspecified() {
                    return Err(invalid(format!(
                        "port mapping hostIP {ip} is not a unicast address"
                    )));
                }
                if !self
                    .container_ips
                    .iter()
                    .any(|c| c.is_ipv4() == ip.is_ipv4())
                {
                    return Err(invalid(format!(
                        "port mapping hostIP {ip}: the container has no address of that family"
                    )));
                }
            }
            if !seen.insert((pm.host_port, pm.protocol, pm.host_ip)) {
                return Err(invalid(format!(
                    "port mapping {}/{} listed twice",
                    pm.host_port,
                    pm.protocol.name()
                )));
            }
        }
        if let Some(net_out) = &self.net_out {
            net_out.validate()?;
        }
        Ok(())
    }

    /// True for an attachment without a bridge (plugnet's routed mode): its host veth is its
    /// own uplink, so `bridge` names the host veth.
    pub fn is_routed(&self) -> bool {
        self.bridge == self.host_veth
    }

    /// The `(family, address)` pairs the container uses.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.container_ips.iter().map(|n| n.ip())
    }

    /// The container's own subnets (network addresses with prefix), deduplicated and sorted.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        let mut v: Vec<IpNetwork> = self
            .container_ips
            .iter()
            .map(|n| IpNetwork::new(n.network(), n.prefix()).expect("prefix came from a network"))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

impl NetOut {
    pub fn validate(&self) -> Result<(), FirewallError> {
        for (i, r) in self.rules.iter().enumerate() {
            let at = |m: &str| invalid(format!("netOut rule {i}: {m}"));
            for n in &r.networks {
                let (s, e) = n.bounds();
                if s.is_ipv4() != e.is_ipv4() {
                    return Err(at("network start and end are of different families"));
                }
                if s > e {
                    return Err(at("network start is after end"));
                }
            }
            if !r.ports.is_empty()
                && !matches!(r.protocol, NetOutProtocol::Tcp | NetOutProtocol::Udp)
            {
                return Err(at("ports need protocol tcp or udp"));
            }
            for p in &r.ports {
                if p.start == 0 || p.start > p.end {
                    return Err(at("port range must satisfy 1 <= start <= end"));
                }
            }
            if r.icmps.is_some() && r.protocol != NetOutProtocol::Icmp {
                return Err(at("icmps needs protocol icmp"));
            }
        }
        Ok(())
    }
}

fn invalid(msg: impl Into<String>) -> FirewallError {
    FirewallError::Invalid(msg.into())
}

/// A MAC as its usual text, `aa:bb:cc:dd:ee:ff`.
mod opt_mac {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::netlink::Mac;

    pub fn serialize<S: Serializer>(v: &Option<Mac>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(m) => s.collect_str(m),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mac>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `hostIP` as a string; `""` is the same as absent (runtimes send both).
mod opt_ip {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mapping_wire_names() {
        let pm: PortMapping = serde_json::from_str(
            r#"{"hostPort":8080,"containerPort":80,"protocol":"udp","hostIP":"10.0.0.1"}"#,
        )
        .unwrap();
        assert_eq!(pm.host_port, 8080);
        assert_eq!(pm.protocol, Protocol::Udp);
        assert_eq!(pm.host_ip, Some("10.0.0.1".parse().unwrap()));
        let pm: PortMapping =
            serde_json::from_str(r#"{"hostPort":1,"containerPort":2,"hostIP":""}"#).unwrap();
        assert_eq!((pm.protocol, pm.host_ip), (Protocol::Tcp, None));
        assert!(serde_json::from_str::<PortMapping>(
            r#"{"hostPort":1,"containerPort":2,"protocol":"icmp"}"#
        )
        .is_err());
    }

    #[test]
    fn net_out_garden_json() {
        let n: NetOut = serde_json::from_str(
            r#"{"default":"deny","rules":[{"protocol":"tcp","networks":[{"start":"10.0.0.1","end":"10.0.0.9"},{"cidr":"10.1.0.0/16"}],"ports":[{"start":80,"end":443}]},{"protocol":"icmp","icmps":{"type":8,"code":0}}]}"#,
        )
        .unwrap();
        n.validate().unwrap();
        assert_eq!(
            n.rules[0].networks[1].bounds().1,
            "10.1.255.255".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            n.rules[1].icmps,
            Some(IcmpMatch {
                kind: 8,
                code: Some(0)
            })
        );
        let bad: NetOut = serde_json::from_str(
            r#"{"rules":[{"protocol":"icmp","ports":[{"start":1,"end":2}]}]}"#,
        )
        .unwrap();
        assert!(bad.validate().is_err());
        let bad: NetOut = serde_json::from_str(
            r#"{"rules":[{"networks":[{"start":"10.0.0.9","end":"10.0.0.1"}]}]}"#,
        )
        .unwrap();
        assert!(bad.validate().is_err());
    }

    fn att() -> Attachment {
        Attachment {
            network: "net1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
            bridge: "pnfbr0".into(),
            host_veth: "veth1234".into(),
            container_ips: vec!["10.70.0.2/24".parse().unwrap()],
            ip_masq: true,
            port_mappings: vec![],
            net_out: None,
            source_mac: None,
            keep_source_to: Vec::new(),
        }
    }

    #[test]
    fn a_source_mac_is_unicast_on_a_bridge_port_and_needs_no_address() {
        let mut a = att();
        a.source_mac = Some("02:42:0a:00:00:02".parse().unwrap());
        a.validate().unwrap();
        let text = serde_json::to_string(&a).unwrap();
        assert!(
            text.contains(r#""sourceMac":"02:42:0a:00:00:02""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Attachment>(&text).unwrap(), a);
        // Records written before the field existed still read.
        let old = text.replace(r#","sourceMac":"02:42:0a:00:00:02""#, "");
        assert_eq!(
            serde_json::from_str::<Attachment>(&old).unwrap().source_mac,
            None
        );
        a.container_ips.clear();
        a.validate().unwrap();
        a.source_mac = Some("01:00:5e:00:00:01".parse().unwrap());
        assert!(a.validate().unwrap_err().to_string().contains("unicast"));
        let mut a = att();
        a.source_mac = Some("02:42:0a:00:00:02".parse().unwrap());
        a.bridge = a.host_veth.clone();
        assert!(a.validate().unwrap_err().to_string().contains("routed"));
    }

    #[test]
    fn validation_rejects_bad_names_and_ports() {
        att().validate().unwrap();
        let mut a = att();
        a.container_id = "a;b".into();
        assert!(a
            .validate()
            .unwrap_err()
            .to_string()
            .contains("container id"));
        let mut a = att();
        a.bridge = "a-very-long-bridge-name".into();
        assert!(a.validate().is_err());
        let mut a = att();
        a.port_mappings.push(PortMapping {
            host_port: 0,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        });
        assert!(a.validate().is_err());
        let mut a = att();
        a.port_mappings.push(PortMapping {
            host_port: 80,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: Some("fd70::1".parse().unwrap()),
        });
        assert!(a.validate().unwrap_err().to_string().contains("family"));
        assert_eq!(
            att().subnets(),
            vec!["10.70.0.0/24".parse::<IpNetwork>().unwrap()]
        );
    }
}
