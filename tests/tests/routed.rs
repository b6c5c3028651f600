//! Black-box tests of plugnet's routed mode (`"mode": "routed"`): the real binary inside a
//! throwaway host namespace (see `bridge_support`), checked by what a user sees: /32 addresses,
//! one host route per container, pings between containers and to the host, nothing left after
//! DEL. Names: netns `pnq-<tag>-<pid>[-c<n>]`, links `pnq…`, subnets 100.70.0.0/16–100.79.0.0/16,
//! 10.110.0.0/16–10.119.0.0/16, fd11::/16.

mod bridge_support;

use std::process::{Command, Stdio};

use bridge_support::*;
use serde_json::{json, Value};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! need_root {
    () => {
        assert!(is_root(), "routed tests need root (network namespaces)");
    };
}

fn version_at_least(v: &str, min: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap()).collect() };
    p(v) >= p(min)
}

/// A routed plugnet configuration over 100.`net`.0.0/24 (and fd11:`net`::/64 when `v6`).
fn routed(host: &Host, version: &str, name: &str, net: u8, v6: bool) -> Value {
    let mut ranges = vec![json!([{"subnet": format!("100.{net}.0.0/24")}])];
    if v6 {
        ranges.push(json!([{"subnet": format!("fd11:{net}::/64")}]));
    }
    json!({
        "cniVersion": version,
        "name": name,
        "type": "plugnet",
        "mode": "routed",
        "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(), "ranges": ranges}
    })
}

/// The host's own addresses, 10.110.0.1/32 and fd11:110::1/128 on its loopback, so containers
/// have something on the host to ping (the throwaway host has no other address).
fn host_addresses(host: &Host) {
    host.ns
        .sh(&["ip", "addr", "add", "10.110.0.1/32", "dev", "lo"]);
    host.ns
        .sh(&["ip", "addr", "add", "fd11:110::1/128", "dev", "lo"]);
}

