//! A whole session of Docker remote-driver calls through the shim's router and handlers, over
//! the in-memory CNI backend the unit tests use (issue 17): requests in any order, with ids
//! drawn from a few valid ones and hostile ones (non-ASCII, long, empty), fuzzed options and
//! raw bodies, attach failures injected. Never a panic (the router is called unguarded), every
//! reply is JSON with the right error key, no per-endpoint lock entry outlives its call, and
//! every endpoint in the state belongs to a known network or is being collected.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet_shim::backend::fake::FakeBackend;
use plugnet_shim::driver::{Driver, DriverConfig};
use plugnet_shim::server::dispatch;
use plugnet_shim::state::Store;
use serde_json::{json, Value};

const PATHS: &[&str] = &[
    "/Plugin.Activate",
    "/NetworkDriver.CreateNetwork",
    "/NetworkDriver.DeleteNetwork",
    "/NetworkDriver.CreateEndpoint",
    "/NetworkDriver.EndpointOperInfo",
    "/NetworkDriver.DeleteEndpoint",
    "/NetworkDriver.Join",
    "/NetworkDriver.Leave",
    "/NetworkDriver.ProgramExternalConnectivity",
    "/NetworkDriver.RevokeExternalConnectivity",
    "/IpamDriver.RequestPool",
    "/IpamDriver.ReleasePool",
    "/IpamDriver.RequestAddress",
    "/IpamDriver.ReleaseAddress",
    "/NetworkDriver.Bogus",
];

/// Ids a call may name: mostly valid Docker ids (so sessions get deep), some hostile.
fn id(sel: u8) -> String {
    match sel % 10 {
        0..=3 => format!("{:064x}", sel % 4),
        4 => "0123456789abcdefghijklmno".into(), // swarm-style
        5 => "aéééééé".into(),
        6 => "0123456789aé".into(),
        7 => String::new(),
        8 => "A".repeat(65),
        _ => "../../x".into(),
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fuzz_target!(|data: &[u8]| {
    let root = std::env::temp_dir().join(format!("pn-fuzz-session-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let store = Store::open(&root.join("state")).unwrap();
    let driver = Driver::new(
        DriverConfig::new(root.join("staging")),
        FakeBackend::default(),
        store,
    );
    let mut pools: Vec<String> = vec!["pn-10.171.0.0_24".into()];
    let mut inp = Input(data);
    for _ in 0..64 {
        let Some(sel) = inp.byte() else { break };
        let path = PATHS[sel as usize % PATHS.len()];
        let a = inp.byte().unwrap_or(0);
        let b = inp.byte().unwrap_or(0);
        let mode = inp.byte().unwrap_or(0);
        let (net, ep) = (id(a), id(b));
        let pool = pools[(mode as usize) % pools.len()].clone();
        let body: Vec<u8> = if mode % 8 == 7 {
            // A raw body.
            let n = inp.byte().unwrap_or(0) as usize;
            inp.bytes(n).to_vec()
        } else {
            let v = match path {
                "/NetworkDriver.CreateNetwork" => {
                    let mut generic = serde_json::Map::new();
                    match mode % 5 {
                        1 => {
                            generic.insert("com.docker.network.bridge.name".into(), json!(String::from_utf8_lossy(inp.bytes(6))));
                        }
                        2 => {
                            generic.insert("com.docker.network.driver.mtu".into(), json!(String::from_utf8_lossy(inp.bytes(4))));
                        }
                        3 => {
                            generic.insert("plugnet.mode".into(), json!("routed"));
                        }
                        _ => {}
                    }
                    json!({"NetworkID": net, "Options": {"com.docker.network.generic": generic},
                           "IPv4Data": [{"AddressSpace": "plugnet-local", "Pool": format!("10.171.{}.0/24", a % 4), "Gateway": format!("10.171.{}.1/24", a % 4)}]})
                }
                "/NetworkDriver.CreateEndpoint" => json!({"NetworkID": net, "EndpointID": ep,
                    "Interface": {"Address": format!("10.171.{}.{}/24", a % 4, 2 + mode % 8),
                                  "MacAddress": if mode % 3 == 0 { String::from_utf8_lossy(inp.bytes(17)).to_string() } else { String::new() }},
                    "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8000 + mode as u16, "HostIP": if mode % 5 == 0 { "x;y" } else { "" }}]}}),
                "/NetworkDriver.Join" => json!({"NetworkID": net, "EndpointID": ep,
                    "SandboxKey": match mode % 4 { 0 => "", 1 => "/var/run/docker/netns/x", 2 => "rel", _ => "/a;b" },
                    "Options": {}}),
                "/NetworkDriver.DeleteNetwork" => json!({"NetworkID": net}),
                "/IpamDriver.RequestPool" => json!({"AddressSpace": "plugnet-local",
                    "Pool": if mode % 2 == 0 { format!("10.171.{}.0/24", a % 4) } else { String::new() },
                    "SubPool": "", "Options": {}, "V6": false}),
                "/IpamDriver.ReleasePool" => json!({"PoolID": pool}),
                "/IpamDriver.RequestAddress" => json!({"PoolID": pool,
                    "Address": if mode % 2 == 0 { String::new() } else { format!("10.171.{}.{}", a % 4, mode) },
                    "Options": {}}),
                "/IpamDriver.ReleaseAddress" => json!({"PoolID": pool, "Address": format!("10.171.{}.{}", a % 4, mode)}),
                _ => json!({"NetworkID": net, "EndpointID": ep, "Options": {}}),
            };
            serde_json::to_vec(&v).unwrap()
        };
        // Attach failures on some Joins.
        *driver.backend().fail_attach.lock().unwrap() =
            (mode % 11 == 5).then(|| "injected".to_string());
        let reply = dispatch(&driver, path, &body);
        let v: Value = serde_json::from_slice(&reply.body).expect("reply is JSON");
        if reply.status == 200 {
            if path.starts_with("/IpamDriver.") {
                assert!(v.get("Err").is_none(), "IPAM errors use Error: {v}");
            }
            if let Some(p) = v.get("PoolID").and_then(Value::as_str) {
                pools.push(p.to_string());
            }
        } else {
            assert!(v["Err"].is_string(), "non-200 replies carry Err: {v}");
        }
        assert_eq!(driver.ep_lock_entries(), 0, "a lock entry outlived {path}");
    }
    // Reconcile over whatever the session left must not panic either.
    driver.reconcile();
    assert_eq!(driver.ep_lock_entries(), 0);
});
