//! Issue 11: plugnet networks keep working on a Docker host. This test starts a dockerd of its
//! own (own data root, exec root, pidfile and socket: `pnx-docker-<pid>`; never the default
//! daemon or its socket) and runs plugnet in the machine's real host namespace, because that
//! is where Docker's iptables rules live.
//!
//! Host state it changes, on purpose: dockerd creates its chains (DOCKER, DOCKER-USER, …) and
//! keeps br_netfilter loaded; a dockerd that enables IPv4 forwarding also sets the iptables
//! FORWARD policy to DROP. Docker leaves all of that behind when it exits — that is what any
//! host looks like once Docker has run, and the test does not undo it. If forwarding was
//! already on (so this dockerd did not set DROP), the test sets the policy to DROP itself to
//! get the same host, and restores ACCEPT at the end (that change is the test's own).
//! Everything else it creates (bridges `pnxdbr9` and `pnxdbr8`, veth `pnxd9h`, namespaces `pnx-dk-<pid>-*`,
//! subnets 10.109.0.0/24, 10.109.1.0/24 and 10.109.2.0/24, plugnet's rules) is removed, also on failure.

mod bridge_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bridge_support::{ip_of, plugnet, Ns};
use plugnet::netns::Netns;
use serde_json::{json, Value};

const BRIDGE: &str = "pnxdbr9";
/// A second network using no firewall feature at all.
const BRIDGE_BARE: &str = "pnxdbr8";
const UPLINK: &str = "pnxd9h";

fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn forward_policy() -> String {
    let (_, s) = sh(&["iptables", "-S", "FORWARD"]);
    s.lines()
        .find_map(|l| l.strip_prefix("-P FORWARD "))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The test's dockerd and everything else the test made on the real host; undone on drop.
struct DockerHost {
    dockerd: Option<Child>,
    data_root: PathBuf,
    exec_root: PathBuf,
    sock: PathBuf,
    pidfile: PathBuf,
    set_drop_ourselves: bool,
    fw_dir: tempfile::TempDir,
    ipam_dir: tempfile::TempDir,
    /// (conf, id, netns) of every ADD, for DEL on failure.
    attached: Vec<(Value, String, String)>,
}

impl DockerHost {
    fn start() -> DockerHost {
        let pid = std::process::id();
        let mut h = DockerHost {
            dockerd: None,
            data_root: format!("/var/lib/pnx-docker-{pid}").into(),
            exec_root: format!("/run/pnx-docker-{pid}").into(),
            sock: format!("/run/pnx-docker-{pid}.sock").into(),
            pidfile: format!("/run/pnx-docker-{pid}.pid").into(),
            set_drop_ourselves: false,
            fw_dir: tempfile::Builder::new()
                .prefix("pnx-fw-")
                .tempdir()
                .unwrap(),
            ipam_dir: tempfile::Builder::new()
                .prefix("pnx-ipam-")
                .tempdir()
                .unwrap(),
            attached: Vec::new(),
        };
        let log = std::fs::File::create(format!("/tmp/pnx-docker-{pid}.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(&h.data_root)
            .arg("--exec-root")
            .arg(&h.exec_root)
            .arg("--pidfile")
            .arg(&h.pidfile)
            .arg("-H")
            .arg(format!("unix://{}", h.sock.display()))
            // No docker0: the machine's own Docker (if any) owns that name.
            .args(["--bridge", "none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        h.dockerd = Some(child);
        let t0 = Instant::now();
        while !(h.sock.exists() && sh(&["iptables", "-S", "DOCKER-USER"]).0) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "dockerd did not come up (see /tmp/pnx-docker-{pid}.log)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if forward_policy() != "DROP" {
            assert!(sh(&["iptables", "-P", "FORWARD", "DROP"]).0);
            h.set_drop_ourselves = true;
        }
        h
    }

    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "pnxdock",
            "type": "plugnet",
            "bridge": BRIDGE,
            "isDefaultGateway": true,
            "ipMasq": true,
            "firewallStateDir": self.fw_dir.path(),
            "ipam": {"type": "plugnet-ipam", "dataDir": self.ipam_dir.path(),
                     "ranges": [[{"subnet": "10.109.0.0/24"}]]},
        })
    }

    fn cni(&self, cmd: &str, conf: &Value, id: &str, netns: &str) -> (i32, String) {
        let mut c = Command::new(plugnet())
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bridge_support::cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(conf).unwrap())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn add(&mut self, conf: &Value, id: &str, ns: &Ns) -> Value {
        self.attached
            .push((conf.clone(), id.to_string(), ns.path()));
        let (code, out) = self.cni("ADD", conf, id, &ns.path());
        assert_eq!(code, 0, "ADD {id}: {out}");
        serde_json::from_str(&out).unwrap()
    }

    fn del_all(&mut self) {
        for (conf, id, netns) in std::mem::take(&mut self.attached) {
            let (code, out) = self.cni("DEL", &conf, &id, &netns);
            assert_eq!(code, 0, "DEL {id}: {out}");
        }
    }

    fn reload(&self) -> (i32, String) {
        let out = Command::new(plugnet())
            .args(["firewall", "reload", "--state-dir"])
            .arg(self.fw_dir.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        for (conf, id, netns) in std::mem::take(&mut self.attached) {
            let _ = self.cni("DEL", &conf, &id, &netns);
        }
        let _ = sh(&["ip", "link", "del", UPLINK]);
        let _ = sh(&["ip", "link", "del", BRIDGE]);
        let _ = sh(&["ip", "link", "del", BRIDGE_BARE]);
        if let Some(mut d) = self.dockerd.take() {
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while d.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        if self.set_drop_ourselves {
            let _ = sh(&["iptables", "-P", "FORWARD", "ACCEPT"]);
        }
        // Docker's exec root may hold mounts (netns, containerd state); unmount before removal.
        let _ = sh(&[
            "sh",
            "-c",
            &format!(
                "grep -o ' {0}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                self.exec_root.display()
            ),
        ]);
        for d in [&self.data_root, &self.exec_root] {
            let _ = std::fs::remove_dir_all(d);
        }
        for f in [&self.sock, &self.pidfile] {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn serve_peer(ns: &Ns, port: u16) -> TcpListener {
    let l = Netns::open(ns.path())
        .unwrap()
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// Connects from `ns` to `addr` while `server` accepts one connection and writes back the
/// peer address it saw. None if nothing got through within 2 s.
fn peer_seen(ns: &Ns, addr: &str, server: &TcpListener) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
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
    let got = Netns::open(ns.path())
        .unwrap()
        .run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .unwrap();
    let _ = acceptor.join();
    got
}

#[test]
fn plugnet_works_on_a_docker_host_and_survives_a_flush() {
    assert!(unsafe { libc::geteuid() } == 0, "needs root");
    if !Path::new("/usr/sbin/dockerd").exists() && !Path::new("/usr/bin/dockerd").exists() {
        eprintln!("skipped: dockerd not installed");
        return;
    }
    let mut h = DockerHost::start();
    assert_eq!(forward_policy(), "DROP");
    let pid = std::process::id();
    let outside = Ns::new(format!("pnx-dk-{pid}-out"));
    assert!(
        sh(&[
            "ip",
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            "pnxd9o",
            "netns",
            &outside.name
        ])
        .0
    );
    assert!(sh(&["ip", "addr", "add", "10.109.1.1/24", "dev", UPLINK]).0);
    assert!(sh(&["ip", "link", "set", UPLINK, "up"]).0);
    outside.sh(&["ip", "addr", "add", "10.109.1.2/24", "dev", "pnxd9o"]);
    outside.sh(&["ip", "link", "set", "pnxd9o", "up"]);
    outside.sh(&["ip", "route", "add", "default", "via", "10.109.1.1"]);
    let c1 = Ns::new(format!("pnx-dk-{pid}-c1"));
    let c2 = Ns::new(format!("pnx-dk-{pid}-c2"));
    let mut mapped = h.conf();
    mapped["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 19090, "containerPort": 90, "protocol": "tcp"}]});
    let r1 = h.add(&mapped, "pnx-dk-1", &c1);
    let r2 = h.add(&h.conf(), "pnx-dk-2", &c2);
    let out_srv = serve_peer(&outside, 9000);
    let ctr_srv = serve_peer(&c1, 90);

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
    };
    works("on a Docker host");

    // A network with no firewall feature (no ipMasq, no mapping): its containers still reach
    // each other across the bridge and the gateway — bridged traffic passes iptables FORWARD
    // (br_netfilter), whose policy is DROP here.
    let mut bare = h.conf();
    bare["name"] = json!("pnxbare");
    bare["bridge"] = json!(BRIDGE_BARE);
    bare["ipMasq"] = json!(false);
    bare["ipam"]["ranges"] = json!([[{"subnet": "10.109.2.0/24"}]]);
    let c3 = Ns::new(format!("pnx-dk-{pid}-c3"));
    let c4 = Ns::new(format!("pnx-dk-{pid}-c4"));
    let r3 = h.add(&bare, "pnx-dk-3", &c3);
    let r4 = h.add(&bare, "pnx-dk-4", &c4);
    assert!(c3.ping(&ip_of(&r4)), "featureless: c3 -> c4");
    assert!(c4.ping(&ip_of(&r3)), "featureless: c4 -> c3");
    assert!(c3.ping("10.109.2.1"), "featureless: c3 -> gateway");

    // Someone deletes plugnet's table: masquerading and the mapping stop; reload restores them.
    assert!(sh(&["nft", "delete", "table", "inet", "plugnet"]).0);
    assert_eq!(peer_seen(&outside, "10.109.1.1:19090", &ctr_srv), None);
    let (code, out) = h.reload();
    assert_eq!(code, 0, "{out}");
    works("after flush + reload");
    let (code, out) = h.reload();
    assert_eq!(code, 0, "reload twice: {out}");
    works("after a second reload");

    h.del_all();
    let (_, rules) = sh(&["nft", "list", "ruleset"]);
    assert!(!rules.to_lowercase().contains("plugnet"), "{rules}");
    let (_, saved) = sh(&["iptables-save"]);
    assert!(!saved.to_lowercase().contains("plugnet"), "{saved}");
}
