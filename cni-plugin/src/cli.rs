//! cli: the `plugnet` command line when it is not run as a CNI plugin (`CNI_COMMAND` unset):
//! `up`, `down`, `check`, `info`, `metrics`, `list` over [`crate::runner`], and
//! `firewall reload|ls` over [`crate::firewall`].
//!
//! Invariant: [`run`] takes args, environment, stdin, stdout and stderr as parameters and
//! returns the exit code; only [`main`] touches the real process. JSON goes to stdout, human
//! diagnostics to stderr; exit 0 on success, 1 on failure, 2 on a usage error.
//! `ipam ls|release` and `gc` live in [`crate::ops`]. New command groups (`firewall reload`) are further [`Command`]
//! variants with their own argument structs; the global options apply to all of them.

use crate::error::CniError;
use crate::invoke::RawExec;
use crate::runner::{
    AttachmentInfo, NetlinkKernel, NetworkMetrics, Runner, RunnerOptions, Spec, MAX_SPEC_BYTES,
};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "plugnet",
    version,
    about = "Attach ordered lists of CNI networks to containers (and, with CNI_COMMAND set, act as the plugnet CNI plugin)",
    after_help = "Environment: PLUGNET_STATE_DIR (state dir, default /var/lib/plugnet/runner), \
                  CNI_PATH (plugin dirs, default /opt/cni/bin), NETCONFPATH (conflist dir, default /etc/cni/net.d).\n\
                  As a CNI plugin it logs to PLUGNET_LOG=stderr|syslog|file:/PATH|off at \
                  PLUGNET_LOG_LEVEL=error|warn|info|debug|trace (or the config key \"log\"); default stderr at warn."
)]
pub struct Cli {
    /// State dir (overrides PLUGNET_STATE_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the spec's networks in order (adds networks to a container that is already up).
    Up(UpArgs),
    /// Detach one network, or all of them in reverse order. Idempotent.
    Down(DownArgs),
    /// CNI CHECK every network of a container against its cached result.
    Check(IdArgs),
    /// Per network: interface, MAC, IPs, gateways, host-side interface and IPs, port mappings.
    Info(IdArgs),
    /// Per network: rx/tx bytes, packets, errors and drops of the container interface.
    Metrics(IdArgs),
    /// Every container and its networks.
    List(ListArgs),
    /// plugnet-ipam stores: `ls` who holds what, `release` one owner by hand.
    #[command(subcommand)]
    Ipam(crate::ops::IpamCommand),
    /// Reclaim IPAM records, host veths and result caches of containers that are provably gone
    /// (see `plugnet gc --help` for the rules).
    Gc(crate::ops::GcArgs),
    /// plugnet's nftables rules (`--state-dir` is the firewall state dir here, default
    /// /var/lib/plugnet/firewall).
    #[command(subcommand)]
    Firewall(FirewallCommand),
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Re-apply every rule plugnet owns from its state (after `nft flush ruleset`, a firewalld
    /// reload or a Docker restart). Idempotent.
    Reload,
    /// Reload only if the kernel lost something live attachments need (plugnet's table, or the
    /// host firewall's jump/accept rules); prints `{"reloaded": false}` otherwise. What
    /// plugnet-shim and `watch` run.
    Repair,
    /// Stay running and repair as soon as the host's nftables ruleset changes (a flush, a
    /// firewalld reload or start, a Docker restart) and at least every 30 s; prints what
    /// `repair` prints for each reload, one JSON object per line. For hosts without
    /// plugnet-shim (which does the same); see conf/plugnet-firewall-watch.service.
    Watch,
    /// Keep BRIDGE's accept rules in the host firewall (Docker coexistence) while HOLDER holds
    /// it, attachments or not; what plugnet-shim does for each Docker network it creates.
    Hold {
        #[arg(long)]
        bridge: String,
        #[arg(long)]
        holder: String,
    },
    /// End a `hold`.
    Release {
        #[arg(long)]
        bridge: String,
        #[arg(long)]
        holder: String,
    },
    /// The attachments the firewall state records (JSON).
    Ls,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Container id.
    #[arg(long)]
    pub id: String,
    /// Path of the container's network namespace (e.g. /run/netns/NAME).
    #[arg(long)]
    pub netns: PathBuf,
    /// Spec file ({"networks": [...]}); `-` or absent reads stdin.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[arg(long)]
    pub id: String,
    /// Only this network (by its name in the spec).
    #[arg(long)]
    pub network: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[arg(long)]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// A human-readable table instead of JSON.
    #[arg(long)]
    pub table: bool,
}

/// The process entry point: real environment, stdio and plugins.
pub fn main(args: Vec<String>) -> i32 {
    let getenv = |k: &str| std::env::var(k).ok();
    run(
        args,
        &getenv,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// Parse `args` and run the command. Returns the exit code.
pub fn run(
    args: Vec<String>,
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    if args.len() <= 1 {
        // No arguments at all: behave like a skel-based plugin run without CNI_COMMAND
        // (about text on stderr, exit 0), then show the runner's usage.
        use clap::CommandFactory;
        let _ = writeln!(
            stderr,
            "plugnet {}: CNI bridge plugin (with CNI_COMMAND set) and ordered-network-list runner.\n\
             CNI protocol versions supported: {}\n\n{}",
            env!("CARGO_PKG_VERSION"),
            crate::version::SUPPORTED.join(", "),
            Cli::command().render_help()
        );
        return 0;
    }
    if args.get(1).map(String::as_str) == Some("cluster") {
        return cluster(&args[2..], getenv, stderr);
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let text = e.render().to_string();
            let sink: &mut dyn Write = if e.use_stderr() { stderr } else { stdout };
            let _ = write!(sink, "{text}");
            return e.exit_code();
        }
    };
    if let Command::Firewall(fc) = &cli.command {
        return firewall_command(fc, cli.state_dir, stdout, stderr);
    }
    let opts = RunnerOptions::from_env(cli.state_dir, getenv);
    match dispatch(opts, cli.command, stdin, stdout) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(stderr, "plugnet: {e}");
            if e.msg.contains("os error 13") || e.msg.contains("os error 1)") {
                let _ = writeln!(
                    stderr,
                    "plugnet: this needs root (or CAP_NET_ADMIN and access to the state dirs)"
                );
            }
            1
        }
    }
}

