//! Fault-injection soak: CNI ADD/DEL cycles through the real `plugnet` binary at N-way
//! concurrency while a random fraction of plugin processes is SIGKILLed at random moments
//! (mid-allocation, mid-netlink, mid-nftables), then DEL and GC of everything, then an audit:
//! no address held by nobody, no orphaned veth, rule, qdisc or firewall state, every store
//! entry parses. A second phase kills `plugnet up` (the ordered-list runner) mid-list.
//!
//! Usage: plugnet-soak [--cycles 1000] [--workers 8] [--kill-percent 30] [--max-seconds 600]
//! Everything runs inside a throwaway "host" network namespace (`pnk-host-<pid>`), so the
//! machine's own bridges and nftables ruleset are never touched. Exit status 0 iff no leak.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs one plugin invocation; with `kill_after`, SIGKILLs it after that many microseconds if
/// still running. Returns whether it was killed.
fn invoke(bin: &Path, env: &[(&str, String)], stdin: &[u8], kill_after: Option<u64>) -> bool {
    let mut child = Command::new(bin)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let mut killed = false;
    if let Some(us) = kill_after {
        std::thread::sleep(Duration::from_micros(us));
        if matches!(child.try_wait(), Ok(None)) && child.kill().is_ok() {
            killed = true;
        }
    }
    let _ = child.wait();
    killed
}

