//! Benchmark (not a timed test): ADD and DEL medians of `plugnet` (+ in-process plugnet-ipam)
//! against Debian's Go `bridge` + `host-local`, same configuration, same throwaway host
//! namespace, interleaved. Run in release mode:
//!   cargo build --release -p plugnet && \
//!   cargo test --release -p plugnet-tests --test bridge_bench -- --ignored --nocapture
//! Env: PNB_BENCH_ITERS (default 100); PNB_BENCH_DATADIR puts both IPAM stores in that
//! directory (e.g. /dev/shm to take the disk's fsync cost out of the comparison);
//! PNB_BENCH_MASQ=1 turns on `ipMasq` for both plugins.

mod bridge_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bridge_support::*;
use plugnet::netns::Netns;
use serde_json::{json, Value};

struct Subject {
    label: &'static str,
    bin: PathBuf,
    conf: Vec<u8>,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn subject(label: &'static str, bin: PathBuf, conf: Value) -> Subject {
    Subject {
        label,
        bin,
        conf: serde_json::to_vec(&conf).unwrap(),
        add: Vec::new(),
        del: Vec::new(),
    }
}

fn run(host: &Host, dual: bool, iters: usize) {
    let tag = if dual { "dual-stack" } else { "IPv4" };
    let store = std::env::var("PNB_BENCH_DATADIR").unwrap_or_else(|_| "/tmp".into());
    let mut ours = conf(host, "1.0.0", "pnbbench", "pnbbrx", 60, dual);
    ours["isGateway"] = json!(true);
    let mut theirs = ours.clone();
    theirs["type"] = json!("bridge");
    theirs["name"] = json!("pnbbenchgo");
    theirs["bridge"] = json!("pnbbry");
    theirs["ipam"]["type"] = json!("host-local");
    theirs["ipam"]["ranges"][0][0]["subnet"] = json!("10.50.61.0/24");
    if dual {
        theirs["ipam"]["ranges"][1][0]["subnet"] = json!("fd50:61::/64");
    }
    let fw_state = tempfile::Builder::new()
        .prefix("pnb-bench-fw-")
        .tempdir()
        .unwrap();
    let masq = std::env::var("PNB_BENCH_MASQ").is_ok_and(|v| v == "1");
    if masq {
        ours["ipMasq"] = json!(true);
        ours["firewallStateDir"] = json!(fw_state.path());
        theirs["ipMasq"] = json!(true);
    }
    if let Ok(dir) = std::env::var("PNB_BENCH_DATADIR") {
        let dir = Path::new(&dir).join(format!("pnb-bench-{}", std::process::id()));
        ours["ipam"]["dataDir"] = json!(dir);
        theirs["ipam"]["dataDir"] = json!(dir);
    }
    let mut subjects = [
        subject("plugnet + plugnet-ipam", plugnet(), ours),
        subject(
            "Go bridge + host-local",
            Path::new(REFERENCE_DIR).join("bridge"),
            theirs,
        ),
    ];
    let handle = Netns::open(host.ns.path()).unwrap();
    // One long-lived container per network, as on a real host: first-use costs (bridge
    // creation, the firewall's per-bridge setup) are not what a runtime pays per container.
    let anchors: Vec<Ns> = subjects.iter().map(|_| host.container()).collect();
    for (s, a) in subjects.iter().zip(&anchors) {
        handle
            .run(|| invoke_timed(&s.bin, "ADD", &s.conf, "anchor", &a.path()))
            .unwrap();
    }
    for i in 0..iters {
        for s in subjects.iter_mut() {
            let ctr = host.container();
            let id = format!("bench-{i}");
            let path = ctr.path();
            let (a, d) = handle
                .run(|| {
                    let a = invoke_timed(&s.bin, "ADD", &s.conf, &id, &path);
                    let d = invoke_timed(&s.bin, "DEL", &s.conf, &id, &path);
                    (a, d)
                })
                .unwrap();
            s.add.push(a);
            s.del.push(d);
        }
    }
    for (s, a) in subjects.iter().zip(&anchors) {
        handle
            .run(|| invoke_timed(&s.bin, "DEL", &s.conf, "anchor", &a.path()))
            .unwrap();
    }
    let [ours, theirs] = &subjects;
    let (oa, od) = (median_ms(ours.add.clone()), median_ms(ours.del.clone()));
    let (ta, td) = (median_ms(theirs.add.clone()), median_ms(theirs.del.clone()));
    let masq_tag = if masq { ", ipMasq" } else { "" };
    println!("{tag}{masq_tag}, IPAM stores under {store}, {iters} iterations, medians:");
    println!("  {:<24} ADD {oa:7.2} ms   DEL {od:7.2} ms", ours.label);
    println!("  {:<24} ADD {ta:7.2} ms   DEL {td:7.2} ms", theirs.label);
    println!(
        "  ratio plugnet/Go          ADD {:7.3}      DEL {:7.3}",
        oa / ta,
        od / td
    );
}

/// 64 ADDs at once (then 64 DELs), each in its own container: ADDs per second, and the peak
/// RSS of one ADD (`/usr/bin/time -f %M`).
fn concurrent(host: &Host, label: &str, bin: &Path, conf: &Value, n: usize) -> (f64, u64) {
    let ctrs: Vec<Ns> = (0..n).map(|_| host.container()).collect();
    let conf_bytes = serde_json::to_vec(conf).unwrap();
    let handle = Netns::open(host.ns.path()).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, c) in ctrs.iter().enumerate() {
            let (handle, conf_bytes, path) = (&handle, &conf_bytes, c.path());
            s.spawn(move || {
                handle
                    .run(|| invoke_timed(bin, "ADD", conf_bytes, &format!("conc-{i}"), &path))
                    .unwrap()
            });
        }
    });
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let ctr = host.container();
    let rss = handle
        .run(|| {
            let mut time = Command::new("/usr/bin/time");
            time.args(["-f", "%M"]).arg(bin);
            let mut child = cni_env(&mut time, "ADD", "rss", &ctr.path())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&conf_bytes).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{label} ADD under time: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            err.lines()
                .last()
                .unwrap_or("0")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .unwrap();
    for (i, c) in ctrs
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("conc-{i}"), c))
        .chain([("rss".to_string(), &ctr)])
    {
        handle
            .run(|| invoke_timed(bin, "DEL", &conf_bytes, &i, &c.path()))
            .unwrap();
    }
    (rate, rss)
}

