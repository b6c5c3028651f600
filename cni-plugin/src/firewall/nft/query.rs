//! Questions about the ruleset, each one GET or dump request: does plugnet's table, chain,
//! set or element exist, does a chain hold exactly given rules, and what the host's own tables
//! and FORWARD chains do (for hostfw and hostnft); invariant: read-only.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook,
    Immediate, InetHookNumber, ListAttribute, Lookup, Meta, NfTablesMessage, Payload,
    RuleAttribute, RuleMessage, SetAttribute, SetElementMessage, SetMessage, TableAttribute,
    TableFlags, TableMessage, VerdictAttribute,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};

use crate::firewall::plan::{ForeignChain, KeyVal, Op, Rule, Table, TABLE};

use super::encode::{element, lower, udata_comment_of, LOOKUP_F_INV};
use crate::firewall::nfnl::{put, recv_buf, with_socket};

/// NLM_F_ROOT | NLM_F_MATCH: a dump.
const NLM_F_DUMP: u16 = 0x300;

/// One GET request: `None` when the kernel answers ENOENT, else the objects it returned.
fn get(
    family: NetfilterProtoFamily,
    body: NfTablesMessage,
) -> io::Result<Option<Vec<NfTablesMessage>>> {
    Ok(request(family, body, NLM_F_ACK)?.map(|v| v.into_iter().map(|(_, m)| m).collect()))
}

/// One dump request: every object it returned, with its family.
fn dump(
    family: NetfilterProtoFamily,
    body: NfTablesMessage,
) -> io::Result<Vec<(u8, NfTablesMessage)>> {
    Ok(request(family, body, NLM_F_DUMP)?.unwrap_or_default())
}

/// One request (a GET, or a dump with `NLM_F_DUMP`): `None` when the kernel answers ENOENT,
/// else the objects it returned, each with the family of its header.
fn request(
    family: NetfilterProtoFamily,
    body: NfTablesMessage,
    flags: u16,
) -> io::Result<Option<Vec<(u8, NfTablesMessage)>>> {
    const SEQ: u32 = 1;
    let mut req = Vec::with_capacity(128);
    put(&mut req, family, 0, body, flags, SEQ);
    with_socket(|sock| {
        sock.send(&req)?;
        let mut buf = recv_buf();
        let mut found = Vec::new();
        loop {
            let n = sock.recv(&mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || off + len > n {
                    break;
                }
                match NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len]) {
                    Ok(m) if m.header.sequence_number != SEQ => {}
                    Ok(m) => match m.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(Some(found)),
                                Some(c) if -c.get() == libc::ENOENT => Ok(None),
                                Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                            }
                        }
                        NetlinkPayload::Done(_) => return Ok(Some(found)),
                        NetlinkPayload::InnerMessage(NetfilterMessage {
                            header,
                            inner: NetfilterMessageInner::NfTables(obj),
                            ..
                        }) => found.push((u8::from(header.family), obj)),
                        _ => {}
                    },
                    // An object this library cannot parse still exists.
                    Err(_) => {}
                }
                off += len.div_ceil(4) * 4;
            }
        }
    })
}

/// Does plugnet's table `t` exist?
pub fn table_exists(t: Table) -> io::Result<bool> {
    let body = NfTablesMessage::GetTable(TableMessage {
        attributes: vec![TableAttribute::Name(TABLE.to_string())],
    });
    Ok(get(NetfilterProtoFamily::from(t.family()), body)?.is_some())
}

fn get_chain(
    family: NetfilterProtoFamily,
    table: &str,
    name: &str,
) -> io::Result<Option<Vec<NfTablesMessage>>> {
    let body = NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(name.to_string()),
        ],
    });
    get(family, body)
}

/// The nfgenmsg family of plugnet's object `name` (see [`Table::of`]).
fn family_of(name: &str) -> NetfilterProtoFamily {
    NetfilterProtoFamily::from(Table::of(name).family())
}

/// Does chain `name` exist in plugnet's table?
pub fn chain_exists(name: &str) -> io::Result<bool> {
    Ok(get_chain(family_of(name), TABLE, name)?.is_some())
}

/// Does set/map `name` exist in plugnet's table?
pub fn set_exists(name: &str) -> io::Result<bool> {
    let body = NfTablesMessage::GetSet(SetMessage {
        attributes: vec![
            SetAttribute::Table(TABLE.to_string()),
            SetAttribute::Name(name.to_string()),
        ],
    });
    Ok(get(family_of(name), body)?.is_some())
}

/// Does element `key` exist in set/map `set`?
pub fn elem_exists(set: &str, key: &[KeyVal]) -> io::Result<bool> {
    let body = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: element(set, key, None),
    });
    Ok(get(family_of(set), body)?.is_some())
}

