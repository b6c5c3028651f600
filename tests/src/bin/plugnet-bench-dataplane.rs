//! plugnet-bench-dataplane: the cluster data plane's figures (issue 22), paired within one run,
//! for host-gw (one L2 segment) and VXLAN (two L3 subnets behind a router namespace):
//!
//! - route convergence: a block written to etcd as held by host A → its route on host B
//!   (from just before the etcd write is started to the route seen; median and p95);
//! - TCP throughput (iperf3, 3 s runs, alternating): container → container on the same host
//!   vs on another host, and their ratio;
//! - ping RTT: same host vs another host.
//!
//! Usage: plugnet-bench-dataplane [--quick] [--json FILE]; needs root, etcd-server, iperf3,
//! plugnet-agent beside the plugins (PLUGNET_BIN_DIR). Namespaces `pndb…`, addresses of
//! 10.173.0.0/16 and fd00:173::/32.

use plugnet_tests::cluster::{Topology, World, WorldOptions};
use plugnet_tests::{median, p95, Netns};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Ctr {
    ns: Netns,
    v4: String,
}

fn add(w: &World, h: usize, net: &str, id: &str) -> Ctr {
    let ns = Netns::new("pndbc");
    let conf = json!({"cniVersion": "1.0.0", "name": format!("{net}-cni"), "type": "plugnet",
        "bridge": "pndbr0", "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "plugnet-ipam", "cluster": net, "agentDir": w.hosts[h].agent_dir()},
        "firewallStateDir": w.hosts[h].agent_dir().with_file_name("firewall")});
    let r = w.hosts[h].bridge("ADD", id, &ns.path(), &conf);
    assert_eq!(r.code, 0, "ADD {id}: {} {}", r.stdout, r.stderr);
    let res = r.json();
    let v4 = res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string();
    Ctr { ns, v4 }
}

fn iperf(from: &Ctr, to: &Ctr) -> f64 {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &to.ns.name,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &to.v4,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let mut out = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &from.ns.name,
                "iperf3",
                "-J",
                "-t",
                "3",
                "-c",
                &to.v4,
            ])
            .output()
            .expect("iperf3 -c");
        if o.status.success() {
            out = Some(o);
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.expect("iperf3 ran").stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

fn rtt_ms(from: &Ctr, to: &Ctr, n: usize) -> f64 {
    let out = from.ns.exec(&format!("ping -q -c {n} -i 0.05 {}", to.v4));
    // rtt min/avg/max/mdev = 0.041/0.060/0.101/0.012 ms
    out.lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn run(mode: &str, topology: Topology, prefix: &'static str, quick: bool) -> Value {
    let w = World::new(WorldOptions {
        prefix,
        topology,
        hosts: 2,
        etcd_members: 3,
        agent_args: ["--lease-ttl", "10s", "--metrics-listen", "off"]
            .map(String::from)
            .to_vec(),
        underlay_base: (10, 173, 200),
    });
    let net = format!("{prefix}n");
    w.cli_ok(&[
        "network",
        "create",
        &net,
        "--subnet",
        "10.173.0.0/17",
        "--mode",
        mode,
    ]);
    let a = add(&w, 0, &net, "pnd-ba");
    let b = add(&w, 0, &net, "pnd-bb");
    let c = add(&w, 1, &net, "pnd-bc");
    w.wait(Duration::from_secs(20), "cross-host ping", || {
        a.ns.exec_ok(&format!("ping -c 1 -W 1 {}", c.v4))
            .then_some(())
    });

    // Route convergence: a block held by host 0 written to etcd → its route on host 1.
    let id0 = w.hosts[0].status()["id"].as_str().unwrap().to_string();
    let rounds = if quick { 5 } else { 20 };
    let mut conv = Vec::new();
    for i in 0..rounds {
        let block = format!("10.173.{}.0/26", 100 + i);
        let key = format!("/plugnet/v1/blocks/{net}/10.173.{}.0-26", 100 + i);
        let value = json!({"state": "held", "host": w.hosts[0].name, "hostId": id0,
                           "claimedUnix": 0})
        .to_string();
        let start = Instant::now();
        w.etcd.ctl(&["put", &key, &value]).expect("etcdctl put");
        loop {
            let r = w.hosts[1]
                .node
                .ns
                .exec(&format!("ip route show {block} proto 112"));
            if !r.trim().is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no route to {block}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        conv.push(start.elapsed().as_secs_f64() * 1000.0);
        w.etcd.ctl(&["del", &key]).expect("etcdctl del");
    }

    // Throughput and RTT, alternating same-host and cross-host.
    let pairs = if quick { 1 } else { 3 };
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        same.push(iperf(&a, &b));
        cross.push(iperf(&a, &c));
    }
    let n = if quick { 20 } else { 100 };
    let (rtt_same, rtt_cross) = (rtt_ms(&a, &b, n), rtt_ms(&a, &c, n));
    let (s, x) = (median(&mut same), median(&mut cross));
    let mtu = c.ns.exec("cat /sys/class/net/eth0/mtu").trim().to_string();
    json!({
        "mode": mode,
        "containerMtu": mtu,
        "convergenceMs": {"median": median(&mut conv.clone()), "p95": p95(&mut conv), "rounds": rounds},
        "iperf3Gbps": {"sameHost": s, "crossHost": x, "ratio": x / s, "runs": pairs},
        "pingRttMs": {"sameHost": rtt_same, "crossHost": rtt_cross, "count": n},
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned());
    let results = vec![
        run("host-gw", Topology::OneSegment, "pndbg", quick),
        run("vxlan", Topology::TwoSubnets, "pndbv", quick),
    ];
    for r in &results {
        println!(
            "{:8} MTU {:>5}  convergence median {:6.1} ms (p95 {:6.1})  iperf3 same {:6.2} Gb/s cross {:6.2} Gb/s ratio {:.2}  RTT same {:.3} ms cross {:.3} ms",
            r["mode"].as_str().unwrap(),
            r["containerMtu"].as_str().unwrap_or("?"),
            r["convergenceMs"]["median"].as_f64().unwrap_or(f64::NAN),
            r["convergenceMs"]["p95"].as_f64().unwrap_or(f64::NAN),
            r["iperf3Gbps"]["sameHost"].as_f64().unwrap_or(f64::NAN),
            r["iperf3Gbps"]["crossHost"].as_f64().unwrap_or(f64::NAN),
            r["iperf3Gbps"]["ratio"].as_f64().unwrap_or(f64::NAN),
            r["pingRttMs"]["sameHost"].as_f64().unwrap_or(f64::NAN),
            r["pingRttMs"]["crossHost"].as_f64().unwrap_or(f64::NAN),
        );
    }
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json!(results)).unwrap()).unwrap();
    }
}
