//! The vocabulary plugnet's rules are written in (families, packet fields, map keys and values,
//! statements, operations) and its nft-syntax rendering; invariant: no I/O here — `plan` builds
//! these values and `nft` is the only module that turns them into netlink.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// plugnet's own table (family inet: one table for IPv4 and IPv6, filter and NAT).
pub const TABLE: &str = "plugnet";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn of(ip: &IpAddr) -> Fam {
        if ip.is_ipv4() {
            Fam::V4
        } else {
            Fam::V6
        }
    }
    fn word(self) -> &'static str {
        match self {
            Fam::V4 => "ip",
            Fam::V6 => "ip6",
        }
    }
}

/// plugnet's two tables, both named [`TABLE`]: `inet` for NAT and filtering, `bridge` for the
/// source MAC checks on bridge ports (made only while an attachment asks for them). Every
/// object plugnet makes lives in the table [`Table::of`] its name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Inet,
    Bridge,
}

impl Table {
    /// The table holding the set or chain called `name`: the bridge table's few objects have
    /// names of their own ([`BRIDGE_OBJECTS`]), every other one is the inet table's.
    pub fn of(name: &str) -> Table {
        if BRIDGE_OBJECTS.contains(&name) {
            Table::Bridge
        } else {
            Table::Inet
        }
    }
    /// The nftables family number (`NFPROTO_INET`, `NFPROTO_BRIDGE`).
    pub fn family(self) -> u8 {
        match self {
            Table::Inet => libc::NFPROTO_INET as u8,
            Table::Bridge => libc::NFPROTO_BRIDGE as u8,
        }
    }
    fn word(self) -> &'static str {
        match self {
            Table::Inet => "inet",
            Table::Bridge => "bridge",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {TABLE}", self.word())
    }
}

/// The sets and chains of the bridge table (see [`Table::of`]).
pub const BRIDGE_OBJECTS: [&str; 3] = [SET_MAC_PORTS, SET_MACS, CHAIN_MACSPOOF];
/// Bridge ports (host veths) whose frames' source MACs are checked.
pub const SET_MAC_PORTS: &str = "macports";
/// (port . MAC) pairs: the one source MAC each checked port may send from.
pub const SET_MACS: &str = "macs";
/// The bridge table's base chain (prerouting): drops what a checked port forges.
pub const CHAIN_MACSPOOF: &str = "macspoof";

/// A packet field loaded into a register (as a match subject or a map key part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Iifname,
    Oifname,
    Saddr(Fam),
    Daddr(Fam),
    L4proto,
    Dport,
    /// The Ethernet source address (bridge family).
    EtherSaddr,
    /// An ARP packet's sender hardware address (Ethernet/IPv4 ARP).
    ArpSha,
    /// The six bytes at this offset of an ICMPv6 message: a neighbour-discovery link-layer
    /// address option's address, where the message's first option sits.
    NdLladdr(u32),
}

impl Field {
    /// Bytes the field occupies in a register / key.
    pub fn byte_len(self) -> u32 {
        match self {
            Field::Iifname | Field::Oifname => 16,
            Field::Saddr(Fam::V4) | Field::Daddr(Fam::V4) => 4,
            Field::Saddr(Fam::V6) | Field::Daddr(Fam::V6) => 16,
            Field::L4proto => 1,
            Field::Dport => 2,
            Field::EtherSaddr | Field::ArpSha | Field::NdLladdr(_) => 6,
        }
    }
    /// nft's datatype number (for `nft list` to print keys readably).
    pub fn nft_type(self) -> u32 {
        match self {
            Field::Iifname | Field::Oifname => 41,
            Field::Saddr(Fam::V4) | Field::Daddr(Fam::V4) => 7,
            Field::Saddr(Fam::V6) | Field::Daddr(Fam::V6) => 8,
            Field::L4proto => 12,
            Field::Dport => 13,
            Field::EtherSaddr | Field::ArpSha | Field::NdLladdr(_) => 9,
        }
    }
    fn text(self) -> String {
        match self {
            Field::Iifname => "iifname".into(),
            Field::Oifname => "oifname".into(),
            Field::Saddr(f) => format!("{} saddr", f.word()),
            Field::Daddr(f) => format!("{} daddr", f.word()),
            Field::L4proto => "meta l4proto".into(),
            Field::Dport => "th dport".into(),
            Field::EtherSaddr => "ether saddr".into(),
            Field::ArpSha => "arp saddr ether".into(),
            Field::NdLladdr(off) => format!("@th,{},48", off * 8),
        }
    }
}

