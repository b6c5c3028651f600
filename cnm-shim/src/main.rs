//! plugnet-shim: serve Docker's remote NetworkDriver + IpamDriver protocol over CNI.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use plugnet_shim::{
    cni::RealBackend, driver::Driver, driver::DriverConfig, metrics, netns, server, state::Store,
    status,
};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "plugnet-shim",
    version,
    about = "Docker network and IPAM driver running CNI plugins"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Driver name: `docker network create -d NAME --ipam-driver NAME`; also the socket name.
    #[arg(long, default_value = "plugnet")]
    name: String,
    #[arg(long, global = true, default_value = "/var/lib/plugnet/shim")]
    state_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Colon-separated plugin directories.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_path: String,
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Where Docker looks for plugin sockets.
    #[arg(long, default_value = "/run/docker/plugins")]
    socket_dir: PathBuf,
    /// `dataDir` of plugnet-ipam in derived conflists (default: plugnet-ipam's own).
    #[arg(long)]
    ipam_data_dir: Option<String>,
    /// Main plugin type of derived conflists (`plugnet`; the reference `bridge` also fits).
    #[arg(long, default_value = "plugnet")]
    bridge_plugin: String,
    /// plugnet-agent's state dir, written as `agentDir` into the IPAM of cluster networks
    /// (`--ipam-opt plugnet.cluster=NAME`; default: the agent's, /var/lib/plugnet/agent).
    #[arg(long)]
    agent_dir: Option<String>,
    /// `firewallStateDir` of derived conflists (default: plugnet's, /var/lib/plugnet/firewall).
    #[arg(long)]
    firewall_state_dir: Option<String>,
    /// Masquerade derived networks' outbound traffic (`ipMasq`), as Docker's bridge does;
    /// `--ip-masq=false` turns it off (`-o com.docker.network.bridge.enable_ip_masquerade=…` decides per network).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ip_masq: bool,
    /// Blocks automatic IPv4 pools are cut from (repeatable).
    #[arg(long = "default-pool")]
    default_pools: Vec<ipnetwork::IpNetwork>,
    /// Blocks automatic IPv6 pools are cut from (repeatable).
    #[arg(long = "default-pool-v6")]
    default_pools_v6: Vec<ipnetwork::IpNetwork>,
    /// Serve per-network Prometheus metrics (GET /metrics) on a unix socket or a loopback
    /// address: `unix:/run/plugnet-shim/metrics.sock`, `127.0.0.1:9465`, `[::1]:9465`.
    #[arg(long, value_name = "unix:/PATH|127.0.0.1:PORT")]
    metrics_listen: Option<metrics::Listen>,
    /// Connections served at once; when full, the oldest idle one is closed to make room
    /// (default: a quarter of the open-files soft limit, at most 512).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Time a request's head, and then its body, may take to arrive (`10s`, `500ms`, `10`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
}

/// `10s`, `500ms`, `2m` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 10s or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: the unit is ms, s or m")),
    };
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the networks, endpoints, attachments and pools in the state dir (works whether or
    /// not the daemon runs; read-only).
    Status {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `plugnet-shim status`: exit code.
fn status_cmd(state_dir: &std::path::Path, json: bool) -> i32 {
    if !state_dir.is_dir() {
        eprintln!(
            "plugnet-shim: no state at {} (has the shim run here? pass the --state-dir it runs with)",
            state_dir.display()
        );
        return 1;
    }
    let store = match Store::open(state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "plugnet-shim: open state dir {}: {e} (run as root)",
                state_dir.display()
            );
            return 1;
        }
    };
    let (st, warnings) = store.load();
    if json {
        let v = status::to_json(&st, &warnings);
        println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
    } else {
        print!("{}", status::to_text(&st, &warnings));
    }
    0
}

