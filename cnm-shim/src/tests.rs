//! Driver and router tests over the fake backend: Docker's call sequences (protocols.md B8)
//! replayed as dockerd sends them, checked by what Docker and the store would see.

use crate::api::*;
use crate::backend::fake::FakeBackend;
use crate::driver::{Driver, DriverConfig};
use crate::server::dispatch;
use crate::state::Store;
use serde_json::{json, Value};

struct Env {
    _dir: tempfile::TempDir,
    d: Driver<FakeBackend>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let d = Driver::new(
        DriverConfig::new(dir.path().join("ns")),
        FakeBackend::default(),
        Store::open(&dir.path().join("state")).unwrap(),
    );
    Env { _dir: dir, d }
}

fn call(d: &Driver<FakeBackend>, path: &str, body: Value) -> (u16, Value) {
    let b = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    let r = dispatch(d, path, &b);
    (
        r.status,
        serde_json::from_slice(&r.body).expect("every reply is JSON"),
    )
}

fn ok(d: &Driver<FakeBackend>, path: &str, body: Value) -> Value {
    let (s, v) = call(d, path, body);
    assert_eq!(s, 200, "{path}: {v}");
    assert!(
        v.get("Err").is_none() && v.get("Error").is_none(),
        "{path}: {v}"
    );
    v
}

const NET: &str = "6f1a0c3d2b9e8f7a6f1a0c3d2b9e8f7a6f1a0c3d2b9e8f7a6f1a0c3d2b9e8f7a";
const EP: &str = "e0e1e2e3e4e5e6e7e8e9eaebecedeeefe0e1e2e3e4e5e6e7e8e9eaebecedeeef";

/// `docker network create -d X --ipam-driver X --subnet S`, as dockerd sequences it.
fn create_network(d: &Driver<FakeBackend>, subnet: &str, generic: Value) -> (String, String) {
    ok(d, "/Plugin.Activate", Value::Null);
    ok(d, "/NetworkDriver.GetCapabilities", Value::Null);
    ok(d, "/IpamDriver.GetCapabilities", Value::Null);
    ok(d, "/IpamDriver.GetDefaultAddressSpaces", Value::Null);
    let p = ok(
        d,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace":"plugnet-local","Pool":subnet,"SubPool":"","Options":{},"V6":false}),
    );
    let pool_id = p["PoolID"].as_str().unwrap().to_string();
    let gw = match p["Data"].get(GATEWAY_OPTION) {
        Some(g) => g.as_str().unwrap().to_string(),
        None => ok(
            d,
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": GATEWAY_OPTION}}),
        )["Address"]
            .as_str()
            .unwrap()
            .to_string(),
    };
    ok(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {GENERIC_OPTION: generic, "com.docker.network.enable_ipv6": false},
               "IPv4Data": [{"AddressSpace":"plugnet-local","Pool": p["Pool"], "Gateway": gw}], "IPv6Data": []}),
    );
    (pool_id, gw)
}

/// `docker run --network N`: RequestAddress, CreateEndpoint, Join.
fn run_container(d: &Driver<FakeBackend>, pool_id: &str, ep: &str) -> (String, Value) {
    let a = ok(
        d,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"com.docker.network.endpoint.name": "c1"}}),
    );
    let addr = a["Address"].as_str().unwrap().to_string();
    let r = ok(
        d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": ep, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
               "Options": {PORTMAP_OPTION: [], "com.docker.network.endpoint.exposedports": []}}),
    );
    let ip: std::net::Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
    let o = ip.octets();
    let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    assert_eq!(
        r,
        json!({"Interface": {"MacAddress": mac}}),
        "only the MAC Docker left empty is filled (trap 20)"
    );
    let j = ok(
        d,
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x",
               "Options": {PORTMAP_OPTION: [{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}}),
    );
    (addr, j)
}

fn stop_container(d: &Driver<FakeBackend>, pool_id: &str, ep: &str, addr: &str) {
    let e = json!({"NetworkID": NET, "EndpointID": ep});
    ok(d, "/NetworkDriver.RevokeExternalConnectivity", e.clone());
    ok(d, "/NetworkDriver.Leave", e.clone());
    ok(d, "/NetworkDriver.DeleteEndpoint", e);
    let ip = addr.split('/').next().unwrap();
    ok(
        d,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": ip}),
    );
}

