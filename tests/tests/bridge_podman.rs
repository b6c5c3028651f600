//! podman (4.3, CNI backend) running containers on a plugnet network: two containers ping each
//! other and the gateway; `podman rm` leaves no veth, lease or cached result. podman runs with
//! its own storage (vfs) and configuration in a temp dir; it creates the container namespaces
//! and calls CNI in the machine's host namespace, so the bridge `pnbbrpod` lives there for the
//! test's duration and is removed by a guard.

use std::path::Path;
use std::process::Command;

use plugnet_tests::podman::Podman;

#[test]
fn podman_containers_on_a_plugnet_network() {
    assert!(unsafe { libc::geteuid() } == 0, "needs root");
    let p = Podman::new("pnb", &["sh", "ip", "ping", "sleep"], "pnbbrpod");
    let data = p.dir.path().join("ipam");
    std::fs::write(
        p.dir.path().join("net.d/pnbpod.conflist"),
        serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0", "name": "pnbpod",
            // The firewall's state stays in the test's directory: on a host whose FORWARD
            // drops, even this featureless network is recorded there (Docker coexistence).
            "plugins": [{"type": "plugnet", "bridge": "pnbbrpod", "isDefaultGateway": true,
                "firewallStateDir": p.dir.path().join("fw"),
                "ipam": {"type": "plugnet-ipam", "dataDir": data,
                         "ranges": [[{"subnet": "10.50.40.0/24"}]]}}]
        }))
        .unwrap(),
    )
    .unwrap();
    // A Docker daemon on this machine sets FORWARD to DROP and loads br_netfilter: let traffic
    // between this test's ports through (our own rule on our own bridge, removed by the guard).
    let _ = Command::new("iptables")
        .args([
            "-I", "FORWARD", "-i", "pnbbrpod", "-o", "pnbbrpod", "-j", "ACCEPT",
        ])
        .output();
    let ulimits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    for name in ["pnbpod1", "pnbpod2"] {
        let mut args = vec!["run", "-d", "--name", name, "--network", "pnbpod"];
        args.extend_from_slice(&ulimits);
        args.extend_from_slice(&["localhost/pnbbb:latest", "sleep", "300"]);
        let out = p.run(&args);
        assert!(out.status.success(), "podman run {name}: {out:?}");
    }
    let ip_of = |name: &str| {
        let out = p.run(&[
            "inspect",
            name,
            "--format",
            "{{(index .NetworkSettings.Networks \"pnbpod\").IPAddress}}",
        ]);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (ip1, ip2) = (ip_of("pnbpod1"), ip_of("pnbpod2"));
    assert!(
        ip1.starts_with("10.50.40.") && ip2.starts_with("10.50.40.") && ip1 != ip2,
        "{ip1} {ip2}"
    );
    for (from, to) in [
        ("pnbpod1", ip2.as_str()),
        ("pnbpod2", ip1.as_str()),
        ("pnbpod1", "10.50.40.1"),
    ] {
        let out = p.run(&["exec", from, "ping", "-c1", "-W1", to]);
        assert!(out.status.success(), "{from} -> {to}: {out:?}");
    }
    let ports = |()| {
        let out = Command::new("ip")
            .args(["-br", "link", "show", "master", "pnbbrpod"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert_eq!(ports(()), 2);

    let out = p.run(&["rm", "-f", "-t", "0", "pnbpod1", "pnbpod2"]);
    assert!(out.status.success(), "podman rm: {out:?}");
    assert_eq!(ports(()), 0, "veth left after podman rm");
    let leases = std::fs::read_dir(Path::new(&data).join("pnbpod/ip"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leases, 0, "lease left after podman rm");
}
