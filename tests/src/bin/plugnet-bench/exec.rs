//! Timed plugin execution: spawn one plugin process the way a runtime does (env + stdin), reap
//! it with `wait4` so its peak RSS comes with the wall time, and nothing but the spawn, the
//! pipes and the wait sits inside the timed interval (no shell, no `ip netns exec`).
//!
//! Invariant: a thread that spawns plugins for a host namespace has entered it with `setns`
//! first ([`enter_netns`]), so the child inherits the namespace without a wrapper process.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::Value;

/// One invocation's outcome: wall time, peak RSS of the process (and the children it reaped,
/// as `/usr/bin/time -v` reports it) and what it printed.
#[derive(Debug, Clone)]
pub struct Run {
    pub ms: f64,
    pub rss_kb: u64,
    /// User + system CPU time of the process and the children it reaped.
    pub cpu_ms: f64,
    pub stdout: Vec<u8>,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or(Value::Null)
    }
}

/// The CNI environment of one call.
pub struct Call<'a> {
    pub command: &'a str,
    pub id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub cni_path: &'a str,
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// When set, [`spawn`] runs the program under `/usr/bin/time -f %M` and takes its peak RSS
/// from there. `wait4`'s `ru_maxrss` of a child counts the pages of the process that spawned
/// it (a forked or vforked child starts in, or as a copy of, the harness's memory, and exec
/// keeps that peak), so every process small enough is floored at the harness's own RSS
/// (≈ 2.9 MB here); GNU time's child starts from time's ≈ 1 MB. Wall times taken this way
/// include time's own start-up and are not reported.
pub static RSS_VIA_TIME: AtomicBool = AtomicBool::new(false);

/// Runs `bin` with `args` and `stdin`, timing spawn → exit; fails on a non-zero exit.
pub fn spawn(bin: &Path, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Result<Run, String> {
    let rss_file = RSS_VIA_TIME
        .load(Ordering::Relaxed)
        .then(|| tempfile::NamedTempFile::new().map_err(|e| format!("rss file: {e}")))
        .transpose()?;
    let mut cmd = match &rss_file {
        Some(f) => {
            let mut c = Command::new("/usr/bin/time");
            c.args(["-f", "%M", "-o"]).arg(f.path()).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut pipe = child.stdin.take().expect("stdin piped");
    // Configs are a few hundred bytes: well under the pipe buffer, so no feeder thread.
    // A plugin may exit without reading stdin (Go's VERSION): EPIPE is not a failure.
    match pipe.write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(format!("write stdin of {}: {e}", bin.display()));
        }
        _ => {}
    }
    drop(pipe);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .expect("stdout piped")
        .read_to_end(&mut out)
        .map_err(|e| format!("read stdout: {e}"))?;
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_end(&mut err)
        .map_err(|e| format!("read stderr: {e}"))?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 reaps our own child (std never waits on it after).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if rc != pid {
        return Err(format!(
            "wait4 {}: {}",
            bin.display(),
            std::io::Error::last_os_error()
        ));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "{} {args:?} failed ({status}): stdout={} stderr={}",
            bin.display(),
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ));
    }
    let rss_kb = match &rss_file {
        // The last line is %M (time writes a status line first when the command failed).
        Some(f) => std::fs::read_to_string(f.path())
            .ok()
            .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
            .ok_or_else(|| format!("no peak RSS from /usr/bin/time for {}", bin.display()))?,
        None => ru.ru_maxrss as u64,
    };
    Ok(Run {
        ms,
        rss_kb,
        cpu_ms: tv_ms(ru.ru_utime) + tv_ms(ru.ru_stime),
        stdout: out,
    })
}

fn tv_ms(t: libc::timeval) -> f64 {
    t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3
}

/// A CNI plugin invocation.
pub fn cni(bin: &Path, call: &Call, conf: &[u8]) -> Result<Run, String> {
    spawn(
        bin,
        &[],
        &[
            ("CNI_COMMAND", call.command),
            ("CNI_CONTAINERID", call.id),
            ("CNI_NETNS", call.netns),
            ("CNI_IFNAME", call.ifname),
            ("CNI_PATH", call.cni_path),
        ],
        conf,
    )
}

/// Where the workspace's binaries are: `PLUGNET_BIN_DIR`, else next to this executable.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PLUGNET_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("exe dir").to_path_buf()
}
