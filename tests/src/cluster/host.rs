//! A "host": a namespace on the underlay with its own plugnet-agent and state dir, and the
//! CNI calls a runtime on it would make (plugnet-ipam with `"cluster"`, or the plugnet bridge
//! plugin run inside the host's namespace).

use super::underlay::Node;
use crate::{bin, cni, CniOut};
use plugnet::ipam::cluster::ask::{ask, Request};
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Host {
    pub node: Node,
    pub name: String,
    etcd: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
    agent: Option<Child>,
    blackholed: Vec<String>,
}

impl Host {
    pub fn new(node: Node, name: &str, etcd: &str, args: Vec<String>) -> Host {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .expect("tempdir");
        Host {
            node,
            name: name.to_string(),
            etcd: etcd.to_string(),
            args,
            dir,
            agent: None,
            blackholed: Vec::new(),
        }
    }

    /// The agent's state dir (`agentDir` of this host's conflists).
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent of {} runs", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node.ns.name])
            .arg(bin("plugnet-agent"))
            .args(["--etcd", &self.etcd, "--host", &self.name])
            .args(["--underlay", &self.node.ip.to_string()])
            .arg("--state-dir")
            .arg(self.agent_dir())
            .args(["--log-level", "plugnet_agent=debug"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start plugnet-agent");
        self.agent = Some(child);
    }

    /// The agent's pid while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGKILL the agent (a crash).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the agent and wait for it.
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// The agent's own view (the local socket's `status`).
    pub fn status(&self) -> Value {
        match ask(&self.agent_dir(), &Request::Status, Duration::from_secs(3)) {
            Ok(a) => a.status,
            Err(e) => json!({"error": e}),
        }
    }

    pub fn wait_registered(&self, within: Duration) {
        super::wait_for(
            within,
            &format!("{} registered\n{}", self.name, self.log_tail(40)),
            || (self.status()["registered"] == true).then_some(()),
        );
    }

    /// Cut the host off from etcd (blackhole routes to every member) or restore it.
    pub fn cut_off(&mut self, members: &[std::net::Ipv4Addr]) {
        for ip in members {
            let r = format!("blackhole {ip}/32");
            self.node.ns.exec(&format!("ip route add {r}"));
            self.blackholed.push(r);
        }
    }

    pub fn reconnect(&mut self) {
        for r in self.blackholed.drain(..) {
            self.node.ns.exec(&format!("ip route del {r}"));
        }
    }

    /// A plugnet-ipam configuration of cluster network `cluster` on this host.
    pub fn ipam_conf(&self, cni_network: &str, cluster: &str, version: &str) -> Value {
        json!({"cniVersion": version, "name": cni_network,
               "ipam": {"type": "plugnet-ipam", "cluster": cluster, "agentDir": self.agent_dir()}})
    }

    /// A CNI command of plugnet-ipam for container `id` (as a runtime's delegation runs it).
    pub fn ipam(&self, command: &str, id: &str, conf: &Value) -> CniOut {
        ipam(command, id, conf)
    }

    /// Every (address, container id) this host's store of `cluster` holds.
    pub fn held(&self, cluster: &str) -> Vec<(std::net::IpAddr, String)> {
        let dir = plugnet::ipam::cluster::local::store_dir(&self.agent_dir());
        plugnet::ipam::records(&dir, cluster)
            .expect("read the store")
            .into_iter()
            .flat_map(|r| {
                r.ips
                    .into_iter()
                    .map(move |ip| (ip, r.owner.container_id.clone()))
            })
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

impl Host {
    /// A CNI command of the plugnet bridge plugin, run in this host's namespace for a
    /// container whose namespace is `netns`.
    pub fn bridge(&self, command: &str, id: &str, netns: &str, conf: &Value) -> CniOut {
        use std::io::Write;
        let p = bin("plugnet");
        let dir = p.parent().unwrap_or(Path::new("/")).display().to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node.ns.name])
            .arg(&p)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run plugnet");
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes());
        let out = child.wait_with_output().expect("wait plugnet");
        CniOut {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A CNI command of plugnet-ipam for container `id`; `conf` names the host by its `agentDir`.
pub fn ipam(command: &str, id: &str, conf: &Value) -> CniOut {
    let p = bin("plugnet-ipam");
    let dir = p.parent().unwrap_or(Path::new("/")).display().to_string();
    cni(
        &p,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &dir),
        ],
        conf.to_string().as_bytes(),
    )
}
