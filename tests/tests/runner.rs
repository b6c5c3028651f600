//! Black-box tests of `plugnet up/down/check/info/metrics/list` (the runner CLI), driving the
//! built `plugnet` binary with real plugins (ours and the Go reference plugins).
//!
//! Each test builds a private "host" netns (where the runner runs and the bridges live) and
//! container netns `pnr-<test><role>-<pid>`; everything is removed even on failure (guards).
//! Addresses come from 10.80.0.0/16 .. 10.89.0.0/16, one /16 per test.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

// ---------------------------------------------------------------------------------------------
// Harness

/// target/debug (the test executable lives in target/debug/deps).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for b in ["plugnet", "plugnet-ipam"] {
        assert!(
            dir.join(b).is_file(),
            "{} missing: run `cargo build --workspace` before these tests",
            dir.join(b).display()
        );
    }
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// A network namespace this test created; deleted on drop.
struct Ns(String);

impl Ns {
    fn new(test: &str, role: &str) -> Ns {
        let name = format!("pnr-{test}{role}-{}", std::process::id());
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        let out = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        let ns = Ns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args))
    }
    fn json(&self, args: &[&str]) -> Value {
        let out = self.exec(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
    /// IPv4 addresses (with prefix) of `dev`, or empty if it does not exist.
    fn addrs(&self, dev: &str) -> Vec<String> {
        let out = self.exec(&["ip", "-j", "-4", "addr", "show", "dev", dev]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }
    /// Names of every link except lo.
    fn links(&self) -> Vec<String> {
        self.json(&["ip", "-j", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .filter(|n| n != "lo")
            .collect()
    }
    /// Ports of bridge `br` (empty if the bridge does not exist).
    fn ports(&self, br: &str) -> Vec<String> {
        let out = self.exec(&["ip", "-j", "link", "show", "master", br]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
    fn ping(&self, ip: &str) -> bool {
        (0..3).any(|_| {
            self.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", ip])
                .status
                .success()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

/// One test's world: a host netns running the runner, a state dir, a conf dir and IPAM dirs.
/// Dropping it takes every container down (releasing leases) before the netns go.
struct World {
    test: &'static str,
    dir: tempfile::TempDir,
    containers: std::sync::Mutex<Vec<String>>,
    host: Ns,
}

impl World {
    fn new(test: &'static str) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        World {
            test,
            dir,
            containers: Default::default(),
            host: Ns::new(test, "h"),
        }
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn data(&self, ipam: &str) -> String {
        self.dir.path().join(ipam).to_string_lossy().into_owned()
    }
    fn container(&self, role: &str) -> Ns {
        Ns::new(self.test, role)
    }
    /// Run `plugnet ARGS` in the host netns with `stdin`; returns (exit code, stdout, stderr).
    fn plugnet(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        if let Some(i) = args.iter().position(|a| *a == "--id") {
            let id = args[i + 1].to_string();
            if !self.containers.lock().unwrap().contains(&id) {
                self.containers.lock().unwrap().push(id);
            }
        }
        let mut child = self.spawn(args);
        use std::io::Write;
        // plugnet stops reading at its input limit: a broken pipe here is expected then.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    /// Start `plugnet ARGS` in the host netns with piped stdio. Plugins are found in the
    /// test's own `bin` dir (test-only plugins), then next to the tests, then /usr/lib/cni.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        let bins = bin_dir();
        Command::new("ip")
            .args(["netns", "exec", &self.host.0])
            .arg(bins.join("plugnet"))
            .args(args)
            .env_remove("CNI_COMMAND")
            .env("PLUGNET_STATE_DIR", self.state())
            .env(
                "CNI_PATH",
                format!(
                    "{}:{}:/usr/lib/cni",
                    self.dir.path().join("bin").display(),
                    bins.display()
                ),
            )
            .env("NETCONFPATH", self.dir.path().join("net.d"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    /// `plugnet ARGS` that must succeed; its stdout as JSON (Null if empty).
    fn ok(&self, args: &[&str], stdin: &str) -> Value {
        let (code, out, err) = self.plugnet(args, stdin);
        assert_eq!(code, 0, "plugnet {args:?} failed: {err}\n{out}");
        if out.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
        }
    }
    fn up(&self, id: &str, ns: &Ns, spec: &Value) -> Value {
        self.ok(
            &["up", "--id", id, "--netns", &ns.path()],
            &spec.to_string(),
        )
    }
    /// Leases held in an IPAM data dir for `network` (plugnet-ipam: files under ip/;
    /// host-local: files named by an address).
    fn leases(&self, ipam: &str, network: &str) -> Vec<String> {
        let base = Path::new(&self.data(ipam)).join(network);
        let dir = if base.join("ip").is_dir() {
            base.join("ip")
        } else {
            base
        };
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.replace('_', ":").parse::<std::net::IpAddr>().is_ok())
            .collect()
    }
    /// Nothing recorded for `id`: no state file and no cached result.
    fn assert_no_state(&self, id: &str) {
        assert!(
            !self
                .state()
                .join("containers")
                .join(format!("{id}.json"))
                .exists(),
            "state of {id} left behind"
        );
        let results: Vec<String> = std::fs::read_dir(self.state().join("results"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(id))
            .collect();
        assert!(results.is_empty(), "cached results left: {results:?}");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let ids = self.containers.lock().unwrap().clone();
        for id in ids {
            let _ = self.plugnet(&["down", "--id", &id], "");
        }
    }
}

fn in_subnet(addr: &str, prefix24: &str) -> bool {
    addr.starts_with(prefix24) && addr.ends_with("/24")
}

/// The three-network spec of the issue, a mixed list: `plugnet` + plugnet-ipam (dual stack), a
/// conflist from the conf dir with the Go reference `bridge` + `host-local`, and `plugnet`
/// again under its own interface name.
/// `spec` with the front network's port mapping on another host port (two containers cannot
/// map the same one).
fn with_host_port(spec: &Value, port: u16) -> Value {
    let mut s = spec.clone();
    s["networks"][0]["runtimeConfig"]["portMappings"][0]["hostPort"] = json!(port);
    s
}

fn three_networks(w: &World, net: u8) -> Value {
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": format!("pnr-{}-back", w.test),
        "plugins": [{"type": "bridge", "bridge": "pnrback", "isGateway": true,
                     "ipam": {"type": "host-local", "dataDir": w.data("hl"),
                              "ranges": [[{"subnet": format!("10.{net}.2.0/24")}]]}}]
    });
    std::fs::write(
        w.dir.path().join("net.d").join("20-back.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    json!({"networks": [
        {"name": "front", "type": "plugnet",
         "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
         "config": {"bridge": "pnrfront", "isGateway": true, "firewallStateDir": w.data("fw"),
            "ipam": {"type": "plugnet-ipam", "dataDir": w.data("pi"),
                     "ranges": [[{"subnet": format!("10.{net}.1.0/24")}],
                                [{"subnet": format!("fd80:{net}:1::/64")}]]}}},
        {"name": "back", "conflist": format!("pnr-{}-back", w.test)},
        {"name": "private", "type": "plugnet", "ifname": "priv0",
         "config": {"bridge": "pnrpriv", "isGateway": true,
            "ipam": {"type": "plugnet-ipam", "dataDir": w.data("pi"),
                     "ranges": [[{"subnet": format!("10.{net}.3.0/24")}]]}}}
    ]})
}

/// The container address `up` reported for `network`.
fn addr_of(up: &Value, network: &str) -> String {
    up[network]["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address for {network} in {up}"))
        .to_string()
}

fn ip_only(cidr: &str) -> &str {
    cidr.split('/').next().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn two_containers_share_three_networks() {
    let w = World::new("a");
    let (a, b) = (w.container("ca"), w.container("cb"));
    let spec = three_networks(&w, 80);
    let up_a = w.up("pnr-a1", &a, &spec);
    let up_b = w.up("pnr-a2", &b, &with_host_port(&spec, 18081));
    let names: Vec<&String> = up_a.as_object().unwrap().keys().collect();
    assert_eq!(names, ["front", "back", "private"]);

    // Each interface is on the right network, in order.
    for (ns, up) in [(&a, &up_a), (&b, &up_b)] {
        for (dev, net, prefix) in [
            ("eth0", "front", "10.80.1."),
            ("eth1", "back", "10.80.2."),
            ("priv0", "private", "10.80.3."),
        ] {
            let addrs = ns.addrs(dev);
            assert_eq!(addrs, vec![addr_of(up, net)], "{dev} of {}", ns.0);
            assert!(in_subnet(&addrs[0], prefix), "{dev}: {addrs:?}");
        }
    }
    assert_eq!(
        w.leases("pi", "front").len(),
        4,
        "one IPv4 and one IPv6 lease each"
    );
    assert_eq!(w.leases("hl", "pnr-a-back").len(), 2);

    // info names each network and tells what a user needs.
    let info = w.ok(&["info", "--id", "pnr-a1"], "");
    for (net, dev, br) in [
        ("front", "eth0", "pnrfront"),
        ("back", "eth1", "pnrback"),
        ("private", "priv0", "pnrpriv"),
    ] {
        let i = &info[net];
        assert_eq!(i["interface"], dev, "{info}");
        assert_eq!(i["ips"][0], addr_of(&up_a, net).as_str());
        assert_eq!(i["bridge"], br);
        let gw = i["gateways"][0].as_str().unwrap();
        assert_eq!(i["hostIps"][0], format!("{gw}/24").as_str(), "{info}");
        let host_if = i["hostInterface"].as_str().unwrap();
        assert!(w.host.ports(br).contains(&host_if.to_string()), "{info}");
        let mac = a.json(&["ip", "-j", "link", "show", "dev", dev])[0]["address"].clone();
        assert_eq!(i["mac"], mac);
    }

    assert_eq!(
        info["front"]["portMappings"][0]["hostPort"], 18080,
        "{info}"
    );
    assert_eq!(info["back"]["portMappings"], json!([]));

    // The containers reach each other on every network; counters grow.
    let before = w.ok(&["metrics", "--id", "pnr-a1"], "");
    for net in ["front", "back", "private"] {
        let target = addr_of(&up_b, net);
        assert!(a.ping(ip_only(&target)), "ping {net} {target}");
    }
    let v6 = up_b["front"]["ips"][1]["address"].as_str().unwrap();
    assert!(v6.starts_with("fd80:80:1::"), "{up_b}");
    assert!(a.ping(ip_only(v6)), "ping front over IPv6 {v6}");
    let after = w.ok(&["metrics", "--id", "pnr-a1"], "");
    for net in ["front", "back", "private"] {
        for c in ["rxPackets", "txPackets", "rxBytes", "txBytes"] {
            let (x, y) = (
                before[net][c].as_u64().unwrap(),
                after[net][c].as_u64().unwrap(),
            );
            assert!(y > x, "{net} {c}: {x} -> {y}");
        }
        assert!(after[net].get("rxErrors").is_some() && after[net].get("txDropped").is_some());
    }

    let check = w.ok(&["check", "--id", "pnr-a2"], "");
    assert_eq!(check["back"]["ok"], true, "{check}");
    assert_eq!(check.as_object().unwrap().len(), 3);
    let list = w.ok(&["list"], "");
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["networks"].as_array().unwrap().len(), 3);
    let (code, table, _) = w.plugnet(&["list", "--table"], "");
    assert_eq!(code, 0);
    assert!(
        table.contains("pnr-a2") && table.contains("priv0"),
        "{table}"
    );

    // down leaves nothing: no veth on any bridge, no lease, no state.
    w.ok(&["down", "--id", "pnr-a1"], "");
    w.ok(&["down", "--id", "pnr-a2"], "");
    w.ok(&["down", "--id", "pnr-a2"], "");
    for br in ["pnrfront", "pnrback", "pnrpriv"] {
        assert!(w.host.ports(br).is_empty(), "ports left on {br}");
    }
    assert!(a.links().is_empty() && b.links().is_empty());
    assert!(w.leases("pi", "front").is_empty() && w.leases("pi", "private").is_empty());
    assert!(w.leases("hl", "pnr-a-back").is_empty());
    w.assert_no_state("pnr-a1");
    w.assert_no_state("pnr-a2");
    assert_eq!(w.ok(&["list"], ""), json!([]));
}

#[test]
fn a_failing_third_entry_rolls_back_the_first_two() {
    let w = World::new("b");
    let c = w.container("c");
    let mut spec = three_networks(&w, 81);
    // The reference bridge creates its veth before asking IPAM, which refuses this range.
    spec["networks"][2]["config"]["ipam"]["ranges"] =
        json!([[{"subnet": "10.81.3.0/24", "rangeStart": "10.99.0.1"}]]);
    let (code, out, err) = w.plugnet(
        &["up", "--id", "pnr-b1", "--netns", &c.path()],
        &spec.to_string(),
    );
    assert_ne!(code, 0);
    assert!(out.is_empty(), "no result on failure: {out}");
    assert!(
        err.contains("\"private\"") && err.contains("entry 2"),
        "{err}"
    );
    assert!(
        c.links().is_empty(),
        "container interfaces left: {:?}",
        c.links()
    );
    for br in ["pnrfront", "pnrback", "pnrpriv"] {
        assert!(w.host.ports(br).is_empty(), "veth left on {br}");
    }
    assert!(w.leases("pi", "front").is_empty());
    assert!(w.leases("pi", "private").is_empty());
    assert!(w.leases("hl", "pnr-b-back").is_empty());
    w.assert_no_state("pnr-b1");
    // And the same container comes up fine once the spec is fixed. (A new bridge name: the
    // reference bridge cannot reuse a bridge whose first ADD failed — its MAC is left zero.)
    let mut fixed = three_networks(&w, 81);
    fixed["networks"][2]["config"]["bridge"] = json!("pnrpriv2");
    let up = w.up("pnr-b1", &c, &fixed);
    assert_eq!(up.as_object().unwrap().len(), 3);
}

#[test]
fn hot_plug_a_fourth_network_and_unplug_it() {
    let w = World::new("c");
    let (a, b) = (w.container("ca"), w.container("cb"));
    let spec = three_networks(&w, 82);
    let up_a = w.up("pnr-c1", &a, &spec);
    let up_b = w.up("pnr-c2", &b, &with_host_port(&spec, 18081));
    let fourth = json!({"networks": [{"name": "extra", "type": "bridge", "config": {
        "bridge": "pnrextra", "isGateway": true,
        "ipam": {"type": "plugnet-ipam", "dataDir": w.data("pi"),
                 "ranges": [[{"subnet": "10.82.4.0/24"}]]}}}]});
    let plug_a = w.up("pnr-c1", &a, &fourth);
    let plug_b = w.up("pnr-c2", &b, &fourth);
    assert_eq!(
        plug_a.as_object().unwrap().len(),
        1,
        "up reports what it attached"
    );
    assert_eq!(
        a.addrs("eth2"),
        vec![addr_of(&plug_a, "extra")],
        "next free ethN"
    );
    assert!(a.ping(ip_only(&addr_of(&plug_b, "extra"))));
    let info = w.ok(&["info", "--id", "pnr-c1"], "");
    assert_eq!(info.as_object().unwrap().len(), 4);

    w.ok(&["down", "--id", "pnr-c1", "--network", "extra"], "");
    assert!(a.addrs("eth2").is_empty(), "eth2 gone");
    assert_eq!(w.leases("pi", "extra").len(), 1, "only c2's lease remains");
    let gone = a.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        ip_only(&addr_of(&plug_b, "extra")),
    ]);
    assert!(!gone.status.success(), "no route to the unplugged network");
    for net in ["front", "back", "private"] {
        assert!(a.ping(ip_only(&addr_of(&up_b, net))), "{net} still works");
    }
    let check = w.ok(&["check", "--id", "pnr-c1"], "");
    assert_eq!(check.as_object().unwrap().len(), 3);

    // check notices what a user broke, and names the network.
    let out = a.exec(&["ip", "link", "del", "priv0"]);
    assert!(out.status.success(), "{out:?}");
    let (code, out, _) = w.plugnet(&["check", "--id", "pnr-c1"], "");
    assert_eq!(code, 1, "{out}");
    let check: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(check["private"]["ok"], false, "{check}");
    assert_eq!(check["front"]["ok"], true, "{check}");
    assert_eq!(check["back"]["ok"], true, "{check}");
    let _ = up_a;
}

#[test]
fn down_after_the_netns_is_deleted() {
    let w = World::new("d");
    let c = w.container("c");
    w.up("pnr-d1", &c, &three_networks(&w, 83));
    assert_eq!(w.leases("pi", "front").len(), 2, "dual stack");
    drop(c);
    let (code, _, err) = w.plugnet(&["down", "--id", "pnr-d1"], "");
    assert_eq!(code, 0, "{err}");
    // plugnet removes its host veth itself; the reference bridge leaves it to the kernel, which
    // destroys a deleted namespace's veth pairs asynchronously — so wait for that, boundedly.
    for br in ["pnrfront", "pnrpriv"] {
        assert!(w.host.ports(br).is_empty(), "veth left on {br}");
    }
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        w.host.ports("pnrback").is_empty()
    });
    assert!(gone, "veth left on pnrback after 5 s");
    assert!(w.leases("pi", "front").is_empty() && w.leases("pi", "private").is_empty());
    assert!(w.leases("hl", "pnr-d-back").is_empty());
    w.assert_no_state("pnr-d1");
}

#[test]
fn concurrent_ups_on_one_container_do_not_interleave() {
    let w = World::new("e");
    let c = w.container("c");
    let spec = |first: u8| {
        json!({"networks": (first..first + 2).map(|i| json!({
            "name": format!("n{i}"), "type": "bridge", "config": {"bridge": format!("pnre{i}"),
            "isGateway": true, "ipam": {"type": "plugnet-ipam", "dataDir": w.data("pi"),
            "ranges": [[{"subnet": format!("10.84.{i}.0/24")}]]}}})).collect::<Vec<_>>()})
    };
    let (s1, s2) = (spec(1).to_string(), spec(3).to_string());
    let path = c.path();
    std::thread::scope(|s| {
        let t1 = s.spawn(|| w.plugnet(&["up", "--id", "pnr-e1", "--netns", &path], &s1));
        let t2 = s.spawn(|| w.plugnet(&["up", "--id", "pnr-e1", "--netns", &path], &s2));
        for t in [t1, t2] {
            let (code, _, err) = t.join().unwrap();
            assert_eq!(code, 0, "{err}");
        }
    });
    let mut links = c.links();
    links.sort();
    assert_eq!(links.len(), 4, "{links:?}");
    for (i, l) in links.iter().enumerate() {
        assert!(l.starts_with(&format!("eth{i}")), "{links:?}");
    }
    let info = w.ok(&["info", "--id", "pnr-e1"], "");
    assert_eq!(info.as_object().unwrap().len(), 4);
}

#[test]
fn bad_input_is_refused_cleanly() {
    let w = World::new("f");
    let c = w.container("c");
    for (spec, want) in [
        ("{", "not valid JSON"),
        (
            r#"{"networks": [{"name": "../x", "type": "bridge"}]}"#,
            "invalid characters",
        ),
        (
            r#"{"networks": [{"name": "x", "conflist": "nope"}]}"#,
            "no net configuration",
        ),
        (
            r#"{"networks": [{"name": "x", "type": "no-such-plugin"}]}"#,
            "failed to find plugin",
        ),
    ] {
        let (code, out, err) = w.plugnet(&["up", "--id", "pnr-f1", "--netns", &c.path()], spec);
        assert_eq!(code, 1, "{spec}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains(want), "{spec}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        w.assert_no_state("pnr-f1");
    }
    let big = format!("{{\"networks\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let (code, _, err) = w.plugnet(&["up", "--id", "pnr-f1", "--netns", &c.path()], &big);
    assert_eq!(code, 1);
    assert!(err.contains("limit"), "{err}");
    let (code, _, err) = w.plugnet(&["info", "--id", "pnr-f1"], "");
    assert_eq!(code, 1);
    assert!(err.contains("no networks"), "{err}");
    let (code, _, _) = w.plugnet(&["up", "--id", "pnr-f1"], "");
    assert_eq!(code, 2, "usage error");
}

#[test]
fn a_killed_up_is_cleaned_by_down() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new("g");
    let c = w.container("c");
    // A plugin that hangs in ADD (recording its pid), so the runner can be killed mid-list.
    let bin = w.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pidfile = w.dir.path().join("slow.pid");
    std::fs::write(
        bin.join("pnr-slow"),
        format!(
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && {{ echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 60; }}\nexit 0\n",
            p = pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("pnr-slow"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = three_networks(&w, 86);
    spec["networks"][2] = json!({"name": "slow", "type": "pnr-slow"});
    let mut child = w.spawn(&["up", "--id", "pnr-g1", "--netns", &c.path()]);
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(spec.to_string().as_bytes()).unwrap();
    }
    w.containers.lock().unwrap().push("pnr-g1".into());
    let started = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        pidfile.exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = run(Command::new("kill").arg(pid.trim()));
    }
    assert!(started, "the slow plugin never ran");
    assert_eq!(
        c.links().len(),
        2,
        "front and back were attached when the runner died"
    );
    assert_eq!(w.leases("pi", "front").len(), 2);

    w.ok(&["down", "--id", "pnr-g1"], "");
    assert!(c.links().is_empty(), "{:?}", c.links());
    for br in ["pnrfront", "pnrback"] {
        assert!(w.host.ports(br).is_empty(), "veth left on {br}");
    }
    assert!(w.leases("pi", "front").is_empty());
    assert!(w.leases("hl", "pnr-g-back").is_empty());
    w.assert_no_state("pnr-g1");
}
