//! The name resolver (issue 20): serves the names of containers on plugnet networks with
//! `"resolver": true` to the containers of those networks, and forwards everything else to the
//! host's upstream resolvers. Runs with and without `--etcd`.
//!
//! - [`records`]: this host's records (files the plugin writes on ADD), watched with inotify;
//! - [`table`]: what is answered, per network, rebuilt whole on every change;
//! - [`server`]: hickory-server on UDP and TCP 53 of each address the records name as their
//!   nameserver (the networks' gateways on this host; never 0.0.0.0, never an address no
//!   record names);
//! - [`forward`]: the upstreams from the host's resolv.conf, bounded;
//! - [`docker`]: Docker's embedded DNS inside a Docker sandbox on the network;
//! - [`cluster`]: with `--etcd`, this host's records under a host-scoped key on its lease, and
//!   every other host's records.
//!
//! Invariant: the task never fails on input (records, queries); a socket that cannot be bound
//! yet (an IPv6 gateway still in DAD, a bridge not up) is retried every second.

pub mod cluster;
pub mod docker;
pub mod forward;
pub mod records;
pub mod server;
pub mod table;

use crate::runtime::Shutdown;
use anyhow::Result;
use hickory_server::ServerFuture;
use plugnet::names::Record;
use server::{Handler, Shared};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use table::Table;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{debug, info};

/// How long a TCP client may idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// The safety net: a full rescan of the names dir this often.
const RESCAN: Duration = Duration::from_secs(30);

/// The resolver's settings (command line).
#[derive(Debug, Clone)]
pub struct NamesConfig {
    /// The host's resolv.conf: the upstreams.
    pub resolv_conf: PathBuf,
    /// The port served on every nameserver address (53).
    pub port: u16,
    /// The port of the upstreams (53).
    pub upstream_port: u16,
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            port: 53,
            upstream_port: 53,
        }
    }
}

/// What the cluster side exchanges with the resolver.
pub struct Exchange {
    /// This host's current records, for etcd.
    pub publish: watch::Sender<Vec<Record>>,
    /// Other hosts' records, from etcd.
    pub remote: watch::Receiver<Vec<Record>>,
}

struct RawFdRef(RawFd);
impl AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The resolver task.
pub async fn serve(
    state_dir: PathBuf,
    config: NamesConfig,
    mut exchange: Option<Exchange>,
    mut shutdown: Shutdown,
) -> Result<()> {
    let names_dir = plugnet::names::names_dir(&state_dir);
    let mut local = records::LocalRecords::open(&names_dir)?;
    // SAFETY: the descriptor belongs to `local`'s Inotify, which is declared before `afd` and
    // so outlives it (dropped after); it is never closed or replaced while `afd` exists.
    let afd = unsafe {
        AsyncFd::register_with_interest(
            RawFdRef(local.inotify.as_fd().as_raw_fd()),
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(|e| anyhow::anyhow!("watch the inotify descriptor: {e}"))?;
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::default())),
        forwarder: forward::Forwarder::new(config.resolv_conf.clone(), config.upstream_port),
        docker: docker::DockerAsk::default(),
    });
    let mut servers: HashMap<IpAddr, ServerFuture<Handler>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_rescan = Instant::now();
    let mut remote: Vec<Record> = Vec::new();
    let mut dirty = true;
    info!(dir = %names_dir.display(), "names: resolver started");
    loop {
        if dirty {
            dirty = false;
            let table = Table::build(local.records.values(), remote.iter());
            let want = table.listen_addrs();
            debug!(
                records = table.records(),
                listen = want.len(),
                "names: table rebuilt"
            );
            *shared.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
            servers.retain(|ip, _| {
                let keep = want.contains(ip);
                if !keep {
                    info!(address = %ip, "names: no longer serving");
                }
                keep
            });
            for ip in want {
                if servers.contains_key(&ip) {
                    continue;
                }
                match bind(ip, config.port, &shared) {
                    Ok(s) => {
                        info!(address = %ip, "names: serving");
                        servers.insert(ip, s);
                    }
                    Err(e) => debug!(address = %ip, "names: not yet: {e}"),
                }
            }
            if let Some(x) = &exchange {
                let mine: Vec<Record> = local.records.values().cloned().collect();
                let _ = x.publish.send(mine);
            }
        }
        let remote_changed = async {
            match exchange.as_mut() {
                Some(x) => x.remote.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            guard = afd.readable() => {
                if let Ok(mut g) = guard {
                    g.clear_ready();
                }
                dirty |= local.drain_events();
            }
            ok = remote_changed => {
                match (ok, &mut exchange) {
                    (true, Some(x)) => {
                        remote = x.remote.borrow_and_update().clone();
                        dirty = true;
                    }
                    _ => exchange = exchange.map(|mut x| {
                        // The cluster side stopped: keep serving what we have.
                        x.remote = watch::channel(Vec::new()).1;
                        x
                    }),
                }
            }
            _ = tick.tick() => {
                if last_rescan.elapsed() >= RESCAN {
                    last_rescan = Instant::now();
                    local.rescan();
                    dirty = true;
                } else {
                    // Addresses not bound yet are retried.
                    let table = shared.table();
                    dirty |= table.listen_addrs().iter().any(|ip| !servers.contains_key(ip));
                }
            }
            _ = shutdown.wait() => break,
        }
    }
    for (_, mut s) in servers.drain() {
        let _ = s.shutdown_gracefully().await;
    }
    Ok(())
}

/// UDP and TCP on `ip:port`, served by one `ServerFuture`.
fn bind(ip: IpAddr, port: u16, shared: &Arc<Shared>) -> std::io::Result<ServerFuture<Handler>> {
    let addr = SocketAddr::new(ip, port);
    let udp = std::net::UdpSocket::bind(addr)?;
    let tcp = std::net::TcpListener::bind(addr)?;
    let mut server = ServerFuture::new(Handler {
        local: ip,
        shared: shared.clone(),
    });
    server.register_socket_std(udp)?;
    server.register_listener_std(tcp, TCP_IDLE)?;
    Ok(server)
}
