//! Endpoints: CreateEndpoint takes over Docker's reservation, Join runs the CNI ADD (recorded
//! `attaching` first), teardown runs the CNI DEL and releases what the endpoint held.

use super::*;

impl<B: CniBackend> Driver<B> {
    // -----------------------------------------------------------------------------------------
    // Endpoints

    pub fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<CreateEndpointResponse> {
        if !valid_id(&req.endpoint_id) {
            bail!("invalid EndpointID {:?}", short(&req.endpoint_id));
        }
        if !self.lock().networks.contains_key(&req.network_id) {
            bail!(
                "network {} is not known to this driver",
                short(&req.network_id)
            );
        }
        let id = req.endpoint_id.clone();
        self.with_ep_lock(&id, || self.create_endpoint_locked(req))
    }

    pub(super) fn create_endpoint_locked(
        &self,
        req: CreateEndpointRequest,
    ) -> Result<CreateEndpointResponse> {
        let mut addresses = Vec::new();
        for a in [&req.interface.address, &req.interface.address_ipv6] {
            if !a.is_empty() {
                addresses.push(
                    a.parse::<IpNetwork>()
                        .with_context(|| format!("endpoint address {a:?}"))?,
                );
            }
        }
        let ports = requested_port_mappings(&req.options)?;
        let mut st = self.lock();
        let net = st.networks.get(&req.network_id).cloned().ok_or_else(|| {
            anyhow!(
                "network {} is not known to this driver",
                short(&req.network_id)
            )
        })?;
        if let Some(ep) = st.endpoints.get(&req.endpoint_id) {
            return Ok(mac_reply(&req.interface.mac_address, ep.mac.as_deref()));
        }
        // Like Docker's bridge: a MAC derived from the IPv4 address, so a reused address keeps
        // its MAC and peers' ARP caches stay right.
        let mac = match req.interface.mac_address.as_str() {
            "" => addresses.iter().find_map(|a| match a.ip() {
                IpAddr::V4(v4) => {
                    let o = v4.octets();
                    Some(format!(
                        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
                        o[0], o[1], o[2], o[3]
                    ))
                }
                IpAddr::V6(_) => None,
            }),
            m => Some(m.to_string()),
        };
        // Docker's placeholder reservations become the endpoint's (the CNI ADD adopts them).
        for a in &addresses {
            self.claim_address(&mut st, &net, a.ip(), &req.endpoint_id)?;
        }
        let rec = EndpointRecord {
            id: req.endpoint_id.clone(),
            network_id: req.network_id.clone(),
            addresses,
            mac,
            port_mappings: ports.unwrap_or_default(),
            attachment: None,
        };
        self.store
            .put(Kind::Endpoint, &rec.id, &rec)
            .context("persist endpoint")?;
        let reply = mac_reply(&req.interface.mac_address, rec.mac.as_deref());
        st.endpoints.insert(rec.id.clone(), rec);
        Ok(reply)
    }

    pub fn endpoint_oper_info(&self, _req: EndpointRequest) -> Result<EndpointOperInfoResponse> {
        Ok(EndpointOperInfoResponse::default())
    }

    pub fn delete_endpoint(&self, req: EndpointRequest) -> Result<Empty> {
        if !self.lock().endpoints.contains_key(&req.endpoint_id) {
            return Ok(Empty {}); // unknown: nothing to do, no lock entry made
        }
        self.with_ep_lock(&req.endpoint_id, || {
            let rec = self.lock().endpoints.get(&req.endpoint_id).cloned();
            if let Some(rec) = rec {
                // Docker still holds the addresses until its ReleaseAddress.
                self.teardown_endpoint(&rec, false);
            }
        });
        Ok(Empty {})
    }

    /// Tear down endpoint `id` under its lock (no-op if it is gone meanwhile).
    pub(super) fn collect_endpoint(&self, id: &str) {
        self.with_ep_lock(id, || {
            let rec = self.lock().endpoints.get(id).cloned();
            if let Some(rec) = rec {
                self.teardown_endpoint(&rec, true);
            }
        });
    }

