//! The things compared: a CNI main plugin with its config (plugnet + plugnet-ipam, Debian's Go
//! bridge + host-local, optionally followed by the reference `portmap`) and netavark. One
//! `add`/`check`/`del` vocabulary over all of them so every section interleaves them alike.
//!
//! Invariant: the plugnet and Go configs of a pair differ only in `type`, the IPAM `type`, the
//! network name, the bridge name and the subnet (two networks must coexist in one namespace).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::exec::{cni, spawn, Call, Run};

/// How a subject is driven.
pub enum Driver {
    /// A CNI main plugin; `portmap` chains the reference portmap plugin after it.
    Cni { bin: PathBuf, portmap: bool },
    /// netavark setup/teardown with a network JSON of ours (`--config` dir for its state).
    Netavark { bin: PathBuf, config_dir: PathBuf },
}

pub struct Subject {
    pub key: String,
    pub driver: Driver,
    pub conf: Value,
    pub cni_path: String,
}

/// Parameters of one bridge network.
pub struct Net<'a> {
    pub name: &'a str,
    pub bridge: &'a str,
    pub v4: &'a str,
    pub v6: Option<&'a str>,
    pub data_dir: &'a Path,
    pub fw_dir: &'a Path,
}

/// The conflist entry both CNI subjects share; `reference` picks bridge + host-local.
pub fn bridge_conf(net: &Net, reference: bool) -> Value {
    let mut ranges = vec![json!([{"subnet": net.v4}])];
    if let Some(v6) = net.v6 {
        ranges.push(json!([{"subnet": v6}]));
    }
    let (ty, ipam) = if reference {
        ("bridge", "host-local")
    } else {
        ("plugnet", "plugnet-ipam")
    };
    let mut c = json!({
        "cniVersion": "1.0.0", "name": net.name, "type": ty, "bridge": net.bridge,
        "isGateway": true,
        "ipam": {"type": ipam, "dataDir": net.data_dir, "ranges": ranges},
    });
    if !reference {
        // plugnet extension; keeps the firewall's state out of /var/lib/plugnet.
        c["firewallStateDir"] = json!(net.fw_dir);
    }
    c
}

