//! What the transaction and the maintenance share: the counters recomputed from the records,
//! the whole table rebuilt from them, and the existence of plugnet's tables; invariant: the
//! attachment records are the truth, the counters a cache.

use std::collections::BTreeSet;

use super::error::FirewallError;
use super::kernel::Kernel;
use super::plan::{self, Op, SharedEdges, Table};
use super::state::{self, Shared};
use super::{l2, Attachment};

/// Does plugnet's table `t` exist? (An nftables query.)
pub(super) fn table_exists(kernel: &dyn Kernel, t: Table) -> Result<bool, FirewallError> {
    kernel.table_exists(t).map_err(|e| FirewallError::Nft {
        step: "look up table",
        op: format!("get table {t}"),
        source: e,
    })
}

/// Bridges with at least one attachment.
pub(super) fn active_bridges(shared: &Shared) -> BTreeSet<String> {
    shared
        .bridges
        .iter()
        .filter(|(_, b)| b.refs > 0)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Shared counters as the recorded attachments imply (keeps remembered sysctl values).
pub(super) fn recount(atts: &[(String, Attachment)], old: &Shared) -> Shared {
    let mut s = Shared {
        version: state::VERSION,
        attachments: atts.len() as u64,
        ..Shared::default()
    };
    for (_, a) in atts {
        if a.source_mac.is_some() {
            s.mac_checks += 1;
        }
        let b = s.bridges.entry(a.bridge.clone()).or_default();
        b.refs += 1;
        if !a.port_mappings.is_empty() {
            b.portmap_refs += 1;
            b.route_localnet_was = old
                .bridges
                .get(&a.bridge)
                .and_then(|o| o.route_localnet_was.clone())
                .or_else(|| Some("0".into()));
        }
    }
    s
}

/// The whole table from state: infrastructure, shared chains and elements, then every
/// attachment's own objects.
pub(super) fn rebuild_ops(shared: &Shared, atts: &[(String, Attachment)]) -> Vec<Op> {
    let mut ops = plan::infrastructure();
    if shared.mac_checks > 0 {
        ops.extend(l2::bridge_infrastructure());
    }
    for (name, b) in &shared.bridges {
        if b.portmap_refs > 0 {
            ops.extend(
                plan::bridge_elems(name)
                    .into_iter()
                    .map(|(set, key)| Op::AddElem {
                        set,
                        key,
                        data: None,
                    }),
            );
        }
    }
    for (key, a) in atts {
        ops.extend(plan::attach_ops(a, key, &SharedEdges::default()));
    }
    ops
}
