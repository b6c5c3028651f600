//! Coexistence with the host's own nftables ruleset (a hardened `inet filter` table, a
//! firewall written in nft, firewalld): a base chain on the forward hook that drops what it
//! does not accept — by its policy, or by a final rule that drops or rejects every packet, as
//! firewalld's does — in a table plugnet does not own, drops plugnet's bridged and forwarded
//! traffic whatever plugnet's own table accepts, since a packet must be accepted by every base
//! chain it meets. plugnet keeps four rules per bridge at the head of each such chain, each
//! tagged with the comment `plugnet bridge <name>`; invariant: each such chain holds complete
//! rules for exactly the bridges that have attachments (or holds), chains that do not drop
//! hold none, and nothing else of the host's ruleset is touched. iptables' own tables are left
//! to `hostfw`; a table owned by a process (the kernel's owner flag) is that process's alone.

use std::collections::BTreeMap;

use super::nft::{self, TableInfo, POLICY_DROP};
use super::plan::{Expr, ForeignChain, Op, Verdict, TABLE};
use super::FirewallError;

/// The comment of every rule plugnet keeps in the host's chains, followed by the bridge.
const TAG: &str = "plugnet bridge ";
/// How many rules one bridge has in one chain (see [`rules`]).
const RULES_PER_BRIDGE: usize = 4;

/// What plugnet accepts in a dropping forward chain for `bridge`: traffic across the bridge,
/// replies and port-mapped (DNAT) connections into it, and everything out of it — the same
/// as in iptables' FORWARD (`hostfw`).
fn rules(bridge: &str) -> Vec<Vec<Expr>> {
    let name = |out| Expr::Ifname {
        out,
        name: bridge.to_string(),
    };
    let accept = || Expr::Verdict(Verdict::Accept);
    vec![
        vec![name(false), name(true), accept()],
        vec![name(true), Expr::CtEstablished, accept()],
        vec![name(true), Expr::CtDnat, accept()],
        vec![name(false), accept()],
    ]
}

/// Tables whose forward chains are the host's own and may be written to: not plugnet's, not
/// iptables' (whose `filter` FORWARD chain `hostfw` manages through iptables itself), not
/// owned by a process, not dormant.
fn is_foreign(t: &TableInfo) -> bool {
    !t.owned && !t.dormant && foreign_name(t.family, &t.name)
}

fn foreign_name(family: u8, table: &str) -> bool {
    match i32::from(family) {
        libc::NFPROTO_INET => table != TABLE,
        libc::NFPROTO_IPV4 | libc::NFPROTO_IPV6 => {
            !matches!(table, "filter" | "nat" | "mangle" | "raw" | "security")
        }
        // bridge, arp, netdev: no forward hook on the routed path.
        _ => false,
    }
}

/// Whether a chain of `family` sees traffic of the families asked about.
fn concerns(family: u8, v4: bool, v6: bool) -> bool {
    match i32::from(family) {
        libc::NFPROTO_IPV4 => v4,
        libc::NFPROTO_IPV6 => v6,
        _ => v4 || v6,
    }
}

/// One forward base chain of the host's own, as found.
struct Seen {
    at: ForeignChain,
    /// It drops what it does not accept: policy drop, or a last rule of the host's that drops
    /// or rejects every packet.
    dropping: bool,
    /// plugnet's rules in it, by bridge: their handles.
    ours: BTreeMap<String, Vec<u64>>,
}

impl Seen {
    fn complete(&self, bridge: &str) -> bool {
        self.ours.get(bridge).map(Vec::len) == Some(RULES_PER_BRIDGE)
    }
}

/// Every forward base chain of the host's own tables (among `tables`): one chain dump per
/// family that has such a table, one rule dump per such chain; nothing when there is none.
fn inspect(tables: &[TableInfo]) -> std::io::Result<Vec<Seen>> {
    let foreign: Vec<&TableInfo> = tables.iter().filter(|t| is_foreign(t)).collect();
    let mut families: Vec<u8> = foreign.iter().map(|t| t.family).collect();
    families.sort_unstable();
    families.dedup();
    let mut out = Vec::new();
    for family in families {
        for (at, policy) in nft::forward_base_chains(family)? {
            if !foreign
                .iter()
                .any(|t| t.family == at.family && t.name == at.table)
            {
                continue;
            }
            let rules = nft::chain_rules(&at)?;
            let mut ours: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut last_drops_all = false;
            for r in rules {
                match r.comment.as_deref().and_then(|c| c.strip_prefix(TAG)) {
                    Some(bridge) => ours.entry(bridge.to_string()).or_default().push(r.handle),
                    None => last_drops_all = r.drops_all,
                }
            }
            out.push(Seen {
                at,
                dropping: policy == POLICY_DROP || last_drops_all,
                ours,
            });
        }
    }
    Ok(out)
}

/// Whether one of the host's own forward chains drops traffic of the families asked about;
/// `tables` is [`nft::tables`]. No request at all when the host has no table of its own. Any
/// error counts as "no".
pub fn drops(tables: &[TableInfo], v4: bool, v6: bool) -> bool {
    inspect(tables).is_ok_and(|chains| {
        chains
            .iter()
            .any(|c| c.dropping && concerns(c.at.family, v4, v6))
    })
}

