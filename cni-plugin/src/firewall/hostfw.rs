//! Coexistence with iptables users (Docker): when the host's iptables FORWARD path would drop
//! plugnet traffic (policy DROP, or Docker's DOCKER-USER chain present), or may come to drop it
//! (forwarding is off: whatever turns it on may set the policy to DROP as it does, which is what
//! dockerd does), plugnet keeps one chain of its own, `PLUGNET-FORWARD`, jumped to from
//! DOCKER-USER (or FORWARD), holding a few accept rules per plugnet bridge; invariant: the chain
//! holds rules for exactly the bridges that have attachments, traffic towards Docker's bridges
//! is handed back to Docker's chains untouched, and everything is removed with the last
//! bridge. Runs iptables only when the set of bridges changes (first/last attachment on a
//! bridge), never per container.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use super::FirewallError;

pub const CHAIN: &str = "PLUGNET-FORWARD";
const TAG: &str = "plugnet";

/// What `iptables -S` shows about the filter table (and whether the family forwards).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub forward_drops: bool,
    pub docker_user: bool,
    pub our_chain: bool,
    /// The chain holding our jump rule, if any.
    pub jump_from: Option<String>,
    /// The family's forwarding sysctl is off: a firewall that turns it on may set the FORWARD
    /// policy to DROP when it does (dockerd does exactly that), so the rules go in beforehand.
    pub forwarding_off: bool,
}

impl Observed {
    /// Whether plugnet's bridges need accept rules in this filter table: FORWARD drops their
    /// traffic now, Docker's chains are there, or forwarding is off (see `forwarding_off`) and
    /// either a bridge carries this family (`anticipate`) or plugnet's chain is here already
    /// (kept while bridges remain).
    pub fn needs_rules(&self, anticipate: bool) -> bool {
        self.forward_drops
            || self.docker_user
            || (self.forwarding_off && (anticipate || self.our_chain))
    }
}

/// Which address families the bridges being synced carry: where forwarding is off, rules go in
/// beforehand only for those (a host whose IPv6 forwarding is off gets no ip6tables rules for
/// bridges carrying IPv4 alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    /// No family: nothing is put in beforehand (rules already there are kept).
    pub const NONE: Families = Families {
        v4: false,
        v6: false,
    };

    /// The families of `addrs`.
    pub fn of<'a>(addrs: impl IntoIterator<Item = &'a ipnetwork::IpNetwork>) -> Families {
        addrs.into_iter().fold(Families::NONE, |f, a| Families {
            v4: f.v4 || a.is_ipv4(),
            v6: f.v6 || a.is_ipv6(),
        })
    }
}

pub fn parse_rules(s: &str) -> Observed {
    let mut o = Observed::default();
    for line in s.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["-P", "FORWARD", p, ..] => o.forward_drops = *p != "ACCEPT",
            ["-N", "DOCKER-USER"] => o.docker_user = true,
            ["-N", c] if *c == CHAIN => o.our_chain = true,
            ["-A", from, rest @ ..] if rest.ends_with(&["-j", CHAIN]) => {
                o.jump_from = Some(from.to_string())
            }
            _ => {}
        }
    }
    o
}

