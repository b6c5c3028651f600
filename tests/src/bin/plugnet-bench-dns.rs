//! DNS query load for scripts/bench-names.sh: `--workers` threads, each in the netns `--netns`
//! with its own UDP socket, ask `--server` for `--name` (A) one after the other for
//! `--seconds`; prints {"qps", "p50_us", "p99_us", "answers", "timeouts", "codes"} as JSON.
//! Messages are built and read with hickory-proto.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

fn arg(args: &[String], key: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let netns = arg(&args, "--netns", "");
    let server: SocketAddr = arg(&args, "--server", "127.0.0.1:53")
        .parse()
        .expect("--server");
    let name = Name::from_ascii(arg(&args, "--name", "web")).expect("--name");
    let seconds: f64 = arg(&args, "--seconds", "3").parse().expect("--seconds");
    let workers: usize = arg(&args, "--workers", "4").parse().expect("--workers");
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (netns, name) = (netns.clone(), name.clone());
            std::thread::spawn(move || {
                if !netns.is_empty() {
                    let f = std::fs::File::open(&netns).expect("open netns");
                    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns");
                }
                let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
                sock.connect(server).expect("connect");
                sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut lat = Vec::new();
                let (mut timeouts, mut codes) = (0u64, std::collections::BTreeMap::new());
                let mut buf = [0u8; 4096];
                let mut id = (w as u16).wrapping_mul(7919);
                while Instant::now() < until {
                    id = id.wrapping_add(1);
                    let mut m = Message::new();
                    m.set_id(id)
                        .set_message_type(MessageType::Query)
                        .set_op_code(OpCode::Query)
                        .set_recursion_desired(true)
                        .add_query(Query::query(name.clone(), RecordType::A));
                    let bytes = m.to_vec().unwrap();
                    let t = Instant::now();
                    sock.send(&bytes).expect("send");
                    loop {
                        match sock.recv(&mut buf) {
                            Ok(n) => {
                                let Ok(r) = Message::from_vec(&buf[..n]) else {
                                    continue;
                                };
                                if r.id() != id {
                                    continue;
                                }
                                lat.push(t.elapsed().as_micros() as u64);
                                *codes.entry(r.response_code().to_string()).or_insert(0u64) += 1;
                                break;
                            }
                            Err(_) => {
                                timeouts += 1;
                                break;
                            }
                        }
                    }
                }
                (lat, timeouts, codes)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut timeouts = 0;
    let mut codes = std::collections::BTreeMap::new();
    for h in handles {
        let (l, t, c) = h.join().expect("worker");
        lat.extend(l);
        timeouts += t;
        for (k, v) in c {
            *codes.entry(k).or_insert(0u64) += v;
        }
    }
    let took = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    println!(
        "{}",
        json!({"qps": (lat.len() as f64 / took).round(), "p50_us": pct(0.5), "p99_us": pct(0.99),
               "answers": lat.len(), "timeouts": timeouts, "codes": codes})
    );
}