#[test]
fn derived_network_full_lifecycle_leaves_nothing() {
    let e = env();
    let d = &e.d;
    let (pool_id, gw) = create_network(d, "10.60.1.0/24", json!({"plugnet.export": "true"}));
    assert_eq!(gw, "10.60.1.1/24");
    assert!(d
        .backend
        .exported
        .lock()
        .unwrap()
        .contains_key("pn-10.60.1.0_24"));
    let (addr, j) = run_container(d, &pool_id, EP);
    assert_eq!(addr, "10.60.1.2/24");
    assert_eq!(
        j["InterfaceName"],
        json!({"SrcName": "pnje0e1e2e3e4e5", "DstPrefix": "eth"})
    );
    assert_eq!(j["Gateway"], "10.60.1.1");
    assert_eq!(j["DisableGatewayService"], true);
    // The Docker-chosen address went to the CNI ADD, and the store has it under the endpoint.
    let att = d.backend.attached.lock().unwrap()[EP].clone();
    assert_eq!(att.capability_args["ips"], json!(["10.60.1.2/24"]));
    assert_eq!(
        att.capability_args["portMappings"],
        json!([{"hostPort":8080,"containerPort":80,"protocol":"tcp"}])
    );
    assert!(att.args.contains(&("IP".into(), "10.60.1.2".into())));
    assert_eq!(att.conflist["plugins"][0]["type"], "plugnet");
    let held = d.backend.held_by("pn-10.60.1.0_24");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].1.container_id, EP);
    // Join again (idempotent) returns the same reply without a second ADD.
    let j2 = ok(
        d,
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}}),
    );
    assert_eq!(j, j2);
    assert_eq!(
        d.backend
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("attach"))
            .count(),
        1
    );

    stop_container(d, &pool_id, EP, &addr);
    assert!(d.backend.held_by("pn-10.60.1.0_24").is_empty());
    assert!(d.backend.attached.lock().unwrap().is_empty());
    // docker network rm
    ok(
        d,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": "10.60.1.1"}),
    );
    ok(d, "/IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    assert!(d.backend.exported.lock().unwrap().is_empty());
    let st = d.snapshot();
    assert!(st.networks.is_empty() && st.pools.is_empty() && st.endpoints.is_empty());
    for sub in ["networks", "pools", "endpoints"] {
        assert_eq!(
            std::fs::read_dir(d.store.root().join(sub)).unwrap().count(),
            0,
            "{sub}"
        );
    }
}

#[test]
fn teardown_is_idempotent_and_accepts_unknown_ids() {
    let e = env();
    let d = &e.d;
    let ep = json!({"NetworkID": NET, "EndpointID": EP});
    for p in [
        "/NetworkDriver.Leave",
        "/NetworkDriver.DeleteEndpoint",
        "/NetworkDriver.RevokeExternalConnectivity",
        "/NetworkDriver.EndpointOperInfo",
    ] {
        ok(d, p, ep.clone());
        ok(d, p, ep.clone());
    }
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    ok(d, "/IpamDriver.ReleasePool", json!({"PoolID": "nope"}));
    ok(
        d,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": "nope", "Address": "10.60.0.9"}),
    );
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mk = || {
        Driver::new(
            DriverConfig::new(dir.path().join("ns")),
            FakeBackend::default(),
            Store::open(&dir.path().join("state")).unwrap(),
        )
    };
    let d = mk();
    let (pool_id, _) = create_network(&d, "10.60.2.0/24", json!({}));
    let (addr, j) = run_container(&d, &pool_id, EP);
    drop(d);
    let d = mk();
    // Docker does not replay CreateNetwork: the network is known from disk.
    let j2 = ok(
        &d,
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}}),
    );
    assert_eq!(j, j2);
    // A second container after the restart gets the next address, not the held one.
    let a = ok(
        &d,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    assert_ne!(a["Address"].as_str().unwrap(), addr);
    stop_container(&d, &pool_id, EP, &addr);
    assert!(d
        .backend
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c == &format!("detach {EP}")));
}

#[test]
fn reconcile_undoes_interrupted_attach_and_collects_dead_endpoints() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.60.3.0/24", json!({}));
    let (_, j) = run_container(d, &pool_id, EP);
    assert_eq!(d.reconcile(), 0, "a live endpoint is left alone");
    d.backend
        .dead
        .lock()
        .unwrap()
        .push(j["InterfaceName"]["SrcName"].as_str().unwrap().into());
    assert_eq!(d.reconcile(), 1);
    assert!(d.snapshot().endpoints.is_empty());
    assert!(
        d.backend.held_by("pn-10.60.3.0_24").is_empty(),
        "its address went back"
    );
    // Docker's late calls for it still succeed.
    ok(
        d,
        "/NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP}),
    );
}

