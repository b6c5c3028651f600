//! The bridge plugin's optional features — `ipMasq`, port mappings (`portMappings`
//! capability), egress rules (`netOut`), source MAC checks (`macspoofchk`) and bandwidth (`bandwidth` capability or the reference
//! bandwidth plugin's config fields) — translated from the request into [`crate::firewall`] and
//! [`crate::tc`] calls.
//!
//! Invariants: a request that uses none of them costs no firewall or tc work on ADD (no state
//! file, no netlink round trip); DEL finds what ADD installed from (network, container id,
//! ifname) alone, without the container's namespace; firewall calls run on the calling thread,
//! which is in the host namespace.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::config::BridgeConf;
use crate::attachment::{is_ifb_name, AttachmentId};
use crate::error::{CniError, ErrorCode};
use crate::firewall::{self, Attachment, Firewall, FirewallError, NetOut, PortMapping};
use crate::netlink::Netlink;
use crate::skel::Request;
use crate::tc::{self, Bandwidth, TcError};
use crate::types::CniResult;

/// What one attachment asks for beyond the plain bridge.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub ip_masq: bool,
    pub port_mappings: Vec<PortMapping>,
    pub net_out: Option<NetOut>,
    /// `macspoofchk`: the container may send only from its interface's MAC.
    pub mac_spoof_check: bool,
    pub bandwidth: Option<Bandwidth>,
    /// The firewall's state directory (`firewallStateDir`, default
    /// [`firewall::DEFAULT_STATE_DIR`]).
    pub state_dir: PathBuf,
}

/// The plugin-config fields this module reads (the rest of the config is [`BridgeConf`]'s).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Wire {
    net_out: Option<Value>,
    ingress_rate: Option<u64>,
    ingress_burst: Option<u64>,
    egress_rate: Option<u64>,
    egress_burst: Option<u64>,
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

fn decode<T: DeserializeOwned>(what: &str, v: &Value) -> Result<T, CniError> {
    serde_json::from_value(v.clone()).map_err(|e| bad(format!("{what}: {e}")))
}

