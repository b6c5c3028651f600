//! What the shim holds, for people and for Prometheus: `plugnet-shim status` (networks,
//! endpoints, attachments, pools) and the per-network metrics text, both computed from the state
//! directory (which every handler writes atomically) plus the host-side interface counters.
//!
//! Invariant: read-only; nothing here takes a driver lock or writes, so it is safe while the
//! daemon runs and when it does not.

use crate::state::{Phase, State};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Interface counters of one host-side link, as the container sees them (host tx = rx).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// Reads counters of a host link by name; `None` when it does not exist.
pub trait LinkCounters {
    fn traffic(&self, host_link: &str) -> Option<Traffic>;
}

/// `/sys/class/net/<link>/statistics`, flipped to the container's point of view.
pub struct SysfsCounters;

impl LinkCounters for SysfsCounters {
    fn traffic(&self, host_link: &str) -> Option<Traffic> {
        if host_link.is_empty() || host_link.contains('/') || host_link.starts_with('.') {
            return None;
        }
        let dir = Path::new("/sys/class/net")
            .join(host_link)
            .join("statistics");
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(Traffic {
            rx_bytes: read("tx_bytes")?,
            tx_bytes: read("rx_bytes")?,
            rx_packets: read("tx_packets")?,
            tx_packets: read("rx_packets")?,
            rx_dropped: read("tx_dropped")?,
            tx_dropped: read("rx_dropped")?,
        })
    }
}

fn phase(p: Phase) -> &'static str {
    match p {
        Phase::Attaching => "attaching",
        Phase::Joined => "joined",
    }
}

/// The CNI network name of each Docker network id (`?` for endpoints of unknown networks).
fn cni_name<'a>(st: &'a State, network_id: &str) -> &'a str {
    st.networks
        .get(network_id)
        .map(|n| n.cni_name.as_str())
        .unwrap_or("?")
}