#[test]
fn derived_plugnet_networks_hand_the_interface_over_without_staging() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.60.11.0/24", json!({}));
    let (addr, j) = run_container(d, &pool_id, EP);
    let req = d.backend.attached.lock().unwrap()[EP].clone();
    assert!(req.handoff);
    assert_eq!(
        req.netns,
        std::path::PathBuf::from("/var/run/docker/netns/x")
    );
    assert!(req
        .args
        .iter()
        .any(|(k, v)| k == "PLUGNET_HANDOFF_IFNAME" && *v == req.tmp_name));
    assert_eq!(j["InterfaceName"]["SrcName"], json!(req.tmp_name));
    assert!(
        d.snapshot().endpoints[EP]
            .attachment
            .as_ref()
            .unwrap()
            .handoff
    );
    // The derived network's bridge is held in plugnet's host firewall for its lifetime.
    let holds = |on: bool| {
        d.backend
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("hold_bridge ") && c.ends_with(&format!(" {on}")))
            .count()
    };
    assert_eq!((holds(true), holds(false)), (1, 0));
    stop_container(d, &pool_id, EP, &addr);
    ok(d, "/IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    assert_eq!((holds(true), holds(false)), (1, 1));
    // Only a one-plugin plugnet list qualifies: anything else may configure the container.
    use crate::adapter::handoff_arg;
    assert!(handoff_arg(&json!({"plugins": [{"type": "plugnet"}]})).is_some());
    assert!(handoff_arg(&json!({"plugins": [{"type": "bridge"}]})).is_none());
    assert!(handoff_arg(&json!({"plugins": [{"type": "plugnet"}, {"type": "portmap"}]})).is_none());
}

#[test]
fn delete_network_collects_endpoints_docker_forgot() {
    // dockerd killed after our Join but before its own store write: it never sends
    // DeleteEndpoint, and later deletes the network as if it were empty.
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.60.9.0/24", json!({}));
    run_container(d, &pool_id, EP);
    ok(d, "/IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    assert!(
        d.snapshot().endpoints.is_empty(),
        "the endpoint went with it"
    );
    assert!(d.backend.attached.lock().unwrap().is_empty(), "CNI DEL ran");
    assert!(d.backend.held_by("pn-10.60.9.0_24").is_empty());
}

#[test]
fn reconcile_collects_endpoints_of_deleted_networks() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.60.10.0/24", json!({}));
    run_container(d, &pool_id, EP);
    // The network record vanished while a shim holding the endpoint was down.
    d.forget_network_for_test(NET);
    assert_eq!(d.reconcile(), 1);
    assert!(d.snapshot().endpoints.is_empty());
    assert!(d.backend.attached.lock().unwrap().is_empty(), "CNI DEL ran");
}

#[test]
fn failed_join_is_rolled_back_and_reported_under_err() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.60.4.0/24", json!({}));
    *d.backend.fail_attach.lock().unwrap() = Some("bridge exploded".into());
    let a = ok(
        d,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    let r = ok(
        d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": a["Address"], "MacAddress": "02:00:00:00:00:01"}, "Options": {}}),
    );
    assert_eq!(r, json!({}), "Docker's MAC is not echoed");
    let (s, v) = call(
        d,
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}}),
    );
    assert_eq!(s, 500);
    assert!(
        v["Err"].as_str().unwrap().contains("bridge exploded"),
        "{v}"
    );
    assert!(d.snapshot().endpoints[EP].attachment.is_none());
}

