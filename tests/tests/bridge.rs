//! Black-box tests of the `plugnet` bridge plugin: the real binary, driven as runtimes drive it,
//! inside throwaway namespaces (see `bridge_support`). Checked by what a user sees: addresses,
//! routes, pings, and nothing left behind.

mod bridge_support;

use bridge_support::*;
use serde_json::{json, Value};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! need_root {
    () => {
        assert!(
            is_root(),
            "bridge tests need root (network namespaces, bridges)"
        );
    };
}

fn version_at_least(v: &str, min: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap()).collect() };
    p(v) >= p(min)
}

#[test]
fn every_command_in_every_version() {
    need_root!();
    let host = Host::new("ver");
    for (i, v) in VERSIONS.iter().enumerate() {
        let net = format!("pnbver{i}");
        let conf = conf(&host, v, &net, "pnbbrv", 1, true);
        let ctr = host.container();
        let att = Att::new(&format!("ver-{i}"), &ctr.path(), "eth0");

        let res = host.add(&conf, &att);
        assert_eq!(res["cniVersion"], *v);
        let ifaces = res["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 3, "{res}");
        assert_eq!(ifaces[0]["name"], "pnbbrv");
        assert!(ifaces[1]["name"].as_str().unwrap().starts_with("pn"));
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], ctr.path());
        let ips = res["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        for ip in ips {
            assert_eq!(ip["interface"], 2);
            assert_eq!(
                ip.get("version").is_some(),
                !version_at_least(v, "1.0.0"),
                "{v}: {ip}"
            );
        }
        let mac = ifaces[2]["mac"].as_str().unwrap();
        let shown = ctr.ip_json(&["addr", "show", "dev", "eth0"]);
        assert_eq!(shown[0]["address"], mac);
        let addr4 = ips[0]["address"].as_str().unwrap();
        assert!(ctr.sh(&["ip", "addr"]).contains(addr4));
        assert!(
            ctr.ping("10.50.1.1") && ctr.ping("fd50:1::1"),
            "gateway unreachable"
        );

        let check = host.run(&plugnet(), "CHECK", &with_prev(&conf, &res), Some(&att));
        if version_at_least(v, "0.4.0") {
            assert_eq!(check.code, 0, "{v}: {check:?}");
            assert!(check.stdout.is_empty());
        } else {
            assert_eq!(check.err_code(), 1, "{v}");
        }
        for cmd in ["STATUS", "GC"] {
            let gc_conf = {
                let mut c = conf.clone();
                c["cni.dev/valid-attachments"] = json!([{"containerID": att.id, "ifname": "eth0"}]);
                c
            };
            let out = host.run(&plugnet(), cmd, &gc_conf, None);
            if *v == "1.1.0" {
                assert_eq!(out.code, 0, "{cmd}: {out:?}");
            } else {
                assert_eq!(out.err_code(), 1, "{v} {cmd}");
            }
        }
        // GC kept the valid attachment.
        assert_eq!(host.leases(&net).len(), 2, "{v}");
        assert!(ctr.ping("10.50.1.1"));

        for _ in 0..2 {
            let out = host.run(&plugnet(), "DEL", &with_prev(&conf, &res), Some(&att));
            assert_eq!(out.code, 0, "{v}: {out:?}");
            assert!(out.stdout.is_empty());
        }
        assert!(host.plugnet_veths().is_empty(), "{v}: veth left");
        assert_eq!(
            ctr.link_names(),
            vec!["lo"],
            "{v}: container interface left"
        );
        assert!(host.leases(&net).is_empty(), "{v}: lease left");
    }
    let out = host.run(&plugnet(), "VERSION", &json!({"cniVersion": "1.0.0"}), None);
    let vs = out.ok().json()["supportedVersions"].clone();
    for v in VERSIONS {
        assert!(vs.as_array().unwrap().contains(&json!(v)), "{vs}");
    }
}

