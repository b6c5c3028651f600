//! Logging for the CNI plugins (`plugnet`, `plugnet-ipam`): stdout is the protocol, so
//! diagnostics go to stderr, a file or syslog, chosen by `PLUGNET_LOG` / `PLUGNET_LOG_LEVEL` or
//! the plugin configuration's `"log": {"target": …, "level": …}` (the environment wins, so an
//! operator can turn on debugging without editing conflists). Default: stderr at `warn`.
//!
//! Invariants: every line is emitted inside a span naming the network, container, ifname and
//! command; a bad log setting never fails the CNI request (it falls back to stderr at `warn` and
//! says so); with the target or level `off` no subscriber is installed at all.

use crate::error::CniError;
use crate::skel::{Plugin, Request};
use crate::types::CniResult;
use serde_json::Value;
use std::ffi::CString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stderr,
    File(PathBuf),
    Syslog,
    Off,
}

/// A resolved logging setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    pub target: Target,
    pub level: LevelFilter,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            target: Target::Stderr,
            level: LevelFilter::WARN,
        }
    }
}

pub fn parse_target(s: &str) -> Result<Target, String> {
    match s {
        "stderr" => Ok(Target::Stderr),
        "syslog" => Ok(Target::Syslog),
        "off" | "none" => Ok(Target::Off),
        _ => match s.strip_prefix("file:") {
            Some(p) if p.starts_with('/') => Ok(Target::File(PathBuf::from(p))),
            _ => Err(format!(
                "log target {s:?} is not one of stderr, syslog, off, file:/absolute/path"
            )),
        },
    }
}

pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse::<LevelFilter>()
        .map_err(|_| format!("log level {s:?} is not one of off, error, warn, info, debug, trace"))
}

impl LogSpec {
    /// Combine the environment (`PLUGNET_LOG`, `PLUGNET_LOG_LEVEL`) with the configuration's
    /// `log` object; environment first. Returns the spec and the problems found (each setting
    /// that could not be used is replaced by the default).
    pub fn resolve(
        env_target: Option<&str>,
        env_level: Option<&str>,
        conf: Option<&Value>,
    ) -> (LogSpec, Vec<String>) {
        let mut spec = LogSpec::default();
        let mut problems = Vec::new();
        let conf_str = |k: &str| conf.and_then(|c| c.get(k)).and_then(Value::as_str);
        if conf.is_some_and(|c| !c.is_object()) {
            problems.push("config key \"log\" must be an object {\"target\", \"level\"}".into());
        }
        let target = env_target.filter(|s| !s.is_empty()).or(conf_str("target"));
        if let Some(t) = target {
            match parse_target(t) {
                Ok(t) => spec.target = t,
                Err(e) => problems.push(e),
            }
        }
        let level = env_level.filter(|s| !s.is_empty()).or(conf_str("level"));
        if let Some(l) = level {
            match parse_level(l) {
                Ok(l) => spec.level = l,
                Err(e) => problems.push(e),
            }
        }
        (spec, problems)
    }

    fn is_off(&self) -> bool {
        self.target == Target::Off || self.level == LevelFilter::OFF
    }
}

/// Install the process-wide subscriber for `spec` (once; later calls are no-ops). A file that
/// cannot be opened falls back to stderr and is reported as the error.
pub fn init(program: &'static str, spec: &LogSpec) -> Result<(), String> {
    if spec.is_off() {
        return Ok(());
    }
    let builder = tracing_subscriber::fmt()
        .with_max_level(spec.level)
        .with_target(false)
        .with_ansi(false);
    let result = match &spec.target {
        Target::Off => return Ok(()),
        Target::Stderr => builder.with_writer(std::io::stderr).try_init(),
        Target::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            match file {
                // O_APPEND and one write per line: concurrent plugin processes never interleave.
                Ok(f) => builder.with_writer(Arc::new(f)).try_init(),
                Err(e) => {
                    let _ = builder.with_writer(std::io::stderr).try_init();
                    return Err(format!(
                        "cannot open log file {}: {e}; logging to stderr instead (create its \
                         directory or fix PLUGNET_LOG / the \"log\" config)",
                        path.display()
                    ));
                }
            }
        }
        Target::Syslog => builder
            .without_time()
            .with_writer(Syslog::open(program))
            .try_init(),
    };
    // Already installed (a second plugin call in one process): keep the first.
    let _ = result;
    Ok(())
}

/// Writes each line to syslog(3) (facility daemon, ident = the program name).
struct Syslog;

