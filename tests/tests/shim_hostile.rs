//! Hostile callers against the real plugnet-shim over its real unix socket (issue 17): malformed,
//! huge, non-ASCII, out-of-order and concurrent requests, slow clients and descriptor pressure,
//! with liveness and RSS asserted afterwards. No dockerd: the tests speak the plugin protocol.
//!
//! Every shim runs in a network namespace of its own (`pns-…`), with its state, socket and CNI
//! dirs in a temp dir; everything is removed on drop, also when a test fails.
//! `PLUGNET_SHIM_BIN` runs the checks against another build (scripts/shim-release-check.sh
//! points it at the release binary).

use plugnet_tests::{bin, sh, sh_ok, unique, Netns};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NET: &str = "6f1a0c3d2b9e8f7a6f1a0c3d2b9e8f7a6f1a0c3d2b9e8f7a6f1a0c3d2b9e8f7a";
const EP: &str = "e0e1e2e3e4e5e6e7e8e9eaebecedeeefe0e1e2e3e4e5e6e7e8e9eaebecedeeef";

/// plugnet's plugins, the test's own (`<dir>/bin`), the reference plugins.
fn cni_path(dir: &Path) -> String {
    format!(
        "{}:{}:{}",
        plugnet_tests::bin_dir().display(),
        dir.join("bin").display(),
        plugnet_tests::REFERENCE_PLUGINS
    )
}

fn shim_bin() -> PathBuf {
    match std::env::var("PLUGNET_SHIM_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => bin("plugnet-shim"),
    }
}

struct Shim {
    child: Child,
    name: String,
    sock: PathBuf,
    dir: tempfile::TempDir,
    ns: Netns,
}

struct Opts {
    nofile: Option<u64>,
    args: Vec<String>,
}

impl Shim {
    fn start() -> Shim {
        Shim::start_with(Opts {
            nofile: None,
            args: Vec::new(),
        })
    }

