//! Helpers for black-box tests: find the built binaries, run a CNI plugin the way a runtime
//! does, and create throwaway network namespaces that are removed even when a test fails.
//!
//! Invariant: every object a helper creates carries the caller's unique prefix and is removed by
//! a guard's `Drop`.

pub mod cluster;
pub mod podman;

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// `target/<profile>`, where cargo put the binaries of this workspace.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PLUGNET_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Directory of the Go reference plugins (Debian's containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

pub fn have_reference_plugins() -> bool {
    Path::new(REFERENCE_PLUGINS).join("bridge").is_file()
}

/// A CNI path with our binaries first, then the reference plugins.
pub fn cni_path() -> String {
    format!("{}:{}", bin_dir().display(), REFERENCE_PLUGINS)
}

/// The outcome of one plugin invocation.
#[derive(Debug)]
pub struct CniOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }
    /// Assert a spec-shaped error with `code`.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(self.code, 0, "expected failure, got {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "wrong code: {v}");
        assert!(v["msg"].is_string(), "error without msg: {v}");
        assert!(v["cniVersion"].is_string(), "error without cniVersion: {v}");
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        v
    }
}

/// Run `plugin` with CNI environment `env` and `stdin`, as a runtime would.
pub fn cni(plugin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> CniOut {
    let mut cmd = Command::new(plugin);
    for k in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out: Output = child.wait_with_output().expect("wait plugin");
    let _ = feeder.join();
    CniOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run a shell command line; panic with its output on failure.
pub fn sh(cmdline: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmdline)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmdline}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a shell command line and report whether it succeeded.
pub fn sh_ok(cmdline: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmdline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique suffix: pid and a per-process counter.
pub fn unique() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace under /run/netns, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = format!("{prefix}-{}", unique());
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
    /// Run a command inside the namespace.
    pub fn exec(&self, cmdline: &str) -> String {
        sh(&format!("ip netns exec {} {cmdline}", self.name))
    }
    pub fn exec_ok(&self, cmdline: &str) -> bool {
        sh_ok(&format!("ip netns exec {} {cmdline}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A host link (e.g. a bridge a test made), deleted on drop.
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether a host link exists.
pub fn link_exists(name: &str) -> bool {
    sh_ok(&format!("ip link show dev {name}"))
}

/// A tiny deterministic PRNG for fault injection (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("PLUGNET_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("PLUGNET_TEST_SEED={seed}");
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The median of `v` (sorted in place), for the benches.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The 95th percentile of `v` (sorted in place), for the benches.
pub fn p95(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(v.len() * 95 / 100).min(v.len() - 1)]
}
