//! Rule generation: turns attachments into an ordered list of nftables operations, with no I/O;
//! invariant: per-attachment work only adds or deletes that attachment's chains and map
//! elements, so its cost does not grow with the number of other attachments.

use ipnetwork::IpNetwork;

pub use super::vocab::*;

pub use super::egress::egress_rules;
use super::l2::{bridge_infrastructure, mac_elems};
use super::names::egress_chain;
use super::types::Attachment;

pub const MAP_PM4_ANY: &str = "pm4_any";
pub const MAP_PM6_ANY: &str = "pm6_any";
pub const MAP_PM4_IP: &str = "pm4_ip";
pub const MAP_PM6_IP: &str = "pm6_ip";
pub const SET_MASQ4: &str = "masq4";
pub const SET_MASQ6: &str = "masq6";
pub const MAP_EGRESS4: &str = "egress4";
pub const MAP_EGRESS6: &str = "egress6";
pub const SET_MEMBERS4: &str = "members4";
pub const SET_MEMBERS6: &str = "members6";
pub const SET_LOCALNET: &str = "localnet";
/// Host veths of routed attachments (no bridge): traffic leaving through one goes to a local
/// container and keeps its source address.
pub const SET_ROUTED: &str = "routed";
pub const CHAIN_PORTMAP: &str = "portmap";
/// Container address → jump to its `c-<key>-keep` chain: destinations (its cluster network's
/// subnets) to which its traffic is not masqueraded even with ipMasq.
pub const MAP_KEEP4: &str = "keepsrc4";
pub const MAP_KEEP6: &str = "keepsrc6";

fn rule(chain: &str, exprs: Vec<Expr>) -> Op {
    Op::AddRule(Rule {
        chain: chain.to_string(),
        exprs,
    })
}

fn jump(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Jump(chain.to_string()))
}