    fn start_with(o: Opts) -> Shim {
        let ns = Netns::new("pns");
        let dir = tempfile::tempdir().unwrap();
        let name = format!("pns-h{}", unique());
        for d in ["state", "sock", "conf", "ipam", "bin"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let sock = dir.path().join("sock").join(format!("{name}.sock"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(shim_bin())
            .args(["--name", &name, "--log-level", "info"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket-dir")
            .arg(dir.path().join("sock"))
            .arg("--cni-conf-dir")
            .arg(dir.path().join("conf"))
            .arg("--cni-path")
            .arg(cni_path(dir.path()))
            .arg("--ipam-data-dir")
            .arg(dir.path().join("ipam"))
            .args(["--default-pool", "10.171.0.0/16"])
            .args(&o.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("shim.log")).unwrap(),
            ));
        if let Some(n) = o.nofile {
            // SAFETY: only async-signal-safe setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn plugnet-shim");
        let mut s = Shim {
            child,
            name,
            sock,
            dir,
            ns,
        };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if s.sock.exists() && s.try_call("/Plugin.Activate", b"{}").is_ok() {
                return s;
            }
            assert!(s.alive(), "shim exited at start:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("shim did not answer within 20 s:\n{}", s.log());
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shim.log")).unwrap_or_default()
    }

    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    fn try_call(&self, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = UnixStream::connect(&self.sock)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        request(&mut s, path, body)
    }

    /// One call; the reply must be JSON.
    fn call(&mut self, path: &str, body: &[u8]) -> (u16, Value) {
        let (st, b) = self
            .try_call(path, body)
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", self.log()));
        let v = serde_json::from_slice(&b).unwrap_or_else(|e| {
            panic!(
                "{path}: reply not JSON ({e}): {}",
                String::from_utf8_lossy(&b)
            )
        });
        (st, v)
    }

    fn call_json(&mut self, path: &str, body: Value) -> (u16, Value) {
        self.call(path, &serde_json::to_vec(&body).unwrap())
    }

    /// The shim runs and answers `Plugin.Activate`.
    fn assert_serving(&mut self, after: &str) {
        assert!(self.alive(), "shim died after {after}:\n{}", self.log());
        let (s, v) = self.call("/Plugin.Activate", b"{}");
        assert_eq!(s, 200, "after {after}: {v}");
        assert_eq!(v["Implements"][0], "NetworkDriver");
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let t = Instant::now();
        while self.alive() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The staging dir (its bind mount lived in the shim's own mount namespace).
        let run = Path::new("/run/plugnet-shim").join(&self.name);
        let _ = std::fs::remove_dir_all(&run);
        let _ = &self.ns;
    }
}

/// Send one HTTP/1.1 request and read the reply (status, body).
fn request(s: &mut UnixStream, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: plugnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // A server refusing the body (413 on its declared length) may answer and close before
    // reading it: the reply is still there to read.
    let wrote = s.write_all(body);
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text_end = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => i,
        None => {
            wrote?;
            return Err(std::io::Error::other("no reply head"));
        }
    };
    let head = String::from_utf8_lossy(&out[..text_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {head:?}")))?;
    Ok((status, out[text_end + 4..].to_vec()))
}

fn raise_own_nofile(n: u64) {
    let rl = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall on a struct we own.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    assert_eq!(
        r,
        0,
        "raise RLIMIT_NOFILE: {}",
        std::io::Error::last_os_error()
    );
}

/// A network and a pool, as dockerd sets them up.
fn create_network(s: &mut Shim, subnet: &str, generic: Value) -> String {
    let (st, p) = s.call_json(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace":"plugnet-local","Pool":subnet,"SubPool":"","Options":{},"V6":false}),
    );
    assert!(st == 200 && p["PoolID"].is_string(), "{p}");
    let pool_id = p["PoolID"].as_str().unwrap().to_string();
    let (_, g) = s.call_json(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    let (st, v) = s.call_json(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {"com.docker.network.generic": generic},
               "IPv4Data": [{"AddressSpace":"plugnet-local","Pool": subnet, "Gateway": g["Address"]}], "IPv6Data": []}),
    );
    assert_eq!(st, 200, "{v}");
    pool_id
}

/// Finding 1: one request with a non-ASCII id killed the shim (a byte slice at 12 in
/// `short()`). Malformed, empty, oversized and wrongly-routed requests are answered with JSON
/// errors; the shim serves on.
#[test]
fn non_ascii_ids_and_malformed_requests_never_kill_the_shim() {
    let mut s = Shim::start();
    create_network(&mut s, "10.171.1.0/24", json!({}));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "/NetworkDriver.Join",
            serde_json::to_vec(&json!({"NetworkID": NET, "EndpointID": "aéééééé", "SandboxKey": "", "Options": {}})).unwrap(),
        ),
        (
            "/NetworkDriver.CreateEndpoint",
            serde_json::to_vec(&json!({"NetworkID": "0123456789aé", "EndpointID": EP, "Interface": {}})).unwrap(),
        ),
        (
            "/NetworkDriver.DeleteNetwork",
            serde_json::to_vec(&json!({"NetworkID": "ééééééééééééé"})).unwrap(),
        ),
        ("/NetworkDriver.Join", b"{not json".to_vec()),
        ("/NetworkDriver.CreateNetwork", b"".to_vec()),
        ("/NetworkDriver.CreateNetwork", b"[]".to_vec()),
        ("/NetworkDriver.CreateNetwork", b"\xff\xfe\x00".to_vec()),
        ("/NetworkDriver.CreateNetwork", br#"{"NetworkID": 5}"#.to_vec()),
        (
            "/NetworkDriver.CreateNetwork",
            serde_json::to_vec(&json!({"NetworkID": "7".repeat(64), "Options": {"com.docker.network.generic": {"com.docker.network.bridge.name": "../x"}}})).unwrap(),
        ),
        ("/IpamDriver.RequestAddress", br#"{"PoolID":"\u00e9\u00e9"}"#.to_vec()),
        ("/NetworkDriver.Bogus", b"{}".to_vec()),
        ("/é", b"{}".to_vec()),
        ("/", b"{}".to_vec()),
    ];
    for (path, body) in &cases {
        let (st, v) = s.call(path, body);
        // IpamDriver errors are 200 with `Error` (the IPAM API's convention), others non-200.
        if path.starts_with("/IpamDriver.") {
            assert!(st == 200 && v["Error"].is_string(), "{path}: accepted {v}");
        } else {
            assert!(st != 200 && v["Err"].is_string(), "{path}: accepted {v}");
        }
        s.assert_serving(path);
    }
    // Ids are refused with a message naming the field.
    let (_, v) = s.call(cases[0].0, &cases[0].1);
    assert!(v["Err"].as_str().unwrap().contains("EndpointID"), "{v}");
    // Over the method's body limit (16 KiB for DeleteNetwork): 413, connection answered.
    let (st, _) = s.call("/NetworkDriver.DeleteNetwork", &vec![b' '; 20 << 10]);
    assert_eq!(st, 413);
    // A head over 64 KiB is refused; the shim serves on.
    let mut c = UnixStream::connect(&s.sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let long = format!("/{}", "a".repeat(80 << 10));
    match request(&mut c, &long, b"{}") {
        // 414 when the whole head was read before the limit was checked, 431 otherwise.
        Ok((st, _)) => assert!(
            st == 414 || st == 431,
            "an oversized head was not refused: {st}"
        ),
        // The shim may close before the whole head is written: refused too.
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "an oversized head: {e}"
        ),
    }
    s.assert_serving("an oversized head");
}

/// Finding 3: 400 Joins and CreateEndpoints with unknown ~900 KB ids grew RSS by 350 MB, for
/// good. They are refused at decoding; RSS growth stays under 20 MB.
#[test]
fn huge_unknown_ids_do_not_grow_memory() {
    let mut s = Shim::start();
    create_network(&mut s, "10.171.2.0/24", json!({}));
    for _ in 0..5 {
        s.call("/Plugin.Activate", b"{}");
    }
    let before = s.rss_kb();
    for i in 0..400 {
        let id = format!("{i:x}{}", "a".repeat(900_000));
        let (path, body) = if i % 2 == 0 {
            (
                "/NetworkDriver.Join",
                json!({"NetworkID": NET, "EndpointID": id, "SandboxKey": "", "Options": {}}),
            )
        } else {
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": NET, "EndpointID": id, "Interface": {}}),
            )
        };
        let (st, v) = s.call_json(path, body);
        assert_eq!(st, 500, "{path}: {v}");
    }
    let after = s.rss_kb();
    eprintln!("RSS before {before} kB, after 400 huge-id calls {after} kB");
    assert!(
        after < before + 20 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    s.assert_serving("400 huge ids");
}

/// Finding 2: 1,100 connections that each send half a header, under a 1,024-descriptor
/// limit, ended the shim (`serve: Too many open files`). Now the oldest idle connection is
/// evicted, half heads time out, accept() errors are survived, and a new client is answered
/// within 1 s.
#[test]
fn half_open_connections_under_1024_descriptors() {
    raise_own_nofile(4096);
    let mut s = Shim::start_with(Opts {
        nofile: Some(1024),
        args: Vec::new(),
    });
    let mut held = Vec::new();
    for i in 0..1100 {
        match UnixStream::connect(&s.sock) {
            Ok(mut c) => {
                let _ = c.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-");
                held.push(c);
            }
            Err(e) => panic!("connect {i}: {e}\n{}", s.log()),
        }
    }
    assert!(s.alive(), "shim died under 1,100 half-open connections");
    let t = Instant::now();
    let (st, _) = s.call("/Plugin.Activate", b"{}");
    let took = t.elapsed();
    eprintln!("new client answered in {took:?} with 1,100 half-open connections");
    assert_eq!(st, 200);
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    drop(held);
    s.assert_serving("1,100 half-open connections");
}

/// A slow client (head and half a body, then silence) delays nobody and is cut off at the
/// request timeout; concurrent and out-of-order calls are all answered.
#[test]
fn slow_clients_out_of_order_and_concurrent_calls() {
    let mut s = Shim::start_with(Opts {
        nofile: None,
        args: vec!["--request-timeout".into(), "2s".into()],
    });
    let pool = create_network(&mut s, "10.171.3.0/24", json!({}));
    // Slow: a full head, 10 of 100 body bytes.
    let mut slow = UnixStream::connect(&s.sock).unwrap();
    slow.write_all(
        b"POST /NetworkDriver.Join HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"Network",
    )
    .unwrap();
    // Slower: half a head.
    let mut slower = UnixStream::connect(&s.sock).unwrap();
    slower.write_all(b"POST /NetworkDriver.Join HTT").unwrap();
    let t = Instant::now();
    s.assert_serving("a slow client");
    assert!(t.elapsed() < Duration::from_secs(1));
    // Both are cut off by the 2 s timeout (408 for the body, close for the head).
    for (c, answer) in [(&mut slow, "HTTP/1.1 408 "), (&mut slower, "")] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let t = Instant::now();
        let _ = c.read_to_end(&mut out);
        assert!(t.elapsed() < Duration::from_secs(8), "slow client held on");
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with(answer), "slow client answered {out:?}");
    }

    // Out of order.
    let (st, v) = s.call_json(
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}}),
    );
    assert!(
        st == 500 && v["Err"].as_str().unwrap().contains("not known"),
        "{v}"
    );
    for path in ["/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint"] {
        let (st, v) = s.call_json(path, json!({"NetworkID": NET, "EndpointID": EP}));
        assert_eq!(st, 200, "{path}: {v}");
    }
    let (st, v) = s.call_json(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool, "Address": "10.171.3.77"}),
    );
    assert_eq!(st, 200, "{v}");

    // Concurrent: 8 threads × 40 mixed calls, every one answered with JSON.
    let sock = s.sock.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let sock = sock.clone();
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let ep = format!("{:064x}", t * 1000 + i);
                    let calls = [
                        ("/IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": "", "Options": {}})),
                        ("/NetworkDriver.CreateEndpoint", json!({"NetworkID": NET, "EndpointID": ep, "Interface": {}})),
                        ("/NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": "é", "SandboxKey": "", "Options": {}})),
                        ("/NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET, "EndpointID": ep})),
                        ("/NetworkDriver.DeleteNetwork", json!({"NetworkID": "9".repeat(64)})),
                    ];
                    for (path, body) in calls {
                        let mut c = UnixStream::connect(&sock).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let (_, b) = request(&mut c, path, &serde_json::to_vec(&body).unwrap())
                            .unwrap_or_else(|e| panic!("{path}: {e}"));
                        let _: Value = serde_json::from_slice(&b).expect("JSON reply");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    s.assert_serving("concurrent calls");
    // DeleteNetwork twice: both succeed.
    for _ in 0..2 {
        let (st, v) = s.call_json("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
        assert_eq!(st, 200, "{v}");
    }
    s.assert_serving("DeleteNetwork twice");
}

/// Finding 4: DeleteNetwork deleted a bridge plugnet never created (named with
/// `com.docker.network.bridge.name`). It survives, with its address.
#[test]
fn foreign_bridge_survives_delete_network() {
    let mut s = Shim::start();
    let br = "pnsforeign0";
    s.ns.exec(&format!("ip link add {br} type bridge"));
    s.ns.exec(&format!("ip addr add 10.171.9.1/24 dev {br}"));
    create_network(
        &mut s,
        "10.171.8.0/24",
        json!({"com.docker.network.bridge.name": br}),
    );
    let (st, v) = s.call_json("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    assert_eq!(st, 200, "{v}");
    let out = s.ns.exec(&format!("ip -o addr show dev {br}"));
    assert!(out.contains("10.171.9.1/24"), "foreign bridge lost: {out}");
    assert!(sh_ok(&format!(
        "ip netns exec {} ip link show dev {br}",
        s.ns.name
    )));
}

/// A CNI plugin chained after plugnet whose ADD does what `<dir>/step.mode` says: `fail`
/// (an error), `hang` (record its pid, sleep), anything else (pass prevResult on).
const STEP_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, sys, time
d = os.path.dirname(os.path.abspath(__file__))
cmd = os.environ.get("CNI_COMMAND", "")
conf = json.load(sys.stdin) if cmd in ("ADD", "DEL", "CHECK") else {}
if cmd == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}))
    sys.exit(0)