#[test]
fn existing_conflist_mode_takes_pool_and_gateway_from_it() {
    let e = env();
    let d = &e.d;
    d.backend.conflists.lock().unwrap().insert(
        "ref".into(),
        json!({"cniVersion":"1.0.0","name":"ref","plugins":[{"type":"bridge","ipam":{"type":"host-local",
            "ranges":[[{"subnet":"10.61.0.0/24","gateway":"10.61.0.254"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}),
    );
    let p = ok(
        d,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace":"x","Pool":"","SubPool":"","Options":{"cni.network":"ref"},"V6":false}),
    );
    assert_eq!(p["Pool"], "10.61.0.0/24");
    assert_eq!(p["Data"][GATEWAY_OPTION], "10.61.0.254/24");
    let (s, v) = call(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {GENERIC_OPTION: {"cni.network": "ref"}},
               "IPv4Data": [{"Pool": "10.62.0.0/24", "Gateway": "10.62.0.1/24"}]}),
    );
    assert_eq!(s, 500, "a pool outside the conflist is refused: {v}");
    ok(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {GENERIC_OPTION: {"cni.network": "ref"}},
               "IPv4Data": [{"Pool": "10.61.0.0/24", "Gateway": "10.61.0.254/24"}]}),
    );
    let (addr, j) = run_container(d, p["PoolID"].as_str().unwrap(), EP);
    assert_eq!(addr, "10.61.0.1/24");
    assert_eq!(j["Gateway"], "10.61.0.254");
    assert_eq!(
        d.backend.attached.lock().unwrap()[EP].conflist["name"],
        "ref"
    );
}

#[test]
fn pools_are_refcounted_and_auto_pools_never_repeat() {
    let e = env();
    let d = &e.d;
    let req =
        json!({"AddressSpace":"a","Pool":"10.60.5.0/24","SubPool":"","Options":{},"V6":false});
    let a = ok(d, "/IpamDriver.RequestPool", req.clone());
    let b = ok(d, "/IpamDriver.RequestPool", req.clone());
    assert_eq!(a, b);
    let (s, v) = call(
        d,
        "/IpamDriver.RequestPool",
        json!({"Pool":"10.60.5.128/25","V6":false}),
    );
    assert_eq!(s, 200);
    assert!(
        v["Error"].as_str().unwrap().contains("overlaps"),
        "IPAM errors are under Error: {v}"
    );
    let auto = json!({"AddressSpace":"a","Pool":"","SubPool":"","Options":null,"V6":false});
    let x = ok(d, "/IpamDriver.RequestPool", auto.clone());
    let y = ok(d, "/IpamDriver.RequestPool", auto);
    assert_ne!(x["Pool"], y["Pool"], "trap 26");
    ok(d, "/IpamDriver.ReleasePool", json!({"PoolID": a["PoolID"]}));
    assert!(
        d.snapshot()
            .pools
            .contains_key(a["PoolID"].as_str().unwrap()),
        "one reference left"
    );
    ok(d, "/IpamDriver.ReleasePool", json!({"PoolID": a["PoolID"]}));
    assert!(!d
        .snapshot()
        .pools
        .contains_key(a["PoolID"].as_str().unwrap()));
}

#[test]
fn requested_addresses_are_exclusive() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.60.6.0/24", json!({}));
    let r = |ip: &str| {
        call(
            d,
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": ip, "Options": {}}),
        )
    };
    assert_eq!(r("10.60.6.7").1["Address"], "10.60.6.7/24");
    for bad in [
        "10.60.6.7",
        "10.60.6.1",
        "10.60.7.1",
        "10.60.6.0",
        "10.60.6.255",
        "nonsense",
    ] {
        let (s, v) = r(bad);
        assert_eq!(s, 200);
        assert!(v["Error"].is_string(), "{bad}: {v}");
    }
    ok(
        d,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": "10.60.6.7"}),
    );
    assert_eq!(r("10.60.6.7").1["Address"], "10.60.6.7/24");
}

#[test]
fn router_errors_and_unknown_methods() {
    let e = env();
    let d = &e.d;
    let (s, v) = call(d, "/NetworkDriver.Bogus", json!({}));
    assert_eq!(s, 404);
    assert!(v["Err"].is_string());
    let r = dispatch(d, "/NetworkDriver.Join", b"{not json");
    assert_eq!(r.status, 500);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        v["Err"]
            .as_str()
            .unwrap()
            .contains("decode NetworkDriver.Join"),
        "{v}"
    );
    let r = dispatch(d, "/IpamDriver.RequestPool", b"");
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["Error"].is_string() && v.get("Err").is_none());
    let v = ok(d, "/Plugin.Activate", Value::Null);
    assert_eq!(v, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
    assert_eq!(
        ok(d, "/NetworkDriver.GetCapabilities", Value::Null),
        json!({"Scope": "local", "ConnectivityScope": "local"})
    );
    assert_eq!(
        ok(
            d,
            "/NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID":"a","EndpointID":"b","Options":{}})
        ),
        json!({})
    );
    assert_eq!(
        ok(
            d,
            "/NetworkDriver.DiscoverNew",
            json!({"DiscoveryType":1,"DiscoveryData":{}})
        ),
        json!({})
    );
    assert_eq!(
        ok(
            d,
            "/NetworkDriver.EndpointOperInfo",
            json!({"NetworkID":"a","EndpointID":"b"})
        ),
        json!({"Value": {}})
    );
    let (s, v) = call(
        d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": "unknown", "EndpointID": EP, "Interface": {}}),
    );
    assert_eq!(s, 500);
    assert!(v["Err"].as_str().unwrap().contains("not known"));
}