/// One part of a set/map key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVal {
    Ifname(String),
    Addr(IpAddr),
    Proto(u8),
    Port(u16),
    Mac([u8; 6]),
}

impl KeyVal {
    /// Key bytes with each part padded to 4 bytes, as the kernel stores concatenations.
    pub fn concat(parts: &[KeyVal]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            let mut b = match p {
                KeyVal::Ifname(n) => {
                    let mut v = n.as_bytes().to_vec();
                    v.resize(16, 0);
                    v
                }
                KeyVal::Addr(IpAddr::V4(a)) => a.octets().to_vec(),
                KeyVal::Addr(IpAddr::V6(a)) => a.octets().to_vec(),
                KeyVal::Proto(p) => vec![*p],
                KeyVal::Port(p) => p.to_be_bytes().to_vec(),
                KeyVal::Mac(m) => m.to_vec(),
            };
            b.resize(b.len().div_ceil(4) * 4, 0);
            out.extend(b);
        }
        out
    }
}

impl fmt::Display for KeyVal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyVal::Ifname(n) => write!(f, "\"{n}\""),
            KeyVal::Addr(a) => write!(f, "{a}"),
            KeyVal::Proto(p) => write!(f, "{}", proto_name(*p)),
            KeyVal::Port(p) => write!(f, "{p}"),
            KeyVal::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        }
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
        }
    }
}