struct Guard(Vec<String>);
impl Drop for Guard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn main() {
    let cycles: usize = arg("--cycles", 1000);
    let workers: usize = arg("--workers", 8);
    let kill_percent: u64 = arg("--kill-percent", 30);
    let max_seconds: u64 = arg("--max-seconds", 600);
    let bin_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let plugnet = bin_dir.join("plugnet");
    let pid = std::process::id();
    let host = format!("pnk-host-{pid}");
    let mut guard = Guard(vec![host.clone()]);
    assert!(
        sh(&format!(
            "ip netns add {host} && ip -n {host} link set lo up"
        ))
        .0
    );
    let state = tempfile::Builder::new()
        .prefix("pnk-soak-")
        .tempdir()
        .unwrap();
    let data_dir = state.path().join("ipam");
    let fw_dir = state.path().join("fw");
    let runner_dir = state.path().join("runner");
    let conf_of = |version: &str| {
        json!({
            "cniVersion": version, "name": "pnk-soak", "type": "plugnet",
            "bridge": "pnk0", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
            "firewallStateDir": fw_dir,
            "ipam": {"type": "plugnet-ipam", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.126.0.0/20"}], [{"subnet": "fd12:126::/64"}]]}
        })
    };
    let conf = serde_json::to_vec(&conf_of("1.1.0")).unwrap();
    // Every worker has its own container namespace, reused across its cycles.
    let nss: Vec<String> = (0..workers).map(|w| format!("pnk-c{w}-{pid}")).collect();
    for ns in &nss {
        assert!(sh(&format!("ip netns add {ns}")).0);
        guard.0.push(ns.clone());
    }
    // Enter the soak host namespace; every thread and child created from now on inherits it.
    let host_file = std::fs::File::open(format!("/run/netns/{host}")).unwrap();
    nix::sched::setns(&host_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let path = format!("{}:/usr/lib/cni", bin_dir.display());

    let killed = Arc::new(AtomicUsize::new(0));
    let spawned = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let seed = AtomicU64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("soak: seed {}", seed.load(Ordering::Relaxed));
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    let start = Instant::now();
    std::thread::scope(|s| {
        for (w, ns) in nss.iter().enumerate() {
            let (killed, spawned, done, conf, plugnet, path) =
                (&killed, &spawned, &done, &conf, &plugnet, &path);
            let mut rng = Rng(seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) | 1);
            s.spawn(move || {
                for c in (w..cycles).step_by(workers) {
                    if Instant::now() > deadline {
                        break;
                    }
                    let id = format!("soak-{c}");
                    let env = |cmd: &str| {
                        vec![
                            ("CNI_COMMAND", cmd.to_string()),
                            ("CNI_CONTAINERID", id.clone()),
                            ("CNI_NETNS", format!("/run/netns/{ns}")),
                            ("CNI_IFNAME", "eth0".to_string()),
                            ("CNI_PATH", path.clone()),
                        ]
                    };
                    // Every cycle maps its own host port; every other one is also shaped, so
                    // kills land in nftables port maps and tc as well.
                    let mut cycle_conf: Value = serde_json::from_slice(conf).unwrap();
                    cycle_conf["runtimeConfig"] = json!({"portMappings": [
                        {"hostPort": 20000 + c, "containerPort": 80, "protocol": "tcp"},
                        {"hostPort": 20000 + c, "containerPort": 53, "protocol": "udp"}]});
                    if c % 2 == 0 {
                        cycle_conf["runtimeConfig"]["bandwidth"] = json!({
                            "ingressRate": 10_000_000, "ingressBurst": 1_000_000,
                            "egressRate": 10_000_000, "egressBurst": 1_000_000});
                    }
                    let conf = &serde_json::to_vec(&cycle_conf).unwrap();
                    let maybe_kill =
                        |rng: &mut Rng| (rng.below(100) < kill_percent).then(|| rng.below(12_000));
                    for cmd in ["ADD", "DEL"] {
                        let k = maybe_kill(&mut rng);
                        spawned.fetch_add(1, Ordering::Relaxed);
                        if invoke(plugnet, &env(cmd), conf, k) {
                            killed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // The runtime's contract: DEL until it succeeds (here: once, unkilled),
                    // except for a few attachments left for GC to reclaim.
                    if rng.below(10) != 0 {
                        spawned.fetch_add(1, Ordering::Relaxed);
                        invoke(plugnet, &env("DEL"), conf, None);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    // Leftover attachments: GC with an empty valid list reclaims them (the container netns are
    // about to go, as after a crash of the runtime).
    let mut gc = conf_of("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let gc_env = vec![
        ("CNI_COMMAND", "GC".to_string()),
        ("CNI_PATH", path.clone()),
    ];
    // A GC'd attachment's veth lives on in its container namespace until that goes: clear
    // the container side the way a runtime deleting its sandbox does.
    for ns in &nss {
        let _ = sh(&format!("ip -n {ns} link del eth0 2>/dev/null"));
    }
    invoke(&plugnet, &gc_env, &serde_json::to_vec(&gc).unwrap(), None);

    // Audit.
    let mut leaks: Vec<String> = Vec::new();
    let store = data_dir.join("pnk-soak");
    for sub in ["ip", "owner"] {
        if let Ok(rd) = std::fs::read_dir(store.join(sub)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                match std::fs::read_link(e.path()) {
                    Ok(t) => leaks.push(format!("ipam {sub}/{name} -> {}", t.display())),
                    Err(err) => leaks.push(format!("ipam {sub}/{name} unparsable: {err}")),
                }
            }
        }
    }
    let (_, links) = sh("ip -j link show");
    let links: Value = serde_json::from_str(&links).unwrap_or(Value::Null);
    for l in links.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or_default();
        if name != "lo" && name != "pnk0" {
            leaks.push(format!("host link {name}"));
        }
    }
    let (_, ruleset) = sh("nft list ruleset");
    if ruleset.contains("plugnet") {
        let elements: Vec<&str> = ruleset.lines().filter(|l| l.contains("elements")).collect();
        leaks.push(format!(
            "nftables: table inet plugnet left; element lines: {elements:?}"
        ));
        if let Ok(dump) = std::env::var("PNK_DUMP") {
            let shared = std::fs::read_to_string(fw_dir.join("shared.json")).unwrap_or_default();
            std::fs::write(dump, format!("{ruleset}\n---\n{shared}")).unwrap();
        }
    }
    let (_, qd) = sh("tc qdisc show");
    for line in qd
        .lines()
        .filter(|l| l.contains("tbf") || l.contains("ingress"))
    {
        leaks.push(format!("qdisc {line}"));
    }
    if let Ok(rd) = std::fs::read_dir(&fw_dir) {
        for e in rd.flatten() {
            let p: PathBuf = e.path();
            if p.is_dir() {
                for f in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    leaks.push(format!("firewall state {}", f.path().display()));
                }
            }
        }
    }
    for ns in &nss {
        let (_, l) = sh(&format!("ip -n {ns} -o link show"));
        if l.contains("eth0") {
            leaks.push(format!("eth0 left in {ns}"));
        }
    }

    // Phase 2: the runner killed mid-list, then `down` cleans everything.
    let runner_leaks = runner_phase(&plugnet, &path, &runner_dir, &data_dir, pid, &mut guard);
    leaks.extend(runner_leaks);

    println!(
        "soak: {} cycles in {:.1}s at {workers}-way, {} plugin processes, {} SIGKILLed, leaks: {}",
        done.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        spawned.load(Ordering::Relaxed),
        killed.load(Ordering::Relaxed),
        leaks.len()
    );
    for l in &leaks {
        println!("  LEAK {l}");
    }
    let _ = sh("ip link del pnk0 2>/dev/null");
    // Namespaces go before the exit status is decided: `exit` would skip the guard's drop.
    drop(guard);
    if !leaks.is_empty() {
        std::process::exit(1);
    }
}

/// `plugnet up` of a three-network spec killed at random moments, then `plugnet down`.
fn runner_phase(
    plugnet: &Path,
    path: &str,
    state: &Path,
    data_dir: &Path,
    pid: u32,
    guard: &mut Guard,
) -> Vec<String> {
    let rounds: usize = arg("--runner-rounds", 40);
    let spec = json!({"networks": [
        {"name": "pnk-r1", "type": "plugnet", "config": {"bridge": "pnk1", "isGateway": true,
            "ipam": {"type": "plugnet-ipam", "dataDir": data_dir, "ranges": [[{"subnet": "10.127.1.0/24"}]]}}},
        {"name": "pnk-r2", "type": "plugnet", "config": {"bridge": "pnk2", "isGateway": true,
            "ipam": {"type": "plugnet-ipam", "dataDir": data_dir, "ranges": [[{"subnet": "10.127.2.0/24"}]]}}},
        {"name": "pnk-r3", "type": "plugnet", "config": {"bridge": "pnk3",
            "ipam": {"type": "plugnet-ipam", "dataDir": data_dir, "ranges": [[{"subnet": "10.127.3.0/24"}]]}}}
    ]});
    let spec = serde_json::to_vec(&spec).unwrap();
    let mut rng = Rng(pid as u64 | 1);
    let mut killed = 0;
    for r in 0..rounds {
        let ns = format!("pnk-r{r}-{pid}");
        if !sh(&format!("ip netns add {ns}")).0 {
            continue;
        }
        guard.0.push(ns.clone());
        let id = format!("soak-runner-{r}");
        let env = [
            ("CNI_PATH", path.to_string()),
            ("PLUGNET_STATE_DIR", state.display().to_string()),
        ];
        let mut up = Command::new(plugnet)
            .args(["up", "--id", &id, "--netns", &format!("/run/netns/{ns}")])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = up.stdin.take().unwrap().write_all(&spec);
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        if matches!(up.try_wait(), Ok(None)) && up.kill().is_ok() {
            killed += 1;
        }
        let _ = up.wait();
        let ok = Command::new(plugnet)
            .args(["down", "--id", &id])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let mut leaks = Vec::new();
        if !ok {
            leaks.push(format!("runner: down --id {id} failed"));
        }
        let (_, l) = sh(&format!("ip -n {ns} -o link show"));
        if l.lines().any(|x| x.contains(": eth")) {
            leaks.push(format!("runner: interfaces left in {ns}: {l}"));
        }
        let _ = sh(&format!("ip netns del {ns}"));
        if !leaks.is_empty() {
            return leaks;
        }
    }
    let mut leaks = Vec::new();
    for net in ["pnk-r1", "pnk-r2", "pnk-r3"] {
        if let Ok(rd) = std::fs::read_dir(data_dir.join(net).join("ip")) {
            for e in rd.flatten() {
                leaks.push(format!(
                    "runner: {net} lease {}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    let (_, links) = sh("ip -o link show");
    for line in links.lines() {
        if line.contains(": pn") && !line.contains(": pnk") {
            leaks.push(format!("runner: host link {line}"));
        }
    }
    for f in std::fs::read_dir(state.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        leaks.push(format!(
            "runner: container state left: {}",
            f.path().display()
        ));
    }
    println!("soak: runner: {rounds} `plugnet up` runs, {killed} SIGKILLed mid-list, all cleaned by `plugnet down`");
    for b in ["pnk1", "pnk2", "pnk3"] {
        let _ = sh(&format!("ip link del {b} 2>/dev/null"));
    }
    leaks
}
