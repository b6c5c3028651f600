//! Coexistence with the host's own nftables ruleset (a hardened `inet filter` table, a
//! firewall written in nft): a base chain on the forward hook whose policy is drop, in a table
//! plugnet does not own, drops plugnet's bridged and forwarded traffic whatever plugnet's own
//! table accepts, since a packet must be accepted by every base chain it meets. plugnet keeps
//! four rules per bridge at the head of each such chain, each tagged with the comment
//! `plugnet bridge <name>`; invariant: each such chain holds complete rules for exactly the
//! bridges that have attachments (or holds), chains that do not drop hold none, and nothing
//! else of the host's ruleset is touched. iptables' own tables are left to `hostfw`.

use std::collections::BTreeMap;

use super::nft::{self, POLICY_DROP};
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

/// Tables whose forward chains are the host's own: not plugnet's, and not iptables' (whose
/// `filter` FORWARD chain `hostfw` manages through iptables itself).
fn is_foreign(family: u8, table: &str) -> bool {
    match i32::from(family) {
        libc::NFPROTO_INET => table != TABLE,
        libc::NFPROTO_IPV4 | libc::NFPROTO_IPV6 => {
            !matches!(table, "filter" | "nat" | "mangle" | "raw" | "security")
        }
        // bridge, arp, netdev: no forward hook on the routed path.
        _ => false,
    }
}

/// Every forward base chain of the host's own tables (among `tables`), with its policy: one
/// chain dump per family that has such a table; nothing when there is none.
fn forward_chains(tables: &[(u8, String)]) -> std::io::Result<Vec<(ForeignChain, u32)>> {
    let mut families: Vec<u8> = tables
        .iter()
        .filter(|(f, t)| is_foreign(*f, t))
        .map(|(f, _)| *f)
        .collect();
    families.sort_unstable();
    families.dedup();
    let mut out = Vec::new();
    for family in families {
        out.extend(
            nft::forward_base_chains(family)?
                .into_iter()
                .filter(|(c, _)| is_foreign(c.family, &c.table)),
        );
    }
    Ok(out)
}

/// Whether a chain of `family` sees traffic of the families asked about.
fn concerns(family: u8, v4: bool, v6: bool) -> bool {
    match i32::from(family) {
        libc::NFPROTO_IPV4 => v4,
        libc::NFPROTO_IPV6 => v6,
        _ => v4 || v6,
    }
}

/// Whether one of the host's own forward chains drops (policy drop) traffic of the families
/// asked about; `tables` is [`nft::tables`]. No request at all when the host has no table of
/// its own. Any error counts as "no".
pub fn drops(tables: &[(u8, String)], v4: bool, v6: bool) -> bool {
    forward_chains(tables).is_ok_and(|chains| {
        chains
            .iter()
            .any(|(c, policy)| *policy == POLICY_DROP && concerns(c.family, v4, v6))
    })
}

/// plugnet's rules in `at`, by bridge: the handles of each bridge's rules.
fn ours(at: &ForeignChain) -> Result<BTreeMap<String, Vec<u64>>, FirewallError> {
    let mut by_bridge: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (handle, comment) in nft::tagged_rules(at, TAG).map_err(query_err)? {
        let bridge = comment[TAG.len()..].to_string();
        by_bridge.entry(bridge).or_default().push(handle);
    }
    Ok(by_bridge)
}

fn query_err(e: std::io::Error) -> FirewallError {
    FirewallError::HostFirewall(format!("read the host's nftables ruleset: {e}"))
}

/// The host's chains as they are now.
fn current() -> Result<Vec<(ForeignChain, u32)>, FirewallError> {
    let tables = nft::tables().map_err(query_err)?;
    forward_chains(&tables).map_err(query_err)
}

/// Brings plugnet's rules in the host's own forward chains in line with `bridges`, in one
/// transaction: complete rules for every bridge in each chain whose policy drops, none
/// anywhere else (a chain whose policy was changed back to accept loses them).
pub fn sync(bridges: &[String]) -> Result<(), FirewallError> {
    let chains = current()?;
    let mut ops = Vec::new();
    let mut dropping = Vec::new();
    for (at, policy) in &chains {
        let want: &[String] = if *policy == POLICY_DROP {
            dropping.push(at.to_string());
            bridges
        } else {
            &[]
        };
        let have = ours(at)?;
        for (bridge, handles) in &have {
            if !want.contains(bridge) || handles.len() != RULES_PER_BRIDGE {
                ops.extend(handles.iter().map(|&handle| Op::DelForeignRule {
                    at: at.clone(),
                    handle,
                }));
            }
        }
        for bridge in want {
            if have.get(bridge).map(Vec::len) != Some(RULES_PER_BRIDGE) {
                // Each goes to the head: inserted last to first, they read first to last.
                ops.extend(
                    rules(bridge)
                        .into_iter()
                        .rev()
                        .map(|exprs| Op::InsertForeignRule {
                            at: at.clone(),
                            exprs,
                            comment: format!("{TAG}{bridge}"),
                        }),
                );
            }
        }
    }
    nft::run(&ops).map_err(|e| {
        FirewallError::HostFirewall(format!(
            "the host's nftables chain(s) {} drop forwarded traffic (policy drop) and plugnet's \
             accept rules for bridge(s) {} could not be kept there ({e}): accept that traffic \
             in the host's ruleset",
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
    for (at, policy) in current()? {
        if policy != POLICY_DROP {
            continue;
        }
        let have = ours(&at)?;
        if bridges
            .iter()
            .any(|b| have.get(b).map(Vec::len) != Some(RULES_PER_BRIDGE))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// CHECK: every dropping chain of the host's holds `bridge`'s rules.
pub fn check(bridge: &str) -> Result<(), FirewallError> {
    for (at, policy) in current()? {
        if policy == POLICY_DROP && ours(&at)?.get(bridge).map(Vec::len) != Some(RULES_PER_BRIDGE) {
            return Err(FirewallError::Check(format!(
                "the host's nftables chain {at} drops forwarded traffic and lacks plugnet's \
                 accept rules for bridge {bridge} (run `plugnet firewall reload`)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET: u8 = libc::NFPROTO_INET as u8;
    const IP: u8 = libc::NFPROTO_IPV4 as u8;
    const IP6: u8 = libc::NFPROTO_IPV6 as u8;

    #[test]
    fn only_the_hosts_own_tables_are_foreign() {
        assert!(is_foreign(INET, "filter"), "Debian's nftables.conf table");
        assert!(is_foreign(INET, "firewalld"));
        assert!(!is_foreign(INET, TABLE), "plugnet's own");
        assert!(!is_foreign(IP, "filter"), "iptables-nft's: hostfw's");
        assert!(!is_foreign(IP6, "nat"));
        assert!(is_foreign(IP, "docker-bridges"));
        assert!(!is_foreign(libc::NFPROTO_BRIDGE as u8, "filter"));
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
