//! Benchmark (not a test): cost of a port-mapped ADD with 0 vs N (default 500) port-mapped
//! attachments already installed, for plugnet's firewall and, side by side, for the reference
//! `portmap` plugin (Debian's containernetworking-plugins). Runs as root inside a network
//! namespace of its own (`pnf-bench-<pid>`), so the machine's ruleset is never touched.
//!
//!     cargo bench -p plugnet --bench firewall_scale            # N=500
//!     PNF_BENCH_N=200 cargo bench -p plugnet --bench firewall_scale
//!     PNF_BENCH_STATE_BASE=/dev/shm cargo bench ...   # state on tmpfs: no fsync noise

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugnet::firewall::{Attachment, Firewall, Options, PortMapping, Protocol};

const SAMPLES: usize = 41;

fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{cmd}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn att(i: usize) -> Attachment {
    Attachment {
        network: "pnfbench".into(),
        container_id: format!("pnf-bench-{i}"),
        ifname: "eth0".into(),
        bridge: "pnfbrb".into(),
        host_veth: format!("pnfb{i}"),
        container_ips: vec![format!("10.77.{}.{}/16", i / 250, i % 250 + 2)
            .parse()
            .unwrap()],
        ip_masq: true,
        port_mappings: vec![PortMapping {
            host_port: 10000 + i as u16,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        }],
        net_out: None,
        source_mac: None,
        keep_source_to: Vec::new(),
    }
}

fn portmap_add(i: usize) -> Duration {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"pnfbench","type":"portmap","snat":true,
        "runtimeConfig":{{"portMappings":[{{"hostPort":{},"containerPort":80,"protocol":"tcp"}}]}},
        "prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"pnfbrb"}},{{"name":"eth0","sandbox":"/run/netns/none"}}],
        "ips":[{{"address":"10.77.{}.{}/16","interface":1}}]}}}}"#,
        20000 + i,
        i / 250,
        i % 250 + 2
    );
    let start = Instant::now();
    let mut child = Command::new("/usr/lib/cni/portmap")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("pnf-bench-{i}"))
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/lib/cni/portmap");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "portmap ADD: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// A thread living in one network namespace, running jobs sent to it.
struct Worker {
    tx: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Worker {
    fn new(ns: &str) -> Worker {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            for job in rx {
                job();
            }
        });
        Worker { tx }
    }
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (rtx, rrx) = std::sync::mpsc::channel();
        self.tx
            .send(Box::new(move || rtx.send(f()).unwrap()))
            .unwrap();
        rrx.recv().unwrap()
    }
}

struct Netns(String);
impl Netns {
    fn new(name: String) -> Netns {
        sh(&format!("ip netns add {name}"));
        sh(&format!(
            "ip -n {name} link add pnfbrb type bridge && ip -n {name} link set pnfbrb up"
        ));
        Netns(name)
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn timed(fw: &Firewall, a: &Attachment) -> (Duration, Duration) {
    let t = Instant::now();
    fw.apply(a).unwrap();
    let add = t.elapsed();
    let t = Instant::now();
    fw.remove(&a.network, &a.container_id, &a.ifname).unwrap();
    (add, t.elapsed())
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("firewall_scale: needs root (network namespaces, nftables); skipped");
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probing: nothing to list
    }
    let n: usize = std::env::var("PNF_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let pid = std::process::id();
    // Two namespaces measured in alternation, so disk and CPU noise from the rest of the
    // machine hits both sides alike: "small" holds 1 attachment, "big" holds N.
    let small_ns = Netns::new(format!("pnf-bench-s-{pid}"));
    let big_ns = Netns::new(format!("pnf-bench-b-{pid}"));
    let (small, big) = (Worker::new(&small_ns.0), Worker::new(&big_ns.0));
    // PNF_BENCH_STATE_BASE=/dev/shm keeps fsync (disk noise, the same for any N) out of it.
    let base = std::env::var("PNF_BENCH_STATE_BASE")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let dirs = (
        tempfile::tempdir_in(&base).unwrap(),
        tempfile::tempdir_in(&base).unwrap(),
    );
    println!("state under {base}");
    let opts = |d: &tempfile::TempDir| Options {
        state_dir: d.path().to_path_buf(),
        host_firewall: false,
        flush_conntrack: true,
    };
    let (fs, fb) = (Firewall::new(opts(&dirs.0)), Firewall::new(opts(&dirs.1)));
    {
        let fs = fs.clone();
        small.run(move || fs.apply(&att(0)).unwrap());
        let fill = fb.clone();
        let t = Instant::now();
        big.run(move || {
            for i in 0..n {
                fill.apply(&att(i)).unwrap();
            }
        });
        println!("filled {n} port-mapped attachments in {:?}", t.elapsed());
        let fb = fb.clone();
        let t = Instant::now();
        let r = big.run(move || fb.reload().unwrap());
        println!(
            "reload of {} attachments (one transaction) in {:?}",
            r.attachments,
            t.elapsed()
        );
    }
    let (mut add_s, mut add_b, mut del_s, mut del_b) = (vec![], vec![], vec![], vec![]);
    for k in 0..SAMPLES {
        let i = n + k;
        let fs2 = fs.clone();
        let (a, d) = small.run(move || timed(&fs2, &att(i)));
        add_s.push(a);
        del_s.push(d);
        let fb2 = fb.clone();
        let (a, d) = big.run(move || timed(&fb2, &att(i)));
        add_b.push(a);
        del_b.push(d);
    }
    let (a1, an) = (median(add_s), median(add_b));
    println!(
        "plugnet firewall ADD (1 port mapping + ipMasq), median of {SAMPLES}: {a1:?} with 1 existing, {an:?} with {n} existing: ratio {:.2}",
        an.as_secs_f64() / a1.as_secs_f64()
    );
    let (d1, dn) = (median(del_s), median(del_b));
    println!(
        "plugnet firewall DEL, median of {SAMPLES}: {d1:?} with 1 existing, {dn:?} with {n} existing: ratio {:.2}",
        dn.as_secs_f64() / d1.as_secs_f64()
    );
    let fb2 = fb.clone();
    big.run(move || {
        for i in 0..n {
            let a = att(i);
            fb2.remove(&a.network, &a.container_id, &a.ifname).unwrap();
        }
    });
    let left = big.run(|| {
        String::from_utf8_lossy(
            &Command::new("nft")
                .args(["list", "ruleset"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    });
    assert!(!left.contains("plugnet"), "left behind: {left}");

    if std::path::Path::new("/usr/lib/cni/portmap").exists()
        && std::env::var_os("PNF_BENCH_NO_PORTMAP").is_none()
    {
        // The reference plugin, one process per ADD, in the "small" and "big" namespaces too.
        small.run(|| portmap_add(0));
        big.run(move || {
            for i in 0..n {
                portmap_add(i);
            }
        });
        let (mut s, mut b) = (vec![], vec![]);
        for k in 0..SAMPLES {
            let i = n + k;
            s.push(small.run(move || portmap_add(i)));
            b.push(big.run(move || portmap_add(i)));
        }
        let (p1, pn) = (median(s), median(b));
        println!(
            "reference portmap ADD (iptables), median of {SAMPLES}: {p1:?} with 1 existing, {pn:?} with {n}+ existing: ratio {:.2}",
            pn.as_secs_f64() / p1.as_secs_f64()
        );
    }
}