if cmd != "ADD":
    sys.exit(0)
mode = open(os.path.join(d, "step.mode")).read().strip() if os.path.exists(os.path.join(d, "step.mode")) else ""
if mode == "fail":
    print(json.dumps({"cniVersion": "1.0.0", "code": 999, "msg": "pns-step: injected failure"}))
    sys.exit(1)
if mode == "hang":
    open(os.path.join(d, "step.pid"), "w").write(str(os.getpid()))
    time.sleep(60)
    sys.exit(1)
print(json.dumps(conf.get("prevResult", {})))
"#;

/// A shim whose CNI network `pns-net` is plugnet (bridge, plugnet-ipam in the temp dir,
/// firewall state in the temp dir) followed by the step plugin above (mode 2: `cni.network`).
fn reservation_shim() -> (Shim, String, String) {
    reservation_shim_with("plugnet")
}

/// [`reservation_shim`] with `main` (`plugnet` or the reference `bridge`) as the main plugin.
fn reservation_shim_with(main: &str) -> (Shim, String, String) {
    let mut s = Shim::start();
    let step = s.dir.path().join("bin/pns-step");
    std::fs::write(&step, STEP_PLUGIN).unwrap();
    sh(&format!("chmod 755 {}", step.display()));
    let conflist = json!({"cniVersion": "1.0.0", "name": "pns-net", "plugins": [
        {"type": main, "bridge": format!("pnsb{}", unique()), "isGateway": true,
         "firewallStateDir": s.dir.path().join("fw"),
         "ipam": {"type": "plugnet-ipam", "dataDir": s.dir.path().join("ipam"),
                  "ranges": [[{"subnet": "10.171.20.0/24", "gateway": "10.171.20.1"}]]}},
        {"type": "pns-step"}]});
    std::fs::write(
        s.dir.path().join("conf/pns-net.conflist"),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
    let (st, p) = s.call_json(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace":"plugnet-local","Pool":"","SubPool":"","Options":{"cni.network":"pns-net"},"V6":false}),
    );
    assert!(st == 200 && p["PoolID"].is_string(), "{p}");
    let pool_id = p["PoolID"].as_str().unwrap().to_string();
    let gw = p["Data"]["com.docker.network.gateway"].clone();
    let (st, v) = s.call_json(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {"cni.network": "pns-net"}},
               "IPv4Data": [{"AddressSpace":"plugnet-local","Pool": p["Pool"], "Gateway": gw}], "IPv6Data": []}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, a) = s.call_json(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    assert!(st == 200 && a["Address"].is_string(), "{a}");
    let addr = a["Address"].as_str().unwrap().to_string();
    let (st, v) = s.call_json(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
    );
    assert_eq!(st, 200, "{v}");
    (s, pool_id, addr.split('/').next().unwrap().to_string())
}

