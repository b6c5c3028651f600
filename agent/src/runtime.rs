//! The runtime: opens the state dir, starts the agent's independent tasks, and stops them all
//! on SIGTERM/SIGINT or when one fails.
//!
//! Tasks (each a module): `socket` and `metrics` always; with `--etcd` the cluster tasks
//! `host` (registration, lease, liveness), `blocks` (per-network blocks), `reclaim` (dead
//! hosts' blocks) and `dataplane` (routes / VXLAN to other hosts' blocks, issue 22). Later
//! features are further tasks started in [`run_async`] the same way (the name resolver of
//! issue 20 also without `--etcd`). A task is `async fn(…, Shutdown) -> Result<()>`: it returns `Ok` when the
//! shutdown fires and `Err` only for what restarting the process could fix (a lost socket);
//! transient failures (etcd out of reach) it rides out itself.
//!
//! Invariant: one current-thread tokio runtime; blocking work (the store lock, fsync) goes to
//! `spawn_blocking`; after the shutdown fires, tasks get [`STOP_GRACE`] to finish, then are
//! aborted. Nothing is torn down on the way out that a restart needs (the host's lease is left
//! to expire, blocks stay held).

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::LocalState;
use anyhow::{Context, Result};
use plugnet::ipam::cluster::ask::{Answer, Request};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How long tasks get to stop after the shutdown fired.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The shutdown signal every task watches.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once the agent is stopping.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }
    /// A shutdown that never fires on its own, and its trigger (for tests and tools).
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }
}

/// What every task may reach: configuration, local state, metrics, the cluster side.
pub struct Agent {
    pub config: Config,
    pub state: LocalState,
    pub metrics: Arc<Metrics>,
    pub cluster: Option<Arc<crate::blocks::Blocks>>,
    /// Set once the data plane found its underlay link (see `dataplane::Dataplane::task`).
    pub dataplane: Arc<std::sync::OnceLock<Arc<crate::dataplane::Dataplane>>>,
}

impl Agent {
    /// Answers one local socket request.
    pub async fn answer(&self, req: Request) -> Answer {
        match req {
            Request::Grow { network, families } => match &self.cluster {
                Some(blocks) => blocks.grow(&network, &families).await,
                None => Answer::err(format!(
                    "cluster network {network}: this host's plugnet-agent runs without --etcd"
                )),
            },
            Request::Status => {
                let mut a = Answer::ok();
                a.status = match &self.cluster {
                    Some(blocks) => {
                        let mut s = blocks.status().await;
                        s["dataplane"] = crate::dataplane::status_of(self.dataplane.get());
                        s
                    }
                    None => json!({"cluster": false, "stateDir": self.state.dir()}),
                };
                a
            }
        }
    }
}

/// The running tasks, by name.
struct Tasks {
    set: JoinSet<(&'static str, Result<()>)>,
}

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = Result<()>> + 'static) {
        self.set.spawn_local(async move { (name, task.await) });
    }
}

/// Run the agent until it is told to stop.
pub fn run(config: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(config))
}

async fn run_async(config: Config) -> Result<()> {
    let state = LocalState::open(&config.state_dir)?;
    let listener = crate::socket::bind(state.dir())?;
    let metrics = Arc::new(Metrics::new());
    metrics
        .info
        .get_or_create(&crate::metrics::Info {
            host: config
                .cluster
                .as_ref()
                .map(|c| c.host.clone())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
    let (stop, shutdown) = Shutdown::new();
    let mut tasks = Tasks {
        set: JoinSet::new(),
    };
    let cluster = match &config.cluster {
        Some(c) => Some(
            crate::blocks::Blocks::start(c, &state, metrics.clone(), &shutdown)
                .await
                .context("start the cluster side")?,
        ),
        None => None,
    };
    let dataplane = Arc::new(std::sync::OnceLock::new());
    if let Some(b) = &cluster {
        tasks.spawn(
            "dataplane",
            crate::dataplane::Dataplane::task(
                b.record().clone(),
                b.etcd().clone(),
                metrics.clone(),
                state.dir().to_path_buf(),
                dataplane.clone(),
                shutdown.clone(),
            ),
        );
    }
    let agent = Arc::new(Agent {
        config: config.clone(),
        state,
        metrics: metrics.clone(),
        cluster,
        dataplane,
    });
    if let Some(blocks) = &agent.cluster {
        for (name, task) in blocks.clone().tasks(shutdown.clone()) {
            tasks.spawn(name, task);
        }
    }
    // The name resolver (issue 20): always; with --etcd its records are shared.
    let exchange = match (&agent.cluster, &config.cluster) {
        (Some(blocks), Some(c)) => {
            let (x, publish, remote) = crate::names::cluster::start(
                blocks.etcd().clone(),
                c.host.clone(),
                shutdown.clone(),
            );
            tasks.spawn("names-publish", publish);
            tasks.spawn("names-remote", remote);
            Some(x)
        }
        _ => None,
    };
    tasks.spawn(
        "names",
        crate::names::serve(
            config.state_dir.clone(),
            config.names.clone(),
            exchange,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "socket",
        crate::socket::serve(listener, agent.clone(), shutdown.clone()),
    );
    if let Some(listen) = config.metrics.clone() {
        let mut sd = shutdown.clone();
        let m = metrics.clone();
        tasks.spawn("metrics", async move {
            tokio::select! {
                r = crate::metrics::serve(listen, m) => r,
                _ = sd.wait() => Ok(()),
            }
        });
    }
    info!(
        state_dir = %config.state_dir.display(),
        cluster = config.cluster.is_some(),
        host = config.cluster.as_ref().map(|c| c.host.as_str()).unwrap_or(""),
        "plugnet-agent started"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            done = tasks.set.join_next() => match done {
                Some(Ok((name, Err(e)))) => break Err(e.context(format!("task {name}"))),
                Some(Ok((name, Ok(())))) => warn!(task = name, "task ended"),
                Some(Err(e)) => break Err(anyhow::anyhow!("a task panicked: {e}")),
                None => break Ok(()),
            },
        }
    };
    info!("stopping");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while let Some(done) = tasks.set.join_next().await {
            if let Ok((name, Err(e))) = done {
                error!(task = name, "while stopping: {e:#}");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("tasks still running after {STOP_GRACE:?}: aborted");
        tasks.set.shutdown().await;
    }
    let _ = std::fs::remove_file(plugnet::ipam::cluster::local::socket(agent.state.dir()));
    info!("stopped");
    outcome
}
