//! Links: bridges, veth pairs, bridge ports, link state and counters.

use std::os::fd::{AsRawFd, BorrowedFd};

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, BridgeVlanInfoFlags, InetDevConf, InfoData, InfoKind, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec};

use super::{Mac, Netlink, NetlinkError};

/// What the kernel reports about one link.
#[derive(Clone, Debug, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    /// Index of the bridge (or other controller) this link is a port of.
    pub master: Option<u32>,
    pub alias: Option<String>,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
    /// IFLA_LINK_NETNSID: for a veth whose peer lives in another namespace, that namespace's
    /// id as seen from here. `None` when the peer is in this namespace (or the link has none).
    pub link_netnsid: Option<i32>,
    pub stats: Option<LinkStats>,
}

impl Link {
    pub(super) fn from_message(msg: &LinkMessage) -> Link {
        let mut l = Link {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            ..Link::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) => l.mac = Mac::from_slice(a),
                LinkAttribute::Mtu(m) => l.mtu = Some(*m),
                LinkAttribute::Controller(c) if *c != 0 => l.master = Some(*c),
                LinkAttribute::Link(i) => l.link = Some(*i),
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                LinkAttribute::LinkNetNsId(id) => l.link_netnsid = Some(*id),
                LinkAttribute::Stats64(s) => {
                    l.stats = Some(LinkStats {
                        rx_bytes: s.rx_bytes,
                        tx_bytes: s.tx_bytes,
                        rx_packets: s.rx_packets,
                        tx_packets: s.tx_packets,
                        rx_errors: s.rx_errors,
                        tx_errors: s.tx_errors,
                        rx_dropped: s.rx_dropped,
                        tx_dropped: s.tx_dropped,
                    })
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// Interface counters (from IFLA_STATS64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// How the bridge should look. Applied fully when the bridge is created; on an existing bridge
/// only what is safe to change under running containers (up, promisc, vlan filtering, MAC pin).
#[derive(Clone, Debug, Default)]
pub struct BridgeOptions {
    pub name: String,
    pub mtu: Option<u32>,
    pub promisc: bool,
    pub vlan_filtering: bool,
}

/// A veth pair created in one request: host side in this namespace, up and (optionally) a bridge
/// port; peer created directly inside the namespace given by `peer_netns`, still down (the kernel
/// refuses to open a veth before its pair is linked, ENOTCONN). Configure its addresses, then
/// `set_up` it: with arp_notify the kernel then announces them.
#[derive(Debug)]
pub struct VethOptions<'a> {
    pub host_name: String,
    pub peer_name: String,
    pub peer_netns: BorrowedFd<'a>,
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    pub host_mac: Option<Mac>,
    /// The peer's MAC; when `None` one is generated here so the caller knows it without asking
    /// the container namespace.
    pub peer_mac: Option<Mac>,
}

/// The result of [`Netlink::create_veth_pair`].
#[derive(Clone, Debug)]
pub struct VethPair {
    pub host: Link,
    pub peer_index: u32,
    pub peer_mac: Mac,
}

const SYSFS_NET: &str = "/sys/class/net";
/// `addr_assign_type` value of an address set by user space: the bridge keeps it.
const NET_ADDR_SET: &str = "3";

impl Netlink {
    /// The link called `name`, or `None` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).build();
        let step = || format!("get link {name}");
        match self
            .exchange(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST, &step)
            .await
        {
            Ok(answers) => first_link(answers, &step).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with `index`, or `None`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).build();
        let step = || format!("get link {index}");
        match self
            .exchange(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST, &step)
            .await
        {
            Ok(answers) => first_link(answers, &step).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msg = LinkMessage::default();
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetLink(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
                &|| "list links".to_string(),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Interface counters of the link with `index`.
    pub async fn link_stats(&self, index: u32) -> Result<LinkStats, NetlinkError> {
        let link = self.link_by_index(index).await?.ok_or_else(|| {
            NetlinkError::new(
                format!("read counters of link {index}"),
                super::Cause::Kernel(libc::ENODEV),
            )
        })?;
        Ok(link.stats.unwrap_or_default())
    }

    /// Makes sure the bridge exists, is up and keeps its MAC address when ports come and go.
    /// Creates it with a pinned random MAC when missing (one request); on an existing bridge
    /// it costs one request when nothing needs changing.
    pub async fn ensure_bridge(&self, opts: &BridgeOptions) -> Result<Link, NetlinkError> {
        if let Some(existing) = self.link_by_name(&opts.name).await? {
            return self.adopt_bridge(existing, opts).await;
        }
        let mac = Mac::random();
        let mut b = LinkBridge::new(&opts.name)
            .address(mac.0.to_vec())
            .promiscuous(opts.promisc);
        if let Some(mtu) = opts.mtu {
            b = b.mtu(mtu);
        }
        if opts.vlan_filtering {
            b = b.vlan_filtering(true);
        }
        let step = || format!("create bridge {}", opts.name);
        match self
            .exchange(
                RouteNetlinkMessage::NewLink(b.build()),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
                &step,
            )
            .await
        {
            Ok(answers) => match first_link(answers, &step) {
                Ok(link) => Ok(link),
                // Kernels before 6.3 do not echo new links.
                Err(_) => self
                    .link_by_name(&opts.name)
                    .await?
                    .ok_or_else(|| NetlinkError::protocol(step(), "bridge vanished")),
            },
            // Another plugin process created it concurrently.
            Err(e) if e.is_exists() => {
                let existing = self.link_by_name(&opts.name).await?.ok_or(e)?;
                self.adopt_bridge(existing, opts).await
            }
            Err(e) => Err(e),
        }
    }

    /// Like [`Netlink::ensure_bridge`] for a link the caller already looked up: checks it is a
    /// bridge and applies what is safe to change (up, promisc, vlan filtering, MAC pin).
    pub async fn adopt_bridge(
        &self,
        mut br: Link,
        opts: &BridgeOptions,
    ) -> Result<Link, NetlinkError> {
        if !br.is_bridge() {
            return Err(NetlinkError::protocol(
                format!("use bridge {}", opts.name),
                format!(
                    "link {} exists and is a {}, not a bridge",
                    opts.name,
                    br.kind.as_deref().unwrap_or("device without kind")
                ),
            ));
        }
        let need_up = !br.up;
        let need_promisc = opts.promisc && !br.promisc;
        let pinned = std::fs::read_to_string(format!("{SYSFS_NET}/{}/addr_assign_type", br.name))
            .map(|s| s.trim() == NET_ADDR_SET)
            // sysfs of another namespace is not visible here; assume pinned rather than touch it.
            .unwrap_or(true);
        if need_up || need_promisc || !pinned || opts.vlan_filtering {
            let mut b = LinkMessageBuilder::<LinkBridge>::new(&opts.name).index(br.index);
            if need_up {
                b = b.up();
            }
            if need_promisc {
                b = b.promiscuous(true);
            }
            if let (false, Some(mac)) = (pinned, br.mac) {
                // Setting the current address marks it user-assigned: the bridge stops
                // following the lowest port MAC.
                b = b.address(mac.0.to_vec());
            }
            if opts.vlan_filtering {
                b = b.vlan_filtering(true);
            }
            self.exchange(
                RouteNetlinkMessage::NewLink(b.build()),
                NLM_F_REQUEST | NLM_F_ACK,
                &|| format!("configure bridge {}", opts.name),
            )
            .await?;
            br.up = true;
            br.promisc |= need_promisc;
        }
        Ok(br)
    }

    /// Creates a veth pair in one request; the peer is born in `peer_netns` under its final
    /// name, the host side is up and (with `master`) already a bridge port.
    pub async fn create_veth_pair(&self, opts: &VethOptions<'_>) -> Result<VethPair, NetlinkError> {
        let peer_mac = opts.peer_mac.unwrap_or_else(Mac::random);
        let mut peer = LinkUnspec::new_with_name(&opts.peer_name)
            .address(peer_mac.0.to_vec())
            .setns_by_fd(opts.peer_netns.as_raw_fd());
        if let Some(mtu) = opts.mtu {
            peer = peer.mtu(mtu);
        }
        let mut host = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(opts.host_name.clone())
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = opts.mtu {
            host = host.mtu(mtu);
        }
        if let Some(mac) = opts.host_mac {
            host = host.address(mac.0.to_vec());
        }
        if let Some(master) = opts.master {
            host = host.controller(master);
        }
        let step = || format!("create veth pair {}/{}", opts.host_name, opts.peer_name);
        let answers = self
            .exchange(
                RouteNetlinkMessage::NewLink(host.build()),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
                &step,
            )
            .await?;
        let mut host = match first_link(answers, &step) {
            Ok(l) if l.link.is_some() && l.mac.is_some() => l,
            // No echo (kernel < 6.3) or an echo without the peer index: ask.
            _ => self
                .link_by_name(&opts.host_name)
                .await?
                .ok_or_else(|| NetlinkError::protocol(step(), "host side vanished"))?,
        };
        // The echo is sent before the port joins the bridge; the ack says it did.
        if opts.master.is_some() {
            host.master = opts.master;
        }
        let peer_index = host.link.ok_or_else(|| {
            NetlinkError::protocol(step(), "kernel did not report the peer index")
        })?;
        Ok(VethPair {
            host,
            peer_index,
            peer_mac,
        })
    }

    /// `ip link set <index> up`.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.command(RouteNetlinkMessage::SetLink(msg), 0, &|| {
            format!("set link {index} up")
        })
        .await
    }

    /// `ip link set <index> alias <alias>` (the kernel ignores IFLA_IFALIAS at creation).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).alias(alias).build();
        self.command(RouteNetlinkMessage::SetLink(msg), 0, &|| {
            format!("set alias of link {index}")
        })
        .await
    }

