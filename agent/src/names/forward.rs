//! Forwarding: names the resolver does not hold go to the host's upstream resolvers, read from
//! the host's resolv.conf (re-read when it changes). The agent runs in the host's namespace, so
//! a loopback stub there (127.0.0.53 of systemd-resolved) is reachable and used as it is.
//!
//! Invariants: at most [`MAX_IN_FLIGHT`] forwards at a time (beyond it the query is answered
//! SERVFAIL at once, never queued); each forward uses its own connected UDP socket with a
//! random ID and checks the answer's ID and question; one upstream gets [`UPSTREAM_TIMEOUT`].

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

pub const MAX_IN_FLIGHT: usize = 256;
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long a read of resolv.conf is trusted before its mtime is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

pub struct Forwarder {
    path: PathBuf,
    port: u16,
    slots: Arc<Semaphore>,
    upstreams: Mutex<Upstreams>,
    ids: RandomState,
    seq: AtomicU64,
}

#[derive(Default)]
struct Upstreams {
    checked: Option<Instant>,
    mtime: Option<SystemTime>,
    addrs: Vec<SocketAddr>,
}

/// Why a forward gave no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardError {
    Busy,
    NoUpstream,
    Failed,
}

/// The `nameserver` lines of a resolv.conf (at most 3, as the libc resolver reads; scoped IPv6
/// addresses are skipped).
pub fn parse_resolv_conf(text: &str, port: u16) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse::<IpAddr>().ok())
        })
        .take(3)
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

impl Forwarder {
    /// `port` is the upstreams' port (53; tests may differ).
    pub fn new(resolv_conf: PathBuf, port: u16) -> Forwarder {
        Forwarder {
            path: resolv_conf,
            port,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            upstreams: Mutex::new(Upstreams::default()),
            ids: RandomState::new(),
            seq: AtomicU64::new(0),
        }
    }

    fn upstreams(&self) -> Vec<SocketAddr> {
        let mut u = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if u.checked.is_some_and(|c| c.elapsed() < RECHECK) {
            return u.addrs.clone();
        }
        u.checked = Some(Instant::now());
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime != u.mtime || u.mtime.is_none() {
            u.mtime = mtime;
            u.addrs = std::fs::read_to_string(&self.path)
                .map(|t| parse_resolv_conf(&t, self.port))
                .unwrap_or_default();
        }
        u.addrs.clone()
    }

    fn random_id(&self) -> u16 {
        let mut h = self.ids.build_hasher();
        h.write_u64(self.seq.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    /// Forwards one question; the upstream's answer (already checked to match it).
    pub async fn forward(
        &self,
        name: Name,
        qtype: RecordType,
        qclass: DNSClass,
        checking_disabled: bool,
    ) -> Result<Message, ForwardError> {
        let _slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ForwardError::Busy)?;
        let upstreams = self.upstreams();
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut query = Query::query(name, qtype);
        query.set_query_class(qclass);
        for up in upstreams {
            let id = self.random_id();
            let mut m = Message::new();
            m.set_id(id)
                .set_message_type(MessageType::Query)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(true)
                .set_checking_disabled(checking_disabled)
                .add_query(query.clone());
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            m.set_edns(edns);
            let Ok(bytes) = m.to_vec() else {
                return Err(ForwardError::Failed);
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, ask(up, &bytes, id, &query)).await {
                Ok(Some(answer)) => return Ok(answer),
                _ => tracing::debug!(upstream = %up, "forward: no answer"),
            }
        }
        Err(ForwardError::Failed)
    }
}

async fn ask(up: SocketAddr, bytes: &[u8], id: u16, query: &Query) -> Option<Message> {
    let any: IpAddr = match up {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0)).await.ok()?;
    sock.connect(up).await.ok()?;
    sock.send(bytes).await.ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await.ok()?;
        let Ok(answer) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if answer.id() == id
            && answer.message_type() == MessageType::Response
            && answer.queries().first() == Some(query)
        {
            return Some(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let t = "# x\nsearch a\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n\
                 nameserver 10.0.0.1\nnameserver ::1\nnameserver 1.1.1.1\n";
        let got = parse_resolv_conf(t, 53);
        assert_eq!(
            got,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
