//! plugnet-bench: the CNI-level half of `scripts/bench.sh` — sequential ADD/CHECK/DEL latency,
//! dual-stack ADD, peak RSS, netavark setup/teardown, 1..64-way concurrency and port-mapping
//! scale, plugnet against Debian's Go plugins and podman's netavark, interleaved in one run.
//! Writes every sample to one JSON file; `scripts/bench-report.py` turns it into the table,
//! the target lines and the charts.
//!
//! Usage: plugnet-bench [--quick] [--iterations N] [--rounds N] [--portmap-n N]
//!                      [--sections latency,concurrency,portmap] [--store DIR]
//!                      [--baseline DIR] --out FILE
//! `--baseline DIR`: another build of the plugins (`plugnet`, `plugnet-ipam`) in DIR, run as
//! subject `plugnet_base` in the same rounds as this one (an A/B of two builds).
//! A peer that cannot be run (not installed) is named under `missing` with the reason.
//! Needs root. Every object it makes lives in throwaway namespaces named `pnm-*`.

mod exec;
mod latency;
mod portmap;
mod subjects;

use std::path::{Path, PathBuf};

use plugnet_tests::Netns;
use serde_json::{json, Value};

use exec::{bin_dir, enter_netns};

/// Calls per subject in the peak-RSS pass (the figure barely moves between calls).
const RSS_ITERATIONS: usize = 10;
use latency::{concurrent_round, sequential, Seat};
use subjects::{bridge_conf, netavark_opts, Driver, Net, Subject};

const NETAVARK: &str = "/usr/lib/podman/netavark";

struct Args {
    iterations: usize,
    rounds: usize,
    portmap_n: usize,
    portmap_iterations: usize,
    sections: Vec<String>,
    out: PathBuf,
    /// Where the IPAM stores and firewall state live (ext4 `/var/tmp` by default).
    store: PathBuf,
    /// Another build of the plugins to run beside this one (`plugnet_base`).
    baseline: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let get = |flag: &str| -> Result<Option<usize>, String> {
        match argv.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) => argv
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("{flag} wants a number")),
        }
    };
    let sections = match argv.iter().position(|a| a == "--sections") {
        Some(i) => argv.get(i + 1).ok_or("--sections wants a list")?.clone(),
        None => "latency,concurrency,portmap".into(),
    };
    let out = match argv.iter().position(|a| a == "--out") {
        Some(i) => PathBuf::from(argv.get(i + 1).ok_or("--out wants a path")?),
        None => return Err("usage: plugnet-bench [--quick] ... --out FILE".into()),
    };
    Ok(Args {
        iterations: get("--iterations")?.unwrap_or(if quick { 30 } else { 200 }),
        rounds: get("--rounds")?.unwrap_or(if quick { 2 } else { 5 }),
        portmap_n: get("--portmap-n")?.unwrap_or(if quick { 100 } else { 500 }),
        portmap_iterations: if quick { 15 } else { 41 },
        sections: sections.split(',').map(String::from).collect(),
        out,
        store: match argv.iter().position(|a| a == "--store") {
            Some(i) => PathBuf::from(argv.get(i + 1).ok_or("--store wants a directory")?),
            None => PathBuf::from("/var/tmp"),
        },
        baseline: match argv.iter().position(|a| a == "--baseline") {
            Some(i) => Some(PathBuf::from(
                argv.get(i + 1).ok_or("--baseline wants a directory")?,
            )),
            None => None,
        },
    })
}

