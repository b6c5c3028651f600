//! Issue 11: plugnet networks keep working on a host whose firewall is someone else's: a Docker
//! host (also when dockerd starts after plugnet's containers) and a firewalld host (also after
//! `firewall-cmd --reload`). Each test runs its daemon of its own inside a throwaway "host"
//! namespace (`pnx-dk-<tag>-<pid>`), with plugnet run in the same namespace: iptables and
//! nftables rulesets, the FORWARD policy and the forwarding sysctls are per namespace, so the
//! machine's real host namespace is left as it was.
//! - dockerd: own data root, exec root, pidfile and socket (`pnx-docker-<tag>-<pid>`; never the
//!   default daemon or its socket). The namespace starts with IPv4 forwarding off, as a freshly
//!   booted machine does: a dockerd that has to turn forwarding on sets the FORWARD policy to
//!   DROP (measured; one that finds it on leaves the policy alone).
//! - firewalld: on a D-Bus system bus of its own (a `dbus-daemon` listening in a temporary
//!   directory; never the machine's bus), with an empty system configuration directory, so it
//!   runs on its shipped defaults.
//!
//! Everything the tests create (the namespaces, with bridges `pnxdbr5`..`pnxdbr9` and veths
//! `pnxd9h`, `pnxd8h` inside; subnets 10.109.0.0/24 to 10.109.5.0/24; the daemons' directories)
//! is removed, also on failure.

mod bridge_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bridge_support::{ip_of, plugnet, tcp_get, tcp_listener, with_prev, Att, Host, Ns};
use plugnet::netns::Netns;
use serde_json::{json, Value};

const BRIDGE: &str = "pnxdbr9";
/// A second network using no firewall feature at all.
const BRIDGE_BARE: &str = "pnxdbr8";
/// A network without a gateway (L2 only), attached before dockerd starts.
const BRIDGE_L2: &str = "pnxdbr7";
const UPLINK: &str = "pnxd9h";
/// The firewalld host's network and uplink.
const BRIDGE_FWD: &str = "pnxdbr6";
const UPLINK_FWD: &str = "pnxd8h";

/// A throwaway host namespace with a dockerd or a firewalld of the test's own started in it on
/// demand, and the plugnet attachments made there; undone on drop (DEL of what is attached, the
/// daemons stopped, their directories removed; the namespaces go with their `Ns`).
struct FwHost {
    host: Host,
    dockerd: Option<Child>,
    firewalld: Option<Firewalld>,
    data_root: PathBuf,
    exec_root: PathBuf,
    sock: PathBuf,
    pidfile: PathBuf,
    fw_dir: tempfile::TempDir,
    /// dockerd's log (removed with the host; its tail is in the failure message).
    logs: tempfile::TempDir,
    /// (conf, attachment) of every ADD, for DEL on failure.
    attached: Vec<(Value, Att)>,
}

/// A firewalld of the test's own in the host namespace, on a D-Bus system bus of its own (its
/// socket, log and empty system configuration in `dir`); stopped on drop.
struct Firewalld {
    dbus: Child,
    daemon: Child,
    dir: tempfile::TempDir,
}

impl Firewalld {
    fn bus(dir: &Path) -> String {
        format!("unix:path={}", dir.join("bus").display())
    }

    /// `firewall-cmd ARGS` against this firewalld: (exit code, stdout + stderr).
    fn cmd(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("firewall-cmd")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", Firewalld::bus(self.dir.path()))
            .output()
            .expect("run firewall-cmd");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("firewalld.log")).unwrap_or_default()
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        stop(&mut self.daemon);
        stop(&mut self.dbus);
    }
}

