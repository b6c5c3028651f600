//! Operator views of IPAM stores: who holds which address since when, free/used counts per
//! range, and the manual release of one owner.
//!
//! Invariant: read-only except [`release`], which goes through the allocator under the lock
//! like any DEL.

use super::allocator;
use super::config::{to_u128, IpamConfig};
use super::store::{FileStore, Hold, Owner, Store};
use crate::error::CniError;
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One held address.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    pub address: IpAddr,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// `attached` or `reserved`.
    pub hold: &'static str,
    /// Seconds since the epoch.
    pub since: u64,
}

/// Usage of one configured range.
#[derive(Debug, Clone, Serialize)]
pub struct RangeUsage {
    pub range: String,
    pub size: u128,
    pub used: u128,
    pub free: u128,
}

/// Everything known about one network's store.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkUsage {
    pub network: String,
    pub store: PathBuf,
    pub holders: Vec<Holder>,
    /// Empty when the network's configuration is not known.
    pub ranges: Vec<RangeUsage>,
}

/// Networks with a plugnet-ipam store under `data_dir`.
pub fn networks(data_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(data_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("format").is_file())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| crate::validate::is_valid_id(n))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn open(data_dir: &Path, network: &str) -> Result<Option<FileStore>, CniError> {
    crate::validate::network_name(network)?;
    FileStore::open(data_dir, network, false)
        .map_err(|e| CniError::io(format!("ipam store of {network}: {e}")))
}

/// Holders of `network` (sorted by address) and, given its configuration, range usage.
pub fn usage(
    data_dir: &Path,
    network: &str,
    cfg: Option<&IpamConfig>,
) -> Result<NetworkUsage, CniError> {
    let store = open(data_dir, network)?;
    let mut holders = Vec::new();
    if let Some(store) = &store {
        let records = store
            .records()
            .map_err(|e| CniError::io(format!("list records: {e}")))?;
        for r in records {
            for ip in &r.ips {
                // Only addresses the record still holds (a crashed ADD's leftovers are not).
                if store.holder(*ip).ok().flatten().as_ref() == Some(&r.owner) {
                    holders.push(Holder {
                        address: *ip,
                        container_id: r.owner.container_id.clone(),
                        ifname: r.owner.ifname.clone(),
                        hold: match r.hold {
                            Hold::Attached => "attached",
                            Hold::Reserved => "reserved",
                        },
                        since: r.since,
                    });
                }
            }
        }
    }
    holders.sort_by_key(|h| (h.address.is_ipv6(), to_u128(h.address)));
    let ranges = cfg
        .map(|cfg| {
            cfg.ranges
                .iter()
                .flatten()
                .map(|r| {
                    let used = holders.iter().filter(|h| r.contains(h.address)).count() as u128;
                    RangeUsage {
                        range: format!("{} ({})", r.describe(), r.subnet),
                        size: r.size(),
                        used,
                        free: r.size().saturating_sub(used),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(NetworkUsage {
        network: network.to_string(),
        store: data_dir.join(network),
        holders,
        ranges,
    })
}

/// Release what `container_id` holds on `network` (every interface, or just `ifname`).
pub fn release(
    data_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: Option<&str>,
) -> Result<Vec<(Owner, Vec<IpAddr>)>, CniError> {
    crate::validate::container_id(container_id)?;
    let Some(store) = open(data_dir, network)? else {
        return Ok(Vec::new());
    };
    let owners: Vec<Owner> = store
        .records()
        .map_err(|e| CniError::io(format!("list records: {e}")))?
        .into_iter()
        .map(|r| r.owner)
        .filter(|o| o.container_id == container_id && ifname.is_none_or(|i| i == o.ifname))
        .collect();
    let mut out = Vec::new();
    for owner in owners {
        let ips = allocator::release(&store, &owner)?;
        out.push((owner, ips));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_and_release() {
        let d = tempfile::tempdir().unwrap();
        let cfg = IpamConfig::from_request(
            &json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/29"}]], "dataDir": d.path()}}),
            None,
        )
        .unwrap();
        let store = FileStore::open(d.path(), "n", true).unwrap().unwrap();
        for id in ["a", "b"] {
            allocator::allocate(
                &store,
                &cfg.ranges,
                &Owner::new(id, "eth0"),
                &[],
                Hold::Attached,
            )
            .unwrap();
        }
        allocator::allocate(
            &store,
            &cfg.ranges,
            &Owner::new("a", "eth1"),
            &[],
            Hold::Attached,
        )
        .unwrap();
        assert_eq!(networks(d.path()), vec!["n".to_string()]);
        let u = usage(d.path(), "n", Some(&cfg)).unwrap();
        assert_eq!(u.holders.len(), 3);
        assert_eq!(u.holders[0].address.to_string(), "10.0.0.2");
        assert_eq!(
            (u.ranges[0].size, u.ranges[0].used, u.ranges[0].free),
            (5, 3, 2)
        );
        let released = release(d.path(), "n", "a", None).unwrap();
        assert_eq!(released.len(), 2);
        assert_eq!(usage(d.path(), "n", None).unwrap().holders.len(), 1);
        assert!(release(d.path(), "missing", "a", None).unwrap().is_empty());
        assert!(release(d.path(), "../x", "a", None).is_err());
    }
}