fn loadavg() -> Value {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Counts what is left of a network after its attachments were deleted: host ports on the
/// bridge and leases in the IPAM store, each beyond the one anchor container.
fn leftovers(host: &Netns, bridge: &str, store: &Path, plugnet: bool) -> Result<(), String> {
    let ports = plugnet_tests::sh(&format!("ip -n {} -o link show master {bridge}", host.name))
        .lines()
        .count();
    let leases = if plugnet {
        std::fs::read_dir(store.join("ip")).map(|d| d.count())
    } else {
        std::fs::read_dir(store).map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
                })
                .count()
        })
    }
    .map_err(|e| format!("read IPAM store {}: {e}", store.display()))?;
    if ports != 1 || leases != 1 {
        return Err(format!(
            "left behind on {bridge}: {ports} ports, {leases} leases (1 anchor expected)"
        ));
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("plugnet-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let bins = bin_dir();
    let plugnet_bin = bins.join("plugnet");
    if !plugnet_bin.is_file() {
        return Err(format!("{} not built", plugnet_bin.display()));
    }
    let cni_path = format!("{}:{}", bins.display(), plugnet_tests::REFERENCE_PLUGINS);
    let root = tempfile::Builder::new()
        .prefix("pnm-bench-")
        .tempdir_in(&args.store)
        .map_err(|e| format!("temp dir: {e}"))?;
    let mut report = json!({
        "meta": {"load_before": loadavg(), "plugnet_bin": plugnet_bin,
                 "store": root.path(), "iterations": args.iterations,
                 "rounds": args.rounds},
        "missing": {},
    });
    if let Some(b) = &args.baseline {
        if !b.join("plugnet").is_file() {
            return Err(format!("--baseline {}: no plugnet there", b.display()));
        }
        report["meta"]["baseline_bin"] = json!(b.join("plugnet"));
    }
    let has = |s: &str| args.sections.iter().any(|x| x == s);
    if has("latency") || has("concurrency") {
        let host = Netns::new("pnm-h");
        enter_netns(&host.path())?;
        let dir = |n: &str| root.path().join(n);
        let fw = root.path().join("fw");
        let mk = |key: &str, name: &str, bridge: &str, v4: &str, v6: Option<&str>| {
            let reference = key.starts_with("go");
            let bin = match (&args.baseline, key) {
                (Some(b), "plugnet_base") => b.join("plugnet"),
                _ => plugnet_bin.clone(),
            };
            let net = Net {
                name,
                bridge,
                v4,
                v6,
                data_dir: &dir("ipam"),
                fw_dir: &fw,
            };
            Subject {
                key: key.into(),
                driver: Driver::Cni {
                    bin: if reference {
                        Path::new(plugnet_tests::REFERENCE_PLUGINS).join("bridge")
                    } else {
                        bin
                    },
                    portmap: false,
                },
                conf: bridge_conf(&net, reference),
                cni_path: cni_path.clone(),
            }
        };
        let pn = mk("plugnet", "pnm-pn", "pnmb1", "10.125.1.0/24", None);
        let go = mk("go", "pnm-go", "pnmb2", "10.125.2.0/24", None);
        let pn6 = mk(
            "plugnet_dual",
            "pnm-pnd",
            "pnmb3",
            "10.125.3.0/24",
            Some("fd12:3::/64"),
        );
        let go6 = mk(
            "go_dual",
            "pnm-god",
            "pnmb4",
            "10.125.4.0/24",
            Some("fd12:4::/64"),
        );
        let mut pnm = mk("plugnet_masq", "pnm-pnm", "pnmb6", "10.125.6.0/24", None);
        pnm.conf["ipMasq"] = json!(true);
        let nv_net = Net {
            name: "pnm-nv",
            bridge: "pnmnv0",
            v4: "10.125.5.0/24",
            v6: None,
            data_dir: &dir("nv"),
            fw_dir: &fw,
        };
        let base = args
            .baseline
            .as_ref()
            .map(|_| mk("plugnet_base", "pnm-pnb", "pnmb7", "10.125.8.0/24", None));
        if !Path::new(NETAVARK).is_file() {
            report["missing"]["netavark"] = json!(format!(
                "{NETAVARK} is not installed (Debian package netavark; scripts/bench.sh \
                 installs it)"
            ));
        }
        let nv = Path::new(NETAVARK).is_file().then(|| Subject {
            key: "netavark".into(),
            driver: Driver::Netavark {
                bin: NETAVARK.into(),
                config_dir: dir("nv"),
            },
            conf: netavark_opts(&nv_net, "pnm-anchor", "10.125.5.2"),
            cni_path: String::new(),
        });
        std::fs::create_dir_all(dir("nv")).map_err(|e| format!("mkdir: {e}"))?;
        let mut subs: Vec<&Subject> = vec![&pn, &go, &pn6, &go6, &pnm];
        subs.extend(nv.as_ref());
        subs.extend(base.as_ref());
        // One long-lived container per network: the bridge exists, as on a live host.
        let anchors: Vec<Netns> = subs.iter().map(|_| Netns::new("pnm-a")).collect();
        let mut attached = Vec::new();
        for (s, a) in subs.iter().zip(&anchors) {
            attached.push(
                s.add(
                    &format!("pnm-anchor-{}", s.key),
                    &a.path(),
                    "eth0",
                    &Value::Null,
                    "10.125.5.2",
                )?
                .0,
            );
        }
        let result = (|| -> Result<(), String> {
            if has("latency") {
                let seats: Vec<Netns> = subs.iter().map(|_| Netns::new("pnm-s")).collect();
                let mk_seats = |keys: &[&str]| -> Vec<Seat> {
                    subs.iter()
                        .zip(&seats)
                        .filter(|(s, _)| keys.contains(&s.key.as_str()))
                        .map(|(s, n)| Seat {
                            subject: s,
                            netns: n.path(),
                            ip: "10.125.5.3".into(),
                        })
                        .collect()
                };
                // Single- and dual-stack, plugnet and Go (and a baseline build), with the kernel
                // floor of DEL on a bridge of its own (pnmbfl), all in the same rounds: every
                // ratio the targets name is paired.
                eprintln!(
                    "latency: ADD/CHECK/DEL x{} (plugnet, Go; single- and dual-stack{})",
                    args.iterations,
                    if base.is_some() { "; baseline" } else { "" }
                );
                let floor_ns = Netns::new("pnm-f");
                plugnet_tests::sh("ip link add pnmbfl type bridge && ip link set pnmbfl up");
                let main = sequential(
                    &mk_seats(&["plugnet", "go", "plugnet_dual", "go_dual", "plugnet_base"]),
                    args.iterations,
                    true,
                    Some(("pnmbfl", &floor_ns.name)),
                );
                let _ = plugnet_tests::sh_ok("ip link del pnmfloor0; ip link del pnmbfl");
                let main = main?;
                eprintln!("latency: ipMasq, netavark x{}", args.iterations / 2);
                let peers = sequential(
                    &mk_seats(&["plugnet_masq", "netavark"]),
                    (args.iterations / 2).max(10),
                    false,
                    None,
                )?;
                // Peak RSS from a pass of its own under /usr/bin/time (see RSS_VIA_TIME).
                eprintln!("latency: peak RSS under /usr/bin/time x{}", RSS_ITERATIONS);
                exec::RSS_VIA_TIME.store(true, std::sync::atomic::Ordering::Relaxed);
                let rss = sequential(
                    &mk_seats(&["plugnet", "go", "netavark"]),
                    RSS_ITERATIONS,
                    true,
                    None,
                );
                exec::RSS_VIA_TIME.store(false, std::sync::atomic::Ordering::Relaxed);
                let rss = rss?;
                let mut m = main.to_json();
                for (k, v) in peers.ms {
                    m["ms"][k] = json!(v);
                }
                m["rss_kb"] = json!({});
                for (k, v) in rss.rss_kb {
                    m["rss_kb"][k] = json!(v);
                }
                for (k, v) in peers.cpu_ms {
                    m["cpu_ms"][k] = json!(v);
                }
                report["latency"] = m;
            }
            if has("concurrency") {
                let pools: Vec<Vec<Netns>> = [0, 1]
                    .iter()
                    .map(|_| (0..64).map(|_| Netns::new("pnm-c")).collect())
                    .collect();
                let mut rounds = Vec::new();
                for level in [1usize, 4, 16, 64] {
                    eprintln!("concurrency: {level} x{} rounds", args.rounds);
                    for r in 0..args.rounds {
                        for k in 0..2 {
                            let i = (r + k) % 2;
                            let (sub, bridge, store) = if i == 0 {
                                (&pn, "pnmb1", dir("ipam").join("pnm-pn"))
                            } else {
                                (&go, "pnmb2", dir("ipam").join("pnm-go"))
                            };
                            let ctrs: Vec<String> = pools[i].iter().map(Netns::path).collect();
                            let check = || leftovers(&host, bridge, &store, i == 0);
                            let rd = concurrent_round(sub, &host.path(), &ctrs, level, r, &check)?;
                            rounds.push(json!({"subject": sub.key, "level": level,
                                "add_ms": rd.add_ms, "del_ms": rd.del_ms, "verified": true}));
                        }
                    }
                }
                report["concurrency"] = json!({"rounds": rounds});
            }
            Ok(())
        })();
        for (s, a) in subs.iter().zip(&attached) {
            if let Err(e) = s.del(a) {
                eprintln!("anchor DEL of {}: {e}", s.key);
            }
        }
        result?;
    }
    if has("portmap") {
        eprintln!(
            "port mappings: 0 vs {} port-mapped containers x{}",
            args.portmap_n, args.portmap_iterations
        );
        report["portmap"] = portmap::run(&portmap::Options {
            root: root.path(),
            plugnet_bin: &plugnet_bin,
            cni_path: &cni_path,
            n: args.portmap_n,
            iterations: args.portmap_iterations,
        })?;
    }
    report["meta"]["load_after"] = loadavg();
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report).unwrap())
        .map_err(|e| format!("write {}: {e}", args.out.display()))?;
    Ok(())
}