#[test]
fn two_containers_ping_each_other_dual_stack_at_once() {
    need_root!();
    let host = Host::new("ping");
    let conf = conf(&host, "1.0.0", "pnbping", "pnbbrp", 2, true);
    let (a, b) = (host.container(), host.container());
    let ra = host.add(&conf, &Att::new("ping-a", &a.path(), "eth0"));
    let rb = host.add(&conf, &Att::new("ping-b", &b.path(), "eth0"));
    let ip = ip_at;
    assert_ne!(ip(&ra, 0), ip(&rb, 0));
    // No DAD wait: IPv6 answers right after ADD.
    assert!(a.ping(&ip(&rb, 1)), "a -> b over IPv6");
    assert!(b.ping(&ip(&ra, 1)), "b -> a over IPv6");
    assert!(a.ping(&ip(&rb, 0)), "a -> b over IPv4");
    assert!(b.ping(&ip(&ra, 0)), "b -> a over IPv4");
    // The bridge keeps the MAC it was created with although its ports come and go.
    let br_mac = ra["interfaces"][0]["mac"].clone();
    host.run(
        &plugnet(),
        "DEL",
        &conf,
        Some(&Att::new("ping-a", &a.path(), "eth0")),
    )
    .ok();
    let shown = host.ns.ip_json(&["link", "show", "pnbbrp"]);
    assert_eq!(shown[0]["address"], br_mac);
    host.run(
        &plugnet(),
        "DEL",
        &conf,
        Some(&Att::new("ping-b", &b.path(), "eth0")),
    )
    .ok();
    assert!(host.plugnet_veths().is_empty());
}

#[test]
fn two_networks_in_one_namespace() {
    need_root!();
    let host = Host::new("two");
    let c1 = conf(&host, "1.0.0", "pnbtwo1", "pnbbr21", 21, false);
    let mut c2 = conf(&host, "1.0.0", "pnbtwo2", "pnbbr22", 22, false);
    c2["isDefaultGateway"] = json!(false);
    c2["isGateway"] = json!(true);
    let ctr = host.container();
    let a1 = Att::new("two", &ctr.path(), "eth0");
    let a2 = Att::new("two", &ctr.path(), "eth1");
    let r1 = host.add(&c1, &a1);
    let r2 = host.add(&c2, &a2);
    assert!(ctr.ping("10.50.21.1") && ctr.ping("10.50.22.1"));
    assert_ne!(r1["interfaces"][1]["name"], r2["interfaces"][1]["name"]);
    for (c, a, r) in [(&c1, &a1, &r1), (&c2, &a2, &r2)] {
        assert_eq!(
            host.run(&plugnet(), "CHECK", &with_prev(c, r), Some(a))
                .code,
            0
        );
    }
    host.run(&plugnet(), "DEL", &c1, Some(&a1)).ok();
    assert!(ctr.ping("10.50.22.1"), "DEL of one network broke the other");
    host.run(&plugnet(), "DEL", &c2, Some(&a2)).ok();
    assert_eq!(ctr.link_names(), vec!["lo"]);
    assert!(host.plugnet_veths().is_empty());
}

#[test]
fn failed_add_leaves_nothing_behind() {
    need_root!();
    let host = Host::new("undo");
    let mut bad = conf(&host, "1.0.0", "pnbundo", "pnbbru", 3, false);
    // A route through a gateway outside every subnet: the last step of ADD fails.
    bad["ipam"]["routes"] = json!([{"dst": "192.0.2.0/24", "gw": "10.99.0.1"}]);
    let ctr = host.container();
    let att = Att::new("undo", &ctr.path(), "eth0");
    let out = host.run(&plugnet(), "ADD", &bad, Some(&att));
    assert_eq!(out.err_code(), 999, "{out:?}");
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("route 192.0.2.0/24"),
        "{out:?}"
    );
    assert!(
        host.plugnet_veths().is_empty(),
        "veth left after failed ADD"
    );
    assert_eq!(ctr.link_names(), vec!["lo"]);
    assert!(
        host.leases("pnbundo").is_empty(),
        "lease left after failed ADD"
    );
    // The same attachment can be added right away.
    let good = conf(&host, "1.0.0", "pnbundo", "pnbbru", 3, false);
    host.add(&good, &att);
    assert_eq!(host.leases("pnbundo").len(), 1);
    // A second ADD of the same attachment is refused and does not disturb the first.
    let again = host.run(&plugnet(), "ADD", &good, Some(&att));
    assert_ne!(again.code, 0);
    assert!(ctr.ping("10.50.3.1"));
    host.run(&plugnet(), "DEL", &good, Some(&att)).ok();
    assert!(host.plugnet_veths().is_empty());
}

