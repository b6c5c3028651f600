//! The CNI dispatcher: environment + stdin in, result or error JSON out.
//!
//! Invariant: [`run`] never panics on input, never touches the process environment or exits;
//! every outcome is an exit code plus, on stdout, either the result in exactly the request's
//! `cniVersion`, nothing, or a spec-shaped error.

use crate::args::CniArgs;
use crate::error::{CniError, ErrorCode};
use crate::types::{CniResult, NetConf};
use crate::validate;
use crate::version::{CniVersion, SUPPORTED};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

/// The largest configuration accepted on stdin.
pub const MAX_STDIN: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The variables libcni's skel requires for this command (it is stricter than the spec
    /// about `CNI_PATH`; we follow it so plugins behave identically under every runtime).
    fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Status | Command::Gc => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

impl FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => return Err(CniError::env(format!("unknown CNI_COMMAND: {other}"))),
        })
    }
}

/// Where the dispatcher reads its environment; empty values count as absent.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct OsEnv;

impl Env for OsEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

/// A fixed environment, for tests and in-process invocation.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        MapEnv(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).filter(|v| !v.is_empty()).cloned()
    }
}

/// One decoded, validated invocation.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub version: CniVersion,
    /// Empty for STATUS and GC.
    pub container_id: String,
    pub netns: Option<PathBuf>,
    /// Empty for STATUS and GC.
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
    pub config: NetConf,
    /// The whole configuration as received, for plugin-specific keys and delegation.
    pub raw: Value,
    /// The configuration bytes as received (delegates get exactly these).
    pub stdin: Vec<u8>,
}

/// A CNI plugin: one method per command. VERSION is answered by the dispatcher.
pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
    /// `CNI_ARGS` keys this plugin understands.
    fn known_args(&self) -> &'static [&'static str] {
        &["IP", "MAC"]
    }
}

/// Run one invocation. Returns the process exit code (0 success, 1 failure).
pub fn run(
    plugin: &dyn Plugin,
    env: &dyn Env,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> i32 {
    let mut version_for_errors = CniVersion::LATEST.as_str().to_string();
    let outcome = dispatch(plugin, env, stdin, &mut version_for_errors);
    let (code, out) = match outcome {
        Ok(Some(json)) => (0, Some(json)),
        Ok(None) => (0, None),
        Err(e) => (1, Some(e.to_json(&version_for_errors))),
    };
    if let Some(json) = out {
        let mut text = serde_json::to_string(&json).unwrap_or_default();
        text.push('\n');
        if stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return 1;
        }
    }
    code
}

