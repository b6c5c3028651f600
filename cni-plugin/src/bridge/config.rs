//! The bridge plugin's configuration: the reference `bridge` plugin's field names and meanings,
//! decoded and checked once, before anything touches the system.

use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;

use crate::error::{CniError, ErrorCode};
use crate::netlink::Mac;
use crate::skel::Request;
use crate::types::Dns;
use crate::validate;

/// The IPAM plugin handled in-process instead of through a second exec.
pub const IN_PROCESS_IPAM: &str = "plugnet-ipam";
const DEFAULT_BRIDGE: &str = "cni0";

/// How the container's interface is connected to the host (`"mode"`, default `"bridge"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A Linux bridge, one veth pair per container on it (the reference `bridge` plugin).
    #[default]
    Bridge,
    /// No bridge: a /32 (/128) per container, a host route to it, a link-local next hop
    /// ([`super::routed`]).
    Routed,
}

/// Who hands out addresses for this network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamKind {
    /// `"ipam": {}` or no `ipam`: layer 2 only, no addresses.
    None,
    /// `plugnet-ipam`, called as a library.
    InProcess,
    /// Any other IPAM plugin, executed through `CNI_PATH`.
    Delegate(String),
}

#[derive(Debug, Clone)]
pub struct BridgeConf {
    pub mode: Mode,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    pub vlan: Option<u16>,
    pub vlan_trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    pub enable_dad: bool,
    pub macspoofchk: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// plugnet extension: the nftables firewall's state directory (default
    /// `/var/lib/plugnet/firewall`); one per host network namespace.
    pub firewall_state_dir: Option<String>,
    pub ipam: IpamKind,
    pub dns: Option<Dns>,
    /// The container interface's MAC, from `runtimeConfig.mac`, `args.cni.mac` or `CNI_ARGS`
    /// `MAC=` (first found, in that order, as the reference plugin does).
    pub mac: Option<Mac>,
    /// `CNI_ARGS` `PLUGNET_HANDOFF_IFNAME=<name>` (plugnet-shim): leave the container end of
    /// the pair in the plugin's own namespace under this name, unconfigured, for a runtime that
    /// moves and configures it itself (Docker). Saves the staging namespace and a netns move.
    pub handoff: Option<String>,
}

/// The `CNI_ARGS` key of [`BridgeConf::handoff`].
pub const HANDOFF_ARG: &str = "PLUGNET_HANDOFF_IFNAME";

