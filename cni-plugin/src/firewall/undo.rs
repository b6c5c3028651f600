//! The undo list of an `apply`: the host-side effects nftables cannot roll back (the host
//! firewall's rules, the `route_localnet` sysctl), taken back newest first when a later step
//! fails — the same shape as the bridge plugin's ADD (`bridge/undo.rs`); failures are logged,
//! not returned: the caller reports the error that caused the rollback.

use std::collections::BTreeSet;

use super::hostfw::Families;
use super::kernel::Kernel;

enum Step {
    /// Put the host firewall back to keeping these bridges open.
    HostFirewall(BTreeSet<String>),
    /// Restore a bridge's `route_localnet`.
    RouteLocalnet { bridge: String, was: String },
}

#[derive(Default)]
pub(super) struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    pub fn host_firewall(&mut self, before: BTreeSet<String>) {
        self.steps.push(Step::HostFirewall(before));
    }

    pub fn route_localnet(&mut self, bridge: String, was: String) {
        self.steps.push(Step::RouteLocalnet { bridge, was });
    }

    /// Runs every registered undo, newest first.
    pub fn rollback(self, kernel: &dyn Kernel) {
        for step in self.steps.into_iter().rev() {
            match step {
                Step::HostFirewall(before) => {
                    if let Err(e) = kernel.host_sync(&before, Families::NONE) {
                        tracing::warn!("plugnet firewall: rollback: host firewall: {e}");
                    }
                }
                Step::RouteLocalnet { bridge, was } => {
                    if let Err(e) = kernel.set_route_localnet(&bridge, &was) {
                        tracing::warn!("plugnet firewall: rollback: route_localnet: {e}");
                    }
                }
            }
        }
    }
}
