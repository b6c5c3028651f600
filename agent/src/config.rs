//! The agent's command line (clap) and the validated [`Config`] the runtime starts from.
//!
//! Invariant: everything the tasks read from the command line is checked here, once; a
//! `Config` that exists is runnable (paths absolute, durations in range, URLs well-formed).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_STATE_DIR: &str = plugnet::ipam::cluster::DEFAULT_AGENT_DIR;
pub const DEFAULT_METRICS: &str = "127.0.0.1:9587";

#[derive(Debug, Parser)]
#[command(
    name = "plugnet-agent",
    version,
    about = "plugnet's per-host daemon: cluster address blocks over etcd for plugnet-ipam \
             (with --etcd), a local socket and Prometheus metrics; runs without --etcd on a \
             single host",
    after_help = "The operator's cluster commands: plugnet-agent cluster --help \
                  (also reached as `plugnet cluster …`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Define and inspect cluster networks, hosts and blocks in etcd (the operator's tool).
    Cluster(crate::cluster::ClusterArgs),
}

/// How to reach etcd: shared by the daemon and the cluster command line.
#[derive(Debug, Clone, Args, Default)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (http://IP:2379 or https://… with the TLS options).
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// CA bundle that signed the etcd servers' certificates (PEM).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (PEM), with --etcd-key.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd (PEM), with --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Deadline of one etcd request; a block asked for by an ADD is answered within it.
    #[arg(long, value_name = "DURATION", default_value = "1500ms", value_parser = duration)]
    pub etcd_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// This host's name in the cluster (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// This host's address on the network between hosts (default: the source address of the
    /// default route).
    #[arg(long, value_name = "IP")]
    pub underlay: Option<IpAddr>,
    /// Local state: the blocks plugnet-ipam allocates from, its stores, the socket.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Prometheus metrics (GET /metrics): IP:PORT, unix:/PATH, or `off`.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS)]
    pub metrics_listen: String,
    /// TTL of the lease that keeps this host registered (kept alive every third of it).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// Free addresses kept ready per network and family: below it the agent claims a block.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub low_watermark: u32,
    /// How long a block stays empty before it goes back to the cluster.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub cooldown: Duration,
    /// Cluster networks to serve from start-up (others start with their first ADD here).
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// The name resolver's upstreams: the host's resolv.conf (a loopback stub it names, such as
    /// 127.0.0.53, is reachable from the agent and used).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Port the name resolver serves on each network address (tests and benchmarks only).
    #[arg(long, value_name = "PORT", default_value_t = 53, hide = true)]
    pub dns_port: u16,
    /// Port of the upstream resolvers (tests only).
    #[arg(long, value_name = "PORT", default_value_t = 53, hide = true)]
    pub upstream_port: u16,
    /// error, warn, info, debug, trace, or a tracing filter (`plugnet_agent=debug`).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
}

pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 1500ms, 10m)"))
}

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    fn parse(s: &str) -> Result<Option<Listen>> {
        if s == "off" {
            return Ok(None);
        }
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                bail!("--metrics-listen {s:?}: the unix socket path must be absolute");
            }
            return Ok(Some(Listen::Unix(PathBuf::from(p))));
        }
        let addr = s.parse().with_context(|| {
            format!("--metrics-listen {s:?}: expected IP:PORT, unix:/PATH or off")
        })?;
        Ok(Some(Listen::Tcp(addr)))
    }
}

/// What the cluster tasks need (present only with `--etcd`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub etcd: EtcdArgs,
    pub host: String,
    pub underlay: IpAddr,
    pub lease_ttl: Duration,
    pub low_watermark: u32,
    pub cooldown: Duration,
    pub networks: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub metrics: Option<Listen>,
    pub cluster: Option<ClusterConfig>,
    pub names: crate::names::NamesConfig,
}

impl DaemonArgs {
    pub fn into_config(self) -> Result<Config> {
        if !self.state_dir.is_absolute() {
            bail!("--state-dir {}: must be absolute", self.state_dir.display());
        }
        let metrics = Listen::parse(&self.metrics_listen)?;
        let cluster = if self.etcd.etcd.is_empty() {
            if self.host.is_some() || !self.networks.is_empty() {
                bail!("--host and --network need --etcd (they name this host in a cluster)");
            }
            None
        } else {
            crate::etcd::check_endpoints(&self.etcd)?;
            if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(3600)
            {
                bail!("--lease-ttl {:?}: between 2s and 1h", self.lease_ttl);
            }
            if self.low_watermark == 0 {
                bail!("--low-watermark must be at least 1");
            }
            let host = match self.host {
                Some(h) => h,
                None => crate::identity::hostname()?,
            };
            crate::schema::check_name("--host", &host)?;
            for n in &self.networks {
                crate::schema::check_name("--network", n)?;
            }
            let underlay = match self.underlay {
                Some(ip) => ip,
                None => crate::identity::default_underlay()
                    .context("find the underlay address (pass --underlay IP)")?,
            };
            Some(ClusterConfig {
                etcd: self.etcd,
                host,
                underlay,
                lease_ttl: self.lease_ttl,
                low_watermark: self.low_watermark,
                cooldown: self.cooldown,
                networks: self.networks,
            })
        };
        if !self.resolv_conf.is_absolute() {
            bail!(
                "--resolv-conf {}: must be absolute",
                self.resolv_conf.display()
            );
        }
        Ok(Config {
            state_dir: self.state_dir,
            metrics,
            cluster,
            names: crate::names::NamesConfig {
                resolv_conf: self.resolv_conf,
                port: self.dns_port,
                upstream_port: self.upstream_port,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut all = vec!["plugnet-agent"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.daemon.into_config()
    }

    #[test]
    fn runs_without_etcd_and_refuses_cluster_flags_alone() {
        let c = parse(&["--state-dir", "/tmp/x", "--metrics-listen", "off"]).unwrap();
        assert!(c.cluster.is_none() && c.metrics.is_none());
        assert!(parse(&["--host", "a"]).is_err());
        assert!(parse(&["--state-dir", "rel"]).is_err());
    }

    #[test]
    fn cluster_flags_are_checked() {
        let base = [
            "--etcd",
            "http://10.0.0.1:2379,http://10.0.0.2:2379",
            "--host",
            "h1",
            "--underlay",
            "10.0.0.9",
        ];
        let c = parse(&base).unwrap().cluster.unwrap();
        assert_eq!(c.etcd.etcd.len(), 2);
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        for bad in [
            &["--lease-ttl", "1s"][..],
            &["--low-watermark", "0"],
            &["--host", "a/b"],
            &["--network", "../x"],
            &["--metrics-listen", "unix:rel"],
        ] {
            let mut args = base.to_vec();
            args.extend_from_slice(bad);
            assert!(parse(&args).is_err(), "{bad:?}");
        }
        assert!(parse(&["--etcd", "ftp://x", "--host", "h", "--underlay", "10.0.0.1"]).is_err());
    }
}