fn run_concurrent(host: &Host) {
    let mut ours = conf(host, "1.0.0", "pnbconcb", "pnbbrz", 62, false);
    ours["isGateway"] = json!(true);
    let mut theirs = ours.clone();
    theirs["type"] = json!("bridge");
    theirs["name"] = json!("pnbconcgo");
    theirs["bridge"] = json!("pnbbrw");
    theirs["ipam"]["type"] = json!("host-local");
    theirs["ipam"]["ranges"][0][0]["subnet"] = json!("10.50.63.0/24");
    let (or, om) = concurrent(host, "plugnet", &plugnet(), &ours, 64);
    let (tr, tm) = concurrent(
        host,
        "Go bridge",
        &Path::new(REFERENCE_DIR).join("bridge"),
        &theirs,
        64,
    );
    println!("64-way concurrent ADD (IPAM stores under /tmp):");
    println!("  plugnet + plugnet-ipam   {or:7.1} ADD/s   peak RSS of one ADD {om} KiB");
    println!("  Go bridge + host-local   {tr:7.1} ADD/s   peak RSS of one ADD {tm} KiB");
    println!(
        "  ratio plugnet/Go         throughput {:5.2}x   RSS {:5.2}",
        or / tr,
        om as f64 / tm as f64
    );
}

#[test]
#[ignore = "benchmark: run explicitly in release mode"]
fn bench_add_del_against_reference_bridge() {
    let iters = std::env::var("PNB_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let host = Host::new("bench");
    run(&host, false, iters);
    run(&host, true, iters);
    run_concurrent(&host);
    if let Ok(dir) = std::env::var("PNB_BENCH_DATADIR") {
        let _ = std::fs::remove_dir_all(
            Path::new(&dir).join(format!("pnb-bench-{}", std::process::id())),
        );
    }
}
