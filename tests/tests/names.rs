//! The name resolver (issue 20) black-box: `"resolver": true` networks, plugnet-agent serving
//! their records. Each runner test builds a private "host" netns `pnn-h-*` (bridge, agent),
//! container netns `pnn-c-*` and an "upstream" netns `pnn-u-*` running dnsmasq (the test's own
//! DNS server for forwarded names); podman's test runs in the machine's namespace as
//! bridge_podman.rs does, with bridge `pnnbrpod`. Addresses: 10.172.0.0/16 and fd00:172::/32.
//! Nothing is timed: records are polled for until they appear (at most 5 s).

mod names_support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use names_support::*;
use plugnet_tests::podman::Podman;
use plugnet_tests::{bin, bin_dir, sh, sh_ok, Netns};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One private host: its netns, the agent, an upstream DNS server, a `"resolver": true`
/// network `pnnN` on 10.172.N.0/24 + fd00:172:N::/64 (bridge `pnnbrN`).
struct World {
    dir: tempfile::TempDir,
    n: u8,
    host: Netns,
    upstream: Netns,
    dnsmasq: Option<Child>,
    agent: Option<Agent>,
    ids: Vec<String>,
    routed: bool,
}

impl World {
    fn new(n: u8) -> World {
        assert!(unsafe { libc::geteuid() } == 0, "needs root");
        let dir = tempfile::Builder::new().prefix("pnn-").tempdir().unwrap();
        let host = Netns::new("pnn-h");
        let upstream = Netns::new("pnn-u");
        // host <-> upstream: 10.172.(100+N).1/30 on the host, .2 in the upstream netns.
        let (h, u) = (format!("pnnh{n}"), format!("pnnu{n}"));
        sh(&format!(
            "ip -n {} link add {h} type veth peer name {u} netns {}",
            host.name, upstream.name
        ));
        sh(&format!(
            "ip -n {hn} addr add 10.172.{m}.1/30 dev {h} && ip -n {hn} link set {h} up && \
             ip -n {un} addr add 10.172.{m}.2/30 dev {u} && ip -n {un} link set {u} up && \
             ip -n {un} route add 10.172.0.0/16 via 10.172.{m}.1",
            hn = host.name,
            un = upstream.name,
            m = 100 + n
        ));
        let conf = dir.path().join("dnsmasq.conf");
        std::fs::write(
            &conf,
            format!(
                "no-resolv\nno-hosts\nbind-interfaces\nlisten-address=10.172.{m}.2\n\
                 address=/outside.pnn.test/10.172.200.7\nuser=root\n",
                m = 100 + n
            ),
        )
        .unwrap();
        let dnsmasq = Command::new("ip")
            .args([
                "netns",
                "exec",
                &upstream.name,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .arg(format!("--conf-file={}", conf.display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (dnsmasq-base) installed");
        std::fs::write(
            dir.path().join("resolv.conf"),
            format!("nameserver 10.172.{}.2\n", 100 + n),
        )
        .unwrap();
        let mut w = World {
            dir,
            n,
            host,
            upstream,
            dnsmasq: Some(dnsmasq),
            agent: None,
            ids: Vec::new(),
            routed: false,
        };
        w.agent = Some(Agent::start(
            Some(&w.host.name),
            &w.agent_dir(),
            &w.dir.path().join("resolv.conf"),
            &[],
        ));
        w
    }
    fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }
    fn net(&self) -> String {
        format!("pnn{}", self.n)
    }
    fn gw(&self) -> SocketAddr {
        SocketAddr::new(format!("10.172.{}.1", self.n).parse().unwrap(), 53)
    }
    fn conf(&self) -> Value {
        if self.routed {
            return json!({"mode": "routed", "resolver": true, "agentDir": self.agent_dir(),
               "capabilities": {"aliases": true},
               "firewallStateDir": self.dir.path().join("fw"),
               "ipam": {"type": "plugnet-ipam", "dataDir": self.dir.path().join("ipam"),
                        "ranges": [[{"subnet": format!("10.172.{}.0/24", self.n)}]]}});
        }
        json!({"bridge": format!("pnnbr{}", self.n), "isGateway": true, "resolver": true,
               "agentDir": self.agent_dir(),
               "capabilities": {"aliases": true},
               "firewallStateDir": self.dir.path().join("fw"),
               "ipam": {"type": "plugnet-ipam", "dataDir": self.dir.path().join("ipam"),
                        "ranges": [[{"subnet": format!("10.172.{}.0/24", self.n)}],
                                   [{"subnet": format!("fd00:172:{}::/64", self.n)}]]}})
    }
    fn plugnet(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host.name])
            .arg(bin("plugnet"))
            .args(args)
            .env_remove("CNI_COMMAND")
            .env("PLUGNET_STATE_DIR", self.dir.path().join("runner"))
            .env("CNI_PATH", bin_dir())
            .env("NETCONFPATH", self.dir.path().join("net.d"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    /// `plugnet up --id ID` on the network, with `aliases`; the result.
    fn up(&mut self, id: &str, ns: &Netns, aliases: &[&str]) -> Value {
        self.ids.push(id.to_string());
        let spec = json!({"networks": [{"name": self.net(), "type": "plugnet",
            "config": self.conf(), "runtimeConfig": {"aliases": {self.net(): aliases}}}]});
        let (code, out, err) = self.plugnet(
            &["up", "--id", id, "--netns", &ns.path()],
            &spec.to_string(),
        );
        assert_eq!(code, 0, "plugnet up {id}: {err}\n{out}");
        serde_json::from_str(&out).unwrap()
    }
    fn down(&self, id: &str) {
        let (code, out, err) = self.plugnet(&["down", "--id", id], "");
        assert_eq!(code, 0, "plugnet down {id}: {err}\n{out}");
    }
    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for id in self.ids.clone() {
            let _ = self.plugnet(&["down", "--id", &id], "");
        }
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if std::thread::panicking() {
            if let Some(a) = &self.agent {
                eprintln!("--- agent log ---\n{}", a.log());
            }
        }
        self.agent = None;
    }
}

/// The addresses of a runner `up` result (its first network's `ips`).
fn addrs_of(result: &Value) -> Vec<IpAddr> {
    let ips = result
        .pointer("/networks/0/result/ips")
        .or_else(|| result.pointer("/0/result/ips"))
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_else(|| find_ips(result));
    ips.iter()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap().parse().unwrap())
        .collect()
}

fn find_ips(v: &Value) -> Vec<Value> {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(ips)) = m.get("ips") {
                return ips.clone();
            }
            m.values().flat_map(find_ips).collect()
        }
        Value::Array(a) => a.iter().flat_map(find_ips).collect(),
        _ => Vec::new(),
    }
}

