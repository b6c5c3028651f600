//! An [`Op`] as the nf_tables message libnftnl would send for it, and plugnet's expressions
//! ([`Expr`]) lowered to nf_tables' own; invariant: pure, no socket.

use std::net::IpAddr;

use netlink_packet_core::{DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, Immediate,
    InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload,
    Register, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableMessage, Verdict as NlVerdict,
    VerdictAttribute,
};

use crate::firewall::plan::{
    ElemData, Expr, Fam, Field, Hook as PHook, KeyVal, Op, SetData, SetDef, Verdict, TABLE,
};

const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_00: u32 = 8;

/// An op's nf_tables message and the netlink flags it is sent with (those of libnftnl's
/// batch: tables and chains are created when absent, rules appended, elements exclusive).
pub(super) fn message(op: &Op) -> (NfTablesMessage, u16) {
    let table = || TableAttribute::Name(TABLE.to_string());
    let chain = |name: &str| {
        vec![
            ChainAttribute::Table(TABLE.to_string()),
            ChainAttribute::Name(name.to_string()),
        ]
    };
    match op {
        Op::AddTable(_) => (
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![table()],
            }),
            NLM_F_ACK,
        ),
        Op::DelTable(_) => (
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![table()],
            }),
            NLM_F_ACK,
        ),
        Op::AddBaseChain(c) => {
            let hook = match c.hook {
                PHook::Prerouting => InetHookNumber::PreRouting,
                PHook::Forward => InetHookNumber::Forward,
                PHook::Output => InetHookNumber::LocalOut,
                PHook::Postrouting => InetHookNumber::PostRouting,
            };
            let mut attributes = chain(c.name);
            attributes.push(ChainAttribute::Hook(vec![
                Hook::Number(hook.into()),
                // The kernel reads the priority as a signed 32-bit number.
                Hook::Priority(c.priority as u32),
            ]));
            attributes.push(ChainAttribute::Type(
                if c.nat { "nat" } else { "filter" }.to_string(),
            ));
            attributes.push(ChainAttribute::Policy(libc::NF_ACCEPT as u32));
            (
                NfTablesMessage::NewChain(ChainMessage { attributes }),
                NLM_F_ACK | NLM_F_CREATE,
            )
        }
        Op::AddChain(name) => (
            NfTablesMessage::NewChain(ChainMessage {
                attributes: chain(name),
            }),
            NLM_F_ACK | NLM_F_CREATE,
        ),
        Op::DelChain(name) => (
            NfTablesMessage::DeleteChain(ChainMessage {
                attributes: chain(name),
            }),
            NLM_F_ACK,
        ),
        Op::AddSet(def) => (
            NfTablesMessage::NewSet(SetMessage {
                attributes: set_definition(def),
            }),
            NLM_F_CREATE | NLM_F_ACK,
        ),
        Op::AddRule(r) => {
            let exprs = r.exprs.iter().flat_map(lower).map(Into::into).collect();
            let attributes = vec![
                RuleAttribute::Table(TABLE.to_string()),
                RuleAttribute::Chain(r.chain.clone()),
                RuleAttribute::Expressions(exprs),
            ];
            (
                NfTablesMessage::NewRule(RuleMessage { attributes }),
                NLM_F_CREATE | NLM_F_APPEND | NLM_F_EXCL | NLM_F_ACK,
            )
        }
        Op::AddElem { set, key, data } => (
            NfTablesMessage::NewSetElement(SetElementMessage {
                attributes: element(set, key, data.as_ref()),
            }),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        ),
        Op::DelElem { set, key } => (
            NfTablesMessage::DeleteSetElement(SetElementMessage {
                attributes: element(set, key, None),
            }),
            NLM_F_ACK,
        ),
        Op::InsertForeignRule { at, exprs, comment } => {
            let exprs = exprs.iter().flat_map(lower).map(Into::into).collect();
            let attributes = vec![
                RuleAttribute::Table(at.table.clone()),
                RuleAttribute::Chain(at.chain.clone()),
                RuleAttribute::Expressions(exprs),
                RuleAttribute::UserData(udata_comment(comment)),
            ];
            // No NLM_F_APPEND and no position: the kernel puts the rule at the chain's head.
            (
                NfTablesMessage::NewRule(RuleMessage { attributes }),
                NLM_F_CREATE | NLM_F_ACK,
            )
        }
        Op::DelForeignRule { at, handle } => (
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(at.table.clone()),
                    RuleAttribute::Chain(at.chain.clone()),
                    RuleAttribute::Handle(*handle),
                ],
            }),
            NLM_F_ACK,
        ),
    }
}

