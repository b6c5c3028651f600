//! Harness for the bridge black-box tests: a throwaway "host" namespace per test (so bridges,
//! iptables rules and sysctls never touch the machine's real host namespace), container
//! namespaces inside it, and the real `plugnet` binary run from a thread that entered the host
//! namespace. Every namespace is removed on drop, also when the test fails.
//! Names: netns `pnb-<tag>-<pid>[-c<n>]`, subnets 10.50.0.0/16 and fd50::/16.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use plugnet::netns::Netns;
use serde_json::{json, Value};

pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub use plugnet_tests::{bin_dir, cni_path, REFERENCE_PLUGINS as REFERENCE_DIR};

pub fn plugnet() -> PathBuf {
    plugnet_tests::bin("plugnet")
}

/// A network namespace owned by a test.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(name: String) -> Ns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        let ns = Ns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside this namespace (`ip netns exec`), returning the raw output.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "{args:?} in {}: {out:?}", self.name);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Whether `target` answers within three one-second tries (a first packet may wait for
    /// ARP/ND on a port that came up an instant ago; a loaded CI machine makes that visible).
    pub fn ping(&self, target: &str) -> bool {
        (0..3).any(|_| self.exec(&["ping", "-c1", "-W1", target]).status.success())
    }

    /// `ip -j <args>` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        let s = self.sh(&full);
        serde_json::from_str(if s.trim().is_empty() { "[]" } else { &s }).unwrap()
    }

    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// What a plugin invocation printed and returned.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        self
    }
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "plugin unexpectedly succeeded: {self:?}");
        self.json()["code"].as_u64().unwrap()
    }
}

/// One attachment's parameters.
#[derive(Clone, Debug)]
pub struct Att {
    pub id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Att {
    pub fn new(id: &str, netns: &str, ifname: &str) -> Att {
        Att {
            id: id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            args: String::new(),
        }
    }
}

/// The throwaway host: a namespace the plugin runs in, plus an IPAM data dir.
pub struct Host {
    pub ns: Ns,
    prefix: String,
    handle: Netns,
    pub tag: String,
    pub data_dir: tempfile::TempDir,
    next: std::sync::atomic::AtomicU32,
}

impl Host {
    pub fn new(tag: &str) -> Host {
        Host::with_prefix("pnb", tag)
    }

