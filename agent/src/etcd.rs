//! The etcd client (the maintained etcd-client crate; TLS through rustls): connection
//! options, and the few requests the agent and the cluster command line make, each bounded by
//! `--etcd-timeout` and counted in the metrics (requests, errors, latency by operation).
//!
//! Invariant: no request waits longer than the timeout; an error names the operation and
//! what it was about.

use crate::config::EtcdArgs;
use crate::metrics::Metrics;
use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions, Txn,
    TxnResponse,
};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every URL is http:// or https://, and the TLS files go with https.
pub fn check_endpoints(args: &EtcdArgs) -> Result<()> {
    let mut tls = false;
    for url in &args.etcd {
        if url.starts_with("https://") {
            tls = true;
        } else if !url.starts_with("http://") {
            bail!("--etcd {url:?}: expected http://HOST:PORT or https://HOST:PORT");
        }
    }
    if !tls && (args.etcd_ca.is_some() || args.etcd_cert.is_some()) {
        bail!("--etcd-ca/--etcd-cert/--etcd-key need https:// endpoints");
    }
    Ok(())
}

/// A request the member could not take at all: worth sending to another.
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// A key as read, with the revisions compare-and-swap needs.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl From<&KeyValue> for Kv {
    fn from(kv: &KeyValue) -> Kv {
        Kv {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// The connected client (connections are made lazily: etcd may be down when this returns).
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    metrics: Arc<Metrics>,
    pub timeout: Duration,
}

impl Etcd {
    pub async fn connect(args: &EtcdArgs, metrics: Arc<Metrics>) -> Result<Etcd> {
        check_endpoints(args)?;
        if args.etcd.is_empty() {
            bail!("no etcd endpoint: pass --etcd URL[,URL…] (or set PLUGNET_ETCD)");
        }
        let mut opts = ConnectOptions::new()
            .with_timeout(args.etcd_timeout)
            .with_connect_timeout(args.etcd_timeout)
            .with_keep_alive(Duration::from_secs(5), args.etcd_timeout)
            .with_keep_alive_while_idle(true);
        if args.etcd.iter().any(|u| u.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &args.etcd_ca {
                let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
                let c = std::fs::read(cert).with_context(|| format!("read {}", cert.display()))?;
                let k = std::fs::read(key).with_context(|| format!("read {}", key.display()))?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(&args.etcd, Some(opts))
            .await
            .with_context(|| format!("connect to etcd at {}", args.etcd.join(",")))?;
        Ok(Etcd {
            client,
            metrics,
            timeout: args.etcd_timeout,
        })
    }

    /// The raw client, for streams (lease keep-alive).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one request under the timeout and records it.
    pub async fn timed<T>(
        &self,
        op: &str,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        let start = Instant::now();
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(anyhow!("etcd {op}: {e}")),
            Err(_) => Err(anyhow!("etcd {op}: no answer within {:?}", self.timeout)),
        };
        self.metrics.etcd_observed(op, start.elapsed(), r.is_ok());
        r
    }

    /// Like [`Etcd::timed`], but a request the member it went to could not take (connection
    /// refused, no leader) is sent again — the balanced channel picks a member that answers —
    /// until the timeout. Safe for reads and for compare-and-swap transactions: one applied
    /// whose answer was lost fails its compare when repeated, and resync adopts what it wrote.
    pub async fn call<T, F, Fut>(&self, op: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let r = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, f(self.client.clone())).await {
                Ok(Ok(v)) => break Ok(v),
                Ok(Err(e)) if unavailable(&e) && left > Duration::from_millis(100) => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(Err(e)) => break Err(anyhow!("etcd {op}: {e}")),
                Err(_) => break Err(anyhow!("etcd {op}: no answer within {:?}", self.timeout)),
            }
        };
        self.metrics.etcd_observed(op, start.elapsed(), r.is_ok());
        r
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let r = self
            .call("get", |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(r.kvs().first().map(Kv::from))
    }

    /// Every key under `prefix` and the store revision they were read at.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64)> {
        let r = self
            .call("get", |mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok((r.kvs().iter().map(Kv::from).collect(), rev))
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call("txn", |mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
    }

    pub async fn lease_grant(&self, ttl: Duration) -> Result<i64> {
        let mut c = self.client.clone();
        let r = self
            .timed("lease_grant", c.lease_grant(ttl.as_secs() as i64, None))
            .await?;
        Ok(r.id())
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        let mut c = self.client.clone();
        self.timed("lease_revoke", c.lease_revoke(id))
            .await
            .map(drop)
    }

    /// The cluster's current revision (a cheap read of a key that need not exist).
    pub async fn revision(&self) -> Result<i64> {
        let mut c = self.client.clone();
        let r = self
            .timed("get", c.get(crate::schema::SCHEMA_KEY, None))
            .await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }
}