fn find_dns(v: &Value) -> Option<Value> {
    match v {
        Value::Object(m) => m
            .get("dns")
            .filter(|d| d.get("nameservers").is_some())
            .cloned()
            .or_else(|| m.values().find_map(find_dns)),
        Value::Array(a) => a.iter().find_map(find_dns),
        _ => None,
    }
}

#[test]
fn runner_containers_resolve_each_other_and_outside_names() {
    let mut w = World::new(1);
    let (ca, cb) = (Netns::new("pnn-c"), Netns::new("pnn-c"));
    let ra = w.up("pnnalpha", &ca, &["web"]);
    let rb = w.up("pnnbeta", &cb, &[]);
    // How soon after ADD returned the name is served (a figure, not an assertion).
    let added = std::time::Instant::now();
    let first = ask_until(&ca.path(), w.gw(), "pnnbeta", RecordType::A, found);
    eprintln!(
        "figures: pnnbeta served {:?} after its ADD returned ({first:?})",
        added.elapsed()
    );
    let (a, b) = (addrs_of(&ra), addrs_of(&rb));
    assert_eq!(a.len(), 2, "dual stack: {ra}");
    // The result names the resolver: the gateway, and the domain as search.
    let dns = find_dns(&ra).unwrap_or_else(|| panic!("no dns in {ra}"));
    assert_eq!(
        dns["nameservers"][0],
        json!(w.gw().ip().to_string()),
        "{dns}"
    );
    assert_eq!(dns["search"][0], json!("dns.plugnet"), "{dns}");
    // The record is on disk in the documented place and format.
    let rec: Value = serde_json::from_slice(
        &std::fs::read(
            w.agent_dir()
                .join("names")
                .join(w.net())
                .join("pnnalpha@eth0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["format"], json!("plugnet-names 1"));

    let gw = w.gw();
    // b resolves a by its handle, its alias, with and without the domain; A and AAAA.
    for name in [
        "pnnalpha",
        "web",
        "pnnalpha.dns.plugnet.",
        "WEB.dns.plugnet",
    ] {
        let got = ask_until(&cb.path(), gw, name, RecordType::A, found).unwrap();
        assert_eq!(got.addrs, vec![a[0]], "{name}");
    }
    let got = ask_until(&cb.path(), gw, "web", RecordType::AAAA, found).unwrap();
    assert_eq!(got.addrs, vec![a[1]]);
    // a resolves b.
    let got = ask_until(&ca.path(), gw, "pnnbeta", RecordType::A, found).unwrap();
    assert_eq!(got.addrs, vec![b[0]]);
    // Over IPv6 too (the gateway's v6 address, once out of DAD).
    let gw6 = SocketAddr::new(format!("fd00:172:{}::1", w.n).parse().unwrap(), 53);
    let got = ask_until(&ca.path(), gw6, "pnnbeta", RecordType::AAAA, found);
    assert_eq!(got.map(|g| g.addrs), Some(vec![b[1]]));
    // TCP 53 too.
    let tcp = cb.exec(&format!(
        "dig +tcp +short +time=2 +tries=1 @{} pnnalpha.dns.plugnet",
        gw.ip()
    ));
    assert_eq!(tcp.trim(), a[0].to_string(), "dig +tcp");
    // Unknown names inside the domain: NXDOMAIN, never forwarded.
    let got = ask(&ca.path(), gw, "nobody.dns.plugnet", RecordType::A).unwrap();
    assert_eq!(got.code, ResponseCode::NXDomain);
    // Forwarding: an outside name, answered by the test's own DNS server upstream.
    let got = ask_until(&ca.path(), gw, "outside.pnn.test", RecordType::A, found).unwrap();
    assert_eq!(got.addrs, vec!["10.172.200.7".parse::<IpAddr>().unwrap()]);
    // DEL removes the name.
    w.down("pnnalpha");
    let got = ask_until(&cb.path(), gw, "web.dns.plugnet", RecordType::A, |a| {
        a.as_ref().is_some_and(|a| a.code == ResponseCode::NXDomain)
    });
    assert_eq!(got.map(|g| g.code), Some(ResponseCode::NXDomain));
    assert!(w.agent().alive());
}

#[test]
fn routed_mode_containers_resolve_each_other_through_the_next_hop() {
    let mut w = World::new(3);
    w.routed = true;
    let (ca, cb) = (Netns::new("pnn-c"), Netns::new("pnn-c"));
    let ra = w.up("pnnra", &ca, &["api"]);
    let rb = w.up("pnnrb", &cb, &[]);
    let dns = find_dns(&ra).unwrap_or_else(|| panic!("no dns in {ra}"));
    assert_eq!(dns["nameservers"], json!(["169.254.1.1"]), "{dns}");
    let hop: SocketAddr = "169.254.1.1:53".parse().unwrap();
    let got = ask_until(&cb.path(), hop, "api", RecordType::A, found).unwrap();
    assert_eq!(got.addrs, vec![addrs_of(&ra)[0]]);
    let got = ask_until(&ca.path(), hop, "pnnrb.dns.plugnet", RecordType::A, found).unwrap();
    assert_eq!(got.addrs, vec![addrs_of(&rb)[0]]);
}

/// A raw message: header (id, flags, counts) then `body`.
fn raw(id: u16, flags: u16, qd: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [id, flags, qd, 0, 0, 0] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(body);
    m
}

#[test]
fn hostile_queries_names_and_floods() {
    let mut w = World::new(2);
    let (ca, outsider) = (Netns::new("pnn-c"), Netns::new("pnn-c"));
    let ra = w.up(
        "pnnhost1",
        &ca,
        &["ok-alias", "bad_alias", "-x", &"z".repeat(64)],
    );
    let a = addrs_of(&ra);
    let gw = w.gw();
    assert!(found(&ask_until(
        &ca.path(),
        gw,
        "ok-alias",
        RecordType::A,
        found
    )));
    // Names that are not DNS labels are left out of the record (never escaped).
    let rec: Value = serde_json::from_slice(
        &std::fs::read(
            w.agent_dir()
                .join("names")
                .join(w.net())
                .join("pnnhost1@eth0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["names"], json!(["ok-alias", "pnnhost1"]), "{rec}");

    // K8S_POD_NAME that is not a label, straight through the plugin: ADD succeeds, the name
    // is not served, the agent lives.
    let cpod = Netns::new("pnn-c");
    let conf = {
        let mut c = w.conf();
        c["cniVersion"] = json!("1.0.0");
        c["name"] = json!(w.net());
        c["type"] = json!("plugnet");
        c.to_string()
    };
    let cni = |cmd: &str| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &w.host.name])
            .arg(bin("plugnet"))
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", "pnnpod1")
            .env("CNI_NETNS", cpod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_dir())
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAME=bad name/../x;K8S_POD_NAMESPACE=d",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = cni("ADD");
    assert!(out.status.success(), "ADD: {out:?}");
    let rec: Value = serde_json::from_slice(
        &std::fs::read(
            w.agent_dir()
                .join("names")
                .join(w.net())
                .join("pnnpod1@eth0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["names"], json!(["pnnpod1"]), "{rec}");
    assert!(found(&ask_until(
        &ca.path(),
        gw,
        "pnnpod1",
        RecordType::A,
        found
    )));
    // GC with a valid list that lacks pnnpod1: its record goes, pnnhost1's stays.
    let gc_conf = {
        let mut c: Value = serde_json::from_str(&conf).unwrap();
        c["cniVersion"] = json!("1.1.0");
        c["cni.dev/valid-attachments"] = json!([{"containerID": "pnnhost1", "ifname": "eth0"}]);
        c.to_string()
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &w.host.name])
        .arg(bin("plugnet"))
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", bin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(gc_conf.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "GC: {out:?}");
    let names_dir = w.agent_dir().join("names").join(w.net());
    assert!(
        !names_dir.join("pnnpod1@eth0.json").exists(),
        "GC left pnnpod1's record"
    );
    assert!(
        names_dir.join("pnnhost1@eth0.json").exists(),
        "GC took a valid record"
    );
    let out = cni("DEL");
    assert!(out.status.success(), "DEL: {out:?}");
    assert!(!w
        .agent_dir()
        .join("names")
        .join(w.net())
        .join("pnnpod1@eth0.json")
        .exists());

    // Malformed messages: garbage, a bare header, counts that lie, a response, a 255-byte
    // name, labels longer than 63, compression loops.
    let mut long = Vec::new();
    for _ in 0..4 {
        long.push(63u8);
        long.extend(std::iter::repeat_n(b'a', 63));
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut packets = vec![
        vec![],
        vec![0xff; 3],
        raw(1, 0x0100, 0, &[]),
        raw(2, 0x0100, 50, &[1, b'a', 0, 0, 1, 0, 1]),
        raw(3, 0x8180, 1, &[1, b'a', 0, 0, 1, 0, 1]),
        raw(4, 0x0100, 1, &long),
        raw(5, 0x0100, 1, &[64, b'a', 0, 0, 1, 0, 1]),
        raw(6, 0x0100, 1, &[0xc0, 12, 0, 1, 0, 1]),
        raw(7, 0x7900, 1, &[1, b'a', 0, 0, 1, 0, 1]),
        vec![0x42; 4000],
    ];
    let mut rng = plugnet_tests::Rng::seeded();
    for _ in 0..500 {
        let len = rng.below(600) as usize;
        packets.push((0..len).map(|_| rng.below(256) as u8).collect());
    }
    send_raw(&ca.path(), gw, packets, Duration::from_millis(300));
    assert!(w.agent().alive(), "agent died on malformed input");
    assert!(found(&ask(&ca.path(), gw, "ok-alias", RecordType::A)));

    // A TCP connection flood (more than the agent's descriptor limit): UDP keeps answering
    // while they are held; once they are gone, TCP answers again.
    let held = in_netns(&ca.path(), move || {
        let mut conns = Vec::new();
        for _ in 0..1500 {
            match std::net::TcpStream::connect_timeout(&gw, Duration::from_millis(500)) {
                Ok(c) => conns.push(c),
                Err(_) => break,
            }
        }
        conns
    });
    let n_held = held.len();
    assert!(
        found(&ask(&ca.path(), gw, "ok-alias", RecordType::A)),
        "UDP during the TCP flood"
    );
    drop(held);
    assert!(
        w.agent().alive(),
        "agent died in the TCP flood ({n_held} connections)"
    );
    let tcp = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            ca.exec(&format!(
                "dig +tcp +short +time=1 +tries=1 @{} ok-alias.dns.plugnet || true",
                gw.ip()
            ))
        })
        .find(|o| o.trim() == a[0].to_string());
    assert!(
        tcp.is_some(),
        "TCP after the flood ({n_held} connections held)"
    );
    eprintln!("TCP flood: {n_held} connections held at once");

    // A source outside the network: REFUSED. The outsider reaches the gateway from the
    // upstream side (routed through the host netns).
    sh(&format!(
        "ip -n {u} link add pnnx{n} type veth peer name pnny{n} netns {o} && \
         ip -n {u} addr add 10.172.{m}.5/30 dev pnnx{n} && ip -n {u} link set pnnx{n} up && \
         ip -n {o} addr add 10.172.{m}.6/30 dev pnny{n} && ip -n {o} link set pnny{n} up && \
         ip -n {o} route add default via 10.172.{m}.5 && \
         ip netns exec {u} sysctl -qw net.ipv4.ip_forward=1 && \
         ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1 && \
         ip -n {h} route add 10.172.{m}.4/30 via 10.172.{k}.2",
        u = w.upstream.name,
        o = outsider.name,
        h = w.host.name,
        n = w.n,
        m = 150 + w.n,
        k = 100 + w.n
    ));
    let got = ask(&outsider.path(), gw, "ok-alias", RecordType::A);
    assert_eq!(got.map(|g| g.code), Some(ResponseCode::Refused));
    // The host's own address outside the networks (its upstream-side veth): nothing listens.
    let host_addr: SocketAddr = format!("10.172.{}.1:53", 100 + w.n).parse().unwrap();
    assert_eq!(
        ask(&w.upstream.path(), host_addr, "ok-alias", RecordType::A),
        None
    );
    let listening = w.host.exec("ss -Hlnu");
    assert!(
        !listening.contains("0.0.0.0:53") && !listening.contains("*:53"),
        "{listening}"
    );

    // A flood: forwarded names towards an upstream that never answers (a black hole behind
    // the upstream netns), then local names. The agent stays up, answers SERVFAIL at once
    // beyond its in-flight bound (256) and its RSS stays bounded.
    sh(&format!(
        "ip -n {h} route add 10.172.{b}.0/24 via 10.172.{k}.2 && \
         ip -n {u} route add blackhole 10.172.{b}.0/24",
        h = w.host.name,
        u = w.upstream.name,
        b = 210 + w.n,
        k = 100 + w.n
    ));
    std::fs::write(
        w.dir.path().join("resolv.conf"),
        format!("nameserver 10.172.{}.9\n", 210 + w.n),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let rss_before = w.agent().rss_kb();
    let forwarded: Vec<Vec<u8>> = (0..4_000u32)
        .map(|i| query_bytes(i as u16, &format!("n{i}.flood.pnn.test"), RecordType::A))
        .collect();
    let codes = flood(&ca.path(), gw, forwarded, Duration::from_millis(200));
    assert!(w.agent().alive(), "agent died in the flood");
    let servfail = codes
        .iter()
        .filter(|c| **c == ResponseCode::ServFail)
        .count();
    // At most 256 forwards wait for the black hole; the rest are answered at once.
    assert!(
        servfail >= 4_000 - 256 - 400,
        "{servfail} SERVFAIL of 4000 forwarded queries ({} answers)",
        codes.len()
    );
    let local: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| query_bytes(i as u16, "ok-alias.dns.plugnet", RecordType::A))
        .collect();
    let codes = flood(&ca.path(), gw, local, Duration::from_millis(200));
    assert!(
        codes.len() > 10_000,
        "{} answers to 20000 local queries",
        codes.len()
    );
    let rss_after = w.agent().rss_kb();
    assert!(w.agent().alive(), "agent died in the flood");
    assert!(
        rss_after < 64 * 1024,
        "agent RSS {rss_after} kB after the flood (before {rss_before} kB)"
    );
    eprintln!("agent RSS: {rss_before} kB before the floods, {rss_after} kB after");
    std::thread::sleep(Duration::from_millis(2500));
    let got = ask(&ca.path(), gw, "ok-alias", RecordType::A).unwrap();
    assert_eq!(got.addrs, vec![a[0]]);
}

// ---------------------------------------------------------------------------------------------
// podman (CNI backend)

#[test]
fn podman_run_name_and_alias_resolve_and_rm_removes_them() {
    assert!(unsafe { libc::geteuid() } == 0, "needs root");
    if !sh_ok("command -v podman") {
        panic!("podman not installed (scripts/test.sh installs it)");
    }
    let p = Podman::new("pnn", &["sh", "nslookup", "sleep", "cat"], "pnnbrpod");
    let agent_dir = p.dir.path().join("agent");
    std::fs::write(p.dir.path().join("resolv.conf"), "nameserver 10.172.11.2\n").unwrap();
    let mut agent = Agent::start(None, &agent_dir, &p.dir.path().join("resolv.conf"), &[]);
    std::fs::write(
        p.dir.path().join("net.d/pnnpod.conflist"),
        serde_json::to_vec(&json!({
            "cniVersion": "1.0.0", "name": "pnnpod",
            "plugins": [{"type": "plugnet", "bridge": "pnnbrpod", "isGateway": true,
                "resolver": true, "agentDir": agent_dir,
                "capabilities": {"aliases": true},
                "firewallStateDir": p.dir.path().join("fw"),
                "ipam": {"type": "plugnet-ipam", "dataDir": p.dir.path().join("ipam"),
                         "ranges": [[{"subnet": "10.172.10.0/24"}]]}}]
        }))
        .unwrap(),
    )
    .unwrap();
    let _ = Command::new("iptables")
        .args([
            "-I", "FORWARD", "-i", "pnnbrpod", "-o", "pnnbrpod", "-j", "ACCEPT",
        ])
        .output();
    let ulimits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let mut args = vec![
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "pnnpod",
        "--network-alias",
        "www",
    ];
    args.extend_from_slice(&ulimits);
    args.extend_from_slice(&["localhost/pnnbb:latest", "sleep", "300"]);
    let out = p.run(&args);
    assert!(out.status.success(), "podman run web: {out:?}");
    let web_ip = String::from_utf8(
        p.run(&[
            "inspect",
            "web",
            "--format",
            "{{(index .NetworkSettings.Networks \"pnnpod\").IPAddress}}",
        ])
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(web_ip.starts_with("10.172.10."), "{web_ip}");
    // Another container: its resolv.conf names the resolver (from the ADD result's dns) and
    // it resolves `web` and the alias `www` through it.
    let mut args = vec!["run", "--rm", "--network", "pnnpod"];
    args.extend_from_slice(&ulimits);
    args.extend_from_slice(&[
        "localhost/pnnbb:latest",
        "sh",
        "-c",
        "cat /etc/resolv.conf; for i in 1 2 3 4 5 6 7 8 9 10; do nslookup web && nslookup www && exit 0; sleep 0.3; done; exit 1",
    ]);
    let out = p.run(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lookup from a second container: {out:?}\n{}",
        agent.log()
    );
    assert!(text.contains("nameserver 10.172.10.1"), "{text}");
    assert!(text.contains("dns.plugnet"), "{text}");
    assert!(text.contains(&web_ip), "{text}");

    let out = p.run(&["rm", "-f", "-t", "0", "web"]);
    assert!(out.status.success(), "podman rm: {out:?}");
    let records = std::fs::read_dir(agent_dir.join("names/pnnpod"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 0, "name record left after podman rm");
    assert!(agent.alive());
}
