//! Kernel tests for the data plane's netlink verbs (VXLAN device, FDB, static neighbours,
//! tagged routes) in a fresh namespace, removed even on failure.
//! Objects: netns `pnd-ov<test>-<pid>`, links `pnd*`, addresses from 10.173.250.0/24 and
//! fd00:173:fa::/64.

mod common;

use std::net::IpAddr;

use common::Netns;

use plugnet::netlink::{
    link_local_of, FdbEntry, IpFamily, Mac, Netlink, TaggedRoute, VxlanOptions, PLUGNET_RTPROT,
    VXLAN_PORT,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn vxlan_fdb_neighbours_and_tagged_routes() {
    let ns = Netns::new(format!("pnd-ova-{}", std::process::id()));
    ns.sh("ip link add pndu0 type veth peer name pndu1 && ip addr add 10.173.250.1/24 dev pndu0 && ip link set pndu1 up && ip link set pndu0 up && ip link set lo up");
    let nl = Netlink::in_netns(ns.path()).unwrap();

    let under = nl
        .link_with_addr(ip("10.173.250.1"))
        .await
        .unwrap()
        .expect("underlay link");
    assert_eq!(under.name, "pndu0");

    let mac: Mac = "02:73:00:00:00:01".parse().unwrap();
    let o = VxlanOptions {
        name: "pndvx0".into(),
        vni: 173,
        local: ip("10.173.250.1"),
        dev: Some(under.index),
        port: VXLAN_PORT,
        mac,
        mtu: 1450,
    };
    let vx = nl.create_vxlan(&o).await.unwrap();
    assert!(vx.matches(&o), "{vx:?}");
    assert_eq!(vx.link.mac, Some(mac));
    assert_eq!(vx.link.mtu, Some(1450));
    assert_eq!(vx.learning, Some(false));
    let details = ns.sh("ip -d link show pndvx0");
    assert!(details.contains("vxlan id 173"), "{details}");
    assert!(details.contains("dstport 4789"), "{details}");
    assert!(details.contains("nolearning"), "{details}");
    // A second create is refused (EEXIST), the lookup finds it, a non-VXLAN name is None.
    assert!(nl.create_vxlan(&o).await.is_err());
    assert!(nl.vxlan_by_name("pndu0").await.unwrap().is_none());
    assert!(nl.vxlan_by_name("pndnone").await.unwrap().is_none());
    nl.set_mtu(vx.link.index, 1400).await.unwrap();
    let vx = nl.vxlan_by_name("pndvx0").await.unwrap().unwrap();
    assert_eq!(vx.link.mtu, Some(1400));

    // FDB: a default (all-zeros) entry per remote VTEP, one unicast entry.
    let remote_mac: Mac = "02:73:00:00:00:02".parse().unwrap();
    let entries = [
        FdbEntry {
            mac: [0; 6],
            dst: ip("10.173.250.2"),
        },
        FdbEntry {
            mac: [0; 6],
            dst: ip("10.173.250.3"),
        },
        FdbEntry {
            mac: remote_mac.0,
            dst: ip("10.173.250.2"),
        },
    ];
    for e in &entries {
        nl.add_fdb(vx.link.index, e).await.unwrap();
    }
    // Adding again changes nothing (append of the same default, replace of the unicast).
    nl.add_fdb(vx.link.index, &entries[2]).await.unwrap();
    let mut got = nl.fdb(vx.link.index).await.unwrap();
    got.sort();
    let mut want = entries.to_vec();
    want.sort();
    assert_eq!(got, want);
    let shown = ns.sh("bridge fdb show dev pndvx0");
    assert!(
        shown.contains("02:73:00:00:00:02 dst 10.173.250.2"),
        "{shown}"
    );

    // Static neighbours for the remote VTEP's next hops (v4: its underlay address, v6: the
    // link-local address of its MAC).
    let ll = IpAddr::V6(link_local_of(remote_mac));
    nl.set_permanent_neighbour(vx.link.index, ip("10.173.250.2"), remote_mac)
        .await
        .unwrap();
    nl.set_permanent_neighbour(vx.link.index, ll, remote_mac)
        .await
        .unwrap();
    let n4 = nl.neighbours(vx.link.index, IpFamily::V4).await.unwrap();
    assert!(n4.iter().any(|n| n.ip == ip("10.173.250.2") && n.permanent));
    let n6 = nl.neighbours(vx.link.index, IpFamily::V6).await.unwrap();
    assert!(n6.iter().any(|n| n.ip == ll && n.mac == Some(remote_mac)));

    // Tagged routes: via the VTEP onlink, both families; the listing returns only ours.
    ns.sh("ip route add 10.173.251.0/24 via 10.173.250.9 proto static");
    let routes = [
        TaggedRoute {
            dst: "10.173.0.64/26".parse().unwrap(),
            via: ip("10.173.250.2"),
            oif: Some(vx.link.index),
            onlink: true,
        },
        TaggedRoute {
            dst: "fd00:173::40/122".parse().unwrap(),
            via: ll,
            oif: Some(vx.link.index),
            onlink: false,
        },
        TaggedRoute {
            dst: "10.173.1.0/26".parse().unwrap(),
            via: ip("10.173.250.3"),
            oif: None,
            onlink: false,
        },
    ];
    for r in &routes {
        nl.replace_tagged_route(r).await.unwrap();
        nl.replace_tagged_route(r).await.unwrap();
    }
    let mut got = nl.tagged_routes().await.unwrap();
    for g in &mut got {
        if routes.iter().any(|r| r.dst == g.dst && r.oif.is_none()) {
            g.oif = None; // the kernel names the device it resolved
        }
    }
    got.sort();
    let mut want = routes.to_vec();
    want.sort();
    assert_eq!(got, want);
    let shown = ns.sh(&format!("ip route show proto {PLUGNET_RTPROT}"));
    assert!(
        shown.contains("10.173.0.64/26 via 10.173.250.2 dev pndvx0"),
        "{shown}"
    );
    assert!(shown.contains("onlink"), "{shown}");
    // Replace moves a route to another next hop in place.
    let mut moved = routes[2].clone();
    moved.via = ip("10.173.250.4");
    nl.replace_tagged_route(&moved).await.unwrap();
    assert!(nl
        .tagged_routes()
        .await
        .unwrap()
        .iter()
        .any(|r| r.via == moved.via));

    // Deletion of each.
    nl.del_tagged_route(&moved).await.unwrap();
    nl.del_tagged_route(&routes[0]).await.unwrap();
    nl.del_tagged_route(&routes[1]).await.unwrap();
    assert!(nl.tagged_routes().await.unwrap().is_empty());
    assert!(
        ns.sh("ip route").contains("10.173.251.0/24"),
        "others' routes stay"
    );
    nl.del_neighbour(vx.link.index, ll).await.unwrap();
    nl.del_neighbour(vx.link.index, ip("10.173.250.2"))
        .await
        .unwrap();
    assert!(nl
        .neighbours(vx.link.index, IpFamily::V6)
        .await
        .unwrap()
        .iter()
        .all(|n| n.ip != ll));
    for e in &entries {
        nl.del_fdb(vx.link.index, e).await.unwrap();
    }
    assert!(nl.fdb(vx.link.index).await.unwrap().is_empty());
    nl.del_link(vx.link.index).await.unwrap();
    assert!(nl.vxlan_by_name("pndvx0").await.unwrap().is_none());
}