/// netavark's network options for one container (podman's format, netavark 1.4).
pub fn netavark_opts(net: &Net, container: &str, ip: &str) -> Value {
    let gw = net.v4.replace(".0/24", ".1");
    let id = format!("{:0>64}", hex(net.name));
    json!({
        "container_id": format!("{:0>64}", hex(container)),
        "container_name": container,
        "networks": {net.name: {"interface_name": "eth0", "static_ips": [ip]}},
        "network_info": {net.name: {
            "dns_enabled": false, "driver": "bridge", "id": id, "internal": false,
            "ipv6_enabled": false, "name": net.name, "network_interface": net.bridge,
            "subnets": [{"gateway": gw, "subnet": net.v4}],
            "ipam_options": {"driver": "host-local"}}},
        "port_mappings": [],
    })
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// An attachment made by `add`, needed by `check`/`del`.
pub struct Attached {
    pub id: String,
    pub netns: String,
    pub ifname: String,
    pub result: Value,
    pub portmap_result: Value,
    pub mappings: Value,
    /// netavark: the options it was set up with.
    pub opts: Value,
}

impl Subject {
    fn call<'a>(&'a self, command: &'a str, a: &'a Attached) -> Call<'a> {
        Call {
            command,
            id: &a.id,
            netns: &a.netns,
            ifname: &a.ifname,
            cni_path: &self.cni_path,
        }
    }

    fn with_prev(conf: &Value, prev: &Value) -> Vec<u8> {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        serde_json::to_vec(&c).unwrap()
    }

    fn portmap_conf(&self, mappings: &Value, prev: &Value) -> Vec<u8> {
        let mut c = json!({"cniVersion": self.conf["cniVersion"], "name": self.conf["name"],
            "type": "portmap", "capabilities": {"portMappings": true}, "snat": true,
            "runtimeConfig": {"portMappings": mappings}});
        if !prev.is_null() {
            c["prevResult"] = prev.clone();
        }
        serde_json::to_vec(&c).unwrap()
    }

    /// ADD (or netavark setup). `mappings` is `runtimeConfig.portMappings` (or null); `ip`
    /// is netavark's static address. Returns the attachment and one timing per process.
    pub fn add(
        &self,
        id: &str,
        netns: &str,
        ifname: &str,
        mappings: &Value,
        ip: &str,
    ) -> Result<(Attached, Vec<Run>), String> {
        let mut a = Attached {
            id: id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            result: Value::Null,
            portmap_result: Value::Null,
            mappings: mappings.clone(),
            opts: Value::Null,
        };
        let mut runs = Vec::new();
        match &self.driver {
            Driver::Cni { bin, portmap } => {
                let mut conf = self.conf.clone();
                if !mappings.is_null() && !portmap {
                    conf["runtimeConfig"] = json!({"portMappings": mappings});
                }
                let r = cni(
                    bin,
                    &self.call("ADD", &a),
                    &serde_json::to_vec(&conf).unwrap(),
                )?;
                a.result = r.json();
                if a.result["ips"].as_array().is_none_or(|v| v.is_empty()) {
                    return Err(format!("{} ADD {id}: no address in {}", self.key, a.result));
                }
                runs.push(r);
                if *portmap && !mappings.is_null() {
                    let pm = Path::new(plugnet_tests::REFERENCE_PLUGINS).join("portmap");
                    let r = cni(
                        &pm,
                        &self.call("ADD", &a),
                        &self.portmap_conf(mappings, &a.result),
                    )?;
                    a.portmap_result = r.json();
                    runs.push(r);
                }
            }
            Driver::Netavark { bin, config_dir } => {
                let net = self.conf["networks"]
                    .as_object()
                    .and_then(|m| m.keys().next().cloned())
                    .ok_or("netavark options without a network")?;
                let net = net.as_str();
                let mut opts = self.conf.clone();
                opts["container_id"] = json!(format!("{:0>64}", hex(id)));
                opts["container_name"] = json!(id);
                opts["networks"][net]["static_ips"] = json!([ip]);
                let r = spawn(
                    bin,
                    &[
                        "--config",
                        config_dir.to_str().unwrap(),
                        "--rootless",
                        "false",
                        "setup",
                        netns,
                    ],
                    &[],
                    &serde_json::to_vec(&opts).unwrap(),
                )?;
                a.result = r.json();
                if a.result[net]["interfaces"]["eth0"].is_null() {
                    return Err(format!("netavark setup {id}: {}", a.result));
                }
                a.opts = opts;
                runs.push(r);
            }
        }
        Ok((a, runs))
    }

    /// VERSION (CNI subjects): what a process start costs with no work behind it.
    pub fn version(&self) -> Result<Option<Run>, String> {
        match &self.driver {
            Driver::Cni { bin, .. } => {
                let call = Call {
                    command: "VERSION",
                    id: "",
                    netns: "",
                    ifname: "",
                    cni_path: &self.cni_path,
                };
                cni(bin, &call, br#"{"cniVersion":"1.0.0"}"#).map(Some)
            }
            Driver::Netavark { .. } => Ok(None),
        }
    }

    /// CHECK with the ADD result as `prevResult` (CNI subjects only).
    pub fn check(&self, a: &Attached) -> Result<Run, String> {
        match &self.driver {
            Driver::Cni { bin, .. } => cni(
                bin,
                &self.call("CHECK", a),
                &Self::with_prev(&self.conf, &a.result),
            ),
            Driver::Netavark { .. } => Err("netavark has no CHECK".into()),
        }
    }

    /// DEL (or netavark teardown), in reverse chain order.
    pub fn del(&self, a: &Attached) -> Result<Vec<Run>, String> {
        let mut runs = Vec::new();
        match &self.driver {
            Driver::Cni { bin, portmap } => {
                if *portmap && !a.portmap_result.is_null() {
                    let pm = Path::new(plugnet_tests::REFERENCE_PLUGINS).join("portmap");
                    runs.push(cni(
                        &pm,
                        &self.call("DEL", a),
                        &self.portmap_conf(&a.mappings, &a.portmap_result),
                    )?);
                }
                runs.push(cni(
                    bin,
                    &self.call("DEL", a),
                    &Self::with_prev(&self.conf, &a.result),
                )?);
            }
            Driver::Netavark { bin, config_dir } => {
                runs.push(spawn(
                    bin,
                    &[
                        "--config",
                        config_dir.to_str().unwrap(),
                        "--rootless",
                        "false",
                        "teardown",
                        &a.netns,
                    ],
                    &[],
                    &serde_json::to_vec(&a.opts).unwrap(),
                )?);
            }
        }
        Ok(runs)
    }
}

/// The IPv4 addresses of an ADD result (CNI 1.0 `ips[].address`, netavark `ipnet`).
pub fn addresses(r: &Value) -> Vec<String> {
    let mut out: Vec<String> = r["ips"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|i| i["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        if let Some(m) = r.as_object() {
            for net in m.values() {
                for i in net["interfaces"]
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.values())
                {
                    for s in i["subnets"].as_array().into_iter().flatten() {
                        if let Some(a) = s["ipnet"].as_str() {
                            out.push(a.into());
                        }
                    }
                }
            }
        }
    }
    out
}