/// The host's /32 and /128 routes (what `ip route` shows for containers), as "dst dev".
fn host_routes(host: &Host) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        for r in host.ns.ip_json(&[fam, "route", "show"]).as_array().unwrap() {
            // `ip` shows host routes (/32, /128) without a prefix length.
            let dst = r["dst"].as_str().unwrap_or_default();
            let is_host = !dst.contains('/') && dst != "default" && !dst.starts_with("fe80");
            let via_lo = r["dev"] == "lo";
            if is_host && !via_lo && (dst.starts_with("100.") || dst.starts_with("fd11:")) {
                out.push(format!("{dst} {}", r["dev"].as_str().unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_version_routed_add_check_del() {
    need_root!();
    let host = Host::with_prefix("pnq", "ver");
    for (i, v) in VERSIONS.iter().enumerate() {
        let net = format!("pnqver{i}");
        let conf = routed(&host, v, &net, 70, true);
        let ctr = host.container();
        let att = Att::new(&format!("ver-{i}"), &ctr.path(), "eth0");

        let res = host.add(&conf, &att);
        assert_eq!(res["cniVersion"], *v);
        let ifaces = res["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 2, "{res}");
        let veth = ifaces[0]["name"].as_str().unwrap().to_string();
        assert!(plugnet::bridge::naming::is_host_veth_name(&veth));
        assert!(ifaces[0].get("sandbox").is_none());
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[1]["sandbox"], ctr.path());
        // The result says what is on the interface: /32 and /128, gateway = the next hop.
        let ips = res["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        assert!(
            ips[0]["address"].as_str().unwrap().ends_with("/32"),
            "{res}"
        );
        assert!(
            ips[1]["address"].as_str().unwrap().ends_with("/128"),
            "{res}"
        );
        assert_eq!(ips[0]["gateway"], "169.254.1.1");
        assert_eq!(ips[1]["gateway"], "fe80::1");
        for ip in ips {
            assert_eq!(ip["interface"], 1);
            assert_eq!(ip.get("version").is_some(), !version_at_least(v, "1.0.0"));
        }
        let routes: Vec<String> = res["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r["dst"], r["gw"]))
            .collect();
        assert_eq!(
            routes,
            vec![
                "\"169.254.1.1/32\" null",
                "\"0.0.0.0/0\" \"169.254.1.1\"",
                "\"fe80::1/128\" null",
                "\"::/0\" \"fe80::1\""
            ]
        );
        // What the container shows.
        let shown = ctr.ip_json(&["addr", "show", "dev", "eth0"]);
        let addrs: Vec<String> = shown[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert_eq!(
            addrs,
            vec![
                ips[0]["address"].as_str().unwrap(),
                ips[1]["address"].as_str().unwrap()
            ]
        );
        let defaults = ctr.sh(&["ip", "route", "show", "default"]);
        assert!(defaults.contains("via 169.254.1.1 dev eth0"), "{defaults}");
        let neigh = ctr.sh(&["ip", "neigh", "show", "dev", "eth0"]);
        assert!(
            neigh.contains("169.254.1.1 lladdr") && neigh.contains("PERMANENT"),
            "{neigh}"
        );
        // The host: one route per address, through the host veth.
        assert_eq!(
            host_routes(&host),
            vec![
                format!("{} {veth}", ip_at(&res, 0)),
                format!("{} {veth}", ip_at(&res, 1))
            ]
        );

        let check = host.run(&plugnet(), "CHECK", &with_prev(&conf, &res), Some(&att));
        if version_at_least(v, "0.4.0") {
            assert_eq!(check.code, 0, "{v}: {check:?}");
        } else {
            assert_eq!(check.err_code(), 1, "{v}");
        }
        if *v == "1.1.0" {
            let mut gc = conf.clone();
            gc["cni.dev/valid-attachments"] = json!([{"containerID": att.id, "ifname": "eth0"}]);
            host.run(&plugnet(), "GC", &gc, None).ok();
            assert_eq!(host.plugnet_veths(), vec![veth.clone()], "GC kept it");
        }
        for _ in 0..2 {
            let out = host.run(&plugnet(), "DEL", &with_prev(&conf, &res), Some(&att));
            assert_eq!(out.code, 0, "{v}: {out:?}");
        }
        assert!(host_routes(&host).is_empty(), "{v}: host route left");
        assert!(host.plugnet_veths().is_empty(), "{v}: veth left");
        assert_eq!(ctr.link_names(), vec!["lo"]);
        assert!(host.leases(&net).is_empty(), "{v}: lease left");
    }
}

#[test]
fn two_routed_containers_ping_each_other_and_the_host() {
    need_root!();
    let host = Host::with_prefix("pnq", "ping");
    host_addresses(&host);
    let conf = routed(&host, "1.0.0", "pnqping", 71, true);
    let (a, b) = (host.container(), host.container());
    let (att_a, att_b) = (
        Att::new("ping-a", &a.path(), "eth0"),
        Att::new("ping-b", &b.path(), "eth0"),
    );
    let ra = host.add(&conf, &att_a);
    let rb = host.add(&conf, &att_b);
    assert_eq!(host_routes(&host).len(), 4, "one /32 and one /128 each");
    for i in [0, 1] {
        assert!(a.ping(&ip_at(&rb, i)), "a -> b ({i})");
        assert!(b.ping(&ip_at(&ra, i)), "b -> a ({i})");
    }
    assert!(a.ping("10.110.0.1") && b.ping("10.110.0.1"), "-> host v4");
    assert!(a.ping("fd11:110::1") && b.ping("fd11:110::1"), "-> host v6");
    assert!(host.ns.ping(&ip_at(&ra, 0)), "host -> a");
    // Nothing is shared at L2: b's address is not on-link for a.
    let via = a.sh(&["ip", "route", "get", &ip_at(&rb, 0)]);
    assert!(via.contains("via 169.254.1.1"), "{via}");

    host.run(&plugnet(), "DEL", &with_prev(&conf, &ra), Some(&att_a))
        .ok();
    assert_eq!(host_routes(&host).len(), 2, "a's routes gone, b's kept");
    assert!(!b.ping(&ip_at(&ra, 0)));
    assert!(b.ping("10.110.0.1"));
    host.run(&plugnet(), "DEL", &with_prev(&conf, &rb), Some(&att_b))
        .ok();
    assert!(host_routes(&host).is_empty());
    assert!(host.plugnet_veths().is_empty());
}

#[test]
fn routed_and_bridged_containers_reach_each_other_through_the_host() {
    need_root!();
    let host = Host::with_prefix("pnq", "mix");
    let r = routed(&host, "1.0.0", "pnqmixr", 72, false);
    let b = json!({
        "cniVersion": "1.0.0", "name": "pnqmixb", "type": "plugnet", "bridge": "pnqbr0",
        "isDefaultGateway": true,
        "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                 "ranges": [[{"subnet": "10.111.0.0/24"}]]}
    });
    let (cr, cb) = (host.container(), host.container());
    let (ar, ab) = (
        Att::new("mix-r", &cr.path(), "eth0"),
        Att::new("mix-b", &cb.path(), "eth0"),
    );
    let rr = host.add(&r, &ar);
    let rb = host.add(&b, &ab);
    assert!(cr.ping(&ip_at(&rb, 0)), "routed -> bridged");
    assert!(cb.ping(&ip_at(&rr, 0)), "bridged -> routed");
    host.run(&plugnet(), "DEL", &with_prev(&r, &rr), Some(&ar))
        .ok();
    host.run(&plugnet(), "DEL", &with_prev(&b, &rb), Some(&ab))
        .ok();
    assert!(host.plugnet_veths().is_empty());
    assert!(host_routes(&host).is_empty());
}

#[test]
fn check_notices_a_removed_route_or_neighbour() {
    need_root!();
    let host = Host::with_prefix("pnq", "chk");
    let conf = routed(&host, "1.0.0", "pnqchk", 73, false);
    let ctr = host.container();
    let att = Att::new("chk-a", &ctr.path(), "eth0");
    let res = host.add(&conf, &att);
    let prev = with_prev(&conf, &res);
    let check = || host.run(&plugnet(), "CHECK", &prev, Some(&att));
    assert_eq!(check().code, 0);
    let dst = format!("{}/32", ip_at(&res, 0));

    host.ns.sh(&["ip", "route", "del", &dst]);
    let out = check();
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("host route"), "{out:?}");
    let veth = res["interfaces"][0]["name"].as_str().unwrap();
    host.ns.sh(&["ip", "route", "add", &dst, "dev", veth]);
    assert_eq!(check().code, 0);

    ctr.sh(&["ip", "neigh", "del", "169.254.1.1", "dev", "eth0"]);
    let out = check();
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("neighbour"), "{out:?}");
    // The host veth carries the next hop: ARP for it is answered at once.
    host_addresses(&host);
    assert!(
        ctr.ping("10.110.0.1"),
        "the host answers ARP for 169.254.1.1"
    );
    ctr.sh(&[
        "ip",
        "neigh",
        "replace",
        "169.254.1.1",
        "dev",
        "eth0",
        "lladdr",
        res["interfaces"][0]["mac"].as_str().unwrap(),
        "nud",
        "permanent",
    ]);
    assert_eq!(check().code, 0);
    host.ns
        .sh(&["ip", "addr", "del", "169.254.1.1/32", "dev", veth]);
    let out = check();
    assert!(out.stdout.contains("next hop"), "{out:?}");
    // Removing a link's last IPv4 address also flushes the routes through it: restore both.
    host.ns
        .sh(&["ip", "addr", "add", "169.254.1.1/32", "dev", veth]);
    host.ns.sh(&["ip", "route", "add", &dst, "dev", veth]);
    assert_eq!(check().code, 0);

    ctr.sh(&["ip", "route", "del", "default"]);
    let out = check();
    assert!(
        out.stdout.contains("0.0.0.0/0") || out.stdout.contains("neighbour"),
        "{out:?}"
    );
    host.run(&plugnet(), "DEL", &prev, Some(&att)).ok();
}

#[test]
fn del_without_the_netns_cleans_the_host() {
    need_root!();
    let host = Host::with_prefix("pnq", "del");
    let conf = routed(&host, "1.0.0", "pnqdel", 74, true);
    let res;
    let att;
    {
        let ctr = host.container();
        att = Att::new("del-a", &ctr.path(), "eth0");
        res = host.add(&conf, &att);
    } // the container namespace is gone
    let gone = Att::new("del-a", "", "eth0");
    host.run(&plugnet(), "DEL", &with_prev(&conf, &res), Some(&gone))
        .ok();
    host.run(&plugnet(), "DEL", &conf, Some(&att)).ok();
    assert!(host_routes(&host).is_empty());
    assert!(host.plugnet_veths().is_empty());
    assert!(host.leases("pnqdel").is_empty());
}

#[test]
fn gc_removes_only_stale_routed_veths() {
    need_root!();
    let host = Host::with_prefix("pnq", "gc");
    let conf = routed(&host, "1.1.0", "pnqgc", 75, false);
    let (c1, c2) = (host.container(), host.container());
    let keep = host.add(&conf, &Att::new("gc-keep", &c1.path(), "eth0"));
    host.add(&conf, &Att::new("gc-stale", &c2.path(), "eth0"));
    assert_eq!(host.plugnet_veths().len(), 2);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-keep", "ifname": "eth0"}]);
    host.run(&plugnet(), "GC", &gc, None).ok();
    assert_eq!(
        host.plugnet_veths(),
        vec![keep["interfaces"][0]["name"].as_str().unwrap().to_string()]
    );
    assert_eq!(host_routes(&host).len(), 1);
    assert_eq!(host.leases("pnqgc").len(), 1);
    host.run(
        &plugnet(),
        "DEL",
        &conf,
        Some(&Att::new("gc-keep", &c1.path(), "eth0")),
    )
    .ok();
}

#[test]
fn bridge_only_fields_are_refused_in_routed_mode() {
    need_root!();
    let host = Host::with_prefix("pnq", "bad");
    let ctr = host.container();
    for extra in [
        json!({"vlan": 5}),
        json!({"bridge": "pnqbr9"}),
        json!({"mode": "mesh"}),
    ] {
        let mut conf = routed(&host, "1.0.0", "pnqbad", 76, false);
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let out = host.run(
            &plugnet(),
            "ADD",
            &conf,
            Some(&Att::new("bad", &ctr.path(), "eth0")),
        );
        assert_eq!(out.err_code(), 7, "{extra}: {out:?}");
    }
    assert!(host.plugnet_veths().is_empty());
    assert!(host.leases("pnqbad").is_empty());
}

#[test]
fn routed_with_ip_masq_keeps_source_addresses_between_containers() {
    need_root!();
    let host = Host::with_prefix("pnq", "masq");
    host_addresses(&host);
    let fw = tempfile::Builder::new()
        .prefix("pnq-fw-")
        .tempdir()
        .unwrap();
    let mut conf = routed(&host, "1.0.0", "pnqmasq", 77, false);
    conf["ipMasq"] = json!(true);
    conf["firewallStateDir"] = json!(fw.path());
    // A table left by a plugnet without routed mode (no `routed` set): ADD rebuilds it.
    host.ns.sh(&["nft", "add", "table", "inet", "plugnet"]);
    let (a, b) = (host.container(), host.container());
    let (att_a, att_b) = (
        Att::new("masq-a", &a.path(), "eth0"),
        Att::new("masq-b", &b.path(), "eth0"),
    );
    let ra = host.add(&conf, &att_a);
    let rb = host.add(&conf, &att_b);
    let set = host
        .ns
        .sh(&["nft", "list", "set", "inet", "plugnet", "routed"]);
    for r in [&ra, &rb] {
        assert!(
            set.contains(r["interfaces"][0]["name"].as_str().unwrap()),
            "{set}"
        );
    }
    // b sees a's own address: the reply tuple of a's ping is b -> a, not b -> the host.
    assert!(a.ping(&ip_at(&rb, 0)));
    let ct = host.ns.sh(&["conntrack", "-L", "-p", "icmp"]);
    let (pa, pb) = (ip_at(&ra, 0), ip_at(&rb, 0));
    let line = ct
        .lines()
        .find(|l| l.contains(&format!("src={pa} dst={pb}")))
        .unwrap_or_else(|| panic!("no conntrack entry for a's ping: {ct}"));
    assert!(
        line.contains(&format!("src={pb} dst={pa}")),
        "NATed: {line}"
    );
    let check = host.run(&plugnet(), "CHECK", &with_prev(&conf, &ra), Some(&att_a));
    assert_eq!(check.code, 0, "{check:?}");
    host.run(&plugnet(), "DEL", &with_prev(&conf, &ra), Some(&att_a))
        .ok();
    host.run(&plugnet(), "DEL", &with_prev(&conf, &rb), Some(&att_b))
        .ok();
    assert!(!host
        .ns
        .exec(&["nft", "list", "table", "inet", "plugnet"])
        .status
        .success());
}

#[test]
fn runner_spec_with_a_routed_and_a_bridged_network() {
    need_root!();
    let host = Host::with_prefix("pnq", "run");
    let state = tempfile::Builder::new()
        .prefix("pnq-run-")
        .tempdir()
        .unwrap();
    let spec = json!({"networks": [
        {"name": "pnqrunr", "type": "plugnet",
         "config": {"mode": "routed",
            "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                     "ranges": [[{"subnet": "100.78.0.0/24"}]]}}},
        {"name": "pnqrunb", "type": "plugnet", "ifname": "eth1",
         "config": {"bridge": "pnqbr1", "isGateway": true,
            "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                     "ranges": [[{"subnet": "10.118.0.0/24"}]]}}}
    ]});
    let run = |args: &[&str], stdin: &str| {
        let mut c = Command::new(plugnet());
        c.args(args)
            .env_remove("CNI_COMMAND")
            .env("PLUGNET_STATE_DIR", state.path())
            .env("CNI_PATH", cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        host.spawn_in(c, stdin.as_bytes())
    };
    let (a, b) = (host.container(), host.container());
    let up_a = run(
        &["up", "--id", "pnq-run-a", "--netns", &a.path()],
        &spec.to_string(),
    );
    let up_a = up_a.ok().json();
    let up_b = run(
        &["up", "--id", "pnq-run-b", "--netns", &b.path()],
        &spec.to_string(),
    );
    let up_b = up_b.ok().json();
    let addr = |up: &Value, n: &str| ip_at(&up[n], 0);
    assert!(up_a["pnqrunr"]["ips"][0]["address"]
        .as_str()
        .unwrap()
        .ends_with("/32"));
    assert!(a.ping(&addr(&up_b, "pnqrunr")), "routed network");
    assert!(a.ping(&addr(&up_b, "pnqrunb")), "bridged network");
    assert_eq!(host_routes(&host).len(), 2);
    for id in ["pnq-run-a", "pnq-run-b"] {
        run(&["down", "--id", id], "").ok();
    }
    assert!(host_routes(&host).is_empty());
    assert!(host.plugnet_veths().is_empty());
}

#[test]
fn port_mappings_masquerade_and_bandwidth_work_on_the_host_veth() {
    need_root!();
    let host = Host::with_prefix("pnq", "feat");
    let outside = Ns::new(format!("pnq-feat-{}-out", std::process::id()));
    host.ns.sh(&[
        "ip",
        "link",
        "add",
        "pnqo0h",
        "type",
        "veth",
        "peer",
        "name",
        "pnqo0o",
        "netns",
        &outside.name,
    ]);
    host.ns
        .sh(&["ip", "addr", "add", "10.112.0.1/24", "dev", "pnqo0h"]);
    host.ns.sh(&["ip", "link", "set", "pnqo0h", "up"]);
    outside.sh(&["ip", "addr", "add", "10.112.0.2/24", "dev", "pnqo0o"]);
    outside.sh(&["ip", "link", "set", "pnqo0o", "up"]);
    outside.sh(&["ip", "route", "add", "default", "via", "10.112.0.1"]);
    let fw = tempfile::Builder::new()
        .prefix("pnq-fw-")
        .tempdir()
        .unwrap();
    let mut conf = routed(&host, "1.0.0", "pnqfeat", 73, false);
    conf["ipMasq"] = json!(true);
    conf["firewallStateDir"] = json!(fw.path());
    conf["runtimeConfig"] = json!({
        "portMappings": [{"hostPort": 18090, "containerPort": 90, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000}
    });
    let ctr = host.container();
    let att = Att::new("feat-a", &ctr.path(), "eth0");
    let res = host.add(&conf, &att);
    let veth = res["interfaces"][0]["name"].as_str().unwrap().to_string();

    // Port mapping: outside -> host:18090 -> container:90.
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &ctr.name, "busybox", "nc", "-l", "-p", "90", "-e", "echo", "hello",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let got = outside.exec(&["busybox", "nc", "-w", "2", "10.112.0.1", "18090"]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "hello",
        "{got:?}"
    );
    // ipMasq: the outside sees the host's address, and answers.
    assert!(
        ctr.ping("10.112.0.2"),
        "container -> outside through masquerading"
    );
    // Bandwidth: shaping sits on the host veth.
    let qdisc = host.ns.sh(&["tc", "qdisc", "show", "dev", &veth]);
    assert!(qdisc.contains("tbf"), "{qdisc}");
    let check = host.run(&plugnet(), "CHECK", &with_prev(&conf, &res), Some(&att));
    assert_eq!(check.code, 0, "{check:?}");

    host.run(&plugnet(), "DEL", &with_prev(&conf, &res), Some(&att))
        .ok();
    assert!(host.plugnet_veths().is_empty());
    assert!(!host
        .ns
        .exec(&["nft", "list", "table", "inet", "plugnet"])
        .status
        .success());
}
