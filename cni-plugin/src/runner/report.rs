//! What `info`, `metrics` and `check` report per network, and the [`Kernel`] reads behind them.
//!
//! Invariant: reports are built from the cached CNI results plus read-only kernel queries made
//! through [`crate::netlink`] (container-side sockets opened on a thread inside the netns);
//! nothing here changes state, and a kernel read that fails degrades a field, not the report.

use super::state::{AttachmentState, ContainerState, Status};
use crate::error::CniError;
use crate::netlink::{LinkStats, Netlink};
use crate::CniResult;
use ipnetwork::IpNetwork;
use serde::Serialize;
use serde_json::Value;
use std::net::IpAddr;
use std::path::Path;

/// A host-side link as the kernel shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub kind: Option<String>,
    pub addrs: Vec<IpNetwork>,
}

/// Read-only kernel queries the reports need; a fake stands in for unit tests.
pub trait Kernel {
    /// Counters of `ifnames` inside the netns at `netns` (`None` for a missing link).
    fn counters(
        &self,
        netns: &Path,
        ifnames: &[String],
    ) -> Result<Vec<Option<LinkStats>>, CniError>;
    /// The host-namespace links called `names` (`None` for a missing link).
    fn host_links(&self, names: &[String]) -> Result<Vec<Option<LinkInfo>>, CniError>;
}

/// [`Kernel`] over rtnetlink: one connection per namespace per call, driven on a private
/// current-thread runtime (the container-side socket is opened by [`Netlink::in_netns`] on a
/// thread that entered the netns).
#[derive(Debug, Default, Clone, Copy)]
pub struct NetlinkKernel;

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, CniError> {
    crate::netlink::block_on(f).map_err(|e| CniError::internal(e.to_string()))
}

impl Kernel for NetlinkKernel {
    fn counters(
        &self,
        netns: &Path,
        ifnames: &[String],
    ) -> Result<Vec<Option<LinkStats>>, CniError> {
        block_on(async {
            let nl = Netlink::in_netns(netns).map_err(|e| CniError::internal(e.to_string()))?;
            let mut out = Vec::with_capacity(ifnames.len());
            for name in ifnames {
                let link = nl
                    .link_by_name(name)
                    .await
                    .map_err(|e| CniError::internal(e.to_string()))?;
                out.push(link.map(|l| l.stats.unwrap_or_default()));
            }
            Ok(out)
        })?
    }

    fn host_links(&self, names: &[String]) -> Result<Vec<Option<LinkInfo>>, CniError> {
        block_on(async {
            let nl = Netlink::host().map_err(|e| CniError::internal(e.to_string()))?;
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let Some(link) = nl
                    .link_by_name(name)
                    .await
                    .map_err(|e| CniError::internal(e.to_string()))?
                else {
                    out.push(None);
                    continue;
                };
                let addrs = nl
                    .addrs(link.index, None)
                    .await
                    .map_err(|e| CniError::internal(e.to_string()))?;
                out.push(Some(LinkInfo {
                    kind: link.kind,
                    addrs,
                }));
            }
            Ok(out)
        })?
    }
}

/// One network of `plugnet info`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentInfo {
    #[serde(skip)]
    pub name: String,
    /// The CNI network (list) name, which keys IPAM and the result cache.
    pub cni_network: String,
    pub status: Status,
    pub interface: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Container addresses with prefix length.
    pub ips: Vec<IpNetwork>,
    pub gateways: Vec<IpAddr>,
    /// The host end of the container's link (e.g. the veth), when the plugin reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
    /// A bridge the host end is plugged into, when the plugin reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The host's addresses on this network (on the host-side interfaces, link-local excluded).
    pub host_ips: Vec<IpNetwork>,
    /// `runtimeConfig.portMappings` as given for this network.
    pub port_mappings: Vec<Value>,
}

fn is_link_local(n: &IpNetwork) -> bool {
    match n.ip() {
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(a) => a.is_link_local(),
    }
}

