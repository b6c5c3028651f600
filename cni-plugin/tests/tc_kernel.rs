//! Kernel test for bandwidth shaping: iperf3 through a container limited to 10 Mbit/s in each
//! direction, inside throwaway namespaces (the "host" is a namespace too).

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use plugnet::netlink::Netlink;
use plugnet::tc::{self, Bandwidth};

/// Runs an async job with a netlink connection inside namespace `ns`, on a runtime built here
/// (in our own namespace; only the socket is opened inside `ns`).
fn with_netlink<T>(
    ns: &str,
    f: impl FnOnce(Netlink) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async move {
        let nl = Netlink::in_netns(format!("/run/netns/{ns}")).unwrap();
        f(nl).await
    })
}

struct Iperf(Child);
impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Received bit rate of a 4 s iperf3 TCP run (first second, slow start, omitted) from `ns` to `server` (`reverse`: server sends).
fn iperf(ns: &str, server: &str, reverse: bool) -> f64 {
    let mut args = vec![
        "netns", "exec", ns, "iperf3", "-c", server, "-p", "5275", "-t", "4", "-O", "1", "-J",
    ];
    if reverse {
        args.push("-R");
    }
    for _ in 0..20 {
        let out = Command::new("ip").args(&args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "iperf3 output: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        if let Some(r) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return r;
        }
        // The one-test-at-a-time server may still be finishing the previous run ("busy"), or
        // drop a control connection while it resets: try again.
        eprintln!("iperf3 retry after: {}", v["error"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    panic!("iperf3 kept failing")
}

#[test]
fn ten_megabit_each_direction_then_nothing_left() {
    require_root!();
    let mut t = Topo::new("bw", 5);
    let hv = t.add_container(1);
    let _srv = Iperf(
        Command::new("ip")
            .args(["netns", "exec", &t.outside.0, "iperf3", "-s", "-p", "5275"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 (apt install iperf3)"),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The outside routes the container subnet through the host (no NAT needed here).
    sh(&format!(
        "ip -n {} route add 10.75.1.0/24 via 10.75.2.1",
        t.outside.0
    ));
    let c = t.cns(1);
    let free_up = iperf(&c, "10.75.2.2", false);
    assert!(
        free_up > 50e6,
        "unlimited upload should be far above 10 Mbit/s: {free_up}"
    );
    let bw = Bandwidth {
        ingress_rate: 10_000_000,
        ingress_burst: 500_000,
        egress_rate: 10_000_000,
        egress_burst: 500_000,
    };
    let ifb = plugnet::attachment::AttachmentId::new("pnfnet5", "pnf-ctr-5-1", "eth0").ifb();
    let (hv2, ifb2) = (hv.clone(), ifb.clone());
    with_netlink(&t.host.0, move |h| {
        Box::pin(async move {
            tc::apply(&h, &hv2, &ifb2, &bw).await?;
            tc::apply(&h, &hv2, &ifb2, &bw).await?; // idempotent
            tc::check(&h, &hv2, &ifb2, &bw).await?;
            // CHECK compares the configured rates, not just the presence of qdiscs.
            let other = Bandwidth {
                egress_rate: 20_000_000,
                ..bw
            };
            assert!(tc::check(&h, &hv2, &ifb2, &other).await.is_err());
            Ok::<_, tc::TcError>(())
        })
    })
    .unwrap();
    let up = iperf(&c, "10.75.2.2", false);
    let down = iperf(&c, "10.75.2.2", true);
    eprintln!(
        "measured: container egress {:.2} Mbit/s, ingress {:.2} Mbit/s",
        up / 1e6,
        down / 1e6
    );
    for (dir, r) in [("egress", up), ("ingress", down)] {
        assert!(
            (8.5e6..=11.5e6).contains(&r),
            "{dir} {r} bit/s is not within 15% of 10 Mbit/s"
        );
    }
    let (hv2, ifb2) = (hv.clone(), ifb.clone());
    with_netlink(&t.host.0, move |h| {
        Box::pin(async move {
            tc::remove(&h, &hv2, &ifb2).await?;
            tc::remove(&h, &hv2, &ifb2).await?; // idempotent
            tc::remove(&h, "pnfnone", &ifb2).await // nothing there at all
        })
    })
    .unwrap();
    let q = t.host.out(&format!("tc qdisc show dev {hv}"));
    assert!(!q.contains("tbf") && !q.contains("ingress"), "{q}");
    assert!(!t.host.out("ip -br link").contains(&ifb));
    let (hv2, ifb2) = (hv.clone(), ifb.clone());
    let err = with_netlink(&t.host.0, move |h| {
        Box::pin(async move { tc::check(&h, &hv2, &ifb2, &bw).await })
    });
    assert!(err.is_err());
    assert!(iperf(&c, "10.75.2.2", false) > 50e6);
}
