//! HTTP over the plugin's unix socket: routing `POST /<Interface>.<Method>` to the driver.
//!
//! Invariant: every reply is JSON; success is 200 with at least `{}`; NetworkDriver and
//! Plugin failures are 500 with `{"Err": …}`, IpamDriver failures 200 with `{"Error": …}`
//! (the IPAM API's own error field); unknown methods 404 with `{"Err": …}`. Each connection
//! is served on its own task and driver work runs on the blocking pool, so slow CNI calls for
//! one container never delay another's (trap 30).
//!
//! Hostile callers (issue 17): a request is validated at decoding ([`crate::validate`]); a
//! panic in a handler answers 500 and ends only that request ([`dispatch_guarded`]); the
//! number of connections is capped (the oldest idle one is evicted when full); a request head
//! must arrive within the request timeout and fit 64 KiB, a body within the timeout and its
//! method's limit ([`body_limit`]), and all bodies being read share one budget
//! ([`BODY_BUDGET`]); `accept()` errors (EMFILE) are logged and retried with back-off.

use crate::api::*;
use crate::backend::CniBackend;
use crate::driver::Driver;
use crate::validate::Validate;
use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, error, info, warn};

/// Largest request body of any method (Join, CreateEndpoint, ProgramExternalConnectivity;
/// Docker's are a few KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Largest CreateNetwork body.
pub const MAX_BODY_CREATE_NETWORK: usize = 64 << 10;
/// Largest body of every other method.
pub const MAX_BODY_OTHER: usize = 16 << 10;
/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 64 << 10;
/// Bytes of request bodies being read at once, over all connections.
pub const BODY_BUDGET: usize = 32 << 20;
/// Default `--request-timeout`: a head, and then a body, must arrive within it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of the default `--max-connections`.
pub const MAX_CONNECTIONS_CAP: usize = 512;

/// The body limit of `path`'s method.
pub fn body_limit(path: &str) -> usize {
    match path {
        "/NetworkDriver.Join"
        | "/NetworkDriver.CreateEndpoint"
        | "/NetworkDriver.ProgramExternalConnectivity" => MAX_BODY,
        "/NetworkDriver.CreateNetwork" => MAX_BODY_CREATE_NETWORK,
        _ => MAX_BODY_OTHER,
    }
}

/// Connection handling limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; when full, the oldest idle one is closed for a new one.
    pub max_connections: usize,
    /// Time a request head, and then its body, may take to arrive.
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: default_max_connections(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A quarter of the descriptor soft limit, at most [`MAX_CONNECTIONS_CAP`], at least 4.
pub fn default_max_connections() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur
    } else {
        1024
    };
    (soft / 4).clamp(4, MAX_CONNECTIONS_CAP as u64) as usize
}

/// Status and JSON body of one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, v: &T) -> Reply {
        Reply {
            status,
            body: serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()),
        }
    }
}

/// Which error convention a path follows.
fn is_ipam(path: &str) -> bool {
    path.starts_with("/IpamDriver.")
}

/// The error reply for `path`.
pub fn error_reply(path: &str, status: u16, msg: String) -> Reply {
    if is_ipam(path) && status != 404 {
        Reply::json(200, &IpamErrResponse { error: msg })
    } else {
        Reply::json(status, &ErrResponse { err: msg })
    }
}

/// `Interface.Method` of a request path.
fn method_of(path: &str) -> &str {
    path.strip_prefix('/').unwrap_or(path)
}

/// Decode and validate a request body: a handler only sees well-formed ids and options.
fn decode<T: DeserializeOwned + Validate>(path: &str, body: &[u8]) -> Result<T> {
    let req: T = serde_json::from_slice(body)
        .with_context(|| format!("decode {} request", method_of(path)))?;
    req.validate()
        .with_context(|| format!("invalid {} request", method_of(path)))?;
    Ok(req)
}

thread_local! {
    /// True while this thread runs a request handler under [`dispatch_guarded`].
    static IN_HANDLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The daemon's panic hook: a panic inside a request handler is reported and unwinds to
/// [`dispatch_guarded`] (one request fails); a panic anywhere else (the accept loop, the
/// reaper, the firewall watch) still ends the process, as before, for systemd to restart it
/// rather than leave a daemon with a dead background job.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if !IN_HANDLER.with(|h| h.get()) {
            std::process::abort();
        }
    }));
}

