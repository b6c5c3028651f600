//! Kernel tests for the firewall library: real traffic between throwaway namespaces. The
//! "host" is itself a namespace, so plugnet's table, iptables and sysctls touched here are the
//! test's own and the machine's ruleset (dockerd, other tests) is never involved.

mod common;

use common::*;
use plugnet::firewall::{Attachment, Firewall, NetOut, Options, PortMapping, Protocol};

fn fw(dir: &tempfile::TempDir) -> Firewall {
    Firewall::new(Options {
        state_dir: dir.path().to_path_buf(),
        host_firewall: true,
        flush_conntrack: true,
    })
}

fn att(t: &Topo, i: u8, hv: &str) -> Attachment {
    let n = t.n;
    Attachment {
        network: format!("pnfnet{n}"),
        container_id: format!("pnf-ctr-{n}-{i}"),
        ifname: "eth0".into(),
        bridge: t.bridge.clone(),
        host_veth: hv.to_string(),
        container_ips: vec![
            format!("10.7{n}.1.{}/24", i + 1).parse().unwrap(),
            format!("fd7{n}:1::{}/64", i + 1).parse().unwrap(),
        ],
        ip_masq: true,
        port_mappings: vec![],
        net_out: None,
        source_mac: None,
        keep_source_to: Vec::new(),
    }
}

/// Runs a firewall call inside the test's host namespace.
fn on_host<T: Send + 'static>(t: &Topo, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_ns(&t.host.0, f)
}

/// The text of `set NAME { ... }` in an `nft list` output.
fn set_block(rs: &str, name: &str) -> String {
    let start = rs
        .find(&format!("set {name} {{"))
        .unwrap_or_else(|| panic!("no set {name}: {rs}"));
    let end = rs[start..].find('}').unwrap() + start;
    rs[start..end].to_string()
}

fn ruleset(t: &Topo) -> String {
    t.host.out("nft list ruleset")
}

#[test]
fn masquerade_is_seen_from_outside_and_removed() {
    require_root!();
    let mut t = Topo::new("masq", 0);
    let hv = t.add_container(1);
    t.add_container(2);
    let _peer = TcpServer::start(&t.cns(2), "10.70.1.3:7003", "peer");
    let dir = tempfile::tempdir().unwrap();
    let (f, a) = (fw(&dir), att(&t, 1, &hv));
    let _srv = TcpServer::start(&t.outside.0, "10.70.2.2:7000", "out");
    let _srv6 = TcpServer::start(&t.outside.0, "[fd70:2::2]:7000", "out6");
    // Without the firewall the outside has no route back: no answer.
    assert!(tcp_get(&t.cns(1), "10.70.2.2:7000", None).is_err());
    let (f2, a2) = (f.clone(), a.clone());
    on_host(&t, move || f2.apply(&a2)).unwrap();
    assert_eq!(
        tcp_get(&t.cns(1), "10.70.2.2:7000", None).unwrap(),
        "out peer=10.70.2.1"
    );
    assert_eq!(
        tcp_get(&t.cns(1), "[fd70:2::2]:7000", None).unwrap(),
        "out6 peer=fd70:2::1"
    );
    // Same-subnet traffic is not masqueraded: the gateway sees the container's own address.
    let _gw = TcpServer::start(&t.host.0, "10.70.1.1:7001", "gw");
    assert_eq!(
        tcp_get(&t.cns(1), "10.70.1.1:7001", None).unwrap(),
        "gw peer=10.70.1.2"
    );
    // So does a neighbour on the same bridge (also when br_netfilter passes it through NAT).
    t.host
        .exec("sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    assert_eq!(
        tcp_get(&t.cns(1), "10.70.1.3:7003", None).unwrap(),
        "peer peer=10.70.1.2"
    );
    let (f2, a2) = (f.clone(), a.clone());
    on_host(&t, move || f2.check(&a2)).unwrap();
    let (f2, a2) = (f.clone(), a.clone());
    on_host(&t, move || {
        f2.remove(&a2.network, &a2.container_id, &a2.ifname)
    })
    .unwrap();
    assert!(!ruleset(&t).contains("plugnet"), "{}", ruleset(&t));
    assert!(tcp_get(&t.cns(1), "10.70.2.2:7000", None).is_err());
    // Idempotent: again, with nothing in place.
    let f2 = f.clone();
    on_host(&t, move || f2.remove("pnfnet0", "pnf-ctr-0-1", "eth0")).unwrap();
    let (f2, a2) = (f.clone(), a.clone());
    assert!(on_host(&t, move || f2.check(&a2)).is_err());
}