#[test]
fn del_needs_no_namespace() {
    need_root!();
    let host = Host::new("delns");
    let conf = conf(&host, "1.0.0", "pnbdelns", "pnbbrd", 4, false);
    let ctr = host.container();
    let att = Att::new("delns", &ctr.path(), "eth0");
    host.add(&conf, &att);
    // CNI_NETNS empty (libcni sets it so when unknown): host side still cleaned.
    let no_ns = Att {
        netns: String::new(),
        ..att.clone()
    };
    host.run(&plugnet(), "DEL", &conf, Some(&no_ns)).ok();
    assert!(host.plugnet_veths().is_empty());
    assert_eq!(ctr.link_names(), vec!["lo"]);
    assert!(host.leases("pnbdelns").is_empty());
    // The namespace already gone: success.
    host.add(&conf, &att);
    let path = ctr.path();
    drop(ctr);
    host.run(
        &plugnet(),
        "DEL",
        &conf,
        Some(&Att::new("delns", &path, "eth0")),
    )
    .ok();
    assert!(host.leases("pnbdelns").is_empty());
    assert!(host.plugnet_veths().is_empty());
    // Never added: success.
    host.run(
        &plugnet(),
        "DEL",
        &conf,
        Some(&Att::new("never", &path, "eth0")),
    )
    .ok();
    // CHECK without prevResult fails cleanly.
    let out = host.run(
        &plugnet(),
        "CHECK",
        &conf,
        Some(&Att::new("never", &path, "eth0")),
    );
    assert!(
        out.json()["msg"].as_str().unwrap().contains("prevResult"),
        "{out:?}"
    );
}

#[test]
fn check_notices_what_is_broken() {
    need_root!();
    let host = Host::new("chk");
    let conf = conf(&host, "1.0.0", "pnbchk", "pnbbrk", 5, false);
    let ctr = host.container();
    let att = Att::new("chk", &ctr.path(), "eth0");
    let res = host.add(&conf, &att);
    let check = || host.run(&plugnet(), "CHECK", &with_prev(&conf, &res), Some(&att));
    assert_eq!(check().code, 0);
    ctr.sh(&["ip", "route", "del", "default"]);
    assert!(check().json()["msg"]
        .as_str()
        .unwrap()
        .contains("route 0.0.0.0/0"));
    ctr.sh(&["ip", "route", "add", "default", "via", "10.50.5.1"]);
    assert_eq!(check().code, 0);
    ctr.sh(&["ip", "addr", "flush", "dev", "eth0"]);
    assert!(check().json()["msg"]
        .as_str()
        .unwrap()
        .contains("lacks address"));
    let veth = res["interfaces"][1]["name"].as_str().unwrap();
    host.ns.sh(&["ip", "link", "set", veth, "nomaster"]);
    assert!(check().json()["msg"]
        .as_str()
        .unwrap()
        .contains("not a port"));
    host.run(&plugnet(), "DEL", &conf, Some(&att)).ok();
    assert!(check().code != 0);
}

#[test]
fn gc_removes_only_stale_attachments_of_this_network() {
    need_root!();
    let host = Host::new("gc");
    let conf = conf(&host, "1.1.0", "pnbgc", "pnbbrg", 6, false);
    let (a, b) = (host.container(), host.container());
    let att_a = Att::new("gc-a", &a.path(), "eth0");
    let att_b = Att::new("gc-b", &b.path(), "eth0");
    host.add(&conf, &att_a);
    host.add(&conf, &att_b);
    // Another network sharing the bridge: GC of pnbgc must not touch it.
    let other = conf_other(&host);
    let c = host.container();
    let att_c = Att::new("gc-c", &c.path(), "eth0");
    host.add(&other, &att_c);
    assert_eq!(host.plugnet_veths().len(), 3);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-a", "ifname": "eth0"}]);
    host.run(&plugnet(), "GC", &gc, None).ok();
    assert_eq!(host.plugnet_veths().len(), 2);
    assert_eq!(host.leases("pnbgc").len(), 1);
    assert!(a.ping("10.50.6.1"), "valid attachment broken by GC");
    assert_eq!(b.link_names(), vec!["lo"], "stale attachment kept");
    assert!(
        c.ping("10.50.6.1"),
        "other network's attachment removed by GC"
    );

    for (cf, at) in [(&conf, &att_a), (&other, &att_c)] {
        host.run(&plugnet(), "DEL", cf, Some(at)).ok();
    }
    assert!(host.plugnet_veths().is_empty());
}

fn conf_other(host: &Host) -> Value {
    let mut c = conf(host, "1.1.0", "pnbgcother", "pnbbrg", 6, false);
    c["ipam"]["ranges"] = json!([[{"subnet": "10.50.6.0/24", "rangeStart": "10.50.6.200"}]]);
    c
}

