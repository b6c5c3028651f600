//! Names across the hosts of a cluster network (issue 20): two hosts (namespaces with their
//! own plugnet-agent, `--etcd`), one etcd member; a container on host B resolves one on host A
//! through B's agent, which serves A's records from etcd; the records vanish with A's lease
//! when A's agent dies. Objects `pnn*`, addresses 10.172.64.0/18.

mod names_support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use names_support::{ask, ask_until, found};
use plugnet_tests::cluster::{Topology, World, WorldOptions};
use plugnet_tests::{unique, Netns};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[test]
fn a_container_on_host_b_resolves_one_on_host_a() {
    let mut w = World::new(WorldOptions {
        prefix: "pnn",
        topology: Topology::OneSegment,
        hosts: 2,
        etcd_members: 1,
        agent_args: vec!["--lease-ttl".into(), "3s".into()],
        underlay_base: (10, 172, 240),
    });
    let net = format!("pnn{}", unique());
    w.cli_ok(&["network", "create", &net, "--subnet", "10.172.64.0/18"]);
    let cni_net = format!("{net}-cni");
    let dirs: Vec<_> = w.hosts.iter().map(|h| h.agent_dir()).collect();
    let conf = |h: usize| -> Value {
        json!({"cniVersion": "1.0.0", "name": cni_net, "type": "plugnet", "bridge": "pnnbr0",
               "isGateway": true, "resolver": true, "agentDir": dirs[h],
               "ipam": {"type": "plugnet-ipam", "cluster": net, "agentDir": dirs[h]}})
    };
    let (ca, cb) = (Netns::new("pnn-ca"), Netns::new("pnn-cb"));
    let ra = w.hosts[0].bridge("ADD", "pnnwa", &ca.path(), &conf(0));
    let ra = ra.ok().json();
    let rb = w.hosts[1].bridge("ADD", "pnnwb", &cb.path(), &conf(1));
    let rb = rb.ok().json();
    let ip = |r: &Value| -> IpAddr {
        r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let gw = |r: &Value| -> SocketAddr {
        SocketAddr::new(
            r["dns"]["nameservers"][0]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            53,
        )
    };
    let (ipa, ipb, gwa, gwb) = (ip(&ra), ip(&rb), gw(&ra), gw(&rb));
    assert_ne!(gwa, gwb, "each host serves its own block's gateway");

    // B's container asks B's agent for A's container, and the other way round.
    let got = ask_until(&cb.path(), gwb, "pnnwa", RecordType::A, found);
    assert_eq!(
        got.map(|g| g.addrs),
        Some(vec![ipa]),
        "B resolves A\n{}",
        w.logs()
    );
    let got = ask_until(&ca.path(), gwa, "pnnwb.dns.plugnet", RecordType::A, found);
    assert_eq!(got.map(|g| g.addrs), Some(vec![ipb]), "A resolves B");
    // The records sit under host-scoped keys.
    let keys = w.etcd.keys("/plugnet/v1/names/");
    for h in ["pnn-h0", "pnn-h1"] {
        assert!(
            keys.contains(&format!("/plugnet/v1/names/{cni_net}/{h}")),
            "{keys:?}"
        );
    }

    // DEL on A: B no longer resolves it.
    w.hosts[0].bridge("DEL", "pnnwa", &ca.path(), &conf(0)).ok();
    let got = ask_until(&cb.path(), gwb, "pnnwa.dns.plugnet", RecordType::A, |a| {
        a.as_ref().is_some_and(|a| a.code == ResponseCode::NXDomain)
    });
    assert_eq!(got.map(|g| g.code), Some(ResponseCode::NXDomain));

    // A dead host's records vanish with its lease (3 s here).
    let rc = w.hosts[0].bridge("ADD", "pnnwc", &ca.path(), &conf(0));
    rc.ok();
    assert!(found(&ask_until(
        &cb.path(),
        gwb,
        "pnnwc",
        RecordType::A,
        found
    )));
    w.hosts[0].kill_agent();
    w.wait(
        Duration::from_secs(20),
        "A's names key gone with its lease",
        || {
            (!w.etcd
                .keys("/plugnet/v1/names/")
                .contains(&format!("/plugnet/v1/names/{cni_net}/pnn-h0")))
            .then_some(())
        },
    );
    let got = ask_until(&cb.path(), gwb, "pnnwc.dns.plugnet", RecordType::A, |a| {
        a.as_ref().is_some_and(|a| a.code == ResponseCode::NXDomain)
    });
    assert_eq!(got.map(|g| g.code), Some(ResponseCode::NXDomain));
    assert_eq!(
        ask(&cb.path(), gwb, "pnnwb", RecordType::A).map(|a| a.addrs),
        Some(vec![ipb]),
        "B still resolves its own container"
    );
    w.hosts[0].start_agent();
    let _ = w.hosts[0].bridge("DEL", "pnnwc", &ca.path(), &conf(0));
    let _ = w.hosts[1].bridge("DEL", "pnnwb", &cb.path(), &conf(1));
}