/// `plugnet cluster …`: the cluster commands live in plugnet-agent, which links the etcd
/// client the plugins must not; run it (beside this binary, else on PATH), as git runs its
/// external subcommands. Returns only if it could not be started.
fn cluster(
    args: &[String],
    getenv: &dyn Fn(&str) -> Option<String>,
    stderr: &mut dyn Write,
) -> i32 {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("plugnet-agent")))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from("plugnet-agent"));
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("cluster").args(args);
    if let Some(path) = getenv("PATH") {
        cmd.env("PATH", path);
    }
    let e = cmd.exec();
    let _ = writeln!(
        stderr,
        "plugnet: `plugnet cluster` runs plugnet-agent, which could not be started ({}: {e}); \
         install it (scripts/install.sh) or put it on PATH",
        program.display()
    );
    1
}

fn print(stdout: &mut dyn Write, v: &Value) -> Result<(), CniError> {
    let text = serde_json::to_string_pretty(v).expect("JSON serialises");
    writeln!(stdout, "{text}").map_err(|e| CniError::io(format!("write output: {e}")))
}

fn dispatch(
    opts: RunnerOptions,
    command: Command,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> Result<i32, CniError> {
    let runner = &Runner::new(opts.clone(), Arc::new(RawExec));
    match command {
        Command::Up(a) => {
            let bytes = read_spec(a.spec.as_ref(), stdin)?;
            let spec = Spec::from_slice(&bytes)?;
            let results = runner.up(&a.id, &a.netns, &spec)?;
            print(stdout, &Value::Object(results))?;
        }
        Command::Down(a) => runner.down(&a.id, a.network.as_deref())?,
        Command::Check(a) => {
            let outcomes = runner.check(&a.id)?;
            let mut out = Map::new();
            for o in &outcomes {
                let v = match &o.error {
                    None => json!({"ok": true}),
                    Some(e) => json!({"ok": false, "error": e}),
                };
                out.insert(o.network.clone(), v);
            }
            print(stdout, &Value::Object(out))?;
            if outcomes.iter().any(|o| o.error.is_some()) {
                return Ok(1);
            }
        }
        Command::Info(a) => {
            let info = runner.info(&a.id, &NetlinkKernel)?;
            print(stdout, &keyed(&info, |i: &AttachmentInfo| &i.name))?;
        }
        Command::Metrics(a) => {
            let m = runner.metrics(&a.id, &NetlinkKernel)?;
            print(stdout, &keyed(&m.networks, |n: &NetworkMetrics| &n.name))?;
        }
        Command::List(a) => list(runner, a.table, stdout)?,
        Command::Ipam(c) => return crate::ops::ipam(c, &opts, stdout),
        Command::Gc(a) => return crate::ops::gc(a, &opts, stdout),
        Command::Firewall(_) => unreachable!("handled before the runner is built"),
    }
    Ok(0)
}

/// `plugnet firewall reload|repair|watch|hold|release|ls`: runs in the caller's network namespace over `state_dir`.
fn firewall_command(
    command: &FirewallCommand,
    state_dir: Option<PathBuf>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    use crate::firewall::{Firewall, DEFAULT_STATE_DIR};
    let dir = state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let fw = Firewall::at(dir.clone());
    let out = match command {
        FirewallCommand::Reload => fw
            .reload()
            .map(|r| json!({"attachments": r.attachments, "bridges": r.bridges})),
        FirewallCommand::Repair => fw.repair().map(repaired),
        FirewallCommand::Watch => {
            let e = crate::firewall::watch(Some(Duration::from_secs(30)), || {
                // Nothing to look at until plugnet's first attachment creates the state dir.
                match crate::firewall::repair(&dir) {
                    Ok(Some(r)) => {
                        let v = repaired(Some(r));
                        let _ = writeln!(stdout, "{v}").and_then(|()| stdout.flush());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = writeln!(stderr, "plugnet firewall watch: {e}");
                    }
                }
            });
            let _ = writeln!(
                stderr,
                "plugnet firewall watch: nftables notifications: {e}"
            );
            return 1;
        }
        FirewallCommand::Hold { bridge, holder } => fw
            .hold(bridge, holder)
            .map(|()| json!({"held": bridge, "by": holder})),
        FirewallCommand::Release { bridge, holder } => fw
            .release(bridge, holder)
            .map(|()| json!({"released": bridge, "by": holder})),
        FirewallCommand::Ls => fw
            .list()
            .map(|l| serde_json::to_value(l).expect("attachments serialise")),
    };
    match out {
        Ok(v) => match print(stdout, &v) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(stderr, "plugnet: {e}");
                1
            }
        },
        Err(e) => {
            let _ = writeln!(stderr, "plugnet firewall: {e}");
            1
        }
    }
}

