//! This host in the cluster: its record under `/plugnet/v1/hosts/<host>` attached to a lease
//! (TTL `--lease-ttl`, kept alive every third of it), and the liveness clock the fence is
//! computed from.
//!
//! Invariant: [`Liveness::last_ok_ms`] is the boot-clock time at which the last *acknowledged*
//! keep-alive (or registration) was sent, so the lease certainly lived until then plus its TTL;
//! other hosts may reclaim this host's blocks no earlier than that plus a network's grace,
//! which is why allocation stops at `last_ok + grace` (see `blocks`). A name registered by
//! another machine (another id) with a live lease is never taken over.

use crate::etcd::Etcd;
use crate::runtime::Shutdown;
use crate::schema::{self, HostRecord};
use anyhow::{bail, Result};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use plugnet::ipam::cluster::local::boottime_ms;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// What the other tasks learn from the lease.
#[derive(Default)]
pub struct Liveness {
    /// Boot-clock ms of the last acknowledged keep-alive's sending (0: none in this run).
    last_ok_ms: AtomicU64,
    reachable: AtomicBool,
    registered: AtomicBool,
    /// Fires after each acknowledged keep-alive and on every change of reachability.
    pub changed: Notify,
}

impl Liveness {
    pub fn last_ok_ms(&self) -> u64 {
        self.last_ok_ms.load(Ordering::Acquire)
    }
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }
    pub fn ok(&self, sent_ms: u64) {
        self.last_ok_ms.fetch_max(sent_ms, Ordering::AcqRel);
        self.reachable.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }
    pub fn unreachable(&self) {
        if self.reachable.swap(false, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
    }
}

pub struct Host {
    pub record: HostRecord,
    pub etcd: Etcd,
    pub ttl: Duration,
    pub live: Arc<Liveness>,
}

impl Host {
    /// Put this host's record under a fresh lease. The same machine's earlier record (a restart
    /// before its lease ran out) is replaced and its lease revoked; another machine's is not.
    async fn register(&self) -> Result<i64> {
        let key = schema::host_key(&self.record.name);
        let sent = boottime_ms();
        let lease = self.etcd.lease_grant(self.ttl).await?;
        let value = schema::encode(&self.record);
        let put = TxnOp::put(
            key.clone(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let r = self
            .etcd
            .txn(
                Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                    .and_then([put.clone()]),
            )
            .await?;
        if !r.succeeded() {
            let Some(old) = self.etcd.get(&key).await? else {
                bail!("host key {key} changed while registering; retrying");
            };
            let rec: HostRecord = schema::decode(&old.key, &old.value)?;
            if rec.id != self.record.id {
                let _ = self.etcd.lease_revoke(lease).await;
                bail!(
                    "host name {:?} is registered by another machine (id {}, underlay {}) whose \
                     lease is alive: give this host another --host, or stop that one",
                    rec.name,
                    rec.id,
                    rec.underlay
                );
            }
            let r = self
                .etcd
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            old.mod_revision,
                        )])
                        .and_then([put]),
                )
                .await?;
            if !r.succeeded() {
                bail!("host key {key} changed while registering; retrying");
            }
            if old.lease != 0 && old.lease != lease {
                let _ = self.etcd.lease_revoke(old.lease).await;
            }
        }
        self.live.ok(sent);
        self.live.registered.store(true, Ordering::Release);
        info!(host = %self.record.name, lease, underlay = %self.record.underlay, "registered");
        Ok(lease)
    }

    /// Keep `lease` alive until it expires (`Ok(())`: register again) or etcd fails (`Err`).
    async fn keep_alive(&self, lease: i64, shutdown: &mut Shutdown) -> Result<()> {
        let mut client = self.etcd.client();
        let opened = tokio::time::timeout(self.etcd.timeout, client.lease_keep_alive(lease)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(s)) => s,
            // etcd-client opens the stream with a first keep-alive: an expired lease fails it.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) => {
                warn!(host = %self.record.name, lease, "lease gone ({e}): registering again");
                return Ok(());
            }
            Ok(Err(e)) => bail!("etcd lease_keep_alive: {e}"),
            Err(_) => bail!(
                "etcd lease_keep_alive: no answer within {:?}",
                self.etcd.timeout
            ),
        };
        let every = self.ttl / 3;
        loop {
            let sent = boottime_ms();
            self.etcd
                .timed("lease_keep_alive", keeper.keep_alive())
                .await?;
            // An expired lease answers TTL 0, or (etcd-client) "lease not found".
            let expired = match tokio::time::timeout(self.etcd.timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    self.live.ok(sent);
                    false
                }
                Ok(Ok(Some(_))) | Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => true,
                Ok(Ok(None)) => bail!("etcd closed the keep-alive stream"),
                Ok(Err(e)) => bail!("etcd lease_keep_alive: {e}"),
                Err(_) => bail!(
                    "etcd lease_keep_alive: no answer within {:?}",
                    self.etcd.timeout
                ),
            };
            if expired {
                warn!(host = %self.record.name, lease, "lease expired: registering again");
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    /// The task: register, keep alive, and start over after a failure (backing off to 5 s).
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) -> Result<()> {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.fired() {
            let outcome: Result<()> = match self.register().await {
                Ok(lease) => {
                    backoff = Duration::from_millis(200);
                    let mut lease = lease;
                    loop {
                        match self.keep_alive(lease, &mut shutdown).await {
                            Ok(()) if shutdown.fired() => return Ok(()),
                            Ok(()) => match self.register().await {
                                Ok(l) => lease = l,
                                Err(e) => break Err(e),
                            },
                            Err(e) => {
                                // The lease may still be alive: keep it, retry the stream.
                                self.live.unreachable();
                                warn!(host = %self.record.name, "keep-alive: {e:#}");
                                tokio::select! {
                                    _ = tokio::time::sleep(backoff) => {}
                                    _ = shutdown.wait() => return Ok(()),
                                }
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                            }
                        }
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                self.live.unreachable();
                if e.to_string().contains("registered by another machine") {
                    self.live.registered.store(false, Ordering::Release);
                    error!(host = %self.record.name, "{e:#}");
                } else {
                    warn!(host = %self.record.name, "register: {e:#}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        Ok(())
    }
}