/// libnftnl's rule user data holding a comment (what `nft list` shows as `comment "..."`):
/// one TLV, type NFTNL_UDATA_RULE_COMMENT (0), the string with its NUL.
pub(super) fn udata_comment(comment: &str) -> Vec<u8> {
    let mut v = comment.as_bytes().to_vec();
    v.truncate(254);
    v.push(0);
    let mut out = vec![0u8, v.len() as u8];
    out.extend(v);
    out
}

/// The comment in a rule's user data, if any (see [`udata_comment`]).
pub(super) fn udata_comment_of(udata: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= udata.len() {
        let (kind, len) = (udata[off], udata[off + 1] as usize);
        let value = udata.get(off + 2..off + 2 + len)?;
        if kind == 0 {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        off += 2 + len;
    }
    None
}

fn reg(r: u32) -> Register {
    Register::from(r)
}

/// A 32-bit attribute in network byte order, as nf_tables reads them.
fn be32(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

/// An expression `netlink-packet-netfilter` has no type for, attribute by attribute
/// (kernel numbering, include/uapi/linux/netfilter/nf_tables.h).
fn raw(name: &str, attributes: Vec<DefaultNla>) -> Expressions {
    Expressions::Other {
        expression_type: name.to_string(),
        attributes,
    }
}

fn meta(key: i32, r: u32) -> Expressions {
    Expressions::Meta(vec![
        Meta::Key(MetaKey::from(key as u32)),
        Meta::DestinationRegister(reg(r)),
    ])
}

fn payload(base: i32, offset: u32, len: u32, r: u32) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(reg(r)),
        Payload::Base(base as u32),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

fn cmp(op: i32, data: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(reg(REG_1)),
        Cmp::Op(Operator::from(op as u32)),
        Cmp::Data(DataAttribute::Value(data)),
    ])
}

fn bitwise(mask: Vec<u8>) -> Expressions {
    let len = mask.len();
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(reg(REG_1)),
        Bitwise::DestinationRegister(reg(REG_1)),
        Bitwise::Length(len as u32),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(vec![0; len])),
    ])
}

fn immediate(r: u32, data: Vec<u8>) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(reg(r)),
        Immediate::Data(DataAttribute::Value(data)),
    ])
}

fn verdict_data(v: &Verdict) -> DataAttribute {
    let mut attrs = vec![VerdictAttribute::Code(NlVerdict::from(verdict_code(v)))];
    if let Verdict::Jump(chain) = v {
        attrs.push(VerdictAttribute::Chain(chain.clone()));
    }
    DataAttribute::Verdict(attrs)
}

fn verdict(v: &Verdict) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(reg(REG_VERDICT)),
        Immediate::Data(verdict_data(v)),
    ])
}

fn lookup(set: &str, sreg: u32, dreg: Option<u32>) -> Expressions {
    let mut attrs = vec![
        Lookup::Set(set.to_string()),
        Lookup::SourceRegister(reg(sreg)),
    ];
    if let Some(d) = dreg {
        attrs.push(Lookup::DestinationRegister(reg(d)));
    }
    Expressions::Lookup(attrs)
}

/// NFT_LOOKUP_F_INV: the lookup matches when the key is absent.
pub(super) const LOOKUP_F_INV: u32 = 1;