/// The table, its maps and base chains: created once, shared by every attachment.
pub fn infrastructure() -> Vec<Op> {
    use Field::*;
    let mut ops = vec![Op::AddTable(Table::Inet)];
    let to = |fam| SetData::Value(vec![Daddr(fam), Dport]);
    let sets: [(&'static str, Vec<Field>, SetData); 14] = [
        (
            MAP_PM4_IP,
            vec![Daddr(Fam::V4), L4proto, Dport],
            to(Fam::V4),
        ),
        (
            MAP_PM6_IP,
            vec![Daddr(Fam::V6), L4proto, Dport],
            to(Fam::V6),
        ),
        (MAP_PM4_ANY, vec![L4proto, Dport], to(Fam::V4)),
        (MAP_PM6_ANY, vec![L4proto, Dport], to(Fam::V6)),
        (SET_MASQ4, vec![Saddr(Fam::V4)], SetData::None),
        (SET_MASQ6, vec![Saddr(Fam::V6)], SetData::None),
        (MAP_EGRESS4, vec![Iifname, Saddr(Fam::V4)], SetData::Verdict),
        (MAP_EGRESS6, vec![Iifname, Saddr(Fam::V6)], SetData::Verdict),
        (SET_MEMBERS4, vec![Oifname, Saddr(Fam::V4)], SetData::None),
        (SET_MEMBERS6, vec![Oifname, Saddr(Fam::V6)], SetData::None),
        (SET_LOCALNET, vec![Iifname], SetData::None),
        (SET_ROUTED, vec![Oifname], SetData::None),
        (MAP_KEEP4, vec![Saddr(Fam::V4)], SetData::Verdict),
        (MAP_KEEP6, vec![Saddr(Fam::V6)], SetData::Verdict),
    ];
    for (name, key, data) in sets {
        ops.push(Op::AddSet(SetDef { name, key, data }));
    }
    let base = |name, hook, priority, nat| {
        Op::AddBaseChain(BaseChain {
            name,
            hook,
            priority,
            nat,
        })
    };
    ops.push(base("guard", Hook::Prerouting, -300, false));
    ops.push(base("prerouting", Hook::Prerouting, -100, true));
    ops.push(base("output", Hook::Output, -100, true));
    ops.push(base("postrouting", Hook::Postrouting, 100, true));
    ops.push(base("forward", Hook::Forward, 0, false));
    ops.push(Op::AddChain(CHAIN_PORTMAP.into()));

    let lo: IpNetwork = "127.0.0.0/8".parse().expect("literal");
    let localnet = |field| Expr::Lookup {
        set: SET_LOCALNET.into(),
        key: vec![field],
        vmap: false,
    };
    // route_localnet is on for bridges with port mappings: refuse loopback addresses arriving
    // from them (the kube-proxy CVE-2020-8558 lesson).
    for dst in [true, false] {
        ops.push(rule(
            "guard",
            vec![
                Expr::Nfproto(Fam::V4),
                localnet(Iifname),
                Expr::Addr {
                    dst,
                    net: lo,
                    negate: false,
                },
                Expr::Verdict(Verdict::Drop),
            ],
        ));
    }
    for chain in ["prerouting", "output"] {
        ops.push(rule(chain, vec![Expr::FibDaddrLocal, jump(CHAIN_PORTMAP)]));
    }
    let vmap = |set: &str, key: Vec<Field>| Expr::Lookup {
        set: set.into(),
        key,
        vmap: true,
    };
    // Port mappings are data maps (key -> container address . port) read by one dnat each: no
    // per-container chain, so no jump for the kernel to re-validate on every commit. A mapping
    // for one host address wins over a wildcard one.
    for (fam, by_ip, any) in [
        (Fam::V4, MAP_PM4_IP, MAP_PM4_ANY),
        (Fam::V6, MAP_PM6_IP, MAP_PM6_ANY),
    ] {
        ops.push(rule(
            CHAIN_PORTMAP,
            vec![
                Expr::Nfproto(fam),
                Expr::DnatMap {
                    fam,
                    set: by_ip.into(),
                    key: vec![Daddr(fam), L4proto, Dport],
                },
            ],
        ));
        ops.push(rule(
            CHAIN_PORTMAP,
            vec![
                Expr::Nfproto(fam),
                Expr::DnatMap {
                    fam,
                    set: any.into(),
                    key: vec![L4proto, Dport],
                },
            ],
        ));
    }
    // Hairpin: a container reaching a neighbour through a host port must see replies come back
    // through the host, so the source is rewritten to the bridge address. Keyed on the output
    // bridge and the source address (not the input interface: with br_netfilter such packets
    // are bridged and have none).
    for (fam, set) in [(Fam::V4, SET_MEMBERS4), (Fam::V6, SET_MEMBERS6)] {
        ops.push(rule(
            "postrouting",
            vec![
                Expr::Nfproto(fam),
                Expr::CtDnat,
                Expr::Lookup {
                    set: set.into(),
                    key: vec![Oifname, Saddr(fam)],
                    vmap: false,
                },
                Expr::Masquerade,
            ],
        ));
    }
    // Host -> 127.0.0.1:hostPort -> container: the container cannot answer 127.0.0.1.
    ops.push(rule(
        "postrouting",
        vec![
            Expr::Nfproto(Fam::V4),
            Expr::CtDnat,
            localnet(Oifname),
            Expr::Addr {
                dst: false,
                net: lo,
                negate: false,
            },
            Expr::Masquerade,
        ],
    ));
    // Routed attachments have no bridge to stay on: traffic routed out to a local container's
    // host veth (from another container, routed or bridged) keeps its source address.
    ops.push(rule(
        "postrouting",
        vec![
            Expr::Lookup {
                set: SET_ROUTED.into(),
                key: vec![Oifname],
                vmap: false,
            },
            Expr::Verdict(Verdict::Accept),
        ],
    ));
    // ipMasq, as Docker does it (`-s <subnet> ! -o <bridge> -j MASQUERADE`): traffic leaving
    // through the container's own bridge stays on its network and keeps its address; so does
    // multicast; everything else from a masqueraded container is masqueraded. Plain sets, no
    // jumps: the kernel re-validates every jump target on each commit.
    let mcast = [
        (Fam::V4, SET_MEMBERS4, SET_MASQ4, "224.0.0.0/4"),
        (Fam::V6, SET_MEMBERS6, SET_MASQ6, "ff00::/8"),
    ];
    for (fam, members, _, _) in mcast {
        ops.push(rule(
            "postrouting",
            vec![
                Expr::Nfproto(fam),
                Expr::Lookup {
                    set: members.into(),
                    key: vec![Oifname, Saddr(fam)],
                    vmap: false,
                },
                Expr::Verdict(Verdict::Accept),
            ],
        ));
    }
    // Inside a cluster network no masquerade: a container with `keep_source_to` jumps to its
    // chain, which accepts (ends postrouting, source kept) traffic to those subnets.
    for (fam, keep) in [(Fam::V4, MAP_KEEP4), (Fam::V6, MAP_KEEP6)] {
        ops.push(rule(
            "postrouting",
            vec![
                Expr::Nfproto(fam),
                Expr::Lookup {
                    set: keep.into(),
                    key: vec![Saddr(fam)],
                    vmap: true,
                },
            ],
        ));
    }
    for (fam, _, masq, mc) in mcast {
        let net: IpNetwork = mc.parse().expect("literal");
        ops.push(rule(
            "postrouting",
            vec![
                Expr::Nfproto(fam),
                Expr::Addr {
                    dst: true,
                    net,
                    negate: false,
                },
                Expr::Verdict(Verdict::Accept),
            ],
        ));
        ops.push(rule(
            "postrouting",
            vec![
                Expr::Nfproto(fam),
                Expr::Lookup {
                    set: masq.into(),
                    key: vec![Saddr(fam)],
                    vmap: false,
                },
                Expr::Masquerade,
            ],
        ));
    }
    ops.push(rule(
        "forward",
        vec![
            Expr::Nfproto(Fam::V4),
            vmap(MAP_EGRESS4, vec![Iifname, Saddr(Fam::V4)]),
        ],
    ));
    ops.push(rule(
        "forward",
        vec![
            Expr::Nfproto(Fam::V6),
            vmap(MAP_EGRESS6, vec![Iifname, Saddr(Fam::V6)]),
        ],
    ));
    ops
}

/// Which shared, reference-counted objects this attachment is the first (or, on removal, the
/// last) user of: decided by the caller from the state's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedEdges {
    /// Add (or delete) the bridge's localnet element (port mappings via 127.0.0.1).
    pub bridge_portmap: bool,
    /// Add (or delete) the bridge table: the first (last) attachment with a MAC check.
    pub bridge_table: bool,
}