impl AttachmentInfo {
    pub(super) fn build(a: &AttachmentState, r: Option<&CniResult>, kernel: &dyn Kernel) -> Self {
        let mut info = AttachmentInfo {
            name: a.name.clone(),
            cni_network: a.cni_network().to_string(),
            status: if r.is_some() {
                Status::Attached
            } else {
                Status::Attaching
            },
            interface: a.ifname.clone(),
            mac: None,
            ips: Vec::new(),
            gateways: Vec::new(),
            host_interface: None,
            bridge: None,
            host_ips: Vec::new(),
            port_mappings: a
                .runtime_config
                .get("portMappings")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        };
        let Some(r) = r else { return info };
        let in_sandbox = |i: usize| {
            r.interfaces
                .get(i)
                .is_some_and(|x| x.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        };
        let own = r
            .interfaces
            .iter()
            .enumerate()
            .filter(|(i, x)| x.name == a.ifname && in_sandbox(*i))
            .map(|(i, _)| i)
            .next_back()
            .or_else(|| r.interfaces.iter().rposition(|x| x.name == a.ifname));
        info.mac = own.and_then(|i| r.interfaces[i].mac.clone());
        for ip in &r.ips {
            // Results without interface indexes (IPAM-only chains, old versions) are all ours.
            if ip.interface.is_none() || ip.interface == own {
                info.ips.push(ip.address);
                if let Some(g) = ip.gateway {
                    if !info.gateways.contains(&g) {
                        info.gateways.push(g);
                    }
                }
            }
        }
        let host: Vec<String> = (0..r.interfaces.len())
            .filter(|i| !in_sandbox(*i))
            .map(|i| r.interfaces[i].name.clone())
            .collect();
        let links = kernel.host_links(&host).unwrap_or_default();
        for (i, name) in host.iter().enumerate() {
            let link = links.get(i).cloned().flatten();
            let is_bridge = link.as_ref().and_then(|l| l.kind.as_deref()) == Some("bridge");
            if is_bridge {
                info.bridge = Some(name.clone());
            } else {
                info.host_interface = Some(name.clone());
            }
            for addr in link.map(|l| l.addrs).unwrap_or_default() {
                if !is_link_local(&addr) && !info.host_ips.contains(&addr) {
                    info.host_ips.push(addr);
                }
            }
        }
        info
    }
}

/// Counters of one network's container interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkMetrics {
    #[serde(skip)]
    pub name: String,
    pub interface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    /// Set when the counters could not be read (link or netns gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `plugnet metrics`: one entry per network, in attach order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub networks: Vec<NetworkMetrics>,
}

impl Metrics {
    pub(super) fn read(state: &ContainerState, kernel: &dyn Kernel) -> Result<Metrics, CniError> {
        let ifnames: Vec<String> = state.networks.iter().map(|a| a.ifname.clone()).collect();
        let read = kernel
            .counters(&state.netns, &ifnames)
            .map_err(|e| e.context(format!("read counters in netns {}", state.netns.display())))?;
        let networks = state
            .networks
            .iter()
            .zip(read)
            .map(|(a, s)| {
                let mut m = NetworkMetrics {
                    name: a.name.clone(),
                    interface: a.ifname.clone(),
                    ..NetworkMetrics::default()
                };
                match s {
                    Some(s) => {
                        m.rx_bytes = s.rx_bytes;
                        m.tx_bytes = s.tx_bytes;
                        m.rx_packets = s.rx_packets;
                        m.tx_packets = s.tx_packets;
                        m.rx_errors = s.rx_errors;
                        m.tx_errors = s.tx_errors;
                        m.rx_dropped = s.rx_dropped;
                        m.tx_dropped = s.tx_dropped;
                    }
                    None => m.error = Some(format!("no interface {} in the netns", a.ifname)),
                }
                m
            })
            .collect();
        Ok(Metrics { networks })
    }
}

/// The CHECK verdict for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub network: String,
    /// `None` when CHECK passed.
    pub error: Option<String>,
}