/// The iptables-restore input that makes the filter table hold exactly our rules for `bridges`
/// (empty: remove our chain and jump). `None` when nothing is to be done. `anticipate`: see
/// [`Observed::needs_rules`].
pub fn restore_input(o: &Observed, bridges: &[String], anticipate: bool) -> Option<String> {
    if bridges.is_empty() || !o.needs_rules(anticipate) {
        if !o.our_chain {
            return None;
        }
        let mut s = String::from("*filter\n");
        s.push_str(&format!(":{CHAIN} - [0:0]\n"));
        if let Some(from) = &o.jump_from {
            s.push_str(&format!(
                "-D {from} -m comment --comment {TAG} -j {CHAIN}\n"
            ));
        }
        s.push_str(&format!("-X {CHAIN}\nCOMMIT\n"));
        return Some(s);
    }
    let mut s = String::from("*filter\n");
    // Declaring the chain with --noflush empties it: it is rewritten whole each time.
    s.push_str(&format!(":{CHAIN} - [0:0]\n"));
    for b in bridges {
        let c = format!("-m comment --comment \"{TAG} bridge {b}\"");
        s.push_str(&format!("-A {CHAIN} -i {b} -o {b} {c} -j ACCEPT\n"));
        s.push_str(&format!(
            "-A {CHAIN} -o {b} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT {c} -j ACCEPT\n"
        ));
        // Towards Docker's own bridges Docker decides (published ports only), as for any host.
        s.push_str(&format!("-A {CHAIN} -i {b} -o docker0 {c} -j RETURN\n"));
        s.push_str(&format!("-A {CHAIN} -i {b} -o br-+ {c} -j RETURN\n"));
        s.push_str(&format!("-A {CHAIN} -i {b} {c} -j ACCEPT\n"));
    }
    let want_from = if o.docker_user {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    if o.jump_from.as_deref() != Some(want_from) {
        if let Some(from) = &o.jump_from {
            s.push_str(&format!(
                "-D {from} -m comment --comment {TAG} -j {CHAIN}\n"
            ));
        }
        s.push_str(&format!(
            "-I {want_from} 1 -m comment --comment {TAG} -j {CHAIN}\n"
        ));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Brings iptables' filter table (IPv4 and IPv6) in line with `bridges` (ADD and DEL: see
/// [`Sync::Fast`]), and the host's own dropping nftables chains. The two families are
/// independent tables: they are synced concurrently (each iptables-nft run costs 5-15 ms
/// here). `carried`: the families whose rules go in beforehand where forwarding is off.
pub fn sync(bridges: &BTreeSet<String>, carried: Families) -> Result<(), FirewallError> {
    sync_with(bridges, carried, Sync::Fast)
}

/// [`sync`] from what `iptables -S` lists, never from assumptions: reload and repair.
pub fn sync_exact(bridges: &BTreeSet<String>, carried: Families) -> Result<(), FirewallError> {
    sync_with(bridges, carried, Sync::Exact)
}

/// How the current state of the filter table is learnt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// On an iptables-nft host, from nf_tables over netlink (the FORWARD policy, whether
    /// DOCKER-USER and our chain exist), assuming our jump sits where plugnet put it; one
    /// `iptables-restore` instead of `iptables -S` + restore. A restore that fails on that
    /// assumption (our jump gone) falls back to [`Sync::Exact`].
    Fast,
    /// `iptables -S`, then the restore.
    Exact,
}

fn sync_with(
    bridges: &BTreeSet<String>,
    carried: Families,
    how: Sync,
) -> Result<(), FirewallError> {
    let bridges: Vec<String> = bridges.iter().cloned().collect();
    let bridges = bridges.as_slice();
    let (v4, v6) = std::thread::scope(|s| {
        let v6 = s.spawn(|| sync_family(Family::V6, bridges, carried.v6, how));
        let v4 = sync_family(Family::V4, bridges, carried.v4, how);
        (
            v4,
            v6.join()
                .unwrap_or_else(|_| Err(FirewallError::HostFirewall("ip6tables thread".into()))),
        )
    });
    v4.and(v6)?;
    // The host's own nftables chains: netlink only, no tool to run.
    super::hostnft::sync(bridges)
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn tools(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("iptables", "iptables-restore"),
            Family::V6 => ("ip6tables", "ip6tables-restore"),
        }
    }

    fn nfproto(self) -> u8 {
        (match self {
            Family::V4 => libc::NFPROTO_IPV4,
            Family::V6 => libc::NFPROTO_IPV6,
        }) as u8
    }

    /// Whether this family's forwarding is off in this network namespace (one small /proc read;
    /// unreadable counts as on).
    fn forwarding_off(self) -> bool {
        let path = match self {
            Family::V4 => "/proc/sys/net/ipv4/ip_forward",
            Family::V6 => "/proc/sys/net/ipv6/conf/all/forwarding",
        };
        std::fs::read(path).is_ok_and(|s| s.first() == Some(&b'0'))
    }

    /// What `iptables -S` output `text` of this family shows, with the family's forwarding.
    fn observe_listed(self, text: &str) -> Observed {
        Observed {
            forwarding_off: self.forwarding_off(),
            ..parse_rules(text)
        }
    }

    /// Whether iptables-legacy's `filter` table of this family is loaded (one small /proc
    /// read): its rules and policy are not visible over nf_tables netlink.
    fn legacy_filter_loaded(self) -> bool {
        let names = match self {
            Family::V4 => "/proc/net/ip_tables_names",
            Family::V6 => "/proc/net/ip6_tables_names",
        };
        std::fs::read_to_string(names).is_ok_and(|s| s.lines().any(|l| l.trim() == "filter"))
    }
}

/// Whether the host's firewall may drop forwarded plugnet traffic of the families asked about
/// (`v4`, `v6`), now or once forwarding is turned on, so that even an attachment using no
/// firewall feature needs its bridge's accept rules:
/// - the family's forwarding is off: a dockerd started later turns it on and sets FORWARD's
///   policy to DROP (a gateway network has already turned it on, so this is the case of
///   bridges without a gateway in that family);
/// - iptables-legacy's `filter` table of that family is loaded (its policy is not visible
///   without running `iptables`, so assume it may; [`sync`] then looks and adds nothing if not
///   needed);
/// - the FORWARD policy of iptables-nft's `filter` table is DROP (Docker sets it);
/// - a forward chain of the host's own nftables ruleset drops what it does not accept
///   (`hostnft`).
///
/// Cheap: two small /proc reads per family and one netlink dump of the tables; a chain
/// request only where such a table exists. Any error counts as "no".
pub fn forward_may_drop(v4: bool, v6: bool) -> bool {
    let asked: Vec<Family> = [(v4, Family::V4), (v6, Family::V6)]
        .into_iter()
        .filter(|(asked, _)| *asked)
        .map(|(_, family)| family)
        .collect();
    if asked
        .iter()
        .any(|f| f.forwarding_off() || f.legacy_filter_loaded())
    {
        return true;
    }
    let Ok(tables) = super::nft::tables() else {
        return false;
    };
    asked.iter().any(|f| {
        tables
            .iter()
            .any(|t| t.family == f.nfproto() && t.name == "filter")
            && matches!(
                super::nft::iptables_forward_drops(f.nfproto()),
                Ok(Some(true))
            )
    }) || super::hostnft::drops(&tables, v4, v6)
}

/// The filter table as nf_tables shows it, when iptables-nft manages it alone (no legacy
/// `filter` table loaded: then the host's `iptables` may be either backend). `None`: unknown.
/// No FORWARD chain (no `filter` table at all, as on an ordinary host, or one iptables-nft made
/// without it) is a FORWARD that accepts, as `iptables -S` would show it.
fn observed_via_netlink(family: Family) -> Option<Observed> {
    if family.legacy_filter_loaded() {
        return None;
    }
    let nfproto = family.nfproto();
    let chain = |name: &str| super::nft::iptables_chain(nfproto, name).ok();
    let forward = chain("FORWARD")?.flatten();
    let docker_user = chain("DOCKER-USER")?.is_some();
    let our_chain = chain(CHAIN)?.is_some();
    Some(Observed {
        forward_drops: forward == Some(super::nft::POLICY_DROP),
        docker_user,
        our_chain,
        // Where plugnet puts it (restore_input); a wrong guess fails the restore. (A jump put
        // in FORWARD before Docker made DOCKER-USER is left there while bridges come and go:
        // it still sees the traffic first, as Docker inserts its own jumps above it.)
        jump_from: our_chain.then(|| {
            if docker_user {
                "DOCKER-USER"
            } else {
                "FORWARD"
            }
            .to_string()
        }),
        forwarding_off: family.forwarding_off(),
    })
}

fn run_restore(restore: &str, list: &str, input: &str) -> Result<(), FirewallError> {
    let mut child = Command::new(restore)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            FirewallError::HostFirewall(format!(
                "{list} FORWARD would drop plugnet traffic and {restore} cannot run: {e}"
            ))
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| FirewallError::HostFirewall(format!("{restore}: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| FirewallError::HostFirewall(format!("{restore}: {e}")))?;
    if !out.status.success() {
        return Err(FirewallError::HostFirewall(format!(
            "{restore}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn sync_family(
    family: Family,
    bridges: &[String],
    anticipate: bool,
    how: Sync,
) -> Result<(), FirewallError> {
    let (list, restore) = family.tools();
    if how == Sync::Fast {
        if let Some(observed) = observed_via_netlink(family) {
            match restore_input(&observed, bridges, anticipate) {
                None => return Ok(()),
                Some(input) => {
                    if run_restore(restore, list, &input).is_ok() {
                        return Ok(());
                    }
                }
            }
        }
    }
    let out = match Command::new(list)
        .args(["-w", "-t", "filter", "-S"])
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return missing_tools(family, bridges)
        }
        Err(e) => return Err(FirewallError::HostFirewall(format!("run {list}: {e}"))),
    };
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        // ip6tables without IPv6 support in the kernel: nothing to coexist with.
        if matches!(family, Family::V6) {
            return Ok(());
        }
        return Err(FirewallError::HostFirewall(format!(
            "{list} -S: {}",
            msg.trim()
        )));
    }
    let observed = family.observe_listed(&String::from_utf8_lossy(&out.stdout));
    let Some(input) = restore_input(&observed, bridges, anticipate) else {
        return Ok(());
    };
    run_restore(restore, list, &input)
}

/// No `iptables` binaries. Usually nothing iptables-made is there to drop our traffic; but an
/// iptables-style `filter` table can exist without them (made with `nft`, or the binaries
/// removed), and when its FORWARD path would drop the bridges' traffic the caller gets an
/// error naming what is missing, not a bridge silently cut off.
fn missing_tools(family: Family, bridges: &[String]) -> Result<(), FirewallError> {
    if bridges.is_empty() {
        return Ok(());
    }
    match observed_via_netlink(family) {
        // Only what drops now: without iptables binaries no dockerd can come to set DROP.
        Some(o) if o.forward_drops || o.docker_user => {}
        _ => return Ok(()),
    }
    let (list, restore) = family.tools();
    let table = match family {
        Family::V4 => "ip filter",
        Family::V6 => "ip6 filter",
    };
    Err(FirewallError::HostFirewall(format!(
        "the host's {table} FORWARD chain would drop the traffic of bridge(s) {}, and \
         {list}/{restore} are not installed to add plugnet's accept rules there: install \
         iptables (its nft backend), or accept that traffic in the host's ruleset",
        bridges.join(", ")
    )))
}

/// Whether iptables (IPv4) needs nothing of plugnet's, known over netlink without running it
/// (an `iptables -S` costs ~18 ms here; a repair checks after every ruleset change under
/// `plugnet firewall watch`). False where only the listing can tell.
fn needs_nothing_v4() -> bool {
    observed_via_netlink(Family::V4).is_some_and(|o| !o.needs_rules(false))
}

/// `iptables -S` of the filter table (IPv4); `None` when there is no iptables.
fn list_filter_v4() -> Result<Option<String>, FirewallError> {
    match Command::new("iptables")
        .args(["-w", "-t", "filter", "-S"])
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned())),
        Ok(o) => Err(FirewallError::HostFirewall(format!(
            "iptables -S: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FirewallError::HostFirewall(format!("run iptables: {e}"))),
    }
}

/// Whether iptables (IPv4) holds our jump and the accept rules of every bridge in `bridges`
/// wherever it would drop plugnet traffic (true when there is no iptables), and the host's own
/// dropping nftables chains hold theirs.
pub fn in_place(bridges: &[String]) -> Result<bool, FirewallError> {
    if bridges.is_empty() {
        return Ok(true);
    }
    let iptables = needs_nothing_v4()
        || match list_filter_v4()? {
            Some(text) => {
                let o = Family::V4.observe_listed(&text);
                bridges.iter().all(|b| check_rules(&o, &text, b).is_ok())
            }
            None => true,
        };
    Ok(iptables && super::hostnft::in_place(bridges)?)
}

/// CHECK: where iptables would drop plugnet traffic, our jump and this bridge's rules exist;
/// so do its rules in the host's own dropping nftables chains.
pub fn check(bridge: &str) -> Result<(), FirewallError> {
    if !needs_nothing_v4() {
        if let Some(text) = list_filter_v4()? {
            check_rules(&Family::V4.observe_listed(&text), &text, bridge)?;
        }
    }
    super::hostnft::check(bridge)
}

/// Whether `iptables -S` output `text` (observed as `o`) holds our jump and `bridge`'s rules
/// wherever plugnet keeps them.
fn check_rules(o: &Observed, text: &str, bridge: &str) -> Result<(), FirewallError> {
    if !o.needs_rules(false) {
        return Ok(());
    }
    if o.jump_from.is_none() {
        return Err(FirewallError::Check(format!(
            "iptables FORWARD drops and the jump to {CHAIN} is missing"
        )));
    }
    let want = format!("-A {CHAIN} -i {bridge} -o {bridge} ");
    if !text.lines().any(|l| l.starts_with(&want)) {
        return Err(FirewallError::Check(format!(
            "{CHAIN} has no rules for bridge {bridge}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n";

    #[test]
    fn docker_host_gets_jump_from_docker_user() {
        let o = parse_rules(DOCKER);
        assert!(o.forward_drops && o.docker_user && !o.our_chain);
        let s = restore_input(&o, &["pnfbr0".into()], false).unwrap();
        assert!(s.contains("-I DOCKER-USER 1 -m comment --comment plugnet -j PLUGNET-FORWARD\n"));
        assert!(s.contains("-A PLUGNET-FORWARD -i pnfbr0 -o pnfbr0 -m comment --comment \"plugnet bridge pnfbr0\" -j ACCEPT\n"));
        assert!(s.contains("-o docker0"));
    }

    #[test]
    fn existing_jump_is_not_duplicated_and_last_bridge_cleans_up() {
        let with = format!("{DOCKER}-N PLUGNET-FORWARD\n-A DOCKER-USER -m comment --comment plugnet -j PLUGNET-FORWARD\n");
        let o = parse_rules(&with);
        assert_eq!(o.jump_from.as_deref(), Some("DOCKER-USER"));
        assert!(!restore_input(&o, &["b".into()], false)
            .unwrap()
            .contains("-I "));
        let s = restore_input(&o, &[], false).unwrap();
        assert!(s.contains(
            "-D DOCKER-USER -m comment --comment plugnet -j PLUGNET-FORWARD\n-X PLUGNET-FORWARD\n"
        ));
    }

    fn check_rules(text: &str, forwarding_off: bool, bridge: &str) -> Result<(), FirewallError> {
        let o = Observed {
            forwarding_off,
            ..parse_rules(text)
        };
        super::check_rules(&o, text, bridge)
    }

    #[test]
    fn check_finds_missing_pieces() {
        assert!(check_rules("-P FORWARD ACCEPT\n", false, "b").is_ok());
        // Forwarding off: rules are expected once plugnet's chain is there.
        assert!(check_rules("-P FORWARD ACCEPT\n", true, "b").is_ok());
        let anticipated = "-P FORWARD ACCEPT\n-N PLUGNET-FORWARD\n-A FORWARD -m comment --comment plugnet -j PLUGNET-FORWARD\n";
        assert!(check_rules(anticipated, true, "b").is_err());
        assert!(check_rules(DOCKER, false, "b")
            .unwrap_err()
            .to_string()
            .contains("jump"));
        let s = restore_input(&parse_rules(DOCKER), &["b".into()], false).unwrap();
        let listed: String = s
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(|l| format!("{l}\n"))
            .collect();
        let with = format!("{DOCKER}-N PLUGNET-FORWARD\n-A DOCKER-USER -m comment --comment plugnet -j PLUGNET-FORWARD\n{listed}");
        assert!(check_rules(&with, false, "b").is_ok());
        assert!(check_rules(&with, false, "c").is_err());
    }

    #[test]
    fn permissive_host_needs_nothing() {
        let o = parse_rules("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n");
        assert_eq!(restore_input(&o, &["b".into()], false), None);
        let o = parse_rules("-P FORWARD DROP\n");
        assert!(restore_input(&o, &["b".into()], false)
            .unwrap()
            .contains("-I FORWARD 1"));
    }

    #[test]
    fn forwarding_off_gets_the_rules_before_a_dockerd_sets_drop() {
        // Forwarding off, FORWARD accepting: a dockerd started later turns forwarding on and
        // sets DROP; the rules and the jump from FORWARD are there already.
        let o = Observed {
            forwarding_off: true,
            ..parse_rules("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n")
        };
        let s = restore_input(&o, &["b".into()], true).unwrap();
        assert!(s.contains("-I FORWARD 1 -m comment --comment plugnet -j PLUGNET-FORWARD\n"));
        // Not for a family no bridge carries (IPv6 forwarding is off on most hosts).
        assert_eq!(restore_input(&o, &["b".into()], false), None);
        assert!(s.contains("-A PLUGNET-FORWARD -i b -o b "));
        // ... and they go with the last bridge.
        let with = "-P FORWARD ACCEPT\n-N PLUGNET-FORWARD\n-A FORWARD -m comment --comment plugnet -j PLUGNET-FORWARD\n";
        let o = Observed {
            forwarding_off: true,
            ..parse_rules(with)
        };
        // Kept (rewritten) while bridges remain, whatever they carry ...
        assert!(restore_input(&o, &["c".into()], false)
            .unwrap()
            .contains("-A PLUGNET-FORWARD -i c -o c "));
        assert!(restore_input(&o, &[], false)
            .unwrap()
            .contains("-X PLUGNET-FORWARD"));
    }
}
