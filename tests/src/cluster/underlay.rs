//! The network between hosts: namespaces on one bridge (one L2 segment), or on two bridges
//! with a router namespace between them (two L3 subnets, 10.201.0.0/24 and 10.201.1.0/24 by
//! default; [`Underlay::with_base`] puts them at A.B.200.0/24 and A.B.201.0/24 of another
//! test's own range).

use crate::{sh, Netns};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every node on one bridge, 10.201.0.0/24.
    OneSegment,
    /// Even nodes on 10.201.0.0/24, odd ones on 10.201.1.0/24, routed by a router namespace
    /// (.254 on each).
    TwoSubnets,
}

/// A namespace on the underlay.
pub struct Node {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub segment: usize,
}

impl Node {
    /// Run `program args…` inside the node's namespace.
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec")
    }
}

pub struct Underlay {
    /// Holds the segments' bridges.
    fabric: Netns,
    router: Option<Netns>,
    topology: Topology,
    next: AtomicU32,
    /// The first two octets of every underlay address and the third of segment 0.
    base: (u8, u8, u8),
}

impl Underlay {
    pub fn new(prefix: &str, topology: Topology) -> Underlay {
        Underlay::with_base(prefix, topology, (10, 201, 0))
    }

    /// Segments at `a.b.c.0/24` and `a.b.(c+1).0/24`.
    pub fn with_base(prefix: &str, topology: Topology, base: (u8, u8, u8)) -> Underlay {
        let (a, b, c) = base;
        let fabric = Netns::new(&format!("{prefix}f"));
        let segments = if topology == Topology::TwoSubnets {
            2
        } else {
            1
        };
        for s in 0..segments {
            fabric.exec(&format!("ip link add s{s} type bridge"));
            fabric.exec(&format!("ip link set s{s} up"));
        }
        let router = (topology == Topology::TwoSubnets).then(|| {
            let r = Netns::new(&format!("{prefix}r"));
            for s in 0..2 {
                sh(&format!(
                    "ip link add r{s} netns {} type veth peer name fr{s} netns {}",
                    r.name, fabric.name
                ));
                fabric.exec(&format!("ip link set fr{s} master s{s} up"));
                r.exec(&format!("ip addr add {a}.{b}.{}.254/24 dev r{s}", c + s));
                r.exec(&format!("ip link set r{s} up"));
            }
            r.exec("sysctl -qw net.ipv4.ip_forward=1");
            r
        });
        Underlay {
            fabric,
            router,
            topology,
            next: AtomicU32::new(1),
            base,
        }
    }

    pub fn segments(&self) -> usize {
        if self.topology == Topology::TwoSubnets {
            2
        } else {
            1
        }
    }

    /// A new namespace on `segment` with an address of it (and, with two subnets, a default
    /// route through the router).
    pub fn node(&self, prefix: &str, segment: usize) -> Node {
        let segment = segment % self.segments();
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        assert!(n < 250, "too many nodes");
        let ns = Netns::new(prefix);
        let (a, b, c) = self.base;
        let third = c + segment as u8;
        let ip = Ipv4Addr::new(a, b, third, n as u8);
        sh(&format!(
            "ip link add eth0 netns {} type veth peer name p{n} netns {}",
            ns.name, self.fabric.name
        ));
        self.fabric
            .exec(&format!("ip link set p{n} master s{segment} up"));
        ns.exec(&format!("ip addr add {ip}/24 dev eth0"));
        ns.exec("ip link set eth0 up");
        if self.router.is_some() {
            ns.exec(&format!("ip route add default via {a}.{b}.{third}.254"));
        }
        Node { ns, ip, segment }
    }
}