/// [`dispatch`], with a panic in the handler turned into a 500 reply: a handler bug ends
/// that request, never the daemon (the shim's release build unwinds; see Cargo.toml).
pub fn dispatch_guarded<B: CniBackend>(d: &Driver<B>, path: &str, body: &[u8]) -> Reply {
    let was = IN_HANDLER.with(|h| h.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(d, path, body)));
    IN_HANDLER.with(|h| h.set(was));
    match r {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            error!(method = %method_of(path), "handler panicked: {what}");
            Reply::json(
                500,
                &ErrResponse {
                    err: format!(
                        "{}: internal error (handler panicked: {what})",
                        method_of(path)
                    ),
                },
            )
        }
    }
}

/// Route one call. Blocking: run it on the blocking pool.
pub fn dispatch<B: CniBackend>(d: &Driver<B>, path: &str, body: &[u8]) -> Reply {
    fn ok<T: Serialize>(r: Result<T>) -> Result<Reply> {
        r.map(|v| Reply::json(200, &v))
    }
    let res: Result<Reply> = match path {
        "/Plugin.Activate" => ok(Ok(ActivateResponse {
            implements: vec!["NetworkDriver".into(), "IpamDriver".into()],
        })),
        "/NetworkDriver.GetCapabilities" => ok(Ok(d.capabilities())),
        "/NetworkDriver.CreateNetwork" => decode(path, body).and_then(|r| ok(d.create_network(r))),
        "/NetworkDriver.DeleteNetwork" => decode(path, body).and_then(|r| ok(d.delete_network(r))),
        "/NetworkDriver.CreateEndpoint" => {
            decode(path, body).and_then(|r| ok(d.create_endpoint(r)))
        }
        "/NetworkDriver.EndpointOperInfo" => {
            decode(path, body).and_then(|r| ok(d.endpoint_oper_info(r)))
        }
        "/NetworkDriver.DeleteEndpoint" => {
            decode(path, body).and_then(|r| ok(d.delete_endpoint(r)))
        }
        "/NetworkDriver.Join" => decode(path, body).and_then(|r| ok(d.join(r))),
        "/NetworkDriver.Leave" => decode(path, body).and_then(|r| ok(d.leave(r))),
        "/NetworkDriver.ProgramExternalConnectivity" => {
            decode(path, body).and_then(|r| ok(d.program_external_connectivity(r)))
        }
        "/NetworkDriver.RevokeExternalConnectivity" => {
            decode(path, body).and_then(|r| ok(d.revoke_external_connectivity(r)))
        }
        "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => {
            decode::<DiscoveryNotification>(path, body).and_then(|_| ok(Ok(Empty {})))
        }
        "/NetworkDriver.GwAllocCheck" => decode::<GwAllocCheckRequest>(path, body)
            .and_then(|_| ok(Ok(GwAllocCheckResponse::default()))),
        "/IpamDriver.GetCapabilities" => ok(Ok(d.ipam_capabilities())),
        "/IpamDriver.GetDefaultAddressSpaces" => ok(Ok(d.address_spaces())),
        "/IpamDriver.RequestPool" => decode(path, body).and_then(|r| ok(d.request_pool(r))),
        "/IpamDriver.ReleasePool" => decode(path, body).and_then(|r| ok(d.release_pool(r))),
        "/IpamDriver.RequestAddress" => decode(path, body).and_then(|r| ok(d.request_address(r))),
        "/IpamDriver.ReleaseAddress" => decode(path, body).and_then(|r| ok(d.release_address(r))),
        _ => {
            return error_reply(
                path,
                404,
                format!(
                    "{} is not implemented by this plugin",
                    crate::validate::preview(method_of(path))
                ),
            )
        }
    };
    match res {
        Ok(r) => r,
        Err(e) => error_reply(path, 500, format!("{e:#}")),
    }
}

/// Shared by every connection of one listener.
struct Shared<B: CniBackend> {
    d: Arc<Driver<B>>,
    cfg: ServerConfig,
    budget: Semaphore,
    conns: Mutex<BTreeMap<u64, Conn>>,
}

/// One open connection: busy while a request is being read or handled.
struct Conn {
    busy: Arc<AtomicBool>,
    close: Arc<Notify>,
}