#[test]
fn existing_conflist_implicit_gateway_is_never_handed_out() {
    let e = env();
    let d = &e.d;
    d.backend.conflists.lock().unwrap().insert(
        "hl".into(),
        json!({"cniVersion":"1.0.0","name":"hl","plugins":[{"type":"bridge","ipam":{"type":"host-local",
            "ranges":[[{"subnet":"10.61.1.0/24"}]]}}]}),
    );
    let p = ok(
        d,
        "/IpamDriver.RequestPool",
        json!({"Pool":"","Options":{"cni.network":"hl"},"V6":false}),
    );
    assert_eq!(p["Data"][GATEWAY_OPTION], "10.61.1.1/24");
    let a = ok(
        d,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": p["PoolID"], "Address": "", "Options": {}}),
    );
    assert_eq!(a["Address"], "10.61.1.2/24");
}

#[test]
fn conflist_pool_overlap_loop_is_stopped() {
    let e = env();
    let d = &e.d;
    d.backend.conflists.lock().unwrap().insert(
        "hl".into(),
        json!({"cniVersion":"1.0.0","name":"hl","plugins":[{"type":"bridge","ipam":{"type":"host-local",
            "ranges":[[{"subnet":"10.61.2.0/24"}]]}}]}),
    );
    let req = json!({"Pool":"","Options":{"cni.network":"hl"},"V6":false});
    ok(d, "/IpamDriver.RequestPool", req.clone());
    // dockerd found an overlapping host route and asks again while holding the first.
    let (s, v) = call(d, "/IpamDriver.RequestPool", req);
    assert_eq!(s, 200);
    assert!(
        v["Error"]
            .as_str()
            .unwrap()
            .contains("--subnet 10.61.2.0/24"),
        "{v}"
    );
    // With --subnet the same pool is granted (no overlap check on Docker's side).
    ok(
        d,
        "/IpamDriver.RequestPool",
        json!({"Pool":"10.61.2.0/24","Options":{"cni.network":"hl"},"V6":false}),
    );
}

#[test]
fn address_stays_docker_held_between_delete_endpoint_and_release() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.60.7.0/29", json!({}));
    let (addr, _) = run_container(d, &pool_id, EP);
    let ep = json!({"NetworkID": NET, "EndpointID": EP});
    ok(d, "/NetworkDriver.Leave", ep.clone());
    ok(d, "/NetworkDriver.DeleteEndpoint", ep);
    // Until ReleaseAddress, the address is Docker's: a new request must get another one.
    for _ in 0..4 {
        let a = ok(
            d,
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "", "Options": {}}),
        );
        assert_ne!(a["Address"], addr.as_str());
    }
    let (_, v) = call(
        d,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    assert!(
        v["Error"].is_string(),
        "pool full while Docker holds {addr}: {v}"
    );
    ok(
        d,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": addr.split('/').next().unwrap()}),
    );
    let a = ok(
        d,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    assert_eq!(a["Address"], addr.as_str(), "the only free address left");
}

#[test]
fn routed_network_derives_routed_conflist_and_host_addresses() {
    let e = env();
    let d = &e.d;
    let (pool_id, gw) = create_network(d, "100.70.0.0/16", json!({"plugnet.mode": "routed"}));
    assert_eq!(
        gw, "100.70.0.1/16",
        "the gateway request precedes CreateNetwork"
    );
    let (addr, _) = run_container(d, &pool_id, EP);
    assert!(
        addr.ends_with("/32"),
        "routed endpoints get host addresses: {addr}"
    );
    stop_container(d, &pool_id, EP, &addr);
    let (s, v) = call(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": "n2", "Options": {GENERIC_OPTION: {"plugnet.mode": "mesh"}},
               "IPv4Data": [{"AddressSpace":"plugnet-local","Pool":"100.71.0.0/16"}], "IPv6Data": []}),
    );
    let err = v["Err"].as_str().unwrap_or_default();
    assert!(s != 200 || !err.is_empty(), "bad mode refused: {v}");
    assert!(err.contains("plugnet.mode"), "{v}");
}

