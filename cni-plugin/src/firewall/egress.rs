//! A `netOut` attachment's egress chain (`c-<key>-out`), as plan operations with no I/O:
//! replies and the container's own networks pass, then the listed exceptions, then the default.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::types::{NetOut, NetOutDefault, NetOutProtocol, NetOutRule};
use super::vocab::{Expr, Fam, Op, Rule, Verdict};

fn rule(chain: &str, exprs: Vec<Expr>) -> Op {
    Op::AddRule(Rule {
        chain: chain.to_string(),
        exprs,
    })
}

/// The egress chain's rules: replies and the container's own network pass, then the exceptions,
/// then the default.
pub fn egress_rules(chain: &str, subnets: &[IpNetwork], net_out: &NetOut) -> Vec<Op> {
    let ret = || Expr::Verdict(Verdict::Return);
    let mut ops = vec![rule(chain, vec![Expr::CtEstablished, ret()])];
    let mut own: Vec<IpNetwork> = subnets.to_vec();
    if subnets.iter().any(|n| n.is_ipv6()) {
        own.push("fe80::/10".parse().expect("literal"));
    }
    for net in own {
        ops.push(rule(
            chain,
            vec![
                Expr::Nfproto(Fam::of(&net.ip())),
                Expr::Addr {
                    dst: true,
                    net,
                    negate: false,
                },
                ret(),
            ],
        ));
    }
    let action = match net_out.default {
        NetOutDefault::Deny => Expr::Verdict(Verdict::Accept),
        NetOutDefault::Allow => Expr::Reject,
    };
    for r in &net_out.rules {
        for m in rule_matches(r) {
            let mut e = m;
            e.push(Expr::Counter);
            e.push(action.clone());
            ops.push(rule(chain, e));
        }
    }
    if net_out.default == NetOutDefault::Deny {
        ops.push(rule(chain, vec![Expr::Counter, Expr::Reject]));
    }
    ops
}

/// The match lists one NetOut rule expands to (networks × ports, per family for ICMP).
fn rule_matches(r: &NetOutRule) -> Vec<Vec<Expr>> {
    // Destinations: None = any (both families).
    let dests: Vec<Option<(IpAddr, IpAddr)>> = if r.networks.is_empty() {
        vec![None]
    } else {
        r.networks.iter().map(|n| Some(n.bounds())).collect()
    };
    let mut out = Vec::new();
    for d in dests {
        let fams: Vec<Fam> = match d {
            Some((s, _)) => vec![Fam::of(&s)],
            None => vec![Fam::V4, Fam::V6],
        };
        for fam in fams {
            let mut base = Vec::new();
            if d.is_some() || r.protocol == NetOutProtocol::Icmp {
                base.push(Expr::Nfproto(fam));
            }
            if let Some((s, e)) = d {
                base.push(Expr::AddrRange {
                    dst: true,
                    start: s,
                    end: e,
                });
            }
            match r.protocol {
                NetOutProtocol::All => out.push(base),
                NetOutProtocol::Icmp => {
                    if fam == Fam::V6 && r.icmps.is_some() {
                        continue; // ICMP type numbers are IPv4's; ICMPv6 differs.
                    }
                    base.push(Expr::L4proto(if fam == Fam::V4 { 1 } else { 58 }));
                    if let Some(i) = r.icmps {
                        base.push(Expr::Icmp {
                            kind: i.kind,
                            code: i.code,
                        });
                    }
                    out.push(base);
                }
                NetOutProtocol::Tcp | NetOutProtocol::Udp => {
                    base.push(Expr::L4proto(if r.protocol == NetOutProtocol::Tcp {
                        6
                    } else {
                        17
                    }));
                    if r.ports.is_empty() {
                        out.push(base.clone());
                    }
                    for p in &r.ports {
                        let mut e = base.clone();
                        e.push(Expr::Dport {
                            start: p.start,
                            end: p.end,
                        });
                        out.push(e);
                    }
                }
            }
            if d.is_none() && r.protocol != NetOutProtocol::Icmp {
                break; // no family-specific match: one rule covers both
            }
        }
    }
    out
}
