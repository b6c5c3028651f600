//! `ipMasq` through plugnet's nftables firewall ([`crate::firewall`]): the bridge plugin's single
//! call site. One nftables transaction per ADD/DEL, rules keyed by (network, container id,
//! ifname), nothing left after DEL; no iptables process per rule.
//!
//! Invariant: only called when the configuration asks for `ipMasq`; the state directory is the
//! firewall's default unless the plugnet-specific `firewallStateDir` names another (one per
//! host network namespace: the firewall rebuilds every recorded attachment into a namespace
//! whose table is missing).

use std::path::PathBuf;

use super::config::BridgeConf;
use crate::error::{CniError, ErrorCode};
use crate::firewall::{Attachment, Firewall, FirewallError, Options};
use crate::skel::Request;
use crate::types::CniResult;

fn firewall(conf: &BridgeConf) -> Firewall {
    let mut opts = Options::default();
    if let Some(dir) = &conf.firewall_state_dir {
        opts.state_dir = PathBuf::from(dir);
    }
    Firewall::new(opts)
}

/// The one place a firewall failure becomes a CNI error.
fn cni(step: &str, e: FirewallError) -> CniError {
    let code = match e {
        FirewallError::Invalid(_) => ErrorCode::InvalidConfig,
        _ => ErrorCode::Internal,
    };
    CniError::new(code, format!("{step}: {e}"))
}

/// The firewall's view of this attachment: the container's addresses (from the result's IPs on
/// the container interface) behind `host_veth` on the configured bridge (routed mode: behind
/// `host_veth` alone, which the firewall reads as a routed attachment).
pub fn attachment(
    conf: &BridgeConf,
    req: &Request,
    host_veth: &str,
    result: &CniResult,
) -> Attachment {
    let container = result
        .interfaces
        .iter()
        .position(|i| i.name == req.ifname && i.sandbox.is_some());
    Attachment {
        network: req.config.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        // In routed mode the host veth is the container's own uplink.
        bridge: match conf.mode {
            super::config::Mode::Bridge => conf.bridge.clone(),
            super::config::Mode::Routed => host_veth.to_string(),
        },
        host_veth: host_veth.to_string(),
        container_ips: result
            .ips
            .iter()
            .filter(|ip| container.is_none() || ip.interface == container)
            .map(|ip| ip.address)
            .collect(),
        ip_masq: true,
        port_mappings: Vec::new(),
        net_out: None,
    }
}

pub fn apply(conf: &BridgeConf, att: &Attachment) -> Result<(), CniError> {
    firewall(conf)
        .apply(att)
        .map_err(|e| cni("set up ipMasq", e))
}

pub fn remove(conf: &BridgeConf, req: &Request) -> Result<(), CniError> {
    firewall(conf)
        .remove(&req.config.name, &req.container_id, &req.ifname)
        .map_err(|e| cni("remove ipMasq rules", e))
}

pub fn check(conf: &BridgeConf, att: &Attachment) -> Result<(), CniError> {
    firewall(conf)
        .check(att)
        .map_err(|e| cni("check ipMasq rules", e))
}

pub fn gc(conf: &BridgeConf, req: &Request) -> Result<(), CniError> {
    let Some(valid) = &req.config.valid_attachments else {
        return Ok(());
    };
    let valid: Vec<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    firewall(conf)
        .gc(&req.config.name, &valid)
        .map(drop)
        .map_err(|e| cni("collect ipMasq rules", e))
}
