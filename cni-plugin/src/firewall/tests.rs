//! The transaction (`apply`, `remove`) over a fake kernel: what it sends, what it records,
//! and what it undoes when a step fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};

use super::hostfw::Families;
use super::kernel::Kernel;
use super::nft::NftError;
use super::plan::{KeyVal, Op, Table};
use super::{Attachment, Firewall, FirewallError, Options, PortMapping, Protocol};

#[derive(Debug, Default)]
struct State {
    tables: Vec<Table>,
    /// Every transaction that committed, each op in nft syntax.
    runs: Vec<Vec<String>>,
    /// Refuse a transaction holding an op that starts with this, with this errno.
    refuse: Option<(String, i32)>,
    host_syncs: Vec<BTreeSet<String>>,
    refuse_host_sync: bool,
    route_localnet: BTreeMap<String, String>,
    flushed: Vec<Vec<u16>>,
}

#[derive(Debug, Default)]
struct Fake(Mutex<State>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    fn has(&self, t: Table) -> bool {
        self.with(|s| s.tables.contains(&t))
    }
}

impl Kernel for Fake {
    fn run(&self, ops: &[Op]) -> Result<(), NftError> {
        self.with(|s| {
            let text: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
            if let Some((prefix, errno)) = &s.refuse {
                if let Some(op) = text.iter().find(|o| o.starts_with(prefix.as_str())) {
                    return Err(NftError {
                        op: op.clone(),
                        source: io::Error::from_raw_os_error(*errno),
                    });
                }
            }
            for op in ops {
                match op {
                    Op::AddTable(t) if !s.tables.contains(t) => s.tables.push(*t),
                    Op::DelTable(t) => s.tables.retain(|x| x != t),
                    _ => {}
                }
            }
            s.runs.push(text);
            Ok(())
        })
    }
    fn table_exists(&self, t: Table) -> io::Result<bool> {
        Ok(self.has(t))
    }
    fn set_exists(&self, _: &str) -> io::Result<bool> {
        Ok(self.has(Table::Inet))
    }
    fn chain_exists(&self, _: &str) -> io::Result<bool> {
        Ok(self.has(Table::Inet))
    }
    fn elem_exists(&self, _: &str, _: &[KeyVal]) -> io::Result<bool> {
        Ok(self.has(Table::Inet))
    }
    fn chain_holds(&self, _: &str, _: &[Op]) -> io::Result<bool> {
        Ok(self.has(Table::Bridge))
    }
    fn host_sync(&self, bridges: &BTreeSet<String>, _: Families) -> Result<(), FirewallError> {
        self.with(|s| {
            if s.refuse_host_sync {
                return Err(FirewallError::HostFirewall("refused by the fake".into()));
            }
            s.host_syncs.push(bridges.clone());
            Ok(())
        })
    }
    fn host_sync_exact(
        &self,
        bridges: &BTreeSet<String>,
        carried: Families,
    ) -> Result<(), FirewallError> {
        self.host_sync(bridges, carried)
    }
    fn host_in_place(&self, _: &[String]) -> Result<bool, FirewallError> {
        Ok(true)
    }
    fn host_check(&self, _: &str) -> Result<(), FirewallError> {
        Ok(())
    }
    fn route_localnet(&self, bridge: &str) -> Result<String, FirewallError> {
        Ok(self.with(|s| s.route_localnet.get(bridge).cloned().unwrap_or("0".into())))
    }
    fn set_route_localnet(&self, bridge: &str, value: &str) -> Result<String, FirewallError> {
        Ok(self.with(|s| {
            s.route_localnet
                .insert(bridge.into(), value.into())
                .unwrap_or("0".into())
        }))
    }
    fn flush_udp_ports(&self, ports: &[u16]) -> io::Result<usize> {
        self.with(|s| s.flushed.push(ports.to_vec()));
        Ok(0)
    }
}

fn firewall(dir: &tempfile::TempDir) -> (Firewall, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let opts = Options {
        state_dir: dir.path().join("fw"),
        ..Options::default()
    };
    (Firewall::with_kernel(opts, fake.clone()), fake)
}

fn att(id: &str, host_port: u16) -> Attachment {
    Attachment {
        network: "net1".into(),
        container_id: id.into(),
        ifname: "eth0".into(),
        bridge: "pnfbr0".into(),
        host_veth: format!("veth{id}"),
        container_ips: vec!["10.70.0.2/24".parse().unwrap()],
        ip_masq: true,
        port_mappings: vec![PortMapping {
            host_port,
            container_port: 53,
            protocol: Protocol::Udp,
            host_ip: None,
        }],
        net_out: None,
        source_mac: None,
        keep_source_to: Vec::new(),
    }
}

