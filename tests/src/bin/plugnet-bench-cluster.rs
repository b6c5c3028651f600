//! plugnet-bench-cluster: the figures of cluster networks (issue 18), paired within one run.
//!
//! - ADD latency, cluster network vs the same ADD on a local network: the plugnet bridge
//!   plugin (a container namespace each) and plugnet-ipam alone, interleaved call by call;
//! - etcd writes per 1,000 containers on one host (the store revision counts every write);
//! - block claims per host when three hosts share 3,000 containers;
//! - plugnet-agent's resident memory when idle, serving one network.
//!
//! Usage: plugnet-bench-cluster [--quick] [--json FILE]; needs root, etcd-server, and
//! plugnet-agent beside the plugins (PLUGNET_BIN_DIR).

use plugnet_tests::cluster::{host, Topology, World, WorldOptions};
use plugnet_tests::{bin, median, p95, Netns};
use serde_json::{json, Value};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One timed plugin run (spawn to exit) from the calling thread's namespace.
fn timed(plugin: &str, env: &[(&str, &str)], conf: &Value) -> (f64, String) {
    let start = Instant::now();
    let mut child = Command::new(bin(plugin))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let failed = if out.status.success() {
        String::new()
    } else {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    (ms, failed)
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned());
    let n_add = if quick { 60 } else { 300 };
    let w = World::new(WorldOptions {
        prefix: "pnk",
        topology: Topology::OneSegment,
        hosts: 3,
        etcd_members: 3,
        agent_args: vec!["--lease-ttl".into(), "10s".into()],
        ..WorldOptions::default()
    });
    let net = "pnm-bench";
    w.cli_ok(&["network", "create", net, "--subnet", "10.240.0.0/14"]);
    let h0 = &w.hosts[0];
    let agent_dir = h0.agent_dir();
    let data = tempfile::tempdir().unwrap();
    let cni_path = bin("plugnet").parent().unwrap().display().to_string();

    // 1. ADD latency: bridge plugin and plugnet-ipam, cluster vs local, interleaved.
    let bridge = |cluster: bool, br: &str| -> Value {
        let ipam = if cluster {
            json!({"type": "plugnet-ipam", "cluster": net, "agentDir": agent_dir})
        } else {
            json!({"type": "plugnet-ipam", "dataDir": data.path(), "ranges": [[{"subnet": "10.250.0.0/16"}]]})
        };
        json!({"cniVersion": "1.0.0", "name": if cluster { "pnm-c" } else { "pnm-l" },
               "type": "plugnet", "bridge": br, "isGateway": true, "ipam": ipam})
    };
    let (conf_c, conf_l) = (bridge(true, "pnmc0"), bridge(false, "pnml0"));
    // Warm-up: the first cluster ADD on a host activates the network (one etcd round trip).
    // One CNI network per cluster network and host: the bridge's name, also for IPAM alone.
    let ipam_c = json!({"cniVersion": "1.0.0", "name": "pnm-c",
        "ipam": {"type": "plugnet-ipam", "cluster": net, "agentDir": agent_dir}});
    let ipam_l = json!({"cniVersion": "1.0.0", "name": "pnm-il",
        "ipam": {"type": "plugnet-ipam", "dataDir": data.path(), "ranges": [[{"subnet": "10.251.0.0/16"}]]}});
    host::ipam("ADD", "warm", &ipam_c).ok();
    host::ipam("DEL", "warm", &ipam_c).ok();
    let host_ns = h0.node.ns.name.clone();
    let (mut b_c, mut b_l, mut i_c, mut i_l) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&host_ns);
            let ctrs: Vec<Netns> = (0..n_add * 2).map(|_| Netns::new("pnk-ctr")).collect();
            for i in 0..n_add {
                for (k, (conf, out)) in [(&conf_c, &mut b_c), (&conf_l, &mut b_l)]
                    .into_iter()
                    .enumerate()
                {
                    let ns = ctrs[i * 2 + k].path();
                    let id = format!("pnm-b{i}-{k}");
                    let env = [
                        ("CNI_COMMAND", "ADD"),
                        ("CNI_CONTAINERID", id.as_str()),
                        ("CNI_NETNS", ns.as_str()),
                        ("CNI_IFNAME", "eth0"),
                        ("CNI_PATH", cni_path.as_str()),
                    ];
                    let (ms, failed) = timed("plugnet", &env, conf);
                    assert!(failed.is_empty(), "bridge ADD failed: {failed}");
                    out.push(ms);
                }
                for (conf, out) in [(&ipam_c, &mut i_c), (&ipam_l, &mut i_l)] {
                    let id = format!("pnm-i{i}");
                    let env = [
                        ("CNI_COMMAND", "ADD"),
                        ("CNI_CONTAINERID", id.as_str()),
                        ("CNI_NETNS", "/proc/self/ns/net"),
                        ("CNI_IFNAME", "eth0"),
                        ("CNI_PATH", cni_path.as_str()),
                    ];
                    let (ms, failed) = timed("plugnet-ipam", &env, conf);
                    assert!(failed.is_empty(), "ipam ADD failed: {failed}");
                    out.push(ms);
                }
            }
            for i in 0..n_add {
                for (k, conf) in [&conf_c, &conf_l].into_iter().enumerate() {
                    let ns = ctrs[i * 2 + k].path();
                    let id = format!("pnm-b{i}-{k}");
                    let env = [
                        ("CNI_COMMAND", "DEL"),
                        ("CNI_CONTAINERID", id.as_str()),
                        ("CNI_NETNS", ns.as_str()),
                        ("CNI_IFNAME", "eth0"),
                        ("CNI_PATH", cni_path.as_str()),
                    ];
                    timed("plugnet", &env, conf);
                }
                for conf in [&ipam_c, &ipam_l] {
                    host::ipam("DEL", &format!("pnm-i{i}"), conf).ok();
                }
            }
            let _ = Command::new("ip").args(["link", "del", "pnmc0"]).status();
            let _ = Command::new("ip").args(["link", "del", "pnml0"]).status();
        });
    });
    let (bc, bl, ic, il) = (
        median(&mut b_c),
        median(&mut b_l),
        median(&mut i_c),
        median(&mut i_l),
    );

    // 2. etcd writes per 1,000 containers on one host, 3. claims per host with three hosts.
    let per_host = if quick { 300 } else { 1000 };
    let rev0 = w.etcd.revision();
    let add_on = |h: usize, tag: &str, n: usize| {
        let conf = w.hosts[h].ipam_conf("pnm-c", net, "1.0.0");
        std::thread::scope(|s| {
            for t in 0..4 {
                let conf = conf.clone();
                s.spawn(move || {
                    for i in (t..n).step_by(4) {
                        host::ipam("ADD", &format!("{tag}{i}"), &conf).ok();
                    }
                });
            }
        });
    };
    add_on(1, "w", per_host);
    let writes = w.etcd.revision() - rev0;
    let writes_per_1000 = writes as f64 * 1000.0 / per_host as f64;
    add_on(0, "x", per_host);
    add_on(2, "y", per_host);
    let blocks = w.cli_ok(&["blocks", "--network", net]);
    let mut claims = serde_json::Map::new();
    for h in &w.hosts {
        let n = blocks
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["host"] == h.name.as_str())
            .count();
        claims.insert(h.name.clone(), json!(n));
    }

    // 4. Idle RSS of an agent serving the network (after a few idle seconds).
    std::thread::sleep(std::time::Duration::from_secs(3));
    // `ip netns exec` execs the agent: the child's pid is the agent's.
    let pid = w.hosts[0].agent_pid();
    let rss_kb: u64 = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);

    let report = json!({
        "iterations": n_add,
        "bridge_add_ms": {"cluster": bc, "local": bl, "ratio": bc / bl,
                           "cluster_p95": p95(&mut b_c), "local_p95": p95(&mut b_l)},
        "ipam_add_ms": {"cluster": ic, "local": il, "ratio": ic / il},
        "etcd_writes_per_1000": writes_per_1000,
        "containers_per_host": per_host,
        "block_claims_per_host": claims,
        "agent_idle_rss_kb": rss_kb,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!(
        "| ADD, plugnet bridge (median) | cluster {bc:.2} ms | local {bl:.2} ms | {:.3}× (target ≤ 1.05×) |",
        bc / bl
    );
    println!(
        "| ADD, plugnet-ipam alone (median) | cluster {ic:.2} ms | local {il:.2} ms | {:.3}× |",
        ic / il
    );
    println!("| etcd writes per 1,000 containers (/26) | {writes_per_1000:.1} | target ≤ 20 |");
    println!(
        "| block claims per host ({per_host} containers each) | {} |",
        Value::Object(claims)
    );
    println!(
        "| plugnet-agent idle RSS | {:.1} MB | target ≤ 15 MB |",
        rss_kb as f64 / 1024.0
    );
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    }
    drop(w);
}
