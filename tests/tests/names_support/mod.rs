//! Shared by the name resolver's tests: DNS questions asked from inside a network namespace
//! (hickory-proto builds and reads the messages), and the agent as a child process.
#![allow(dead_code)]

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `f` on a thread that entered the netns at `path`.
pub fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// The answer to one question: its code and the A/AAAA addresses in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: ResponseCode,
    pub addrs: Vec<IpAddr>,
}

/// An answer with at least one address.
pub fn found(a: &Option<Answer>) -> bool {
    a.as_ref().is_some_and(|a| !a.addrs.is_empty())
}

/// Asks `server` (UDP) for `name`/`qtype` from inside the netns; `None` on no answer in 2 s.
pub fn ask(ns: &str, server: SocketAddr, name: &str, qtype: RecordType) -> Option<Answer> {
    let name = Name::from_ascii(name).unwrap();
    in_netns(ns, move || {
        let any = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = UdpSocket::bind(any).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name, qtype));
        sock.send_to(&m.to_vec().unwrap(), server).ok()?;
        let mut buf = [0u8; 4096];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let r = Message::from_vec(&buf[..n]).ok()?;
        assert_eq!(r.id(), 4242);
        Some(Answer {
            code: r.response_code(),
            addrs: r
                .answers()
                .iter()
                .filter_map(|rr| match rr.data() {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect(),
        })
    })
}

/// `ask` until `ok` holds (the record appears a few ms after ADD), for at most 5 s.
pub fn ask_until(
    ns: &str,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    ok: impl Fn(&Option<Answer>) -> bool,
) -> Option<Answer> {
    let start = Instant::now();
    loop {
        let a = ask(ns, server, name, qtype);
        if ok(&a) || start.elapsed() > Duration::from_secs(5) {
            return a;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends raw datagrams to `server` from inside the netns (hostile input); returns how many
/// answers came back within `wait`.
pub fn send_raw(ns: &str, server: SocketAddr, packets: Vec<Vec<u8>>, wait: Duration) -> usize {
    in_netns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for p in &packets {
            let _ = sock.send_to(p, server);
        }
        sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        let mut got = 0;
        while sock.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    })
}

/// A query message for `name` (a valid one, as bytes).
pub fn query_bytes(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// plugnet-agent, started in netns `ns` (or the caller's with `None`); killed on drop.
pub struct Agent {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Agent {
    pub fn start(ns: Option<&str>, state: &Path, resolv_conf: &Path, extra: &[&str]) -> Agent {
        let log = state.with_extension("log");
        let mut c = match ns {
            Some(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", n])
                    .arg(plugnet_tests::bin("plugnet-agent"));
                c
            }
            None => Command::new(plugnet_tests::bin("plugnet-agent")),
        };
        c.arg("--state-dir")
            .arg(state)
            .args(["--metrics-listen", "off", "--log-level", "debug"])
            .arg("--resolv-conf")
            .arg(resolv_conf)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = c.spawn().unwrap();
        Agent { child, log }
    }
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    /// Resident set of the agent process (kB): the child is `ip netns exec`, which execs.
    pub fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `packets` from inside the netns in bursts of 64, reading answers between bursts (so
/// the count measures the agent, not socket buffers); the response codes of the answers.
pub fn flood(
    ns: &str,
    server: SocketAddr,
    packets: Vec<Vec<u8>>,
    wait: Duration,
) -> Vec<ResponseCode> {
    in_netns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut codes = Vec::new();
        let mut buf = [0u8; 4096];
        let mut read = |sock: &UdpSocket, codes: &mut Vec<ResponseCode>, t: Duration| {
            sock.set_read_timeout(Some(t)).unwrap();
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                if let Ok(m) = Message::from_vec(&buf[..n]) {
                    codes.push(m.response_code());
                }
            }
        };
        for chunk in packets.chunks(64) {
            for p in chunk {
                let _ = sock.send_to(p, server);
            }
            read(&sock, &mut codes, Duration::from_millis(5));
        }
        read(&sock, &mut codes, wait);
        codes
    })
}