#[test]
fn port_mappings_from_outside_host_localhost_and_neighbour() {
    require_root!();
    let mut t = Topo::new("pm", 1);
    let hv1 = t.add_container(1);
    let hv2 = t.add_container(2);
    let dir = tempfile::tempdir().unwrap();
    let f = fw(&dir);
    let mut a = att(&t, 1, &hv1);
    a.port_mappings = vec![
        PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        },
        PortMapping {
            host_port: 5353,
            container_port: 53,
            protocol: Protocol::Udp,
            host_ip: None,
        },
        // Only on the host's outside address (v4) and its outside IPv6 address.
        PortMapping {
            host_port: 9090,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: Some("10.71.2.1".parse().unwrap()),
        },
        PortMapping {
            host_port: 9090,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: Some("fd71:2::1".parse().unwrap()),
        },
    ];
    let b = att(&t, 2, &hv2);
    let _tcp = TcpServer::start(&t.cns(1), "10.71.1.2:80", "web");
    let _tcp6 = TcpServer::start(&t.cns(1), "[fd71:1::2]:80", "web6");
    let _udp = UdpServer::start(&t.cns(1), "10.71.1.2:53", "dns");
    let (f2, a2, b2) = (f.clone(), a.clone(), b.clone());
    on_host(&t, move || {
        f2.apply(&a2)?;
        f2.apply(&b2)
    })
    .unwrap();
    let rs = ruleset(&t);
    assert!(set_block(&rs, "localnet").contains("\"pnfbr1\""), "{rs}");
    let o = &t.outside.0;
    // From another "host" routed to this one: the container sees the client's address.
    assert_eq!(
        tcp_get(o, "10.71.2.1:8080", None).unwrap(),
        "web peer=10.71.2.2"
    );
    assert_eq!(
        tcp_get(o, "[fd71:2::1]:8080", None).unwrap(),
        "web6 peer=fd71:2::2"
    );
    assert_eq!(udp_get(o, "10.71.2.1:5353").unwrap(), "dns peer=10.71.2.2");
    // hostIP: only that address maps the port.
    assert_eq!(
        tcp_get(o, "10.71.2.1:9090", None).unwrap(),
        "web peer=10.71.2.2"
    );
    assert_eq!(
        tcp_get(o, "[fd71:2::1]:9090", None).unwrap(),
        "web6 peer=fd71:2::2"
    );
    assert!(
        tcp_get(&t.cns(2), "10.71.1.1:9090", None).is_err(),
        "not on another host address"
    );
    // From the host itself, by its own address and by 127.0.0.1.
    let h = &t.host.0;
    assert!(tcp_get(h, "10.71.2.1:8080", None)
        .unwrap()
        .starts_with("web peer="));
    assert_eq!(
        tcp_get(h, "127.0.0.1:8080", None).unwrap(),
        "web peer=10.71.1.1"
    );
    assert!(udp_get(h, "127.0.0.1:5353")
        .unwrap()
        .starts_with("dns peer="));
    // Hairpin: the neighbour on the same bridge through the host port.
    assert_eq!(
        tcp_get(&t.cns(2), "10.71.2.1:8080", None).unwrap(),
        "web peer=10.71.1.1",
        "{}",
        ruleset(&t)
    );
    assert!(udp_get(&t.cns(2), "10.71.1.1:5353")
        .unwrap()
        .starts_with("dns peer="));
    // route_localnet is on for the bridge, so loopback addresses arriving from it are dropped
    // by the guard chain (CVE-2020-8558); shown by the ruleset (no traffic test: a container
    // cannot easily be made to send such packets).
    let rs = ruleset(&t);
    assert!(
        rs.contains("iifname @localnet ip daddr 127.0.0.0/8 drop"),
        "{rs}"
    );
    assert_eq!(
        t.host
            .out("cat /proc/sys/net/ipv4/conf/pnfbr1/route_localnet")
            .trim(),
        "1"
    );
    // The same host port for another container is a clear conflict.
    let mut c = b.clone();
    c.container_id = "pnf-ctr-1-3".into();
    c.container_ips = vec!["10.71.1.9/24".parse().unwrap()];
    c.port_mappings = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: None,
    }];
    let f2 = f.clone();
    let err = on_host(&t, move || f2.apply(&c)).unwrap_err();
    assert!(err.to_string().contains("port mapping conflict"), "{err}");
    let (f2, a2) = (f.clone(), a.clone());
    on_host(&t, move || f2.check(&a2)).unwrap();
    // Remove the mapped container: the port is closed, the neighbour still masquerades.
    let f2 = f.clone();
    on_host(&t, move || f2.remove("pnfnet1", "pnf-ctr-1-1", "eth0")).unwrap();
    assert!(tcp_get(o, "10.71.2.1:8080", None).is_err());
    let rs = ruleset(&t);
    assert!(!rs.contains("-dnat"), "{rs}");
    assert!(
        !set_block(&rs, "localnet").contains("elements"),
        "localnet goes with the last mapping: {rs}"
    );
    assert!(set_block(&rs, "members4").contains("10.71.1.3"), "{rs}");
    assert!(!set_block(&rs, "members4").contains("10.71.1.2"), "{rs}");
    let f2 = f.clone();
    on_host(&t, move || f2.remove("pnfnet1", "pnf-ctr-1-2", "eth0")).unwrap();
    assert!(!ruleset(&t).contains("plugnet"));
    assert_eq!(
        t.host
            .out("cat /proc/sys/net/ipv4/conf/pnfbr1/route_localnet")
            .trim(),
        "0"
    );
}

