//! Kernel tests for the netlink vocabulary: each test makes its own namespaces (one playing the
//! host, one the container), works only inside them and removes them even on failure.
//! Objects: netns `pnb-nl<test>-<pid>`, links `pnb*`, addresses from 10.50.0.0/16 and fd50::/16.

use std::process::Command;

use ipnetwork::IpNetwork;
use plugnet::netlink::{BridgeOptions, IpFamily, Mac, Netlink, RouteSpec, VethOptions};
use plugnet::netns::{self, Netns};

struct NsGuard(String);

impl NsGuard {
    fn new(tag: &str) -> NsGuard {
        let name = format!("pnb-nl{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        NsGuard(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn bridge_veth_addresses_routes_and_ping() {
    let host = NsGuard::new("a-h");
    let ctr = NsGuard::new("a-c");
    let nl = Netlink::in_netns(host.path()).unwrap();
    let cns = Netns::open(ctr.path()).unwrap();
    let cnl = Netlink::in_open_netns(&cns).unwrap();

    // Bridge: created with a pinned MAC, found again on the second call with one request.
    let opts = BridgeOptions {
        name: "pnbbr0".into(),
        mtu: Some(1400),
        ..Default::default()
    };
    let br = nl.ensure_bridge(&opts).await.unwrap();
    assert!(br.is_bridge() && br.up);
    assert_eq!(br.mtu, Some(1400));
    let before = nl.requests_sent();
    let again = nl.ensure_bridge(&opts).await.unwrap();
    assert_eq!(again.index, br.index);
    assert_eq!(again.mac, br.mac);
    assert_eq!(
        nl.requests_sent() - before,
        1,
        "existing bridge costs one request"
    );

    // Gateway on the bridge.
    nl.add_addr(br.index, net("10.50.1.1/24")).await.unwrap();
    nl.add_addr(br.index, net("fd50:1::1/64")).await.unwrap();
    let err = nl
        .add_addr(br.index, net("10.50.1.1/24"))
        .await
        .unwrap_err();
    assert!(err.is_exists(), "{err}");

    // The ADD path: veth (peer down), arp_notify, addresses, up, default routes.
    let start = nl.requests_sent() + cnl.requests_sent();
    let peer_mac: Mac = "02:50:00:00:00:07".parse().unwrap();
    let pair = nl
        .create_veth_pair(&VethOptions {
            host_name: "pnbv0".into(),
            peer_name: "eth0".into(),
            peer_netns: cns.fd(),
            master: Some(br.index),
            mtu: Some(1400),
            host_mac: None,
            peer_mac: Some(peer_mac),
        })
        .await
        .unwrap();
    cnl.enable_arp_notify(pair.peer_index).await.unwrap();
    cnl.add_addr(pair.peer_index, net("10.50.1.2/24"))
        .await
        .unwrap();
    cnl.add_addr(pair.peer_index, net("fd50:1::2/64"))
        .await
        .unwrap();
    cnl.set_up(pair.peer_index).await.unwrap();
    let mut def4 = RouteSpec::new(net("0.0.0.0/0"));
    def4.gw = Some("10.50.1.1".parse().unwrap());
    cnl.add_route(&def4).await.unwrap();
    let mut def6 = RouteSpec::new(net("::/0"));
    def6.gw = Some("fd50:1::1".parse().unwrap());
    cnl.add_route(&def6).await.unwrap();
    let used = nl.requests_sent() + cnl.requests_sent() - start;
    eprintln!("netlink requests for a dual-stack container attach: {used}");
    assert_eq!(used, 7);

    assert_eq!(pair.host.master, Some(br.index));
    assert!(pair.host.up);
    assert_eq!(pair.host.mtu, Some(1400));
    assert!(pair.host.mac.is_some());
    nl.set_alias(pair.host.index, "plugnet:pnbnet")
        .await
        .unwrap();
    let again = nl.link_by_name("pnbv0").await.unwrap().unwrap();
    assert_eq!(again.alias.as_deref(), Some("plugnet:pnbnet"));
    assert_eq!(again.master, Some(br.index));
    assert_eq!(pair.peer_mac, peer_mac);

    // What the container sees.
    let eth0 = cnl.link_by_name("eth0").await.unwrap().unwrap();
    assert_eq!(eth0.index, pair.peer_index);
    assert_eq!(eth0.mac, Some(peer_mac));
    assert_eq!(eth0.mtu, Some(1400));
    assert!(eth0.up);
    let addrs = cnl.addrs(eth0.index, None).await.unwrap();
    assert!(addrs.contains(&net("10.50.1.2/24")), "{addrs:?}");
    assert!(addrs.contains(&net("fd50:1::2/64")), "{addrs:?}");
    let v6 = cnl.addrs(eth0.index, Some(IpFamily::V6)).await.unwrap();
    assert!(v6.iter().all(|a| a.is_ipv6()));
    let shown = String::from_utf8(
        ctr.exec(&["ip", "-6", "addr", "show", "dev", "eth0"])
            .stdout,
    )
    .unwrap();
    let global = shown
        .lines()
        .find(|l| l.contains("fd50:1::2/64"))
        .unwrap_or_default();
    assert!(
        !global.is_empty() && !global.contains("tentative"),
        "{shown}"
    );
    let conf = ctr.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
    assert_eq!(String::from_utf8_lossy(&conf.stdout).trim(), "1");
    let routes = cnl.routes(IpFamily::V4, None).await.unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dst == net("0.0.0.0/0") && r.gw == def4.gw && r.oif == Some(eth0.index)),
        "{routes:?}"
    );
    let routes6 = cnl.routes(IpFamily::V6, None).await.unwrap();
    assert!(
        routes6
            .iter()
            .any(|r| r.dst == net("::/0") && r.gw == def6.gw),
        "{routes6:?}"
    );