/// Issue 17, finding 1/3/13: ids and options are checked at decoding, before any state is
/// touched; no input panics the router.
#[test]
fn hostile_ids_and_options_are_refused_at_decoding() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.171.3.0/24", json!({}));
    let bad_ids = [
        "aéééééé".to_string(),
        "0123456789aé".to_string(),
        "é".repeat(30),
        "a".repeat(65),
        "../../etc".to_string(),
        String::new(),
        "A".repeat(64),
    ];
    for id in &bad_ids {
        for (path, body) in [
            (
                "/NetworkDriver.Join",
                json!({"NetworkID": NET, "EndpointID": id, "SandboxKey": "", "Options": {}}),
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": id, "EndpointID": EP, "Interface": {}}),
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": NET, "EndpointID": id, "Interface": {}}),
            ),
            ("/NetworkDriver.DeleteNetwork", json!({"NetworkID": id})),
            (
                "/NetworkDriver.DeleteEndpoint",
                json!({"NetworkID": NET, "EndpointID": id}),
            ),
            (
                "/NetworkDriver.CreateNetwork",
                json!({"NetworkID": id, "Options": {}}),
            ),
        ] {
            let (s, v) = call(d, path, body);
            assert_eq!(s, 500, "{path} {id:?}: {v}");
            assert!(v["Err"].as_str().unwrap().contains("invalid"), "{v}");
        }
        let (s, v) = call(
            d,
            "/IpamDriver.RequestAddress",
            json!({"PoolID": id, "Address": ""}),
        );
        assert_eq!(s, 200);
        assert!(v["Error"].is_string(), "{v}");
    }
    assert_eq!(d.ep_lock_entries(), 0, "no per-id state for refused ids");
    // Options checked at decoding: bridge names, MTU, MAC, SandboxKey, HostIP.
    let net2 = "7".repeat(64);
    for (k, v) in [
        ("com.docker.network.bridge.name", json!("a/b")),
        ("com.docker.network.bridge.name", json!("../x")),
        ("com.docker.network.bridge.name", json!("x y")),
        ("com.docker.network.bridge.name", json!("")),
        ("com.docker.network.bridge.name", json!("..")),
        ("com.docker.network.bridge.name", json!("0123456789abcdef")),
        ("com.docker.network.driver.mtu", json!("-1")),
        ("com.docker.network.driver.mtu", json!("99999999999")),
    ] {
        let (s, r) = call(
            d,
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": net2, "Options": {GENERIC_OPTION: {k: v}}}),
        );
        assert_eq!(s, 500, "{k}={v}: {r}");
        assert!(r["Err"].as_str().unwrap().contains(k), "{r}");
    }
    assert!(!d.snapshot().networks.contains_key(&net2));
    let (s, r) = call(
        d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"MacAddress": "zz"}}),
    );
    assert!(
        s == 500 && r["Err"].as_str().unwrap().contains("MacAddress"),
        "{r}"
    );
    let (s, r) = call(
        d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP, "Interface": {},
               "Options": {PORTMAP_OPTION: [{"Proto":6,"Port":80,"HostIP":"1.2.3.4; rm","HostPort":8080}]}}),
    );
    assert!(
        s == 500 && r["Err"].as_str().unwrap().contains("HostIP"),
        "{r}"
    );
    for key in ["relative/x", "/a;b", "/a=b", "/a\nb"] {
        let (s, r) = call(
            d,
            "/NetworkDriver.Join",
            json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": key, "Options": {}}),
        );
        assert!(
            s == 500 && r["Err"].as_str().unwrap().contains("SandboxKey"),
            "{r}"
        );
    }
    assert!(d.snapshot().endpoints.is_empty());
    let _ = pool_id;
}