/// Everything one attachment adds, shared objects first.
pub fn attach_ops(att: &Attachment, key: &str, edges: &SharedEdges) -> Vec<Op> {
    let mut ops = Vec::new();
    if edges.bridge_portmap {
        ops.extend(
            bridge_elems(&att.bridge)
                .into_iter()
                .map(|(set, key)| Op::AddElem {
                    set,
                    key,
                    data: None,
                }),
        );
    }
    for (set, key) in routed_elems(att) {
        ops.push(Op::AddElem {
            set,
            key,
            data: None,
        });
    }
    if edges.bridge_table && att.source_mac.is_some() {
        ops.extend(bridge_infrastructure());
    }
    for (set, key) in mac_elems(att) {
        ops.push(Op::AddElem {
            set,
            key,
            data: None,
        });
    }
    for (set, key) in member_elems(att) {
        ops.push(Op::AddElem {
            set,
            key,
            data: None,
        });
    }
    for (set, key, value) in portmap_elems(att) {
        ops.push(Op::AddElem {
            set,
            key,
            data: Some(ElemData::Value(value)),
        });
    }
    if att.ip_masq {
        for (set, key) in masq_elems(att) {
            ops.push(Op::AddElem {
                set,
                key,
                data: None,
            });
        }
        if !att.keep_source_to.is_empty() {
            let chain = keep_chain(key);
            ops.push(Op::AddChain(chain.clone()));
            for net in &att.keep_source_to {
                ops.push(rule(
                    &chain,
                    vec![
                        Expr::Nfproto(Fam::of(&net.ip())),
                        Expr::Addr {
                            dst: true,
                            net: *net,
                            negate: false,
                        },
                        Expr::Verdict(Verdict::Accept),
                    ],
                ));
            }
            for (set, key) in keep_elems(att) {
                ops.push(Op::AddElem {
                    set,
                    key,
                    data: Some(ElemData::Verdict(Verdict::Jump(chain.clone()))),
                });
            }
        }
    }
    if let Some(net_out) = &att.net_out {
        let chain = egress_chain(key);
        ops.push(Op::AddChain(chain.clone()));
        ops.extend(egress_rules(&chain, &att.subnets(), net_out));
        for (set, key) in egress_elems(att) {
            ops.push(Op::AddElem {
                set,
                key,
                data: Some(ElemData::Verdict(Verdict::Jump(chain.clone()))),
            });
        }
    }
    ops
}

