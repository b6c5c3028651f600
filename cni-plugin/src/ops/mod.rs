//! Day-two operations on the CNI side: `plugnet ipam ls|release` and `plugnet gc`, as clap
//! argument structs and handlers the CLI ([`crate::cli`]) dispatches to.
//!
//! Invariant: handlers write results to the given stdout and return an exit code; they never
//! touch a store's files directly (IPAM goes through [`crate::ipam::report`]).

pub mod gc;
pub mod ipam_view;
pub mod owners;
mod table;

use crate::error::CniError;
use crate::runner::RunnerOptions;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// `plugnet ipam …`
#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Who holds each address (container, ifname, attached/reserved, since when) and free/used
    /// counts per range.
    Ls(IpamLsArgs),
    /// Release what one container holds on a network (the manual fix for a leaked address;
    /// `plugnet gc` does this automatically for owners it can prove dead).
    Release(IpamReleaseArgs),
}

#[derive(Debug, Args)]
pub struct IpamLsArgs {
    /// Only this network.
    #[arg(long)]
    pub network: Option<String>,
    /// plugnet-ipam data dir [default: /var/lib/cni/networks and every ipam.dataDir in the
    /// conf dir's conflists].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Conflist dir to read ranges from (overrides NETCONFPATH).
    #[arg(long, value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
    /// Machine-readable JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IpamReleaseArgs {
    #[arg(long)]
    pub network: String,
    /// Container id as the runtime passed it (CNI_CONTAINERID); see `plugnet ipam ls`.
    #[arg(long)]
    pub id: String,
    /// Only this interface's addresses (default: all of the container's).
    #[arg(long)]
    pub ifname: Option<String>,
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
}