    /// A host whose namespaces are named `<prefix>-<tag>-<pid>[-c<n>]`.
    pub fn with_prefix(prefix: &str, tag: &str) -> Host {
        let ns = Ns::new(format!("{prefix}-{tag}-{}", std::process::id()));
        let handle = Netns::open(ns.path()).unwrap();
        Host {
            ns,
            prefix: prefix.into(),
            handle,
            tag: tag.into(),
            data_dir: tempfile::Builder::new()
                .prefix("pnb-ipam-")
                .tempdir()
                .unwrap(),
            next: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A fresh container namespace.
    pub fn container(&self) -> Ns {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ns::new(format!(
            "{}-{}-{}-c{n}",
            self.prefix,
            self.tag,
            std::process::id()
        ))
    }

    /// Runs `bin` with CNI_COMMAND=`cmd` inside the host namespace.
    pub fn run(&self, bin: &Path, cmd: &str, conf: &Value, att: Option<&Att>) -> Out {
        let stdin = serde_json::to_vec(conf).unwrap();
        let (id, netns, ifname, args) = match att {
            Some(a) => (
                a.id.as_str(),
                a.netns.as_str(),
                a.ifname.as_str(),
                a.args.as_str(),
            ),
            None => ("", "", "", ""),
        };
        let mut c = Command::new(bin);
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn_in(c, &stdin)
    }

    /// Spawns `c` from a thread inside the host namespace (children inherit it).
    pub fn spawn_in(&self, mut c: Command, stdin: &[u8]) -> Out {
        self.handle
            .run(move || {
                let mut child = c.spawn().unwrap();
                // A plugin may answer (an error) before it has read all of stdin, e.g. one
                // that refuses an oversized request: its closed pipe is not the test's failure.
                match child.stdin.take().unwrap().write_all(stdin) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    r => r.unwrap(),
                }
                let out = child.wait_with_output().unwrap();
                Out {
                    code: out.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                }
            })
            .unwrap()
    }

    pub fn add(&self, conf: &Value, att: &Att) -> Value {
        self.run(&plugnet(), "ADD", conf, Some(att)).ok().json()
    }

    /// Host veths plugnet made (name shape `pn` + 13 hex).
    pub fn plugnet_veths(&self) -> Vec<String> {
        self.ns
            .link_names()
            .into_iter()
            .filter(|n| plugnet::bridge::naming::is_host_veth_name(n))
            .collect()
    }

    /// Addresses held in plugnet-ipam's store for `network` (one entry per held IP).
    pub fn leases(&self, network: &str) -> Vec<String> {
        let dir = self.data_dir.path().join(network).join("ip");
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The address (without prefix) of a CNI result's `ips[i]`.
pub fn ip_at(result: &Value, i: usize) -> String {
    result["ips"][i]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The address of a CNI result's first `ips` entry.
pub fn ip_of(result: &Value) -> String {
    ip_at(result, 0)
}

/// A plugnet configuration on bridge `br` with plugnet-ipam over 10.50.`net`.0/24 (and
/// fd50:`net`::/64 when `v6`).
pub fn conf(host: &Host, version: &str, name: &str, br: &str, net: u8, v6: bool) -> Value {
    let mut ranges = vec![json!([{"subnet": format!("10.50.{net}.0/24")}])];
    if v6 {
        ranges.push(json!([{"subnet": format!("fd50:{net}::/64")}]));
    }
    json!({
        "cniVersion": version,
        "name": name,
        "type": "plugnet",
        "bridge": br,
        "isDefaultGateway": true,
        "ipam": {
            "type": "plugnet-ipam",
            "dataDir": host.data_dir.path(),
            "ranges": ranges,
        }
    })
}

/// `conf` with `prevResult` set.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// Runs a network list the way libcni does (ADD in order with prevResult threading, CHECK in
/// order and DEL in reverse with the final result), each plugin inside the host namespace.
pub struct Chain<'a> {
    pub host: &'a Host,
    pub list: Value,
    pub runtime_config: Value,
}

impl Chain<'_> {
    fn plugin_conf(&self, p: &Value, prev: Option<&Value>) -> Value {
        let mut c = p.clone();
        c["name"] = self.list["name"].clone();
        c["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(caps) = p.get("capabilities").and_then(Value::as_object) {
            let mut rc = serde_json::Map::new();
            for (k, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = self.runtime_config.get(k) {
                        rc.insert(k.clone(), v.clone());
                    }
                }
            }
            if !rc.is_empty() {
                c["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        c
    }

    fn bin(p: &Value) -> PathBuf {
        let t = p["type"].as_str().unwrap();
        let ours = bin_dir().join(t);
        if ours.exists() {
            ours
        } else {
            Path::new(REFERENCE_DIR).join(t)
        }
    }

    pub fn add(&self, att: &Att) -> Value {
        let mut prev: Option<Value> = None;
        for p in self.list["plugins"].as_array().unwrap() {
            let out = self.host.run(
                &Self::bin(p),
                "ADD",
                &self.plugin_conf(p, prev.as_ref()),
                Some(att),
            );
            prev = Some(out.ok().json());
        }
        prev.unwrap()
    }

    pub fn check(&self, att: &Att, result: &Value) -> Vec<Out> {
        self.list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                self.host.run(
                    &Self::bin(p),
                    "CHECK",
                    &self.plugin_conf(p, Some(result)),
                    Some(att),
                )
            })
            .collect()
    }

    pub fn del(&self, att: &Att, result: &Value) {
        for p in self.list["plugins"].as_array().unwrap().iter().rev() {
            self.host
                .run(
                    &Self::bin(p),
                    "DEL",
                    &self.plugin_conf(p, Some(result)),
                    Some(att),
                )
                .ok();
        }
    }
}

/// Benches: runs `bin` once with `CNI_COMMAND=cmd` (asserting success) and returns how long
/// the process took, spawn to exit.
pub fn invoke_timed(bin: &Path, cmd: &str, conf: &[u8], id: &str, netns: &str) -> Duration {
    let start = Instant::now();
    let mut child = cni_env(&mut Command::new(bin), cmd, id, netns)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(out.status.success(), "{} {cmd}: {out:?}", bin.display());
    took
}

/// `c` set up as a runtime calls a plugin: `CNI_COMMAND=cmd` for container `id` in `netns`
/// (ifname eth0), stdio piped. `c` may be the plugin or a wrapper such as `/usr/bin/time`.
pub fn cni_env<'c>(c: &'c mut Command, cmd: &str, id: &str, netns: &str) -> &'c mut Command {
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

/// The median of `v`, in milliseconds.
pub fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// What a TCP server at `addr` says to a client in `ns` (None: no answer within 2 s).
pub fn tcp_get(ns: &Ns, addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    Netns::open(ns.path())
        .unwrap()
        .run(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).ok()?;
            Some(out)
        })
        .unwrap()
}

/// A non-blocking TCP listener on `port` (all addresses) inside `ns`.
pub fn tcp_listener(ns: &Ns, port: u16) -> std::net::TcpListener {
    let l = Netns::open(ns.path())
        .unwrap()
        .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// Builds tests/go/libcni-client (libcni 1.1.2 from Debian's golang-github-appc-cni-dev, what
/// podman, containerd and CRI-O link) into `dir`, offline.
pub fn libcni_client(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/libcni-client");
    let out = dir.join("libcni-client");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .status()
        .expect("go toolchain (golang-go) installed");
    assert!(status.success(), "go build of the libcni client failed");
    out
}

/// Runs the libcni client (`op` of `list` for container `id` in `netns`) in the host namespace.
pub fn libcni_run(
    host: &Host,
    client: &Path,
    op: &str,
    list: &Path,
    netns: &str,
    id: &str,
    cache: &Path,
) -> Out {
    let mut c = Command::new(client);
    c.arg(op)
        .arg(list)
        .arg(netns)
        .arg(id)
        .arg("eth0")
        .arg(cache)
        .arg(cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    host.spawn_in(c, b"")
}
