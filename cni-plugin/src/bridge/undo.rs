//! The undo list of an ADD: what to take back, newest first, if a later step fails.

use super::config::BridgeConf;
use super::ipam;
use crate::invoke::Exec;
use crate::netlink::Netlink;
use crate::skel::{Command, Request};

enum Step {
    ReleaseIpam,
    DeleteLink(String),
    RemoveMasquerade,
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

    pub fn remove_masquerade(&mut self) {
        self.steps.push(Step::RemoveMasquerade);
    }

    /// Runs every registered undo, newest first. Failures are logged, not returned: the
    /// caller reports the error that caused the rollback.
    pub async fn rollback(self, exec: &dyn Exec, conf: &BridgeConf, req: &Request, host: &Netlink) {
        for step in self.steps.into_iter().rev() {
            match step {
                Step::ReleaseIpam => {
                    if let Err(e) = ipam::exec(exec, &conf.ipam, Command::Del, req) {
                        eprintln!("plugnet: rollback: release addresses: {}", e.msg);
                    }
                }
                Step::RemoveMasquerade => {
                    if let Err(e) = super::masq::remove(conf, req) {
                        eprintln!("plugnet: rollback: {}", e.msg);
                    }
                }
                Step::DeleteLink(name) => match host.del_link_by_name(&name).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => eprintln!("plugnet: rollback: {e}"),
                },
            }
        }
    }
}