    /// CNI DEL (if attached), release the endpoint's store reservations, forget it.
    /// Best-effort: errors are logged; a failed DEL keeps the record for the reaper.
    pub(super) fn teardown_endpoint(&self, rec: &EndpointRecord, forget_addresses: bool) {
        if let Some(att) = &rec.attachment {
            // The endpoint goes: this DEL releases its addresses for good.
            let mut att = att.clone();
            att.args.retain(|(k, _)| k != KEEP_RESERVATION_ARG);
            if let Err(e) = self.backend.detach(&rec.id, &att) {
                warn!(endpoint = %short(&rec.id), "CNI DEL failed, kept for retry: {e:#}");
                return;
            }
        }
        let mut st = self.lock();
        if let Some(net) = st.networks.get(&rec.network_id).cloned() {
            for a in &rec.addresses {
                if let Some((pid, ctx)) = self.pool_ctx_for(&st, &net, a.ip()) {
                    if let Err(e) = self.backend.ipam_release(&ctx, &Holder::endpoint(&rec.id)) {
                        warn!(endpoint = %short(&rec.id), "release {a}: {e:#}");
                    }
                    if let Some(pool) = st.pools.get_mut(&pid) {
                        let mut changed = false;
                        if pool.endpoint_of.get(&a.ip()) == Some(&rec.id) {
                            pool.endpoint_of.remove(&a.ip());
                            changed = true;
                        }
                        // Docker will never release it (it forgot the endpoint): we do.
                        if forget_addresses {
                            changed |= pool.addresses.remove(&a.ip()).is_some();
                        }
                        if changed {
                            let p = pool.clone();
                            if let Err(e) = self.store.put(Kind::Pool, &p.id, &p) {
                                warn!("persist pool {}: {e:#}", p.id);
                            }
                        }
                    }
                }
            }
        }
        if let Err(e) = self.store.delete(Kind::Endpoint, &rec.id) {
            warn!("remove endpoint state {}: {e:#}", short(&rec.id));
        }
        st.endpoints.remove(&rec.id);
    }

