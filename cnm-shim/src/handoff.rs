//! Hand a Docker placeholder reservation to an endpoint's attachment owner in the plugnet-ipam
//! store, *adding* to what that owner already holds (a dual-stack endpoint receives its IPv4
//! and its IPv6 placeholder one after the other; `plugnet::ipam::transfer` refuses a target
//! that already holds addresses). For the integrator to fold into `plugnet::ipam`.
//!
//! Invariant: runs under the store's lock; the target's record is written before any claim is
//! reassigned and the source record is removed last, the same order as `ipam::transfer`, so a
//! crash leaves every claimed address owned by a record.

use plugnet::ipam::config::DEFAULT_DATA_DIR;
use plugnet::ipam::store::{now, FileStore, Store};
use plugnet::ipam::{Hold, Owner, Record};
use plugnet::CniError;
use serde_json::Value;
use std::io;
use std::path::PathBuf;

fn err(step: &str) -> impl Fn(io::Error) -> CniError + '_ {
    move |e| CniError::io(format!("ipam store: {step}: {e}"))
}

/// Move `from`'s live addresses to `to` (held as `hold`), keeping `to`'s own.
pub fn transfer_merge(
    ipam_conf: &Value,
    network: &str,
    from: &Owner,
    to: &Owner,
    hold: Hold,
) -> Result<(), CniError> {
    plugnet::validate::network_name(network)?;
    let data_dir = ipam_conf
        .get("dataDir")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let store = FileStore::open(&data_dir, network, true)
        .map_err(err("open"))?
        .ok_or_else(|| CniError::io("ipam store: open: missing"))?;
    let guard = store.lock().map_err(err("lock"))?;
    let result = (|| -> Result<(), CniError> {
        let live = |owner: &Owner| -> Result<Vec<std::net::IpAddr>, CniError> {
            let mut ips = Vec::new();
            if let Some(rec) = store.record(owner).map_err(err("read record"))? {
                for ip in rec.ips {
                    if store.holder(ip).map_err(err("read claim"))?.as_ref() == Some(owner) {
                        ips.push(ip);
                    }
                }
            }
            Ok(ips)
        };
        let moving = live(from)?;
        if moving.is_empty() {
            return Err(CniError::internal(format!(
                "{} holds no addresses",
                from.key()
            )));
        }
        let mut ips = live(to)?;
        ips.extend(
            moving
                .iter()
                .copied()
                .filter(|ip| !ips.contains(ip))
                .collect::<Vec<_>>(),
        );
        store
            .put_record(&Record {
                owner: to.clone(),
                hold,
                ips,
                since: now(),
            })
            .map_err(err("write record"))?;
        for ip in moving {
            store.reassign(ip, to).map_err(err("reassign claim"))?;
        }
        store.remove_record(from).map_err(err("remove record"))
    })();
    drop(guard);
    result?;
    store.sync().map_err(err("sync"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dual_stack_placeholders_merge_into_one_attachment_that_add_adopts() {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({"type": "plugnet-ipam", "dataDir": dir.path(),
            "ranges": [[{"subnet": "10.60.9.0/24"}], [{"subnet": "fd60:9::/64"}]]});
        let (p4, p6) = (
            Owner::new("docker-a", "reserved"),
            Owner::new("docker-b", "reserved"),
        );
        let ep = Owner::new("e0e1e2e3", "eth0");
        let v4 = plugnet::ipam::reserve(&conf, "pns-merge", &p4, None, false).unwrap();
        let v6 = plugnet::ipam::reserve(&conf, "pns-merge", &p6, None, true).unwrap();
        transfer_merge(&conf, "pns-merge", &p4, &ep, Hold::Reserved).unwrap();
        transfer_merge(&conf, "pns-merge", &p6, &ep, Hold::Reserved).unwrap();
        assert!(
            transfer_merge(&conf, "pns-merge", &p6, &ep, Hold::Reserved).is_err(),
            "nothing left to move"
        );
        let recs = plugnet::ipam::records(dir.path(), "pns-merge").unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].owner, ep);
        assert_eq!(recs[0].ips, vec![v4.ip(), v6.ip()]);
        assert_eq!(recs[0].hold, Hold::Reserved);
        let released = plugnet::ipam::release_owner(&conf, "pns-merge", &ep).unwrap();
        assert_eq!(released.len(), 2);
    }
}
