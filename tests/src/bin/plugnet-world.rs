//! plugnet-world: a cluster world (tests/src/cluster) held for a shell test: underlay
//! namespaces, a three-member etcd, N hosts with their agents, and a cluster network. Prints
//! one JSON line describing it, then holds it until its stdin closes (the script's end, or its
//! death), and takes everything down.
//!
//! `plugnet-world PREFIX HOSTS A.B.C NETWORK SUBNET[,SUBNET…] MODE` (e.g. `pnx 2 10.174.200
//! pnxn 10.174.0.0/18,fd00:174::/64 host-gw`); run as root.
use plugnet_tests::cluster::{Topology, World, WorldOptions};
use serde_json::json;
use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 6 {
        eprintln!("usage: plugnet-world PREFIX HOSTS A.B.C NETWORK SUBNET host-gw|vxlan");
        std::process::exit(2);
    }
    let prefix: &'static str = Box::leak(args[0].clone().into_boxed_str());
    let hosts: usize = args[1].parse().expect("HOSTS: a number");
    let base: Vec<u8> = args[2]
        .split('.')
        .map(|o| o.parse().expect("A.B.C: three octets"))
        .collect();
    assert_eq!(base.len(), 3, "A.B.C: three octets");
    let w = World::new(WorldOptions {
        prefix,
        topology: if args[5] == "vxlan" {
            Topology::TwoSubnets
        } else {
            Topology::OneSegment
        },
        hosts,
        etcd_members: 3,
        agent_args: ["--metrics-listen", "off"].map(String::from).to_vec(),
        underlay_base: (base[0], base[1], base[2]),
    });
    // SUBNET: one CIDR, or several separated by commas (dual stack).
    let mut create = vec![
        "network",
        "create",
        args[3].as_str(),
        "--mode",
        args[5].as_str(),
    ];
    for s in args[4].split(',') {
        create.extend(["--subnet", s]);
    }
    w.cli_ok(&create);
    let desc = json!({
        "etcd": w.etcd.endpoints(),
        "hosts": w.hosts.iter().map(|h| json!({
            "name": h.name,
            "netns": h.node.ns.name,
            "underlay": h.node.ip.to_string(),
            "agentDir": h.agent_dir(),
        })).collect::<Vec<_>>(),
    });
    println!("{desc}");
    // Hold the world until stdin closes.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    if let Err(e) = w.cli(&["network", "rm", &args[3], "--force"]) {
        eprintln!("plugnet-world: network rm: {e}");
    }
    drop(w);
}
