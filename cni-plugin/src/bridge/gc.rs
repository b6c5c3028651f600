//! GC (both modes): release IPAM reservations, delete host veths, firewall state and ifb
//! devices of attachments not in the valid list.
//! Only veths that hang where this network's veths hang (ports of its bridge in bridge mode,
//! unbridged in routed mode), have plugnet's name shape and carry this network's owner mark
//! (its alias, or, for a veth whose ADD was killed before the alias was set, the MAC it was
//! born with: [`crate::attachment::owned_by`]) are candidates, so networks sharing a bridge never touch
//! each other.

use std::collections::HashSet;

use super::config::{BridgeConf, Mode};
use super::cx::kernel;
use super::features::{self, Features};
use super::ipam;
use crate::attachment::{host_veth_name, is_host_veth_name};
use crate::error::CniError;
use crate::invoke::Exec;
use crate::netlink::Netlink;
use crate::skel::{Command, Request};

pub async fn gc(
    exec: &dyn Exec,
    conf: &BridgeConf,
    feats: &Features,
    req: &Request,
) -> Result<(), CniError> {
    let mut errors: Vec<String> = Vec::new();
    if let Err(e) = ipam::exec(exec, &conf.ipam, Command::Gc, req) {
        errors.push(format!("IPAM GC: {}", e.msg));
    }
    // Without the key there is no list to judge by: leave the links alone.
    if let Some(valid) = &req.config.valid_attachments {
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| host_veth_name(&a.container_id, &a.ifname))
            .collect();
        let pairs: Vec<(String, String)> = valid
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        match Netlink::host() {
            Ok(host) => {
                if let Err(e) = stale_veths(conf, req, &host, &keep).await {
                    errors.push(e.msg);
                }
                if let Err(e) = features::gc(feats, req, &host, &pairs).await {
                    errors.push(e.msg);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(errors.join("; ")))
    }
}

async fn stale_veths(
    conf: &BridgeConf,
    req: &Request,
    host: &Netlink,
    keep: &HashSet<String>,
) -> Result<(), CniError> {
    // Where this network's host veths hang: its bridge (none yet: nothing to collect), or
    // nowhere in routed mode (deleting the veth takes its host routes with it).
    let master = match conf.mode {
        Mode::Routed => None,
        Mode::Bridge => match host.link_by_name(&conf.bridge).await.map_err(kernel)? {
            Some(br) => Some(br.index),
            None => return Ok(()),
        },
    };
    let network = &req.config.name;
    let mut errors = Vec::new();
    for link in host.links().await.map_err(kernel)? {
        let ours = link.master == master
            && is_host_veth_name(&link.name)
            && link.kind.as_deref() == Some("veth")
            && crate::attachment::owned_by(network, &link.name, link.alias.as_deref(), link.mac);
        if !ours || keep.contains(&link.name) {
            continue;
        }
        match host.del_link(link.index).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(errors.join("; ")))
    }
}
