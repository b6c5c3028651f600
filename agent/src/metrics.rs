//! Prometheus metrics of the agent (`GET /metrics` on `--metrics-listen`, default
//! 127.0.0.1:9587), through the prometheus-client crate.
//!
//! Invariant: every metric about a network carries `network`, and about etcd `op`; a scrape
//! reads the registry only (no etcd request, no store scan), so it is cheap and never blocks
//! a task.

use crate::config::Listen;
use anyhow::{bail, Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Net {
    pub network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetFamily {
    pub network: String,
    pub family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetResult {
    pub network: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResult {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Info {
    pub host: String,
    pub version: String,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 0.5 ms … 4 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Every metric of the agent.
pub struct Metrics {
    registry: Registry,
    pub blocks_held: Family<NetFamily, Gauge>,
    pub addresses_free: Family<NetFamily, Gauge>,
    pub addresses_used: Family<NetFamily, Gauge>,
    pub claims: Family<NetResult, Counter>,
    pub releases: Family<Net, Counter>,
    pub reclaims: Family<Net, Counter>,
    pub revoked_addresses: Family<Net, Gauge>,
    pub fenced: Family<Net, Gauge>,
    pub grow_requests: Family<NetResult, Counter>,
    pub etcd_requests: Family<Op, Counter>,
    pub etcd_errors: Family<Op, Counter>,
    pub etcd_latency: Hist<Op>,
    pub etcd_up: Gauge,
    pub reconcile: Hist<Net>,
    pub socket_requests: Family<OpResult, Counter>,
    pub info: Family<Info, Gauge>,
    pub dataplane: Dataplane,
}

/// The data plane's metrics (agent/src/dataplane).
#[derive(Default)]
pub struct Dataplane {
    pub routes: Family<Net, Gauge>,
    pub fdb_entries: Family<Net, Gauge>,
    pub reconciles: Counter,
    pub last_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub last_changes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("plugnet_agent");
        let m = Metrics {
            blocks_held: Family::default(),
            addresses_free: Family::default(),
            addresses_used: Family::default(),
            claims: Family::default(),
            releases: Family::default(),
            reclaims: Family::default(),
            revoked_addresses: Family::default(),
            fenced: Family::default(),
            grow_requests: Family::default(),
            etcd_requests: Family::default(),
            etcd_errors: Family::default(),
            etcd_latency: Family::new_with_constructor(latency),
            etcd_up: Gauge::default(),
            reconcile: Family::new_with_constructor(latency),
            socket_requests: Family::default(),
            info: Family::default(),
            dataplane: Dataplane::default(),
            registry: Registry::default(),
        };
        r.register(
            "blocks_held",
            "Address blocks this host holds (active)",
            m.blocks_held.clone(),
        );
        r.register(
            "addresses_free",
            "Free addresses in active blocks",
            m.addresses_free.clone(),
        );
        r.register(
            "addresses_used",
            "Addresses held by containers in this host's blocks",
            m.addresses_used.clone(),
        );
        r.register(
            "block_claims",
            "Block claims by etcd transaction, by result (ok, conflict, error)",
            m.claims.clone(),
        );
        r.register(
            "block_releases",
            "Empty blocks returned to the cluster after the cooldown",
            m.releases.clone(),
        );
        r.register(
            "block_reclaims",
            "Blocks this agent took back from hosts gone past the grace period",
            m.reclaims.clone(),
        );
        r.register(
            "revoked_addresses",
            "Addresses of containers here in blocks another host now holds",
            m.revoked_addresses.clone(),
        );
        r.register(
            "fenced",
            "1 while no new address may be handed out (etcd out of reach past the grace period)",
            m.fenced.clone(),
        );
        r.register(
            "grow_requests",
            "Requests for room from plugnet-ipam, by result",
            m.grow_requests.clone(),
        );
        r.register(
            "etcd_requests",
            "etcd requests by operation",
            m.etcd_requests.clone(),
        );
        r.register(
            "etcd_errors",
            "Failed etcd requests by operation",
            m.etcd_errors.clone(),
        );
        r.register(
            "etcd_request_duration_seconds",
            "etcd request latency by operation",
            m.etcd_latency.clone(),
        );
        r.register(
            "etcd_up",
            "1 while the last etcd request succeeded",
            m.etcd_up.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "One block reconciliation of a network",
            m.reconcile.clone(),
        );
        r.register(
            "socket_requests",
            "Local socket requests by operation and result",
            m.socket_requests.clone(),
        );
        r.register("info", "The agent: host name and version", m.info.clone());
        let dp = &m.dataplane;
        r.register(
            "dataplane_routes",
            "Routes to other hosts' blocks in place, by network",
            dp.routes.clone(),
        );
        r.register(
            "dataplane_fdb_entries",
            "VXLAN FDB entries in place, by network",
            dp.fdb_entries.clone(),
        );
        r.register(
            "dataplane_reconciles",
            "Data plane reconciles run",
            dp.reconciles.clone(),
        );
        r.register(
            "dataplane_last_reconcile_seconds",
            "Duration of the last data plane reconcile",
            dp.last_duration.clone(),
        );
        r.register(
            "dataplane_last_reconcile_changes",
            "Kernel changes (adds, replaces, deletes) of the last data plane reconcile",
            dp.last_changes.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The exposition text (OpenMetrics).
    pub fn render(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("encodes");
        s
    }

    pub fn dataplane_observed(
        &self,
        took: Duration,
        changes: i64,
        routes: &std::collections::BTreeMap<String, i64>,
        fdb: &std::collections::BTreeMap<String, i64>,
    ) {
        let dp = &self.dataplane;
        dp.reconciles.inc();
        dp.last_duration.set(took.as_secs_f64());
        dp.last_changes.set(changes);
        for (net, n) in routes {
            dp.routes
                .get_or_create(&Net {
                    network: net.clone(),
                })
                .set(*n);
        }
        for (net, n) in fdb {
            dp.fdb_entries
                .get_or_create(&Net {
                    network: net.clone(),
                })
                .set(*n);
        }
    }

    pub fn etcd_observed(&self, op: &str, took: Duration, ok: bool) {
        let l = Op { op: op.to_string() };
        self.etcd_requests.get_or_create(&l).inc();
        self.etcd_latency
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if !ok {
            self.etcd_errors.get_or_create(&l).inc();
        }
        self.etcd_up.set(i64::from(ok));
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", ctype.parse().expect("valid header"));
    r
}

async fn serve_conn<S>(io: S, metrics: Arc<Metrics>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let r = respond(&req, &metrics);
        async move { Ok::<_, std::convert::Infallible>(r) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(Duration::from_secs(10))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        warn!("metrics connection: {e}");
    }
}

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;

/// Bind `listen` and serve until the task is cancelled.
pub async fn serve(listen: Listen, metrics: Arc<Metrics>) -> Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    match listen {
        Listen::Unix(path) => {
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                bail!("{} is served by another running process", path.display());
            }
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("bind metrics socket {}", path.display()))?;
            info!(socket = %path.display(), "metrics listening");
            loop {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let (s, _) = l.accept().await.context("accept metrics connection")?;
                let m = metrics.clone();
                tokio::spawn(async move {
                    serve_conn(s, m).await;
                    drop(permit);
                });
            }
        }
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind metrics address {addr}"))?;
            info!(%addr, "metrics listening");
            loop {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let (s, _) = l.accept().await.context("accept metrics connection")?;
                let m = metrics.clone();
                tokio::spawn(async move {
                    serve_conn(s, m).await;
                    drop(permit);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_data_plane() {
        let m = Metrics::new();
        let routes = [("prod".to_string(), 3)].into_iter().collect();
        let fdb = [("prod".to_string(), 4)].into_iter().collect();
        m.dataplane_observed(Duration::from_millis(2), 5, &routes, &fdb);
        let text = m.render();
        for want in [
            "plugnet_agent_dataplane_routes{network=\"prod\"} 3",
            "plugnet_agent_dataplane_fdb_entries{network=\"prod\"} 4",
            "plugnet_agent_dataplane_reconciles_total 1",
            "plugnet_agent_dataplane_last_reconcile_changes 5",
            "plugnet_agent_dataplane_last_reconcile_seconds 0.002",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn renders_named_families() {
        let m = Metrics::new();
        m.blocks_held
            .get_or_create(&NetFamily {
                network: "prod".into(),
                family: "4".into(),
            })
            .set(3);
        m.etcd_observed("txn", Duration::from_millis(3), false);
        let text = m.render();
        assert!(
            text.contains(r#"plugnet_agent_blocks_held{network="prod",family="4"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"plugnet_agent_etcd_errors_total{op="txn"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("plugnet_agent_etcd_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("plugnet_agent_etcd_up 0"), "{text}");
    }
}
