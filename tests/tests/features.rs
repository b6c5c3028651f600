//! Black-box tests of the bridge plugin's features (issue 6): port mappings, egress rules,
//! bandwidth, ipMasq, CHECK, `plugnet firewall reload`, and chaining with the reference
//! portmap — the real `plugnet` binary run the way a runtime runs it, real traffic between
//! namespaces. Every test owns its "host" namespace (so nftables/iptables rules and sysctls
//! never touch the machine's real host), an "outside" namespace routed to it, and its
//! containers; all are removed on drop, also on failure.
//! Names: netns `pnx-<tag>-<pid>[-c<n>]`, links `pnx…`; subnets 10.100-10.109.x.

mod bridge_support;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bridge_support::*;
use plugnet::netns::Netns;
use serde_json::{json, Value};

fn need_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "feature tests need root (network namespaces, nftables, tc)"
    );
}

/// PATH for a host without iptables binaries: no `iptables`, `iptables-restore` (or anything
/// else) to run.
const NO_IPTABLES: &str = "/nonexistent-pnx";

/// The test's world: host namespace (plugin runs here), an "outside" namespace routed to it
/// over `pnxo<n>` (host 10.101.<n>.1, outside 10.101.<n>.2), a firewall state dir.
struct World {
    host: Host,
    outside: Ns,
    n: u8,
    fw_dir: tempfile::TempDir,
}

impl World {
    fn new(tag: &str, n: u8) -> World {
        let host = Host::with_prefix("pnx", tag);
        let outside = Ns::new(format!("pnx-{tag}-{}-out", std::process::id()));
        let (h, o) = (format!("pnxo{n}h"), format!("pnxo{n}o"));
        host.ns.sh(&[
            "ip",
            "link",
            "add",
            &h,
            "type",
            "veth",
            "peer",
            "name",
            &o,
            "netns",
            &outside.name,
        ]);
        host.ns
            .sh(&["ip", "addr", "add", &format!("10.101.{n}.1/24"), "dev", &h]);
        host.ns.sh(&["ip", "link", "set", &h, "up"]);
        host.ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        outside.sh(&["ip", "addr", "add", &format!("10.101.{n}.2/24"), "dev", &o]);
        outside.sh(&["ip", "link", "set", &o, "up"]);
        outside.sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.101.{n}.1"),
        ]);
        World {
            host,
            outside,
            n,
            fw_dir: tempfile::Builder::new()
                .prefix("pnx-fw-")
                .tempdir()
                .unwrap(),
        }
    }

    fn host_ip(&self) -> String {
        format!("10.101.{}.1", self.n)
    }
    fn outside_ip(&self) -> String {
        format!("10.101.{}.2", self.n)
    }

    /// A plugnet config on bridge `pnxbr<n>`, 10.100.<n>.0/24, with `extra` merged in.
    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": format!("pnxnet{}", self.n),
            "type": "plugnet",
            "bridge": format!("pnxbr{}", self.n),
            "isDefaultGateway": true,
            "firewallStateDir": self.fw_dir.path(),
            "ipam": {
                "type": "plugnet-ipam",
                "dataDir": self.host.data_dir.path(),
                "ranges": [[{"subnet": format!("10.100.{}.0/24", self.n)}]],
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// ADD a fresh container; returns (namespace, attachment, result).
    fn add(&self, conf: &Value, id: &str) -> (Ns, Att, Value) {
        let ctr = self.host.container();
        let att = Att::new(id, &ctr.path(), "eth0");
        let res = self.host.add(conf, &att);
        (ctr, att, res)
    }

    fn del(&self, conf: &Value, att: &Att) {
        self.host.run(&plugnet(), "DEL", conf, Some(att)).ok();
    }

    /// The plugin run with `tools` as its PATH: a host whose tools differ from this machine's
    /// ([`NO_IPTABLES`], a directory of iptables-legacy's).
    fn run_on(&self, tools: &Path, cmd: &str, conf: &Value, att: &Att) -> Out {
        let mut c = Command::new(plugnet());
        cni_env(&mut c, cmd, &att.id, &att.netns).env("PATH", tools);
        self.host.spawn_in(c, &serde_json::to_vec(conf).unwrap())
    }

    /// [`World::add`] on a host whose tools are `tools` (see [`World::run_on`]).
    fn add_on(&self, tools: &Path, conf: &Value, id: &str) -> (Ns, Att, Value) {
        let ctr = self.host.container();
        let att = Att::new(id, &ctr.path(), "eth0");
        let out = self.run_on(tools, "ADD", conf, &att);
        assert_eq!(out.code, 0, "ADD {id}: {out:?}");
        (ctr, att, out.json())
    }

    /// [`World::del`] on a host whose tools are `tools` (see [`World::run_on`]).
    fn del_on(&self, tools: &Path, conf: &Value, att: &Att) {
        let out = self.run_on(tools, "DEL", conf, att);
        assert_eq!(out.code, 0, "DEL {}: {out:?}", att.id);
    }

    /// `plugnet firewall <args>` inside the host namespace.
    fn firewall(&self, args: &[&str]) -> Out {
        self.firewall_cmd(Command::new(plugnet()), args)
    }

    /// [`World::firewall`] on a host whose tools are `tools` (see [`World::run_on`]).
    fn firewall_on(&self, tools: &Path, args: &[&str]) -> Out {
        let mut c = Command::new(plugnet());
        c.env("PATH", tools);
        self.firewall_cmd(c, args)
    }

    fn firewall_cmd(&self, mut c: Command, args: &[&str]) -> Out {
        c.arg("firewall")
            .args(args)
            .arg("--state-dir")
            .arg(self.fw_dir.path())
            .env_remove("CNI_COMMAND")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.host.spawn_in(c, b"")
    }

    /// Nothing of plugnet's left in the host namespace: no nft table/chain, no tbf qdisc, no ifb.
    fn assert_clean(&self) {
        let rules = self.host.ns.sh(&["nft", "list", "ruleset"]);
        assert!(!rules.contains("plugnet"), "{rules}");
        assert!(!rules.contains("chain c-"), "{rules}");
        let q = self.host.ns.sh(&["tc", "qdisc", "show"]);
        assert!(!q.contains("tbf"), "{q}");
        let links = self.host.ns.link_names();
        assert!(
            !links.iter().any(|l| l.starts_with("pnb") && l.len() == 15),
            "{links:?}"
        );
        assert!(self.host.plugnet_veths().is_empty());
    }
}

