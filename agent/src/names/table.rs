//! What the resolver answers from: per network, its names, the addresses of its members (who
//! may ask) and the addresses it is asked on, built from every current record (this host's
//! files and, in a cluster, other hosts' records from etcd).
//!
//! Invariant: a [`Table`] is immutable once built; the resolver swaps a new one in whole, so a
//! query sees one consistent state.

use plugnet::names::Record;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

#[derive(Debug, Default)]
pub struct Net {
    pub domain: String,
    /// label → addresses (A and AAAA), in record order.
    pub names: HashMap<String, Vec<IpAddr>>,
    /// Addresses of the network's attachments: the sources it answers.
    pub members: HashSet<IpAddr>,
    /// Addresses containers reach the resolver on (this host's records only).
    pub nameservers: HashSet<IpAddr>,
    /// Docker sandboxes of this host's attachments made through the shim (netns paths).
    pub docker_sandboxes: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Table {
    pub nets: HashMap<String, Net>,
}

impl Table {
    /// `local` records (this host) and `remote` ones (other hosts of a cluster network).
    pub fn build<'a>(
        local: impl Iterator<Item = &'a Record>,
        remote: impl Iterator<Item = &'a Record>,
    ) -> Table {
        let mut t = Table::default();
        for (r, is_local) in local.map(|r| (r, true)).chain(remote.map(|r| (r, false))) {
            let net = t.nets.entry(r.network.clone()).or_default();
            if net.domain.is_empty() || is_local {
                net.domain = r.domain.clone();
            }
            for n in &r.names {
                let addrs = net.names.entry(n.clone()).or_default();
                for a in &r.addresses {
                    if !addrs.contains(a) {
                        addrs.push(*a);
                    }
                }
            }
            net.members.extend(r.addresses.iter().copied());
            if is_local {
                net.nameservers.extend(r.nameservers.iter().copied());
                if let Some(s) = &r.docker_sandbox {
                    if !net.docker_sandboxes.contains(s) {
                        net.docker_sandboxes.push(s.clone());
                    }
                }
            }
        }
        t
    }

    /// The addresses to listen on: every nameserver of this host's records.
    pub fn listen_addrs(&self) -> HashSet<IpAddr> {
        self.nets
            .values()
            .flat_map(|n| n.nameservers.iter().copied())
            .filter(|a| !a.is_unspecified() && !a.is_loopback() && !a.is_multicast())
            .collect()
    }

    /// The network a query asked on `local` from `src` belongs to, if `src` is one of its
    /// members and the network is served on `local`.
    pub fn net_for(&self, local: IpAddr, src: IpAddr) -> Option<&Net> {
        self.nets
            .values()
            .find(|n| n.nameservers.contains(&local) && n.members.contains(&src))
    }

    pub fn records(&self) -> usize {
        self.nets.values().map(|n| n.names.len()).sum()
    }
}

impl Net {
    /// The label a query name asks for: `<name>` or `<name>.<domain>` (lower case, no
    /// trailing dot); `None` for anything else. `Some(Err(()))`: inside the domain but not a
    /// single label (answered NXDOMAIN, never forwarded).
    pub fn label_of<'q>(&self, qname: &'q str) -> Option<Result<&'q str, ()>> {
        let q = qname.strip_suffix('.').unwrap_or(qname);
        if let Some(head) = q
            .strip_suffix(self.domain.as_str())
            .and_then(|h| h.strip_suffix('.'))
        {
            return Some(if head.contains('.') || head.is_empty() {
                Err(())
            } else {
                Ok(head)
            });
        }
        if q == self.domain {
            return Some(Err(()));
        }
        if !q.contains('.') && !q.is_empty() {
            return Some(Ok(q));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(net: &str, names: &[&str], addrs: &[&str], ns: &[&str]) -> Record {
        Record {
            format: plugnet::names::FORMAT.into(),
            boot_id: plugnet::names::boot_id_hex(),
            network: net.into(),
            container_id: names.first().copied().unwrap_or("c").into(),
            ifname: "eth0".into(),
            domain: "dns.plugnet".into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            nameservers: ns.iter().map(|a| a.parse().unwrap()).collect(),
            docker_sandbox: None,
        }
    }

    #[test]
    fn networks_are_kept_apart() {
        let local = [
            rec(
                "a",
                &["web", "www"],
                &["10.172.1.2", "fd00:172::2"],
                &["10.172.1.1"],
            ),
            rec("b", &["db"], &["10.172.2.2"], &["10.172.2.1"]),
        ];
        let remote = [rec("a", &["far"], &["10.172.1.9"], &["10.172.1.1"])];
        let t = Table::build(local.iter(), remote.iter());
        let gw_a: IpAddr = "10.172.1.1".parse().unwrap();
        let a = t.net_for(gw_a, "10.172.1.9".parse().unwrap()).unwrap();
        assert_eq!(a.names["web"].len(), 2);
        assert!(a.names.contains_key("far"));
        assert!(t.net_for(gw_a, "10.172.2.2".parse().unwrap()).is_none());
        assert_eq!(t.listen_addrs().len(), 2);
        assert_eq!(a.label_of("web.dns.plugnet."), Some(Ok("web")));
        assert_eq!(a.label_of("WEB"), Some(Ok("WEB")));
        assert_eq!(a.label_of("a.b.dns.plugnet"), Some(Err(())));
        assert_eq!(a.label_of("example.com."), None);
    }
}