/// Issue 17, finding 3: per-id lock entries exist only while a call for that id runs.
#[test]
fn per_endpoint_state_is_never_kept_for_unknown_or_gone_ids() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.171.4.0/24", json!({}));
    for i in 0..50 {
        let id = format!("{i:064x}");
        let (s, _) = call(
            d,
            "/NetworkDriver.Join",
            json!({"NetworkID": NET, "EndpointID": id, "SandboxKey": "", "Options": {}}),
        );
        assert_eq!(s, 500);
        // Out of order: teardown of what never existed succeeds.
        ok(
            d,
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": NET, "EndpointID": id}),
        );
        // CreateEndpoint on an unknown network fails without state.
        let (s, _) = call(
            d,
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": "9".repeat(64), "EndpointID": id, "Interface": {}}),
        );
        assert_eq!(s, 500);
    }
    assert_eq!(d.ep_lock_entries(), 0);
    let (addr, _) = run_container(d, &pool_id, EP);
    assert_eq!(d.ep_lock_entries(), 0, "released after each call");
    stop_container(d, &pool_id, EP, &addr);
    assert_eq!(d.ep_lock_entries(), 0);
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
}

/// Issue 17, finding 1: a panic in a handler answers 500 with `Err` and the driver serves on.
#[test]
fn a_panicking_handler_answers_500_and_the_driver_serves_on() {
    let e = env();
    let d = &e.d;
    let (pool_id, _) = create_network(d, "10.171.5.0/24", json!({}));
    let a = ok(
        d,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    ok(
        d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": a["Address"]}, "Options": {}}),
    );
    *d.backend.fail_attach.lock().unwrap() = Some("panic".into());
    let body = serde_json::to_vec(
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}}),
    )
    .unwrap();
    let r = crate::server::dispatch_guarded(d, "/NetworkDriver.Join", &body);
    assert_eq!(r.status, 500);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["Err"].as_str().unwrap().contains("panicked"), "{v}");
    *d.backend.fail_attach.lock().unwrap() = None;
    assert_eq!(
        d.ep_lock_entries(),
        0,
        "the lock entry went with the unwinding"
    );
    let r = crate::server::dispatch_guarded(d, "/NetworkDriver.Join", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn body_limits_per_method() {
    use crate::server::body_limit;
    assert_eq!(body_limit("/NetworkDriver.Join"), 1 << 20);
    assert_eq!(body_limit("/NetworkDriver.CreateEndpoint"), 1 << 20);
    assert_eq!(
        body_limit("/NetworkDriver.ProgramExternalConnectivity"),
        1 << 20
    );
    assert_eq!(body_limit("/NetworkDriver.CreateNetwork"), 64 << 10);
    assert_eq!(body_limit("/IpamDriver.RequestAddress"), 16 << 10);
    assert_eq!(body_limit("/é"), 16 << 10);
}

/// Issue 17, finding 4: DeleteNetwork deletes only a bridge plugnet created; ownership is
/// recorded at CreateNetwork, and a version-1 state file (no record) never deletes one.
#[test]
fn delete_network_removes_only_bridges_plugnet_created() {
    let e = env();
    let d = &e.d;
    d.backend.links.lock().unwrap().push("virbr0".into());
    create_network(
        d,
        "10.171.6.0/24",
        json!({"com.docker.network.bridge.name": "virbr0"}),
    );
    assert!(!d.snapshot().networks[NET].owns_bridge);
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    let calls = d.backend.calls.lock().unwrap().clone();
    assert!(
        !calls.iter().any(|c| c.starts_with("remove_bridge")),
        "{calls:?}"
    );

    let e = env();
    let d = &e.d;
    create_network(d, "10.171.7.0/24", json!({}));
    assert!(d.snapshot().networks[NET].owns_bridge);
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    let calls = d.backend.calls.lock().unwrap().clone();
    assert!(
        calls.iter().any(|c| c.starts_with("remove_bridge pnb")),
        "{calls:?}"
    );

    // Version 1 (before ownership was recorded): read, and the bridge is not plugnet's.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    std::fs::write(
        dir.path().join(format!("networks/{NET}.json")),
        serde_json::to_vec(
            &json!({"version": 1, "id": NET, "mode": "derived", "cni_name": "docker-x",
            "conflist": {"plugins": [{"type": "plugnet", "bridge": "docker0"}]}}),
        )
        .unwrap(),
    )
    .unwrap();
    let d = Driver::new(
        DriverConfig::new(dir.path().join("ns")),
        FakeBackend::default(),
        store,
    );
    assert!(!d.snapshot().networks[NET].owns_bridge);
    ok(
        &d,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NET}),
    );
    let calls = d.backend.calls.lock().unwrap().clone();
    assert!(
        !calls.iter().any(|c| c.starts_with("remove_bridge")),
        "{calls:?}"
    );
}