impl Shim {
    /// SIGKILL (no cleanup) and start again on the same state, socket and namespace.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .arg(shim_bin())
            .args(["--name", &self.name, "--log-level", "info"])
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--socket-dir")
            .arg(self.dir.path().join("sock"))
            .arg("--cni-conf-dir")
            .arg(self.dir.path().join("conf"))
            .arg("--cni-path")
            .arg(cni_path(self.dir.path()))
            .arg("--ipam-data-dir")
            .arg(self.dir.path().join("ipam"))
            .args(["--default-pool", "10.171.0.0/16"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(self.dir.path().join("shim.log"))
                    .unwrap(),
            ));
        self.child = cmd.spawn().expect("restart plugnet-shim");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.sock.exists() && self.try_call("/Plugin.Activate", b"{}").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("restarted shim did not answer:\n{}", self.log());
    }

    /// (hold, containerID) of `ip` in plugnet-ipam's store, as `plugnet ipam ls` reports it.
    fn holder_of(&self, ip: &str) -> Option<(String, String)> {
        let out = Command::new(bin("plugnet"))
            .args(["ipam", "ls", "--json", "--data-dir"])
            .arg(self.dir.path().join("ipam"))
            .env("NETCONFPATH", self.dir.path().join("conf"))
            .output()
            .expect("plugnet ipam ls");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ipam ls: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        v.as_array()?
            .iter()
            .flat_map(|n| n["holders"].as_array().cloned().unwrap_or_default())
            .find(|h| h["address"] == ip)
            .map(|h| {
                (
                    h["hold"].as_str().unwrap_or("").to_string(),
                    h["containerID"].as_str().unwrap_or("").to_string(),
                )
            })
    }

    fn set_step(&self, mode: &str) {
        std::fs::write(self.dir.path().join("bin/step.mode"), mode).unwrap();
    }
}

