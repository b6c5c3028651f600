//! The cluster data plane (issue 22): three "hosts" (network namespaces with their agents, a
//! three-member etcd), containers added by the plugnet bridge plugin on each, and packets
//! between them across hosts — host-gw over one L2 segment, VXLAN over two L3 subnets behind a
//! router namespace. Checked by what crosses: pings (IPv4 and IPv6), a TCP transfer larger than
//! the MTU and the source address it arrives with, and by what the kernel holds afterwards.
//!
//! Objects: namespaces `pndg…`/`pndv…`, underlay 10.173.200.0/24 and 10.173.201.0/24, cluster
//! subnets inside 10.173.0.0/17 and fd00:173::/32; all removed by the harness's guards.

use plugnet_tests::cluster::{Topology, World, WorldOptions};
use plugnet_tests::Netns;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// One world at a time (see tests/cluster.rs).
static ONE_WORLD: Mutex<()> = Mutex::new(());

fn one_world() -> std::sync::MutexGuard<'static, ()> {
    ONE_WORLD.lock().unwrap_or_else(|e| e.into_inner())
}

const UNDERLAY: (u8, u8, u8) = (10, 173, 200);

fn world(prefix: &'static str, topology: Topology) -> World {
    World::new(WorldOptions {
        prefix,
        topology,
        hosts: 3,
        etcd_members: 3,
        agent_args: ["--lease-ttl", "3s", "--metrics-listen", "off"]
            .map(String::from)
            .to_vec(),
        underlay_base: UNDERLAY,
    })
}

/// A container on host `host`: its namespace and addresses.
struct Ctr {
    ns: Netns,
    id: String,
    host: usize,
    conf: Value,
    v4: IpAddr,
    v6: IpAddr,
    mtu: Option<u64>,
}

fn conf(w: &World, h: usize, net: &str, routed: bool, ip_masq: bool) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": format!("{net}-cni"), "type": "plugnet",
        "bridge": "pndbr0", "isGateway": true, "isDefaultGateway": true, "ipMasq": ip_masq,
        "ipam": {"type": "plugnet-ipam", "cluster": net, "agentDir": w.hosts[h].agent_dir()},
        // Each host its own firewall state (one machine plays three hosts).
        "firewallStateDir": w.hosts[h].agent_dir().with_file_name("firewall")});
    if routed {
        c["mode"] = json!("routed");
        c.as_object_mut().unwrap().remove("bridge");
        c.as_object_mut().unwrap().remove("isGateway");
        c.as_object_mut().unwrap().remove("isDefaultGateway");
    }
    c
}

fn add(w: &World, h: usize, net: &str, tag: &str, routed: bool, ip_masq: bool) -> Ctr {
    let ns = Netns::new("pndc");
    let id = format!("pnd-{tag}-{h}");
    let conf = conf(w, h, net, routed, ip_masq);
    let mut r = w.hosts[h].bridge("ADD", &id, &ns.path(), &conf);
    for _ in 0..20 {
        if r.code == 0 || r.json()["code"] != 11 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        r = w.hosts[h].bridge("ADD", &id, &ns.path(), &conf);
    }
    assert_eq!(
        r.code,
        0,
        "ADD {id}: {} {}\n{}",
        r.stdout,
        r.stderr,
        w.logs()
    );
    let res = r.json();
    let ip = |v4: bool| -> IpAddr {
        res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .find(|a: &IpAddr| a.is_ipv4() == v4)
            .unwrap_or_else(|| panic!("no IPv{} in {res}", if v4 { 4 } else { 6 }))
    };
    let mtu = ns.exec("cat /sys/class/net/eth0/mtu").trim().parse().ok();
    Ctr {
        v4: ip(true),
        v6: ip(false),
        ns,
        id,
        host: h,
        conf,
        mtu,
    }
}

fn del(w: &World, c: &Ctr) {
    let r = w.hosts[c.host].bridge("DEL", &c.id, &c.ns.path(), &c.conf);
    assert_eq!(r.code, 0, "DEL {}: {} {}", c.id, r.stdout, r.stderr);
}

fn ping_once(from: &Ctr, to: IpAddr) -> bool {
    from.ns.exec_ok(&format!("ping -c 1 -W 1 {to}"))
}