#[test]
fn chain_with_reference_portmap_tuning_firewall_bandwidth() {
    need_root!();
    let host = Host::new("chain");
    let mut first = conf(&host, "1.0.0", "pnbchain", "pnbbrc", 7, true);
    first.as_object_mut().unwrap().remove("cniVersion");
    first.as_object_mut().unwrap().remove("name");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "pnbchain",
        "plugins": [
            first,
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}},
            {"type": "firewall", "backend": "iptables"},
            {"type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 1000000,
             "egressRate": 8000000, "egressBurst": 1000000}
        ]
    });
    let chain = Chain {
        host: &host,
        list,
        runtime_config: json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}),
    };
    let ctr = host.container();
    let att = Att::new("chain", &ctr.path(), "eth0");
    let res = chain.add(&att);
    // plugnet's three interfaces first; bandwidth appends its ifb device.
    let names: Vec<&str> = res["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "pnbbrc", "{res}");
    assert_eq!(names[2], "eth0", "{res}");
    assert!(ctr.ping("10.50.7.1"));
    assert_eq!(
        ctr.sh(&["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"])
            .trim(),
        "1"
    );
    let veth = res["interfaces"][1]["name"].as_str().unwrap().to_string();
    assert!(
        host.ns
            .sh(&["tc", "qdisc", "show", "dev", &veth])
            .contains("tbf"),
        "bandwidth"
    );
    let filter = host.ns.sh(&["iptables-save", "-t", "filter"]);
    assert!(
        filter.contains("CNI-FORWARD") && filter.contains("10.50.7.2"),
        "firewall plugin rules missing: {filter}"
    );
    let nat = host.ns.sh(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("18080"), "portmap DNAT missing: {nat}");
    for (i, out) in chain.check(&att, &res).iter().enumerate() {
        // Debian's portmap 1.1.1 always fails its own CHECK ("could not check ipv6 dnat", see
        // machine-notes); every other plugin in the chain must pass.
        if i == 1 && out.code != 0 && out.stdout.contains("could not check ipv6 dnat") {
            continue;
        }
        assert_eq!(out.code, 0, "CHECK of plugin {i} in the chain: {out:?}");
    }
    chain.del(&att, &res);
    assert!(host.plugnet_veths().is_empty());
    assert!(!host
        .ns
        .sh(&["iptables-save", "-t", "nat"])
        .contains("18080"));
    assert!(!host
        .ns
        .sh(&["iptables-save", "-t", "filter"])
        .contains("10.50.7.2"));
    assert!(host.leases("pnbchain").is_empty());
}

#[test]
fn reference_bridge_with_plugnet_ipam() {
    need_root!();
    let host = Host::new("refb");
    let mut conf = conf(&host, "1.0.0", "pnbrefb", "pnbbrr", 8, false);
    conf["type"] = json!("bridge");
    let ctr = host.container();
    let att = Att::new("refb", &ctr.path(), "eth0");
    let bridge = std::path::Path::new(REFERENCE_DIR).join("bridge");
    let res = host.run(&bridge, "ADD", &conf, Some(&att)).ok().json();
    assert_eq!(res["ips"][0]["address"], "10.50.8.2/24");
    assert!(ctr.ping("10.50.8.1"));
    assert_eq!(host.leases("pnbrefb").len(), 1);
    assert_eq!(
        host.run(&bridge, "CHECK", &with_prev(&conf, &res), Some(&att))
            .code,
        0
    );
    host.run(&bridge, "DEL", &with_prev(&conf, &res), Some(&att))
        .ok();
    assert!(host.leases("pnbrefb").is_empty());
    assert_eq!(ctr.link_names(), vec!["lo"]);
}

#[test]
fn plugnet_with_reference_host_local() {
    need_root!();
    let host = Host::new("refh");
    let mut conf = conf(&host, "1.0.0", "pnbrefh", "pnbbrh", 9, true);
    conf["ipam"]["type"] = json!("host-local");
    let ctr = host.container();
    let att = Att::new("refh", &ctr.path(), "eth0");
    let res = host.add(&conf, &att);
    assert_eq!(res["ips"][0]["address"], "10.50.9.2/24");
    assert!(ctr.ping("10.50.9.1") && ctr.ping("fd50:9::1"));
    let store = host.data_dir.path().join("pnbrefh");
    assert!(
        store.join("10.50.9.2").exists(),
        "host-local reservation missing"
    );
    assert_eq!(
        host.run(&plugnet(), "CHECK", &with_prev(&conf, &res), Some(&att))
            .code,
        0
    );
    host.run(&plugnet(), "DEL", &with_prev(&conf, &res), Some(&att))
        .ok();
    assert!(
        !store.join("10.50.9.2").exists(),
        "host-local reservation left"
    );
    assert!(host.plugnet_veths().is_empty());
}