fn main() {
    let cli = Cli::parse();
    if let Some(Cmd::Status { json }) = cli.cmd {
        std::process::exit(status_cmd(&cli.state_dir, json));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log_level)
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = run(cli) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    server::install_panic_hook();
    if !plugnet_shim::state::valid_id(&cli.name) {
        bail!("--name {:?}: use letters, digits, '_', '.', '-'", cli.name);
    }
    let store = Store::open(&cli.state_dir)
        .with_context(|| format!("open state dir {}", cli.state_dir.display()))?;
    let staging = PathBuf::from("/run/plugnet-shim")
        .join(&cli.name)
        .join("ns");
    netns::prepare_dir(&staging).context("prepare staging netns dir")?;
    let host_ns = netns::current().context("open host netns")?;
    let backend = RealBackend::new(
        cli.cni_conf_dir.clone(),
        std::env::split_paths(&cli.cni_path).collect(),
        store.cache_dir(),
        host_ns,
    );
    let staging_dir = staging.clone();
    let mut cfg = DriverConfig::new(staging);
    cfg.ipam_data_dir = cli.ipam_data_dir.clone();
    cfg.bridge_plugin = cli.bridge_plugin.clone();
    cfg.default_ip_masq = cli.ip_masq;
    cfg.agent_dir = cli.agent_dir.clone();
    cfg.firewall_state_dir = cli.firewall_state_dir.clone();
    if !cli.default_pools.is_empty() {
        cfg.default_pools_v4 = cli.default_pools.clone();
    }
    if !cli.default_pools_v6.is_empty() {
        cfg.default_pools_v6 = cli.default_pools_v6.clone();
    }
    let driver = Arc::new(Driver::new(cfg, backend, store));
    // The metrics listener reads the same state dir through its own handle.
    let metrics_store = match &cli.metrics_listen {
        Some(_) => Some(Arc::new(
            Store::open(&cli.state_dir).context("open state dir for metrics")?,
        )),
        None => None,
    };

    let mut server_cfg = server::ServerConfig {
        request_timeout: cli.request_timeout,
        ..Default::default()
    };
    if let Some(n) = cli.max_connections {
        if n == 0 {
            bail!("--max-connections must be at least 1");
        }
        server_cfg.max_connections = n;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    rt.block_on(async move {
        std::fs::create_dir_all(&cli.socket_dir)
            .with_context(|| format!("create {}", cli.socket_dir.display()))?;
        let sock = cli.socket_dir.join(format!("{}.sock", cli.name));
        if tokio::net::UnixStream::connect(&sock).await.is_ok() {
            bail!("{} is served by another running process", sock.display());
        }
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .with_context(|| format!("bind {}", sock.display()))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660))
            .context("chmod socket")?;
        info!(socket = %sock.display(), "serving");

        // Repair as soon as the host's nftables ruleset changes (a flush, a firewalld reload,
        // a Docker restart), not only on the 30 s tick below (which still covers iptables-legacy
        // hosts, whose changes make no event). A thread of the shim's own namespace: the host's.
        let d = driver.clone();
        std::thread::Builder::new()
            .name("firewall-watch".into())
            .spawn(move || {
                let e = plugnet::firewall::watch(None, || {
                    d.repair_firewalls();
                });
                warn!("firewall watch stopped ({e}); repairing every 30 s only");
            })
            .context("start the firewall watch")?;
        // Reconcile in the background: never block start-up (dockerd may be waiting for us).
        let d = driver.clone();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                let d = d.clone();
                // Endpoints first (a collected endpoint takes its rules along), then the
                // firewall state the kernel may have lost.
                let work = move || (d.reconcile(), d.repair_firewalls());
                if let Ok((n, _)) = tokio::task::spawn_blocking(work).await {
                    if n > 0 {
                        info!(cleaned = n, "reconciled");
                    }
                }
            }
        });
        let metrics_task = cli.metrics_listen.clone().zip(metrics_store).map(|(l, st)| {
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(l, st).await {
                    error!("metrics listener: {e:#} (fix --metrics-listen; Docker is still served)");
                }
            })
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let res = tokio::select! {
            r = server::serve_with(listener, driver, server_cfg) => r.context("serve"),
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        reaper.abort();
        if let Some(t) = metrics_task {
            t.abort();
        }
        if let Some(metrics::Listen::Unix(p)) = &cli.metrics_listen {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_file(&sock);
        netns::release_dir_if_empty(&staging_dir);
        info!("stopped");
        res
    })
}
