//! `plugnet ipam ls|release`: the operator's view of plugnet-ipam stores (who holds each address
//! since when, free/used per range) and the manual release of one owner.
//!
//! Invariant: reading never takes a store lock or writes; release goes through
//! [`crate::ipam::report::release`] (the allocator, under the lock). Range configuration comes
//! only from the network's conflist; without one the view says "ranges unknown" rather than
//! guessing.

use super::table::Table;
use crate::error::CniError;
use crate::ipam::config::DEFAULT_DATA_DIR;
use crate::ipam::report::{self, NetworkUsage};
use crate::ipam::IpamConfig;
use crate::libcni::NetworkList;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// The `ipam` object of the plugin in `list` that uses plugnet-ipam, if any.
pub fn plugnet_ipam_of(list: &NetworkList) -> Option<Value> {
    list.plugins.iter().find_map(|p| {
        let ipam = p.get("ipam")?;
        (ipam.get("type").and_then(Value::as_str) == Some("plugnet-ipam")).then(|| ipam.clone())
    })
}

/// Every readable network list in `conf_dir`, the first file of each name (as libcni picks);
/// unreadable or foreign files are skipped: they are not ours to judge.
fn network_lists(conf_dir: &Path) -> Vec<NetworkList> {
    let Ok(rd) = std::fs::read_dir(conf_dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out: Vec<NetworkList> = Vec::new();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "conflist" | "conf" | "json") {
            continue;
        }
        let Ok(Ok(list)) = std::fs::read(&f).map(|b| NetworkList::from_bytes(&b)) else {
            continue;
        };
        if !out.iter().any(|l| l.name == list.name) {
            out.push(list);
        }
    }
    out
}

/// Every network list in `conf_dir` that uses plugnet-ipam, with its `ipam` object.
pub fn plugnet_networks(conf_dir: &Path) -> Vec<(String, Value)> {
    network_lists(conf_dir)
        .into_iter()
        .filter_map(|list| plugnet_ipam_of(&list).map(|ipam| (list.name, ipam)))
        .collect()
}

