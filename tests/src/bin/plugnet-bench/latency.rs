//! Sequential ADD/CHECK/DEL latency (and VERSION: the process start-up floor) (subjects interleaved per iteration, the starting subject
//! rotating) and the concurrency rounds (1..64 simultaneous ADDs then DELs per subject,
//! verified: every container addressed, addresses distinct, nothing left on the bridge).
//!
//! Invariant: every attachment a section makes is deleted before it returns, also on the
//! error path of a round (the namespaces are removed by their guards regardless).

use std::collections::{BTreeMap, HashSet};
use std::sync::Barrier;
use std::time::Instant;

use serde_json::{json, Value};

use crate::exec::{enter_netns, Run};
use crate::subjects::{addresses, Attached, Driver, Subject};

/// Samples by series name (`<subject>.<op>`): wall milliseconds, peak RSS, CPU milliseconds.
#[derive(Default)]
pub struct Series {
    pub ms: BTreeMap<String, Vec<f64>>,
    pub rss_kb: BTreeMap<String, Vec<u64>>,
    pub cpu_ms: BTreeMap<String, Vec<f64>>,
}

impl Series {
    pub fn push(&mut self, name: String, runs: &[Run]) {
        let ms: f64 = runs.iter().map(|r| r.ms).sum();
        let rss = runs.iter().map(|r| r.rss_kb).max().unwrap_or(0);
        let cpu: f64 = runs.iter().map(|r| r.cpu_ms).sum();
        self.ms.entry(name.clone()).or_default().push(ms);
        self.cpu_ms.entry(name.clone()).or_default().push(cpu);
        self.rss_kb.entry(name).or_default().push(rss);
    }
    pub fn to_json(&self) -> Value {
        json!({"ms": self.ms, "rss_kb": self.rss_kb, "cpu_ms": self.cpu_ms})
    }
}

/// One container namespace per subject, reused by every iteration (ADD then DEL leaves it as
/// it was). `ip` is the static address netavark is given.
pub struct Seat<'a> {
    pub subject: &'a Subject,
    pub netns: String,
    pub ip: String,
}

/// The kernel's share of every DEL measured here: deleting one veth pair — host end on
/// `bridge` and up, peer `eth9` up and addressed in `peer_ns` (a name), as a plugin leaves
/// them — with a single in-process RTM_DELLINK, no process around it. Both plugins' DEL
/// waits for exactly this (the unregister's RCU barrier), so DEL minus this is their own work.
pub fn veth_delete_ms(bridge: &str, peer_ns: &str, name: &str) -> Result<f64, String> {
    let ok = |cmd: String| {
        if plugnet_tests::sh_ok(&cmd) {
            Ok(())
        } else {
            Err(format!("`{cmd}` failed"))
        }
    };
    ok(format!(
        "ip link add {name} master {bridge} up type veth peer name eth9 netns {peer_ns} && \
         ip -n {peer_ns} addr add 10.125.7.2/24 dev eth9 && ip -n {peer_ns} link set eth9 up"
    ))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let nl = plugnet::netlink::Netlink::host().map_err(|e| e.to_string())?;
        let t = Instant::now();
        nl.del_link_by_name(name).await.map_err(|e| e.to_string())?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    })
}

/// `iterations` rounds of ADD → CHECK → DEL for each seat, interleaved; with `floor` (a bridge
/// and a namespace name), one [`veth_delete_ms`] per round as series `kernel.veth_del`.
pub fn sequential(
    seats: &[Seat],
    iterations: usize,
    check: bool,
    floor: Option<(&str, &str)>,
) -> Result<Series, String> {
    let mut s = Series::default();
    for i in 0..iterations {
        if let Some((bridge, ns)) = floor {
            let ms = veth_delete_ms(bridge, ns, "pnmfloor0")?;
            s.ms.entry("kernel.veth_del".into()).or_default().push(ms);
        }
        for k in 0..seats.len() {
            let seat = &seats[(i + k) % seats.len()];
            let sub = seat.subject;
            let id = format!("pnm-seq-{i}");
            let (a, runs) = sub.add(&id, &seat.netns, "eth0", &Value::Null, &seat.ip)?;
            let (add, del) = match sub.driver {
                Driver::Netavark { .. } => ("setup", "teardown"),
                Driver::Cni { .. } => ("add", "del"),
            };
            s.push(format!("{}.{add}", sub.key), &runs);
            if check && matches!(sub.driver, Driver::Cni { .. }) {
                let r = sub.check(&a)?;
                s.push(format!("{}.check", sub.key), &[r]);
            }
            let runs = sub.del(&a)?;
            s.push(format!("{}.{del}", sub.key), &runs);
            if check {
                if let Some(r) = sub.version()? {
                    s.push(format!("{}.version", sub.key), &[r]);
                }
            }
        }
    }
    Ok(s)
}

/// What one concurrency round measured.
pub struct Round {
    pub add_ms: f64,
    pub del_ms: f64,
}

/// `level` simultaneous ADDs (one thread each, all released by a barrier) into the first
/// `level` namespaces of `ctrs`, then `level` simultaneous DELs; verifies the outcome.
pub fn concurrent_round(
    sub: &Subject,
    host: &str,
    ctrs: &[String],
    level: usize,
    round: usize,
    leftovers: &dyn Fn() -> Result<(), String>,
) -> Result<Round, String> {
    let go = Barrier::new(level + 1);
    let (adds, add_ms) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..level)
            .map(|i| {
                let (go, netns) = (&go, &ctrs[i]);
                s.spawn(move || {
                    enter_netns(host)?;
                    go.wait();
                    let id = format!("pnm-c{level}-{round}-{i}");
                    sub.add(&id, netns, "eth0", &Value::Null, "")
                        .map(|(a, _)| a)
                })
            })
            .collect();
        go.wait();
        let t = Instant::now();
        let out: Vec<Result<Attached, String>> =
            hs.into_iter().map(|h| h.join().unwrap()).collect();
        (out, t.elapsed().as_secs_f64() * 1e3)
    });
    let (ok, errs): (Vec<_>, Vec<_>) = adds.into_iter().partition(|r| r.is_ok());
    let ok: Vec<Attached> = ok.into_iter().map(Result::unwrap).collect();
    let go = Barrier::new(ok.len() + 1);
    let (dels, del_ms) = std::thread::scope(|s| {
        let hs: Vec<_> = ok
            .iter()
            .map(|a| {
                let go = &go;
                s.spawn(move || {
                    enter_netns(host)?;
                    go.wait();
                    sub.del(a)
                })
            })
            .collect();
        go.wait();
        let t = Instant::now();
        let out: Vec<Result<Vec<Run>, String>> =
            hs.into_iter().map(|h| h.join().unwrap()).collect();
        (out, t.elapsed().as_secs_f64() * 1e3)
    });
    if let Some(Err(e)) = errs.into_iter().next() {
        return Err(format!("{} concurrent ADD ({level}): {e}", sub.key));
    }
    let mut seen = HashSet::new();
    for a in &ok {
        let ips = addresses(&a.result);
        if ips.is_empty() {
            return Err(format!(
                "{} concurrent ADD: {} got no address",
                sub.key, a.id
            ));
        }
        for ip in ips {
            if !seen.insert(ip.clone()) {
                return Err(format!("{} concurrent ADD: {ip} handed out twice", sub.key));
            }
        }
    }
    if let Some(Err(e)) = dels.into_iter().find(|r| r.is_err()) {
        return Err(format!("{} concurrent DEL ({level}): {e}", sub.key));
    }
    leftovers()?;
    Ok(Round { add_ms, del_ms })
}