/// The machine form of `plugnet-shim status --json`.
pub fn to_json(st: &State, warnings: &[String]) -> Value {
    let mut nets: Vec<&crate::state::NetworkRecord> = st.networks.values().collect();
    nets.sort_by(|a, b| a.cni_name.cmp(&b.cni_name).then(a.id.cmp(&b.id)));
    let mut eps: Vec<&crate::state::EndpointRecord> = st.endpoints.values().collect();
    eps.sort_by(|a, b| a.id.cmp(&b.id));
    let endpoint = |e: &crate::state::EndpointRecord| {
        json!({
            "id": e.id,
            "addresses": e.addresses,
            "mac": e.mac,
            "attachment": e.attachment.as_ref().map(|a| json!({
                "phase": phase(a.phase), "cniNetwork": a.cni_name, "netns": a.netns,
                "ifname": a.ifname, "hostInterface": a.peer,
            })),
        })
    };
    let networks: Vec<Value> = nets
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "cniNetwork": n.cni_name,
                "mode": n.mode,
                "internal": n.internal,
                "exported": n.exported,
                "subnets": n.subnets,
                "endpoints": eps.iter().filter(|e| e.network_id == n.id).map(|e| endpoint(e)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let orphans: Vec<Value> = eps
        .iter()
        .filter(|e| !st.networks.contains_key(&e.network_id))
        .map(|e| endpoint(e))
        .collect();
    let mut pools: Vec<&crate::state::PoolRecord> = st.pools.values().collect();
    pools.sort_by(|a, b| a.id.cmp(&b.id));
    let pools: Vec<Value> = pools
        .iter()
        .map(|p| {
            json!({"id": p.id, "pool": p.pool, "cniNetwork": p.cni_network, "refs": p.refs,
                   "gateway": p.gateway, "addresses": p.addresses})
        })
        .collect();
    json!({"networks": networks, "endpointsOfUnknownNetworks": orphans, "pools": pools,
           "warnings": warnings})
}

/// The human form of `plugnet-shim status`.
pub fn to_text(st: &State, warnings: &[String]) -> String {
    let v = to_json(st, warnings);
    let mut s = String::new();
    let empty = Vec::new();
    let arr = |v: &Value| v.as_array().unwrap_or(&empty).clone();
    if arr(&v["networks"]).is_empty() {
        s.push_str("no networks\n");
    }
    for n in arr(&v["networks"]) {
        let subnets: Vec<String> = arr(&n["subnets"])
            .iter()
            .map(|x| match x["gateway"].as_str() {
                Some(g) => format!("{} gw {g}", x["pool"].as_str().unwrap_or("?")),
                None => x["pool"].as_str().unwrap_or("?").to_string(),
            })
            .collect();
        let id = n["id"].as_str().unwrap_or("");
        let _ = writeln!(
            s,
            "network {}  docker {}  mode {}{}  subnets {}",
            n["cniNetwork"].as_str().unwrap_or("?"),
            &id[..id.len().min(12)],
            n["mode"].as_str().unwrap_or("?"),
            if n["internal"] == true {
                " internal"
            } else {
                ""
            },
            if subnets.is_empty() {
                "-".into()
            } else {
                subnets.join(", ")
            }
        );
        endpoints_text(&mut s, &arr(&n["endpoints"]));
    }
    let orphans = arr(&v["endpointsOfUnknownNetworks"]);
    if !orphans.is_empty() {
        s.push_str("endpoints of unknown networks\n");
        endpoints_text(&mut s, &orphans);
    }
    for w in warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

fn endpoints_text(s: &mut String, eps: &[Value]) {
    if eps.is_empty() {
        s.push_str("  no endpoints\n");
        return;
    }
    for e in eps {
        let id = e["id"].as_str().unwrap_or("");
        let addrs: Vec<&str> = e["addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let att = &e["attachment"];
        let attached = if att.is_null() {
            "not joined".to_string()
        } else {
            format!(
                "{} {} in {} host {}",
                att["phase"].as_str().unwrap_or("?"),
                att["ifname"].as_str().unwrap_or("?"),
                att["netns"].as_str().unwrap_or("?"),
                att["hostInterface"].as_str().unwrap_or("-"),
            )
        };
        let _ = writeln!(
            s,
            "  endpoint {}  {}  mac {}  {attached}",
            &id[..id.len().min(12)],
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(",")
            },
            e["mac"].as_str().unwrap_or("-"),
        );
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format (0.0.4): per CNI network, keyed by its name.
pub fn metrics_text(st: &State, counters: &dyn LinkCounters) -> String {
    #[derive(Default)]
    struct Net {
        docker_ids: Vec<String>,
        endpoints: u64,
        attaching: u64,
        joined: u64,
        addresses: u64,
        traffic: Traffic,
    }
    let mut nets: BTreeMap<String, Net> = BTreeMap::new();
    for n in st.networks.values() {
        nets.entry(n.cni_name.clone())
            .or_default()
            .docker_ids
            .push(n.id.clone());
    }
    for e in st.endpoints.values() {
        let name = cni_name(st, &e.network_id).to_string();
        let n = nets.entry(name).or_default();
        n.endpoints += 1;
        if let Some(a) = &e.attachment {
            match a.phase {
                Phase::Attaching => n.attaching += 1,
                Phase::Joined => n.joined += 1,
            }
            if let Some(t) = a.peer.as_deref().and_then(|p| counters.traffic(p)) {
                let x = &mut n.traffic;
                x.rx_bytes += t.rx_bytes;
                x.tx_bytes += t.tx_bytes;
                x.rx_packets += t.rx_packets;
                x.tx_packets += t.tx_packets;
                x.rx_dropped += t.rx_dropped;
                x.tx_dropped += t.tx_dropped;
            }
        }
    }
    for p in st.pools.values() {
        nets.entry(p.cni_network.clone()).or_default().addresses += p.addresses.len() as u64;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP plugnet_shim_networks Docker networks the shim serves.\n# TYPE plugnet_shim_networks gauge\nplugnet_shim_networks {}",
        st.networks.len()
    );
    type Get = fn(&Net) -> u64;
    let series: [(&str, &str, &str, Get); 10] = [
        (
            "plugnet_shim_endpoints",
            "gauge",
            "Docker endpoints on the network.",
            |n| n.endpoints,
        ),
        (
            "plugnet_shim_attachments_joined",
            "gauge",
            "Endpoints whose CNI ADD completed and that Docker joined.",
            |n| n.joined,
        ),
        (
            "plugnet_shim_attachments_attaching",
            "gauge",
            "Endpoints with a CNI ADD under way (or interrupted).",
            |n| n.attaching,
        ),
        (
            "plugnet_shim_pool_addresses",
            "gauge",
            "Addresses Docker holds in the network's pools (gateway, aux, endpoints).",
            |n| n.addresses,
        ),
        (
            "plugnet_network_rx_bytes_total",
            "counter",
            "Bytes received by the network's containers (sum over joined endpoints now present).",
            |n| n.traffic.rx_bytes,
        ),
        (
            "plugnet_network_tx_bytes_total",
            "counter",
            "Bytes sent by the network's containers.",
            |n| n.traffic.tx_bytes,
        ),
        (
            "plugnet_network_rx_packets_total",
            "counter",
            "Packets received by the network's containers.",
            |n| n.traffic.rx_packets,
        ),
        (
            "plugnet_network_tx_packets_total",
            "counter",
            "Packets sent by the network's containers.",
            |n| n.traffic.tx_packets,
        ),
        (
            "plugnet_network_rx_dropped_total",
            "counter",
            "Received packets dropped.",
            |n| n.traffic.rx_dropped,
        ),
        (
            "plugnet_network_tx_dropped_total",
            "counter",
            "Sent packets dropped.",
            |n| n.traffic.tx_dropped,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (net, n) in &nets {
            let _ = writeln!(s, "{name}{{network=\"{}\"}} {}", label(net), get(n));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AttachmentRecord, EndpointRecord, Mode, NetworkRecord};

    struct Fixed;
    impl LinkCounters for Fixed {
        fn traffic(&self, l: &str) -> Option<Traffic> {
            (l == "pnpeer1").then_some(Traffic {
                rx_bytes: 100,
                tx_bytes: 50,
                rx_packets: 2,
                tx_packets: 1,
                ..Traffic::default()
            })
        }
    }

    fn state() -> State {
        let mut st = State::default();
        st.networks.insert(
            "n1".into(),
            NetworkRecord {
                id: "n1".into(),
                mode: Mode::Derived,
                cni_name: "pn-10.60.1.0_24".into(),
                conflist: Value::Null,
                exported: false,
                internal: false,
                subnets: vec![],
                owns_bridge: false,
            },
        );
        for (id, net, peer) in [
            ("e1", "n1", Some("pnpeer1")),
            ("e2", "n1", None),
            ("e3", "gone", None),
        ] {
            st.endpoints.insert(
                id.into(),
                EndpointRecord {
                    id: id.into(),
                    network_id: net.into(),
                    addresses: vec!["10.60.1.2/24".parse().unwrap()],
                    mac: None,
                    port_mappings: vec![],
                    attachment: peer.map(|p| AttachmentRecord {
                        phase: Phase::Joined,
                        cni_name: "pn-10.60.1.0_24".into(),
                        conflist: Value::Null,
                        netns: "/run/plugnet-shim/x/ns/e1".into(),
                        handoff: false,
                        ifname: "eth0".into(),
                        tmp_name: "pnje1".into(),
                        peer: Some(p.into()),
                        args: vec![],
                        capability_args: Default::default(),
                        result: Value::Null,
                    }),
                },
            );
        }
        st
    }

    #[test]
    fn metrics_are_keyed_by_network_name_and_count_traffic_from_the_container_side() {
        let m = metrics_text(&state(), &Fixed);
        assert!(m.contains("plugnet_shim_networks 1\n"), "{m}");
        assert!(
            m.contains("plugnet_shim_endpoints{network=\"pn-10.60.1.0_24\"} 2\n"),
            "{m}"
        );
        assert!(
            m.contains("plugnet_shim_endpoints{network=\"?\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("plugnet_shim_attachments_joined{network=\"pn-10.60.1.0_24\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("plugnet_network_rx_bytes_total{network=\"pn-10.60.1.0_24\"} 100\n"),
            "{m}"
        );
        assert!(
            m.contains("# TYPE plugnet_network_tx_bytes_total counter\n"),
            "{m}"
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        // The real counters exist for loopback and are refused for path tricks.
        assert!(SysfsCounters.traffic("lo").is_some());
        assert!(SysfsCounters.traffic("../lo").is_none());
    }

    #[test]
    fn status_lists_networks_endpoints_and_orphans() {
        let st = state();
        let v = to_json(&st, &["skipped x".into()]);
        assert_eq!(v["networks"][0]["cniNetwork"], "pn-10.60.1.0_24");
        assert_eq!(v["networks"][0]["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["networks"][0]["endpoints"][0]["attachment"]["hostInterface"],
            "pnpeer1"
        );
        assert_eq!(v["endpointsOfUnknownNetworks"][0]["id"], "e3");
        let t = to_text(&st, &["skipped x".into()]);
        assert!(
            t.contains("network pn-10.60.1.0_24  docker n1  mode derived"),
            "{t}"
        );
        assert!(t.contains("endpoint e1  10.60.1.2/24  mac -  joined eth0 in /run/plugnet-shim/x/ns/e1 host pnpeer1"), "{t}");
        assert!(t.contains("endpoints of unknown networks"), "{t}");
        assert!(t.contains("warning: skipped x"), "{t}");
        assert_eq!(to_text(&State::default(), &[]), "no networks\n");
    }
}
