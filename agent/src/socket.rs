//! The local socket (`<state>/agent.sock`, mode 0600): plugnet-ipam asks for room when its
//! blocks are full, `plugnet cluster status` for the agent's view. One JSON line in, one out
//! (the protocol: `plugnet::ipam::cluster::ask`).
//!
//! Invariant: hostile clients cost bounded memory and time — a request line is read up to
//! [`MAX_REQUEST`] bytes within [`READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] are served at
//! once, and whatever arrives gets an answer (or the connection closes), never a panic.

use crate::runtime::{Agent, Shutdown};
use anyhow::{Context, Result};
use plugnet::ipam::cluster::ask::{Answer, Request, MAX_REQUEST};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info};

pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_CONNECTIONS: usize = 64;

/// Bind `<state>/agent.sock` (the state dir's lock makes this process its only server).
pub fn bind(state_dir: &Path) -> Result<UnixListener> {
    let path = plugnet::ipam::cluster::local::socket(state_dir);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    info!(socket = %path.display(), "local socket listening");
    Ok(l)
}

pub async fn serve(
    listener: UnixListener,
    agent: Arc<Agent>,
    mut shutdown: Shutdown,
) -> Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = shutdown.wait() => return Ok(()),
        };
        let stream = tokio::select! {
            r = listener.accept() => r.context("accept on the local socket")?.0,
            _ = shutdown.wait() => return Ok(()),
        };
        let agent = agent.clone();
        tokio::task::spawn_local(async move {
            connection(stream, &agent).await;
            drop(permit);
        });
    }
}

/// Reads one request line: `Err` carries the answer for a request that cannot be served.
async fn read_request(stream: &mut BufReader<UnixStream>) -> Result<Request, Answer> {
    let mut line = Vec::new();
    let mut limited = (&mut *stream).take(MAX_REQUEST as u64 + 1);
    let read = limited.read_until(b'\n', &mut line);
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => {
            return Err(Answer::err(format!(
                "no request line within {READ_TIMEOUT:?}"
            )))
        }
        Ok(Err(e)) => return Err(Answer::err(format!("read request: {e}"))),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(Answer::err(format!(
            "request longer than {MAX_REQUEST} bytes"
        )));
    }
    serde_json::from_slice(&line).map_err(|e| Answer::err(format!("bad request: {e}")))
}

async fn connection(stream: UnixStream, agent: &Agent) {
    let mut stream = BufReader::new(stream);
    let answer = match read_request(&mut stream).await {
        Ok(req) => {
            let op = match &req {
                Request::Grow { .. } => "grow",
                Request::Status => "status",
            };
            let a = agent.answer(req).await;
            agent
                .metrics
                .socket_requests
                .get_or_create(&crate::metrics::OpResult {
                    op: op.into(),
                    result: if a.ok { "ok" } else { "error" }.into(),
                })
                .inc();
            a
        }
        Err(a) => {
            debug!(
                error = a.error.as_deref().unwrap_or(""),
                "refused a local request"
            );
            a
        }
    };
    let mut line = serde_json::to_vec(&answer).expect("serialises");
    line.push(b'\n');
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.get_mut().write_all(&line)).await;
}