impl Features {
    /// Reads the features from the request: `runtimeConfig` (capabilities) wins over the
    /// plugin config's own fields, as the reference portmap/bandwidth plugins do.
    pub fn from_request(req: &Request, conf: &BridgeConf) -> Result<Features, CniError> {
        let w: Wire = serde_json::from_value(req.raw.clone())
            .map_err(|e| CniError::decode(format!("failed to load netconf: {e}")))?;
        let rc = &req.config.runtime_config;
        let port_mappings: Vec<PortMapping> = match rc.get("portMappings") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => decode("runtimeConfig.portMappings", v)?,
        };
        let net_out: Option<NetOut> = match rc.get("netOut").or(w.net_out.as_ref()) {
            None | Some(Value::Null) => None,
            Some(v) => Some(decode("netOut", v)?),
        };
        if let Some(n) = &net_out {
            n.validate().map_err(|e| bad(e.to_string()))?;
        }
        let bandwidth = match rc.get("bandwidth") {
            Some(v) if !v.is_null() => Some(decode::<Bandwidth>("runtimeConfig.bandwidth", v)?),
            _ => Some(Bandwidth {
                ingress_rate: w.ingress_rate.unwrap_or(0),
                ingress_burst: w.ingress_burst.unwrap_or(0),
                egress_rate: w.egress_rate.unwrap_or(0),
                egress_burst: w.egress_burst.unwrap_or(0),
            }),
        }
        .filter(|b| b.shapes_ingress() || b.shapes_egress());
        if let Some(b) = &bandwidth {
            b.validate().map_err(|e| bad(e.to_string()))?;
        }
        Ok(Features {
            ip_masq: conf.ip_masq,
            port_mappings,
            net_out,
            mac_spoof_check: conf.macspoofchk,
            bandwidth,
            state_dir: PathBuf::from(
                conf.firewall_state_dir
                    .as_deref()
                    .unwrap_or(firewall::DEFAULT_STATE_DIR),
            ),
        })
    }

    /// Does this attachment need nftables rules?
    pub fn uses_firewall(&self) -> bool {
        self.ip_masq
            || !self.port_mappings.is_empty()
            || self.net_out.is_some()
            || self.mac_spoof_check
    }

    pub fn firewall(&self) -> Firewall {
        Firewall::at(&self.state_dir)
    }

    /// The firewall's view of the attachment, from the (final or previous) result's addresses
    /// on the container interface and, with `macspoofchk`, its MAC; `None` when no firewall
    /// work is asked for, or when only `ipMasq` is and there are no addresses (L2 only: nothing
    /// to masquerade, as in the reference plugin). Port mappings whose `hostIP` is of a family
    /// the container lacks are left out, as the reference portmap plugin does.
    pub fn attachment(
        &self,
        conf: &BridgeConf,
        req: &Request,
        host_veth: &str,
        result: &CniResult,
    ) -> Result<Option<Attachment>, CniError> {
        let sandbox = result
            .interfaces
            .iter()
            .position(|i| i.name == req.ifname && i.sandbox.is_some());
        let container_ips: Vec<_> = result
            .ips
            .iter()
            .filter(|ip| sandbox.is_none() || ip.interface == sandbox)
            .map(|ip| ip.address)
            .collect();
        let source_mac = if self.mac_spoof_check {
            let mac = sandbox
                .and_then(|i| result.interfaces[i].mac.as_deref())
                .ok_or_else(|| {
                    CniError::internal(format!(
                        "macspoofchk: the result names no MAC for interface {}",
                        req.ifname
                    ))
                })?;
            Some(mac.parse().map_err(|e| {
                CniError::internal(format!("macspoofchk: the result's MAC {mac:?}: {e}"))
            })?)
        } else {
            None
        };
        if container_ips.is_empty() {
            if !self.port_mappings.is_empty() || self.net_out.is_some() {
                return Err(bad(
                    "portMappings and netOut need container addresses (configure ipam)",
                ));
            }
            // L2 only: nothing to masquerade, only a MAC to check.
            if source_mac.is_none() {
                return Ok(None);
            }
        }
        // Docker coexistence: where the host's iptables FORWARD drops the container's traffic
        // (any host Docker has run on), or may come to (forwarding is off, as on a bridge
        // without a gateway in that family: a dockerd started later turns it on and sets
        // DROP), an attachment without firewall features is still recorded, bare, so its
        // bridge gets plugnet's accept rules in the host firewall with its first attachment and
        // loses them with its last. Only the families the container uses are asked about;
        // elsewhere featureless attachments cost nothing more.
        if !self.uses_firewall() {
            let v4 = container_ips.iter().any(|n| n.is_ipv4());
            let v6 = container_ips.iter().any(|n| n.is_ipv6());
            if !firewall::host_forward_may_drop(v4, v6) {
                return Ok(None);
            }
        }
        let port_mappings = self
            .port_mappings
            .iter()
            .filter(|pm| match pm.host_ip {
                None => true,
                Some(h) => container_ips.iter().any(|c| c.is_ipv4() == h.is_ipv4()),
            })
            .cloned()
            .collect();
        Ok(Some(Attachment {
            network: req.config.name.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            // Routed mode has no bridge: the host veth is the container's own uplink, which the
            // firewall reads as a routed attachment.
            bridge: match conf.mode {
                super::config::Mode::Bridge => conf.bridge.clone(),
                super::config::Mode::Routed => host_veth.to_string(),
            },
            host_veth: host_veth.to_string(),
            container_ips,
            ip_masq: self.ip_masq,
            port_mappings,
            net_out: self.net_out.clone(),
            source_mac,
            keep_source_to: crate::ipam::cluster::subnets_of(&req.raw),
        }))
    }
}

/// The ifb device of an attachment.
pub fn ifb(req: &Request) -> String {
    AttachmentId::of(req).ifb()
}

/// ADD, firewall part: installs the attachment's rules (one nftables transaction).
pub fn apply_firewall(fw: &Firewall, att: &Attachment) -> Result<(), CniError> {
    fw.apply(att)
        .map_err(firewall_error("apply firewall rules"))
}

impl Features {
    /// ADD, the part both modes share once the veth and addresses exist: firewall rules, then
    /// shaping, each registering its undo. Does nothing when no feature is asked for.
    pub(super) async fn apply(
        &self,
        conf: &BridgeConf,
        req: &Request,
        host: &Netlink,
        host_name: &str,
        result: &CniResult,
        undo: &mut super::undo::Undo,
    ) -> Result<(), CniError> {
        if let Some(att) = self.attachment(conf, req, host_name, result)? {
            let fw = self.firewall();
            apply_firewall(&fw, &att)?;
            undo.remove_firewall(fw, att);
        }
        if let Some(bw) = &self.bandwidth {
            let ifb = ifb(req);
            undo.remove_shaping(host_name.to_string(), ifb.clone());
            apply_bandwidth(host, host_name, &ifb, bw).await?;
        }
        Ok(())
    }
}

/// ADD, tc part: shapes the host veth (and its ifb) through the plugin's host connection.
pub async fn apply_bandwidth(
    host: &Netlink,
    host_veth: &str,
    ifb: &str,
    bw: &Bandwidth,
) -> Result<(), CniError> {
    tc::apply(host, host_veth, ifb, bw)
        .await
        .map_err(tc_error("apply bandwidth"))
}

