//! Unit tests of the runner over a fake plugin executor and a fake kernel.

use super::*;
use crate::netlink::LinkStats;
use serde_json::json;
use std::sync::Mutex;

/// Records (plugin, command, ifname, netns, config); plugin `failing` fails ADD, `faildel`
/// fails DEL. ADD answers with a bridge-like result for the interface it was asked for.
type Call = (String, String, String, String, Value);

#[derive(Default)]
struct FakeExec {
    calls: Mutex<Vec<Call>>,
}

impl FakeExec {
    fn calls(&self) -> Vec<(String, String, String)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.0.clone(), c.1.clone(), c.2.clone()))
            .collect()
    }
}

impl Exec for FakeExec {
    fn exec(
        &self,
        plugin: &Path,
        stdin: &[u8],
        env: &[(String, String)],
    ) -> Result<Vec<u8>, CniError> {
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let name = plugin.file_name().unwrap().to_string_lossy().into_owned();
        let (cmd, ifname, netns) = (get("CNI_COMMAND"), get("CNI_IFNAME"), get("CNI_NETNS"));
        let conf: Value = serde_json::from_slice(stdin).unwrap();
        self.calls.lock().unwrap().push((
            name.clone(),
            cmd.clone(),
            ifname.clone(),
            netns.clone(),
            conf.clone(),
        ));
        match (name.as_str(), cmd.as_str()) {
            ("failing", "ADD") => Err(CniError::config("bad bridge config")),
            ("faildel", "DEL") => Err(CniError::internal("cannot delete")),
            ("strict", "DEL") if conf.get("runtimeConfig").is_some() => {
                Err(CniError::config("runtimeConfig: cannot decode"))
            }
            (_, "ADD") => Ok(serde_json::to_vec(&json!({
                "cniVersion": conf["cniVersion"],
                "interfaces": [{"name": "br0"}, {"name": "veth1"},
                               {"name": ifname, "mac": "02:00:00:00:00:01", "sandbox": netns}],
                "ips": [{"address": "10.80.0.2/24", "gateway": "10.80.0.1", "interface": 2}]
            }))
            .unwrap()),
            _ => Ok(Vec::new()),
        }
    }
}

struct FakeKernel;

impl Kernel for FakeKernel {
    fn counters(&self, _: &Path, ifnames: &[String]) -> Result<Vec<Option<LinkStats>>, CniError> {
        Ok(ifnames
            .iter()
            .map(|n| {
                (n != "gone").then_some(LinkStats {
                    rx_bytes: 100,
                    tx_packets: 3,
                    ..LinkStats::default()
                })
            })
            .collect())
    }
    fn host_links(&self, names: &[String]) -> Result<Vec<Option<LinkInfo>>, CniError> {
        Ok(names
            .iter()
            .map(|n| {
                Some(match n.as_str() {
                    "br0" => LinkInfo {
                        kind: Some("bridge".into()),
                        addrs: vec![
                            "10.80.0.1/24".parse().unwrap(),
                            "fe80::1/64".parse().unwrap(),
                        ],
                    },
                    _ => LinkInfo {
                        kind: Some("veth".into()),
                        addrs: vec![],
                    },
                })
            })
            .collect())
    }
}

const NETNS: &str = "/proc/self/ns/net";

fn setup(plugins: &[&str]) -> (tempfile::TempDir, Runner, Arc<FakeExec>) {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    let conf = d.path().join("net.d");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    for p in plugins {
        std::fs::write(bin.join(p), "").unwrap();
    }
    std::fs::write(
        conf.join("10-ov.conflist"),
        r#"{"cniVersion":"1.0.0","name":"overlay-net","plugins":[{"type":"ok"},{"type":"meta"}]}"#,
    )
    .unwrap();
    let exec = Arc::new(FakeExec::default());
    let opts = RunnerOptions {
        state_dir: d.path().join("state"),
        cni_path: vec![bin],
        conf_dir: conf,
    };
    (d, Runner::new(opts, exec.clone()), exec)
}