/// Everything one attachment removes: elements before the chains they jump to.
pub fn detach_ops(att: &Attachment, key: &str, edges: &SharedEdges) -> Vec<Op> {
    let mut ops = Vec::new();
    let del = |(set, key): (String, Vec<KeyVal>)| Op::DelElem { set, key };
    ops.extend(member_elems(att).into_iter().map(del));
    ops.extend(routed_elems(att).into_iter().map(del));
    ops.extend(
        portmap_elems(att)
            .into_iter()
            .map(|(set, key, _)| del((set, key))),
    );
    if att.ip_masq {
        ops.extend(masq_elems(att).into_iter().map(del));
        if !att.keep_source_to.is_empty() {
            ops.extend(keep_elems(att).into_iter().map(del));
            ops.push(Op::DelChain(keep_chain(key)));
        }
    }
    if att.net_out.is_some() {
        ops.extend(egress_elems(att).into_iter().map(del));
        ops.push(Op::DelChain(egress_chain(key)));
    }
    if edges.bridge_portmap {
        ops.extend(bridge_elems(&att.bridge).into_iter().map(del));
    }
    if edges.bridge_table && att.source_mac.is_some() {
        ops.push(Op::DelTable(Table::Bridge));
    } else {
        ops.extend(mac_elems(att).into_iter().map(del));
    }
    ops
}

/// The (set, key) pairs naming this attachment's port-map elements.
/// (map, key, container address . port) of this attachment's port mappings: per mapping, one
/// element per address family the container has (its first address of that family), or only
/// the hostIP's family.
pub fn portmap_elems(att: &Attachment) -> Vec<(String, Vec<KeyVal>, Vec<KeyVal>)> {
    let first = |v4: bool| att.addrs().find(|a| a.is_ipv4() == v4);
    let mut out = Vec::new();
    for pm in &att.port_mappings {
        let tail = [
            KeyVal::Proto(pm.protocol.number()),
            KeyVal::Port(pm.host_port),
        ];
        for v4 in [true, false] {
            let Some(ctr) = first(v4) else { continue };
            let value = vec![KeyVal::Addr(ctr), KeyVal::Port(pm.container_port)];
            match pm.host_ip {
                None => {
                    let set = if v4 { MAP_PM4_ANY } else { MAP_PM6_ANY };
                    out.push((set.to_string(), tail.to_vec(), value));
                }
                Some(h) if h.is_ipv4() == v4 => {
                    let set = if v4 { MAP_PM4_IP } else { MAP_PM6_IP };
                    let mut k = vec![KeyVal::Addr(h)];
                    k.extend(tail.clone());
                    out.push((set.to_string(), k, value));
                }
                Some(_) => {}
            }
        }
    }
    out
}

pub fn masq_elems(att: &Attachment) -> Vec<(String, Vec<KeyVal>)> {
    att.addrs()
        .map(|a| {
            (
                if a.is_ipv4() { SET_MASQ4 } else { SET_MASQ6 }.to_string(),
                vec![KeyVal::Addr(a)],
            )
        })
        .collect()
}