    // Traffic, both families, at once (no DAD wait).
    for target in ["10.50.1.1", "fd50:1::1"] {
        let out = ctr.exec(&["ping", "-c1", "-W2", target]);
        assert!(
            out.status.success(),
            "ping {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let stats = nl.link_stats(pair.host.index).await.unwrap();
    assert!(stats.rx_packets > 0 && stats.tx_packets > 0, "{stats:?}");

    // Deleting the host side removes the peer too; a second delete is "not found".
    nl.del_link_by_name("pnbv0").await.unwrap();
    assert!(cnl.link_by_name("eth0").await.unwrap().is_none());
    let err = nl.del_link_by_name("pnbv0").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().starts_with("delete link pnbv0:"), "{err}");
    let err = nl.del_link(pair.host.index).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn duplicate_veth_is_eexist_and_bridge_mac_stays_pinned() {
    let host = NsGuard::new("b-h");
    let ctr = NsGuard::new("b-c");
    let nl = Netlink::in_netns(host.path()).unwrap();
    let cns = Netns::open(ctr.path()).unwrap();
    let br = nl
        .ensure_bridge(&BridgeOptions {
            name: "pnbbr1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mac = br.mac.unwrap();
    // Ports with MACs lower than the bridge's would normally drag the bridge MAC along.
    for (i, ifname) in ["eth0", "eth1"].iter().enumerate() {
        nl.create_veth_pair(&VethOptions {
            host_name: format!("pnbw{i}"),
            peer_name: ifname.to_string(),
            peer_netns: cns.fd(),
            master: Some(br.index),
            mtu: None,
            host_mac: Some(Mac([0x02, 0, 0, 0, 0, i as u8])),
            peer_mac: None,
        })
        .await
        .unwrap();
    }
    let now = nl.link_by_name("pnbbr1").await.unwrap().unwrap();
    assert_eq!(now.mac, Some(mac), "bridge MAC followed its ports");

    let err = nl
        .create_veth_pair(&VethOptions {
            host_name: "pnbw0".into(),
            peer_name: "eth9".into(),
            peer_netns: cns.fd(),
            master: None,
            mtu: None,
            host_mac: None,
            peer_mac: None,
        })
        .await
        .unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.step().contains("pnbw0/eth9"), "{err}");

    // An existing non-bridge with the bridge's name is refused, not reused.
    let err = nl
        .ensure_bridge(&BridgeOptions {
            name: "pnbw1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a bridge"), "{err}");

    // Hairpin and VLAN on a port.
    let port = nl.link_by_name("pnbw0").await.unwrap().unwrap();
    nl.set_hairpin(port.index, true).await.unwrap();
    let hp = host.exec(&["cat", "/sys/class/net/pnbw0/brport/hairpin_mode"]);
    assert_eq!(String::from_utf8_lossy(&hp.stdout).trim(), "1");
    // VLAN filtering needs CONFIG_BRIDGE_VLAN_FILTERING; without it the error must say so.
    let vbr = nl
        .ensure_bridge(&BridgeOptions {
            name: "pnbbr1".into(),
            vlan_filtering: true,
            ..Default::default()
        })
        .await;
    match vbr {
        Ok(vbr) => {
            assert_eq!(vbr.index, br.index);
            nl.bridge_vlan_add(port.index, 57, true).await.unwrap();
            nl.bridge_vlan_del(port.index, 1).await.unwrap();
            let v = host.exec(&["bridge", "-j", "vlan", "show", "dev", "pnbw0"]);
            let v = String::from_utf8_lossy(&v.stdout);
            assert!(
                v.contains("\"vlan\":57") && !v.contains("\"vlan\":1,"),
                "{v}"
            );
        }
        Err(e) => {
            assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
            assert!(e.to_string().starts_with("configure bridge pnbbr1"), "{e}");
            eprintln!("kernel without bridge VLAN filtering: {e}");
        }
    }
}

#[test]
fn netns_helpers_see_the_namespace() {
    let ns = NsGuard::new("c");
    assert!(netns::exists(ns.path()));
    let h = Netns::open(ns.path()).unwrap();
    assert!(!h.is_current().unwrap());
    // A sysctl written on the namespace thread lands in that namespace only. (Its start
    // value depends on devconf_inherit_init_net, so set a known one first.)
    h.run(|| netns::ensure_sysctl("net/ipv4/ip_forward", "0"))
        .unwrap()
        .unwrap();
    let wrote = h
        .run(|| netns::ensure_sysctl("net/ipv4/ip_forward", "1"))
        .unwrap()
        .unwrap();
    assert!(wrote);
    let again = h
        .run(|| netns::ensure_sysctl("net/ipv4/ip_forward", "1"))
        .unwrap()
        .unwrap();
    assert!(!again);
    let out = ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    drop(h);
    let path = ns.path();
    drop(ns);
    assert!(!netns::exists(&path));
}

/// Named namespaces made by `netns::create` in a private directory prepared like /run/netns,
/// removed (and the directory unmounted) on drop. Objects: `pnz-<tag>-<pid>-<n>`.
struct NamedNs {
    dir: tempfile::TempDir,
    paths: Vec<std::path::PathBuf>,
}

impl NamedNs {
    fn new() -> NamedNs {
        let dir = tempfile::tempdir().unwrap();
        netns::prepare_dir(dir.path().join("ns")).unwrap();
        NamedNs {
            dir,
            paths: Vec::new(),
        }
    }
    fn ns_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("ns")
    }
    fn path(&mut self, tag: &str) -> std::path::PathBuf {
        let p = self.ns_dir().join(format!(
            "pnz-{tag}-{}-{}",
            std::process::id(),
            self.paths.len()
        ));
        self.paths.push(p.clone());
        p
    }
    fn create(&mut self, tag: &str) -> Netns {
        let p = self.path(tag);
        netns::create(&p).unwrap();
        Netns::open(&p).unwrap()
    }
}

impl Drop for NamedNs {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = netns::remove(p);
        }
        netns::release_dir_if_empty(self.ns_dir());
        let _ = nix::mount::umount2(&self.ns_dir(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn propagation(dir: &std::path::Path) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "PROPAGATION", "--mountpoint"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn named_netns_create_replace_remove() {
    use std::os::unix::fs::MetadataExt;
    let mut g = NamedNs::new();
    let dir = g.ns_dir();
    assert_eq!(
        propagation(&dir),
        "shared",
        "prepare_dir makes a shared mount"
    );
    netns::prepare_dir(&dir).unwrap(); // idempotent
    let p = g.path("a");
    netns::create(&p).unwrap();
    assert!(netns::exists(&p));
    let first = Netns::open(&p).unwrap();
    assert!(!first.is_current().unwrap(), "a new namespace, not ours");
    let ino = |ns: &Netns| {
        std::fs::metadata(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            ns.fd().as_raw_fd()
        }))
        .unwrap()
        .ino()
    };
    // A second create replaces it with a fresh namespace.
    netns::create(&p).unwrap();
    let second = Netns::open(&p).unwrap();
    assert_ne!(ino(&first), ino(&second));
    // It is a working namespace: loopback only.
    let links = second.run(|| std::fs::read_dir("/sys/class/net").map(|d| d.count()));
    assert!(links.is_ok());
    drop((first, second));
    // A stale plain file (a bind mount lost at reboot) is replaced too.
    netns::remove(&p).unwrap();
    std::fs::write(&p, b"").unwrap();
    assert!(!netns::exists(&p));
    netns::create(&p).unwrap();
    assert!(netns::exists(&p));
    // Not empty: the directory stays.
    assert!(!netns::release_dir_if_empty(&dir));
    assert_eq!(propagation(&dir), "shared");
    netns::remove(&p).unwrap();
    netns::remove(&p).unwrap(); // absent is success
    assert!(!netns::exists(&p) && !p.exists());
    // A missing directory: an error naming the path, nothing left behind.
    let bad = dir.join("missing").join("pnz-x");
    let err = netns::create(&bad).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("pnz-x"), "{err}");
    assert!(netns::release_dir_if_empty(&dir));
    assert!(!dir.exists(), "released directory is removed");
    assert_eq!(propagation(&dir), "");
}

#[tokio::test(flavor = "current_thread")]
async fn move_link_to_netns_renames_in_one_request() {
    let mut g = NamedNs::new();
    let staging = g.create("mv-s");
    let host = g.create("mv-h");
    let snl = Netlink::in_open_netns(&staging).unwrap();
    let hnl = Netlink::in_open_netns(&host).unwrap();
    // Like a CNI ADD into a staging namespace: container end in staging, host end in host.
    let pair = hnl
        .create_veth_pair(&VethOptions {
            host_name: "pnzh0".into(),
            peer_name: "eth0".into(),
            peer_netns: staging.fd(),
            master: None,
            mtu: None,
            host_mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    let eth0 = snl.link_by_name("eth0").await.unwrap().unwrap();
    snl.set_up(eth0.index).await.unwrap();
    assert_eq!(eth0.link, Some(pair.host.index), "peer index is the host's");
    let before = snl.requests_sent();
    snl.move_link_to_netns(eth0.index, host.fd(), "pnzt0")
        .await
        .unwrap();
    assert_eq!(snl.requests_sent() - before, 1);
    assert!(snl.link_by_name("eth0").await.unwrap().is_none());
    let moved = hnl.link_by_name("pnzt0").await.unwrap().unwrap();
    assert!(!moved.up, "moved link is down");
    assert_eq!(moved.mac, Some(pair.peer_mac));
    assert_eq!(moved.link, Some(pair.host.index), "still paired with pnzh0");
    // The new name taken in the target: EEXIST, after the kernel already moved the link (it
    // renames after the move unless the current name is taken there), so it is found in the
    // target under its old name.
    let err = hnl
        .move_link_to_netns(moved.index, staging.fd(), "lo")
        .await
        .unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.step().contains("lo"), "{err}");
    assert!(hnl.link_by_name("pnzt0").await.unwrap().is_none());
    assert!(snl.link_by_name("pnzt0").await.unwrap().is_some());
    // A missing link is "not found".
    let err = snl
        .move_link_to_netns(moved.index + 1000, host.fd(), "pnzt1")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn bridge_is_deleted_only_without_ports() {
    let mut g = NamedNs::new();
    let host = g.create("br-h");
    let ctr = g.create("br-c");
    let nl = Netlink::in_open_netns(&host).unwrap();
    let br = nl
        .ensure_bridge(&BridgeOptions {
            name: "pnzbr0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pair = nl
        .create_veth_pair(&VethOptions {
            host_name: "pnzw0".into(),
            peer_name: "eth0".into(),
            peer_netns: ctr.fd(),
            master: Some(br.index),
            mtu: None,
            host_mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    // An unrelated bridge port elsewhere must not count.
    let other = nl
        .ensure_bridge(&BridgeOptions {
            name: "pnzbr1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ports = nl.ports_of(br.index).await.unwrap();
    assert_eq!(
        ports.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["pnzw0"]
    );
    assert!(nl.ports_of(other.index).await.unwrap().is_empty());
    assert!(!nl.del_bridge_if_unused("pnzbr0").await.unwrap());
    assert!(nl.link_by_name("pnzbr0").await.unwrap().is_some());
    // Not a bridge: refused.
    let err = nl.del_bridge_if_unused("pnzw0").await.unwrap_err();
    assert!(err.to_string().contains("not a bridge"), "{err}");
    assert!(nl.link_by_name("pnzw0").await.unwrap().is_some());
    nl.del_link(pair.host.index).await.unwrap();
    assert!(nl.del_bridge_if_unused("pnzbr0").await.unwrap());
    assert!(nl.link_by_name("pnzbr0").await.unwrap().is_none());
    assert!(!nl.del_bridge_if_unused("pnzbr0").await.unwrap(), "absent");
    assert!(nl.del_bridge_if_unused("pnzbr1").await.unwrap());
}
