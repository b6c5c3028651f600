//! Cluster traffic through a host whose iptables FORWARD path drops (policy DROP, Docker's
//! DOCKER-USER — or later so: dockerd sets DROP when it starts, whenever that is; the
//! coexistence rules of docs/firewall.md): a chain of the agent's own, `PLUGNET-CLUSTER`,
//! jumped to from the top of FORWARD, accepting traffic from a cluster network's subnet to
//! the same subnet. It is there whenever a cluster network is defined (where FORWARD accepts
//! anyway it changes nothing), so a policy that turns to DROP later finds it in place.
//! The plugin's per-bridge rules accept what leaves a bridge; these accept what arrives for one
//! from another host (a new connection inbound, which the bridge rules leave to the policy).
//!
//! Invariant: only the chain `PLUGNET-CLUSTER` and the one jump to it (comment `plugnet
//! cluster`) are ever written or removed; iptables runs only when they differ from what is
//! wanted, so a reconcile with nothing to change costs one `iptables -S` per family.

use ipnetwork::IpNetwork;
use std::process::Command;

pub const CHAIN: &str = "PLUGNET-CLUSTER";
const COMMENT: &str = "plugnet cluster";

fn run(bin: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("run {bin}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{bin} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rules the chain should hold for `subnets` of one family, as `iptables -S` prints them.
fn wanted_rules(subnets: &[IpNetwork]) -> Vec<String> {
    subnets
        .iter()
        .map(|s| {
            let n = IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s);
            format!("-A {CHAIN} -s {n} -d {n} -m comment --comment \"{COMMENT}\" -j ACCEPT")
        })
        .collect()
}

/// Make both families' FORWARD path accept traffic inside `subnets`; the number of iptables
/// changes made.
pub fn sync(subnets: &[IpNetwork]) -> Result<usize, String> {
    let mut changes = 0;
    for (bin, v4) in [("iptables", true), ("ip6tables", false)] {
        let fam: Vec<IpNetwork> = subnets
            .iter()
            .filter(|s| s.is_ipv4() == v4)
            .copied()
            .collect();
        let listing = match run(bin, &["-S"]) {
            Ok(l) => l,
            // No iptables on this host: nothing can drop through it.
            Err(e) if e.starts_with("run ") => continue,
            Err(e) => return Err(e),
        };
        let have_chain = listing.lines().any(|l| l.trim() == format!("-N {CHAIN}"));
        let jump = format!("-A FORWARD -m comment --comment \"{COMMENT}\" -j {CHAIN}");
        let have_jump = listing.lines().any(|l| l.trim() == jump);
        let needed = !fam.is_empty();
        let jump_args = [
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            CHAIN,
        ];
        if !needed {
            if have_jump {
                run(bin, &[&["-D"][..], &jump_args].concat())?;
                changes += 1;
            }
            if have_chain {
                run(bin, &["-F", CHAIN])?;
                run(bin, &["-X", CHAIN])?;
                changes += 1;
            }
            continue;
        }
        if !have_chain {
            run(bin, &["-N", CHAIN])?;
            changes += 1;
        }
        let want = wanted_rules(&fam);
        let have: Vec<String> = listing
            .lines()
            .filter(|l| l.starts_with(&format!("-A {CHAIN} ")))
            .map(|l| l.trim().to_string())
            .collect();
        if have != want {
            run(bin, &["-F", CHAIN])?;
            for s in &fam {
                let n = s.to_string();
                run(
                    bin,
                    &[
                        "-A",
                        CHAIN,
                        "-s",
                        &n,
                        "-d",
                        &n,
                        "-m",
                        "comment",
                        "--comment",
                        COMMENT,
                        "-j",
                        "ACCEPT",
                    ],
                )?;
            }
            changes += 1;
        }
        if !have_jump {
            run(
                bin,
                &[&["-I"][..], &jump_args[..1], &["1"], &jump_args[1..]].concat(),
            )?;
            changes += 1;
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_printed_as_iptables_lists_them() {
        let r = wanted_rules(&["10.173.0.0/16".parse().unwrap()]);
        assert_eq!(
            r,
            [
                "-A PLUGNET-CLUSTER -s 10.173.0.0/16 -d 10.173.0.0/16 -m comment --comment \"plugnet cluster\" -j ACCEPT"
            ]
        );
    }
}
