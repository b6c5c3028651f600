//! A cluster on one machine for black-box tests: an underlay of network namespaces (one L2
//! segment, or two L3 subnets behind a router namespace), a three-member etcd from
//! `etcd-server` in namespaces of its own, and "hosts" — each a namespace with its own
//! plugnet-agent and state dir. Reused by the cluster tests of the data plane and names.
//!
//! Invariant: every namespace, process and directory made here carries the caller's unique
//! prefix and goes with its guard's `Drop` (processes killed by pid, namespaces deleted),
//! also when a test fails half-way.

pub mod etcd;
pub mod host;
pub mod underlay;

pub use etcd::Etcd;
pub use host::Host;
pub use underlay::{Node, Topology, Underlay};

use serde_json::Value;
use std::time::{Duration, Instant};

/// The whole world: underlay, etcd, hosts, and an operator's node (`admin`) for the cluster
/// command line. Fields drop in declaration order: hosts' agents first, the underlay last.
pub struct World {
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    pub admin: Node,
    pub underlay: Underlay,
}

/// How to build a [`World`].
pub struct WorldOptions {
    pub prefix: &'static str,
    pub topology: Topology,
    pub hosts: usize,
    pub etcd_members: usize,
    /// Extra plugnet-agent flags for every host (e.g. `--lease-ttl 2s`).
    pub agent_args: Vec<String>,
    /// The underlay's segments: `a.b.c.0/24`, `a.b.(c+1).0/24` (default 10.201.0.0/24, …).
    pub underlay_base: (u8, u8, u8),
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            prefix: "pnc",
            topology: Topology::OneSegment,
            hosts: 3,
            etcd_members: 3,
            agent_args: Vec::new(),
            underlay_base: (10, 201, 0),
        }
    }
}

impl World {
    pub fn new(o: WorldOptions) -> World {
        let underlay = Underlay::with_base(o.prefix, o.topology, o.underlay_base);
        let etcd = Etcd::start(&underlay, o.prefix, o.etcd_members);
        let admin = underlay.node(&format!("{}a", o.prefix), 0);
        let mut hosts = Vec::new();
        for i in 0..o.hosts {
            let segment = i % underlay.segments();
            let node = underlay.node(&format!("{}h", o.prefix), segment);
            let mut h = Host::new(
                node,
                &format!("{}-h{i}", o.prefix),
                &etcd.endpoints(),
                o.agent_args.clone(),
            );
            h.start_agent();
            hosts.push(h);
        }
        for h in &hosts {
            h.wait_registered(Duration::from_secs(20));
        }
        World {
            hosts,
            etcd,
            admin,
            underlay,
        }
    }

    /// `plugnet-agent cluster --json ARGS` from the operator's node; the parsed output, or
    /// `Err(stderr)` when it failed.
    pub fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.admin.run(
            &crate::bin("plugnet-agent"),
            &[
                &["cluster", "--etcd", &self.etcd.endpoints(), "--json"],
                args,
            ]
            .concat(),
        );
        if out.status.success() {
            serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn cli_ok(&self, args: &[&str]) -> Value {
        self.cli(args)
            .unwrap_or_else(|e| panic!("plugnet cluster {args:?} failed: {e}\n{}", self.logs()))
    }

    /// [`wait_for`], with every agent's log in the failure message.
    pub fn wait<T>(&self, within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("--- agent {} ---\n{}", h.name, h.log_tail(60)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Poll `f` every 100 ms until it returns `Some`, at most `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
