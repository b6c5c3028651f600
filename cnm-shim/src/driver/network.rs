//! Docker networks: CreateNetwork derives or adopts a conflist and records whether plugnet
//! owns the bridge; DeleteNetwork collects forgotten endpoints and deletes only an owned bridge.

use super::*;

impl<B: CniBackend> Driver<B> {
    // -----------------------------------------------------------------------------------------
    // Networks

    pub fn create_network(&self, req: CreateNetworkRequest) -> Result<Empty> {
        if !valid_id(&req.network_id) {
            bail!("invalid NetworkID {:?}", short(&req.network_id));
        }
        let opts = generic(&req.options);
        let internal = req
            .options
            .get(INTERNAL_OPTION)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut subnets = Vec::new();
        for d in req.ipv4_data.iter().chain(&req.ipv6_data) {
            if d.pool.is_empty() {
                continue;
            }
            let pool: IpNetwork = d
                .pool
                .parse()
                .with_context(|| format!("IPAM pool {:?}", d.pool))?;
            let gateway = match d.gateway.as_str() {
                "" => None,
                g => Some(
                    g.parse::<IpNetwork>()
                        .with_context(|| format!("IPAM gateway {g:?}"))?
                        .ip(),
                ),
            };
            subnets.push(SubnetInfo {
                pool,
                gateway,
                pool_id: None,
            });
        }

        // A cluster network's pools come from this driver's IPAM (`--ipam-opt plugnet.cluster`):
        // Docker's default IPAM would hand the same addresses out on every host.
        let cluster =
            {
                let st = self.lock();
                let pools: Vec<&crate::state::PoolRecord> = subnets
                    .iter()
                    .filter_map(|s| find_pool(&st, &s.pool))
                    .filter_map(|id| st.pools.get(&id))
                    .filter(|p| p.cluster.is_some())
                    .collect();
                let mut names: Vec<String> =
                    pools.iter().filter_map(|p| p.cluster.clone()).collect();
                names.dedup();
                if names.len() > 1 {
                    bail!("pools of different cluster networks: {}", names.join(", "));
                }
                // A CNI ADD takes an address of every family of the cluster network: Docker must
                // know (and configure) each of them.
                if let Some(p) = pools.first() {
                    for fam in [false, true] {
                        let has = |v6: bool| subnets.iter().any(|s| s.pool.is_ipv6() == v6);
                        if p.cluster_subnets.iter().any(|s| s.is_ipv6() == fam) && !has(fam) {
                            bail!(
                            "cluster network {} has an IPv{} subnet: create the Docker network \
                             with {}",
                            names[0],
                            if fam { 6 } else { 4 },
                            if fam { "--ipv6" } else { "an IPv4 pool (do not pass --ipv4=false)" }
                        );
                        }
                    }
                }
                names.pop()
            };
        match (opts.get(OPT_CLUSTER), &cluster) {
            (Some(o), Some(c)) if o != c => bail!(
                "-o {OPT_CLUSTER}={o} differs from the pool's cluster network {c} \
                 (--ipam-opt {OPT_CLUSTER})"
            ),
            (Some(o), None) => bail!(
                "-o {OPT_CLUSTER}={o} needs this driver's IPAM with the same option: \
                 --ipam-driver <this driver> --ipam-opt {OPT_CLUSTER}={o} (another IPAM would hand \
                 the same addresses out on every host)"
            ),
            _ => {}
        }
        if cluster.is_some() && opts.contains_key(OPT_CNI_NETWORK) {
            bail!("{OPT_CLUSTER} and {OPT_CNI_NETWORK} exclude each other");
        }
        if let Some(name) = opts.get(OPT_CNI_NETWORK) {
            let conflist = self.backend.load_conflist(name)?;
            let ranges = translate::conflist_ipam(&conflist)
                .map(translate::ipam_ranges)
                .transpose()?;
            if let Some(ranges) = ranges.filter(|r| !r.is_empty()) {
                for s in &subnets {
                    if !ranges.iter().any(|r| {
                        r.subnet.contains(s.pool.network()) && r.subnet.prefix() <= s.pool.prefix()
                    }) {
                        bail!(
                            "pool {} is not part of CNI network {name:?} ({}); create the network with \
                             this driver as --ipam-driver and --ipam-opt {OPT_CNI_NETWORK}={name}, or \
                             a matching --subnet",
                            s.pool,
                            ranges.iter().map(|r| r.subnet.to_string()).collect::<Vec<_>>().join(", ")
                        );
                    }
                }
            }
            let mut st = self.lock();
            for s in &mut subnets {
                s.pool_id = find_pool(&st, &s.pool);
            }
            let rec = NetworkRecord {
                id: req.network_id.clone(),
                mode: Mode::Existing,
                cni_name: name.clone(),
                conflist: Value::Null,
                exported: false,
                internal,
                subnets,
                owns_bridge: false,
            };
            self.store
                .put(Kind::Network, &rec.id, &rec)
                .context("persist network")?;
            info!(network = %short(&rec.id), cni = %name, "created network (existing conflist)");
            st.networks.insert(rec.id.clone(), rec);
            return Ok(Empty {});
        }

        // Mode 1: derive a conflist.
        let mut st = self.lock();
        if let Some(existing) = st.networks.get(&req.network_id) {
            if existing
                .subnets
                .iter()
                .map(|s| s.pool)
                .eq(subnets.iter().map(|s| s.pool))
            {
                return Ok(Empty {});
            }
            bail!(
                "network {} already exists with other pools",
                short(&req.network_id)
            );
        }
        let mut ranges = Vec::new();
        let mut cni_name = None;
        for s in &mut subnets {
            s.pool_id = find_pool(&st, &s.pool);
            let mut r = Range {
                subnet: s.pool,
                gateway: s.gateway,
                start: None,
                end: None,
            };
            if let Some(p) = s.pool_id.as_ref().and_then(|id| st.pools.get(id)) {
                r = r.with_sub_pool(p.sub_pool);
                cni_name.get_or_insert_with(|| p.cni_network.clone());
            }
            ranges.push(r);
        }
        let cni_name = cni_name.unwrap_or_else(|| format!("docker-{}", short(&req.network_id)));
        if let Some(other) = st.networks.values().find(|n| n.cni_name == cni_name) {
            bail!(
                "CNI network {cni_name:?} is already used by Docker network {}",
                short(&other.id)
            );
        }
        // A dual-stack network's second pool joins the first one's store.
        for s in &subnets {
            if let Some(pid) = &s.pool_id {
                self.rehome_pool(&mut st, pid, &cni_name)?;
            }
        }
        let routed = match opts.get(OPT_MODE).map(String::as_str) {
            None | Some("") | Some("bridge") => false,
            Some("routed") => true,
            Some(m) => bail!("{OPT_MODE}={m:?}: must be \"bridge\" or \"routed\""),
        };
        let derive = DeriveOptions {
            plugin: self.cfg.bridge_plugin.clone(),
            routed,
            bridge: opts
                .get(crate::validate::BRIDGE_NAME_OPTION)
                .cloned()
                .unwrap_or_else(|| format!("pnb{}", short(&req.network_id))),
            mtu: match opts.get(crate::validate::MTU_OPTION) {
                Some(m) => Some(crate::validate::mtu(m)?),
                None => None,
            },
            ip_masq: !internal
                && opts
                    .get("com.docker.network.bridge.enable_ip_masquerade")
                    .map(|v| truthy(Some(v)))
                    .unwrap_or(self.cfg.default_ip_masq),
            ipam_data_dir: self.cfg.ipam_data_dir.clone(),
        };
        if !routed {
            crate::validate::ifname("bridge name", &derive.bridge)?;
        }
        let mut conflist = translate::derive_conflist(&cni_name, &ranges, &derive);
        if let Some(c) = &cluster {
            // The agent's blocks decide the addresses and gateways (docs/cluster.md).
            conflist["plugins"][0]["ipam"] = self.cluster_ipam(c);
        }
        if let Some(dir) = &self.cfg.firewall_state_dir {
            conflist["plugins"][0]["firewallStateDir"] = json!(dir);
        }
        let exported = truthy(opts.get(OPT_EXPORT));
        if exported {
            self.backend
                .export_conflist(&conflist)
                .context("export conflist")?;
        }
        // Ownership is recorded, never inferred from a name: a bridge that exists now is not
        // plugnet's (an error looking it up counts as "exists": never delete on doubt).
        let owns_bridge = !routed
            && match self.backend.link_exists(&derive.bridge) {
                Ok(exists) => !exists,
                Err(e) => {
                    warn!(bridge = %derive.bridge, "{e:#}: recording the bridge as not plugnet's");
                    false
                }
            };
        if !routed && !owns_bridge {
            info!(network = %short(&req.network_id), bridge = %derive.bridge, "bridge exists: it is used, never deleted");
        }
        let rec = NetworkRecord {
            id: req.network_id.clone(),
            mode: Mode::Derived,
            cni_name: cni_name.clone(),
            conflist,
            exported,
            internal,
            subnets,
            owns_bridge,
        };
        if let Err(e) = self.store.put(Kind::Network, &rec.id, &rec) {
            if exported {
                let _ = self.backend.unexport_conflist(&cni_name);
            }
            return Err(e).context("persist network");
        }
        info!(network = %short(&rec.id), cni = %cni_name, exported, "created network (derived conflist)");
        st.networks.insert(rec.id.clone(), rec.clone());
        // Outside the state lock: the hold may run iptables.
        drop(st);
        self.hold_bridge(&rec, true);
        Ok(Empty {})
    }