/// Firewall state dirs to look in: `explicit` alone when given, else the default and every
/// `firewallStateDir` the conflists in `conf_dir` name.
pub fn firewall_dirs(explicit: Option<&Path>, conf_dir: &Path) -> Vec<PathBuf> {
    if let Some(d) = explicit {
        return vec![d.to_path_buf()];
    }
    let mut dirs = vec![PathBuf::from(crate::firewall::DEFAULT_STATE_DIR)];
    for list in network_lists(conf_dir) {
        for p in &list.plugins {
            if let Some(d) = p.get("firewallStateDir").and_then(Value::as_str) {
                let d = PathBuf::from(d);
                if d.is_absolute() && !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
    }
    dirs
}

/// The data dir an `ipam` object names (plugnet-ipam's default when it names none).
pub fn data_dir_of(ipam: &Value) -> PathBuf {
    ipam.get("dataDir")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Data dirs to look in: `explicit` alone when given, else the default and every dir the
/// conflists in `conf_dir` name.
pub fn data_dirs(explicit: Option<&Path>, conf_dir: &Path) -> Vec<PathBuf> {
    if let Some(d) = explicit {
        return vec![d.to_path_buf()];
    }
    let mut dirs = vec![PathBuf::from(DEFAULT_DATA_DIR)];
    for (_, ipam) in plugnet_networks(conf_dir) {
        let d = data_dir_of(&ipam);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Usage of every store (or of `network`) under the data dirs, with ranges when a conflist
/// says them.
pub fn ls(
    network: Option<&str>,
    explicit_data_dir: Option<&Path>,
    conf_dir: &Path,
) -> Result<Vec<NetworkUsage>, CniError> {
    let confs = plugnet_networks(conf_dir);
    let mut out = Vec::new();
    for dir in data_dirs(explicit_data_dir, conf_dir) {
        let mut nets = report::networks(&dir);
        if let Some(n) = network {
            crate::validate::network_name(n)?;
            nets.retain(|x| x == n);
        }
        for n in nets {
            let cfg = confs
                .iter()
                .find(|(name, ipam)| *name == n && data_dir_of(ipam) == dir)
                .and_then(|(_, ipam)| {
                    IpamConfig::from_request(&json!({ "ipam": ipam }), None).ok()
                });
            out.push(report::usage(&dir, &n, cfg.as_ref())?);
        }
    }
    if out.is_empty() {
        if let Some(n) = network {
            return Err(CniError::config(format!(
                "no plugnet-ipam store for network {n:?} in {} (nothing allocated yet, or the \
                 store is elsewhere: pass --data-dir DIR, or --conf-dir with the network's conflist)",
                data_dirs(explicit_data_dir, conf_dir)
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(out)
}

/// `2026-11-23T00:50:01Z (5m ago)`.
pub fn human_time(since: u64, now: u64) -> String {
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(since));
    let age = now.saturating_sub(since);
    // Two most significant units are enough for a person ("3h 12m ago").
    let rounded = match age {
        0..=59 => age,
        60..=86_399 => age - age % 60,
        _ => age - age % 3600,
    };
    let text = humantime::format_duration(Duration::from_secs(rounded)).to_string();
    let short: Vec<&str> = text.split(' ').take(2).collect();
    format!("{at} ({} ago)", short.join(" "))
}

/// The machine form: one object per network.
pub fn to_json(usages: &[NetworkUsage], now: u64) -> Value {
    Value::Array(
        usages
            .iter()
            .map(|u| {
                let holders: Vec<Value> = u
                    .holders
                    .iter()
                    .map(|h| {
                        let mut v = serde_json::to_value(h).expect("serialises");
                        v["sinceTime"] = json!(human_time(h.since, now)
                            .split(' ')
                            .next()
                            .unwrap_or_default());
                        v
                    })
                    .collect();
                json!({
                    "network": u.network,
                    "store": u.store,
                    "rangesKnown": !u.ranges.is_empty(),
                    "ranges": u.ranges,
                    "holders": holders,
                    "damaged": u.damaged,
                })
            })
            .collect(),
    )
}

/// The human form: per network, a range table (or "ranges unknown") and a holder table.
pub fn to_text(usages: &[NetworkUsage], now: u64) -> String {
    if usages.is_empty() {
        return "no plugnet-ipam stores found\n".into();
    }
    let mut s = String::new();
    for u in usages {
        s.push_str(&format!(
            "network {}  (store {})\n",
            u.network,
            u.store.display()
        ));
        if u.ranges.is_empty() {
            s.push_str(&format!(
                "  ranges unknown (no conflist named {:?} using plugnet-ipam in the conf dir); \
                 {} address(es) held\n",
                u.network,
                u.holders.len()
            ));
        } else {
            let mut t = Table::new(["RANGE", "SIZE", "USED", "FREE"]);
            for r in &u.ranges {
                t.row([
                    r.range.clone(),
                    r.size.to_string(),
                    r.used.to_string(),
                    r.free.to_string(),
                ]);
            }
            s.push_str(&t.render("  "));
        }
        if u.holders.is_empty() {
            s.push_str("  no addresses held\n");
        } else {
            let mut t = Table::new(["ADDRESS", "CONTAINER", "IFNAME", "HOLD", "SINCE"]);
            for h in &u.holders {
                t.row([
                    h.address.to_string(),
                    h.container_id.clone(),
                    h.ifname.clone(),
                    h.hold.to_string(),
                    human_time(h.since, now),
                ]);
            }
            s.push_str(&t.render("  "));
        }
        if !u.damaged.is_empty() {
            s.push_str(&format!(
                "  {} damaged entr{} (held by nobody, never handed out; `plugnet gc` repairs \
                 what it can):\n",
                u.damaged.len(),
                if u.damaged.len() == 1 { "y" } else { "ies" }
            ));
            let mut t = Table::new(["ENTRY", "WHY"]);
            for d in &u.damaged {
                t.row([d.entry.clone(), d.why.clone()]);
            }
            s.push_str(&t.render("  "));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{allocator, FileStore, Hold, Owner};

    #[test]
    fn human_time_is_absolute_and_relative() {
        assert_eq!(human_time(0, 59), "1970-01-01T00:00:00Z (59s ago)");
        assert_eq!(
            human_time(0, 3 * 3600 + 12 * 60 + 5),
            "1970-01-01T00:00:00Z (3h 12m ago)"
        );
        assert_eq!(
            human_time(0, 3 * 86_400 + 3700),
            "1970-01-01T00:00:00Z (3days 1h ago)"
        );
        assert_eq!(human_time(10, 5), "1970-01-01T00:00:10Z (0s ago)");
    }

    #[test]
    fn ls_finds_ranges_from_the_conflist_and_says_when_it_cannot() {
        let d = tempfile::tempdir().unwrap();
        let (data, conf) = (d.path().join("data"), d.path().join("conf"));
        std::fs::create_dir_all(&conf).unwrap();
        let ipam = json!({"type": "plugnet-ipam", "dataDir": data,
                          "ranges": [[{"subnet": "10.91.0.0/29"}]]});
        std::fs::write(
            conf.join("10-a.conflist"),
            json!({"cniVersion": "1.0.0", "name": "pnoa",
                   "plugins": [{"type": "plugnet", "bridge": "pnobr0", "ipam": ipam}]})
            .to_string(),
        )
        .unwrap();
        std::fs::write(conf.join("20-junk.conflist"), "{").unwrap();
        let cfg = IpamConfig::from_request(&json!({ "ipam": ipam }), None).unwrap();
        for net in ["pnoa", "pnob"] {
            let store = FileStore::open(&data, net, true).unwrap().unwrap();
            allocator::allocate(
                &store,
                &cfg.ranges,
                &Owner::new("c1", "eth0"),
                &[],
                Hold::Attached,
            )
            .unwrap();
        }
        assert_eq!(
            data_dirs(None, &conf),
            vec![PathBuf::from(DEFAULT_DATA_DIR), data.clone()]
        );
        let all = ls(None, Some(&data), &conf).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].ranges[0].used, all[0].ranges[0].free), (1, 4));
        assert!(all[1].ranges.is_empty());
        let text = to_text(&all, 0);
        assert!(text.contains("network pnoa"), "{text}");
        assert!(text.contains("10.91.0.2"), "{text}");
        assert!(text.contains("ranges unknown"), "{text}");
        let v = to_json(&all, 0);
        assert_eq!(v[0]["rangesKnown"], true);
        assert_eq!(v[1]["rangesKnown"], false);
        assert_eq!(v[0]["holders"][0]["containerID"], "c1");
        let one = ls(Some("pnob"), Some(&data), &conf).unwrap();
        assert_eq!(one.len(), 1);
        let e = ls(Some("pnoc"), Some(&data), &conf).unwrap_err();
        assert!(e.msg.contains("--data-dir"), "{}", e.msg);
        assert!(ls(Some("../x"), Some(&data), &conf).is_err());
    }
}
