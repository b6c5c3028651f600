//! Names across the hosts of a cluster (`--etcd`): this host's records of each network go to
//! `/plugnet/v1/names/<net>/<host>` (a JSON list of records) attached to the host's lease, so
//! they vanish with a dead host; every agent watches `/plugnet/v1/names/` and serves the other
//! hosts' records too.
//!
//! Invariants: a key is put only under the lease of this host's record (the host task owns the
//! lease; a new lease re-puts everything); another host's key is never written; a value that
//! does not parse is skipped, never served; etcd out of reach only delays (retried every 2 s).

use super::Exchange;
use crate::etcd::Etcd;
use crate::runtime::Shutdown;
use anyhow::Result;
use etcd_client::{GetOptions, PutOptions, WatchOptions};
use plugnet::names::Record;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

pub const PREFIX: &str = "/plugnet/v1/names/";

pub fn key(net: &str, host: &str) -> String {
    format!("{PREFIX}{net}/{host}")
}

/// The exchange for [`super::serve`], and the two tasks that carry it.
pub fn start(
    etcd: Etcd,
    host: String,
    shutdown: Shutdown,
) -> (
    Exchange,
    impl std::future::Future<Output = Result<()>>,
    impl std::future::Future<Output = Result<()>>,
) {
    let (publish, publish_rx) = watch::channel(Vec::new());
    let (remote_tx, remote) = watch::channel(Vec::new());
    let p = publish_task(etcd.clone(), host.clone(), publish_rx, shutdown.clone());
    let r = remote_task(etcd, host, remote_tx, shutdown);
    (Exchange { publish, remote }, p, r)
}

async fn publish_task(
    etcd: Etcd,
    host: String,
    mut mine: watch::Receiver<Vec<Record>>,
    mut shutdown: Shutdown,
) -> Result<()> {
    let mut published: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut lease = 0i64;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            r = mine.changed() => if r.is_err() { return Ok(()) },
            _ = tick.tick() => {}
            _ = shutdown.wait() => return Ok(()),
        }
        let records = mine.borrow_and_update().clone();
        let mut by_net: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for r in records {
            by_net.entry(r.network.clone()).or_default().push(r);
        }
        if by_net.is_empty() && published.is_empty() {
            continue; // nothing to say: no etcd request
        }
        let now = match etcd.get(&crate::schema::host_key(&host)).await {
            Ok(Some(kv)) if kv.lease != 0 => kv.lease,
            Ok(_) => {
                debug!("names: this host is not registered yet; records wait");
                continue;
            }
            Err(e) => {
                debug!("names: {e:#}");
                continue;
            }
        };
        if now != lease {
            lease = now;
            published.clear();
        }
        let mut c = etcd.client();
        for (net, mut recs) in by_net.iter().map(|(n, r)| (n, r.clone())) {
            recs.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
            let value = serde_json::to_vec(&recs).unwrap_or_default();
            if published.get(net) == Some(&value) {
                continue;
            }
            let put = c.put(
                key(net, &host),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            );
            match etcd.timed("put", put).await {
                Ok(_) => {
                    published.insert(net.clone(), value);
                }
                Err(e) => warn!(network = %net, "names: publish: {e:#}"),
            }
        }
        let gone: Vec<String> = published
            .keys()
            .filter(|n| !by_net.contains_key(*n))
            .cloned()
            .collect();
        for net in gone {
            match etcd.timed("delete", c.delete(key(&net, &host), None)).await {
                Ok(_) => {
                    published.remove(&net);
                }
                Err(e) => warn!(network = %net, "names: unpublish: {e:#}"),
            }
        }
    }
}

/// Other hosts' records under `PREFIX`.
fn parse_remote(kvs: &[(Vec<u8>, Vec<u8>)], host: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for (k, v) in kvs {
        let Some(rest) = std::str::from_utf8(k)
            .ok()
            .and_then(|k| k.strip_prefix(PREFIX))
        else {
            continue;
        };
        let Some((net, h)) = rest.split_once('/') else {
            continue;
        };
        if h == host {
            continue;
        }
        let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(v) else {
            warn!(
                network = net,
                host = h,
                "names: a value that is not a list; skipped"
            );
            continue;
        };
        for item in list {
            let bytes = serde_json::to_vec(&item).unwrap_or_default();
            match Record::parse(&bytes) {
                Ok(r) if r.network == net => out.push(r),
                _ => warn!(
                    network = net,
                    host = h,
                    "names: a record that does not parse; skipped"
                ),
            }
        }
    }
    out
}

async fn remote_task(
    etcd: Etcd,
    host: String,
    remote: watch::Sender<Vec<Record>>,
    mut shutdown: Shutdown,
) -> Result<()> {
    loop {
        let mut c = etcd.client();
        let got = etcd
            .timed("get", c.get(PREFIX, Some(GetOptions::new().with_prefix())))
            .await;
        if let Ok(resp) = got {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            let kvs: Vec<(Vec<u8>, Vec<u8>)> = resp
                .kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                .collect();
            let _ = remote.send(parse_remote(&kvs, &host));
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(rev + 1);
            let stream = tokio::time::timeout(etcd.timeout, c.watch(PREFIX, Some(opts))).await;
            if let Ok(Ok(mut stream)) = stream {
                // Any change: read the prefix again (one get; values are per host and network).
                let changed = tokio::select! {
                    m = stream.message() => matches!(m, Ok(Some(ref r)) if !r.canceled()),
                    _ = shutdown.wait() => return Ok(()),
                };
                if changed {
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_values_are_checked() {
        let r = Record {
            format: plugnet::names::FORMAT.into(),
            boot_id: "0".into(),
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            domain: "dns.plugnet".into(),
            names: vec!["web".into()],
            addresses: vec!["10.172.0.2".parse().unwrap()],
            nameservers: vec![],
            docker_sandbox: None,
        };
        let good = serde_json::to_vec(&vec![r.clone()]).unwrap();
        let kvs = vec![
            (key("n", "h1").into_bytes(), good.clone()),
            (key("n", "me").into_bytes(), good.clone()),
            (key("other", "h2").into_bytes(), good),
            (key("n", "h3").into_bytes(), b"{".to_vec()),
        ];
        let got = parse_remote(&kvs, "me");
        assert_eq!(got, vec![r]);
    }
}
