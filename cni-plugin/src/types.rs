//! CNI wire types: network configuration and results, converted to and from every supported
//! spec version.
//!
//! Invariant: domain values ([`CniResult`], [`NetConf`]) are version-independent; the wire shape
//! of a version (`ips[].version` below 1.0.0, the 1.1 optional fields) is decided only here.

use crate::error::CniError;
use crate::version::CniVersion;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// An interface created or touched by an attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the subnet's prefix length, e.g. `10.1.0.5/24`.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`]; absent in IPAM results.
    pub interface: Option<usize>,
}

/// A route to install in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route to `dst` with nothing else set.
    pub fn to(dst: IpNetwork) -> Route {
        Route {
            dst,
            gw: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings for the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The result of an ADD (or an IPAM ADD), independent of spec version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Serialize, Deserialize)]
struct WireIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<i64>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Option<Vec<Interface>>,
    #[serde(default)]
    ips: Option<Vec<WireIp>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    /// The result JSON in exactly `version`'s shape.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if !version.has_1_1_fields() {
                        i.mtu = None;
                        i.socket_path = None;
                        i.pci_id = None;
                    }
                    serde_json::to_value(i).expect("interface serialises")
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let wire = WireIp {
                        version: version
                            .has_ip_version_field()
                            .then(|| if ip.address.is_ipv4() { "4" } else { "6" }.to_string()),
                        address: ip.address.to_string(),
                        gateway: ip.gateway.map(|g| g.to_string()),
                        interface: ip.interface.map(|i| i as i64),
                    };
                    serde_json::to_value(wire).expect("ip serialises")
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if !version.has_1_1_fields() {
                        r.mtu = None;
                        r.advmss = None;
                        r.priority = None;
                        r.table = None;
                        r.scope = None;
                    }
                    serde_json::to_value(r).expect("route serialises")
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).expect("dns serialises"),
            );
        }
        Value::Object(out)
    }

    /// Parse a result of any supported version (0.3.0 … 1.1.0), as another plugin or a runtime
    /// printed it. Tolerates a missing `interfaces`, `interface: -1`, and `dns: {}`.
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let wire: WireResult = serde_json::from_value(v.clone())
            .map_err(|e| CniError::decode(format!("failed to decode result: {e}")))?;
        let mut ips = Vec::new();
        for ip in wire.ips.unwrap_or_default() {
            let address: IpNetwork = ip.address.parse().map_err(|e| {
                CniError::decode(format!("result: invalid address {:?}: {e}", ip.address))
            })?;
            let gateway = match ip.gateway.as_deref() {
                None | Some("") => None,
                Some(g) => Some(g.parse::<IpAddr>().map_err(|e| {
                    CniError::decode(format!("result: invalid gateway {g:?}: {e}"))
                })?),
            };
            let interface = ip.interface.and_then(|i| usize::try_from(i).ok());
            ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        Ok(CniResult {
            interfaces: wire.interfaces.unwrap_or_default(),
            ips,
            routes: wire.routes.unwrap_or_default(),
            dns: wire.dns.unwrap_or_default(),
        })
    }

    /// Parse result bytes printed by a plugin.
    pub fn from_slice(bytes: &[u8]) -> Result<CniResult, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("failed to decode result: {e}")))?;
        CniResult::from_json(&v)
    }
}

