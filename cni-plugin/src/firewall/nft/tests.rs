use super::encode::*;
use super::*;
use crate::firewall::nfnl::*;
use crate::firewall::plan::{BaseChain, Rule};
use crate::firewall::plan::{Expr, Hook as PHook, Op, Verdict};
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::ExpressionAttribute;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, Hook, ListAttribute, NfTablesMessage, RuleAttribute,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

/// Every netlink message of `buf`, parsed back with the same library.
fn messages(buf: &[u8]) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        out.push(NetlinkMessage::deserialize(&buf[off..off + len]).unwrap());
        off += len.div_ceil(4) * 4;
    }
    out
}

fn add_rule(exprs: Vec<Expr>) -> Op {
    Op::AddRule(Rule {
        chain: "forward".to_string(),
        exprs,
    })
}

#[test]
fn rule_comments_are_libnftnl_user_data() {
    let u = udata_comment("plugnet bridge br0");
    assert_eq!(&u[..2], &[0, 19]);
    assert_eq!(u.last(), Some(&0));
    assert_eq!(udata_comment_of(&u).as_deref(), Some("plugnet bridge br0"));
    // Another TLV first (nft's rule user data may hold more than a comment).
    let mut two = vec![7u8, 2, 1, 2];
    two.extend(&u);
    assert_eq!(
        udata_comment_of(&two).as_deref(),
        Some("plugnet bridge br0")
    );
    // Cut short or empty: no comment, no panic.
    assert_eq!(udata_comment_of(&u[..5]), None);
    assert_eq!(udata_comment_of(&[]), None);
}

#[test]
fn batch_is_framed_numbered_and_flagged_like_libnftnl() {
    let ops = [
        Op::AddTable(Table::Inet),
        Op::AddChain("c".into()),
        add_rule(vec![Expr::Counter]),
        Op::DelChain("c".into()),
    ];
    let msgs = messages(&batch(&ops));
    assert_eq!(msgs.len(), ops.len() + 2);
    let seqs: Vec<u32> = msgs.iter().map(|m| m.header.sequence_number).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    // NFNL_MSG_BATCH_BEGIN / END, addressed to the nf_tables subsystem.
    for (m, kind) in [(&msgs[0], 0x10), (&msgs[5], 0x11)] {
        assert_eq!(m.header.message_type, kind);
        let NetlinkPayload::InnerMessage(inner) = &m.payload else {
            panic!("batch marker is not a netfilter message: {m:?}")
        };
        assert_eq!(inner.header.res_id, NFNL_SUBSYS_NFTABLES);
    }
    let flags: Vec<u16> = msgs.iter().map(|m| m.header.flags).collect();
    let req = NLM_F_REQUEST | NLM_F_ACK;
    let append = req | NLM_F_CREATE | NLM_F_APPEND | NLM_F_EXCL;
    assert_eq!(flags, [req, req, req | NLM_F_CREATE, append, req, req]);
}

/// The kernel expressions one statement becomes, by name.
fn lowered(e: Expr) -> Vec<String> {
    let msgs = messages(&batch(&[add_rule(vec![e])]));
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)),
        ..
    }) = &msgs[1].payload
    else {
        panic!("not a NEWRULE: {:?}", msgs[1]);
    };
    let exprs = rule
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Expressions(e) => Some(e),
            _ => None,
        })
        .expect("rule has expressions");
    exprs
        .iter()
        .map(|e| match e {
            ListAttribute::Element(attrs) => attrs
                .iter()
                .find_map(|a| match a {
                    ExpressionAttribute::Name(n) => Some(n.clone()),
                    _ => None,
                })
                .expect("expression has a name"),
            other => panic!("not an expression: {other:?}"),
        })
        .collect()
}

#[test]
fn statements_lower_to_nfts_own_expressions() {
    let net = |s: &str| s.parse().unwrap();
    let addr = |dst, n: &str, negate| Expr::Addr {
        dst,
        net: net(n),
        negate,
    };
    assert_eq!(
        lowered(addr(false, "10.1.0.0/16", false)),
        ["payload", "bitwise", "cmp"]
    );
    assert_eq!(lowered(addr(true, "10.1.0.5/32", true)), ["payload", "cmp"]);
    assert_eq!(lowered(Expr::CtEstablished), ["ct", "bitwise", "cmp"]);
    assert_eq!(lowered(Expr::FibDaddrLocal), ["fib", "cmp"]);
    let dnat = Expr::Dnat {
        addr: "10.1.0.5".parse().unwrap(),
        port: 80,
    };
    assert_eq!(lowered(dnat), ["immediate", "immediate", "nat"]);
    assert_eq!(lowered(Expr::Masquerade), ["masq"]);
    assert_eq!(lowered(Expr::Reject), ["reject"]);
    let jump = Expr::Verdict(Verdict::Jump("x".into()));
    assert_eq!(lowered(jump), ["immediate"]);
}

#[test]
fn negative_hook_priority_reaches_the_kernel_as_its_twos_complement() {
    let chain = BaseChain {
        name: "prerouting",
        hook: PHook::Prerouting,
        priority: -100,
        nat: true,
    };
    let (NfTablesMessage::NewChain(c), _) = message(&Op::AddBaseChain(chain)) else {
        panic!("not a NEWCHAIN")
    };
    let hook = c
        .attributes
        .iter()
        .find_map(|a| match a {
            ChainAttribute::Hook(h) => Some(h.clone()),
            _ => None,
        })
        .expect("base chain has a hook");
    assert!(hook.contains(&Hook::Priority(-100i32 as u32)));
    assert!(c.attributes.contains(&ChainAttribute::Type("nat".into())));
}

#[test]
fn acks_are_read_by_sequence_number() {
    // NLMSG_ERROR with the original header only (capped), as the socket asks for.
    let ack = |seq: u32, err: i32| {
        let mut m = Vec::new();
        m.extend(36u32.to_ne_bytes());
        m.extend((libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(err.to_ne_bytes());
        m.extend(16u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m
    };
    let mut buf = ack(7, -libc::ENOENT);
    buf.extend(ack(8, 0));
    assert_eq!(parse_acks(&buf), vec![(7, libc::ENOENT), (8, 0)]);
    assert_eq!(parse_acks(&buf[..20]), vec![], "a cut message is not read");
}