/// Stops a `plugnet firewall watch` and returns what it printed (stdout, then stderr).
fn watch_output(mut watch: Child) -> String {
    stop(&mut watch);
    let mut said = String::new();
    for out in [
        watch.stdout.take().map(|o| Box::new(o) as Box<dyn Read>),
        watch.stderr.take().map(|o| Box::new(o) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut out = out;
        out.read_to_string(&mut said).unwrap();
    }
    said
}

/// SIGTERM, up to 20 s to exit, then SIGKILL.
fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while child.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl FwHost {
    /// The namespace, forwarding off, no daemon yet.
    fn new(tag: &str) -> FwHost {
        let host = Host::with_prefix("pnx-dk", tag);
        host.ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        let name = format!("pnx-docker-{tag}-{}", std::process::id());
        FwHost {
            host,
            dockerd: None,
            firewalld: None,
            data_root: format!("/var/lib/{name}").into(),
            exec_root: format!("/run/{name}").into(),
            sock: format!("/run/{name}.sock").into(),
            pidfile: format!("/run/{name}.pid").into(),
            fw_dir: tempfile::Builder::new()
                .prefix("pnx-fw-")
                .tempdir()
                .unwrap(),
            logs: tempfile::Builder::new()
                .prefix("pnx-dlog-")
                .tempdir()
                .unwrap(),
            attached: Vec::new(),
        }
    }

    /// Starts dockerd in the namespace and waits until its chains are there.
    fn start_dockerd(&mut self) {
        let log_path = self.logs.path().join("dockerd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut c = Command::new("dockerd");
        c.arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--pidfile")
            .arg(&self.pidfile)
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            // No docker0: nothing here needs a Docker network.
            .args(["--bridge", "none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Spawned from a thread in the namespace: the daemon (and its containerd) live there,
        // with the machine's mounts (cgroups) as they are.
        let child = Netns::open(self.host.ns.path())
            .unwrap()
            .run(move || c.spawn())
            .unwrap()
            .expect("start dockerd");
        self.dockerd = Some(child);
        let t0 = Instant::now();
        while !(self.sock.exists()
            && self
                .host
                .ns
                .exec(&["iptables", "-S", "DOCKER-USER"])
                .status
                .success())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "dockerd did not come up: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn forward_policy(&self) -> String {
        self.host
            .ns
            .sh(&["iptables", "-S", "FORWARD"])
            .lines()
            .find_map(|l| l.strip_prefix("-P FORWARD "))
            .unwrap_or("")
            .trim()
            .to_string()
    }

    /// Starts a D-Bus system bus and firewalld in the namespace and waits until firewalld says
    /// it is running (its ruleset is in place then).
    fn start_firewalld(&mut self) {
        let dir = tempfile::Builder::new()
            .prefix("pnx-firewalld-")
            .tempdir()
            .unwrap();
        let bus = Firewalld::bus(dir.path());
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let log = dir.path().join("firewalld.log");
        let ns = Netns::open(self.host.ns.path()).unwrap();
        let mut d = Command::new("dbus-daemon");
        d.args([
            "--config-file=/usr/share/dbus-1/system.conf",
            "--nofork",
            "--nopidfile",
        ])
        .arg(format!("--address={bus}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let dbus = ns
            .run(move || d.spawn())
            .unwrap()
            .expect("start dbus-daemon");
        let mut f = Command::new("firewalld");
        f.args(["--nofork", "--nopid", "--log-target", "file", "--log-file"])
            .arg(&log)
            .arg("--system-config")
            .arg(&etc)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let daemon = ns.run(move || f.spawn()).unwrap().expect("start firewalld");
        let fw = self.firewalld.insert(Firewalld { dbus, daemon, dir });
        let t0 = Instant::now();
        while fw.cmd(&["--state"]).1.trim() != "running" {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "firewalld did not come up: {}",
                fw.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn firewall_cmd(&self, args: &[&str]) -> String {
        let (code, out) = self.firewalld.as_ref().expect("firewalld").cmd(args);
        assert_eq!(code, 0, "firewall-cmd {args:?}: {out}");
        out
    }

    /// An "outside" namespace behind a veth `uplink` (its peer named with a trailing `o`):
    /// 10.109.`net`.1/24 on the host's end, .2 outside, with a default route back.
    fn outside(&self, uplink: &str, net: u8) -> Ns {
        let outside = Ns::new(format!("{}-out", self.host.ns.name));
        let peer = format!("{}o", uplink.trim_end_matches('h'));
        let host_ip = format!("10.109.{net}.1");
        self.host.ns.sh(&[
            "ip",
            "link",
            "add",
            uplink,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &outside.name,
        ]);
        self.host
            .ns
            .sh(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", uplink]);
        self.host.ns.sh(&["ip", "link", "set", uplink, "up"]);
        outside.sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.109.{net}.2/24"),
            "dev",
            &peer,
        ]);
        outside.sh(&["ip", "link", "set", &peer, "up"]);
        outside.sh(&["ip", "route", "add", "default", "via", &host_ip]);
        outside
    }

    /// CHECK through the binary of the attachment made with `conf` for `ns`, given its ADD
    /// result: (exit code, stdout).
    fn check(&self, conf: &Value, result: &Value, id: &str, ns: &Ns) -> (i32, String) {
        let out = self.host.run(
            &plugnet(),
            "CHECK",
            &with_prev(conf, result),
            Some(&Att::new(id, &ns.path(), "eth0")),
        );
        (out.code, out.stdout)
    }

    /// `plugnet firewall watch` over this host's firewall state, running in its namespace.
    fn spawn_watch(&self) -> Child {
        let mut c = Command::new(plugnet());
        c.args(["firewall", "watch", "--state-dir"])
            .arg(self.fw_dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Netns::open(self.host.ns.path())
            .unwrap()
            .run(move || c.spawn())
            .unwrap()
            .expect("start plugnet firewall watch")
    }

    /// A network on `bridge` with `subnet`, gateway and masquerading on.
    fn conf(&self, name: &str, bridge: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": name,
            "type": "plugnet",
            "bridge": bridge,
            "isDefaultGateway": true,
            "ipMasq": true,
            "firewallStateDir": self.fw_dir.path(),
            "ipam": {"type": "plugnet-ipam", "dataDir": self.host.data_dir.path(),
                     "ranges": [[{"subnet": subnet}]]},
        })
    }

    fn add(&mut self, conf: &Value, id: &str, ns: &Ns) -> Value {
        let att = Att::new(id, &ns.path(), "eth0");
        self.attached.push((conf.clone(), att.clone()));
        self.host.add(conf, &att)
    }

    fn del_all(&mut self) {
        for (conf, att) in std::mem::take(&mut self.attached) {
            self.host.run(&plugnet(), "DEL", &conf, Some(&att)).ok();
        }
    }

    fn reload(&self) -> (i32, String) {
        let mut c = Command::new(plugnet());
        c.args(["firewall", "reload", "--state-dir"])
            .arg(self.fw_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = self.host.spawn_in(c, b"");
        (out.code, out.stdout + &out.stderr)
    }
}

impl Drop for FwHost {
    fn drop(&mut self) {
        for (conf, att) in std::mem::take(&mut self.attached) {
            let _ = self.host.run(&plugnet(), "DEL", &conf, Some(&att));
        }
        if let Some(mut d) = self.dockerd.take() {
            stop(&mut d);
        }
        // Docker's exec root may hold mounts (netns, containerd state); unmount before removal.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                self.exec_root.display()
            ))
            .output();
        for d in [&self.data_root, &self.exec_root] {
            let _ = std::fs::remove_dir_all(d);
        }
        for f in [&self.sock, &self.pidfile] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Connects from `ns` to `addr` while `server` accepts one connection and writes back the
/// peer address it saw. None if nothing got through within 2 s.
fn peer_seen(ns: &Ns, addr: &str, server: &TcpListener) -> Option<String> {
    let server = server.try_clone().unwrap();
    let acceptor = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok((mut s, peer)) = server.accept() {
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(peer.ip().to_string().as_bytes());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let got = tcp_get(ns, addr);
    let _ = acceptor.join();
    got
}

#[test]
fn plugnet_works_when_dockerd_starts_after_it_and_on_a_docker_host_and_survives_a_flush() {
    assert!(unsafe { libc::geteuid() } == 0, "needs root");
    if !Path::new("/usr/sbin/dockerd").exists() && !Path::new("/usr/bin/dockerd").exists() {
        eprintln!("skipped: dockerd not installed");
        return;
    }
    let mut h = FwHost::new("host");

    // Before Docker: a network without a gateway (L2 only, so nothing turns forwarding on),
    // no firewall feature. Its containers reach each other.
    let mut l2 = h.conf("pnxl2", BRIDGE_L2, "10.109.3.0/24");
    l2["isDefaultGateway"] = json!(false);
    l2["ipMasq"] = json!(false);
    let c5 = h.host.container();
    let c6 = h.host.container();
    let r5 = h.add(&l2, "pnx-dk-5", &c5);
    let r6 = h.add(&l2, "pnx-dk-6", &c6);
    assert!(c5.ping(&ip_of(&r6)), "before dockerd: c5 -> c6");

    // dockerd starts: it turns forwarding on, sets the FORWARD policy to DROP and passes
    // bridged traffic through iptables (br_netfilter) — and the containers still reach each
    // other, with no rule added by hand.
    h.start_dockerd();
    assert_eq!(h.forward_policy(), "DROP", "dockerd sets DROP itself");
    assert_eq!(
        h.host
            .ns
            .sh(&["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"])
            .trim(),
        "1"
    );
    assert!(c5.ping(&ip_of(&r6)), "dockerd started after: c5 -> c6");
    assert!(c6.ping(&ip_of(&r5)), "dockerd started after: c6 -> c5");

    // On the Docker host: masquerading to an outside namespace and a port mapping.
    let outside = h.outside(UPLINK, 1);
    let c1 = h.host.container();
    let c2 = h.host.container();
    let conf = h.conf("pnxdock", BRIDGE, "10.109.0.0/24");
    let mut mapped = conf.clone();
    mapped["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 19090, "containerPort": 90, "protocol": "tcp"}]});
    let r1 = h.add(&mapped, "pnx-dk-1", &c1);
    let r2 = h.add(&conf, "pnx-dk-2", &c2);
    let out_srv = tcp_listener(&outside, 9000);
    let ctr_srv = tcp_listener(&c1, 90);

    let works = |what: &str| {
        assert!(c1.ping(&ip_of(&r2)), "{what}: c1 -> c2");
        assert!(c2.ping(&ip_of(&r1)), "{what}: c2 -> c1");
        assert!(c1.ping("10.109.0.1"), "{what}: c1 -> gateway");
        assert_eq!(
            peer_seen(&c2, "10.109.1.2:9000", &out_srv).as_deref(),
            Some("10.109.1.1"),
            "{what}: masqueraded to the outside"
        );
        assert_eq!(
            peer_seen(&outside, "10.109.1.1:19090", &ctr_srv).as_deref(),
            Some("10.109.1.2"),
            "{what}: port mapping"
        );
        assert!(c5.ping(&ip_of(&r6)), "{what}: L2 c5 -> c6");
    };
    works("on a Docker host");

    // A network with no firewall feature (no ipMasq, no mapping): its containers still reach
    // each other across the bridge and the gateway — bridged traffic passes iptables FORWARD
    // (br_netfilter), whose policy is DROP here.
    let mut bare = conf.clone();
    bare["name"] = json!("pnxbare");
    bare["bridge"] = json!(BRIDGE_BARE);
    bare["ipMasq"] = json!(false);
    bare["ipam"]["ranges"] = json!([[{"subnet": "10.109.2.0/24"}]]);
    let c3 = h.host.container();
    let c4 = h.host.container();
    let r3 = h.add(&bare, "pnx-dk-3", &c3);
    let r4 = h.add(&bare, "pnx-dk-4", &c4);
    assert!(c3.ping(&ip_of(&r4)), "featureless: c3 -> c4");
    assert!(c4.ping(&ip_of(&r3)), "featureless: c4 -> c3");
    assert!(c3.ping("10.109.2.1"), "featureless: c3 -> gateway");

    // Someone deletes plugnet's table: masquerading and the mapping stop; reload restores them.
    h.host.ns.sh(&["nft", "delete", "table", "inet", "plugnet"]);
    assert_eq!(peer_seen(&outside, "10.109.1.1:19090", &ctr_srv), None);
    let (code, out) = h.reload();
    assert_eq!(code, 0, "{out}");
    works("after flush + reload");
    let (code, out) = h.reload();
    assert_eq!(code, 0, "reload twice: {out}");
    works("after a second reload");

    h.del_all();
    let rules = h.host.ns.sh(&["nft", "list", "ruleset"]);
    assert!(!rules.to_lowercase().contains("plugnet"), "{rules}");
    let saved = h.host.ns.sh(&["iptables-save"]);
    assert!(!saved.to_lowercase().contains("plugnet"), "{saved}");
}

/// firewalld (Debian 12's, nftables backend) rejects forwarded traffic between interfaces of no
/// zone, and with br_netfilter on, traffic across a bridge too. plugnet's tagged rules at the
/// head of its forward chain let the containers reach each other, the outside (masqueraded) and
/// a port mapping: put there by `plugnet firewall watch` when firewalld starts after the
/// containers. `firewall-cmd --reload` builds firewalld's table anew without them: CHECK says
/// so, `plugnet firewall reload` puts them back, and so does the watch on its own; DEL of the
/// last container leaves firewalld's ruleset without a trace of plugnet.
#[test]
fn plugnet_works_on_a_firewalld_host_started_after_it_and_after_a_firewalld_reload() {
    assert!(unsafe { libc::geteuid() } == 0, "needs root");
    if !Path::new("/usr/sbin/firewalld").exists() {
        eprintln!("skipped: firewalld not installed");
        return;
    }
    let mut h = FwHost::new("fwd");
    // Bridged traffic through the forward hook, as on a host that also runs Docker.
    h.host
        .ns
        .sh(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    let outside = h.outside(UPLINK_FWD, 5);
    let conf = h.conf("pnxfwd", BRIDGE_FWD, "10.109.4.0/24");
    let mut mapped = conf.clone();
    mapped["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 19091, "containerPort": 91, "protocol": "tcp"}]});
    let c1 = h.host.container();
    let c2 = h.host.container();
    let r1 = h.add(&mapped, "pnx-fwd-1", &c1);
    let r2 = h.add(&conf, "pnx-fwd-2", &c2);
    let out_srv = tcp_listener(&outside, 9001);
    let ctr_srv = tcp_listener(&c1, 91);
    let out_of_c2 = || peer_seen(&c2, "10.109.5.2:9001", &out_srv);
    let works = |what: &str| {
        assert!(c1.ping(&ip_of(&r2)), "{what}: c1 -> c2");
        assert!(c2.ping(&ip_of(&r1)), "{what}: c2 -> c1");
        assert!(c1.ping("10.109.4.1"), "{what}: c1 -> gateway");
        assert_eq!(
            out_of_c2().as_deref(),
            Some("10.109.5.1"),
            "{what}: masqueraded to the outside"
        );
        assert_eq!(
            peer_seen(&outside, "10.109.5.1:19091", &ctr_srv).as_deref(),
            Some("10.109.5.2"),
            "{what}: port mapping"
        );
    };
    // What the watch printed: a reload of both attachments.
    let reloaded = r#"{"reloaded":true,"attachments":2,"bridges":1}"#;

    // firewalld starts after plugnet's containers, with `plugnet firewall watch` running: its
    // new table is a ruleset change, and the watch gives firewalld's chain plugnet's rules.
    let watch = h.spawn_watch();
    h.start_firewalld();
    let chain = h.host.ns.sh(&[
        "nft",
        "list",
        "chain",
        "inet",
        "firewalld",
        "filter_FORWARD",
    ]);
    assert!(
        chain.contains("reject with icmpx admin-prohibited"),
        "{chain}"
    );
    let check = || h.check(&conf, &r2, "pnx-fwd-2", &c2);
    // CHECK passes within 10 s: how long it took.
    let check_passes = |what: &str| {
        let t0 = Instant::now();
        while check().0 != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: {:?}",
                check()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t0.elapsed()
    };
    let waited = check_passes("firewalld started after, with the watch running");
    let said = watch_output(watch);
    assert!(said.contains(reloaded), "{said}");
    eprintln!("firewalld started: CHECK passed {waited:?} after firewalld said it was running");
    works("firewalld started after, with the watch running");

    // firewalld reloads with no watch: its table is built anew, without plugnet's rules; its
    // reject applies, CHECK says where, `plugnet firewall reload` puts them back.
    h.firewall_cmd(&["--reload"]);
    assert_eq!(out_of_c2(), None, "firewalld's reject after its reload");
    assert!(
        !c1.ping(&ip_of(&r2)),
        "firewalld's reject across the bridge"
    );
    let (code, out) = check();
    assert_ne!(code, 0, "CHECK after firewalld's reload: {out}");
    assert!(out.contains("inet firewalld filter_FORWARD"), "{out}");
    let (code, out) = h.reload();
    assert_eq!(code, 0, "{out}");
    works("after firewall-cmd --reload + plugnet firewall reload");
    let (code, out) = check();
    assert_eq!(code, 0, "CHECK after plugnet firewall reload: {out}");

    // With the watch running, a firewalld reload needs no one.
    let watch = h.spawn_watch();
    let t0 = Instant::now();
    h.firewall_cmd(&["--reload"]);
    let reload_took = t0.elapsed();
    let waited = check_passes("firewall-cmd --reload with the watch running");
    let said = watch_output(watch);
    assert!(said.contains(reloaded), "{said}");
    eprintln!(
        "firewall-cmd --reload took {reload_took:?}; CHECK passed {waited:?} after it returned"
    );
    works("after firewall-cmd --reload with plugnet firewall watch running");

    h.del_all();
    let rules = h.host.ns.sh(&["nft", "list", "ruleset"]);
    assert!(rules.contains("table inet firewalld"), "{rules}");
    assert!(!rules.to_lowercase().contains("plugnet"), "{rules}");
    assert_eq!(h.firewall_cmd(&["--state"]).trim(), "running");
}