    /// A derived network's bridge is held open in its plugin's host firewall for its lifetime
    /// (see `CniBackend::hold_network`). Best effort: without the hold the bridge's rules
    /// follow its first and last container, which is slower, not wrong.
    pub(super) fn hold_bridge(&self, rec: &NetworkRecord, on: bool) {
        if rec.mode != Mode::Derived {
            return;
        }
        let holder = format!("docker-network.{}", short(&rec.id));
        if let Err(e) = self.backend.hold_network(&rec.conflist, &holder, on) {
            warn!(network = %short(&rec.id), "host firewall hold ({on}): {e:#}");
        }
    }

    pub fn delete_network(&self, req: NetworkRequest) -> Result<Empty> {
        // Docker deletes a network only when it knows no endpoint on it: an endpoint we still
        // hold is one Docker forgot (a dockerd killed between our Join and its own store write
        // never sends the DeleteEndpoint). Take it down now, while its network is still known.
        let orphans: Vec<String> = self
            .lock()
            .endpoints
            .values()
            .filter(|e| e.network_id == req.network_id)
            .map(|e| e.id.clone())
            .collect();
        for id in orphans {
            info!(network = %short(&req.network_id), endpoint = %short(&id), "collecting an endpoint Docker forgot");
            self.collect_endpoint(&id);
        }
        let rec = {
            let mut st = self.lock();
            let Some(rec) = st.networks.get(&req.network_id).cloned() else {
                return Ok(Empty {});
            };
            self.store
                .delete(Kind::Network, &rec.id)
                .context("remove network state")?;
            st.networks.remove(&rec.id);
            rec
        };
        if rec.exported {
            if let Err(e) = self.backend.unexport_conflist(&rec.cni_name) {
                warn!("unexport {}: {e:#}", rec.cni_name);
            }
        }
        self.hold_bridge(&rec, false);
        if rec.mode == Mode::Derived && rec.owns_bridge {
            if let Some(br) = rec.conflist["plugins"][0]["bridge"].as_str() {
                if let Err(e) = self.backend.remove_bridge(br) {
                    warn!("remove bridge {br}: {e:#}");
                }
            }
        }
        info!(network = %short(&rec.id), "deleted network");
        Ok(Empty {})
    }
}
