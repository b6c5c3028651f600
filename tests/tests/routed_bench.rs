//! Benchmark (not a timed test): routed-mode ADD and DEL medians of `plugnet` (+ in-process
//! plugnet-ipam) against Debian's Go `ptp` + `host-local` (the reference routed plugin), same
//! throwaway host namespace, same run, interleaved. Run in release mode:
//!   cargo build --release -p plugnet && \
//!   cargo test --release -p plugnet-tests --test routed_bench -- --ignored --nocapture
//! Env: PNQ_BENCH_ITERS (default 100).

mod bridge_support;

use std::path::Path;

use std::time::Duration;

use bridge_support::*;
use plugnet::netns::Netns;
use serde_json::{json, Value};

fn ranges(v4: &str, v6: Option<&str>) -> Value {
    let mut r = vec![json!([{ "subnet": v4 }])];
    if let Some(v6) = v6 {
        r.push(json!([{ "subnet": v6 }]));
    }
    Value::Array(r)
}

fn run(host: &Host, dual: bool, iters: usize) {
    let data = host.data_dir.path();
    let ours = json!({"cniVersion": "1.0.0", "name": "pnqbench", "type": "plugnet",
        "mode": "routed",
        "ipam": {"type": "plugnet-ipam", "dataDir": data,
                 "ranges": ranges("100.79.0.0/24", dual.then_some("fd11:79::/64"))}});
    let theirs = json!({"cniVersion": "1.0.0", "name": "pnqbenchgo", "type": "ptp",
        "ipam": {"type": "host-local", "dataDir": data,
                 "ranges": ranges("100.79.1.0/24", dual.then_some("fd11:79:1::/64"))}});
    let subjects = [
        ("plugnet routed + plugnet-ipam", plugnet(), ours),
        (
            "Go ptp + host-local",
            Path::new(REFERENCE_DIR).join("ptp"),
            theirs,
        ),
    ];
    let confs: Vec<Vec<u8>> = subjects
        .iter()
        .map(|s| serde_json::to_vec(&s.2).unwrap())
        .collect();
    let mut times: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); 2];
    let handle = Netns::open(host.ns.path()).unwrap();
    // One long-lived container per network: first-use costs are not per container.
    let anchors: Vec<Ns> = subjects.iter().map(|_| host.container()).collect();
    for ((s, c), a) in subjects.iter().zip(&confs).zip(&anchors) {
        handle
            .run(|| invoke_timed(&s.1, "ADD", c, "anchor", &a.path()))
            .unwrap();
    }
    for i in 0..iters {
        for (k, (s, c)) in subjects.iter().zip(&confs).enumerate() {
            let ctr = host.container();
            let id = format!("bench-{i}");
            let path = ctr.path();
            let (a, d) = handle
                .run(|| {
                    let a = invoke_timed(&s.1, "ADD", c, &id, &path);
                    let d = invoke_timed(&s.1, "DEL", c, &id, &path);
                    (a, d)
                })
                .unwrap();
            times[k].0.push(a);
            times[k].1.push(d);
        }
    }
    for ((s, c), a) in subjects.iter().zip(&confs).zip(&anchors) {
        handle
            .run(|| invoke_timed(&s.1, "DEL", c, "anchor", &a.path()))
            .unwrap();
    }
    let tag = if dual { "dual-stack" } else { "IPv4" };
    println!("routed {tag}, {iters} iterations, medians:");
    let m: Vec<(f64, f64)> = times
        .iter()
        .map(|(a, d)| (median_ms(a.clone()), median_ms(d.clone())))
        .collect();
    for (s, (a, d)) in subjects.iter().zip(&m) {
        println!("  {:<30} ADD {a:7.2} ms   DEL {d:7.2} ms", s.0);
    }
    println!(
        "  ratio plugnet/ptp              ADD {:7.3}      DEL {:7.3}",
        m[0].0 / m[1].0,
        m[0].1 / m[1].1
    );
}

#[test]
#[ignore = "benchmark: run explicitly in release mode"]
fn bench_routed_add_del_against_reference_ptp() {
    let iters = std::env::var("PNQ_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let host = Host::with_prefix("pnq", "bench");
    run(&host, false, iters);
    run(&host, true, iters);
}