/// The statements plugnet's rules are made of; `nft.rs` turns each into kernel expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Nfproto(Fam),
    L4proto(u8),
    Ifname {
        out: bool,
        name: String,
    },
    Addr {
        dst: bool,
        net: IpNetwork,
        negate: bool,
    },
    AddrRange {
        dst: bool,
        start: IpAddr,
        end: IpAddr,
    },
    Dport {
        start: u16,
        end: u16,
    },
    Icmp {
        kind: u8,
        code: Option<u8>,
    },
    CtEstablished,
    CtDnat,
    FibDaddrLocal,
    Lookup {
        set: String,
        key: Vec<Field>,
        vmap: bool,
    },
    /// The key is not in the set (`key != @set`).
    NotIn {
        set: String,
        key: Vec<Field>,
    },
    /// The packet's link-layer protocol (`meta protocol`: the Ethernet type, the inner one of
    /// a VLAN-tagged frame), e.g. 0x0806 for ARP.
    Protocol(u16),
    /// The byte at `offset` of the transport header equals `value` (an ICMPv6 type, an option
    /// type).
    ThByte {
        offset: u32,
        value: u8,
    },
    Dnat {
        addr: IpAddr,
        port: u16,
    },
    /// `dnat <fam> to <key> map @set`: the map yields address . port.
    DnatMap {
        fam: Fam,
        set: String,
        key: Vec<Field>,
    },
    Masquerade,
    Counter,
    Reject,
    Verdict(Verdict),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Nfproto(fam) => write!(
                f,
                "meta nfproto {}",
                if *fam == Fam::V4 { "ipv4" } else { "ipv6" }
            ),
            Expr::L4proto(p) => write!(f, "meta l4proto {}", proto_name(*p)),
            Expr::Ifname { out, name } => {
                write!(f, "{} \"{name}\"", if *out { "oifname" } else { "iifname" })
            }
            Expr::Addr { dst, net, negate } => write!(
                f,
                "{} {} {}{net}",
                Fam::of(&net.ip()).word(),
                if *dst { "daddr" } else { "saddr" },
                if *negate { "!= " } else { "" }
            ),
            Expr::AddrRange { dst, start, end } => write!(
                f,
                "{} {} {start}-{end}",
                Fam::of(start).word(),
                if *dst { "daddr" } else { "saddr" }
            ),
            Expr::Dport { start, end } if start == end => write!(f, "th dport {start}"),
            Expr::Dport { start, end } => write!(f, "th dport {start}-{end}"),
            Expr::Icmp { kind, code } => {
                write!(f, "icmp type {kind}")?;
                if let Some(c) = code {
                    write!(f, " icmp code {c}")?;
                }
                Ok(())
            }
            Expr::CtEstablished => f.write_str("ct state established,related"),
            Expr::CtDnat => f.write_str("ct status dnat"),
            Expr::FibDaddrLocal => f.write_str("fib daddr type local"),
            Expr::Lookup { set, key, vmap } => {
                let k: Vec<String> = key.iter().map(|x| x.text()).collect();
                write!(
                    f,
                    "{} {}@{set}",
                    k.join(" . "),
                    if *vmap { "vmap " } else { "" }
                )
            }
            Expr::NotIn { set, key } => {
                let k: Vec<String> = key.iter().map(|x| x.text()).collect();
                write!(f, "{} != @{set}", k.join(" . "))
            }
            Expr::Protocol(0x0806) => f.write_str("meta protocol arp"),
            Expr::Protocol(t) => write!(f, "meta protocol 0x{t:04x}"),
            Expr::ThByte { offset, value } => write!(f, "@th,{},8 {value}", offset * 8),
            Expr::Dnat {
                addr: IpAddr::V4(a),
                port,
            } => write!(f, "dnat ip to {a}:{port}"),
            Expr::Dnat {
                addr: IpAddr::V6(a),
                port,
            } => write!(f, "dnat ip6 to [{a}]:{port}"),
            Expr::DnatMap { fam, set, key } => {
                let k: Vec<String> = key.iter().map(|x| x.text()).collect();
                write!(f, "dnat {} to {} map @{set}", fam.word(), k.join(" . "))
            }
            Expr::Masquerade => f.write_str("masquerade"),
            Expr::Counter => f.write_str("counter"),
            Expr::Reject => f.write_str("reject with icmpx admin-prohibited"),
            Expr::Verdict(v) => write!(f, "{v}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub exprs: Vec<Expr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Forward,
    Output,
    Postrouting,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    pub hook: Hook,
    pub priority: i32,
    pub nat: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDef {
    pub name: &'static str,
    pub key: Vec<Field>,
    pub data: SetData,
}

/// What a set maps its keys to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetData {
    /// A plain set.
    None,
    /// A verdict map (`: verdict`).
    Verdict,
    /// A data map whose values are these fields concatenated (e.g. address . port).
    Value(Vec<Field>),
}

/// The value an element maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElemData {
    Verdict(Verdict),
    Value(Vec<KeyVal>),
}

/// A chain in a table plugnet does not own (the host's own nftables ruleset), where plugnet
/// keeps a few rules tagged with a comment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForeignChain {
    /// The table's family (`NFPROTO_INET`, `NFPROTO_IPV4`, `NFPROTO_IPV6`).
    pub family: u8,
    pub table: String,
    pub chain: String,
}