/// Issue 17, finding 13: a hand-edited endpoint state file cannot make the cleanup delete a
/// foreign interface: only the names plugnet gives an attachment's links are deleted.
#[test]
fn cleanup_deletes_only_links_plugnet_named() {
    use crate::state::{AttachmentRecord, Phase};
    let mut att = AttachmentRecord {
        phase: Phase::Attaching,
        cni_name: "x".into(),
        conflist: Value::Null,
        netns: "/run/x".into(),
        handoff: true,
        ifname: "eth0".into(),
        tmp_name: crate::driver::tmp_name_for(EP),
        peer: Some(plugnet::bridge::naming::host_veth_name(EP, "eth0")),
        args: vec![],
        capability_args: Default::default(),
        result: Value::Null,
    };
    assert_eq!(crate::cni::owned_links(EP, &att).len(), 2);
    att.tmp_name = "docker0".into();
    att.peer = Some("eth0".into());
    assert!(crate::cni::owned_links(EP, &att).is_empty());
}

#[test]
fn cluster_networks_take_the_cluster_subnet_and_name_it_in_the_conflist() {
    let e = env();
    let d = &e.d;
    // Docker's default IPAM with -o plugnet.cluster: refused, saying what to add.
    let (_, v) = call(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {GENERIC_OPTION: {"plugnet.cluster": "pnx"}},
               "IPv4Data": [{"AddressSpace":"LocalDefault","Pool":"10.174.0.0/16","Gateway":"10.174.0.1/16"}], "IPv6Data": []}),
    );
    assert!(
        v["Err"]
            .as_str()
            .unwrap()
            .contains("--ipam-opt plugnet.cluster=pnx"),
        "{v}"
    );
    // Not served here (no agent): RequestPool says which step failed.
    let (_, v) = call(
        d,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace":"plugnet-local","Pool":"","SubPool":"","Options":{"plugnet.cluster":"pnx"},"V6":false}),
    );
    assert!(
        v.to_string().contains("cluster network pnx on this host"),
        "{v}"
    );
    d.backend.clusters.lock().unwrap().insert(
        "pnx".into(),
        (
            vec!["10.174.0.0/16".parse().unwrap()],
            "10.174.3.64/26".parse().unwrap(),
        ),
    );
    let p = ok(
        d,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace":"plugnet-local","Pool":"","SubPool":"","Options":{"plugnet.cluster":"pnx"},"V6":false}),
    );
    assert_eq!(p["Pool"], "10.174.0.0/16");
    // The gateway Docker records is this host's block's (no RequestAddress for it).
    assert_eq!(p["Data"][GATEWAY_OPTION], "10.174.3.65/16");
    ok(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {GENERIC_OPTION: {"plugnet.cluster": "pnx"}},
               "IPv4Data": [{"AddressSpace":"plugnet-local","Pool":"10.174.0.0/16","Gateway":"10.174.3.65/16"}], "IPv6Data": []}),
    );
    let st = d.lock();
    let conflist = &st.networks[NET].conflist;
    assert_eq!(
        conflist["plugins"][0]["ipam"],
        json!({"type": "plugnet-ipam", "cluster": "pnx"})
    );
    assert_eq!(conflist["name"], "pn-cluster-pnx");
    drop(st);

    // A dual-stack cluster network: an IPv4-only Docker network of it is refused.
    let e = env();
    let d = &e.d;
    d.backend.clusters.lock().unwrap().insert(
        "pnx6".into(),
        (
            vec![
                "10.174.64.0/18".parse().unwrap(),
                "fd00:174::/64".parse().unwrap(),
            ],
            "10.174.64.0/26".parse().unwrap(),
        ),
    );
    let p = ok(
        d,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace":"plugnet-local","Pool":"","SubPool":"","Options":{"plugnet.cluster":"pnx6"},"V6":false}),
    );
    assert_eq!(p["Pool"], "10.174.64.0/18");
    let (_, v) = call(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {GENERIC_OPTION: {}},
               "IPv4Data": [{"AddressSpace":"plugnet-local","Pool":"10.174.64.0/18","Gateway":"10.174.64.1/18"}], "IPv6Data": []}),
    );
    assert!(v.to_string().contains("with --ipv6"), "{v}");
}