impl Syslog {
    fn open(program: &'static str) -> Syslog {
        // openlog keeps the pointer: the ident must live for the whole process.
        let ident: &'static CString = Box::leak(Box::new(
            CString::new(program).expect("no NUL in program name"),
        ));
        // SAFETY: ident is a valid NUL-terminated string that is never freed.
        unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        Syslog
    }
}

/// One line, sent when the formatter drops the writer.
pub struct SyslogLine {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let Ok(line) = CString::new(text.replace('\0', " ")) else {
            return;
        };
        // SAFETY: constant "%s" format with one valid C string argument.
        unsafe { libc::syslog(self.priority, c"%s".as_ptr(), line.as_ptr()) };
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        self.make_line(&Level::INFO)
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        self.make_line(meta.level())
    }
}

impl Syslog {
    fn make_line(&self, level: &Level) -> SyslogLine {
        let priority = match *level {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::with_capacity(128),
        }
    }
}

/// A plugin that sets up logging from its request and runs every command inside a span naming
/// the network and container.
pub struct Logged<P> {
    inner: P,
    program: &'static str,
    env_target: Option<String>,
    env_level: Option<String>,
}

impl<P: Plugin> Logged<P> {
    /// `env_target`/`env_level`: the values of `PLUGNET_LOG` / `PLUGNET_LOG_LEVEL`.
    pub fn new(
        inner: P,
        program: &'static str,
        env_target: Option<String>,
        env_level: Option<String>,
    ) -> Self {
        Logged {
            inner,
            program,
            env_target,
            env_level,
        }
    }

    fn around<T>(
        &self,
        req: &Request,
        f: impl FnOnce() -> Result<T, CniError>,
        done: impl FnOnce(&T) -> String,
    ) -> Result<T, CniError> {
        let (spec, problems) = LogSpec::resolve(
            self.env_target.as_deref(),
            self.env_level.as_deref(),
            req.raw.get("log"),
        );
        let init_problem = init(self.program, &spec).err();
        // At ERROR level so the span is recorded whatever level is enabled: every line names it.
        let span = tracing::error_span!(
            "cni",
            plugin = self.program,
            cmd = req.command.as_str(),
            network = %req.config.name,
            container = %req.container_id,
            ifname = %req.ifname,
        );
        let _enter = span.enter();
        for p in problems.iter().chain(&init_problem) {
            tracing::warn!("log setting ignored: {p}");
        }
        tracing::debug!(netns = ?req.netns, "start");
        let out = f();
        match &out {
            Ok(v) => tracing::info!("{}", done(v)),
            Err(e) if e.details.is_empty() => {
                tracing::warn!(code = e.code_u32(), "failed: {}", e.msg)
            }
            Err(e) => {
                tracing::warn!(code = e.code_u32(), details = %e.details, "failed: {}", e.msg)
            }
        }
        out
    }
}

impl<P: Plugin> Plugin for Logged<P> {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.around(
            req,
            || self.inner.add(req),
            |r| {
                let ips: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
                format!("added: {}", ips.join(" "))
            },
        )
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        self.around(req, || self.inner.del(req), |_| "deleted".into())
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        self.around(req, || self.inner.check(req), |_| "checked".into())
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        self.around(req, || self.inner.status(req), |_| "ready".into())
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        self.around(req, || self.inner.gc(req), |_| "garbage collected".into())
    }
    fn known_args(&self) -> &'static [&'static str] {
        self.inner.known_args()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn environment_wins_and_bad_settings_fall_back() {
        let (s, p) = LogSpec::resolve(None, None, None);
        assert_eq!((s, p.len()), (LogSpec::default(), 0));
        let conf = json!({"target": "file:/var/log/x.log", "level": "debug"});
        let (s, _) = LogSpec::resolve(None, None, Some(&conf));
        assert_eq!(s.target, Target::File("/var/log/x.log".into()));
        assert_eq!(s.level, LevelFilter::DEBUG);
        let (s, _) = LogSpec::resolve(Some("syslog"), Some("info"), Some(&conf));
        assert_eq!((s.target, s.level), (Target::Syslog, LevelFilter::INFO));
        let (s, p) = LogSpec::resolve(Some("file:relative"), Some("loud"), None);
        assert_eq!(s, LogSpec::default());
        assert_eq!(p.len(), 2);
        assert!(p[0].contains("file:/absolute/path"), "{p:?}");
        let (_, p) = LogSpec::resolve(None, None, Some(&json!("stderr")));
        assert!(p[0].contains("must be an object"), "{p:?}");
        assert!(LogSpec::resolve(Some("off"), None, None).0.is_off());
        assert!(LogSpec::resolve(None, Some("off"), None).0.is_off());
    }
}