fn ping(ns: &str, to: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", to,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn egress_rules_deny_and_allow_with_real_connections() {
    require_root!();
    let mut t = Topo::new("egr", 2);
    let hv1 = t.add_container(1);
    let hv2 = t.add_container(2);
    let dir = tempfile::tempdir().unwrap();
    let f = fw(&dir);
    let mut a = att(&t, 1, &hv1);
    a.net_out = Some(
        serde_json::from_str::<NetOut>(
            r#"{"default":"deny","rules":[
                {"protocol":"tcp","networks":[{"start":"10.72.2.2","end":"10.72.2.2"}],"ports":[{"start":7000,"end":7000}]},
                {"protocol":"icmp","icmps":{"type":8,"code":0}}]}"#,
        )
        .unwrap(),
    );
    let mut b = att(&t, 2, &hv2);
    b.net_out = Some(
        serde_json::from_str::<NetOut>(
            r#"{"default":"allow","rules":[{"protocol":"tcp","networks":[{"cidr":"10.72.2.0/24"}],"ports":[{"start":7001,"end":7001}]},{"protocol":"icmp"}]}"#,
        )
        .unwrap(),
    );
    let o = t.outside.0.clone();
    let _s0 = TcpServer::start(&o, "10.72.2.2:7000", "s7000");
    let _s1 = TcpServer::start(&o, "10.72.2.2:7001", "s7001");
    let _gw = TcpServer::start(&t.host.0, "10.72.1.1:7002", "gw");
    let (f2, a2, b2) = (f.clone(), a.clone(), b.clone());
    on_host(&t, move || {
        f2.apply(&a2)?;
        f2.apply(&b2)
    })
    .unwrap();
    let (c1, c2) = (t.cns(1), t.cns(2));
    // Default deny + allow rule: the allowed port answers, the other port on the same server not.
    assert_eq!(
        tcp_get(&c1, "10.72.2.2:7000", None).unwrap(),
        "s7000 peer=10.72.2.1"
    );
    assert!(tcp_get(&c1, "10.72.2.2:7001", None).is_err());
    assert!(
        ping(&c1, "10.72.2.2"),
        "icmp echo is allowed for container 1"
    );
    // Own network is not affected by netOut.
    assert!(tcp_get(&c1, "10.72.1.1:7002", None).is_ok());
    assert!(ping(&c1, "10.72.1.3"));
    // Default allow + deny rules: the mirror image.
    assert!(tcp_get(&c2, "10.72.2.2:7000", None).is_ok());
    assert!(tcp_get(&c2, "10.72.2.2:7001", None).is_err());
    assert!(!ping(&c2, "10.72.2.2"), "icmp is denied for container 2");
    let (f2, a2) = (f.clone(), a.clone());
    on_host(&t, move || f2.check(&a2)).unwrap();
    let f2 = f.clone();
    on_host(&t, move || {
        f2.remove("pnfnet2", "pnf-ctr-2-1", "eth0")?;
        f2.remove("pnfnet2", "pnf-ctr-2-2", "eth0")
    })
    .unwrap();
    let rs = ruleset(&t);
    assert!(!rs.contains("c-") && !rs.contains("plugnet"), "{rs}");
}

