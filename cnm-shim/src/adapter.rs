//! The plugnet adapter: what the shim knows about plugnet as the CNI plugin of a network (its
//! `type`, its handoff, its firewall state directory, its bridge holds, its firewall repair),
//! asked by the
//! backends (`cni`, and the test fake) behind the `CniBackend` seam, so the Docker translation
//! (`driver`) never looks inside a plugin's configuration to learn which plugin runs.
//!
//! Invariant: pure reads of conflists, except [`repair`], which re-applies plugnet's own state.

use plugnet::bridge::firewall_state_dir;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use tracing::{info, warn};

/// The `type` of plugnet's plugin configuration.
pub const PLUGIN_TYPE: &str = "plugnet";

/// Whether a plugin configuration is plugnet's.
pub fn is_plugnet(plugin: &Value) -> bool {
    plugin["type"] == PLUGIN_TYPE
}

/// The `CNI_ARGS` key with which ADD hands the container end over in the host netns (plugnet's
/// `PLUGNET_HANDOFF_IFNAME`), if the list supports it: a list of exactly one plugin, plugnet.
/// Any other chain may configure the container side, so it runs in a staging namespace.
pub fn handoff_arg(conflist: &Value) -> Option<&'static str> {
    matches!(conflist.get("plugins").and_then(Value::as_array),
        Some(p) if p.len() == 1 && is_plugnet(&p[0]))
    .then_some(plugnet::bridge::HANDOFF_ARG)
}

/// The bridge a network's host firewall hold is for, and the firewall state directory it lives
/// in: only for a conflist whose first plugin is plugnet with a bridge (routed mode has none).
pub fn held_bridge(conflist: &Value) -> Option<(PathBuf, String)> {
    let plugin = &conflist["plugins"][0];
    let bridge = plugin["bridge"].as_str()?;
    is_plugnet(plugin).then(|| (firewall_state_dir(plugin), bridge.to_string()))
}

/// The firewall state directories of the plugnet plugins in `conflists` (`firewallStateDir`,
/// else plugnet's default).
pub fn firewall_state_dirs<'a>(
    conflists: impl IntoIterator<Item = &'a Value>,
) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for list in conflists {
        for p in list["plugins"].as_array().into_iter().flatten() {
            if is_plugnet(p) {
                dirs.insert(firewall_state_dir(p));
            }
        }
    }
    dirs
}

/// Re-applies plugnet's firewall state where the kernel lost it (`plugnet firewall repair` for
/// each of the conflists' state directories). Returns how many state dirs were re-applied.
pub fn repair<'a>(conflists: impl IntoIterator<Item = &'a Value>) -> usize {
    let mut n = 0;
    for dir in firewall_state_dirs(conflists) {
        match plugnet::firewall::repair(&dir) {
            Ok(Some(r)) => {
                info!(state_dir = %dir.display(), attachments = r.attachments, bridges = r.bridges,
                    "firewall rules were lost: re-applied");
                n += 1;
            }
            Ok(None) => {}
            Err(e) => warn!(state_dir = %dir.display(), "firewall repair: {e}"),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_plugnet_bridges_are_held_and_repaired() {
        let pn =
            json!({"plugins":[{"type":"plugnet","bridge":"pnb1","firewallStateDir":"/tmp/f"}]});
        let routed = json!({"plugins":[{"type":"plugnet","mode":"routed"}]});
        let reference = json!({"plugins":[{"type":"bridge","bridge":"cni0"}]});
        assert_eq!(
            held_bridge(&pn),
            Some((PathBuf::from("/tmp/f"), "pnb1".to_string()))
        );
        assert_eq!(held_bridge(&routed), None);
        assert_eq!(held_bridge(&reference), None);
        let dirs = firewall_state_dirs([&pn, &routed, &reference]);
        let want: BTreeSet<PathBuf> = ["/tmp/f", plugnet::firewall::DEFAULT_STATE_DIR]
            .into_iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(dirs, want);
    }
}