/// One attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The fields of a plugin configuration every plugin understands. Plugin-specific keys stay in
/// the raw JSON the plugin receives alongside.
#[derive(Debug, Clone, Default)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub capabilities: Map<String, Value>,
    pub ipam: Option<Value>,
    pub dns: Option<Dns>,
    pub runtime_config: Map<String, Value>,
    pub prev_result: Option<CniResult>,
    pub args: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Decode the common fields; `cniVersion` is taken as given (the dispatcher validates it).
    pub fn from_json(v: &Value) -> Result<NetConf, CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| CniError::decode("network configuration must be a JSON object"))?;
        let string = |key: &str| -> Result<String, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(CniError::decode(format!(
                    "field {key:?} must be a string, got {other}"
                ))),
            }
        };
        let object = |key: &str| -> Result<Map<String, Value>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(m)) => Ok(m.clone()),
                Some(other) => Err(CniError::decode(format!(
                    "field {key:?} must be an object, got {other}"
                ))),
            }
        };
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => None,
            Some(d) => Some(
                serde_json::from_value(d.clone())
                    .map_err(|e| CniError::decode(format!("field \"dns\": {e}")))?,
            ),
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(p) => Some(CniResult::from_json(p).map_err(|e| e.context("prevResult"))?),
        };
        let valid_attachments = match obj
            .get("cni.dev/valid-attachments")
            .or_else(|| obj.get("cni.dev/attachments"))
        {
            None | Some(Value::Null) => None,
            Some(a) => Some(serde_json::from_value(a.clone()).map_err(|e| {
                CniError::decode(format!("field \"cni.dev/valid-attachments\": {e}"))
            })?),
        };
        Ok(NetConf {
            cni_version: string("cniVersion")?,
            name: string("name")?,
            plugin_type: string("type")?,
            capabilities: object("capabilities")?,
            ipam: obj.get("ipam").filter(|v| !v.is_null()).cloned(),
            dns,
            runtime_config: object("runtimeConfig")?,
            prev_result,
            args: obj.get("args").filter(|v| !v.is_null()).cloned(),
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "pn0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
                priority: Some(10),
                ..Route::to("0.0.0.0/0".parse().unwrap())
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn golden_0_4_0_has_ip_versions_and_no_1_1_fields() {
        assert_eq!(
            sample().to_json(CniVersion::V0_4_0),
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [
                    {"name": "pn0", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x"}
                ],
                "ips": [
                    {"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                    {"version": "6", "address": "fd00::5/64", "interface": 1}
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
            })
        );
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1] {
            let j = sample().to_json(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
        }
    }

    #[test]
    fn golden_1_0_0_and_1_1_0() {
        assert_eq!(
            sample().to_json(CniVersion::V1_0_0),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "pn0", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x"}
                ],
                "ips": [
                    {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                    {"address": "fd00::5/64", "interface": 1}
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
            })
        );
        let j = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(j["interfaces"][1]["mtu"], 1500);
        assert_eq!(j["routes"][0]["priority"], 10);
        assert!(j.get("dns").is_none(), "empty dns is omitted");
    }

    #[test]
    fn every_version_round_trips() {
        for v in [
            CniVersion::V0_3_0,
            CniVersion::V0_3_1,
            CniVersion::V0_4_0,
            CniVersion::V1_0_0,
            CniVersion::V1_1_0,
        ] {
            let back = CniResult::from_json(&sample().to_json(v)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn tolerates_foreign_shapes() {
        let r = CniResult::from_json(&json!({
            "ips": [{"version": "4", "address": "203.0.113.2/24", "gateway": "203.0.113.1", "interface": -1}],
            "dns": {}
        }))
        .unwrap();
        assert_eq!(r.ips[0].interface, None);
        assert!(r.interfaces.is_empty());
        assert!(CniResult::from_json(&json!({"ips": [{"address": "nope"}]})).is_err());
    }

    #[test]
    fn netconf_reads_common_fields() {
        let c = NetConf::from_json(&json!({
            "cniVersion": "1.1.0", "name": "n", "type": "plugnet",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"ips": ["10.0.0.9/24"]},
            "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}],
            "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.9/24"}]}
        }))
        .unwrap();
        assert_eq!(c.name, "n");
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
        assert_eq!(c.prev_result.unwrap().ips.len(), 1);
        assert!(NetConf::from_json(&json!({"name": 5})).is_err());
        assert!(NetConf::from_json(&json!([1])).is_err());
    }
}