#[test]
fn the_first_apply_builds_the_table_records_and_opens_the_host_in_one_transaction() {
    let d = tempfile::tempdir().unwrap();
    let (fw, k) = firewall(&d);
    let a = att("c1", 5353);
    fw.apply(&a).unwrap();
    k.with(|s| {
        assert_eq!(s.runs.len(), 1, "one transaction");
        assert_eq!(s.runs[0][0], "add table inet plugnet");
        assert_eq!(s.host_syncs, vec![BTreeSet::from(["pnfbr0".to_string()])]);
        assert_eq!(s.route_localnet["pnfbr0"], "1");
        assert_eq!(s.flushed, vec![vec![5353]]);
    });
    assert!(fw.is_recorded("net1", "c1", "eth0"));
    assert_eq!(fw.list().unwrap(), vec![a]);
}

#[test]
fn an_identical_apply_sends_nothing_and_a_second_attachment_only_its_own_objects() {
    let d = tempfile::tempdir().unwrap();
    let (fw, k) = firewall(&d);
    fw.apply(&att("c1", 5353)).unwrap();
    fw.apply(&att("c1", 5353)).unwrap();
    assert_eq!(k.with(|s| s.runs.len()), 1);
    fw.apply(&att("c2", 5354)).unwrap();
    k.with(|s| {
        assert_eq!(s.runs.len(), 2);
        assert!(
            !s.runs[1].iter().any(|o| o.contains("table")),
            "{:?}",
            s.runs[1]
        );
        // The bridge is open already: the host firewall is not touched again.
        assert_eq!(s.host_syncs.len(), 1);
    });
}

#[test]
fn a_refused_transaction_undoes_the_host_side_and_leaves_no_record() {
    let d = tempfile::tempdir().unwrap();
    let (fw, k) = firewall(&d);
    k.with(|s| s.refuse = Some(("add table".into(), libc::EPERM)));
    let e = fw.apply(&att("c1", 5353)).unwrap_err();
    assert!(
        matches!(
            &e,
            FirewallError::Nft {
                step: "apply attachment",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.errno(), Some(libc::EPERM));
    k.with(|s| {
        assert!(s.runs.is_empty());
        // Opened, then closed again (the bridges before: none).
        assert_eq!(s.host_syncs.len(), 2);
        assert!(s.host_syncs[1].is_empty());
        assert_eq!(s.route_localnet["pnfbr0"], "0");
        assert!(s.flushed.is_empty());
    });
    assert!(!fw.is_recorded("net1", "c1", "eth0"));
}

#[test]
fn a_host_port_another_attachment_maps_is_a_port_conflict() {
    let d = tempfile::tempdir().unwrap();
    let (fw, k) = firewall(&d);
    fw.apply(&att("c1", 5353)).unwrap();
    k.with(|s| s.refuse = Some(("add element inet plugnet pm".into(), libc::EEXIST)));
    let e = fw.apply(&att("c2", 5353)).unwrap_err();
    assert!(matches!(e, FirewallError::PortConflict(_)), "{e}");
    assert!(!fw.is_recorded("net1", "c2", "eth0"));
    assert!(fw.is_recorded("net1", "c1", "eth0"));
}

#[test]
fn a_host_firewall_that_refuses_stops_the_apply_before_the_kernel() {
    let d = tempfile::tempdir().unwrap();
    let (fw, k) = firewall(&d);
    k.with(|s| s.refuse_host_sync = true);
    let e = fw.apply(&att("c1", 5353)).unwrap_err();
    assert!(matches!(e, FirewallError::HostFirewall(_)), "{e}");
    k.with(|s| assert!(s.runs.is_empty() && s.route_localnet.is_empty()));
    assert!(!fw.is_recorded("net1", "c1", "eth0"));
}

#[test]
fn removing_the_last_attachment_deletes_the_table_and_restores_the_sysctl() {
    let d = tempfile::tempdir().unwrap();
    let (fw, k) = firewall(&d);
    fw.apply(&att("c1", 5353)).unwrap();
    fw.apply(&att("c2", 5354)).unwrap();
    fw.remove("net1", "c1", "eth0").unwrap();
    k.with(|s| {
        assert!(
            !s.runs[2].iter().any(|o| o.contains("table")),
            "{:?}",
            s.runs[2]
        );
        assert_eq!(s.route_localnet["pnfbr0"], "1");
    });
    fw.remove("net1", "c2", "eth0").unwrap();
    k.with(|s| {
        assert_eq!(s.runs[3], vec!["delete table inet plugnet".to_string()]);
        assert_eq!(s.route_localnet["pnfbr0"], "0");
        assert!(s.host_syncs.last().unwrap().is_empty());
    });
    assert!(!k.has(Table::Inet));
    assert!(fw.list().unwrap().is_empty());
}

#[test]
fn reload_rebuilds_every_record_in_one_transaction() {
    let d = tempfile::tempdir().unwrap();
    let (fw, k) = firewall(&d);
    fw.apply(&att("c1", 5353)).unwrap();
    fw.apply(&att("c2", 5354)).unwrap();
    k.with(|s| s.tables.clear()); // `nft flush ruleset`
    let r = fw.reload().unwrap();
    assert_eq!((r.attachments, r.bridges), (2, 1));
    k.with(|s| assert_eq!(s.runs.last().unwrap()[0], "add table inet plugnet"));
    assert!(k.has(Table::Inet));
}