#[test]
fn plugnet_with_reference_static_ipam() {
    need_root!();
    let host = Host::new("refs");
    let mut conf = conf(&host, "1.0.0", "pnbrefs", "pnbbrs", 16, false);
    conf["ipam"] = json!({"type": "static", "addresses": [{"address": "10.50.16.77/24"}]});
    let ctr = host.container();
    let att = Att::new("refs", &ctr.path(), "eth0");
    let res = host.add(&conf, &att);
    assert_eq!(res["ips"][0]["address"], "10.50.16.77/24");
    assert_eq!(
        res["ips"][0]["gateway"], "10.50.16.1",
        "isDefaultGateway computes the gateway"
    );
    assert!(ctr.ping("10.50.16.1"));
    assert_eq!(
        host.run(&plugnet(), "CHECK", &with_prev(&conf, &res), Some(&att))
            .code,
        0
    );
    host.run(&plugnet(), "DEL", &with_prev(&conf, &res), Some(&att))
        .ok();
    assert!(host.plugnet_veths().is_empty());
}

#[test]
fn two_hundred_containers_on_one_bridge() {
    need_root!();
    let host = Host::new("200");
    let mut conf = conf(&host, "1.0.0", "pnb200", "pnbbr2", 0, false);
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.50.128.0/17"}]]);
    let ctrs: Vec<Ns> = (0..200).map(|_| host.container()).collect();
    let mut addrs = std::collections::HashSet::new();
    for (i, c) in ctrs.iter().enumerate() {
        let r = host.add(&conf, &Att::new(&format!("c200-{i}"), &c.path(), "eth0"));
        assert!(addrs.insert(r["ips"][0]["address"].as_str().unwrap().to_string()));
    }
    assert_eq!(host.plugnet_veths().len(), 200);
    assert!(ctrs[0].ping("10.50.128.201"), "first -> last");
    assert!(ctrs[199].ping("10.50.128.2"), "last -> first");
    for (i, c) in ctrs.iter().enumerate() {
        host.run(
            &plugnet(),
            "DEL",
            &conf,
            Some(&Att::new(&format!("c200-{i}"), &c.path(), "eth0")),
        )
        .ok();
    }
    assert!(host.plugnet_veths().is_empty());
    assert!(host.leases("pnb200").is_empty());
    let bridge_ports = host.ns.sh(&["ip", "link", "show", "master", "pnbbr2"]);
    assert!(bridge_ports.trim().is_empty(), "{bridge_ports}");
}