fn query_err(e: std::io::Error) -> FirewallError {
    FirewallError::HostFirewall(format!("read the host's nftables ruleset: {e}"))
}

/// The host's chains as they are now.
fn current() -> Result<Vec<Seen>, FirewallError> {
    let tables = nft::tables().map_err(query_err)?;
    inspect(&tables).map_err(query_err)
}

/// Brings plugnet's rules in the host's own forward chains in line with `bridges`, in one
/// transaction: complete rules for every bridge in each chain that drops, none anywhere else
/// (a chain that no longer drops loses them).
pub fn sync(bridges: &[String]) -> Result<(), FirewallError> {
    let mut ops = Vec::new();
    let mut dropping = Vec::new();
    for seen in current()? {
        let want: &[String] = if seen.dropping {
            dropping.push(seen.at.to_string());
            bridges
        } else {
            &[]
        };
        for (bridge, handles) in &seen.ours {
            if !want.contains(bridge) || !seen.complete(bridge) {
                ops.extend(handles.iter().map(|&handle| Op::DelForeignRule {
                    at: seen.at.clone(),
                    handle,
                }));
            }
        }
        for bridge in want.iter().filter(|b| !seen.complete(b)) {
            // Each goes to the head: inserted last to first, they read first to last.
            ops.extend(
                rules(bridge)
                    .into_iter()
                    .rev()
                    .map(|exprs| Op::InsertForeignRule {
                        at: seen.at.clone(),
                        exprs,
                        comment: format!("{TAG}{bridge}"),
                    }),
            );
        }
    }
    nft::run(&ops).map_err(|e| {
        FirewallError::HostFirewall(format!(
            "the host's nftables chain(s) {} drop forwarded traffic and plugnet's accept rules \
             for bridge(s) {} could not be kept there ({e}): accept that traffic in the \
             host's ruleset",
            dropping.join(", "),
            bridges.join(", ")
        ))
    })
}

/// Whether every dropping chain of the host's holds plugnet's complete rules for every bridge
/// in `bridges` (repair).
pub fn in_place(bridges: &[String]) -> Result<bool, FirewallError> {
    if bridges.is_empty() {
        return Ok(true);
    }
    Ok(current()?
        .iter()
        .filter(|c| c.dropping)
        .all(|c| bridges.iter().all(|b| c.complete(b))))
}

/// CHECK: every dropping chain of the host's holds `bridge`'s rules.
pub fn check(bridge: &str) -> Result<(), FirewallError> {
    match current()?
        .into_iter()
        .find(|c| c.dropping && !c.complete(bridge))
    {
        Some(c) => Err(FirewallError::Check(format!(
            "the host's nftables chain {} drops forwarded traffic and lacks plugnet's accept \
             rules for bridge {bridge} (run `plugnet firewall reload`)",
            c.at
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET: u8 = libc::NFPROTO_INET as u8;
    const IP: u8 = libc::NFPROTO_IPV4 as u8;
    const IP6: u8 = libc::NFPROTO_IPV6 as u8;

    fn table(family: u8, name: &str) -> TableInfo {
        TableInfo {
            family,
            name: name.into(),
            owned: false,
            dormant: false,
        }
    }

    #[test]
    fn only_the_hosts_own_tables_are_foreign() {
        assert!(
            is_foreign(&table(INET, "filter")),
            "Debian's nftables.conf table"
        );
        assert!(is_foreign(&table(INET, "firewalld")));
        assert!(!is_foreign(&table(INET, TABLE)), "plugnet's own");
        assert!(
            !is_foreign(&table(IP, "filter")),
            "iptables-nft's: hostfw's"
        );
        assert!(!is_foreign(&table(IP6, "nat")));
        assert!(is_foreign(&table(IP, "docker-bridges")));
        assert!(!is_foreign(&table(libc::NFPROTO_BRIDGE as u8, "filter")));
        let owned = TableInfo {
            owned: true,
            ..table(INET, "firewalld")
        };
        assert!(!is_foreign(&owned), "owned by a process: its alone");
        let dormant = TableInfo {
            dormant: true,
            ..table(INET, "filter")
        };
        assert!(!is_foreign(&dormant), "dormant: filters nothing");
    }

    #[test]
    fn families_concerned() {
        assert!(concerns(INET, true, false) && concerns(INET, false, true));
        assert!(concerns(IP, true, false) && !concerns(IP, false, true));
        assert!(!concerns(IP6, true, false) && concerns(IP6, false, true));
    }

    #[test]
    fn a_bridge_gets_four_tagged_accepts() {
        let r = rules("br0");
        assert_eq!(r.len(), RULES_PER_BRIDGE);
        let text: Vec<String> = r
            .iter()
            .map(|e| {
                e.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            text,
            [
                "iifname \"br0\" oifname \"br0\" accept",
                "oifname \"br0\" ct state established,related accept",
                "oifname \"br0\" ct status dnat accept",
                "iifname \"br0\" accept",
            ]
        );
    }
}
