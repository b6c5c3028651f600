//! Docker's containers on a plugnet network: Docker's driver protocol carries no container
//! name, so the resolver asks Docker's embedded DNS (127.0.0.11 inside a Docker container's
//! sandbox netns on that network; the shim passes the sandbox key into the record) for a single
//! label it does not hold itself.
//!
//! Invariants: `setns` happens only on a thread spawned for the question (never a tokio
//! worker); the socket is made inside the sandbox on that thread and used there, blocking, with
//! a short timeout; at most [`MAX_IN_FLIGHT`] questions at a time (beyond: no answer from
//! Docker, the query goes upstream as before); only A/AAAA answers are taken.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const MAX_IN_FLIGHT: usize = 16;
const TIMEOUT: Duration = Duration::from_millis(400);
/// Docker's embedded DNS inside every sandbox on a user-defined network.
const EMBEDDED: &str = "127.0.0.11:53";

#[derive(Clone)]
pub struct DockerAsk {
    slots: Arc<Semaphore>,
    /// Labels being asked: Docker's DNS forwards a name it lacks to its upstream, which may be
    /// this resolver (`--dns <gateway>`); that echo is not asked again (no loop).
    asking: Arc<Mutex<HashSet<String>>>,
}

impl Default for DockerAsk {
    fn default() -> Self {
        DockerAsk {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            asking: Arc::default(),
        }
    }
}

struct Asking(Arc<Mutex<HashSet<String>>>, String);

impl Drop for Asking {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl DockerAsk {
    /// The addresses Docker's DNS gives `label` in the first sandbox that answers.
    pub async fn ask(&self, sandboxes: &[String], label: &str) -> Option<Vec<IpAddr>> {
        let _slot = self.slots.clone().try_acquire_owned().ok()?;
        if !self
            .asking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_string())
        {
            return None;
        }
        let _asking = Asking(self.asking.clone(), label.to_string());
        let sandboxes: Vec<String> = sandboxes.iter().take(2).cloned().collect();
        let label = label.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("names-docker".into())
            .spawn(move || {
                let mut got = None;
                for s in &sandboxes {
                    if let Some(a) = ask_in(s, &label) {
                        got = Some(a);
                        break;
                    }
                }
                let _ = tx.send(got);
            })
            .ok()?;
        rx.await.ok().flatten()
    }
}

/// On this (dedicated) thread: enter the sandbox, ask for A and AAAA.
fn ask_in(sandbox: &str, label: &str) -> Option<Vec<IpAddr>> {
    // Only Docker's netns paths, never an arbitrary file a record names.
    if !sandbox.starts_with("/var/run/docker/netns/")
        && !sandbox.starts_with("/run/docker/netns/")
        && !sandbox.contains("/netns/")
    {
        return None;
    }
    let ns = std::fs::File::open(sandbox).ok()?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(TIMEOUT)).ok()?;
    sock.connect(SocketAddr::from_str(EMBEDDED).ok()?).ok()?;
    let name = Name::from_ascii(label).ok()?;
    let mut out = Vec::new();
    for (i, qtype) in [RecordType::A, RecordType::AAAA].into_iter().enumerate() {
        let id = (std::process::id() as u16).wrapping_add(i as u16 * 7919);
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false)
            .add_query(Query::query(name.clone(), qtype));
        sock.send(&m.to_vec().ok()?).ok()?;
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).ok()?;
        let answer = Message::from_vec(&buf[..n]).ok()?;
        if answer.id() != id {
            return None;
        }
        for r in answer.answers() {
            match r.data() {
                RData::A(a) => out.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
    }
    (!out.is_empty()).then_some(out)
}