fn dispatch(
    plugin: &dyn Plugin,
    env: &dyn Env,
    stdin: &mut dyn Read,
    version_for_errors: &mut String,
) -> Result<Option<Value>, CniError> {
    let command: Command = env
        .var("CNI_COMMAND")
        .ok_or_else(|| CniError::env("required env variables [CNI_COMMAND] missing"))?
        .parse()?;

    let bytes = read_stdin(stdin);
    // Stamp errors with the config's version when it is one we speak.
    let parsed: Option<Value> = bytes
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice(b).ok());
    if let Some(v) = parsed
        .as_ref()
        .and_then(|p| p.get("cniVersion"))
        .and_then(Value::as_str)
    {
        if SUPPORTED.contains(&v) {
            *version_for_errors = v.to_string();
        }
    }

    if command == Command::Version {
        return Ok(Some(serde_json::json!({
            "cniVersion": version_for_errors.as_str(),
            "supportedVersions": SUPPORTED,
        })));
    }

    let missing: Vec<&str> = command
        .required_env()
        .iter()
        .copied()
        .filter(|k| env.var(k).is_none())
        .collect();
    if !missing.is_empty() {
        if missing == ["CNI_CONTAINERID"] {
            return Err(CniError::new(
                ErrorCode::UnknownContainer,
                "missing containerID",
            ));
        }
        return Err(CniError::env(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    let container_id = env.var("CNI_CONTAINERID").unwrap_or_default();
    let ifname = env.var("CNI_IFNAME").unwrap_or_default();
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        validate::container_id(&container_id)?;
        validate::ifname_env(&ifname)?;
    }

    let stdin = bytes?;
    let raw = match parsed {
        Some(v) => v,
        None => {
            let e = serde_json::from_slice::<Value>(&stdin).unwrap_err();
            return Err(CniError::decode(format!(
                "failed to decode network configuration: {e}"
            )));
        }
    };
    let config = NetConf::from_json(&raw)?;
    let version = CniVersion::parse(&config.cni_version)?;
    validate::network_name(&config.name)?;
    match command {
        Command::Check if !version.allows_check() => {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                "config version does not allow CHECK",
            )
            .details(format!("config is {version}, CHECK needs 0.4.0 or later")))
        }
        Command::Status | Command::Gc if !version.allows_status_and_gc() => {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("config version does not allow {}", command.as_str()),
            )
            .details(format!(
                "config is {version}, {} needs 1.1.0 or later",
                command.as_str()
            )))
        }
        _ => {}
    }
    let args = CniArgs::parse(
        &env.var("CNI_ARGS").unwrap_or_default(),
        plugin.known_args(),
    )?;
    let path = env
        .var("CNI_PATH")
        .map(|p| {
            p.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let req = Request {
        command,
        version,
        container_id,
        netns: env.var("CNI_NETNS").map(PathBuf::from),
        ifname,
        args,
        path,
        config,
        raw,
        stdin,
    };
    match command {
        Command::Add => plugin.add(&req).map(|r| Some(r.to_json(version))),
        Command::Del => plugin.del(&req).map(|_| None),
        Command::Check => plugin.check(&req).map(|_| None),
        Command::Status => plugin.status(&req).map(|_| None),
        Command::Gc => plugin.gc(&req).map(|_| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    let n = stdin
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::io(format!("error reading from stdin: {e}")))?;
    if n > MAX_STDIN {
        return Err(CniError::io(format!(
            "network configuration on stdin exceeds {} bytes",
            MAX_STDIN
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IpConfig;
    use serde_json::json;
    use std::cell::RefCell;

    /// Records what it was asked and answers with a fixed result.
    #[derive(Default)]
    struct Fake {
        seen: RefCell<Vec<(Command, String, String)>>,
        fail: Option<CniError>,
    }

    impl Fake {
        fn answer<T>(&self, req: &Request, ok: T) -> Result<T, CniError> {
            self.seen.borrow_mut().push((
                req.command,
                req.container_id.clone(),
                req.ifname.clone(),
            ));
            match &self.fail {
                Some(e) => Err(e.clone()),
                None => Ok(ok),
            }
        }
    }

    impl Plugin for Fake {
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            let r = CniResult {
                ips: vec![IpConfig {
                    address: "10.9.0.2/24".parse().unwrap(),
                    gateway: Some("10.9.0.1".parse().unwrap()),
                    interface: None,
                }],
                ..Default::default()
            };
            self.answer(req, r)
        }
        fn del(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req, ())
        }
        fn check(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req, ())
        }
        fn status(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req, ())
        }
        fn gc(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req, ())
        }
    }

    fn env(cmd: &str) -> MapEnv {
        MapEnv::new(&[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
    }

    fn conf(version: &str) -> Vec<u8> {
        json!({"cniVersion": version, "name": "net1", "type": "fake"})
            .to_string()
            .into_bytes()
    }

    fn call(p: &Fake, env: &MapEnv, stdin: &[u8]) -> (i32, Value) {
        let mut out = Vec::new();
        let code = run(p, env, &mut &stdin[..], &mut out);
        let v = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out).expect("stdout is JSON")
        };
        (code, v)
    }

    #[test]
    fn version_lists_exactly_the_supported_set() {
        let (code, v) = call(&Fake::default(), &env("VERSION"), b"");
        assert_eq!(code, 0);
        assert_eq!(v["supportedVersions"], json!(SUPPORTED));
        assert_eq!(v["cniVersion"], "1.1.0");
        let (_, v) = call(&Fake::default(), &env("VERSION"), &conf("0.4.0"));
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn every_command_in_every_version() {
        for version in SUPPORTED {
            for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
                let p = Fake::default();
                let (code, v) = call(&p, &env(cmd), &conf(version));
                let allowed = match cmd {
                    "CHECK" => *version >= "0.4.0",
                    "STATUS" | "GC" => *version == "1.1.0",
                    _ => true,
                };
                if allowed {
                    assert_eq!(code, 0, "{cmd} {version}: {v}");
                    if cmd == "ADD" {
                        assert_eq!(v["cniVersion"], *version);
                        assert_eq!(
                            v["ips"][0].get("version").is_some(),
                            *version < "1.0.0",
                            "{version}"
                        );
                    } else {
                        assert_eq!(v, Value::Null, "{cmd} prints nothing on success");
                    }
                } else {
                    assert_eq!(code, 1);
                    assert_eq!(v["code"], 1, "{cmd} {version}");
                    assert!(p.seen.borrow().is_empty(), "plugin must not run");
                }
            }
        }
    }

    #[test]
    fn env_errors_name_the_variables() {
        let mut e = env("ADD");
        e.0.remove("CNI_NETNS");
        e.0.insert("CNI_PATH".into(), String::new());
        let (code, v) = call(&Fake::default(), &e, &conf("1.0.0"));
        assert_eq!(code, 1);
        assert_eq!(v["code"], 4);
        assert_eq!(
            v["msg"],
            "required env variables [CNI_NETNS,CNI_PATH] missing"
        );
        assert_eq!(v["cniVersion"], "1.0.0");

        let mut e = env("DEL");
        e.0.remove("CNI_NETNS");
        assert_eq!(
            call(&Fake::default(), &e, &conf("1.0.0")).0,
            0,
            "DEL needs no netns"
        );

        let mut e = env("ADD");
        e.0.remove("CNI_CONTAINERID");
        assert_eq!(call(&Fake::default(), &e, &conf("1.0.0")).1["code"], 3);

        let (_, v) = call(&Fake::default(), &env("BOGUS"), &conf("1.0.0"));
        assert_eq!(v["code"], 4);
        let (_, v) = call(&Fake::default(), &MapEnv::default(), &conf("1.0.0"));
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn hostile_names_are_refused_before_the_plugin_runs() {
        for (key, value, code) in [
            ("CNI_IFNAME", "sixteen-chars-xx", 4),
            ("CNI_IFNAME", "a/b", 4),
            ("CNI_IFNAME", "..", 4),
            ("CNI_CONTAINERID", "../x", 4),
            ("CNI_ARGS", "Bogus=1", 4),
            ("CNI_ARGS", "IP", 4),
        ] {
            let mut e = env("ADD");
            e.0.insert(key.into(), value.into());
            let p = Fake::default();
            let (c, v) = call(&p, &e, &conf("1.0.0"));
            assert_eq!(
                (c, v["code"].as_u64()),
                (1, Some(code)),
                "{key}={value}: {v}"
            );
            assert!(p.seen.borrow().is_empty());
        }
        let bad_net = json!({"cniVersion": "1.0.0", "name": "../x", "type": "fake"});
        let (_, v) = call(
            &Fake::default(),
            &env("ADD"),
            bad_net.to_string().as_bytes(),
        );
        assert_eq!(v["code"], 7);
    }

    #[test]
    fn bad_stdin() {
        let (_, v) = call(&Fake::default(), &env("ADD"), b"{not json");
        assert_eq!(v["code"], 6);
        let (_, v) = call(&Fake::default(), &env("ADD"), &conf("0.2.0"));
        assert_eq!(v["code"], 1);
        assert_eq!(v["msg"], "incompatible CNI versions");
        let big = vec![b' '; MAX_STDIN + 10];
        let (c, v) = call(&Fake::default(), &env("ADD"), &big);
        assert_eq!((c, v["code"].as_u64()), (1, Some(5)));
        let (_, v) = call(
            &Fake::default(),
            &env("ADD"),
            br#"{"cniVersion":"1.0.0","type":"x"}"#,
        );
        assert_eq!(v["code"], 7, "missing name");
    }

    #[test]
    fn plugin_errors_are_printed_with_the_request_version() {
        let p = Fake {
            fail: Some(CniError::new(ErrorCode::TryAgain, "busy").details("lock")),
            ..Default::default()
        };
        let (code, v) = call(&p, &env("ADD"), &conf("0.3.1"));
        assert_eq!(code, 1);
        assert_eq!(
            v,
            json!({"cniVersion": "0.3.1", "code": 11, "msg": "busy", "details": "lock"})
        );
    }
}
