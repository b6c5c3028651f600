//! CHECK in bridge mode: the bridge, the host veth as its port, and the container interface,
//! its addresses and routes.

use super::{container_side, failed, start, Start};
use crate::bridge::config::BridgeConf;
use crate::bridge::cx::kernel;
use crate::bridge::features::{self, Features};
use crate::error::CniError;
use crate::invoke::Exec;
use crate::netlink::IpFamily;
use crate::skel::Request;

pub async fn check(
    exec: &dyn Exec,
    conf: &BridgeConf,
    feats: &Features,
    req: &Request,
) -> Result<(), CniError> {
    let Start {
        prev,
        host,
        host_name,
        veth,
        idx,
        want,
    } = start(exec, conf, req).await?;
    let br = host
        .link_by_name(&conf.bridge)
        .await
        .map_err(kernel)?
        .filter(|l| l.is_bridge())
        .ok_or_else(|| failed(format!("bridge {} not found", conf.bridge)))?;
    if veth.master != Some(br.index) {
        return Err(failed(format!(
            "host interface {host_name} is not a port of bridge {}",
            conf.bridge
        )));
    }
    let (ctr, link) = container_side(req, &host_name, &veth, want).await?;

    let have = ctr.addrs(link.index, None).await.map_err(kernel)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(idx)) {
        if !have.contains(&ip.address) {
            return Err(failed(format!(
                "interface {} lacks address {}",
                req.ifname, ip.address
            )));
        }
    }

    for family in [IpFamily::V4, IpFamily::V6] {
        let wanted: Vec<_> = prev
            .routes
            .iter()
            .filter(|r| IpFamily::of(&r.dst.ip()) == family)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let mut installed = Vec::new();
        for table in wanted
            .iter()
            .map(|r| r.table)
            .collect::<std::collections::BTreeSet<_>>()
        {
            installed.extend(ctr.routes(family, table).await.map_err(kernel)?);
        }
        for r in wanted {
            let found = installed
                .iter()
                .any(|i| i.dst == r.dst && (r.gw.is_none() || i.gw == r.gw));
            if !found {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(failed(format!(
                    "route {}{via} not found in the container",
                    r.dst
                )));
            }
        }
    }
    features::check(feats, conf, req, &host, &host_name, prev).await
}