pub const GC_RULES: &str = "\
An owner (a container id) is reclaimed only when all of these hold:
  1. no owner source holds it: not in the runner's state (--state-dir), not an endpoint or pool
     reservation in plugnet-shim's state (--shim-state-dir; skipped when the dir is absent);
  2. a netns path is recorded for it (a libcni result cache in --cache-dir or in the runner's
     state dir: its `netns`, or the result's interface `sandbox` for libcni 1.1 caches) and
     every recorded path is gone (missing, or no longer a namespace); or, with no path
     recorded (a chain whose later plugin failed leaves no cache), plugnet's firewall recorded
     its completed ADD and every host veth those records name is gone (the kernel removes a
     veth with its namespace);
  3. none of its plugnet host veths still has a peer in another namespace (that namespace would
     still be alive, held by some process).
Anything else is kept and the report says why: an address with no recorded netns (no cache, no
state) cannot be proved dead; release it with `plugnet ipam release` if you know better.
An unreadable runner or shim state stops gc altogether; a netns that cannot be probed keeps its owner.
Reclaimed: firewall records with their rules (and the nftables table with the last one), host
veths named by plugnet's scheme carrying the network's alias (or, when an ADD was killed before
the alias was set, the MAC plugnet gave them at birth), IPAM records and host-local leases in a
switched store (released through the allocator, under the store lock), and the libcni cache
files. Damaged store entries are listed; the network's CNI GC repairs them.
Exit status: 0 when every step succeeded (or would, with --dry-run), 1 when one failed.";

#[derive(Debug, Args)]
#[command(after_long_help = GC_RULES)]
pub struct GcArgs {
    /// Report what would be reclaimed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// plugnet-ipam data dir [default: /var/lib/cni/networks and every ipam.dataDir in the
    /// conf dir's conflists].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Conflist dir (overrides NETCONFPATH), to find data dirs.
    #[arg(long, value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
    /// plugnet firewall state dir [default: /var/lib/plugnet/firewall and every
    /// firewallStateDir in the conf dir's conflists].
    #[arg(long, value_name = "DIR")]
    pub firewall_dir: Option<PathBuf>,
    /// libcni cache dir of the runtimes (holds results/).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/cni")]
    pub cache_dir: PathBuf,
    /// plugnet-shim's state dir.
    #[arg(long, value_name = "DIR", default_value = owners::DEFAULT_SHIM_STATE_DIR)]
    pub shim_state_dir: PathBuf,
    /// Machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn write(stdout: &mut dyn Write, text: &str) -> Result<(), CniError> {
    stdout
        .write_all(text.as_bytes())
        .map_err(|e| CniError::io(format!("write output: {e}")))
}

fn json_text(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON serialises");
    s.push('\n');
    s
}

/// `plugnet ipam ls|release`.
pub fn ipam(
    cmd: IpamCommand,
    opts: &RunnerOptions,
    stdout: &mut dyn Write,
) -> Result<i32, CniError> {
    let now = crate::ipam::store::now();
    match cmd {
        IpamCommand::Ls(a) => {
            let conf_dir = a.conf_dir.unwrap_or_else(|| opts.conf_dir.clone());
            let usages = ipam_view::ls(a.network.as_deref(), a.data_dir.as_deref(), &conf_dir)?;
            if a.json {
                write(stdout, &json_text(&ipam_view::to_json(&usages, now)))?;
            } else {
                write(stdout, &ipam_view::to_text(&usages, now))?;
            }
        }
        IpamCommand::Release(a) => {
            let conf_dir = a.conf_dir.unwrap_or_else(|| opts.conf_dir.clone());
            let mut released = 0;
            for dir in ipam_view::data_dirs(a.data_dir.as_deref(), &conf_dir) {
                let got =
                    crate::ipam::report::release(&dir, &a.network, &a.id, a.ifname.as_deref())?;
                for (owner, ips) in got {
                    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                    write(
                        stdout,
                        &format!(
                            "released {} held by {} on {} ({})\n",
                            if ips.is_empty() {
                                "-".into()
                            } else {
                                ips.join(",")
                            },
                            owner.key(),
                            a.network,
                            dir.join(&a.network).display()
                        ),
                    )?;
                    released += 1;
                }
            }
            if released == 0 {
                return Err(CniError::config(format!(
                    "nothing held by container {:?}{} on network {:?}; see `plugnet ipam ls \
                     --network {}` for the holders",
                    a.id,
                    a.ifname
                        .map(|i| format!(" ifname {i:?}"))
                        .unwrap_or_default(),
                    a.network,
                    a.network
                )));
            }
        }
    }
    Ok(0)
}

/// `plugnet gc`.
pub fn gc(a: GcArgs, opts: &RunnerOptions, stdout: &mut dyn Write) -> Result<i32, CniError> {
    let conf_dir = a.conf_dir.unwrap_or_else(|| opts.conf_dir.clone());
    let gc_opts = gc::GcOptions {
        data_dirs: ipam_view::data_dirs(a.data_dir.as_deref(), &conf_dir),
        // The runner caches its results in its own state dir.
        cache_dirs: vec![a.cache_dir, opts.state_dir.clone()],
        firewall_dirs: ipam_view::firewall_dirs(a.firewall_dir.as_deref(), &conf_dir),
        dry_run: a.dry_run,
    };
    let runner = owners::RunnerSource {
        state_dir: opts.state_dir.clone(),
    };
    let shim = owners::ShimSource {
        state_dir: a.shim_state_dir,
    };
    let report = gc::run(
        &gc_opts,
        &[&runner, &shim],
        &owners::FsProbe,
        &gc::NetlinkLinks,
        &gc::StateFirewall,
    )?;
    if a.json {
        write(
            stdout,
            &json_text(&serde_json::to_value(&report).expect("serialises")),
        )?;
    } else {
        write(stdout, &gc_text(&report))?;
    }
    Ok(if report.failed() { 1 } else { 0 })
}

fn gc_text(r: &gc::GcReport) -> String {
    let mut s = String::new();
    for src in &r.sources {
        s.push_str(&format!("source: {src}\n"));
    }
    for d in &r.damaged {
        s.push_str(&format!("damaged: {d}\n"));
    }
    if r.owners.is_empty() {
        s.push_str("no IPAM records or result caches found: nothing to do\n");
        return s;
    }
    let mut t = table::Table::new(["CONTAINER", "VERDICT", "WHY"]);
    for o in &r.owners {
        t.row([
            o.container_id.clone(),
            o.verdict.to_string(),
            o.reason.clone(),
        ]);
    }
    s.push_str(&t.render(""));
    let verb = |done: bool, err: bool| match (r.dry_run, done, err) {
        (true, _, _) => "would",
        (_, _, true) => "FAILED to",
        _ => "did",
    };
    for a in &r.actions {
        let what = match a.kind {
            "release-ipam" => "release",
            "delete-veth" => "delete veth",
            "remove-firewall" => "remove firewall rules of",
            _ => "remove cache",
        };
        s.push_str(&format!(
            "{} {what} {} (container {}){}\n",
            verb(a.done, a.error.is_some()),
            a.what,
            a.container_id,
            a.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    if r.actions.is_empty() {
        s.push_str("nothing to reclaim\n");
    } else if r.dry_run {
        s.push_str("dry run: nothing changed (run without --dry-run to reclaim)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::gc::{Action, GcReport, Verdict};
    use super::*;

    fn report(dry_run: bool, error: Option<&str>) -> GcReport {
        GcReport {
            dry_run,
            sources: vec!["runner state /x: 0 container(s)".into()],
            owners: vec![Verdict {
                container_id: "c1".into(),
                verdict: "dead",
                reason: "netns /run/netns/a gone".into(),
            }],
            actions: vec![Action {
                container_id: "c1".into(),
                kind: "release-ipam",
                what: "10.0.0.2 eth0 on n".into(),
                done: !dry_run && error.is_none(),
                error: error.map(String::from),
            }],
            damaged: Vec::new(),
        }
    }

    #[test]
    fn gc_text_says_would_did_and_failed() {
        let t = gc_text(&report(true, None));
        assert!(t.contains("source: runner state /x"), "{t}");
        assert!(
            t.contains("c1         dead     netns /run/netns/a gone"),
            "{t}"
        );
        assert!(
            t.contains("would release 10.0.0.2 eth0 on n (container c1)"),
            "{t}"
        );
        assert!(t.contains("dry run: nothing changed"), "{t}");
        let t = gc_text(&report(false, None));
        assert!(t.contains("did release 10.0.0.2"), "{t}");
        let r = report(false, Some("lock: EIO"));
        assert!(r.failed());
        let t = gc_text(&r);
        assert!(
            t.contains("FAILED to release 10.0.0.2 eth0 on n (container c1): lock: EIO"),
            "{t}"
        );
        let empty = GcReport::default();
        assert!(gc_text(&empty).contains("nothing to do"));
    }
}