/// A TCP or UDP server inside a namespace answering every request with `reply` (or, with
/// `reply == "peer"`, the peer address it sees); stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn tcp(ns: &Ns, port: u16, reply: &str) -> Server {
        let l = tcp_listener(ns, port);
        let reply = reply.to_string();
        Server::spawn(move || match l.accept() {
            Ok((mut s, peer)) => {
                let r = if reply == "peer" {
                    peer.ip().to_string()
                } else {
                    reply.clone()
                };
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(r.as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        })
    }

    fn udp(ns: &Ns, port: u16, reply: &str) -> Server {
        let s = Netns::open(ns.path())
            .unwrap()
            .run(move || UdpSocket::bind(("0.0.0.0", port)))
            .unwrap()
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let reply = reply.to_string();
        Server::spawn(move || {
            let mut buf = [0u8; 64];
            if let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(reply.as_bytes(), peer);
            }
        })
    }

    fn spawn(mut step: impl FnMut() + Send + 'static) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                step();
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a UDP server at `addr` answers to a client in `ns` (three tries of 1 s).
fn udp_get(ns: &Ns, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    Netns::open(ns.path())
        .unwrap()
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            for _ in 0..3 {
                s.send_to(b"hi", addr).ok()?;
                let mut buf = [0u8; 64];
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            None
        })
        .unwrap()
}

fn with_runtime(conf: &Value, rc: Value) -> Value {
    let mut c = conf.clone();
    c["runtimeConfig"] = rc;
    c
}