fn join_body() -> Value {
    json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}})
}

fn teardown(s: &mut Shim, pool_id: &str, ip: &str) {
    let e = json!({"NetworkID": NET, "EndpointID": EP});
    for p in ["/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint"] {
        let (st, v) = s.call_json(p, e.clone());
        assert_eq!(st, 200, "{p}: {v}");
    }
    s.call_json(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": ip}),
    );
    let (st, v) = s.call_json("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        s.holder_of(ip),
        None,
        "{ip} still held after DeleteEndpoint"
    );
}

/// Finding 5: a Join whose CNI ADD fails after adopting Docker's reservation kept nothing:
/// the rollback's DEL freed the address while Docker still held it. The reservation belongs
/// to the endpoint until DeleteEndpoint; Docker's retry of Join gets the same address.
#[test]
fn reservation_survives_a_failed_join() {
    let (mut s, pool_id, ip) = reservation_shim();
    assert_eq!(s.holder_of(&ip), Some(("reserved".into(), EP.into())));
    s.set_step("fail");
    let (st, v) = s.call_json("/NetworkDriver.Join", join_body());
    assert_eq!(st, 500, "{v}");
    assert!(v["Err"].as_str().unwrap().contains("injected"), "{v}");
    assert_eq!(
        s.holder_of(&ip),
        Some(("reserved".into(), EP.into())),
        "the failed Join's rollback freed Docker's address"
    );
    s.set_step("pass");
    let (st, v) = s.call_json("/NetworkDriver.Join", join_body());
    assert_eq!(st, 200, "Docker's retry of Join: {v}\n{}", s.log());
    assert_eq!(s.holder_of(&ip), Some(("attached".into(), EP.into())));
    teardown(&mut s, &pool_id, &ip);
}

