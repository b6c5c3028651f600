//! HTTP over the plugin's unix socket: routing `POST /<Interface>.<Method>` to the driver.
//!
//! Invariant: every reply is JSON; success is 200 with at least `{}`; NetworkDriver and
//! Plugin failures are 500 with `{"Err": …}`, IpamDriver failures 200 with `{"Error": …}`
//! (the IPAM API's own error field); unknown methods 404 with `{"Err": …}`. Each connection
//! is served on its own task and driver work runs on the blocking pool, so slow CNI calls for
//! one container never delay another's (trap 30). Request bodies are capped.

use crate::api::*;
use crate::backend::CniBackend;
use crate::driver::Driver;
use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

/// Largest request body accepted (Docker's are a few KiB).
pub const MAX_BODY: usize = 1 << 20;

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

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).with_context(|| format!("decode {} request", &path[1..]))
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
                    path.trim_start_matches('/')
                ),
            )
        }
    };
    match res {
        Ok(r) => r,
        Err(e) => error_reply(path, 500, format!("{e:#}")),
    }
}

async fn handle<B: CniBackend>(d: Arc<Driver<B>>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    if req.method() != Method::POST {
        return error_reply(
            &path,
            405,
            format!("{} {path}: plugin calls are POST", req.method()),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
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
    };
    let start = Instant::now();
    let p = path.clone();
    let reply = match tokio::task::spawn_blocking(move || dispatch(&d, &p, &body)).await {
        Ok(r) => r,
        Err(e) => error_reply(&path, 500, format!("handler failed: {e}")),
    };
    let us = start.elapsed().as_micros();
    let failed = reply.status != 200 || (is_ipam(&path) && reply.body.starts_with(b"{\"Error\""));
    if failed {
        warn!(method = %&path[1..], status = reply.status, elapsed_us = us as u64, body = %String::from_utf8_lossy(&reply.body), "call failed");
    } else {
        info!(method = %&path[1..], elapsed_us = us as u64, "call");
    }
    reply
}

/// Serve the plugin protocol on `listener` until the task is dropped.
pub async fn serve<B: CniBackend>(
    listener: UnixListener,
    d: Arc<Driver<B>>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let d = d.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let d = d.clone();
                async move {
                    let r = handle(d, req).await;
                    Response::builder()
                        .status(
                            StatusCode::from_u16(r.status)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        )
                        .header("Content-Type", CONTENT_TYPE)
                        .body(Full::new(Bytes::from(r.body)))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("connection: {e}");
            }
        });
    }
}
