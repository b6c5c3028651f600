//! Recovery: undo interrupted attachments, collect endpoints whose container or network is
//! gone, re-apply firewall state the kernel lost. Never talks to dockerd.

use super::*;

impl<B: CniBackend> Driver<B> {
    // -----------------------------------------------------------------------------------------
    // Recovery

    /// Undo half-done attachments and collect endpoints whose container died without Docker
    /// telling us (dockerd restart). Never talks to dockerd. Returns how many were cleaned.
    pub fn reconcile(&self) -> usize {
        let eps: Vec<EndpointRecord> = self.lock().endpoints.values().cloned().collect();
        let mut cleaned = 0;
        if !self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // Once, at start-up: staging namespaces no record refers to (a crash mid-cleanup).
            let keep: Vec<PathBuf> = eps
                .iter()
                .filter_map(|e| e.attachment.as_ref().map(|a| a.netns.clone()))
                .collect();
            cleaned += self.backend.sweep_staging(&self.cfg.staging_dir, &keep);
        }
        for ep in eps {
            cleaned += self.with_ep_lock(&ep.id, || self.reconcile_endpoint(&ep.id));
        }
        cleaned
    }

    /// [`Driver::reconcile`] for one endpoint, under its lock: how many were cleaned (0 or 1).
    pub(super) fn reconcile_endpoint(&self, id: &str) -> usize {
        let mut cleaned = 0;
        {
            // Re-read under the endpoint lock: a handler may have changed it meanwhile.
            let Some(ep) = self.lock().endpoints.get(id).cloned() else {
                return 0;
            };
            match &ep.attachment {
                Some(att) if att.phase == Phase::Attaching => {
                    info!(endpoint = %short(&ep.id), "undoing interrupted attachment");
                    if self.backend.detach(&ep.id, att).is_ok() {
                        let mut ep2 = ep.clone();
                        ep2.attachment = None;
                        if self.put_endpoint(&ep2).is_ok() {
                            cleaned += 1;
                        }
                    }
                }
                Some(att) if !self.backend.attachment_alive(att) => {
                    info!(endpoint = %short(&ep.id), "container side gone: collecting endpoint");
                    self.teardown_endpoint(&ep, true);
                    cleaned += 1;
                }
                // Its network is gone (deleted while a shim that knew the endpoint was down).
                _ if !self.lock().networks.contains_key(&ep.network_id) => {
                    info!(endpoint = %short(&ep.id), "network gone: collecting endpoint");
                    self.teardown_endpoint(&ep, true);
                    cleaned += 1;
                }
                _ => {}
            }
        }
        cleaned
    }

    /// Re-applies the host firewall state the kernel lost for the plugins of this shim's
    /// networks and attachments (through the backend: `plugnet firewall repair` for plugnet's):
    /// after `nft flush ruleset`, a firewalld reload or a Docker restart. Returns how many
    /// state dirs were re-applied.
    pub fn repair_firewalls(&self) -> usize {
        let lists: Vec<Value> = {
            let st = self.lock();
            st.networks
                .values()
                .map(|n| n.conflist.clone())
                .chain(
                    st.endpoints
                        .values()
                        .filter_map(|e| e.attachment.as_ref().map(|a| a.conflist.clone())),
                )
                .collect()
        };
        self.backend
            .repair_firewalls(&lists.iter().collect::<Vec<_>>())
    }
}