/// DEL, firewall part: starts removing the attachment's rules on a thread of its own when the
/// firewall's state records it (one `stat`: the state, not today's config, says what ADD
/// installed). The caller deletes the veth meanwhile — independent work: a bridge's last
/// attachment runs `iptables-restore` (10-25 ms) and a veth deletion waits for an RCU grace
/// period (13-22 ms) — and joins with [`finish_firewall_removal`] before releasing addresses.
pub fn start_firewall_removal(
    feats: &Features,
    req: &Request,
) -> Option<std::thread::JoinHandle<Result<(), String>>> {
    let fw = feats.firewall();
    let (net, cid, ifname) = (
        req.config.name.clone(),
        req.container_id.clone(),
        req.ifname.clone(),
    );
    if !fw.is_recorded(&net, &cid, &ifname) {
        return None;
    }
    Some(std::thread::spawn(move || {
        fw.remove(&net, &cid, &ifname)
            .map_err(|e| format!("remove firewall rules: {e}"))
    }))
}

/// Waits for [`start_firewall_removal`]; its failure goes into `errors`.
pub fn finish_firewall_removal(
    removal: Option<std::thread::JoinHandle<Result<(), String>>>,
    errors: &mut Vec<String>,
) {
    match removal.map(|h| h.join()) {
        None | Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => errors.push(e),
        Some(Err(_)) => errors.push("remove firewall rules: the removal thread panicked".into()),
    }
}

/// DEL, shaping part: the ifb by name (the veth's own qdiscs go with the veth). Errors are
/// collected into `errors`.
pub async fn del_shaping(
    feats: &Features,
    req: &Request,
    host: &Netlink,
    host_veth: &str,
    errors: &mut Vec<String>,
) {
    let ifb = ifb(req);
    if feats.bandwidth.is_some() {
        if let Err(e) = tc::remove(host, host_veth, &ifb).await {
            errors.push(format!("remove bandwidth: {e}"));
        }
    } else {
        match host.del_link_by_name(&ifb).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(format!("remove bandwidth: {e}")),
        }
    }
}

/// CHECK: the rules and qdiscs of the attachment are in place.
pub async fn check(
    feats: &Features,
    conf: &BridgeConf,
    req: &Request,
    host: &Netlink,
    host_veth: &str,
    prev: &CniResult,
) -> Result<(), CniError> {
    if let Some(att) = feats.attachment(conf, req, host_veth, prev)? {
        feats
            .firewall()
            .check(&att)
            .map_err(firewall_error("check firewall rules"))?;
    }
    if let Some(bw) = &feats.bandwidth {
        tc::check(host, host_veth, &ifb(req), bw)
            .await
            .map_err(tc_error("check bandwidth"))?;
    }
    Ok(())
}

/// GC: drops firewall state of attachments not in the valid list and deletes plugnet ifb
/// devices that belong to none of them.
pub async fn gc(
    feats: &Features,
    req: &Request,
    host: &Netlink,
    valid: &[(String, String)],
) -> Result<(), CniError> {
    let mut errors = Vec::new();
    let fw = feats.firewall();
    if feats.state_dir.exists() {
        if let Err(e) = fw.gc(&req.config.name, valid) {
            errors.push(format!("firewall GC: {e}"));
        }
    }
    // ifb names are digests of (network, id, ifname): keep those of valid attachments of this
    // network, and those some other network's recorded attachment still owns.
    let mut keep: std::collections::HashSet<String> = valid
        .iter()
        .map(|(c, i)| AttachmentId::new(&req.config.name, c, i).ifb())
        .collect();
    if let Ok(all) = fw.list() {
        keep.extend(
            all.iter()
                .filter(|a| a.network != req.config.name)
                .map(|a| AttachmentId::new(&a.network, &a.container_id, &a.ifname).ifb()),
        );
    }
    match host.links().await {
        Ok(links) => {
            for l in links {
                if is_ifb_name(&l.name)
                    && !keep.contains(&l.name)
                    && l.kind.as_deref() == Some("ifb")
                {
                    match host.del_link(l.index).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => errors.push(format!("delete stale ifb {}: {e}", l.name)),
                    }
                }
            }
        }
        Err(e) => errors.push(format!("list links: {e}")),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(errors.join("; ")))
    }
}

/// Firewall errors as CNI errors: bad input is a config error (7), a taken host port is
/// "try again later"-free internal error naming the conflict, the rest internal (999).
fn firewall_error(step: &'static str) -> impl Fn(FirewallError) -> CniError {
    move |e| match &e {
        FirewallError::Invalid(_) => bad(format!("{step}: {e}")),
        _ => CniError::internal(format!("{step}: {e}")),
    }
}