/// `c-<key>-keep`: the attachment's no-masquerade destinations.
pub fn keep_chain(key: &str) -> String {
    format!("c-{key}-keep")
}

pub fn keep_elems(att: &Attachment) -> Vec<(String, Vec<KeyVal>)> {
    att.addrs()
        .map(|a| {
            (
                if a.is_ipv4() { MAP_KEEP4 } else { MAP_KEEP6 }.to_string(),
                vec![KeyVal::Addr(a)],
            )
        })
        .collect()
}

pub fn egress_elems(att: &Attachment) -> Vec<(String, Vec<KeyVal>)> {
    att.addrs()
        .map(|a| {
            let set = if a.is_ipv4() {
                MAP_EGRESS4
            } else {
                MAP_EGRESS6
            };
            (
                set.to_string(),
                vec![KeyVal::Ifname(att.bridge.clone()), KeyVal::Addr(a)],
            )
        })
        .collect()
}

/// Shared per bridge while it has port mappings: route_localnet's loopback guard and SNAT.
pub fn bridge_elems(bridge: &str) -> Vec<(String, Vec<KeyVal>)> {
    vec![(
        SET_LOCALNET.to_string(),
        vec![KeyVal::Ifname(bridge.to_string())],
    )]
}

/// The routed set's element of a routed attachment (its host veth); none for bridged ones.
pub fn routed_elems(att: &Attachment) -> Vec<(String, Vec<KeyVal>)> {
    if att.is_routed() {
        vec![(
            SET_ROUTED.to_string(),
            vec![KeyVal::Ifname(att.host_veth.clone())],
        )]
    } else {
        Vec::new()
    }
}

/// (bridge . address) of every attachment: who may hairpin through a host port.
pub fn member_elems(att: &Attachment) -> Vec<(String, Vec<KeyVal>)> {
    att.addrs()
        .map(|a| {
            let set = if a.is_ipv4() {
                SET_MEMBERS4
            } else {
                SET_MEMBERS6
            };
            (
                set.to_string(),
                vec![KeyVal::Ifname(att.bridge.clone()), KeyVal::Addr(a)],
            )
        })
        .collect()
}