#[test]
fn docker_host_forward_drop_is_opened_minimally_and_cleaned() {
    require_root!();
    let mut t = Topo::new("dkr", 3);
    let hv1 = t.add_container(1);
    let hv2 = t.add_container(2);
    let h = t.host.0.clone();
    // What dockerd leaves on a host: FORWARD DROP, DOCKER-USER, br_netfilter calling iptables.
    sh(&format!(
        "ip netns exec {h} sh -c 'sysctl -qw net.bridge.bridge-nf-call-iptables=1 && iptables -P FORWARD DROP && \
         iptables -N DOCKER-USER && iptables -A FORWARD -j DOCKER-USER && iptables -A DOCKER-USER -j RETURN'"
    ));
    let (c1, c2) = (t.cns(1), t.cns(2));
    assert!(
        !ping(&c1, "10.73.1.3"),
        "FORWARD DROP must block bridged traffic before plugnet"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = fw(&dir);
    let mut a = att(&t, 1, &hv1);
    a.port_mappings = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: None,
    }];
    let b = att(&t, 2, &hv2);
    let _web = TcpServer::start(&c1, "10.73.1.2:80", "web");
    let _out = TcpServer::start(&t.outside.0, "10.73.2.2:7000", "out");
    let (f2, a2, b2) = (f.clone(), a.clone(), b.clone());
    on_host(&t, move || {
        f2.apply(&a2)?;
        f2.apply(&b2)
    })
    .unwrap();
    assert!(ping(&c1, "10.73.1.3"), "same bridge");
    assert!(ping(&c1, "10.73.1.1"), "gateway");
    assert_eq!(
        tcp_get(&c2, "10.73.2.2:7000", None).unwrap(),
        "out peer=10.73.2.1",
        "masqueraded out"
    );
    assert_eq!(
        tcp_get(&t.outside.0, "10.73.2.1:8080", None).unwrap(),
        "web peer=10.73.2.2",
        "port mapping"
    );
    assert_eq!(
        tcp_get(&c2, "10.73.2.1:8080", None).unwrap(),
        "web peer=10.73.1.1",
        "hairpin"
    );
    let ipt = t.host.out("iptables -S");
    assert!(
        ipt.contains("-A DOCKER-USER -m comment --comment plugnet -j PLUGNET-FORWARD"),
        "{ipt}"
    );
    assert_eq!(ipt.matches("-j PLUGNET-FORWARD").count(), 1, "{ipt}");
    let (f2, a2) = (f.clone(), a.clone());
    on_host(&t, move || f2.check(&a2)).unwrap();
    // Docker restarts and re-creates DOCKER-USER without our jump: CHECK says so, reload fixes.
    t.host
        .exec("sh -c 'iptables -F DOCKER-USER && iptables -A DOCKER-USER -j RETURN'");
    assert!(!ping(&c1, "10.73.1.3"));
    let (f2, a2) = (f.clone(), a.clone());
    let err = on_host(&t, move || f2.check(&a2)).unwrap_err();
    assert!(err.to_string().contains("PLUGNET-FORWARD"), "{err}");
    let f2 = f.clone();
    on_host(&t, move || f2.reload()).unwrap();
    assert!(ping(&c1, "10.73.1.3"), "same bridge after reload");
    assert_eq!(
        t.host
            .out("iptables -S")
            .matches("-j PLUGNET-FORWARD")
            .count(),
        1
    );
    // The outside cannot open connections to unmapped container ports (no blanket accept).
    let _ssh = TcpServer::start(&c1, "10.73.1.2:22", "ssh");
    sh(&format!(
        "ip -n {} route add 10.73.1.0/24 via 10.73.2.1",
        t.outside.0
    ));
    assert!(
        tcp_get(&t.outside.0, "10.73.1.2:22", None).is_err(),
        "unmapped port must stay closed"
    );
    // Last attachment on the bridge removes everything plugnet added to iptables.
    let f2 = f.clone();
    on_host(&t, move || {
        f2.remove("pnfnet3", "pnf-ctr-3-1", "eth0")?;
        f2.remove("pnfnet3", "pnf-ctr-3-2", "eth0")
    })
    .unwrap();
    let ipt = t.host.out("iptables -S");
    assert!(
        !ipt.contains("PLUGNET") && !ipt.contains("plugnet"),
        "{ipt}"
    );
    assert!(
        ipt.contains("-P FORWARD DROP") && ipt.contains("-A DOCKER-USER -j RETURN"),
        "{ipt}"
    );
    assert!(!ruleset(&t).contains("table inet plugnet"));
}