#[test]
fn port_mappings_answer_from_everywhere_and_go_away() {
    need_root();
    let w = World::new("pm", 1);
    let conf = with_runtime(
        &w.conf(json!({})),
        json!({"portMappings": [
            {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 18053, "containerPort": 53, "protocol": "udp"}]}),
    );
    let plain = w.conf(json!({}));
    let (ctr, att, res) = w.add(&conf, "pnx-pm-svc");
    let (nb, nb_att, _) = w.add(&plain, "pnx-pm-nb");
    let _tcp = Server::tcp(&ctr, 80, "tcp-hello");
    let _udp = Server::udp(&ctr, 53, "udp-hello");
    // The mapping's own address answers directly too (sanity of the servers).
    assert_eq!(
        tcp_get(&nb, &format!("{}:80", ip_of(&res))).as_deref(),
        Some("tcp-hello")
    );
    let hp = |p: u16| format!("{}:{p}", w.host_ip());
    for (who, ns) in [
        ("client", &w.outside),
        ("host", &w.host.ns),
        ("neighbour", &nb),
    ] {
        assert_eq!(
            tcp_get(ns, &hp(18080)).as_deref(),
            Some("tcp-hello"),
            "tcp from {who}"
        );
        assert_eq!(
            udp_get(ns, &hp(18053)).as_deref(),
            Some("udp-hello"),
            "udp from {who}"
        );
    }
    assert_eq!(
        tcp_get(&w.host.ns, "127.0.0.1:18080").as_deref(),
        Some("tcp-hello"),
        "tcp from host via 127.0.0.1"
    );
    assert_eq!(
        udp_get(&w.host.ns, "127.0.0.1:18053").as_deref(),
        Some("udp-hello"),
        "udp from host via 127.0.0.1"
    );
    // CHECK sees the rules; after someone deletes plugnet's table it does not, and
    // `plugnet firewall reload` brings everything back.
    let checked = with_prev(&conf, &res);
    w.host.run(&plugnet(), "CHECK", &checked, Some(&att)).ok();
    w.host.ns.sh(&["nft", "delete", "table", "inet", "plugnet"]);
    assert_eq!(tcp_get(&w.outside, &hp(18080)), None);
    let out = w.host.run(&plugnet(), "CHECK", &checked, Some(&att));
    assert_ne!(out.code, 0, "{out:?}");
    let out = w.firewall(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\"attachments\": 1"), "{out:?}");
    w.host.run(&plugnet(), "CHECK", &checked, Some(&att)).ok();
    // `repair` (what plugnet-shim runs every 30 s) is a no-op while nothing is lost, and
    // re-applies once the table is gone again.
    let out = w.firewall(&["repair"]);
    assert!(out.stdout.contains("\"reloaded\": false"), "{out:?}");
    w.host.ns.sh(&["nft", "delete", "table", "inet", "plugnet"]);
    let out = w.firewall(&["repair"]);
    assert!(out.stdout.contains("\"reloaded\": true"), "{out:?}");
    w.host.run(&plugnet(), "CHECK", &checked, Some(&att)).ok();
    assert_eq!(
        tcp_get(&w.outside, &hp(18080)).as_deref(),
        Some("tcp-hello")
    );
    let ls = w.firewall(&["ls"]);
    assert!(ls.stdout.contains("pnx-pm-svc"), "{ls:?}");
    // A second container may not take the same host port: ADD fails and leaves nothing.
    let (_c2, att2) = {
        let c = w.host.container();
        let a = Att::new("pnx-pm-dup", &c.path(), "eth0");
        (c, a)
    };
    let out = w.host.run(&plugnet(), "ADD", &conf, Some(&att2));
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("port mapping conflict"), "{out:?}");
    assert_eq!(w.host.plugnet_veths().len(), 2);
    assert_eq!(
        w.host.leases("pnxnet1").len(),
        2,
        "the failed ADD released its address"
    );
    w.del(&conf, &att2);

    w.del(&conf, &att);
    w.del(&conf, &att); // idempotent
    for ns in [&w.outside, &w.host.ns, &nb] {
        assert_eq!(tcp_get(ns, &hp(18080)), None);
        assert_eq!(udp_get(ns, &hp(18053)), None);
    }
    w.del(&plain, &nb_att);
    w.assert_clean();
}