fn spec(v: Value) -> Spec {
    Spec::from_slice(v.to_string().as_bytes()).unwrap()
}

fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

#[test]
fn up_attaches_in_order_with_default_and_explicit_ifnames() {
    let (_d, r, exec) = setup(&["ok", "meta"]);
    let out = r
        .up("c1", Path::new(NETNS), &spec(json!({"networks": [
            {"name": "underlay", "type": "ok", "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}},
            {"name": "overlay", "conflist": "overlay-net"},
            {"name": "private", "type": "ok", "ifname": "priv0", "config": {"cniVersion": "0.4.0"}}
        ]})))
        .unwrap();
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        ["underlay", "overlay", "private"]
    );
    assert_eq!(out["private"]["cniVersion"], "0.4.0");
    assert_eq!(
        out["private"]["ips"][0]["version"], "4",
        "result in the list's own version"
    );
    assert_eq!(
        exec.calls(),
        [
            s("ok", "ADD", "eth0"),
            s("ok", "ADD", "eth1"),
            s("meta", "ADD", "eth1"),
            s("ok", "ADD", "priv0")
        ]
    );
    let calls = exec.calls.lock().unwrap().clone();
    assert_eq!(calls[0].3, NETNS);
    assert_eq!(calls[0].4["name"], "underlay");
    assert_eq!(
        calls[0].4["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert_eq!(
        calls[1].4["name"], "overlay-net",
        "a conflist keeps its own name"
    );
    let st = r.state().load("c1").unwrap().unwrap();
    assert_eq!(st.networks.len(), 3);
    assert!(r.list().unwrap()[0].results.iter().all(Option::is_some));
    let info = r.info("c1", &FakeKernel).unwrap();
    assert_eq!(info[0].name, "underlay");
    assert_eq!(info[0].mac.as_deref(), Some("02:00:00:00:00:01"));
    assert_eq!(
        info[0].ips,
        vec!["10.80.0.2/24".parse::<IpNetworkT>().unwrap()]
    );
    assert_eq!(
        info[0].gateways,
        vec!["10.80.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(info[0].bridge.as_deref(), Some("br0"));
    assert_eq!(info[0].host_interface.as_deref(), Some("veth1"));
    assert_eq!(
        info[0].host_ips,
        vec!["10.80.0.1/24".parse::<IpNetworkT>().unwrap()]
    );
    assert_eq!(info[0].port_mappings.len(), 1);
    assert_eq!(info[1].cni_network, "overlay-net");
    assert_eq!(info[2].interface, "priv0");
    let m = r.metrics("c1", &FakeKernel).unwrap();
    assert_eq!(m.networks.len(), 3);
    assert_eq!(
        (m.networks[1].name.as_str(), m.networks[1].rx_bytes),
        ("overlay", 100)
    );
    let checks = r.check("c1").unwrap();
    assert!(checks.iter().all(|c| c.error.is_none()), "{checks:?}");
    assert_eq!(r.list().unwrap().len(), 1);

    exec.calls.lock().unwrap().clear();
    r.down("c1", None).unwrap();
    assert_eq!(
        exec.calls(),
        [
            s("ok", "DEL", "priv0"),
            s("meta", "DEL", "eth1"),
            s("ok", "DEL", "eth1"),
            s("ok", "DEL", "eth0")
        ]
    );
    let calls = exec.calls.lock().unwrap().clone();
    assert_eq!(
        calls[0].4["prevResult"]["ips"][0]["address"], "10.80.0.2/24",
        "DEL gets the cached result"
    );
    assert!(r.state().load("c1").unwrap().is_none());
    assert!(r.list().unwrap().is_empty());
    r.down("c1", None).unwrap();
    assert_eq!(
        r.info("c1", &FakeKernel).unwrap_err().code,
        ErrorCode::UnknownContainer
    );
}

type IpNetworkT = ipnetwork::IpNetwork;

#[test]
fn a_failing_entry_rolls_back_everything_before_it_in_reverse() {
    let (d, r, exec) = setup(&["ok", "meta", "failing"]);
    let e = r
        .up(
            "c1",
            Path::new(NETNS),
            &spec(json!({"networks": [
                {"name": "a", "type": "ok"}, {"name": "b", "conflist": "overlay-net"},
                {"name": "c", "type": "failing"}, {"name": "d", "type": "ok"}
            ]})),
        )
        .unwrap_err();
    assert!(
        e.msg.contains("attach network \"c\" (entry 2) as eth2"),
        "{e}"
    );
    assert!(e.msg.contains("bad bridge config"), "{e}");
    assert_eq!(
        e.code,
        ErrorCode::InvalidConfig,
        "the plugin's code is kept"
    );
    assert_eq!(
        exec.calls(),
        [
            s("ok", "ADD", "eth0"),
            s("ok", "ADD", "eth1"),
            s("meta", "ADD", "eth1"),
            s("failing", "ADD", "eth2"),
            s("failing", "DEL", "eth2"),
            s("meta", "DEL", "eth1"),
            s("ok", "DEL", "eth1"),
            s("ok", "DEL", "eth0"),
        ]
    );
    assert!(r.state().load("c1").unwrap().is_none());
    let left: Vec<_> = std::fs::read_dir(d.path().join("state/results"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "no cached results left: {left:?}");
}

#[test]
fn rollback_of_a_hot_plug_leaves_earlier_networks_alone() {
    let (_d, r, exec) = setup(&["ok", "failing"]);
    r.up(
        "c1",
        Path::new(NETNS),
        &spec(json!({"networks": [{"name": "a", "type": "ok"}]})),
    )
    .unwrap();
    exec.calls.lock().unwrap().clear();
    r.up(
        "c1",
        Path::new(NETNS),
        &spec(json!({"networks": [
        {"name": "b", "type": "ok"}, {"name": "c", "type": "failing"}]})),
    )
    .unwrap_err();
    assert_eq!(
        exec.calls(),
        [
            s("ok", "ADD", "eth1"),
            s("failing", "ADD", "eth2"),
            s("failing", "DEL", "eth2"),
            s("ok", "DEL", "eth1")
        ]
    );
    let st = r.state().load("c1").unwrap().unwrap();
    assert_eq!(st.networks.len(), 1);
    assert_eq!(st.networks[0].name, "a");
}

#[test]
fn hot_plug_takes_the_lowest_free_ethn_and_refuses_clashes() {
    let (_d, r, _exec) = setup(&["ok"]);
    let ns = Path::new(NETNS);
    r.up(
        "c1",
        ns,
        &spec(json!({"networks": [{"name": "a", "type": "ok"}, {"name": "b", "type": "ok"}]})),
    )
    .unwrap();
    r.up(
        "c1",
        ns,
        &spec(json!({"networks": [{"name": "c", "type": "ok"}]})),
    )
    .unwrap();
    r.down("c1", Some("b")).unwrap();
    r.down("c1", Some("b")).unwrap();
    r.down("c1", Some("never")).unwrap();
    r.up(
        "c1",
        ns,
        &spec(json!({"networks": [{"name": "d", "type": "ok"}]})),
    )
    .unwrap();
    let st = r.state().load("c1").unwrap().unwrap();
    let names: Vec<_> = st
        .networks
        .iter()
        .map(|a| (a.name.as_str(), a.ifname.as_str()))
        .collect();
    assert_eq!(names, [("a", "eth0"), ("c", "eth2"), ("d", "eth1")]);
    let e = r
        .up(
            "c1",
            ns,
            &spec(json!({"networks": [{"name": "a", "type": "ok"}]})),
        )
        .unwrap_err();
    assert!(e.msg.contains("already attached"), "{e}");
    let e = r
        .up(
            "c1",
            ns,
            &spec(json!({"networks": [{"name": "x", "type": "ok", "ifname": "eth2"}]})),
        )
        .unwrap_err();
    assert!(e.msg.contains("already in use"), "{e}");
    let e = r.up(
        "c1",
        Path::new("/proc/self/ns/pid"),
        &spec(json!({"networks": [{"name": "y", "type": "ok"}]})),
    );
    assert!(e.is_err(), "a different namespace is refused");
    let e = r
        .up(
            "c1",
            ns,
            &spec(json!({"networks": [{"name": "z", "conflist": "missing"}]})),
        )
        .unwrap_err();
    assert!(e.msg.contains("no net configuration"), "{e}");
    let e = r.up(
        "c2",
        Path::new("/nonexistent/ns"),
        &spec(json!({"networks": [{"name": "a", "type": "ok"}]})),
    );
    assert_eq!(e.unwrap_err().code, ErrorCode::UnknownContainer);
    assert!(r
        .up(
            "../c",
            ns,
            &spec(json!({"networks": [{"name": "a", "type": "ok"}]}))
        )
        .is_err());
}

#[test]
fn down_after_the_netns_is_gone_runs_del_without_netns_and_keeps_failures() {
    let (_d, r, exec) = setup(&["ok", "faildel"]);
    let mut st = ContainerState::new("c9", Path::new("/run/netns/pnr-gone-does-not-exist"));
    for (name, t, ifname) in [
        ("a", "ok", "eth0"),
        ("b", "faildel", "eth1"),
        ("c", "ok", "eth2"),
    ] {
        st.networks.push(AttachmentState {
            name: name.into(),
            ifname: ifname.into(),
            list: json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": t}]}),
            runtime_config: Map::new(),
        });
    }
    r.state().save(&st).unwrap();
    let e = r.down("c9", None).unwrap_err();
    assert!(
        e.msg.contains("b: ") && e.msg.contains("cannot delete"),
        "{e}"
    );
    assert_eq!(
        exec.calls(),
        [
            s("ok", "DEL", "eth2"),
            s("faildel", "DEL", "eth1"),
            s("ok", "DEL", "eth0")
        ]
    );
    assert!(
        exec.calls.lock().unwrap().iter().all(|c| c.3.is_empty()),
        "no CNI_NETNS once it is gone"
    );
    let st = r.state().load("c9").unwrap().unwrap();
    assert_eq!(
        st.networks.len(),
        1,
        "only the failed network stays recorded"
    );
    assert_eq!(st.networks[0].name, "b");
}

#[test]
fn down_without_state_takes_a_killed_first_write_temporary() {
    // `up` SIGKILLed while writing its first state: only `.c8.json.<pid>.<n>.tmp` exists.
    let (d, r, exec) = setup(&["ok"]);
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let dir = d.path().join("state/containers");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!(".c8.json.{dead}.0.tmp"));
    std::fs::write(&tmp, "{").unwrap();
    r.down("c8", None).unwrap();
    assert!(!tmp.exists(), "the dead writer's temporary is gone");
    assert!(exec.calls().is_empty());
}

#[test]
fn check_reports_each_network() {
    let (_d, r, _exec) = setup(&["ok"]);
    r.up(
        "c1",
        Path::new(NETNS),
        &spec(json!({"networks": [{"name": "a", "type": "ok"}]})),
    )
    .unwrap();
    for f in std::fs::read_dir(r.state().root().join("results")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let out = r.check("c1").unwrap();
    assert!(out[0]
        .error
        .as_deref()
        .unwrap()
        .contains("did not complete"));
    assert_eq!(
        r.check("nope").unwrap_err().code,
        ErrorCode::UnknownContainer
    );
}

#[test]
fn options_come_from_flag_then_env_then_defaults() {
    let env = |k: &str| match k {
        "PLUGNET_STATE_DIR" => Some("/s".to_string()),
        "CNI_PATH" => Some("/a::/b".to_string()),
        "NETCONFPATH" => Some(String::new()),
        _ => None,
    };
    let o = RunnerOptions::from_env(None, &env);
    assert_eq!(o.state_dir, PathBuf::from("/s"));
    assert_eq!(o.cni_path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    assert_eq!(o.conf_dir, PathBuf::from(DEFAULT_CONF_DIR));
    let o = RunnerOptions::from_env(Some("/flag".into()), &env);
    assert_eq!(o.state_dir, PathBuf::from("/flag"));
    let o = RunnerOptions::from_env(None, &|_| None);
    assert_eq!(
        (o.state_dir, o.cni_path),
        (
            PathBuf::from(DEFAULT_STATE_DIR),
            vec![PathBuf::from(DEFAULT_CNI_PATH)]
        )
    );
}

#[test]
fn attachments_whose_joined_names_coincide_keep_their_own_caches() {
    // Network `a` + container `b-c` and network `a-b` + container `c`: libcni's naming gives
    // both `a-b-c-eth0`.
    let (_d, r, _exec) = setup(&["ok"]);
    let one = |net: &str| spec(json!({"networks": [{"name": net, "type": "ok"}]}));
    r.up("b-c", Path::new(NETNS), &one("a")).unwrap();
    r.up("c", Path::new(NETNS), &one("a-b")).unwrap();
    let results = r.state().root().join("results");
    let mut names: Vec<String> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a-b:c:eth0", "a:b-c:eth0"]);
    r.down("b-c", None).unwrap();
    // The other container's result survived the first one's down.
    assert!(r.info("c", &FakeKernel).unwrap()[0].mac.is_some());
    assert!(r.list().unwrap()[0].results[0].is_some());
}

#[test]
fn a_cache_in_the_old_naming_is_read_when_its_content_is_ours_and_replaced() {
    let (_d, r, exec) = setup(&["ok"]);
    let one = spec(json!({"networks": [{"name": "a", "type": "ok"}]}));
    r.up("b-c", Path::new(NETNS), &one).unwrap();
    let results = r.state().root().join("results");
    // What an older plugnet left: its libcni name, and a collision holding another's result.
    std::fs::rename(results.join("a:b-c:eth0"), results.join("a-b-c-eth0")).unwrap();
    assert!(r.list().unwrap()[0].results[0].is_some(), "old name read");
    let foreign = r#"{"kind":"cniCacheV1","networkName":"a-b","containerId":"c","ifName":"eth0",
        "result":{"cniVersion":"1.0.0","ips":[{"address":"10.99.0.9/24"}]}}"#;
    std::fs::write(results.join("a-b-c-eth0"), foreign).unwrap();
    assert!(
        r.list().unwrap()[0].results[0].is_none(),
        "another attachment's file is not ours"
    );
    exec.calls.lock().unwrap().clear();
    r.down("b-c", None).unwrap();
    let calls = exec.calls.lock().unwrap().clone();
    assert!(
        calls[0].4.get("prevResult").is_none(),
        "no foreign prevResult"
    );
    assert!(
        results.join("a-b-c-eth0").exists(),
        "down removes only its own cache"
    );
}

#[test]
fn a_spec_with_capability_args_of_the_wrong_type_is_refused_at_parse_time() {
    // `plugnet up` parses the spec before it takes a lock or records anything.
    let bad = json!({"networks": [{"name": "n", "type": "ok",
        "runtimeConfig": {"portMappings": "8080:80"}}]});
    let e = Spec::from_slice(bad.to_string().as_bytes()).unwrap_err();
    assert!(e.msg.contains("runtimeConfig.portMappings"), "{}", e.msg);
    assert!(e.msg.contains("network \"n\""), "{}", e.msg);
}

#[test]
fn down_succeeds_when_del_fails_only_on_the_capability_args() {
    let (_d, r, exec) = setup(&["strict"]);
    r.up(
        "c1",
        Path::new(NETNS),
        &spec(json!({"networks": [{"name": "n", "type": "strict",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}]})),
    )
    .unwrap();
    exec.calls.lock().unwrap().clear();
    r.down("c1", None).unwrap();
    let calls = exec.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "one DEL with, one without runtimeConfig");
    assert!(calls[1].4.get("runtimeConfig").is_none());
    assert!(
        r.state().load("c1").unwrap().is_none(),
        "the record is gone"
    );
}