/// Every container reaches every container on another host, both families.
fn all_pairs_ping(w: &World, ctrs: &[Ctr], within: Duration) {
    for a in ctrs {
        for b in ctrs.iter().filter(|b| b.host != a.host) {
            for to in [b.v4, b.v6] {
                w.wait(within, &format!("{} → {to} ({})", a.id, b.id), || {
                    ping_once(a, to).then_some(())
                });
            }
        }
    }
}

/// Send `bytes` over TCP from `from` to `to` (a server in `to`'s namespace); the address the
/// server saw the connection come from, and how many bytes arrived.
fn tcp_transfer(from: &Ctr, to: &Ctr, dst: IpAddr, bytes: usize) -> (IpAddr, usize) {
    let fam = if dst.is_ipv4() { "AF_INET" } else { "AF_INET6" };
    let server = format!(
        "import socket\n\
         s=socket.socket(socket.{fam},socket.SOCK_STREAM)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{dst}',5201)); s.listen(1); s.settimeout(20)\n\
         c,a=s.accept(); c.settimeout(20); n=0\n\
         while True:\n\
         \x20   d=c.recv(65536)\n\
         \x20   if not d: break\n\
         \x20   n+=len(d)\n\
         print(a[0], n, flush=True)\n"
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &to.ns.name, "python3", "-c", &server])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let client = format!(
        "import socket,time\n\
         for i in range(50):\n\
         \x20   try:\n\
         \x20       c=socket.create_connection(('{dst}',5201),timeout=5); break\n\
         \x20   except OSError: time.sleep(0.1)\n\
         c.sendall(b'x'*{bytes}); c.close()\n"
    );
    let ok = Command::new("ip")
        .args(["netns", "exec", &from.ns.name, "python3", "-c", &client])
        .status()
        .expect("client")
        .success();
    let out = child.wait_with_output().expect("server output");
    assert!(
        ok && out.status.success(),
        "TCP {} → {dst}: client ok {ok}, server: {} {}",
        from.id,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let peer: IpAddr = parts
        .next()
        .and_then(|p| p.trim_start_matches("::ffff:").parse().ok())
        .unwrap_or_else(|| panic!("server said {text:?}"));
    let n = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (peer, n)
}

/// `ip route show proto 112` (plugnet's cluster routes) in host `h`, both families.
fn tagged_routes(w: &World, h: usize) -> String {
    let ns = &w.hosts[h].node.ns;
    format!(
        "{}{}",
        ns.exec("ip route show proto 112"),
        ns.exec("ip -6 route show proto 112")
    )
}

fn block_of(w: &World, net: &str, ip: IpAddr) -> String {
    let blocks = w.cli_ok(&["blocks", "--network", net]);
    blocks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["block"].as_str())
        .map(|b| b.parse::<ipnetwork::IpNetwork>().unwrap())
        .find(|b| b.contains(ip))
        .unwrap_or_else(|| panic!("no block of {ip} in {blocks}"))
        .to_string()
}