#[test]
fn reload_after_ruleset_flush_and_add_self_heals() {
    require_root!();
    let mut t = Topo::new("rld", 4);
    let hv1 = t.add_container(1);
    let hv2 = t.add_container(2);
    let hv3 = t.add_container(3);
    let dir = tempfile::tempdir().unwrap();
    let f = fw(&dir);
    let mut a = att(&t, 1, &hv1);
    a.port_mappings = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: None,
    }];
    let b = att(&t, 2, &hv2);
    let c = att(&t, 3, &hv3);
    let _web = TcpServer::start(&t.cns(1), "10.74.1.2:80", "web");
    let _out = TcpServer::start(&t.outside.0, "10.74.2.2:7000", "out");
    let (f2, a2, b2) = (f.clone(), a.clone(), b.clone());
    on_host(&t, move || {
        f2.apply(&a2)?;
        f2.apply(&b2)
    })
    .unwrap();
    let works = |t: &Topo| {
        tcp_get(&t.outside.0, "10.74.2.1:8080", None).is_ok()
            && tcp_get(&t.cns(2), "10.74.2.2:7000", None).is_ok()
    };
    assert!(works(&t));
    // The whole ruleset of this (test-owned) host namespace is flushed, as `nft flush ruleset`
    // or a firewalld reload would on a real host.
    t.host.exec("nft flush ruleset");
    assert!(!works(&t));
    let (f2, a2) = (f.clone(), a.clone());
    assert!(
        on_host(&t, move || f2.check(&a2)).is_err(),
        "CHECK notices the missing rules"
    );
    let f2 = f.clone();
    let report = on_host(&t, move || f2.reload()).unwrap();
    assert_eq!(report.attachments, 2);
    assert!(works(&t));
    let f2 = f.clone();
    on_host(&t, move || f2.reload()).unwrap();
    assert!(works(&t), "reload is idempotent");
    // Flushed again, then an ADD arrives before anyone reloads: it rebuilds everything.
    t.host.exec("nft flush ruleset");
    let (f2, c2) = (f.clone(), c.clone());
    on_host(&t, move || f2.apply(&c2)).unwrap();
    assert!(works(&t));
    assert_eq!(
        tcp_get(&t.cns(3), "10.74.2.2:7000", None).unwrap(),
        "out peer=10.74.2.1"
    );
    let f2 = f.clone();
    on_host(&t, move || {
        for i in 1..=3 {
            f2.remove("pnfnet4", &format!("pnf-ctr-4-{i}"), "eth0")?;
        }
        Ok::<_, plugnet::firewall::FirewallError>(())
    })
    .unwrap();
    assert!(!ruleset(&t).contains("plugnet"));
    assert!(std::fs::read_dir(dir.path().join("attachments"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn stale_udp_conntrack_is_flushed_on_add() {
    require_root!();
    let mut t = Topo::new("ct", 6);
    let hv = t.add_container(1);
    let dir = tempfile::tempdir().unwrap();
    let f = fw(&dir);
    let mut a = att(&t, 1, &hv);
    a.port_mappings = vec![PortMapping {
        host_port: 5353,
        container_port: 53,
        protocol: Protocol::Udp,
        host_ip: None,
    }];
    let _udp = UdpServer::start(&t.cns(1), "10.76.1.2:53", "dns");
    // A client keeps sending from one source port before the mapping exists: conntrack
    // remembers the flow as "to the host itself", which would shadow the mapping.
    let o = t.outside.0.clone();
    // Connection tracking is on in a namespace once some rule uses it (on real hosts: always).
    t.host.exec("nft 'add table inet pnfct; add chain inet pnfct c { type filter hook prerouting priority 0; }; add rule inet pnfct c ct state new counter'");
    let sock = in_ns(&o, || std::net::UdpSocket::bind("10.76.2.2:40000").unwrap());
    sock.set_read_timeout(Some(std::time::Duration::from_millis(400)))
        .unwrap();
    sock.send_to(b"early", "10.76.2.1:5353").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(t
        .host
        .out("conntrack -L -p udp --orig-port-dst 5353")
        .contains("dport=5353"));
    let (f2, a2) = (f.clone(), a.clone());
    on_host(&t, move || f2.apply(&a2)).unwrap();
    let mut buf = [0u8; 128];
    let mut answer = None;
    for _ in 0..3 {
        sock.send_to(b"again", "10.76.2.1:5353").unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
    }
    assert_eq!(
        answer.as_deref(),
        Some("dns peer=10.76.2.2"),
        "the same UDP flow reaches the container"
    );
    // Removing our table only (what `plugnet firewall reload` repairs), then reload.
    t.host.exec("nft delete table inet plugnet");
    assert!(udp_get(&o, "10.76.2.1:5353").is_err());
    let f2 = f.clone();
    on_host(&t, move || f2.reload()).unwrap();
    assert_eq!(udp_get(&o, "10.76.2.1:5353").unwrap(), "dns peer=10.76.2.2");
    let f2 = f.clone();
    on_host(&t, move || f2.remove("pnfnet6", "pnf-ctr-6-1", "eth0")).unwrap();
    assert!(
        !t.host
            .out("conntrack -L -p udp --orig-port-dst 5353")
            .contains("dport=5353"),
        "flushed on DEL too"
    );
}

#[test]
fn gc_removes_attachments_not_in_the_valid_list() {
    require_root!();
    let mut t = Topo::new("gc", 7);
    let hv1 = t.add_container(1);
    let hv2 = t.add_container(2);
    let dir = tempfile::tempdir().unwrap();
    let f = fw(&dir);
    let mut a = att(&t, 1, &hv1);
    a.port_mappings = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: None,
    }];
    let b = att(&t, 2, &hv2);
    let (f2, a2, b2) = (f.clone(), a.clone(), b.clone());
    let removed = on_host(&t, move || {
        f2.apply(&a2)?;
        f2.apply(&b2)?;
        f2.gc(
            "pnfnet7",
            &[("pnf-ctr-7-2".to_string(), "eth0".to_string())],
        )
    })
    .unwrap();
    assert_eq!(removed, 1);
    let rs = ruleset(&t);
    assert!(
        !rs.contains("10.77.1.2") && rs.contains("10.77.1.3"),
        "{rs}"
    );
    let (f2, b2) = (f.clone(), b.clone());
    on_host(&t, move || f2.check(&b2)).unwrap();
    let f2 = f.clone();
    assert_eq!(on_host(&t, move || f2.gc("pnfnet7", &[])).unwrap(), 1);
    assert!(!ruleset(&t).contains("plugnet"));
}

#[test]
fn reload_of_many_attachments_is_one_big_transaction() {
    require_root!();
    // 1500 attachments: the reload batch spans many pages (regression: a batch sent page by
    // page is not one transaction), and thousands of acks must fit the receive buffer.
    let t = Topo::new("many", 8);
    let dir = tempfile::tempdir().unwrap();
    let f = fw(&dir);
    let bridge = t.bridge.clone();
    let f2 = f.clone();
    let report = on_host(&t, move || {
        for i in 0..1500u32 {
            let a = Attachment {
                network: "pnfnet8".into(),
                container_id: format!("pnf-many-{i}"),
                ifname: "eth0".into(),
                bridge: bridge.clone(),
                host_veth: format!("pnfm{i}"),
                container_ips: vec![format!("10.78.{}.{}/16", i / 250, i % 250 + 2)
                    .parse()
                    .unwrap()],
                ip_masq: true,
                port_mappings: vec![PortMapping {
                    host_port: 20000 + i as u16,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                }],
                net_out: None,
                source_mac: None,
                keep_source_to: Vec::new(),
            };
            f2.apply(&a)?;
        }
        f2.reload()
    })
    .unwrap();
    assert_eq!(report.attachments, 1500);
    let out = t.host.out("nft list map inet plugnet pm4_any");
    assert_eq!(
        out.matches(" : 10.78.").count(),
        1500,
        "{}",
        &out[..out.len().min(2000)]
    );
    let f2 = f.clone();
    on_host(&t, move || {
        for i in 0..1500u32 {
            f2.remove("pnfnet8", &format!("pnf-many-{i}"), "eth0")?;
        }
        Ok::<_, plugnet::firewall::FirewallError>(())
    })
    .unwrap();
    assert!(!ruleset(&t).contains("plugnet"));
}

#[test]
fn forward_drop_policy_of_iptables_nft_is_seen() {
    require_root!();
    let t = Topo::new("fwdp", 0);
    let may_drop = |t: &Topo| on_host(t, || plugnet::firewall::host_forward_may_drop(true, false));
    t.host.out("sysctl -qw net.ipv4.ip_forward=1");
    assert!(
        !may_drop(&t),
        "a fresh namespace that forwards has no FORWARD chain"
    );
    t.host.out("iptables -P FORWARD DROP");
    assert!(
        may_drop(&t),
        "FORWARD policy DROP (as dockerd sets it) must be seen"
    );
    t.host.out("iptables -P FORWARD ACCEPT");
    assert!(!may_drop(&t), "FORWARD policy ACCEPT drops nothing");
    // Forwarding off: a dockerd started later turns it on and sets DROP, so the rules are
    // needed beforehand.
    t.host.out("sysctl -qw net.ipv4.ip_forward=0");
    assert!(
        may_drop(&t),
        "forwarding off: a later dockerd would set DROP"
    );
    assert!(
        !on_host(&t, || plugnet::firewall::host_forward_may_drop(
            false, false
        )),
        "no family asked about"
    );
}

#[test]
fn host_nftables_chains_that_drop_hold_exactly_the_bridges_rules() {
    require_root!();
    let t = Topo::new("hnft", 9);
    let hard = |t: &Topo| {
        t.host.exec("nft add table inet pnfhard");
        t.host.exec(
            "nft 'add chain inet pnfhard drops { type filter hook forward priority 0; policy drop; }'",
        );
        t.host.exec(
            "nft 'add chain inet pnfhard accepts { type filter hook forward priority 3; policy accept; }'",
        );
    };
    hard(&t);
    t.host.exec("nft add table ip pnfhard4");
    t.host.exec(
        "nft 'add chain ip pnfhard4 drops { type filter hook forward priority 0; policy drop; }'",
    );
    let count = |chain: &str, bridge: &str| {
        t.host
            .out(&format!("nft list chain {chain}"))
            .matches(&format!("comment \"plugnet bridge {bridge}\""))
            .count()
    };
    let sync = |t: &Topo, bridges: &[&str]| {
        let b: std::collections::BTreeSet<String> = bridges.iter().map(|s| s.to_string()).collect();
        on_host(t, move || {
            plugnet::firewall::hostfw::sync(&b, plugnet::firewall::hostfw::Families::NONE)
        })
        .unwrap()
    };
    let in_place = |t: &Topo, bridges: &[&str]| {
        let b: Vec<String> = bridges.iter().map(|s| s.to_string()).collect();
        on_host(t, move || plugnet::firewall::hostfw::in_place(&b)).unwrap()
    };
    // The families are told apart: an `ip` chain drops IPv4 only.
    let drops =
        |t: &Topo, v4, v6| on_host(t, move || plugnet::firewall::host_forward_may_drop(v4, v6));
    assert!(drops(&t, true, false) && drops(&t, false, true));
    t.host.exec("nft delete table inet pnfhard");
    assert!(drops(&t, true, false) && !drops(&t, false, true));
    hard(&t);

    // firewalld's shape: policy accept, a final rule rejecting everything; and a chain whose
    // last rule rejects only some packets (it does not drop what it does not accept).
    t.host.exec("nft add table inet pnfwalld");
    t.host.exec(
        "nft 'add chain inet pnfwalld filter_FORWARD { type filter hook forward priority 10; policy accept; }'",
    );
    t.host
        .exec("nft add rule inet pnfwalld filter_FORWARD ct state established,related accept");
    t.host.exec(
        "nft add rule inet pnfwalld filter_FORWARD counter reject with icmpx admin-prohibited",
    );
    t.host.exec(
        "nft 'add chain inet pnfwalld some { type filter hook forward priority 11; policy accept; }'",
    );
    t.host
        .exec("nft add rule inet pnfwalld some ip saddr 192.0.2.1 reject");
    sync(&t, &["pnfb1", "pnfb2"]);
    for chain in [
        "inet pnfhard drops",
        "ip pnfhard4 drops",
        "inet pnfwalld filter_FORWARD",
    ] {
        assert_eq!(count(chain, "pnfb1"), 4, "{chain}");
        assert_eq!(count(chain, "pnfb2"), 4, "{chain}");
    }
    assert_eq!(count("inet pnfhard accepts", "pnfb1"), 0);
    assert_eq!(count("inet pnfwalld some", "pnfb1"), 0);
    // The host's final reject stays last.
    let fwd = t.host.out("nft list chain inet pnfwalld filter_FORWARD");
    assert!(
        fwd.trim_end()
            .trim_end_matches('}')
            .trim_end()
            .trim_end_matches('}')
            .trim_end()
            .ends_with("reject with icmpx admin-prohibited"),
        "{fwd}"
    );
    // Idempotent: nothing doubled.
    sync(&t, &["pnfb1", "pnfb2"]);
    assert_eq!(count("inet pnfhard drops", "pnfb1"), 4);
    assert!(in_place(&t, &["pnfb1", "pnfb2"]));
    // A rule lost by hand: repair sees it, a sync completes the bridge's rules.
    let listed = t.host.out("nft -a list chain inet pnfhard drops");
    let handle = listed
        .lines()
        .find(|l| l.contains("plugnet bridge pnfb1"))
        .and_then(|l| l.rsplit("handle ").next())
        .unwrap()
        .trim()
        .to_string();
    t.host.exec(&format!(
        "nft delete rule inet pnfhard drops handle {handle}"
    ));
    assert!(!in_place(&t, &["pnfb1", "pnfb2"]));
    sync(&t, &["pnfb1", "pnfb2"]);
    assert_eq!(count("inet pnfhard drops", "pnfb1"), 4);
    // One bridge goes; a chain whose policy now accepts loses its rules.
    t.host
        .exec("nft 'add chain ip pnfhard4 drops { policy accept; }'");
    sync(&t, &["pnfb2"]);
    assert_eq!(count("inet pnfhard drops", "pnfb1"), 0);
    assert_eq!(count("inet pnfhard drops", "pnfb2"), 4);
    assert_eq!(count("ip pnfhard4 drops", "pnfb2"), 0);
    assert_eq!(count("inet pnfwalld filter_FORWARD", "pnfb2"), 4);
    // The last bridge goes: the host's chains are as they were.
    sync(&t, &[]);
    let rs = t.host.out("nft list ruleset");
    assert!(!rs.contains("plugnet"), "{rs}");
    assert!(rs.contains("policy drop"), "{rs}");
}