/// Whether plugnet's chain `name` holds exactly the rules `want` (its `AddRule` ops), rule for
/// rule, as far as [`expression_signature`] tells them apart. `Ok(false)` when the chain is
/// missing, or a rule is gone, added or changed.
pub fn chain_holds(name: &str, want: &[Op]) -> io::Result<bool> {
    let body = NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.to_string()),
            RuleAttribute::Chain(name.to_string()),
        ],
    });
    let have: Vec<Vec<String>> = dump(family_of(name), body)?
        .into_iter()
        .filter_map(|(_, m)| match m {
            NfTablesMessage::NewRule(r) => r.attributes.into_iter().find_map(|a| match a {
                RuleAttribute::Expressions(e) => Some(e.iter().map(expression_signature).collect()),
                _ => None,
            }),
            _ => None,
        })
        .collect();
    let want: Vec<Vec<String>> = want
        .iter()
        .filter_map(|op| match op {
            Op::AddRule(Rule { exprs, .. }) => Some(
                exprs
                    .iter()
                    .flat_map(lower)
                    .map(|e| expression_signature(&e.into()))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    Ok(have == want)
}

/// What one expression does, registers aside (the kernel lists them renumbered): its kind,
/// and what it loads (meta key; payload base, offset, length), compares with, looks up (set,
/// inverted or not) or decides.
fn expression_signature(e: &ListAttribute<ExpressionAttribute>) -> String {
    let ListAttribute::Element(attrs) = e else {
        return "?".into();
    };
    let mut sig = String::new();
    for a in attrs {
        match a {
            ExpressionAttribute::Name(n) => sig.push_str(n),
            ExpressionAttribute::Data(Expressions::Meta(m)) => {
                for x in m {
                    if let Meta::Key(k) = x {
                        sig.push_str(&format!(" key={}", u32::from(*k)));
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Payload(p)) => {
                for x in p {
                    match x {
                        Payload::Base(b) => sig.push_str(&format!(" base={b}")),
                        Payload::Offset(o) => sig.push_str(&format!(" off={o}")),
                        Payload::Len(l) => sig.push_str(&format!(" len={l}")),
                        _ => {}
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Cmp(c)) => {
                for x in c {
                    match x {
                        Cmp::Op(o) => sig.push_str(&format!(" op={}", u32::from(*o))),
                        Cmp::Data(DataAttribute::Value(v)) => sig.push_str(&format!(" {v:02x?}")),
                        _ => {}
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Lookup(l)) => {
                for x in l {
                    match x {
                        Lookup::Set(n) => sig.push_str(&format!(" @{n}")),
                        Lookup::Flags(f) if *f & LOOKUP_F_INV != 0 => sig.push_str(" !="),
                        _ => {}
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Immediate(i)) => {
                for x in i {
                    if let Immediate::Data(DataAttribute::Verdict(v)) = x {
                        for c in v {
                            if let VerdictAttribute::Code(code) = c {
                                sig.push_str(&format!(" verdict={}", u32::from(*code) as i32));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    sig
}

const NF_DROP: u32 = 0;

/// What the policy of iptables-nft's `FORWARD` chain (table `filter`) in `family`
/// (`NFPROTO_IPV4`, `NFPROTO_IPV6`) says: `Some(true)` drops, `Some(false)` accepts, `None`
/// when there is no such chain (no iptables-nft user on this host). One netlink request.
pub fn iptables_forward_drops(family: u8) -> io::Result<Option<bool>> {
    Ok(iptables_chain(family, "FORWARD")?.map(|policy| policy == Some(NF_DROP)))
}

/// Chain `name` of iptables-nft's `filter` table in `family`: `None` when it does not exist,
/// else its policy (`None` for a chain without one, i.e. not a base chain).
pub fn iptables_chain(family: u8, name: &str) -> io::Result<Option<Option<u32>>> {
    let Some(found) = get_chain(NetfilterProtoFamily::from(family), "filter", name)? else {
        return Ok(None);
    };
    let policy = found.iter().find_map(|m| match m {
        NfTablesMessage::NewChain(c) => c.attributes.iter().find_map(|a| match a {
            ChainAttribute::Policy(p) => Some(*p),
            _ => None,
        }),
        _ => None,
    });
    Ok(Some(policy))
}

/// A table as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    pub family: u8,
    pub name: String,
    /// Owned by a process (NFT_TABLE_F_OWNER): only that process may change it.
    pub owned: bool,
    /// Dormant: its chains see no packets.
    pub dormant: bool,
}

/// Every table of every family. One dump.
pub fn tables() -> io::Result<Vec<TableInfo>> {
    let body = NfTablesMessage::GetTable(TableMessage { attributes: vec![] });
    Ok(dump(NetfilterProtoFamily::Unspec, body)?
        .into_iter()
        .filter_map(|(family, m)| {
            let NfTablesMessage::NewTable(t) = m else {
                return None;
            };
            let (mut name, mut flags) = (None, TableFlags::empty());
            for a in t.attributes {
                match a {
                    TableAttribute::Name(n) => name = Some(n),
                    TableAttribute::Flags(f) => flags = f,
                    _ => {}
                }
            }
            Some(TableInfo {
                family,
                name: name?,
                owned: flags.contains(TableFlags::Owner),
                dormant: flags.contains(TableFlags::Dormant),
            })
        })
        .collect())
}

/// The base chains of `family` on the forward hook, each with its policy. One dump.
pub fn forward_base_chains(family: u8) -> io::Result<Vec<(ForeignChain, u32)>> {
    let body = NfTablesMessage::GetChain(ChainMessage { attributes: vec![] });
    let forward = u32::from(InetHookNumber::Forward);
    Ok(dump(NetfilterProtoFamily::from(family), body)?
        .into_iter()
        .filter_map(|(family, m)| {
            let NfTablesMessage::NewChain(c) = m else {
                return None;
            };
            let (mut table, mut chain, mut hook, mut policy) = (None, None, None, None);
            for a in c.attributes {
                match a {
                    ChainAttribute::Table(t) => table = Some(t),
                    ChainAttribute::Name(n) => chain = Some(n),
                    ChainAttribute::Policy(p) => policy = Some(p),
                    ChainAttribute::Hook(h) => {
                        hook = h.into_iter().find_map(|x| match x {
                            Hook::Number(n) => Some(u32::from(n)),
                            _ => None,
                        })
                    }
                    _ => {}
                }
            }
            (hook == Some(forward)).then_some(())?;
            Some((
                ForeignChain {
                    family,
                    table: table?,
                    chain: chain?,
                },
                policy?,
            ))
        })
        .collect())
}

/// A rule as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub handle: u64,
    /// Its comment (libnftnl user data), if any.
    pub comment: Option<String>,
    /// It drops or rejects every packet reaching it: besides `counter` and `log`, its only
    /// statement is `reject` or a `drop` verdict (firewalld ends its forward chain so).
    pub drops_all: bool,
}

/// The rules of chain `at`, in order. One dump.
pub fn chain_rules(at: &ForeignChain) -> io::Result<Vec<RuleInfo>> {
    let body = NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(at.table.clone()),
            RuleAttribute::Chain(at.chain.clone()),
        ],
    });
    Ok(dump(NetfilterProtoFamily::from(at.family), body)?
        .into_iter()
        .filter_map(|(_, m)| {
            let NfTablesMessage::NewRule(r) = m else {
                return None;
            };
            let (mut handle, mut comment, mut table, mut chain) = (None, None, None, None);
            let mut drops_all = false;
            for a in r.attributes {
                match a {
                    RuleAttribute::Handle(h) => handle = Some(h),
                    RuleAttribute::UserData(u) => comment = udata_comment_of(&u),
                    RuleAttribute::Table(t) => table = Some(t),
                    RuleAttribute::Chain(c) => chain = Some(c),
                    RuleAttribute::Expressions(e) => drops_all = drops_every_packet(&e),
                    _ => {}
                }
            }
            // The kernel filters by table and chain; checked again all the same.
            (table.as_deref() == Some(&at.table) && chain.as_deref() == Some(&at.chain))
                .then_some(())?;
            Some(RuleInfo {
                handle: handle?,
                comment,
                drops_all,
            })
        })
        .collect())
}

/// Whether a rule made of `exprs` drops or rejects every packet (see [`RuleInfo::drops_all`]).
fn drops_every_packet(exprs: &[ListAttribute<ExpressionAttribute>]) -> bool {
    let mut verdicts = Vec::new();
    for e in exprs {
        let ListAttribute::Element(attrs) = e else {
            return false;
        };
        let name = attrs.iter().find_map(|a| match a {
            ExpressionAttribute::Name(n) => Some(n.as_str()),
            _ => None,
        });
        match name {
            Some("counter" | "log") => {}
            Some("reject") => verdicts.push(true),
            Some("immediate") => {
                let drop = attrs.iter().any(|a| {
                    matches!(a, ExpressionAttribute::Data(Expressions::Immediate(imm))
                        if imm.iter().any(|i| matches!(i,
                            Immediate::Data(DataAttribute::Verdict(v))
                                if v.iter().any(|c| matches!(c,
                                    VerdictAttribute::Code(code) if u32::from(*code) == NF_DROP)))))
                });
                verdicts.push(drop);
            }
            _ => return false,
        }
    }
    verdicts == [true]
}

/// NF_DROP, as a chain policy.
pub const POLICY_DROP: u32 = NF_DROP;