impl fmt::Display for ForeignChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = match i32::from(self.family) {
            libc::NFPROTO_INET => "inet",
            libc::NFPROTO_IPV4 => "ip",
            libc::NFPROTO_IPV6 => "ip6",
            libc::NFPROTO_BRIDGE => "bridge",
            libc::NFPROTO_ARP => "arp",
            libc::NFPROTO_NETDEV => "netdev",
            _ => "unknown",
        };
        write!(f, "{family} {} {}", self.table, self.chain)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable(Table),
    DelTable(Table),
    AddBaseChain(BaseChain),
    AddSet(SetDef),
    AddChain(String),
    DelChain(String),
    AddRule(Rule),
    AddElem {
        set: String,
        key: Vec<KeyVal>,
        data: Option<ElemData>,
    },
    DelElem {
        set: String,
        key: Vec<KeyVal>,
    },
    /// A rule at the head of a chain plugnet does not own, tagged with `comment`.
    InsertForeignRule {
        at: ForeignChain,
        exprs: Vec<Expr>,
        comment: String,
    },
    /// Deletes the rule `handle` of a chain plugnet does not own.
    DelForeignRule {
        at: ForeignChain,
        handle: u64,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sets and chains say which table they are in by their names (see [`Table::of`]).
        let t = |name: &str| Table::of(name).to_string();
        let key = |k: &[KeyVal]| {
            k.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" . ")
        };
        match self {
            Op::AddTable(table) => write!(f, "add table {table}"),
            Op::DelTable(table) => write!(f, "delete table {table}"),
            Op::AddBaseChain(c) => write!(
                f,
                "add chain {} {} {{ type {} hook {} priority {}; policy accept; }}",
                t(c.name),
                c.name,
                if c.nat { "nat" } else { "filter" },
                match c.hook {
                    Hook::Prerouting => "prerouting",
                    Hook::Forward => "forward",
                    Hook::Output => "output",
                    Hook::Postrouting => "postrouting",
                },
                c.priority
            ),
            Op::AddSet(s) => {
                let types = |fields: &[Field]| {
                    fields
                        .iter()
                        .map(|k| match k.nft_type() {
                            41 => "ifname",
                            7 => "ipv4_addr",
                            8 => "ipv6_addr",
                            12 => "inet_proto",
                            9 => "ether_addr",
                            _ => "inet_service",
                        })
                        .collect::<Vec<_>>()
                        .join(" . ")
                };
                let (kind, data) = match &s.data {
                    SetData::None => ("set", String::new()),
                    SetData::Verdict => ("map", " : verdict".to_string()),
                    SetData::Value(v) => ("map", format!(" : {}", types(v))),
                };
                write!(
                    f,
                    "add {kind} {} {} {{ type {}{data}; }}",
                    t(s.name),
                    s.name,
                    types(&s.key)
                )
            }
            Op::AddChain(c) => write!(f, "add chain {} {c}", t(c)),
            Op::DelChain(c) => write!(f, "delete chain {} {c}", t(c)),
            Op::AddRule(r) => {
                let e: Vec<String> = r.exprs.iter().map(|x| x.to_string()).collect();
                write!(f, "add rule {} {} {}", t(&r.chain), r.chain, e.join(" "))
            }
            Op::AddElem { set, key: k, data } => {
                let t = t(set);
                match data {
                    Some(ElemData::Verdict(v)) => {
                        write!(f, "add element {t} {set} {{ {} : {v} }}", key(k))
                    }
                    Some(ElemData::Value(v)) => {
                        write!(f, "add element {t} {set} {{ {} : {} }}", key(k), key(v))
                    }
                    None => write!(f, "add element {t} {set} {{ {} }}", key(k)),
                }
            }
            Op::DelElem { set, key: k } => {
                write!(f, "delete element {} {set} {{ {} }}", t(set), key(k))
            }
            Op::InsertForeignRule { at, exprs, comment } => {
                let e: Vec<String> = exprs.iter().map(|x| x.to_string()).collect();
                write!(f, "insert rule {at} {} comment \"{comment}\"", e.join(" "))
            }
            Op::DelForeignRule { at, handle } => write!(f, "delete rule {at} handle {handle}"),
        }
    }
}