/// What `firewall repair` prints (and `watch`, per reload).
fn repaired(r: Option<crate::firewall::ReloadReport>) -> Value {
    match r {
        Some(r) => json!({"reloaded": true, "attachments": r.attachments, "bridges": r.bridges}),
        None => json!({"reloaded": false}),
    }
}

/// `[{name, …}]` as `{name: {…}}`, in order.
fn keyed<T: serde::Serialize>(items: &[T], name: impl Fn(&T) -> &String) -> Value {
    let mut out = Map::new();
    for i in items {
        out.insert(
            name(i).clone(),
            serde_json::to_value(i).expect("serialises"),
        );
    }
    Value::Object(out)
}

fn read_spec(path: Option<&PathBuf>, stdin: &mut dyn Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    let limit = MAX_SPEC_BYTES as u64 + 1;
    let res = match path.filter(|p| p.as_os_str() != "-") {
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(limit).read_to_end(&mut buf))
            .map_err(|e| CniError::io(format!("read spec {}: {e}", p.display()))),
        None => stdin
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| CniError::io(format!("read spec from stdin: {e}"))),
    };
    res.map(|_| buf)
}

fn list(runner: &Runner, table: bool, stdout: &mut dyn Write) -> Result<(), CniError> {
    let containers = runner.list()?;
    let mut rows = Vec::new();
    let mut json_out = Vec::new();
    for c in &containers {
        let (st, results) = (&c.state, &c.results);
        let mut nets = Vec::new();
        for (a, r) in st.networks.iter().zip(results) {
            let status = if r.is_some() { "attached" } else { "attaching" };
            let ips: Vec<String> = r
                .as_ref()
                .map(|r| r.ips.iter().map(|i| i.address.to_string()).collect())
                .unwrap_or_default();
            rows.push([
                st.container_id.clone(),
                a.name.clone(),
                a.ifname.clone(),
                status.to_string(),
                if ips.is_empty() {
                    "-".into()
                } else {
                    ips.join(",")
                },
                st.netns.display().to_string(),
            ]);
            nets.push(
                json!({"name": a.name, "ifname": a.ifname, "cniNetwork": a.cni_network(),
                             "status": status, "ips": ips}),
            );
        }
        json_out.push(json!({"containerId": st.container_id, "netns": st.netns, "networks": nets}));
    }
    if !table {
        return print(stdout, &Value::Array(json_out));
    }
    let header = ["CONTAINER", "NETWORK", "IFNAME", "STATUS", "IPS", "NETNS"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut text = String::new();
    for r in std::iter::once(header.map(String::from)).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    stdout
        .write_all(text.as_bytes())
        .map_err(|e| CniError::io(format!("write output: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_cli(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let getenv = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            std::iter::once("plugnet")
                .chain(args.iter().copied())
                .map(String::from)
                .collect(),
            &getenv,
            &mut stdin.as_bytes(),
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn usage_errors_and_help() {
        let (code, _, err) = run_cli(&["up"], &[], "");
        assert_eq!(code, 2);
        assert!(err.contains("--id"), "{err}");
        let (code, out, err) = run_cli(&[], &[], "");
        assert_eq!((code, out.as_str()), (0, ""));
        assert!(
            err.contains("CNI protocol versions supported: 0.3.0"),
            "{err}"
        );
        assert!(err.contains("metrics"), "{err}");
        let (code, out, _) = run_cli(&["gc", "--help"], &[], "");
        assert_eq!(code, 0);
        assert!(out.contains("cannot be proved dead"), "{out}");
        let (code, _, err) = run_cli(&["ipam", "release", "--network", "n"], &[], "");
        assert_eq!(code, 2);
        assert!(err.contains("--id"), "{err}");
        let (code, out, _) = run_cli(&["--help"], &[], "");
        assert_eq!(code, 0);
        for sub in [
            "up", "down", "check", "info", "metrics", "list", "ipam", "gc", "firewall",
        ] {
            assert!(out.contains(sub), "{out}");
        }
    }

    #[test]
    fn bad_specs_and_unknown_containers_fail_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let sd = d.path().to_str().unwrap();
        let env = [("PLUGNET_STATE_DIR", sd)];
        let (code, out, err) = run_cli(
            &["up", "--id", "c1", "--netns", "/proc/self/ns/net"],
            &env,
            "{not json",
        );
        assert_eq!((code, out.as_str()), (1, ""));
        assert!(err.contains("not valid JSON"), "{err}");
        let big = format!(
            "{{\"networks\": [], \"x\": \"{}\"}}",
            "a".repeat(MAX_SPEC_BYTES)
        );
        let (code, _, err) = run_cli(
            &["up", "--id", "c1", "--netns", "/proc/self/ns/net"],
            &env,
            &big,
        );
        assert_eq!(code, 1);
        assert!(err.contains("limit"), "{err}");
        let (code, _, err) = run_cli(&["info", "--id", "c1"], &env, "");
        assert_eq!(code, 1);
        assert!(err.contains("has no networks"), "{err}");
        let (code, _, err) = run_cli(&["down", "--id", "../x"], &env, "");
        assert_eq!(code, 1);
        assert!(err.contains("invalid characters"), "{err}");
        assert_eq!(run_cli(&["down", "--id", "c1"], &env, "").0, 0);
        let (code, out, _) = run_cli(&["list"], &env, "");
        assert_eq!((code, out.trim()), (0, "[]"));
        let fw = d.path().join("fw");
        let fw = fw.to_str().unwrap();
        let (code, out, _) = run_cli(&["firewall", "ls", "--state-dir", fw], &[], "");
        assert_eq!((code, out.trim()), (0, "[]"));
        let (code, out, _) = run_cli(&["--state-dir", sd, "list", "--table"], &[], "");
        assert_eq!(code, 0);
        assert!(out.starts_with("CONTAINER"), "{out}");
    }
}