/// The data plane's status of `net` on host `h`, per peer.
fn peers(w: &World, h: usize, net: &str) -> Vec<Value> {
    let st = w.hosts[h].status();
    st["dataplane"]["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["network"] == net)
        .and_then(|n| n["peers"].as_array().cloned())
        .unwrap_or_default()
}

/// Nothing of the data plane left on any host: no tagged route, no VXLAN device.
fn assert_clean(w: &World) {
    for h in 0..w.hosts.len() {
        w.wait(Duration::from_secs(20), "data plane gone", || {
            let routes = tagged_routes(w, h);
            let devs = w.hosts[h].node.ns.exec("ip -d link show type vxlan");
            (routes.trim().is_empty() && devs.trim().is_empty()).then_some(())
        });
    }
}

#[test]
fn host_gw_one_segment_bridge_and_routed() {
    let _one = one_world();
    let w = world("pndg", Topology::OneSegment);
    for (net, v4, v6) in [
        ("pndgw", "10.173.0.0/18", "fd00:173::/64"),
        ("pndgr", "10.173.64.0/18", "fd00:173:1::/64"),
    ] {
        w.cli_ok(&[
            "network", "create", net, "--subnet", v4, "--subnet", v6, "--mode", "host-gw",
        ]);
    }
    // Host 1's FORWARD policy drops (as after dockerd): cluster traffic still passes it.
    for t in ["iptables", "ip6tables"] {
        w.hosts[1].node.ns.exec(&format!("{t} -P FORWARD DROP"));
    }
    // ipMasq on the bridged containers: inside the cluster network the source stays.
    let bridged: Vec<Ctr> = (0..3)
        .map(|h| add(&w, h, "pndgw", "b", false, true))
        .collect();
    let routed: Vec<Ctr> = (0..3)
        .map(|h| add(&w, h, "pndgr", "r", true, false))
        .collect();

    all_pairs_ping(&w, &bridged, Duration::from_secs(20));
    all_pairs_ping(&w, &routed, Duration::from_secs(20));

    // The routes are plugnet's (proto 112), one per remote block, via the holder's underlay.
    let routes = tagged_routes(&w, 0);
    for c in bridged.iter().chain(&routed).filter(|c| c.host != 0) {
        for ip in [c.v4, c.v6] {
            let net = if c.id.contains("-b-") {
                "pndgw"
            } else {
                "pndgr"
            };
            let block = block_of(&w, net, ip);
            assert!(routes.contains(&block), "no route to {block}: {routes}");
        }
    }
    assert!(
        routes.contains(&format!("via {}", w.hosts[1].node.ip)),
        "{routes}"
    );
    // The status says so per peer, also in `plugnet cluster status`'s human form.
    let out = w.admin.run(
        &plugnet_tests::bin("plugnet-agent"),
        &[
            "cluster",
            "--etcd",
            &w.etcd.endpoints(),
            "status",
            "--state-dir",
            w.hosts[0].agent_dir().to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("data plane of pndgw (host-gw, MTU 1500)"),
        "{text}"
    );
    assert!(text.contains("ROUTESINPLACE"), "{text}");
    let ps = peers(&w, 0, "pndgw");
    assert_eq!(ps.len(), 2, "{ps:?}");
    for p in &ps {
        assert_eq!(p["routesInPlace"], true, "{p}");
        assert!(!p["blocks"].as_array().unwrap().is_empty(), "{p}");
    }

    // A TCP transfer far larger than the MTU passes and keeps the source address (ipMasq on,
    // into the host whose FORWARD drops, both families).
    let (peer, n) = tcp_transfer(&bridged[0], &bridged[1], bridged[1].v4, 4 << 20);
    assert_eq!((peer, n), (bridged[0].v4, 4 << 20));
    let (peer, n) = tcp_transfer(&bridged[2], &bridged[1], bridged[1].v6, 4 << 20);
    assert_eq!((peer, n), (bridged[2].v6, 4 << 20));
    let fw = w.hosts[1].node.ns.exec("iptables -S");
    assert!(
        fw.contains("-A FORWARD -m comment --comment \"plugnet cluster\" -j PLUGNET-CLUSTER"),
        "{fw}"
    );
    let (peer, n) = tcp_transfer(&routed[2], &routed[0], routed[0].v6, 4 << 20);
    assert_eq!((peer, n), (routed[2].v6, 4 << 20));

    for c in bridged.iter().chain(&routed) {
        del(&w, c);
    }
    for net in ["pndgw", "pndgr"] {
        w.cli_ok(&["network", "rm", net, "--force"]);
    }
    assert_clean(&w);
    w.wait(Duration::from_secs(20), "FORWARD chain gone", || {
        (!w.hosts[1]
            .node
            .ns
            .exec("iptables -S")
            .contains("PLUGNET-CLUSTER"))
        .then_some(())
    });
}

#[test]
fn vxlan_two_subnets_restart_reboot_join_leave() {
    let _one = one_world();
    let mut w = world("pndv", Topology::TwoSubnets);
    w.cli_ok(&[
        "network",
        "create",
        "pndvx",
        "--subnet",
        "10.173.64.0/18",
        "--subnet",
        "fd00:173:2::/64",
        "--mode",
        "vxlan",
    ]);
    let ctrs: Vec<Ctr> = (0..3)
        .map(|h| add(&w, h, "pndvx", "v", false, false))
        .collect();
    all_pairs_ping(&w, &ctrs, Duration::from_secs(20));

    // MTU derived: underlay 1500 − 50 on the device, the bridge and the container's interface.
    let dev = w.hosts[0].node.ns.exec("ip -d -j link show type vxlan");
    let devs: Value = serde_json::from_str(&dev).unwrap();
    let d = &devs[0];
    assert_eq!(d["mtu"], 1450, "{d}");
    assert_eq!(
        d["linkinfo"]["info_data"]["id"].as_u64().map(|_| ()),
        Some(())
    );
    assert_eq!(d["linkinfo"]["info_data"]["port"], 4789, "{d}");
    assert_eq!(d["linkinfo"]["info_data"]["learning"], false, "{d}");
    for c in &ctrs {
        assert_eq!(c.mtu, Some(1450), "container {} MTU", c.id);
        let br = w.hosts[c.host]
            .node
            .ns
            .exec("cat /sys/class/net/pndbr0/mtu");
        assert_eq!(br.trim(), "1450");
    }
    let mac_before: Vec<String> = (0..3)
        .map(|h| w.hosts[h].status()["dataplane"]["vtepMac"].to_string())
        .collect();
    assert_eq!(
        d["address"].to_string(),
        mac_before[0],
        "device MAC is the VTEP MAC"
    );

    // TCP larger than the MTU, both families, source kept.
    let (peer, n) = tcp_transfer(&ctrs[0], &ctrs[1], ctrs[1].v4, 4 << 20);
    assert_eq!((peer, n), (ctrs[0].v4, 4 << 20));
    let (peer, n) = tcp_transfer(&ctrs[1], &ctrs[2], ctrs[2].v6, 4 << 20);
    assert_eq!((peer, n), (ctrs[1].v6, 4 << 20));

    // Agents SIGKILLed and restarted while a ping runs: no packet lost; the restarted agents
    // change nothing in the kernel.
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ctrs[0].ns.name,
            "ping",
            "-i",
            "0.1",
            "-c",
            "50",
        ])
        .arg(ctrs[1].v4.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(1000));
    for h in [0, 1] {
        w.hosts[h].kill_agent();
        w.hosts[h].start_agent();
    }
    for h in [0, 1] {
        w.wait(
            Duration::from_secs(20),
            "restarted agent reconciled",
            || {
                let st = w.hosts[h].status();
                st["dataplane"]["lastChanges"].as_u64().map(|c| (c, st))
            },
        );
        let st = w.hosts[h].status();
        assert_eq!(st["dataplane"]["lastChanges"], 0, "host {h}: {st}");
    }
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");

    // "Reboot" with the state wiped: same host id, same VTEP MAC; peers' entries stay right.
    w.hosts[2].kill_agent();
    let dir = w.hosts[2].agent_dir();
    let _ = std::fs::remove_dir_all(dir.join("identity.json"));
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        if f.file_name() != "ipam" && f.file_name() != "bindings" && f.file_name() != "networks" {
            let _ = std::fs::remove_file(f.path());
        }
    }
    // A route of plugnet's that nobody wants (left from before the "reboot") goes at start-up;
    // a route of another protocol to the same kind of place stays.
    w.hosts[2].node.ns.exec(&format!(
        "ip route add 10.173.127.0/26 via {} proto 112",
        w.hosts[0].node.ip
    ));
    w.hosts[2]
        .node
        .ns
        .exec("ip route add 10.173.127.64/26 via 10.173.200.254 proto static");
    w.hosts[2].start_agent();
    w.hosts[2].wait_registered(Duration::from_secs(20));
    w.wait(
        Duration::from_secs(20),
        "stale tagged route deleted",
        || (!tagged_routes(&w, 2).contains("10.173.127.0/26")).then_some(()),
    );
    let ns2 = &w.hosts[2].node.ns;
    assert!(ns2.exec("ip route").contains("10.173.127.64/26"));
    ns2.exec("ip route del 10.173.127.64/26");
    w.wait(Duration::from_secs(20), "host 2 data plane", || {
        let m = w.hosts[2].status()["dataplane"]["vtepMac"].to_string();
        (m != "null").then_some(())
    });
    assert_eq!(
        w.hosts[2].status()["dataplane"]["vtepMac"].to_string(),
        mac_before[2]
    );
    all_pairs_ping(&w, &ctrs, Duration::from_secs(20));

    // A host's agent down past its lease: its containers still run, so its routes stay.
    let block2 = block_of(&w, "pndvx", ctrs[2].v4);
    assert!(tagged_routes(&w, 0).contains(&block2));
    w.hosts[2].stop_agent();
    w.wait(
        Duration::from_secs(30),
        "host 2's registration expired",
        || {
            let hosts = w.cli_ok(&["hosts"]);
            hosts
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == w.hosts[2].name && h["alive"] == false)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(tagged_routes(&w, 0).contains(&block2), "route kept");
    assert!(
        ping_once(&ctrs[0], ctrs[2].v4),
        "flow to the departed host's container"
    );
    // A peer's agent restarted meanwhile still knows the departed host: nothing changes.
    w.hosts[0].kill_agent();
    w.hosts[0].start_agent();
    let st = w.wait(Duration::from_secs(20), "host 0 reconciled", || {
        let st = w.hosts[0].status();
        st["dataplane"]["lastChanges"].as_u64().map(|_| st)
    });
    assert_eq!(st["dataplane"]["lastChanges"], 0, "{st}");
    assert!(
        tagged_routes(&w, 0).contains(&block2),
        "route kept over a restart"
    );
    // The host leaves (its blocks released): its routes and FDB entries go from the others.
    w.cli_ok(&["release-host", &w.hosts[2].name]);
    w.wait(Duration::from_secs(30), "host 2's routes gone", || {
        (!tagged_routes(&w, 0).contains(&block2) && !tagged_routes(&w, 1).contains(&block2))
            .then_some(())
    });
    let fdb = w.hosts[0].node.ns.exec("bridge fdb show");
    assert!(
        !fdb.contains(&format!("dst {}", w.hosts[2].node.ip)),
        "{fdb}"
    );
    // It comes back (retakes its blocks, its containers still there): routes return.
    w.hosts[2].start_agent();
    w.wait(Duration::from_secs(30), "host 2's routes back", || {
        tagged_routes(&w, 0).contains(&block2).then_some(())
    });
    all_pairs_ping(&w, &ctrs, Duration::from_secs(20));

    // A host joins late (on the router's far side): its routes appear on the others and
    // theirs on it.
    let node = w.underlay.node("pndvh", 1);
    let mut late = plugnet_tests::cluster::Host::new(
        node,
        "pndv-h3",
        &w.etcd.endpoints(),
        ["--lease-ttl", "3s", "--metrics-listen", "off"]
            .map(String::from)
            .to_vec(),
    );
    late.start_agent();
    late.wait_registered(Duration::from_secs(20));
    let late_ctr = {
        let ns = Netns::new("pndc");
        let conf = json!({"cniVersion": "1.0.0", "name": "pndvx-cni", "type": "plugnet",
            "bridge": "pndbr0", "isGateway": true, "isDefaultGateway": true,
            "ipam": {"type": "plugnet-ipam", "cluster": "pndvx", "agentDir": late.agent_dir()},
            "firewallStateDir": late.agent_dir().with_file_name("firewall")});
        let r = late.bridge("ADD", "pnd-late", &ns.path(), &conf);
        assert_eq!(r.code, 0, "ADD on the late host: {} {}", r.stdout, r.stderr);
        let v4: IpAddr = r.json()["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap();
        (ns, conf, v4)
    };
    w.wait(Duration::from_secs(20), "late host reached", || {
        ping_once(&ctrs[0], late_ctr.2).then_some(())
    });
    w.wait(
        Duration::from_secs(20),
        "late host reaches the others",
        || {
            late_ctr
                .0
                .exec_ok(&format!("ping -c 1 -W 1 {}", ctrs[1].v4))
                .then_some(())
        },
    );
    assert_eq!(
        late.bridge("DEL", "pnd-late", &late_ctr.0.path(), &late_ctr.1)
            .code,
        0
    );

    for c in &ctrs {
        del(&w, c);
    }
    w.cli_ok(&["network", "rm", "pndvx", "--force"]);
    assert_clean(&w);
    for h in 0..3 {
        let fdb = w.hosts[h].node.ns.exec("bridge fdb show");
        assert!(!fdb.contains("dst "), "FDB left on host {h}: {fdb}");
    }
}