/// Loads `key` into consecutive 32-bit registers from NFT_REG32_00, each part padded to 4
/// bytes (the kernel zeroes a part's padding as it loads it), as nft loads a concatenation.
fn load_concat(key: &[Field]) -> Vec<Expressions> {
    let mut v = Vec::new();
    let mut reg32 = REG32_00;
    for f in key {
        v.push(load(*f, reg32));
        reg32 += f.byte_len().div_ceil(4);
    }
    v
}

/// `dnat to <addr in reg 1>:<port in port_reg>` for `family` (NFTA_NAT_*).
fn dnat(family: i32, port_reg: u32) -> Expressions {
    raw(
        "nat",
        vec![
            be32(1, libc::NFT_NAT_DNAT as u32), // NFTA_NAT_TYPE
            be32(2, family as u32),             // NFTA_NAT_FAMILY
            be32(3, REG_1),                     // NFTA_NAT_REG_ADDR_MIN
            be32(5, port_reg),                  // NFTA_NAT_REG_PROTO_MIN
        ],
    )
}

fn verdict_code(v: &Verdict) -> u32 {
    (match v {
        Verdict::Accept => libc::NF_ACCEPT,
        Verdict::Drop => libc::NF_DROP,
        Verdict::Return => libc::NFT_RETURN,
        Verdict::Jump(_) => libc::NFT_JUMP,
    }) as u32
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Loads a field into register `reg` (a 128-bit register number or a 32-bit one).
fn load(field: Field, reg: u32) -> Expressions {
    const NH: i32 = libc::NFT_PAYLOAD_NETWORK_HEADER;
    const TH: i32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER;
    match field {
        Field::Iifname => meta(libc::NFT_META_IIFNAME, reg),
        Field::Oifname => meta(libc::NFT_META_OIFNAME, reg),
        Field::Saddr(Fam::V4) => payload(NH, 12, 4, reg),
        Field::Daddr(Fam::V4) => payload(NH, 16, 4, reg),
        Field::Saddr(Fam::V6) => payload(NH, 8, 16, reg),
        Field::Daddr(Fam::V6) => payload(NH, 24, 16, reg),
        Field::L4proto => meta(libc::NFT_META_L4PROTO, reg),
        Field::Dport => payload(TH, 2, 2, reg),
        Field::EtherSaddr => payload(libc::NFT_PAYLOAD_LL_HEADER, 6, 6, reg),
        Field::ArpSha => payload(NH, 8, 6, reg),
        Field::NdLladdr(offset) => payload(TH, offset, 6, reg),
    }
}

/// The kernel expressions one plugnet statement is made of (nft's own bytecode for it).
pub(super) fn lower(e: &Expr) -> Vec<Expressions> {
    const EQ: i32 = libc::NFT_CMP_EQ;
    match e {
        Expr::Nfproto(f) => {
            let p = if *f == Fam::V4 {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            };
            vec![meta(libc::NFT_META_NFPROTO, REG_1), cmp(EQ, vec![p as u8])]
        }
        Expr::L4proto(p) => vec![meta(libc::NFT_META_L4PROTO, REG_1), cmp(EQ, vec![*p])],
        Expr::Ifname { out, name } => {
            let mut b = name.as_bytes().to_vec();
            b.resize(16, 0);
            let f = if *out { Field::Oifname } else { Field::Iifname };
            vec![load(f, REG_1), cmp(EQ, b)]
        }
        Expr::Addr { dst, net, negate } => {
            let fam = Fam::of(&net.ip());
            let f = if *dst {
                Field::Daddr(fam)
            } else {
                Field::Saddr(fam)
            };
            let mut v = vec![load(f, REG_1)];
            let full = if fam == Fam::V4 { 32 } else { 128 };
            if net.prefix() < full {
                v.push(bitwise(addr_bytes(&net.mask())));
            }
            let op = if *negate { libc::NFT_CMP_NEQ } else { EQ };
            v.push(cmp(op, addr_bytes(&net.network())));
            v
        }
        Expr::AddrRange { dst, start, end } => {
            let fam = Fam::of(start);
            let f = if *dst {
                Field::Daddr(fam)
            } else {
                Field::Saddr(fam)
            };
            if start == end {
                return vec![load(f, REG_1), cmp(EQ, addr_bytes(start))];
            }
            vec![
                load(f, REG_1),
                cmp(libc::NFT_CMP_GTE, addr_bytes(start)),
                cmp(libc::NFT_CMP_LTE, addr_bytes(end)),
            ]
        }
        Expr::Dport { start, end } => {
            let mut v = vec![load(Field::Dport, REG_1)];
            if start == end {
                v.push(cmp(EQ, start.to_be_bytes().to_vec()));
            } else {
                v.push(cmp(libc::NFT_CMP_GTE, start.to_be_bytes().to_vec()));
                v.push(cmp(libc::NFT_CMP_LTE, end.to_be_bytes().to_vec()));
            }
            v
        }
        Expr::Icmp { kind, code } => {
            let th = libc::NFT_PAYLOAD_TRANSPORT_HEADER;
            let mut v = vec![payload(th, 0, 1, REG_1), cmp(EQ, vec![*kind])];
            if let Some(c) = code {
                v.push(payload(th, 1, 1, REG_1));
                v.push(cmp(EQ, vec![*c]));
            }
            v
        }
        Expr::CtEstablished | Expr::CtDnat => {
            let (key, mask) = if *e == Expr::CtEstablished {
                // NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)
                (libc::NFT_CT_STATE, 2u32 | 4)
            } else {
                (libc::NFT_CT_STATUS, 1u32 << 5) // IPS_DST_NAT
            };
            vec![
                // NFTA_CT_DREG, NFTA_CT_KEY
                raw("ct", vec![be32(1, REG_1), be32(2, key as u32)]),
                bitwise(mask.to_ne_bytes().to_vec()),
                cmp(libc::NFT_CMP_NEQ, vec![0; 4]),
            ]
        }
        Expr::FibDaddrLocal => vec![
            // NFTA_FIB_DREG; NFTA_FIB_RESULT = NFT_FIB_RESULT_ADDRTYPE; NFTA_FIB_FLAGS =
            // NFTA_FIB_F_DADDR
            raw("fib", vec![be32(1, REG_1), be32(2, 3), be32(3, 2)]),
            cmp(EQ, 2u32.to_ne_bytes().to_vec()), // RTN_LOCAL
        ],
        Expr::Lookup { set, key, vmap } => {
            // NFT_REG32_00 is the first word of NFT_REG_1.
            let mut v = load_concat(key);
            v.push(lookup(set, REG32_00, vmap.then_some(REG_VERDICT)));
            v
        }
        Expr::NotIn { set, key } => {
            let mut v = load_concat(key);
            let Expressions::Lookup(mut attrs) = lookup(set, REG32_00, None) else {
                unreachable!("lookup() builds a lookup")
            };
            attrs.push(Lookup::Flags(LOOKUP_F_INV));
            v.push(Expressions::Lookup(attrs));
            v
        }
        Expr::Protocol(t) => vec![
            meta(libc::NFT_META_PROTOCOL, REG_1),
            cmp(EQ, t.to_be_bytes().to_vec()),
        ],
        Expr::ThByte { offset, value } => vec![
            payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, *offset, 1, REG_1),
            cmp(EQ, vec![*value]),
        ],
        Expr::Dnat { addr, port } => {
            let family = if addr.is_ipv4() {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            };
            vec![
                immediate(REG_1, addr_bytes(addr)),
                immediate(REG_2, port.to_be_bytes().to_vec()),
                dnat(family, REG_2),
            ]
        }
        Expr::DnatMap { fam, set, key } => {
            let mut v = load_concat(key);
            // The map yields address . port into NFT_REG_1 onwards: the port follows the
            // address in the next 32-bit register.
            let (family, port_reg) = match fam {
                Fam::V4 => (libc::NFPROTO_IPV4, REG32_00 + 1),
                Fam::V6 => (libc::NFPROTO_IPV6, REG32_00 + 4),
            };
            v.push(lookup(set, REG32_00, Some(REG_1)));
            v.push(dnat(family, port_reg));
            v
        }
        Expr::Masquerade => vec![raw("masq", vec![])],
        Expr::Counter => vec![raw("counter", vec![])],
        // NFTA_REJECT_TYPE (32 bits), NFTA_REJECT_ICMP_CODE (8 bits)
        Expr::Reject => vec![raw(
            "reject",
            vec![
                be32(1, libc::NFT_REJECT_ICMPX_UNREACH as u32),
                DefaultNla::new(2, vec![libc::NFT_REJECT_ICMPX_ADMIN_PROHIBITED as u8]),
            ],
        )],
        Expr::Verdict(v) => vec![verdict(v)],
    }
}

