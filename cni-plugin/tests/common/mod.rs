//! Kernel-test scaffolding: throwaway network namespaces wired into a small topology (a "host"
//! namespace with a bridge, containers behind veths, an "outside" namespace routed to the host),
//! removed on drop even when the test fails. Every object is named `pnf…` with the test's tag
//! and the process id.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skip (with a message) unless root: kernel tests need CAP_NET_ADMIN.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

pub fn sh(cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sh_out(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `f` on a thread that entered network namespace `ns` (never on the caller's thread).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// A network namespace deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        // Addresses usable at once (no DAD wait), also for link-local ones.
        sh(&format!("ip netns exec {name} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"));
        Netns(name)
    }
    pub fn exec(&self, cmd: &str) {
        sh(&format!("ip netns exec {} {cmd}", self.0));
    }
    pub fn out(&self, cmd: &str) -> String {
        sh_out(&format!("ip netns exec {} {cmd}", self.0))
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    /// Runs the shell line `cmd` (all of it) inside the namespace; panics on failure; its stdout.
    pub fn sh(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// host (bridge `pnfbr<n>` 10.7n.1.1/24 + fd7n:1::1/64), containers on it, and an outside
/// namespace at 10.7n.2.2 (host side 10.7n.2.1) that has no route to the container subnet.
pub struct Topo {
    pub n: u8,
    pub host: Netns,
    pub outside: Netns,
    pub containers: Vec<Netns>,
    pub bridge: String,
}

impl Topo {
    pub fn new(tag: &str, n: u8) -> Topo {
        let pid = std::process::id();
        let host = Netns::new(format!("pnf-{tag}-h-{pid}"));
        let outside = Netns::new(format!("pnf-{tag}-o-{pid}"));
        let bridge = format!("pnfbr{n}");
        let h = &host.0;
        sh(&format!("ip -n {h} link add {bridge} type bridge"));
        sh(&format!("ip -n {h} addr add 10.7{n}.1.1/24 dev {bridge}"));
        sh(&format!(
            "ip -n {h} addr add fd7{n}:1::1/64 dev {bridge} nodad"
        ));
        sh(&format!("ip -n {h} link set {bridge} up"));
        sh(&format!(
            "ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
        ));
        sh(&format!(
            "ip -n {h} link add pnfo{n}h type veth peer name pnfo{n}o netns {}",
            outside.0
        ));
        sh(&format!("ip -n {h} addr add 10.7{n}.2.1/24 dev pnfo{n}h"));
        sh(&format!(
            "ip -n {h} addr add fd7{n}:2::1/64 dev pnfo{n}h nodad"
        ));
        sh(&format!("ip -n {h} link set pnfo{n}h up"));
        let o = &outside.0;
        sh(&format!("ip -n {o} addr add 10.7{n}.2.2/24 dev pnfo{n}o"));
        sh(&format!(
            "ip -n {o} addr add fd7{n}:2::2/64 dev pnfo{n}o nodad"
        ));
        sh(&format!("ip -n {o} link set pnfo{n}o up"));
        Topo {
            n,
            host,
            outside,
            containers: Vec::new(),
            bridge,
        }
    }

    /// Adds container `i` (1-based): netns, veth `pnfv<n><i>` on the bridge, 10.7n.1.(i+1).
    pub fn add_container(&mut self, i: u8) -> String {
        let (n, h) = (self.n, self.host.0.clone());
        let c = Netns::new(format!("pnf-c{n}{i}-{}", std::process::id()));
        let hv = format!("pnfv{n}{i}");
        sh(&format!(
            "ip -n {h} link add {hv} type veth peer name eth0 netns {}",
            c.0
        ));
        sh(&format!(
            "ip -n {h} link set {hv} master {} up",
            self.bridge
        ));
        let cn = &c.0;
        sh(&format!(
            "ip -n {cn} addr add 10.7{n}.1.{}/24 dev eth0",
            i + 1
        ));
        sh(&format!(
            "ip -n {cn} addr add fd7{n}:1::{}/64 dev eth0 nodad",
            i + 1
        ));
        sh(&format!("ip -n {cn} link set eth0 up"));
        sh(&format!("ip -n {cn} route add default via 10.7{n}.1.1"));
        sh(&format!("ip -n {cn} -6 route add default via fd7{n}:1::1"));
        self.containers.push(c);
        hv
    }

    pub fn cns(&self, i: u8) -> String {
        self.containers[(i - 1) as usize].0.clone()
    }
}

/// A TCP server in a namespace answering every connection with `<tag> peer=<client address>`.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl TcpServer {
    pub fn start(ns: &str, addr: &str, tag: &'static str) -> TcpServer {
        let addr: SocketAddr = addr.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = write!(s, "{tag} peer={}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().unwrap();
        TcpServer {
            stop,
            handle: Some(handle),
            addr,
        }
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A UDP server in a namespace answering every datagram with `<tag> peer=<client address>`.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &str, addr: &str, tag: &'static str) -> UdpServer {
        let addr: SocketAddr = addr.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = UdpSocket::bind(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !st.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{tag} peer={}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        rx.recv().unwrap();
        UdpServer {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from namespace `ns` to `to` (optionally from `bind`) and returns what the server
/// said, or the error.
pub fn tcp_get(ns: &str, to: &str, bind: Option<&str>) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    let bind: Option<SocketAddr> = bind.map(|b| b.parse().unwrap());
    in_ns(ns, move || {
        let s = match bind {
            None => TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .map_err(|e| e.to_string())?,
            Some(b) => {
                let sock = if to.is_ipv4() {
                    nix::sys::socket::socket(
                        nix::sys::socket::AddressFamily::Inet,
                        nix::sys::socket::SockType::Stream,
                        nix::sys::socket::SockFlag::empty(),
                        None,
                    )
                } else {
                    nix::sys::socket::socket(
                        nix::sys::socket::AddressFamily::Inet6,
                        nix::sys::socket::SockType::Stream,
                        nix::sys::socket::SockFlag::empty(),
                        None,
                    )
                }
                .map_err(|e| e.to_string())?;
                nix::sys::socket::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    &nix::sys::socket::SockaddrStorage::from(b),
                )
                .map_err(|e| e.to_string())?;
                let std_sock: TcpStream = TcpStream::from(sock);
                let raw = std::os::fd::AsRawFd::as_raw_fd(&std_sock);
                nix::sys::socket::connect(raw, &nix::sys::socket::SockaddrStorage::from(to))
                    .map_err(|e| e.to_string())?;
                std_sock
            }
        };
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// Sends one datagram from `ns` to `to` and returns the answer (retries a few times).
pub fn udp_get(ns: &str, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        let mut last = String::new();
        for _ in 0..4 {
            s.send_to(b"hi", to).map_err(|e| e.to_string())?;
            match s.recv_from(&mut buf) {
                Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    })
}