/// The firewall state directory a plugnet plugin configuration names (`firewallStateDir`, else
/// [`crate::firewall::DEFAULT_STATE_DIR`]; a value that is not a string counts as absent), read
/// without decoding the rest: for tools that find plugnet's state from a conflist (the shim).
pub fn firewall_state_dir(plugin: &Value) -> PathBuf {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        firewall_state_dir: Option<String>,
    }
    let named = Wire::deserialize(plugin)
        .ok()
        .and_then(|w| w.firewall_state_dir);
    PathBuf::from(
        named
            .as_deref()
            .unwrap_or(crate::firewall::DEFAULT_STATE_DIR),
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Wire {
    mode: Option<String>,
    bridge: Option<String>,
    is_gateway: bool,
    is_default_gateway: bool,
    force_address: bool,
    ip_masq: bool,
    ip_masq_backend: Option<String>,
    mtu: Option<i64>,
    hairpin_mode: bool,
    promisc_mode: bool,
    vlan: Option<i64>,
    vlan_trunk: Option<Vec<Trunk>>,
    preserve_default_vlan: bool,
    enabledad: bool,
    macspoofchk: bool,
    disable_container_interface: bool,
    port_isolation: bool,
    firewall_state_dir: Option<String>,
}

#[derive(Deserialize)]
struct Trunk {
    id: Option<i64>,
    #[serde(rename = "minID")]
    min_id: Option<i64>,
    #[serde(rename = "maxID")]
    max_id: Option<i64>,
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

fn vlan_id(v: i64) -> Result<u16, CniError> {
    if (0..=4094).contains(&v) {
        Ok(v as u16)
    } else {
        Err(bad(format!(
            "invalid VLAN ID {v} (must be between 0 and 4094)"
        )))
    }
}

impl BridgeConf {
    pub fn from_request(req: &Request) -> Result<BridgeConf, CniError> {
        let w: Wire = serde_json::from_value(req.raw.clone())
            .map_err(|e| CniError::decode(format!("failed to load netconf: {e}")))?;
        let bridge_only = bridge_only_fields(&w);
        let bridge = w.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate::interface_name(&bridge).map_err(|e| bad(format!("bridge name: {e}")))?;
        if w.hairpin_mode && w.promisc_mode {
            return Err(bad(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        let mtu = match w.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            Some(m) => {
                return Err(bad(format!(
                    "invalid MTU {m} (must be between 68 and 65535)"
                )))
            }
        };
        let vlan = match w.vlan {
            None | Some(0) => None,
            Some(v) => Some(vlan_id(v)?),
        };
        let mut vlan_trunk = Vec::new();
        for t in w.vlan_trunk.unwrap_or_default() {
            match (t.id, t.min_id, t.max_id) {
                (Some(id), None, None) => vlan_trunk.push(vlan_id(id)?),
                (None, Some(a), Some(b)) => {
                    let (a, b) = (vlan_id(a)?, vlan_id(b)?);
                    if a > b {
                        return Err(bad(format!("invalid vlanTrunk range {a}-{b}")));
                    }
                    vlan_trunk.extend(a..=b);
                }
                _ => return Err(bad("vlanTrunk entries need either id or minID and maxID")),
            }
        }
        if let Some(b) = w.ip_masq_backend.as_deref() {
            if b != "iptables" && b != "nftables" {
                return Err(bad(format!(
                    "invalid ipMasqBackend {b:?} (must be \"iptables\" or \"nftables\")"
                )));
            }
        }
        let ipam = ipam_kind(req.raw.get("ipam"))?;
        if w.disable_container_interface && ipam != IpamKind::None {
            return Err(bad(
                "disableContainerInterface=true is incompatible with IPAM configuration",
            ));
        }
        let mode = match w.mode.as_deref() {
            None | Some("bridge") => Mode::Bridge,
            Some("routed") => Mode::Routed,
            Some(m) => {
                return Err(bad(format!(
                    "invalid mode {m:?} (must be \"bridge\" or \"routed\")"
                )))
            }
        };
        if mode == Mode::Routed {
            refuse_bridge_only(&bridge_only)?;
        }
        Ok(BridgeConf {
            mode,
            bridge,
            is_gateway: w.is_gateway || w.is_default_gateway,
            is_default_gateway: w.is_default_gateway,
            force_address: w.force_address,
            ip_masq: w.ip_masq,
            mtu,
            hairpin_mode: w.hairpin_mode,
            promisc_mode: w.promisc_mode,
            vlan,
            vlan_trunk,
            preserve_default_vlan: w.preserve_default_vlan,
            enable_dad: w.enabledad,
            macspoofchk: w.macspoofchk,
            disable_container_interface: w.disable_container_interface,
            port_isolation: w.port_isolation,
            firewall_state_dir: w.firewall_state_dir,
            ipam,
            dns: req.config.dns.clone().filter(|d| !d.is_empty()),
            mac: requested_mac(req)?,
            handoff: handoff(req)?,
        })
    }

    /// Does this configuration need VLAN filtering on the bridge?
    pub fn uses_vlans(&self) -> bool {
        self.vlan.is_some() || !self.vlan_trunk.is_empty()
    }
}

/// The bridge-only fields set in a configuration, by their wire names.
fn bridge_only_fields(w: &Wire) -> Vec<&'static str> {
    [
        ("hairpinMode", w.hairpin_mode),
        ("promiscMode", w.promisc_mode),
        ("vlan", w.vlan.is_some_and(|v| v != 0)),
        (
            "vlanTrunk",
            w.vlan_trunk.as_ref().is_some_and(|t| !t.is_empty()),
        ),
        ("portIsolation", w.port_isolation),
        // A routed container's link is its own: no other container receives its frames.
        ("macspoofchk", w.macspoofchk),
        ("disableContainerInterface", w.disable_container_interface),
        ("bridge", w.bridge.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

fn ipam_kind(ipam: Option<&Value>) -> Result<IpamKind, CniError> {
    let Some(ipam) = ipam.filter(|v| !v.is_null()) else {
        return Ok(IpamKind::None);
    };
    let obj = ipam
        .as_object()
        .ok_or_else(|| CniError::decode("field \"ipam\" must be an object"))?;
    match obj.get("type") {
        None | Some(Value::Null) => Ok(IpamKind::None),
        Some(Value::String(t)) if t.is_empty() => Ok(IpamKind::None),
        Some(Value::String(t)) if t == IN_PROCESS_IPAM => Ok(IpamKind::InProcess),
        Some(Value::String(t)) => {
            if t.contains('/') {
                return Err(bad(format!("invalid IPAM plugin type {t:?}")));
            }
            Ok(IpamKind::Delegate(t.clone()))
        }
        Some(other) => Err(CniError::decode(format!(
            "field \"ipam.type\" must be a string, got {other}"
        ))),
    }
}

fn handoff(req: &Request) -> Result<Option<String>, CniError> {
    match req.args.get(HANDOFF_ARG).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(n) => {
            validate::interface_name(n)
                .map_err(|e| CniError::new(ErrorCode::InvalidEnv, format!("{HANDOFF_ARG}: {e}")))?;
            Ok(Some(n.to_string()))
        }
    }
}

fn requested_mac(req: &Request) -> Result<Option<Mac>, CniError> {
    let runtime = req.config.runtime_config.get("mac").and_then(Value::as_str);
    let args = req
        .config
        .args
        .as_ref()
        .and_then(|a| a.pointer("/cni/mac"))
        .and_then(Value::as_str);
    let env = req.args.get("MAC");
    match runtime.or(args).or(env).filter(|m| !m.is_empty()) {
        None => Ok(None),
        Some(m) => {
            let mac: Mac = m.parse().map_err(bad)?;
            if mac.0[0] & 1 == 1 {
                return Err(bad(format!("MAC address {m} is a multicast address")));
            }
            Ok(Some(mac))
        }
    }
}

/// Fields that only mean something with a bridge are refused in routed mode rather than
/// silently ignored.
pub fn refuse_bridge_only(fields: &[&str]) -> Result<(), CniError> {
    match fields.first() {
        None => Ok(()),
        Some(f) => Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("{f} has no meaning in routed mode (there is no bridge)"),
        )
        .details(format!(
            "remove {} or use \"mode\": \"bridge\"",
            fields.join(", ")
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::skel::Command;
    use serde_json::json;

    #[test]
    fn firewall_state_dir_is_named_or_the_default() {
        let dir = |v: Value| firewall_state_dir(&v).display().to_string();
        assert_eq!(
            dir(json!({"type":"plugnet","firewallStateDir":"/tmp/x"})),
            "/tmp/x"
        );
        assert_eq!(
            dir(json!({"type":"plugnet"})),
            crate::firewall::DEFAULT_STATE_DIR
        );
        assert_eq!(
            dir(json!({"firewallStateDir":7})),
            crate::firewall::DEFAULT_STATE_DIR
        );
    }

    pub(crate) fn request(raw: Value, cni_args: &str) -> Request {
        let config = crate::types::NetConf::from_json(&raw).unwrap();
        Request {
            command: Command::Add,
            version: crate::version::CniVersion::parse(&config.cni_version).unwrap(),
            container_id: "c1".into(),
            netns: None,
            ifname: "eth0".into(),
            args: crate::args::CniArgs::parse(cni_args, &["IP", "MAC"]).unwrap(),
            path: vec![],
            config,
            stdin: serde_json::to_vec(&raw).unwrap(),
            raw,
        }
    }

    #[test]
    fn reference_conf_is_accepted() {
        let raw = json!({
            "cniVersion": "1.0.0", "name": "n", "type": "plugnet", "bridge": "pnb0",
            "isDefaultGateway": true, "forceAddress": false, "ipMasq": false, "mtu": 1400,
            "hairpinMode": true, "capabilities": {"mac": true},
            "ipam": {"type": "host-local", "subnet": "10.50.0.0/24"},
            "dns": {"nameservers": ["10.50.0.1"]}
        });
        let c = BridgeConf::from_request(&request(raw, "")).unwrap();
        assert_eq!(c.bridge, "pnb0");
        assert!(c.is_gateway && c.is_default_gateway && c.hairpin_mode);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ipam, IpamKind::Delegate("host-local".into()));
        assert_eq!(c.dns.unwrap().nameservers, vec!["10.50.0.1"]);
    }

    #[test]
    fn defaults_and_in_process_ipam() {
        let raw = json!({"cniVersion": "0.4.0", "name": "n", "type": "plugnet",
                         "ipam": {"type": "plugnet-ipam"}});
        let c = BridgeConf::from_request(&request(raw, "")).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway);
        assert_eq!(c.ipam, IpamKind::InProcess);
        let raw = json!({"cniVersion": "0.4.0", "name": "n", "type": "plugnet", "ipam": {}});
        assert_eq!(
            BridgeConf::from_request(&request(raw, "")).unwrap().ipam,
            IpamKind::None
        );
    }

    #[test]
    fn bad_values_are_config_errors() {
        for (extra, needle) in [
            (json!({"hairpinMode": true, "promiscMode": true}), "hairpin"),
            (json!({"vlan": 5000}), "VLAN ID 5000"),
            (json!({"mtu": 20}), "MTU"),
            (json!({"bridge": "a-very-long-bridge-name"}), "bridge name"),
            (json!({"vlanTrunk": [{"minID": 9, "maxID": 3}]}), "range"),
            (json!({"ipMasqBackend": "pf"}), "ipMasqBackend"),
            (
                json!({"disableContainerInterface": true, "ipam": {"type": "x"}}),
                "incompatible",
            ),
        ] {
            let mut raw = json!({"cniVersion": "1.0.0", "name": "n", "type": "plugnet"});
            raw.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let e = BridgeConf::from_request(&request(raw, "")).unwrap_err();
            assert!(e.msg.contains(needle), "{needle}: {}", e.msg);
            assert!(
                matches!(e.code, ErrorCode::InvalidConfig | ErrorCode::InvalidEnv),
                "{e:?}"
            );
        }
        let raw = json!({"cniVersion": "1.0.0", "name": "n", "type": "plugnet", "mtu": "big"});
        assert_eq!(
            BridgeConf::from_request(&request(raw, ""))
                .unwrap_err()
                .code,
            ErrorCode::Decode
        );
    }

    #[test]
    fn mac_precedence_runtime_then_args_then_env() {
        let base = json!({"cniVersion": "1.0.0", "name": "n", "type": "plugnet",
            "runtimeConfig": {"mac": "02:00:00:00:00:01"},
            "args": {"cni": {"mac": "02:00:00:00:00:02"}}});
        let c = BridgeConf::from_request(&request(base.clone(), "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:01");
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove("runtimeConfig");
        let c = BridgeConf::from_request(&request(b.clone(), "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:02");
        b.as_object_mut().unwrap().remove("args");
        let c = BridgeConf::from_request(&request(b, "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:03");
        let raw = json!({"cniVersion": "1.0.0", "name": "n", "type": "plugnet"});
        assert!(BridgeConf::from_request(&request(raw.clone(), "MAC=01:00:00:00:00:03")).is_err());
        assert!(BridgeConf::from_request(&request(raw, "MAC=nope")).is_err());
    }

    #[test]
    fn trunk_ranges_expand() {
        let raw = json!({"cniVersion": "1.0.0", "name": "n", "type": "plugnet",
            "vlanTrunk": [{"id": 7}, {"minID": 10, "maxID": 12}]});
        let c = BridgeConf::from_request(&request(raw, "")).unwrap();
        assert_eq!(c.vlan_trunk, vec![7, 10, 11, 12]);
        assert!(c.uses_vlans());
    }

    #[test]
    fn bridge_only_fields_are_refused() {
        assert!(refuse_bridge_only(&[]).is_ok());
        let e = refuse_bridge_only(&["vlan", "hairpinMode"]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("vlan"), "{}", e.msg);
    }
}
