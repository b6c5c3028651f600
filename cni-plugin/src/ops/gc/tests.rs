//! gc over real stores and cache files in a temp dir, with scripted netns, links and sources.

use super::*;
use crate::attachment::{host_veth_name, owner_alias, owner_mac};
use crate::ipam::{allocator, FileStore, Hold, IpamConfig, Owner as IpamOwner};
use serde_json::json;
use std::cell::RefCell;

struct Probe(Vec<(&'static str, NetnsState)>);
impl NetnsProbe for Probe {
    fn probe(&self, path: &Path) -> NetnsState {
        self.0
            .iter()
            .find(|(p, _)| Path::new(p) == path)
            .map(|(_, s)| s.clone())
            .unwrap_or(NetnsState::Gone)
    }
}

#[derive(Default)]
struct Links {
    veths: Vec<HostVeth>,
    deleted: RefCell<Vec<String>>,
}
impl HostLinks for Links {
    fn veths(&self) -> Result<Vec<HostVeth>, CniError> {
        Ok(self.veths.clone())
    }
    fn delete(&self, name: &str) -> Result<(), CniError> {
        self.deleted.borrow_mut().push(name.to_string());
        Ok(())
    }
}

#[derive(Default)]
struct NoFirewall {
    records: Vec<FwRecord>,
    removed: RefCell<Vec<String>>,
}
impl FirewallRecords for NoFirewall {
    fn list(&self, _: &Path) -> Result<Vec<FwRecord>, CniError> {
        Ok(self.records.clone())
    }
    fn remove(&self, _: &Path, r: &FwRecord) -> Result<(), CniError> {
        self.removed.borrow_mut().push(r.container_id.clone());
        Ok(())
    }
}

struct Ids(Option<Vec<&'static str>>);
impl OwnerSource for Ids {
    fn describe(&self) -> String {
        "test source".into()
    }
    fn live_ids(&self) -> Result<Option<BTreeSet<String>>, CniError> {
        Ok(self
            .0
            .as_ref()
            .map(|v| v.iter().map(|s| s.to_string()).collect()))
    }
}

struct Broken;
impl OwnerSource for Broken {
    fn describe(&self) -> String {
        "broken".into()
    }
    fn live_ids(&self) -> Result<Option<BTreeSet<String>>, CniError> {
        Err(CniError::io("unreadable"))
    }
}

fn alloc(data: &Path, id: &str) {
    let cfg = IpamConfig::from_request(
        &json!({"ipam": {"ranges": [[{"subnet": "10.90.0.0/24"}]], "dataDir": data}}),
        None,
    )
    .unwrap();
    let store = FileStore::open(data, "pnonet", true).unwrap().unwrap();
    allocator::allocate(
        &store,
        &cfg.ranges,
        &IpamOwner::new(id, "eth0"),
        &[],
        Hold::Attached,
    )
    .unwrap();
}

/// A cache as libcni >= 1.2 writes it (`netns`), or as 1.1 does (only the result's sandbox).
fn cache(dir: &Path, id: &str, netns: &str) {
    std::fs::create_dir_all(dir.join("results")).unwrap();
    let mut v = json!({"kind": "cniCacheV1", "containerId": id, "ifName": "eth0",
        "networkName": "pnonet",
        "result": {"cniVersion": "1.0.0", "interfaces": [{"name": "pn0"}, {"name": "eth0", "sandbox": netns}]}});
    if id.len() % 2 == 0 {
        v["netns"] = json!(netns);
    }
    std::fs::write(dir.join(format!("results/pnonet-{id}-eth0")), v.to_string()).unwrap();
}

fn holders(data: &Path) -> Vec<String> {
    report::usage(data, "pnonet", None)
        .unwrap()
        .holders
        .into_iter()
        .map(|h| h.container_id)
        .collect()
}

#[test]
fn reclaims_exactly_the_provably_dead_and_dry_run_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (data, cdir) = (d.path().join("data"), d.path().join("cache"));
    // alive: netns exists; state: in a source; dead: netns gone; nocache: no evidence;
    // held: netns gone but its veth's peer is in some namespace; unk: probe cannot tell.
    for id in ["alive", "state", "dead", "nocache", "held", "unk"] {
        alloc(&data, id);
    }
    cache(&cdir, "alive", "/run/netns/a");
    cache(&cdir, "state", "/run/netns/s");
    cache(&cdir, "dead", "/run/netns/d");
    cache(&cdir, "held", "/run/netns/h");
    cache(&cdir, "unk", "/run/netns/u");
    cache(&cdir, "cacheonly", "/run/netns/c");
    let veth = |id: &str, elsewhere| HostVeth {
        name: host_veth_name(id, "eth0"),
        alias: Some(owner_alias("pnonet")),
        mac: None,
        peer_elsewhere: elsewhere,
    };
    let links = Links {
        veths: vec![veth("dead", false), veth("held", true), veth("alive", true)],
        ..Links::default()
    };
    let probe = Probe(vec![
        ("/run/netns/a", NetnsState::Alive),
        ("/run/netns/u", NetnsState::Unknown("EACCES".into())),
    ]);
    let src = Ids(Some(vec!["state"]));
    let absent = Ids(None);
    let sources: [&dyn OwnerSource; 2] = [&src, &absent];
    let mut opts = GcOptions {
        data_dirs: vec![data.clone()],
        cache_dirs: vec![cdir.clone()],
        firewall_dirs: vec![],
        dry_run: true,
    };
    let verdicts = |r: &GcReport| -> Vec<(String, &'static str)> {
        r.owners
            .iter()
            .map(|v| (v.container_id.clone(), v.verdict))
            .collect()
    };
    let expected = vec![
        ("alive".to_string(), "live"),
        ("cacheonly".to_string(), "dead"),
        ("dead".to_string(), "dead"),
        ("held".to_string(), "kept"),
        ("nocache".to_string(), "kept"),
        ("state".to_string(), "live"),
        ("unk".to_string(), "kept"),
    ];
    let dry = run(&opts, &sources, &probe, &links, &NoFirewall::default()).unwrap();
    assert_eq!(verdicts(&dry), expected);
    assert!(dry.actions.iter().all(|a| !a.done));
    assert_eq!(dry.actions.len(), 4, "{:?}", dry.actions);
    assert_eq!(holders(&data).len(), 6);
    assert_eq!(libcni::cache_entries(&cdir).len(), 6);
    assert!(links.deleted.borrow().is_empty());

    opts.dry_run = false;
    let done = run(&opts, &sources, &probe, &links, &NoFirewall::default()).unwrap();
    assert_eq!(verdicts(&done), expected);
    assert!(!done.failed());
    assert!(done.actions.iter().all(|a| a.done));
    let mut left = holders(&data);
    left.sort();
    assert_eq!(left, ["alive", "held", "nocache", "state", "unk"]);
    let ids: Vec<String> = libcni::cache_entries(&cdir)
        .into_iter()
        .map(|c| c.container_id)
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(!ids.contains(&"dead".to_string()) && !ids.contains(&"cacheonly".to_string()));
    assert_eq!(
        *links.deleted.borrow(),
        vec![host_veth_name("dead", "eth0")]
    );
    // A second run finds nothing more to do.
    let again = run(&opts, &sources, &probe, &links, &NoFirewall::default()).unwrap();
    assert!(again.actions.is_empty(), "{:?}", again.actions);
}

#[test]
fn an_unreadable_source_stops_gc() {
    let d = tempfile::tempdir().unwrap();
    alloc(d.path(), "x");
    let opts = GcOptions {
        data_dirs: vec![d.path().to_path_buf()],
        cache_dirs: vec![],
        firewall_dirs: vec![],
        dry_run: false,
    };
    let e = run(
        &opts,
        &[&Broken],
        &Probe(vec![]),
        &Links::default(),
        &NoFirewall::default(),
    )
    .unwrap_err();
    assert!(e.msg.contains("unreadable"));
    assert_eq!(holders(d.path()).len(), 1);
}

#[test]
fn a_veth_of_another_network_is_left_alone() {
    let d = tempfile::tempdir().unwrap();
    cache(d.path(), "dead", "/run/netns/d");
    let links = Links {
        veths: vec![HostVeth {
            name: host_veth_name("dead", "eth0"),
            alias: Some(owner_alias("other")),
            mac: Some(owner_mac("pnonet", &host_veth_name("dead", "eth0"))),
            peer_elsewhere: false,
        }],
        ..Links::default()
    };
    let opts = GcOptions {
        data_dirs: vec![],
        cache_dirs: vec![d.path().to_path_buf()],
        firewall_dirs: vec![],
        dry_run: false,
    };
    let r = run(&opts, &[], &Probe(vec![]), &links, &NoFirewall::default()).unwrap();
    assert_eq!(r.owners[0].verdict, "dead");
    assert!(links.deleted.borrow().is_empty());
    assert_eq!(r.actions.len(), 1);
}

#[test]
fn a_veth_whose_add_died_before_its_alias_is_known_by_its_birth_mac() {
    let d = tempfile::tempdir().unwrap();
    cache(d.path(), "dead", "/run/netns/d");
    let name = host_veth_name("dead", "eth0");
    let links = Links {
        veths: vec![HostVeth {
            name: name.clone(),
            alias: None,
            mac: Some(owner_mac("pnonet", &name)),
            peer_elsewhere: false,
        }],
        ..Links::default()
    };
    let opts = GcOptions {
        cache_dirs: vec![d.path().to_path_buf()],
        ..GcOptions::default()
    };
    run(&opts, &[], &Probe(vec![]), &links, &NoFirewall::default()).unwrap();
    assert_eq!(*links.deleted.borrow(), vec![name]);
}

#[test]
fn a_firewall_record_whose_veth_is_gone_proves_a_cacheless_owner_dead() {
    // A chain whose later plugin failed: no libcni cache, plugnet's ADD complete.
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    for id in ["stranded", "running", "bare"] {
        alloc(&data, id);
    }
    let rec = |id: &str| FwRecord {
        network: "pnonet".into(),
        container_id: id.into(),
        ifname: "eth0".into(),
        host_veth: host_veth_name(id, "eth0"),
    };
    let fw = NoFirewall {
        records: vec![rec("stranded"), rec("running")],
        ..NoFirewall::default()
    };
    let name = host_veth_name("running", "eth0");
    let links = Links {
        veths: vec![HostVeth {
            mac: Some(owner_mac("pnonet", &name)),
            name,
            alias: Some(owner_alias("pnonet")),
            peer_elsewhere: true,
        }],
        ..Links::default()
    };
    let opts = GcOptions {
        data_dirs: vec![data.clone()],
        firewall_dirs: vec![d.path().join("fw")],
        ..GcOptions::default()
    };
    let r = run(&opts, &[], &Probe(vec![]), &links, &fw).unwrap();
    let verdicts: Vec<(&str, &str)> = r
        .owners
        .iter()
        .map(|v| (v.container_id.as_str(), v.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [("bare", "kept"), ("running", "kept"), ("stranded", "dead")]
    );
    assert!(r.owners[2].reason.contains("firewall"), "{:?}", r.owners[2]);
    assert_eq!(*fw.removed.borrow(), vec!["stranded".to_string()]);
    let kinds: Vec<&str> = r.actions.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, ["remove-firewall", "release-ipam"]);
    let mut left = holders(&data);
    left.sort();
    assert_eq!(left, ["bare", "running"]);
}

#[test]
fn damaged_store_entries_are_reported() {
    let d = tempfile::tempdir().unwrap();
    alloc(d.path(), "x");
    std::os::unix::fs::symlink("garbage", d.path().join("pnonet/ip/10.90.0.77")).unwrap();
    let opts = GcOptions {
        data_dirs: vec![d.path().to_path_buf()],
        dry_run: true,
        ..GcOptions::default()
    };
    let r = run(
        &opts,
        &[],
        &Probe(vec![]),
        &Links::default(),
        &NoFirewall::default(),
    )
    .unwrap();
    assert_eq!(r.damaged.len(), 1, "{:?}", r.damaged);
    assert!(r.damaged[0].contains("ip/10.90.0.77"), "{:?}", r.damaged);
}