#[test]
fn egress_rules_allow_only_what_is_listed() {
    need_root();
    let w = World::new("eg", 2);
    let _a = Server::tcp(&w.outside, 8001, "allowed");
    let _b = Server::tcp(&w.outside, 8002, "other");
    let tcp_rule = json!({"protocol": "tcp", "networks": [{"cidr": format!("{}/32", w.outside_ip())}],
                          "ports": [{"start": 8001, "end": 8001}]});
    let no_icmp = w.conf(json!({"netOut": {"default": "deny", "rules": [tcp_rule]}}));
    let with_icmp = with_runtime(
        &w.conf(json!({})),
        json!({"netOut": {"default": "deny", "rules": [tcp_rule, {"protocol": "icmp", "icmps": {"type": 8}}]}}),
    );
    let (c1, a1, r1) = w.add(&no_icmp, "pnx-eg-1");
    let (c2, a2, _) = w.add(&with_icmp, "pnx-eg-2");
    let (c3, a3, _) = w.add(&w.conf(json!({})), "pnx-eg-3");
    let to = |p: u16| format!("{}:{p}", w.outside_ip());
    for c in [&c1, &c2] {
        assert_eq!(tcp_get(c, &to(8001)).as_deref(), Some("allowed"));
        assert_eq!(tcp_get(c, &to(8002)), None);
    }
    assert!(!c1.ping(&w.outside_ip()), "icmp not allowed for c1");
    assert!(c2.ping(&w.outside_ip()), "icmp allowed for c2");
    // Unrestricted neighbour; the own network is never affected by netOut.
    assert_eq!(tcp_get(&c3, &to(8002)).as_deref(), Some("other"));
    assert!(c1.ping(&format!("10.100.{}.1", w.n)));
    assert!(c3.ping(&ip_of(&r1)));
    w.host
        .run(&plugnet(), "CHECK", &with_prev(&no_icmp, &r1), Some(&a1))
        .ok();
    w.del(&no_icmp, &a1);
    assert_eq!(tcp_get(&w.outside, &to(8002)).as_deref(), Some("other"));
    w.del(&with_icmp, &a2);
    w.del(&w.conf(json!({})), &a3);
    w.assert_clean();
}