#[test]
fn concurrent_adds_race_for_a_new_bridge() {
    need_root!();
    let host = Host::new("conc");
    let conf = conf(&host, "1.0.0", "pnbconc", "pnbbrn", 12, true);
    let ctrs: Vec<Ns> = (0..32).map(|_| host.container()).collect();
    // Every process finds the bridge missing and tries to create it at once.
    let results: Vec<Out> = std::thread::scope(|s| {
        let handles: Vec<_> = ctrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (host, conf) = (&host, &conf);
                s.spawn(move || {
                    host.run(
                        &plugnet(),
                        "ADD",
                        conf,
                        Some(&Att::new(&format!("conc-{i}"), &c.path(), "eth0")),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs = std::collections::HashSet::new();
    for r in &results {
        let res = r.ok().json();
        assert!(
            addrs.insert(res["ips"][0]["address"].clone()),
            "duplicate address"
        );
    }
    assert_eq!(
        host.ns
            .link_names()
            .iter()
            .filter(|n| *n == "pnbbrn")
            .count(),
        1
    );
    assert!(ctrs[0].ping("fd50:12::1") && ctrs[31].ping("10.50.12.1"));
    std::thread::scope(|s| {
        for (i, c) in ctrs.iter().enumerate() {
            let (host, conf) = (&host, &conf);
            s.spawn(move || {
                host.run(
                    &plugnet(),
                    "DEL",
                    conf,
                    Some(&Att::new(&format!("conc-{i}"), &c.path(), "eth0")),
                )
                .ok();
            });
        }
    });
    assert!(host.plugnet_veths().is_empty());
    assert!(host.leases("pnbconc").is_empty());
}

#[test]
fn reference_fields_take_effect() {
    need_root!();
    let host = Host::new("fld");
    let mut c = conf(&host, "1.0.0", "pnbfld", "pnbbrf", 13, false);
    c["mtu"] = json!(1280);
    c["hairpinMode"] = json!(true);
    let ctr = host.container();
    let mut att = Att::new("fld", &ctr.path(), "eth0");
    att.args = "IgnoreUnknown=1;MAC=02:50:13:00:00:07;K8S_POD_NAME=x".into();
    let res = host.add(&c, &att);
    assert_eq!(res["interfaces"][2]["mac"], "02:50:13:00:00:07");
    let eth0 = ctr.ip_json(&["link", "show", "eth0"]);
    assert_eq!(eth0[0]["address"], "02:50:13:00:00:07");
    assert_eq!(eth0[0]["mtu"], 1280);
    let veth = res["interfaces"][1]["name"].as_str().unwrap().to_string();
    let hp = host
        .ns
        .sh(&["cat", &format!("/sys/class/net/{veth}/brport/hairpin_mode")]);
    assert_eq!(hp.trim(), "1");
    assert_eq!(
        host.ns.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    assert_eq!(
        ctr.sh(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"])
            .trim(),
        "1"
    );
    host.run(&plugnet(), "DEL", &c, Some(&att)).ok();

    // A different address of the same subnet on the bridge: refused, unless forceAddress.
    host.ns.sh(&["ip", "addr", "flush", "dev", "pnbbrf"]);
    host.ns
        .sh(&["ip", "addr", "add", "10.50.13.254/24", "dev", "pnbbrf"]);
    let out = host.run(&plugnet(), "ADD", &c, Some(&att));
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("different from"),
        "{out:?}"
    );
    assert!(host.plugnet_veths().is_empty() && host.leases("pnbfld").is_empty());
    c["forceAddress"] = json!(true);
    host.add(&c, &att);
    let addrs = host.ns.sh(&["ip", "-4", "addr", "show", "dev", "pnbbrf"]);
    assert!(
        addrs.contains("10.50.13.1/24") && !addrs.contains("10.50.13.254"),
        "{addrs}"
    );
    host.run(&plugnet(), "DEL", &c, Some(&att)).ok();

    // promiscMode on the bridge; the container side name already taken: clean failure.
    let mut p = conf(&host, "1.0.0", "pnbfld2", "pnbbrf2", 14, false);
    p["promiscMode"] = json!(true);
    ctr.sh(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "pnbx0",
    ]);
    let out = host.run(&plugnet(), "ADD", &p, Some(&att));
    assert_ne!(out.code, 0);
    assert!(host.plugnet_veths().is_empty() && host.leases("pnbfld2").is_empty());
    let br = host.ns.sh(&["ip", "link", "show", "pnbbrf2"]);
    assert!(br.contains("PROMISC"), "{br}");
}

#[test]
fn readded_address_is_announced_by_gratuitous_arp() {
    need_root!();
    let host = Host::new("garp");
    let conf = conf(&host, "1.0.0", "pnbgarp", "pnbbra", 15, false);
    let (a, b) = (host.container(), host.container());
    let mut att_a = Att::new("garp-a", &a.path(), "eth0");
    att_a.args = "IP=10.50.15.50".into();
    host.add(&conf, &att_a);
    host.add(&conf, &Att::new("garp-b", &b.path(), "eth0"));
    assert!(b.ping("10.50.15.50"));
    let neigh = |ns: &Ns| -> String {
        let n = ns.ip_json(&["neigh", "show", "10.50.15.50", "dev", "eth0"]);
        n[0]["lladdr"].as_str().unwrap_or_default().to_string()
    };
    let old_mac = neigh(&b);
    assert!(!old_mac.is_empty());
    // The address comes back on a new interface with another MAC: b learns it from the
    // gratuitous ARP sent when the interface comes up, without sending anything itself.
    host.run(&plugnet(), "DEL", &conf, Some(&att_a)).ok();
    let a2 = host.container();
    let mut att_a2 = Att::new("garp-a2", &a2.path(), "eth0");
    att_a2.args = "IP=10.50.15.50".into();
    let res = host.add(&conf, &att_a2);
    let new_mac = res["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert_ne!(new_mac, old_mac);
    let mut seen = String::new();
    for _ in 0..20 {
        seen = neigh(&b);
        if seen == new_mac {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        seen, new_mac,
        "b's neighbour entry still points at the old MAC"
    );
}

#[test]
fn mtu_defaults_to_the_default_route_link() {
    need_root!();
    let host = Host::new("mtu");
    // The "host" uplink: MTU 1350 carrying the default route (an overlay/cloud situation).
    host.ns.sh(&[
        "ip", "link", "add", "pnbup0", "mtu", "1350", "type", "veth", "peer", "name", "pnbup1",
    ]);
    host.ns.sh(&["ip", "link", "set", "pnbup0", "up"]);
    host.ns
        .sh(&["ip", "addr", "add", "10.50.17.1/24", "dev", "pnbup0"]);
    host.ns
        .sh(&["ip", "route", "add", "default", "via", "10.50.17.254"]);
    let conf = conf(&host, "1.0.0", "pnbmtu", "pnbbrm", 18, false);
    let ctr = host.container();
    let att = Att::new("mtu", &ctr.path(), "eth0");
    host.add(&conf, &att);
    assert_eq!(host.ns.ip_json(&["link", "show", "pnbbrm"])[0]["mtu"], 1350);
    assert_eq!(ctr.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1350);
    host.run(&plugnet(), "DEL", &conf, Some(&att)).ok();
}

#[test]
fn ip_masq_lets_containers_reach_outside() {
    need_root!();
    let host = Host::new("masq");
    // "Outside": a namespace behind an uplink of the host with no route back to the
    // container subnet, so only masqueraded traffic gets answers.
    let outside = Ns::new(format!("pnb-masq-{}-out", std::process::id()));
    host.ns.sh(&[
        "ip", "link", "add", "pnbup0", "type", "veth", "peer", "name", "pnbup1",
    ]);
    host.ns
        .sh(&["ip", "link", "set", "pnbup1", "netns", &outside.name]);
    host.ns
        .sh(&["ip", "addr", "add", "10.50.19.1/24", "dev", "pnbup0"]);
    host.ns.sh(&["ip", "link", "set", "pnbup0", "up"]);
    outside.sh(&["ip", "addr", "add", "10.50.19.2/24", "dev", "pnbup1"]);
    outside.sh(&["ip", "link", "set", "pnbup1", "up"]);
    let state = tempfile::Builder::new()
        .prefix("pnb-fw-")
        .tempdir()
        .unwrap();
    let mut c = conf(&host, "1.0.0", "pnbmasq", "pnbbrq", 20, false);
    c["ipMasq"] = json!(true);
    c["firewallStateDir"] = json!(state.path());
    let ctr = host.container();
    let att = Att::new("masq", &ctr.path(), "eth0");
    let res = host.add(&c, &att);
    assert!(
        ctr.ping("10.50.19.2"),
        "masqueraded ping to the outside failed"
    );
    let rules = host.ns.sh(&["nft", "list", "table", "inet", "plugnet"]);
    assert!(rules.contains("10.50.20.2"), "{rules}");
    assert_eq!(
        host.run(&plugnet(), "CHECK", &with_prev(&c, &res), Some(&att))
            .code,
        0
    );
    host.run(&plugnet(), "DEL", &with_prev(&c, &res), Some(&att))
        .ok();
    let rules = host.ns.exec(&["nft", "list", "table", "inet", "plugnet"]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("10.50.20.2"),
        "rule left after DEL"
    );
    // Without ipMasq the outside cannot answer: the test above can fail.
    let mut plain = c.clone();
    plain["ipMasq"] = json!(false);
    host.add(&plain, &att);
    assert!(
        !ctr.ping("10.50.19.2"),
        "outside answered without masquerading"
    );
    host.run(&plugnet(), "DEL", &plain, Some(&att)).ok();
}

#[test]
fn bad_input_is_a_clean_error() {
    need_root!();
    let host = Host::new("bad");
    let ctr = host.container();
    let att = Att::new("bad", &ctr.path(), "eth0");
    let base = conf(&host, "1.0.0", "pnbbad", "pnbbrb", 10, false);
    for (patch, code) in [
        (json!({"hairpinMode": true, "promiscMode": true}), 7),
        (json!({"bridge": "a-name-longer-than-15"}), 7),
        (json!({"mtu": "x"}), 6),
        (json!({"netOut": {"default": "sometimes"}}), 7),
        (json!({"ingressRate": 1000000}), 7),
        (
            json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}),
            7,
        ),
        (json!({"ipam": {"type": "no-such-ipam"}}), 999),
    ] {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        let out = host.run(&plugnet(), "ADD", &c, Some(&att));
        assert_eq!(out.err_code(), code, "{patch}: {out:?}");
        assert!(host.plugnet_veths().is_empty());
    }
    // The plugin's own namespace (here: the test's host namespace) is refused.
    let own = host.ns.path();
    let out = host.run(
        &plugnet(),
        "ADD",
        &base,
        Some(&Att::new("bad", &own, "eth0")),
    );
    assert_eq!(out.err_code(), 4, "{out:?}");
    assert!(!host.ns.link_names().contains(&"eth0".to_string()));
    let out = host.run(
        &plugnet(),
        "ADD",
        &base,
        Some(&Att::new("bad", "/run/netns/pnb-none", "eth0")),
    );
    assert!(
        out.json()["msg"].as_str().unwrap().contains("netns"),
        "{out:?}"
    );
    assert!(host.leases("pnbbad").is_empty());
}

/// The handoff plugnet-shim uses for Docker (`CNI_ARGS` `PLUGNET_HANDOFF_IFNAME`): the
/// container end stays in the plugin's namespace under that name, unconfigured; the runtime
/// moves and addresses it (as Docker does with the name `Join` returns). Checked by doing what
/// Docker does and pinging the gateway, in both modes; DEL leaves nothing.
#[test]
fn handoff_leaves_the_container_end_to_the_runtime() {
    need_root!();
    let host = Host::new("hand");
    for (mode, net) in [("bridge", 7u8), ("routed", 8)] {
        let mut conf = conf(
            &host,
            "1.0.0",
            &format!("pnbhand{net}"),
            "pnbbrh",
            net,
            false,
        );
        if mode == "routed" {
            let c = conf.as_object_mut().unwrap();
            c.remove("bridge");
            c.remove("isDefaultGateway");
            c.insert("mode".into(), json!(mode));
        }
        let ctr = host.container();
        let mut att = Att::new(&format!("hand{net}"), &ctr.path(), "eth0");
        att.args = "PLUGNET_HANDOFF_IFNAME=pnbho0".into();
        let r = host.add(&conf, &att);
        let cidr = r["ips"][0]["address"].as_str().unwrap().to_string();
        assert_eq!(
            r["interfaces"][r["ips"][0]["interface"].as_u64().unwrap() as usize]["sandbox"],
            json!(ctr.path()),
            "{mode}: {r}"
        );
        assert!(
            host.ns.link_names().contains(&"pnbho0".to_string()),
            "{mode}"
        );
        assert_eq!(
            ctr.link_names(),
            vec!["lo"],
            "{mode}: the container is not touched"
        );
        let addrs = host.ns.ip_json(&["-4", "addr", "show", "dev", "pnbho0"]);
        let none = addrs[0]["addr_info"]
            .as_array()
            .is_none_or(|a| a.is_empty());
        assert!(none, "{mode}: unconfigured: {addrs}");

        // What Docker does with the interface Join names.
        host.ns.sh(&[
            "ip",
            "link",
            "set",
            "pnbho0",
            "netns",
            &ctr.path(),
            "name",
            "eth0",
        ]);
        ctr.sh(&["ip", "addr", "add", &cidr, "dev", "eth0"]);
        ctr.sh(&["ip", "link", "set", "eth0", "up"]);
        let gw = if mode == "bridge" {
            let gw = r["ips"][0]["gateway"].as_str().unwrap().to_string();
            ctr.sh(&["ip", "route", "add", "default", "via", &gw]);
            gw
        } else {
            // Routed: the Join reply's next hop (a link-scope route) and default route.
            let hop = r["routes"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|rt| rt["gw"].as_str())
                .unwrap()
                .to_string();
            ctr.sh(&["ip", "route", "add", &hop, "dev", "eth0", "scope", "link"]);
            ctr.sh(&["ip", "route", "add", "default", "via", &hop, "dev", "eth0"]);
            // The host end of a routed pair carries no address: reach the host through its
            // route to the container, from an address of the host's own.
            host.ns
                .sh(&["ip", "addr", "add", "10.50.99.1/32", "dev", "lo"]);
            "10.50.99.1".to_string()
        };
        assert!(
            ctr.ping(&gw),
            "{mode}: {gw} answers through the handed-off pair"
        );

        host.run(&plugnet(), "DEL", &conf, Some(&att)).ok();
        assert!(host.plugnet_veths().is_empty(), "{mode}");
        assert_eq!(ctr.link_names(), vec!["lo"], "{mode}");
        assert!(host.leases(&format!("pnbhand{net}")).is_empty(), "{mode}");
    }
    // A handoff name that is no interface name is a clean error, and nothing is left.
    let conf = conf(&host, "1.0.0", "pnbhand9", "pnbbrh", 9, false);
    let ctr = host.container();
    for bad in ["../x", "pnbtoolongname16"] {
        let mut att = Att::new("handbad", &ctr.path(), "eth0");
        att.args = format!("PLUGNET_HANDOFF_IFNAME={bad}");
        let out = host.run(&plugnet(), "ADD", &conf, Some(&att));
        assert_eq!(out.err_code(), 4, "{bad}: {out:?}");
    }
    assert!(host.leases("pnbhand9").is_empty());
}