/// Finding 5 with the reference bridge plugin and plugnet-ipam: the bridge's rollback and the
/// shim's undo run plugnet-ipam's DEL with `CNI_ARGS` passed on, so the reservation is kept.
#[test]
fn reservation_survives_a_failed_join_reference_bridge() {
    if !plugnet_tests::have_reference_plugins() {
        eprintln!(
            "skipped: no reference plugins in {}",
            plugnet_tests::REFERENCE_PLUGINS
        );
        return;
    }
    let (mut s, pool_id, ip) = reservation_shim_with("bridge");
    s.set_step("fail");
    let (st, v) = s.call_json("/NetworkDriver.Join", join_body());
    assert_eq!(st, 500, "{v}");
    assert_eq!(
        s.holder_of(&ip),
        Some(("reserved".into(), EP.into())),
        "the failed Join's rollback freed Docker's address\n{}",
        s.log()
    );
    s.set_step("pass");
    let (st, v) = s.call_json("/NetworkDriver.Join", join_body());
    assert_eq!(st, 200, "Docker's retry of Join: {v}\n{}", s.log());
    teardown(&mut s, &pool_id, &ip);
}

/// Finding 5: SIGKILL of the shim mid-Join, then a restart: "undoing interrupted attachment"
/// must hold the address again as the endpoint's reservation, not free it.
#[test]
fn reservation_survives_sigkill_mid_join_and_restart() {
    let (mut s, pool_id, ip) = reservation_shim();
    s.set_step("hang");
    let sock = s.sock.clone();
    let joiner = std::thread::spawn(move || {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        let _ = request(
            &mut c,
            "/NetworkDriver.Join",
            &serde_json::to_vec(&join_body()).unwrap(),
        );
    });
    let pidfile = s.dir.path().join("bin/step.pid");
    let t = Instant::now();
    while !pidfile.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the ADD never reached the step plugin\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // plugnet's ADD is done (the address is attached); the chain hangs after it.
    assert_eq!(s.holder_of(&ip), Some(("attached".into(), EP.into())));
    s.set_step("pass");
    s.restart();
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = joiner.join();
    // The restart's reconcile undoes the interrupted attachment.
    let t = Instant::now();
    while !s.log().contains("undoing interrupted attachment") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no undo after restart:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its CNI DEL takes a while on a loaded machine: wait until the address is no longer
    // attached, then it must be the endpoint's reservation again.
    let t = Instant::now();
    while s.holder_of(&ip) == Some(("attached".into(), EP.into()))
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.holder_of(&ip),
        Some(("reserved".into(), EP.into())),
        "the restart's undo freed Docker's address\n{}",
        s.log()
    );
    let (st, v) = s.call_json("/NetworkDriver.Join", join_body());
    assert_eq!(st, 200, "Docker's retry of Join: {v}\n{}", s.log());
    teardown(&mut s, &pool_id, &ip);
}