#[test]
fn ip_masq_hides_container_addresses() {
    need_root();
    let w = World::new("mq", 3);
    let _s = Server::tcp(&w.outside, 9000, "peer");
    let masq = w.conf(json!({"ipMasq": true}));
    let plain = w.conf(json!({}));
    // The iptables tools on PATH note each call, then run the real ones.
    let spy = tempfile::Builder::new()
        .prefix("pnx-spy-")
        .tempdir()
        .unwrap();
    let calls = spy.path().join("calls");
    for tool in [
        "iptables",
        "ip6tables",
        "iptables-restore",
        "ip6tables-restore",
    ] {
        let path = spy.path().join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> {}\nexec /usr/sbin/{tool} \"$@\"\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let (c1, a1, r1) = w.add_on(spy.path(), &masq, "pnx-mq-1");
    let (c2, a2, r2) = w.add(&plain, "pnx-mq-2");
    // An ordinary host (FORWARD accepting, IPv4 forwarding on, IPv6 forwarding off as in any
    // fresh namespace) gets nothing in iptables: no rules are put in beforehand for IPv6,
    // which these containers do not use; and the bridge's first attachment learns that over
    // netlink, running no iptables tool at all.
    let tables = w.host.ns.sh(&["nft", "list", "tables"]);
    assert!(!tables.contains(" filter"), "{tables}");
    assert_eq!(
        std::fs::read_to_string(&calls).ok(),
        None,
        "iptables was run"
    );
    let to = format!("{}:9000", w.outside_ip());
    assert_eq!(tcp_get(&c1, &to), Some(w.host_ip()));
    assert_eq!(tcp_get(&c2, &to), Some(ip_of(&r2)));
    // Traffic on the bridge keeps its source address.
    let _in = Server::tcp(&c2, 9001, "peer");
    assert_eq!(
        tcp_get(&c1, &format!("{}:9001", ip_of(&r2))),
        Some(ip_of(&r1))
    );
    w.del_on(spy.path(), &masq, &a1);
    assert_eq!(
        std::fs::read_to_string(&calls).ok(),
        None,
        "iptables was run on DEL"
    );
    w.del(&plain, &a2);
    w.assert_clean();
}

/// iperf3 throughput in Mbit/s from the container to the outside (`reverse`: the other way).
fn iperf(w: &World, ctr: &Ns, port: u16, reverse: bool) -> f64 {
    let port_s = port.to_string();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.outside.name,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port_s,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let mut args = vec![
            "iperf3",
            "-c",
            &w.outside_ip(),
            "-p",
            &port_s,
            "-t",
            "4",
            "-O",
            "1",
            "-J",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if reverse {
            args.push("-R".into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctr.exec(&a);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            let _ = server.wait();
            let v: Value = serde_json::from_str(&last).unwrap();
            return v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap()
                / 1e6;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    panic!("iperf3 never ran: {last}");
}

#[test]
fn bandwidth_limits_both_directions() {
    need_root();
    let w = World::new("bw", 4);
    let limited = with_runtime(
        &w.conf(json!({})),
        json!({"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 500_000,
                             "egressRate": 10_000_000, "egressBurst": 500_000}}),
    );
    let (c1, a1, r1) = w.add(&limited, "pnx-bw-1");
    w.host
        .run(&plugnet(), "CHECK", &with_prev(&limited, &r1), Some(&a1))
        .ok();
    let up = iperf(&w, &c1, 15201, false);
    let down = iperf(&w, &c1, 15202, true);
    eprintln!("limited 10 Mbit/s: egress {up:.2} Mbit/s, ingress {down:.2} Mbit/s");
    for v in [up, down] {
        assert!((8.5..=11.5).contains(&v), "{v} Mbit/s not within 15% of 10");
    }
    // Config fields (the reference bandwidth plugin's) work too, and unlimited is far above.
    let fields = w.conf(json!({"egressRate": 10_000_000, "egressBurst": 500_000}));
    let (c2, a2, _) = w.add(&fields, "pnx-bw-2");
    let (c3, a3, _) = w.add(&w.conf(json!({})), "pnx-bw-3");
    let up2 = iperf(&w, &c2, 15203, false);
    let free = iperf(&w, &c3, 15204, false);
    eprintln!("config-field limit: {up2:.2} Mbit/s; unlimited: {free:.2} Mbit/s");
    assert!((8.5..=11.5).contains(&up2), "{up2}");
    assert!(free > 50.0, "unlimited only {free} Mbit/s");
    w.del(&limited, &a1);
    w.del(&fields, &a2);
    w.del(&w.conf(json!({})), &a3);
    w.assert_clean();
}

#[test]
fn chained_after_plugnet_the_reference_portmap_works() {
    need_root();
    if !Path::new(REFERENCE_DIR).join("portmap").exists() {
        eprintln!("skipped: reference plugins not installed");
        return;
    }
    let w = World::new("ch", 5);
    let mut first = w.conf(json!({"ipMasq": true}));
    first.as_object_mut().unwrap().remove("cniVersion");
    first.as_object_mut().unwrap().remove("name");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "pnxnet5",
        "plugins": [first, {"type": "portmap", "capabilities": {"portMappings": true}}],
    });
    let chain = Chain {
        host: &w.host,
        list,
        runtime_config: json!({"portMappings": [{"hostPort": 18081, "containerPort": 81, "protocol": "tcp"}]}),
    };
    let ctr = w.host.container();
    let att = Att::new("pnx-ch-1", &ctr.path(), "eth0");
    let res = chain.add(&att);
    let _s = Server::tcp(&ctr, 81, "chained");
    assert_eq!(
        tcp_get(&w.outside, &format!("{}:18081", w.host_ip())).as_deref(),
        Some("chained")
    );
    let checks = chain.check(&att, &res);
    checks[0].ok(); // plugnet's CHECK (portmap 1.1.1's own CHECK has a known IPv4-only bug)
    chain.del(&att, &res);
    assert_eq!(tcp_get(&w.outside, &format!("{}:18081", w.host_ip())), None);
    let rules = w.host.ns.sh(&["nft", "list", "ruleset"]);
    assert!(!rules.contains("table inet plugnet"), "{rules}");
}

/// `plugnet firewall hold`: a bridge held open (plugnet-shim holds each Docker network's) keeps
/// its accept rules in the host firewall between containers; `release` with no attachment left
/// takes them away. In the throwaway host, whose iptables FORWARD policy the test sets to DROP
/// (what Docker does), a container with no firewall feature at all is recorded bare.
#[test]
fn held_bridge_keeps_its_host_firewall_rules_between_containers() {
    need_root();
    let w = World::new("hold", 7);
    w.host.ns.sh(&["iptables", "-P", "FORWARD", "DROP"]);
    let rules = || w.host.ns.sh(&["iptables", "-S"]);
    let bridge = "pnxbr7";
    let conf = w.conf(json!({}));
    let has = |s: &str| s.contains(&format!("-i {bridge} -o {bridge}"));
    assert!(!has(&rules()));
    let out = w.firewall(&["hold", "--bridge", bridge, "--holder", "pnx-holder"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(has(&rules()), "held: {}", rules());
    // A featureless container comes and goes: the rules stay (held), and it pings the gateway
    // through FORWARD DROP... of its own bridge, so also a second container.
    let (c1, a1, _) = w.add(&conf, "pnx-hold-1");
    let (_c2, a2, r2) = w.add(&conf, "pnx-hold-2");
    let ip2 = ip_of(&r2);
    w.host.ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert!(c1.ping(&ip2), "c1 -> c2 on a FORWARD DROP host");
    w.del(&conf, &a2);
    w.del(&conf, &a1);
    assert!(
        has(&rules()),
        "still held after the last container: {}",
        rules()
    );
    // Held with no attachment, plugnet's table is gone and that is no loss: repair is a no-op.
    let out = w.firewall(&["repair"]);
    assert!(out.stdout.contains("\"reloaded\": false"), "{out:?}");
    let out = w.firewall(&["release", "--bridge", bridge, "--holder", "pnx-holder"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!rules().contains("PLUGNET"), "released: {}", rules());
    // Holding twice or releasing twice is fine; a bad name is refused.
    for args in [
        ["release", "--bridge", bridge, "--holder", "pnx-holder"],
        ["hold", "--bridge", "../x", "--holder", "pnx-holder"],
    ] {
        let out = w.firewall(&args);
        assert_eq!(
            out.code,
            if args[0] == "release" { 0 } else { 1 },
            "{out:?}"
        );
    }
    w.host.ns.sh(&["iptables", "-P", "FORWARD", "ACCEPT"]);
}

#[test]
fn forward_drop_without_iptables_binaries_is_a_clear_error_and_leaves_nothing() {
    need_root();
    let w = World::new("noipt", 8);
    // An iptables-style filter table whose FORWARD drops, made with nft (an nftables-only
    // host, or one whose iptables binaries were removed).
    w.host.ns.sh(&["nft", "add table ip filter"]);
    w.host.ns.sh(&[
        "nft",
        "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }",
    ]);
    let conf = w.conf(json!({}));
    let ctr = w.host.container();
    let att = Att::new("pnx-noipt-1", &ctr.path(), "eth0");
    let out = w.run_on(Path::new(NO_IPTABLES), "ADD", &conf, &att);
    assert_eq!(out.code, 1, "{out:?}");
    let err: Value = serde_json::from_str(&out.stdout).expect("a CNI error on stdout");
    let msg = err["msg"].as_str().unwrap_or_default().to_string()
        + " "
        + err["details"].as_str().unwrap_or_default();
    assert!(
        msg.contains("ip filter FORWARD") && msg.contains("iptables") && msg.contains("pnxbr8"),
        "the error names the chain, the missing tool and the bridge: {err}"
    );
    assert!(
        w.host.plugnet_veths().is_empty(),
        "veth left after the failed ADD"
    );
    assert!(
        w.host.leases("pnxnet8").is_empty(),
        "address left after the failed ADD"
    );
    // With the tools there, the same ADD works and the bridge gets its accept rules.
    let (c1, a1, _) = w.add(&conf, "pnx-noipt-2");
    let (_c2, a2, r2) = w.add(&conf, "pnx-noipt-3");
    assert!(
        c1.ping(&ip_of(&r2)),
        "c1 -> c2 through the FORWARD DROP chain"
    );
    let rules = w.host.ns.sh(&["iptables", "-S"]);
    assert!(rules.contains("-i pnxbr8 -o pnxbr8"), "{rules}");
    eprintln!("refused without iptables: {msg}");
    w.del(&conf, &a2);
    w.del(&conf, &a1);
    w.host.ns.sh(&["nft", "delete table ip filter"]);
    w.assert_clean();
}

/// A power loss: the kernel's rules are gone and the attachment's record (never fsynced) is
/// cut short. DEL through the binary still succeeds and drops the record; the next ipMasq
/// container on the network gets its table rebuilt and masquerades.
#[test]
fn after_a_power_loss_a_torn_record_is_dropped_by_del_and_the_network_works() {
    need_root();
    let w = World::new("torn", 9);
    let masq = w.conf(json!({"ipMasq": true}));
    let (_c1, a1, _) = w.add(&masq, "pnx-torn-1");
    let dir = w.fw_dir.path().join("attachments");
    let records = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect()
    };
    let recs = records();
    assert_eq!(recs.len(), 1, "{recs:?}");
    std::fs::write(&recs[0], b"").unwrap();
    w.host.ns.sh(&["nft", "delete", "table", "inet", "plugnet"]);
    let out = w.host.run(&plugnet(), "DEL", &masq, Some(&a1));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(records().is_empty(), "{:?}", records());

    let _s = Server::tcp(&w.outside, 9000, "peer");
    let (c2, a2, _) = w.add(&masq, "pnx-torn-2");
    let to = format!("{}:9000", w.outside_ip());
    assert_eq!(tcp_get(&c2, &to), Some(w.host_ip()));
    w.del(&masq, &a2);
    w.assert_clean();
}

/// An nftables-only host whose own ruleset drops forwarded traffic (a hardened `inet` table,
/// forward chain policy drop; a firewalld-shaped chain ending in `reject`; no iptables
/// binaries): plugnet keeps tagged accept rules for its bridge at the head of those chains, so
/// featureless containers reach each other, masquerading and a port mapping work; after the
/// host reloads its ruleset (the chain flushed), `plugnet firewall reload` puts them back; a
/// chain that accepts gets nothing; DEL of the last container takes the rules away and leaves
/// the host's tables as they were.
#[test]
fn a_host_nftables_chain_that_drops_gets_plugnets_accept_rules() {
    need_root();
    let w = World::new("hard", 10);
    w.host.ns.sh(&["nft", "add table inet pnxhard"]);
    w.host.ns.sh(&[
        "nft",
        "add chain inet pnxhard forwarding { type filter hook forward priority 0; policy drop; }",
    ]);
    w.host.ns.sh(&[
        "nft",
        "add chain inet pnxhard counting { type filter hook forward priority 5; policy accept; }",
    ]);
    // firewalld's shape: policy accept, a final rule rejecting what nothing accepted.
    w.host.ns.sh(&["nft", "add table inet pnxwalld"]);
    w.host.ns.sh(&[
        "nft",
        "add chain inet pnxwalld filter_FORWARD { type filter hook forward priority 10; policy accept; }",
    ]);
    w.host.ns.sh(&[
        "nft",
        "add rule inet pnxwalld filter_FORWARD ct state established,related accept",
    ]);
    w.host.ns.sh(&[
        "nft",
        "add rule inet pnxwalld filter_FORWARD reject with icmpx admin-prohibited",
    ]);
    let walld = || {
        w.host
            .ns
            .sh(&["nft", "list", "chain", "inet", "pnxwalld", "filter_FORWARD"])
    };
    let chain = |name: &str| {
        w.host
            .ns
            .sh(&["nft", "list", "chain", "inet", "pnxhard", name])
    };
    // An nftables-only host: no iptables, no iptables-restore on PATH.
    let tools = Path::new(NO_IPTABLES);
    let add = |conf: &Value, id: &str| w.add_on(tools, conf, id);
    let bare = w.conf(json!({}));
    let (c1, a1, r1) = add(&bare, "pnx-hard-1");
    let (c2, a2, r2) = add(&bare, "pnx-hard-2");
    let tagged = "comment \"plugnet bridge pnxbr10\"";
    assert_eq!(
        chain("forwarding").matches(tagged).count(),
        4,
        "{}",
        chain("forwarding")
    );
    assert_eq!(walld().matches(tagged).count(), 4, "{}", walld());
    assert!(
        !chain("counting").contains("plugnet"),
        "{}",
        chain("counting")
    );
    assert!(
        c1.ping(&ip_of(&r2)),
        "featureless: c1 -> c2 through policy drop"
    );
    assert!(c2.ping(&ip_of(&r1)), "featureless: c2 -> c1");

    let masq = w.conf(json!({"ipMasq": true, "runtimeConfig": {"portMappings": [
        {"hostPort": 18110, "containerPort": 80, "protocol": "tcp"}]}}));
    let (c3, a3, _) = add(&masq, "pnx-hard-3");
    let _out_srv = Server::tcp(&w.outside, 9000, "peer");
    let _ctr_srv = Server::tcp(&c3, 80, "mapped");
    let works = |what: &str| {
        assert!(c1.ping(&ip_of(&r2)), "{what}: c1 -> c2");
        assert_eq!(
            tcp_get(&c3, &format!("{}:9000", w.outside_ip())).as_deref(),
            Some(w.host_ip().as_str()),
            "{what}: masqueraded to the outside"
        );
        assert_eq!(
            tcp_get(&w.outside, &format!("{}:18110", w.host_ip())).as_deref(),
            Some("mapped"),
            "{what}: port mapping"
        );
    };
    works("policy drop");

    // The host reloads its own ruleset: plugnet's rules in its chain are gone, traffic stops;
    // `plugnet firewall reload` puts them back, once.
    w.host
        .ns
        .sh(&["nft", "flush chain inet pnxhard forwarding"]);
    assert!(
        !c1.ping(&ip_of(&r2)),
        "the host's policy drop applies again"
    );
    let check = || w.run_on(tools, "CHECK", &with_prev(&bare, &r1), &a1);
    let out = check();
    assert_ne!(out.code, 0, "CHECK with the host's chain flushed: {out:?}");
    assert!(
        out.stdout.contains("inet pnxhard forwarding"),
        "CHECK names the chain: {out:?}"
    );
    let out = w.firewall_on(tools, &["reload"]);
    assert_eq!(out.code, 0, "reload: {out:?}");
    assert_eq!(check().code, 0, "CHECK after reload: {:?}", check());
    assert_eq!(
        chain("forwarding").matches(tagged).count(),
        4,
        "{}",
        chain("forwarding")
    );
    works("after the host's reload and plugnet's");

    for (conf, att) in [(&masq, &a3), (&bare, &a2), (&bare, &a1)] {
        w.del_on(tools, conf, att);
    }
    let left = chain("forwarding");
    assert!(!left.contains("plugnet"), "{left}");
    assert!(
        left.contains("policy drop"),
        "the host's chain is kept: {left}"
    );
    let left = walld();
    assert!(!left.contains("plugnet"), "{left}");
    assert!(left.contains("reject"), "the host's chain is kept: {left}");
    w.host.ns.sh(&["nft", "delete table inet pnxwalld"]);
    w.host.ns.sh(&["nft", "delete table inet pnxhard"]);
    w.assert_clean();
}

/// An iptables-legacy host (its `iptables` and `iptables-restore` are the legacy backend, the
/// `filter` table lives outside nf_tables): with FORWARD DROP set there, featureless containers
/// reach each other and a masquerading one the outside, plugnet's chain and jump are in the
/// legacy table, and the last DEL takes them away.
#[test]
fn an_iptables_legacy_host_with_forward_drop_works_the_same() {
    need_root();
    let multi = Path::new("/usr/sbin/xtables-legacy-multi");
    if !multi.exists() {
        eprintln!("skipped: no iptables-legacy on this machine");
        return;
    }
    let w = World::new("legacy", 11);
    // The host's iptables is the legacy backend: the tool names on PATH point to it.
    let dir = tempfile::Builder::new()
        .prefix("pnx-legacy-")
        .tempdir()
        .unwrap();
    for name in [
        "iptables",
        "iptables-restore",
        "ip6tables",
        "ip6tables-restore",
    ] {
        std::os::unix::fs::symlink(multi, dir.path().join(name)).unwrap();
    }
    let legacy = |args: &[&str]| {
        let mut full = vec!["iptables-legacy"];
        full.extend_from_slice(args);
        w.host.ns.sh(&full)
    };
    legacy(&["-P", "FORWARD", "DROP"]);
    let tools = dir.path();
    let add = |conf: &Value, id: &str| w.add_on(tools, conf, id);
    let bare = w.conf(json!({}));
    let masq = w.conf(json!({"ipMasq": true}));
    let (c1, a1, r1) = add(&bare, "pnx-legacy-1");
    let (c2, a2, r2) = add(&bare, "pnx-legacy-2");
    let (c3, a3, _) = add(&masq, "pnx-legacy-3");
    let rules = legacy(&["-S"]);
    assert!(
        rules.contains("-A FORWARD -m comment --comment plugnet -j PLUGNET-FORWARD")
            && rules.contains("-A PLUGNET-FORWARD -i pnxbr11 -o pnxbr11"),
        "{rules}"
    );
    assert!(c1.ping(&ip_of(&r2)), "c1 -> c2 through legacy FORWARD DROP");
    assert!(c2.ping(&ip_of(&r1)), "c2 -> c1");
    let _srv = Server::tcp(&w.outside, 9000, "peer");
    assert_eq!(
        tcp_get(&c3, &format!("{}:9000", w.outside_ip())).as_deref(),
        Some(w.host_ip().as_str()),
        "masqueraded to the outside"
    );
    for (conf, att) in [(&masq, &a3), (&bare, &a2), (&bare, &a1)] {
        w.del_on(tools, conf, att);
    }
    let rules = legacy(&["-S"]);
    assert!(!rules.contains("PLUGNET"), "{rules}");
    assert!(rules.contains("-P FORWARD DROP"), "{rules}");
    w.assert_clean();
}
