//! The bridge table (`macspoofchk`): which frames a checked bridge port may send, as plan
//! operations with no I/O; invariant: an attachment adds or deletes only its two elements
//! (its port in `macports`, port . MAC in `macs`), the table itself coming with the first
//! attachment that asks for a check and going with the last.
//!
//! A port listed in `macports` may send only frames whose source MAC, ARP sender address and
//! neighbour-discovery link-layer address (RS, NS: source; NA: target — the message's first
//! option, where Linux and every common stack put it) are the port's pair in `macs`. The chain
//! hooks bridge prerouting at priority -300 (as the reference plugin's check does), ahead of
//! anything else that sees the frame; ports not listed pass untouched.

use super::types::Attachment;
use super::vocab::{
    BaseChain, Expr, Field, Hook, KeyVal, Op, Rule, SetData, SetDef, Table, Verdict,
    CHAIN_MACSPOOF, SET_MACS, SET_MAC_PORTS,
};

/// The Ethernet type of ARP. Matched as the packet's protocol, not the header's type field: a
/// VLAN-tagged ARP frame reaches the bridge with its tag moved into metadata and its protocol
/// ARP (the test kernel has no 802.1Q support, so only untagged frames are exercised there).
const ETH_P_ARP: u16 = 0x0806;

fn rule(exprs: Vec<Expr>) -> Op {
    Op::AddRule(Rule {
        chain: CHAIN_MACSPOOF.to_string(),
        exprs,
    })
}

/// The table, its two sets, its chain and the chain's rules.
pub fn bridge_infrastructure() -> Vec<Op> {
    let mut ops = vec![
        Op::AddTable(Table::Bridge),
        Op::AddSet(SetDef {
            name: SET_MAC_PORTS,
            key: vec![Field::Iifname],
            data: SetData::None,
        }),
        Op::AddSet(SetDef {
            name: SET_MACS,
            key: vec![Field::Iifname, Field::EtherSaddr],
            data: SetData::None,
        }),
        Op::AddBaseChain(BaseChain {
            name: CHAIN_MACSPOOF,
            hook: Hook::Prerouting,
            priority: -300,
            nat: false,
        }),
    ];
    ops.extend(macspoof_rules());
    ops
}

/// The rules of [`CHAIN_MACSPOOF`]: each drops a frame from a checked port that names a MAC
/// other than the port's.
pub fn macspoof_rules() -> Vec<Op> {
    let checked = || Expr::Lookup {
        set: SET_MAC_PORTS.into(),
        key: vec![Field::Iifname],
        vmap: false,
    };
    let forged = |f: Field| Expr::NotIn {
        set: SET_MACS.into(),
        key: vec![Field::Iifname, f],
    };
    let dropped = |mut exprs: Vec<Expr>| {
        exprs.push(Expr::Counter);
        exprs.push(Expr::Verdict(Verdict::Drop));
        rule(exprs)
    };
    let mut ops = vec![
        dropped(vec![checked(), forged(Field::EtherSaddr)]),
        dropped(vec![
            checked(),
            Expr::Protocol(ETH_P_ARP),
            forged(Field::ArpSha),
        ]),
    ];
    // (ICMPv6 type, offset of its first option, the link-layer option it carries there):
    // router and neighbour solicitations name the sender's address, a neighbour advertisement
    // the target's. Offsets are from the ICMPv6 header; the address follows the option's type
    // and length bytes.
    for (kind, at, option) in [(133u8, 8u32, 1u8), (135, 24, 1), (136, 24, 2)] {
        ops.push(dropped(vec![
            checked(),
            Expr::L4proto(58),
            Expr::ThByte {
                offset: 0,
                value: kind,
            },
            Expr::ThByte {
                offset: at,
                value: option,
            },
            forged(Field::NdLladdr(at + 2)),
        ]));
    }
    ops
}

/// The bridge table's elements of an attachment with a MAC check: its port is checked, and
/// (port . MAC) is what it may send from. None without a check.
pub fn mac_elems(att: &Attachment) -> Vec<(String, Vec<KeyVal>)> {
    let Some(mac) = att.source_mac else {
        return Vec::new();
    };
    let port = KeyVal::Ifname(att.host_veth.clone());
    vec![
        (SET_MAC_PORTS.to_string(), vec![port.clone()]),
        (SET_MACS.to_string(), vec![port, KeyVal::Mac(mac.0)]),
    ]
}