/// Renders ops as nft-like text (diagnostics, golden tests, `plugnet firewall show`).
pub fn render(ops: &[Op]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::types::*;

    #[test]
    fn cluster_subnets_keep_the_source_address_even_with_ip_masq() {
        let mut a = att();
        a.keep_source_to = vec!["10.70.0.0/16".parse().unwrap()];
        let edges = SharedEdges::default();
        let ops = attach_ops(&a, "k1", &edges);
        assert!(ops.contains(&Op::AddChain("c-k1-keep".into())));
        let jumps = ops
            .iter()
            .filter(|o| {
                matches!(o, Op::AddElem { set, data: Some(ElemData::Verdict(Verdict::Jump(c))), .. }
                if (set == MAP_KEEP4 || set == MAP_KEEP6) && c == "c-k1-keep")
            })
            .count();
        assert_eq!(jumps, 2, "one per container address");
        let gone = detach_ops(&a, "k1", &edges);
        assert!(gone.contains(&Op::DelChain("c-k1-keep".into())));
        a.ip_masq = false;
        assert!(!attach_ops(&a, "k1", &edges).contains(&Op::AddChain("c-k1-keep".into())));
    }

    fn att() -> Attachment {
        Attachment {
            network: "net1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
            bridge: "pnfbr0".into(),
            host_veth: "veth1234".into(),
            container_ips: vec![
                "10.70.0.2/24".parse().unwrap(),
                "fd70::2/64".parse().unwrap(),
            ],
            ip_masq: true,
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: Protocol::Udp,
                    host_ip: Some("192.0.2.1".parse().unwrap()),
                },
            ],
            net_out: None,
            source_mac: None,
            keep_source_to: Vec::new(),
        }
    }

    #[test]
    fn key_concat_pads_each_part() {
        let k = KeyVal::concat(&[KeyVal::Proto(6), KeyVal::Port(8080)]);
        assert_eq!(k, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let k = KeyVal::concat(&[
            KeyVal::Ifname("br0".into()),
            KeyVal::Addr("10.0.0.1".parse().unwrap()),
        ]);
        assert_eq!(k.len(), 20);
        assert_eq!(&k[..4], b"br0\0");
    }

    #[test]
    fn attach_golden() {
        let edges = SharedEdges {
            bridge_portmap: true,
            bridge_table: false,
        };
        let text = render(&attach_ops(&att(), "k", &edges));
        let want = "\
add element inet plugnet localnet { \"pnfbr0\" }
add element inet plugnet members4 { \"pnfbr0\" . 10.70.0.2 }
add element inet plugnet members6 { \"pnfbr0\" . fd70::2 }
add element inet plugnet pm4_any { tcp . 8080 : 10.70.0.2 . 80 }
add element inet plugnet pm6_any { tcp . 8080 : fd70::2 . 80 }
add element inet plugnet pm4_ip { 192.0.2.1 . udp . 5353 : 10.70.0.2 . 53 }
add element inet plugnet masq4 { 10.70.0.2 }
add element inet plugnet masq6 { fd70::2 }
";
        assert_eq!(text, want);
    }

    #[test]
    fn mac_check_golden() {
        let mut a = att();
        a.port_mappings.clear();
        a.ip_masq = false;
        a.source_mac = Some("02:42:0a:46:00:02".parse().unwrap());
        let first = SharedEdges {
            bridge_table: true,
            ..SharedEdges::default()
        };
        let text = render(&attach_ops(&a, "k", &first));
        let want = "\
add table bridge plugnet
add set bridge plugnet macports { type ifname; }
add set bridge plugnet macs { type ifname . ether_addr; }
add chain bridge plugnet macspoof { type filter hook prerouting priority -300; policy accept; }
add rule bridge plugnet macspoof iifname @macports iifname . ether saddr != @macs counter drop
add rule bridge plugnet macspoof iifname @macports meta protocol arp iifname . arp saddr ether != @macs counter drop
add rule bridge plugnet macspoof iifname @macports meta l4proto ipv6-icmp @th,0,8 133 @th,64,8 1 iifname . @th,80,48 != @macs counter drop
add rule bridge plugnet macspoof iifname @macports meta l4proto ipv6-icmp @th,0,8 135 @th,192,8 1 iifname . @th,208,48 != @macs counter drop
add rule bridge plugnet macspoof iifname @macports meta l4proto ipv6-icmp @th,0,8 136 @th,192,8 2 iifname . @th,208,48 != @macs counter drop
add element bridge plugnet macports { \"veth1234\" }
add element bridge plugnet macs { \"veth1234\" . 02:42:0a:46:00:02 }
add element inet plugnet members4 { \"pnfbr0\" . 10.70.0.2 }
add element inet plugnet members6 { \"pnfbr0\" . fd70::2 }
";
        assert_eq!(text, want);
        // Later attachments add their elements only; the last one takes the table with it.
        let later = render(&attach_ops(&a, "k", &SharedEdges::default()));
        assert!(!later.contains("add table"), "{later}");
        assert!(later.contains("add element bridge plugnet macs"), "{later}");
        let last = render(&detach_ops(&a, "k", &first));
        assert!(last.ends_with("delete table bridge plugnet\n"), "{last}");
        assert!(!last.contains("delete element bridge"), "{last}");
        let other = render(&detach_ops(&a, "k", &SharedEdges::default()));
        assert!(other
            .contains("delete element bridge plugnet macs { \"veth1234\" . 02:42:0a:46:00:02 }"));
        // Without a MAC check nothing of the bridge table's.
        a.source_mac = None;
        assert!(!render(&attach_ops(&a, "k", &first)).contains("bridge"));
    }

    #[test]
    fn bridge_objects_have_names_of_their_own() {
        for op in infrastructure() {
            let name = match &op {
                Op::AddSet(s) => s.name,
                Op::AddBaseChain(c) => c.name,
                _ => continue,
            };
            assert_eq!(Table::of(name), Table::Inet, "{name}");
        }
        for op in bridge_infrastructure() {
            match &op {
                Op::AddSet(s) => assert_eq!(Table::of(s.name), Table::Bridge),
                Op::AddBaseChain(c) => assert_eq!(Table::of(c.name), Table::Bridge),
                Op::AddRule(r) => assert_eq!(Table::of(&r.chain), Table::Bridge),
                _ => {}
            }
        }
    }

    #[test]
    fn no_shared_edges_means_only_own_objects() {
        let ops = attach_ops(&att(), "k", &SharedEdges::default());
        assert!(ops.iter().all(|o| match o {
            Op::AddElem { set, .. } => !set.starts_with("localnet"),
            _ => false,
        }));
    }

    #[test]
    fn detach_deletes_elements_before_chains() {
        let mut a = att();
        a.net_out = Some(NetOut {
            default: NetOutDefault::Deny,
            rules: vec![],
        });
        let ops = detach_ops(
            &a,
            "k",
            &SharedEdges {
                bridge_portmap: true,
                bridge_table: false,
            },
        );
        let pos = |want: &Op| ops.iter().position(|o| o == want).unwrap();
        let last_jump = ops
            .iter()
            .rposition(|o| matches!(o, Op::DelElem { set, .. } if set.starts_with("egress")))
            .unwrap();
        assert!(pos(&Op::DelChain("c-k-out".into())) > last_jump);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::DelElem { .. }))
                .count(),
            2 + 3 + 2 + 2 + 1 // members, port maps, masq, egress, localnet
        );
    }

    #[test]
    fn egress_golden() {
        let n: NetOut = serde_json::from_str(
            r#"{"default":"deny","rules":[{"protocol":"tcp","networks":[{"cidr":"10.71.0.0/24"}],"ports":[{"start":80,"end":80},{"start":8000,"end":8100}]},{"protocol":"icmp","icmps":{"type":8}},{"protocol":"all","networks":[{"start":"10.72.0.1","end":"10.72.0.9"}]}]}"#,
        )
        .unwrap();
        let text = render(&egress_rules(
            "c-k-out",
            &["10.70.0.0/24".parse().unwrap()],
            &n,
        ));
        let want = "\
add rule inet plugnet c-k-out ct state established,related return
add rule inet plugnet c-k-out meta nfproto ipv4 ip daddr 10.70.0.0/24 return
add rule inet plugnet c-k-out meta nfproto ipv4 ip daddr 10.71.0.0-10.71.0.255 meta l4proto tcp th dport 80 counter accept
add rule inet plugnet c-k-out meta nfproto ipv4 ip daddr 10.71.0.0-10.71.0.255 meta l4proto tcp th dport 8000-8100 counter accept
add rule inet plugnet c-k-out meta nfproto ipv4 meta l4proto icmp icmp type 8 counter accept
add rule inet plugnet c-k-out meta nfproto ipv4 ip daddr 10.72.0.1-10.72.0.9 counter accept
add rule inet plugnet c-k-out counter reject with icmpx admin-prohibited
";
        assert_eq!(text, want);
        let allow = NetOut {
            default: NetOutDefault::Allow,
            rules: vec![n.rules[0].clone()],
        };
        let text = render(&egress_rules("c", &[], &allow));
        assert!(text
            .lines()
            .last()
            .unwrap()
            .ends_with("counter reject with icmpx admin-prohibited"));
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn infrastructure_is_self_contained() {
        let ops = infrastructure();
        assert_eq!(ops[0], Op::AddTable(Table::Inet));
        // Every set a rule looks up is created before the rule.
        for (i, op) in ops.iter().enumerate() {
            if let Op::AddRule(r) = op {
                for e in &r.exprs {
                    if let Expr::Lookup { set, .. } = e {
                        assert!(
                            ops[..i]
                                .iter()
                                .any(|o| matches!(o, Op::AddSet(s) if s.name == set)),
                            "{set}"
                        );
                    }
                }
            }
        }
    }
}
