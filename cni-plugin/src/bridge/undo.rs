//! The undo list of an ADD: what to take back, newest first, if a later step fails.

use super::config::BridgeConf;
use super::ipam;
use crate::firewall::{Attachment, Firewall};
use crate::invoke::Exec;
use crate::netlink::Netlink;
use crate::skel::{Command, Request};

enum Step {
    ReleaseIpam,
    DeleteLink(String),
    RemoveFirewall(Box<(Firewall, Attachment)>),
    RemoveShaping { host_veth: String, ifb: String },
}

#[derive(Default)]
pub(super) struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    pub fn release_ipam(&mut self) {
        self.steps.push(Step::ReleaseIpam);
    }

    pub fn delete_link(&mut self, name: String) {
        self.steps.push(Step::DeleteLink(name));
    }

    pub fn remove_firewall(&mut self, fw: Firewall, att: Attachment) {
        self.steps.push(Step::RemoveFirewall(Box::new((fw, att))));
    }

    pub fn remove_shaping(&mut self, host_veth: String, ifb: String) {
        self.steps.push(Step::RemoveShaping { host_veth, ifb });
    }

    /// Runs every registered undo, newest first. Failures are logged, not returned: the
    /// caller reports the error that caused the rollback.
    pub async fn rollback(self, exec: &dyn Exec, conf: &BridgeConf, req: &Request, host: &Netlink) {
        for step in self.steps.into_iter().rev() {
            match step {
                Step::ReleaseIpam => {
                    if let Err(e) = ipam::exec(exec, &conf.ipam, Command::Del, req) {
                        tracing::warn!("plugnet: rollback: release addresses: {}", e.msg);
                    }
                }
                Step::RemoveFirewall(b) => {
                    let (fw, a) = *b;
                    if let Err(e) = fw.remove(&a.network, &a.container_id, &a.ifname) {
                        tracing::warn!("plugnet: rollback: remove firewall rules: {e}");
                    }
                }
                Step::RemoveShaping { host_veth, ifb } => {
                    if let Err(e) = crate::tc::remove(host, &host_veth, &ifb).await {
                        tracing::warn!("plugnet: rollback: remove bandwidth: {e}");
                    }
                }
                Step::DeleteLink(name) => match host.del_link_by_name(&name).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!("plugnet: rollback: {e}"),
                },
            }
        }
    }
}