/// A set's definition (NEWSET attributes).
fn set_definition(def: &SetDef) -> Vec<SetAttribute> {
    let key_len: u32 = if def.key.len() == 1 {
        def.key[0].byte_len()
    } else {
        def.key.iter().map(|f| f.byte_len().div_ceil(4) * 4).sum()
    };
    // nft encodes a concatenation's type as 6-bit datatype numbers shifted in order.
    let key_type = def
        .key
        .iter()
        .fold(0u32, |acc, f| (acc << 6) | f.nft_type());
    // nft's userdata: the key's byte order (TLV type 0 = KEYBYTEORDER; 1 host order as nft
    // uses for strings, 2 big-endian), so `nft list` prints single-field keys.
    let order = if matches!(def.key[0], Field::Iifname | Field::Oifname) {
        1
    } else {
        2
    };
    let mut attrs = vec![
        SetAttribute::Table(TABLE.to_string()),
        SetAttribute::Name(def.name.to_string()),
        SetAttribute::KeyType(key_type),
        SetAttribute::KeyLen(key_len),
        // The kernel requires a transaction-local id for every new set.
        SetAttribute::Id(set_id(def.name)),
        SetAttribute::UserData(vec![0, 4, order, 0, 0, 0]),
    ];
    match &def.data {
        SetData::None => {}
        SetData::Verdict => {
            attrs.push(SetAttribute::Flags(SetFlags::Map));
            attrs.push(SetAttribute::DataType(libc::NFT_DATA_VERDICT));
        }
        SetData::Value(fields) => {
            attrs.push(SetAttribute::Flags(SetFlags::Map));
            attrs.push(SetAttribute::DataType(
                fields.iter().fold(0u32, |acc, f| (acc << 6) | f.nft_type()),
            ));
            attrs.push(SetAttribute::DataLen(
                fields.iter().map(|f| f.byte_len().div_ceil(4) * 4).sum(),
            ));
        }
    }
    attrs
}

/// A one-element set-element message body (NEWSETELEM, DELSETELEM, GETSETELEM).
pub(super) fn element(set: &str, key: &[KeyVal], data: Option<&ElemData>) -> Vec<SetElementList> {
    let mut k = KeyVal::concat(key);
    if key.len() == 1 {
        if let KeyVal::Ifname(n) = &key[0] {
            k = n.as_bytes().to_vec();
            k.resize(16, 0);
        }
    }
    let mut elem = vec![SetElementAttribute::Key(DataAttribute::Value(k))];
    match data {
        Some(ElemData::Verdict(v)) => elem.push(SetElementAttribute::Data(verdict_data(v))),
        Some(ElemData::Value(v)) => elem.push(SetElementAttribute::Data(DataAttribute::Value(
            KeyVal::concat(v),
        ))),
        None => {}
    }
    vec![
        SetElementList::Table(TABLE.to_string()),
        SetElementList::Set(set.to_string()),
        SetElementList::Elements(vec![ListAttribute::Element(elem)]),
    ]
}

fn set_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
