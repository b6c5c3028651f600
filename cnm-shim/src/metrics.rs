//! The optional Prometheus listener (`--metrics-listen unix:/PATH | 127.0.0.1:PORT | [::1]:PORT`):
//! `GET /metrics` answers [`crate::status::metrics_text`] over the state dir and the host-side
//! interface counters, computed per scrape.
//!
//! Invariant: only a unix socket or a loopback address is accepted (the metrics name networks
//! and containers' traffic); the listener never touches the driver's locks or the Docker socket.

use crate::state::Store;
use crate::status::{metrics_text, SysfsCounters};
use anyhow::{bail, Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(format!("{s:?}: the unix socket path must be absolute"));
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| format!("{s:?}: expected unix:/PATH, 127.0.0.1:PORT or [::1]:PORT"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{s:?}: metrics are served on loopback or a unix socket only (they name \
                 networks and containers); put a proxy in front to export them further"
            ));
        }
        Ok(Listen::Tcp(addr))
    }
}

fn respond(req: &Request<Incoming>, store: &Store) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let (st, _warnings) = store.load();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics_text(&st, &SysfsCounters),
            )
        }
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

/// Connections served at once; a further caller waits in the accept backlog.
const MAX_METRICS_CONNECTIONS: usize = 16;
/// A connection (one scrape: keep-alive is off) is closed after this, however slow the caller.
const METRICS_CONN_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_conn<S>(io: S, store: Arc<Store>, _permit: OwnedSemaphorePermit)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let store = store.clone();
        async move {
            let r = tokio::task::spawn_blocking(move || respond(&req, &store))
                .await
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b""))));
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), svc);
    match tokio::time::timeout(METRICS_CONN_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("metrics connection: {e}"),
        Err(_) => warn!("metrics connection: closed after {METRICS_CONN_TIMEOUT:?}"),
    }
}

/// Wait for a free connection slot, then accept; an accept error (EMFILE under a flood) is
/// logged and retried after a pause instead of ending the listener.
async fn accept_limited<T, F, Fut>(
    slots: &Arc<Semaphore>,
    mut accept: F,
) -> (T, OwnedSemaphorePermit)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let permit = slots
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    loop {
        match accept().await {
            Ok(s) => return (s, permit),
            Err(e) => {
                warn!("accept metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Bind `listen` and serve until the task is dropped.
pub async fn serve(listen: Listen, store: Arc<Store>) -> Result<()> {
    match listen {
        Listen::Unix(path) => {
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                bail!("{} is served by another running process", path.display());
            }
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("bind metrics socket {}", path.display()))?;
            info!(socket = %path.display(), "metrics listening");
            let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
            loop {
                let ((s, _), permit) = accept_limited(&slots, || l.accept()).await;
                tokio::spawn(serve_conn(s, store.clone(), permit));
            }
        }
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind metrics address {addr}"))?;
            info!(%addr, "metrics listening");
            let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
            loop {
                let ((s, _), permit) = accept_limited(&slots, || l.accept()).await;
                tokio::spawn(serve_conn(s, store.clone(), permit));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_and_loopback_are_accepted() {
        assert_eq!(
            "unix:/run/x.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/x.sock".into())
        );
        assert!(matches!(
            "127.0.0.1:9465".parse::<Listen>(),
            Ok(Listen::Tcp(_))
        ));
        assert!(matches!("[::1]:9465".parse::<Listen>(), Ok(Listen::Tcp(_))));
        assert!("0.0.0.0:9465"
            .parse::<Listen>()
            .unwrap_err()
            .contains("loopback"));
        assert!("unix:rel.sock".parse::<Listen>().is_err());
        assert!("nonsense".parse::<Listen>().is_err());
    }
}
