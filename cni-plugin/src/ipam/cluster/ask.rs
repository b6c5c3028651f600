//! The agent's local socket protocol (`<agentDir>/agent.sock`): one JSON request line, one JSON
//! answer line, then the connection closes. plugnet-ipam asks for more blocks with it; the
//! operator's `plugnet cluster status` asks for the agent's view.
//!
//! Invariant: a client never waits longer than the deadline it passes (connect, write and read
//! each bounded by what is left of it); the agent answers within its own etcd deadline, which
//! is shorter, so a refusal carries the agent's reason rather than a timeout.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest request line the agent reads.
pub const MAX_REQUEST: usize = 4096;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Make room for at least one more address of each family in `families` (4, 6) in
    /// `network`: answered once the network file shows it, or with the reason it cannot.
    Grow { network: String, families: Vec<u8> },
    /// The agent's view: etcd, host, networks, blocks, revoked containers.
    Status,
}

/// The answer: `{"ok": true, …}` or `{"ok": false, "error": "…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub status: Value,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer {
            ok: true,
            error: None,
            status: Value::Null,
        }
    }
    pub fn err(msg: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            error: Some(msg.into()),
            status: Value::Null,
        }
    }
}

/// Ask the agent whose state dir is `agent_dir`, waiting at most `within`. The error says
/// what failed (no agent, timeout, a garbled answer) in words an operator can act on.
pub fn ask(agent_dir: &Path, req: &Request, within: Duration) -> Result<Answer, String> {
    let start = Instant::now();
    let path = super::local::socket(agent_dir);
    let left = || {
        within
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("plugnet-agent did not answer within {within:?}"))
    };
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "plugnet-agent is not running here (socket {}: {e})",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(req).expect("serialises");
    line.push(b'\n');
    stream
        .set_write_timeout(Some(left()?))
        .and_then(|_| stream.write_all(&line))
        .map_err(|e| format!("send to plugnet-agent: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    loop {
        reader
            .get_ref()
            .set_read_timeout(Some(left()?))
            .map_err(|e| format!("read from plugnet-agent: {e}"))?;
        match reader.read_line(&mut answer) {
            Ok(0) => break,
            Ok(_) if answer.ends_with('\n') => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("plugnet-agent did not answer within {within:?}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read from plugnet-agent: {e}")),
        }
    }
    serde_json::from_str(answer.trim_end())
        .map_err(|e| format!("plugnet-agent answered {answer:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn wire_shapes() {
        let r = Request::Grow {
            network: "prod".into(),
            families: vec![4],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"grow","network":"prod","families":[4]}"#
        );
        assert_eq!(
            serde_json::to_string(&Answer::err("x")).unwrap(),
            r#"{"ok":false,"error":"x"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
    }

    #[test]
    fn no_agent_and_a_silent_agent_fail_in_time() {
        let tmp = tempfile::tempdir().unwrap();
        let e = ask(tmp.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("not running"), "{e}");
        let _silent = UnixListener::bind(super::super::local::socket(tmp.path())).unwrap();
        let t = Instant::now();
        let e = ask(tmp.path(), &Request::Status, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn an_answer_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(super::super::local::socket(tmp.path())).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("grow"));
            r.get_mut().write_all(b"{\"ok\":true}\n").unwrap();
        });
        let req = Request::Grow {
            network: "n".into(),
            families: vec![4, 6],
        };
        assert!(ask(tmp.path(), &req, Duration::from_secs(2)).unwrap().ok);
        server.join().unwrap();
    }
}