    pub fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        // Unknown endpoints are refused before any per-id state is made (issue 17).
        if !self.lock().endpoints.contains_key(&req.endpoint_id) {
            bail!(
                "endpoint {} is not known to this driver",
                short(&req.endpoint_id)
            );
        }
        let id = req.endpoint_id.clone();
        self.with_ep_lock(&id, || self.join_locked(req))
    }

    pub(super) fn join_locked(&self, req: JoinRequest) -> Result<JoinResponse> {
        let (mut ep, net) = {
            let st = self.lock();
            let ep = st.endpoints.get(&req.endpoint_id).cloned().ok_or_else(|| {
                anyhow!(
                    "endpoint {} is not known to this driver",
                    short(&req.endpoint_id)
                )
            })?;
            let net = st.networks.get(&ep.network_id).cloned().ok_or_else(|| {
                anyhow!(
                    "network {} is not known to this driver",
                    short(&ep.network_id)
                )
            })?;
            (ep, net)
        };
        if let Some(att) = ep.attachment.as_ref().filter(|a| a.phase == Phase::Joined) {
            return self.reply_for(&net, att);
        }
        let conflist = match net.mode {
            Mode::Derived => net.conflist.clone(),
            Mode::Existing => self.backend.load_conflist(&net.cni_name)?,
        };
        let ports =
            requested_port_mappings(&req.options)?.unwrap_or_else(|| ep.port_mappings.clone());
        let mut caps = Map::new();
        if !ep.addresses.is_empty() {
            caps.insert(
                "ips".into(),
                json!(ep
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()),
            );
        }
        if !ports.is_empty() {
            caps.insert("portMappings".into(), Value::Array(ports));
        }
        if let Some(mac) = &ep.mac {
            caps.insert("mac".into(), json!(mac));
        }
        let mut args = vec![("IgnoreUnknown".to_string(), "1".to_string())];
        if !ep.addresses.is_empty() {
            let ips: Vec<String> = ep.addresses.iter().map(|a| a.ip().to_string()).collect();
            args.push(("IP".into(), ips.join(",")));
        }
        if let Some(mac) = &ep.mac {
            args.push(("MAC".into(), mac.clone()));
        }
        if !ep.addresses.is_empty() {
            // Docker's reservation outlives this attachment: a failed ADD's rollback and an
            // interrupted attachment's undo hold it again instead of freeing it (issue 17).
            args.push((KEEP_RESERVATION_ARG.into(), "1".into()));
        }
        if !req.sandbox_key.is_empty() {
            // Names: the resolver asks Docker's embedded DNS inside this sandbox.
            let key = plugnet::names::DOCKER_SANDBOX_ARG;
            args.push((key.into(), req.sandbox_key.clone()));
        }
        let tmp_name = tmp_name_for(&ep.id);
        // Derived plugnet networks: plugnet leaves the container end in the host for Docker
        // to move (one netns move, as Docker's own bridge driver; no staging namespace).
        let handoff_arg = (net.mode == Mode::Derived)
            .then(|| self.backend.handoff_arg(&conflist))
            .flatten();
        let handoff = handoff_arg.is_some();
        let netns = if handoff && !req.sandbox_key.is_empty() {
            PathBuf::from(&req.sandbox_key)
        } else {
            self.cfg.staging_dir.join(short(&ep.id))
        };
        if let Some(key) = handoff_arg {
            args.push((key.into(), tmp_name.clone()));
        }
        let att = AttachmentRecord {
            phase: Phase::Attaching,
            cni_name: net.cni_name.clone(),
            conflist: conflist.clone(),
            netns,
            handoff,
            ifname: CNI_IFNAME.into(),
            tmp_name,
            peer: None,
            args: args.clone(),
            capability_args: caps.clone(),
            result: Value::Null,
        };
        ep.attachment = Some(att.clone());
        self.put_endpoint(&ep)?;
        let outcome = self.backend.attach(&AttachRequest {
            conflist,
            container_id: ep.id.clone(),
            netns: att.netns.clone(),
            ifname: att.ifname.clone(),
            tmp_name: att.tmp_name.clone(),
            handoff,
            args,
            capability_args: caps,
        });
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                ep.attachment = None;
                self.put_endpoint(&ep)?;
                return Err(e.context(format!("CNI ADD on network {:?}", net.cni_name)));
            }
        };
        let mut att = att;
        att.phase = Phase::Joined;
        att.result = outcome.result;
        att.peer = outcome.peer;
        let got = translate::result_addresses(&att.result);
        let missing: Vec<_> = ep
            .addresses
            .iter()
            .filter(|a| !got.iter().any(|g| g.ip() == a.ip()))
            .collect();
        let reply = if missing.is_empty() {
            self.reply_for(&net, &att)
        } else {
            Err(anyhow!(
                "CNI network {:?} assigned {:?} instead of Docker's {:?}",
                net.cni_name,
                got.iter().map(ToString::to_string).collect::<Vec<_>>(),
                missing.iter().map(ToString::to_string).collect::<Vec<_>>()
            ))
        };
        match reply {
            Ok(r) => {
                ep.attachment = Some(att);
                self.put_endpoint(&ep)?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.backend.detach(&ep.id, &att);
                ep.attachment = None;
                self.put_endpoint(&ep)?;
                Err(e)
            }
        }
    }

    pub(super) fn reply_for(
        &self,
        net: &NetworkRecord,
        att: &AttachmentRecord,
    ) -> Result<JoinResponse> {
        let mut r = translate::join_reply(&att.result, &att.tmp_name)?;
        if net.internal {
            r.gateway.clear();
            r.gateway_ipv6.clear();
        }
        Ok(r)
    }

    pub(super) fn put_endpoint(&self, ep: &EndpointRecord) -> Result<()> {
        let mut st = self.lock();
        self.store
            .put(Kind::Endpoint, &ep.id, ep)
            .context("persist endpoint")?;
        st.endpoints.insert(ep.id.clone(), ep.clone());
        Ok(())
    }

    /// Leave: the interface is still inside the container; nothing to destroy (trap 24).
    pub fn leave(&self, _req: EndpointRequest) -> Result<Empty> {
        Ok(Empty {})
    }

    pub fn program_external_connectivity(
        &self,
        _req: ProgramExternalConnectivityRequest,
    ) -> Result<Empty> {
        Ok(Empty {})
    }

    pub fn revoke_external_connectivity(&self, _req: EndpointRequest) -> Result<Empty> {
        Ok(Empty {})
    }
}

/// The port mappings an endpoint request asks for (Docker's `com.docker.network.portmap`), as
/// CNI `portMappings` entries, or None when it names no binding: the one decoder CreateEndpoint
/// and Join share.
fn requested_port_mappings(options: &Map<String, Value>) -> Result<Option<Vec<Value>>> {
    let bindings = crate::validate::port_bindings(options)?;
    Ok((!bindings.is_empty()).then(|| translate::port_mappings(&bindings)))
}
