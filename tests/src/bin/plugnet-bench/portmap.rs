//! Port-mapping scale at the CNI level: the ADD (and DEL) of one port-mapped container on a
//! host holding 0 other port-mapped containers and on a host holding N, for plugnet
//! (`runtimeConfig.portMappings` in one process) and for the reference bridge followed by the
//! reference `portmap` (two processes, iptables). Four throwaway host namespaces, measured in
//! alternation so machine noise hits all four alike.
//!
//! Invariant: nothing outside the four host namespaces is touched; deleting them removes every
//! rule and link the section made. The filler containers share one namespace per host, one
//! interface each (`e<i>`), which is cheaper to set up than N namespaces and costs the plugins
//! the same per attachment.

use std::path::Path;

use plugnet_tests::Netns;
use serde_json::{json, Value};

use crate::exec::enter_netns;
use crate::latency::Series;
use crate::subjects::{bridge_conf, Driver, Net, Subject};

fn mapping(port: u32) -> Value {
    json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp"}])
}

/// Whether a firewall state directory holds anything (plugnet wrote port-mapping state).
fn has_state(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

struct Host {
    ns: Netns,
    fill: Netns,
    seat: Netns,
    sub: Subject,
    tag: String,
}

/// Runs `f` on a thread inside host `h`.
fn in_host<T: Send>(h: &Host, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let path = h.ns.path();
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&path)?;
            Ok(f())
        })
        .join()
        .unwrap()
    })
}

pub struct Options<'a> {
    pub root: &'a Path,
    pub plugnet_bin: &'a Path,
    pub cni_path: &'a str,
    pub n: usize,
    pub iterations: usize,
}

pub fn run(o: &Options) -> Result<Value, String> {
    let mut hosts = Vec::new();
    for (key, reference) in [("plugnet", false), ("go", true)] {
        for size in ["small", "big"] {
            let dir = o.root.join(format!("pm-{key}-{size}"));
            let fw = dir.join("fw");
            std::fs::create_dir_all(&fw).map_err(|e| format!("mkdir {}: {e}", fw.display()))?;
            let net = Net {
                name: "pnm-pm",
                bridge: "pnmpm0",
                v4: "10.126.0.0/16",
                v6: None,
                data_dir: &dir,
                fw_dir: &fw,
            };
            let bin = if reference {
                Path::new(plugnet_tests::REFERENCE_PLUGINS).join("bridge")
            } else {
                o.plugnet_bin.to_path_buf()
            };
            hosts.push(Host {
                ns: Netns::new("pnm-pmh"),
                fill: Netns::new("pnm-pmf"),
                seat: Netns::new("pnm-pms"),
                sub: Subject {
                    key: key.into(),
                    driver: Driver::Cni {
                        bin,
                        portmap: reference,
                    },
                    conf: bridge_conf(&net, reference),
                    cni_path: o.cni_path.into(),
                },
                tag: format!("{key}.{size}"),
            });
        }
    }
    // Every host: one container without mappings (the bridge exists, as on a live host);
    // the "big" hosts: N port-mapped containers on top.
    let mut fill_s = serde_json::Map::new();
    let mut plugnet_maps = true;
    for h in &hosts {
        let t = std::time::Instant::now();
        let (fill, n) = (h.fill.path(), if h.tag.ends_with("big") { o.n } else { 0 });
        let supported = in_host(h, || -> Result<bool, String> {
            h.sub.add("pnm-anchor", &fill, "a0", &Value::Null, "")?;
            for i in 0..n {
                let id = format!("pnm-fill-{i}");
                h.sub
                    .add(&id, &fill, &format!("e{i}"), &mapping(10000 + i as u32), "")?;
                if i == 0 && h.sub.key == "plugnet" && !has_state(&fw_dir(h)) {
                    return Ok(false);
                }
            }
            Ok(true)
        })??;
        if !supported {
            plugnet_maps = false;
        }
        fill_s.insert(h.tag.clone(), json!(t.elapsed().as_secs_f64()));
    }
    let mut s = Series::default();
    for k in 0..o.iterations {
        for j in 0..hosts.len() {
            let h = &hosts[(k + j) % hosts.len()];
            if h.sub.key == "plugnet" && !plugnet_maps {
                continue;
            }
            let seat = h.seat.path();
            in_host(h, || -> Result<(), String> {
                let id = format!("pnm-pm-{k}");
                let (a, runs) = h.sub.add(&id, &seat, "eth0", &mapping(30000), "")?;
                s.push(format!("{}.add", h.tag), &runs);
                let runs = h.sub.del(&a)?;
                s.push(format!("{}.del", h.tag), &runs);
                Ok(())
            })??;
        }
    }
    Ok(json!({
        "n": o.n,
        "iterations": o.iterations,
        "plugnet_supported": plugnet_maps,
        "fill_seconds": fill_s,
        "samples": s.to_json(),
    }))
}

fn fw_dir(h: &Host) -> std::path::PathBuf {
    Path::new(
        h.sub.conf["firewallStateDir"]
            .as_str()
            .unwrap_or("/nonexistent"),
    )
    .to_path_buf()
}