async fn handle<B: CniBackend>(sh: Arc<Shared<B>>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    if req.method() != Method::POST {
        return error_reply(
            &path,
            405,
            format!(
                "{} {}: plugin calls are POST",
                req.method(),
                crate::validate::preview(&path)
            ),
        );
    }
    let limit = body_limit(&path);
    // Reserve the body's bytes from the shared budget (its declared length, else the limit).
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return error_reply(
            &path,
            413,
            format!(
                "read request body: {} bytes over the limit of {limit} for {}",
                declared.unwrap_or(0),
                crate::validate::preview(method_of(&path))
            ),
        );
    }
    let want = declared.unwrap_or(limit).max(1) as u32;
    let timeout = sh.cfg.request_timeout;
    let permit = match tokio::time::timeout(timeout, sh.budget.acquire_many(want)).await {
        Ok(Ok(p)) => p,
        _ => {
            return error_reply(
                &path,
                503,
                "read request body: the shim is reading too many request bodies; retry".into(),
            )
        }
    };
    let body =
        match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                let status = if e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    413
                } else {
                    400
                };
                return error_reply(&path, status, format!("read request body: {e}"));
            }
            Err(_) => {
                return error_reply(
                    &path,
                    408,
                    format!("read request body: not complete within {timeout:?}"),
                )
            }
        };
    drop(permit);
    let start = Instant::now();
    let p = path.clone();
    let d = sh.d.clone();
    let reply = match tokio::task::spawn_blocking(move || dispatch_guarded(&d, &p, &body)).await {
        Ok(r) => r,
        Err(e) => error_reply(&path, 500, format!("handler failed: {e}")),
    };
    let us = start.elapsed().as_micros();
    let failed = reply.status != 200 || (is_ipam(&path) && reply.body.starts_with(b"{\"Error\""));
    let method = crate::validate::preview(method_of(&path));
    if failed {
        warn!(method = %method, status = reply.status, elapsed_us = us as u64, body = %String::from_utf8_lossy(&reply.body), "call failed");
    } else {
        info!(method = %method, elapsed_us = us as u64, "call");
    }
    reply
}

/// Serve the plugin protocol on `listener` until the task is dropped, with default limits.
pub async fn serve<B: CniBackend>(
    listener: UnixListener,
    d: Arc<Driver<B>>,
) -> std::io::Result<()> {
    serve_with(listener, d, ServerConfig::default()).await
}

/// Serve the plugin protocol on `listener` until the task is dropped. Never returns an error
/// for a failed `accept()`: it is logged and retried with back-off.
pub async fn serve_with<B: CniBackend>(
    listener: UnixListener,
    d: Arc<Driver<B>>,
    cfg: ServerConfig,
) -> std::io::Result<()> {
    info!(
        max_connections = cfg.max_connections,
        request_timeout_s = cfg.request_timeout.as_secs_f64(),
        "connection limits"
    );
    let sh = Arc::new(Shared {
        d,
        cfg,
        budget: Semaphore::new(BODY_BUDGET),
        conns: Mutex::new(BTreeMap::new()),
    });
    let next_id = AtomicU64::new(0);
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS…: free an idle connection, wait, go on serving.
                warn!("accept: {e} (retrying in {backoff:?})");
                evict_oldest_idle(&sh);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicBool::new(false));
        let close = Arc::new(Notify::new());
        {
            let full = lock_conns(&sh).len() >= sh.cfg.max_connections;
            if full && !evict_oldest_idle(&sh) {
                warn!(
                    max_connections = sh.cfg.max_connections,
                    "every connection is busy: refusing a new one"
                );
                drop(stream);
                continue;
            }
            lock_conns(&sh).insert(
                id,
                Conn {
                    busy: busy.clone(),
                    close: close.clone(),
                },
            );
        }
        let sh2 = sh.clone();
        tokio::spawn(async move {
            let svc_sh = sh2.clone();
            let svc_busy = busy.clone();
            let svc = hyper::service::service_fn(move |req| {
                let sh = svc_sh.clone();
                let busy = svc_busy.clone();
                async move {
                    busy.store(true, Ordering::Relaxed);
                    let r = handle(sh, req).await;
                    busy.store(false, Ordering::Relaxed);
                    Response::builder()
                        .status(
                            StatusCode::from_u16(r.status)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        )
                        .header("Content-Type", CONTENT_TYPE)
                        .body(Full::new(Bytes::from(r.body)))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(sh2.cfg.request_timeout)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!("connection: {e}");
                },
                _ = close.notified() => debug!("connection closed to make room"),
            }
            lock_conns(&sh2).remove(&id);
        });
    }
}

fn lock_conns<B: CniBackend>(sh: &Shared<B>) -> std::sync::MutexGuard<'_, BTreeMap<u64, Conn>> {
    sh.conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// Close the oldest connection that has no request in progress. False when all are busy.
fn evict_oldest_idle<B: CniBackend>(sh: &Shared<B>) -> bool {
    let mut conns = lock_conns(sh);
    let Some(id) = conns
        .iter()
        .find(|(_, c)| !c.busy.load(Ordering::Relaxed))
        .map(|(id, _)| *id)
    else {
        return false;
    };
    if let Some(c) = conns.remove(&id) {
        c.close.notify_one();
    }
    true
}