    /// `ip link set <index> address <mac>`.
    pub async fn set_mac(&self, index: u32, mac: Mac) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.0.to_vec())
            .build();
        self.command(RouteNetlinkMessage::SetLink(msg), 0, &|| {
            format!("set address of link {index} to {mac}")
        })
        .await
    }

    /// Sets `net.ipv4.conf.<link>.arp_notify=1` through netlink: the kernel then sends a
    /// gratuitous ARP for the link's addresses whenever it comes up or changes address.
    pub async fn enable_arp_notify(&self, index: u32) -> Result<(), NetlinkError> {
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]))
            .build();
        self.command(RouteNetlinkMessage::SetLink(msg), 0, &|| {
            format!("enable arp_notify on link {index}")
        })
        .await
    }

    /// Deletes the link with `index` (a veth takes its peer with it).
    pub async fn del_link(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).build();
        self.command(RouteNetlinkMessage::DelLink(msg), 0, &|| {
            format!("delete link {index}")
        })
        .await
    }

    /// Deletes the link called `name` in one request (no lookup first).
    pub async fn del_link_by_name(&self, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).build();
        self.command(RouteNetlinkMessage::DelLink(msg), 0, &|| {
            format!("delete link {name}")
        })
        .await
    }

    /// Moves the link with `index` into the namespace `target`, renamed to `new_name` and down,
    /// in one request (`ip link set <index> down netns <target> name <new_name>`). A veth keeps
    /// its peer: afterwards the moved end's `link` names the peer's index in the peer's
    /// namespace. The kernel names the link `new_name` as it arrives when its current name is
    /// taken in the target (the usual `eth0`); otherwise it moves it, then renames it, so if
    /// `new_name` is taken there the call fails with EEXIST leaving the link in the target
    /// under its old name.
    pub async fn move_link_to_netns(
        &self,
        index: u32,
        target: BorrowedFd<'_>,
        new_name: &str,
    ) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .down()
            .setns_by_fd(target.as_raw_fd())
            .name(new_name.to_string())
            .build();
        self.command(RouteNetlinkMessage::SetLink(msg), 0, &|| {
            format!("move link {index} to another netns as {new_name}")
        })
        .await
    }

    /// The links enslaved to the link with `index` (a bridge's ports), one filtered dump.
    pub async fn ports_of(&self, index: u32) -> Result<Vec<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        // With strict checking (set on every socket here) the kernel filters the dump by master.
        msg.attributes.push(LinkAttribute::Controller(index));
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetLink(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
                &|| format!("list ports of link {index}"),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .filter(|l| l.master == Some(index))
            .collect())
    }

    /// Deletes bridge `name` only if no port is enslaved to it. Returns whether it deleted it;
    /// a missing bridge is `Ok(false)`, a link of another kind an error.
    pub async fn del_bridge_if_unused(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(br) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        if !br.is_bridge() {
            return Err(NetlinkError::protocol(
                format!("delete bridge {name}"),
                format!(
                    "link {name} is a {}, not a bridge",
                    br.kind.as_deref().unwrap_or("device without kind")
                ),
            ));
        }
        if !self.ports_of(br.index).await?.is_empty() {
            return Ok(false);
        }
        match self.del_link(br.index).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hairpin mode on a bridge port: frames may leave by the port they came in on.
    pub async fn set_hairpin(&self, port: u32, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(port).hairpin(on).build();
        self.command(RouteNetlinkMessage::NewLink(msg), 0, &|| {
            format!("set hairpin {on} on bridge port {port}")
        })
        .await
    }

    /// Port isolation: isolated ports can only talk to non-isolated ones (e.g. the uplink).
    pub async fn set_port_isolated(&self, port: u32, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(port).isolated(on).build();
        self.command(RouteNetlinkMessage::NewLink(msg), 0, &|| {
            format!("set isolated {on} on bridge port {port}")
        })
        .await
    }

    /// Makes `port` an access port of VLAN `vid` (PVID, egress untagged). Requires
    /// vlan_filtering on the bridge.
    pub async fn bridge_vlan_add(
        &self,
        port: u32,
        vid: u16,
        access: bool,
    ) -> Result<(), NetlinkError> {
        let flags = if access {
            BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged
        } else {
            BridgeVlanInfoFlags::empty()
        };
        let msg = LinkBridgeVlan::new(port).vlan(vid, flags).build();
        self.command(RouteNetlinkMessage::SetLink(msg), 0, &|| {
            format!("add vlan {vid} to bridge port {port}")
        })
        .await
    }

    /// Removes VLAN `vid` from `port` (e.g. the default VLAN 1 of an access port).
    pub async fn bridge_vlan_del(&self, port: u32, vid: u16) -> Result<(), NetlinkError> {
        let msg = LinkBridgeVlan::new(port)
            .vlan(vid, BridgeVlanInfoFlags::empty())
            .build();
        self.command(RouteNetlinkMessage::DelLink(msg), 0, &|| {
            format!("remove vlan {vid} from bridge port {port}")
        })
        .await
    }
}

fn first_link(
    answers: Vec<RouteNetlinkMessage>,
    step: &dyn Fn() -> String,
) -> Result<Link, NetlinkError> {
    answers
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::protocol(step(), "kernel sent no link message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: Mac = "0a:1B:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        assert_eq!("0a-1b-2c-3d-4e-5f".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "zz:1b:2c:3d:4e:5f",
            "0a1b:2c:3d:4e:5f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..64 {
            let m = Mac::random();
            assert_eq!(m.0[0] & 0x01, 0, "unicast");
            assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(Mac::random(), Mac::random());
    }
}
