//! A real etcd cluster (Debian's etcd-server), one member per namespace on the underlay.

use super::underlay::{Node, Underlay};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Member {
    node: Node,
    name: String,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial: String,
}

impl Etcd {
    /// Start `n` members on segment 0 and wait until the cluster answers.
    pub fn start(underlay: &Underlay, prefix: &str, n: usize) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-etcd-"))
            .tempdir()
            .expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                node: underlay.node(&format!("{prefix}e"), 0),
                name: format!("m{i}"),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.node.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut e = Etcd {
            members,
            dir,
            initial,
        };
        for i in 0..n {
            e.start_member(i);
        }
        e.wait_healthy(Duration::from_secs(60));
        e
    }

    /// `http://IP:2379,…` of every member.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://{}:2379", m.node.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn ips(&self) -> Vec<std::net::Ipv4Addr> {
        self.members.iter().map(|m| m.node.ip).collect()
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    pub fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        assert!(m.child.is_none(), "member {i} runs");
        let ip = m.node.ip;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log");
        let child = Command::new("ip")
            .args(["netns", "exec", &m.node.ns.name, "etcd"])
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--initial-cluster", &self.initial])
            .args([
                "--initial-cluster-token",
                "pnc",
                "--initial-cluster-state",
                "new",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.start_member(i);
            }
        }
    }

    /// `etcdctl ARGS` against the running members (from the first running member's namespace).
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .ok_or("no member runs")?;
        let out = m.node.run(
            std::path::Path::new("etcdctl"),
            &[
                &["--endpoints", &self.endpoints(), "--command-timeout", "3s"],
                args,
            ]
            .concat(),
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Every key under `prefix` (keys only).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", prefix])
            .unwrap_or_else(|e| panic!("etcdctl get {prefix}: {e}"))
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Every key and value under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self
            .ctl(&["get", "--prefix", prefix])
            .unwrap_or_else(|e| panic!("etcdctl get {prefix}: {e}"));
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// The store's revision: one per write transaction.
    pub fn revision(&self) -> i64 {
        let out = self
            .ctl(&["get", "/plugnet/v1/schema", "-w", "json"])
            .expect("etcdctl get");
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v["header"]["revision"].as_i64().expect("revision")
    }

    pub fn wait_healthy(&self, within: Duration) {
        let start = Instant::now();
        loop {
            // A linearizable read: answered only with a quorum.
            if self.ctl(&["get", "/plugnet/v1/schema"]).is_ok() {
                return;
            }
            if start.elapsed() > within {
                let logs: String = (0..self.members.len())
                    .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n---\n");
                panic!("etcd not healthy within {within:?}:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
    }
}
