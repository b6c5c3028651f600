//! Operator views of IPAM stores: who holds which address since when (host-local's leases in a
//! switched store included), free/used counts per range, damaged entries, and the manual
//! release of one owner.
//!
//! Invariant: read-only except [`release`], which goes through the allocator under the lock
//! like any DEL.

use super::allocator;
use super::config::{to_u128, IpamConfig};
use super::hostlocal;
use super::store::{Claim, Hold, Owner, Store};
use super::{Files, Stores};
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
    /// Empty for a host-local lease of before v0.8 (it names only the container).
    pub ifname: String,
    /// `attached`, `reserved`, or `host-local` (a lease host-local made before the switch).
    pub hold: &'static str,
    /// Seconds since the epoch.
    pub since: u64,
}

/// Usage of one configured range. Counts beyond 2^64 - 1 (huge IPv6 ranges) serialise as
/// decimal strings: JSON numbers that large lose precision in most readers.
#[derive(Debug, Clone, Serialize)]
pub struct RangeUsage {
    pub range: String,
    #[serde(serialize_with = "big_count")]
    pub size: u128,
    /// Held addresses, damaged entries included (they are never handed out).
    #[serde(serialize_with = "big_count")]
    pub used: u128,
    #[serde(serialize_with = "big_count")]
    pub free: u128,
}

fn big_count<S: serde::Serializer>(n: &u128, s: S) -> Result<S::Ok, S::Error> {
    match u64::try_from(*n) {
        Ok(small) => s.serialize_u64(small),
        Err(_) => s.serialize_str(&n.to_string()),
    }
}

/// A store entry that cannot be read: held by nobody, never handed out.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    /// Relative to the store (`ip/10.0.0.5`, `owner/c1:eth0`, `10.0.0.7` for host-local's).
    pub entry: String,
    /// The address it holds, when its name says one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    pub why: String,
}

/// Everything known about one network's store.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkUsage {
    pub network: String,
    pub store: PathBuf,
    pub holders: Vec<Holder>,
    /// Empty when the network's configuration is not known.
    pub ranges: Vec<RangeUsage>,
    /// Entries `plugnet gc` repairs or reports.
    pub damaged: Vec<Damaged>,
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

/// Holders of `network` (sorted by address), damaged entries and, given its configuration,
/// range usage.
pub fn usage(
    data_dir: &Path,
    network: &str,
    cfg: Option<&IpamConfig>,
) -> Result<NetworkUsage, CniError> {
    let store = Files(data_dir).open(network, false)?;
    let mut holders = Vec::new();
    let mut damaged = Vec::new();
    if let Some(store) = &store {
        let io = |what: &'static str| move |e| CniError::io(format!("{what}: {e}"));
        let records = store.records().map_err(io("list records"))?;
        for r in records {
            for ip in &r.ips {
                // Only addresses the record still holds (a crashed ADD's leftovers are not).
                if store.claim_of(*ip).is_ok_and(|c| c.is_held_by(&r.owner)) {
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
        for (ip, claim) in store.claims().map_err(io("list claims"))? {
            if let Claim::Damaged(why) = claim {
                damaged.push(Damaged {
                    entry: format!("ip/{ip}"),
                    address: Some(ip),
                    why,
                });
            }
        }
        for d in store.damage().map_err(io("list damage"))? {
            damaged.push(Damaged {
                entry: d.entry,
                address: None,
                why: d.why,
            });
        }
        for (ip, claim) in store.host_local().map_err(io("list host-local leases"))? {
            match claim {
                Claim::HostLocal(owner) => holders.push(Holder {
                    address: ip,
                    container_id: owner.container_id,
                    ifname: owner.ifname,
                    hold: "host-local",
                    since: hostlocal::since(store.dir(), ip),
                }),
                Claim::Damaged(why) => damaged.push(Damaged {
                    entry: ip.to_string(),
                    address: Some(ip),
                    why,
                }),
                _ => {}
            }
        }
    }
    holders.sort_by_key(|h| (h.address.is_ipv6(), to_u128(h.address)));
    damaged.sort_by(|a, b| a.entry.cmp(&b.entry));
    let ranges = cfg
        .map(|cfg| {
            cfg.ranges
                .iter()
                .flatten()
                .map(|r| {
                    let held = holders.iter().map(|h| h.address);
                    let broken = damaged.iter().filter_map(|d| d.address);
                    let used = held.chain(broken).filter(|a| r.contains(*a)).count() as u128;
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
        damaged,
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
    let Some(store) = Files(data_dir).open(network, false)? else {
        return Ok(Vec::new());
    };
    let mut owners: Vec<Owner> = store
        .records()
        .map_err(|e| CniError::io(format!("list records: {e}")))?
        .into_iter()
        .map(|r| r.owner)
        .chain(
            store
                .damage()
                .map_err(|e| CniError::io(format!("list damage: {e}")))?
                .into_iter()
                .filter_map(|d| d.owner),
        )
        .chain(
            store
                .host_local()
                .map_err(|e| CniError::io(format!("list host-local leases: {e}")))?
                .into_iter()
                .filter_map(|(_, c)| match c {
                    // A bare-id lease goes with any of the container's interfaces.
                    Claim::HostLocal(o) if o.ifname.is_empty() => {
                        Some(Owner::new(o.container_id, ifname.unwrap_or("eth0")))
                    }
                    Claim::HostLocal(o) => Some(o),
                    _ => None,
                }),
        )
        .filter(|o| o.container_id == container_id && ifname.is_none_or(|i| i == o.ifname))
        .collect();
    owners.sort();
    owners.dedup();
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
        let store = crate::ipam::FileStore::open(d.path(), "n", true)
            .unwrap()
            .unwrap();
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