fn tc_error(step: &'static str) -> impl Fn(TcError) -> CniError {
    move |e| match &e {
        TcError::Invalid(_) => bad(format!("{step}: {e}")),
        _ => CniError::internal(format!("{step}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::tests::request;
    use crate::types::{Interface, IpConfig};
    use serde_json::json;

    fn feats(raw: Value) -> Result<Features, CniError> {
        let req = request(raw, "");
        let conf = BridgeConf::from_request(&req)?;
        Features::from_request(&req, &conf)
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "type": "plugnet", "bridge": "pnb0"})
    }

    #[test]
    fn nothing_asked_means_no_work() {
        let f = feats(base()).unwrap();
        assert!(!f.uses_firewall());
        assert!(f.bandwidth.is_none());
        assert_eq!(f.state_dir, PathBuf::from(firewall::DEFAULT_STATE_DIR));
        // Zero rates are "not limited", as in the reference bandwidth plugin.
        let mut raw = base();
        raw["runtimeConfig"] = json!({"bandwidth": {"ingressRate": 0, "egressRate": 0}});
        assert!(feats(raw).unwrap().bandwidth.is_none());
    }

    #[test]
    fn runtime_config_wins_over_config_fields() {
        let mut raw = base();
        raw["ipMasq"] = json!(true);
        raw["netOut"] = json!({"default": "allow"});
        raw["egressRate"] = json!(1000);
        raw["egressBurst"] = json!(800);
        raw["firewallStateDir"] = json!("/tmp/x");
        let f = feats(raw.clone()).unwrap();
        assert!(f.ip_masq && f.uses_firewall());
        assert_eq!(
            f.net_out.as_ref().unwrap().default,
            firewall::NetOutDefault::Allow
        );
        assert_eq!(f.bandwidth.unwrap().egress_rate, 1000);
        assert_eq!(f.state_dir, PathBuf::from("/tmp/x"));
        raw["runtimeConfig"] = json!({
            "netOut": {"default": "deny"},
            "bandwidth": {"ingressRate": 8000, "ingressBurst": 8000},
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]});
        let f = feats(raw).unwrap();
        assert_eq!(f.net_out.unwrap().default, firewall::NetOutDefault::Deny);
        let bw = f.bandwidth.unwrap();
        assert_eq!((bw.ingress_rate, bw.egress_rate), (8000, 0));
        assert_eq!(f.port_mappings[0].host_port, 8080);
    }

    #[test]
    fn bad_features_are_config_errors() {
        for patch in [
            json!({"netOut": {"default": "maybe"}}),
            json!({"netOut": {"rules": [{"protocol": "icmp", "ports": [{"start": 1, "end": 2}]}]}}),
            json!({"ingressRate": 1000}),
            json!({"runtimeConfig": {"portMappings": [{"hostPort": "x"}]}}),
        ] {
            let mut raw = base();
            for (k, v) in patch.as_object().unwrap() {
                raw[k] = v.clone();
            }
            let e = feats(raw).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig, "{patch}: {e:?}");
        }
    }

    #[test]
    fn attachment_takes_the_container_addresses_and_drops_foreign_host_ips() {
        let mut raw = base();
        raw["ipMasq"] = json!(true);
        raw["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 1, "containerPort": 2, "hostIP": "fd00::1"},
            {"hostPort": 3, "containerPort": 4, "hostIP": "10.0.0.1"}]});
        let req = request(raw, "");
        let conf = BridgeConf::from_request(&req).unwrap();
        let f = Features::from_request(&req, &conf).unwrap();
        let mut res = CniResult {
            interfaces: vec![
                Interface {
                    name: "pnb0".into(),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    sandbox: Some("/x".into()),
                    ..Interface::default()
                },
            ],
            ..CniResult::default()
        };
        assert!(f.attachment(&conf, &req, "pnveth", &res).is_err());
        let masq_only = Features {
            port_mappings: vec![],
            ..f.clone()
        };
        assert!(masq_only
            .attachment(&conf, &req, "pnveth", &res)
            .unwrap()
            .is_none());
        res.ips.push(IpConfig {
            address: "10.9.0.2/24".parse().unwrap(),
            gateway: None,
            interface: Some(1),
        });
        let a = f.attachment(&conf, &req, "pnveth", &res).unwrap().unwrap();
        assert_eq!(a.container_ips, vec!["10.9.0.2/24".parse().unwrap()]);
        assert_eq!(a.port_mappings.len(), 1);
        assert_eq!(a.port_mappings[0].host_port, 3);
        assert!(a.ip_masq);
        a.validate().unwrap();
    }

    #[test]
    fn ifb_shape() {}
}
