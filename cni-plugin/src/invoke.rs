//! Running another CNI plugin: find it in `CNI_PATH`, exec it with the CNI environment and a
//! configuration on stdin, decode its result or error — as libcni's `invoke` package does.
//!
//! Invariant: every plugin process plugnet starts goes through an [`Exec`], so callers can be
//! tested with a fake and there is one place that decides what a plugin's output means.

use crate::error::CniError;
use crate::skel::{Command, Request};
use crate::types::CniResult;
use std::io::{ErrorKind, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The CNI parameters of one invocation (the `CNI_*` variables).
#[derive(Debug, Clone, Default)]
pub struct InvokeArgs {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
}

impl InvokeArgs {
    /// The environment a plugin sees: ours, with the CNI variables set (empty when unused, as
    /// libcni does).
    pub fn env(&self) -> Vec<(String, String)> {
        let path = self
            .path
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("CNI_"))
            .collect();
        env.extend([
            ("CNI_COMMAND".into(), self.command.clone()),
            ("CNI_CONTAINERID".into(), self.container_id.clone()),
            ("CNI_NETNS".into(), self.netns.clone()),
            ("CNI_IFNAME".into(), self.ifname.clone()),
            ("CNI_ARGS".into(), self.args.clone()),
            ("CNI_PATH".into(), path),
        ]);
        env
    }
}

/// Runs a plugin binary. Returns its stdout on success, the plugin's error otherwise.
pub trait Exec: Send + Sync {
    fn exec(
        &self,
        plugin: &Path,
        stdin: &[u8],
        env: &[(String, String)],
    ) -> Result<Vec<u8>, CniError>;
}

/// Real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawExec;

impl Exec for RawExec {
    fn exec(
        &self,
        plugin: &Path,
        stdin: &[u8],
        env: &[(String, String)],
    ) -> Result<Vec<u8>, CniError> {
        let name = plugin
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        // libcni retries "text file busy" (a binary being replaced) a few times.
        let mut attempt = 0;
        let mut child = loop {
            let mut cmd = std::process::Command::new(plugin);
            // The plugin dies with its invoker: a runtime killed mid-ADD must not leave an
            // orphaned ADD that completes after the runtime's cleanup DEL.
            // SAFETY: prctl and getppid are async-signal-safe system calls.
            unsafe {
                let parent = libc::getpid();
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
            let spawned = cmd
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match spawned {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(CniError::internal(format!(
                        "failed to run plugin {}: {e}",
                        plugin.display()
                    )))
                }
            }
        };
        let mut pipe = child.stdin.take().expect("piped");
        let input = stdin.to_vec();
        // Feed stdin from a thread so a plugin that writes before reading cannot deadlock us.
        let feeder = std::thread::spawn(move || {
            let r = pipe.write_all(&input);
            drop(pipe);
            r
        });
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::internal(format!("waiting for plugin {name}: {e}")))?;
        if let Ok(Err(e)) = feeder.join() {
            if e.kind() != ErrorKind::BrokenPipe {
                return Err(CniError::io(format!(
                    "writing config to plugin {name}: {e}"
                )));
            }
        }
        if !out.stderr.is_empty() {
            let _ = std::io::stderr().write_all(&out.stderr);
        }
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(plugin_failure(&name, &out.stdout, &out.stderr, out.status))
    }
}

/// What a failed plugin said: its error JSON, else its stderr (libcni's fallback).
fn plugin_failure(
    name: &str,
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> CniError {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(stdout) {
        if let Some(e) = CniError::from_json(&v) {
            return e;
        }
    }
    let text = String::from_utf8_lossy(if stdout.iter().all(u8::is_ascii_whitespace) {
        stderr
    } else {
        stdout
    });
    CniError::internal(format!("plugin {name} failed ({status}): {}", text.trim()))
}

/// Find `plugin_type` in the directories of `path`, in order.
pub fn find_in_path(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
    {
        return Err(CniError::config(format!(
            "invalid plugin type {plugin_type:?}"
        )));
    }
    if path.is_empty() {
        return Err(CniError::env("CNI_PATH is empty: cannot find plugins"));
    }
    for dir in path {
        let candidate = dir.join(plugin_type);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(CniError::internal(format!(
        "failed to find plugin {plugin_type:?} in path {path:?}"
    )))
}

/// Run the delegate plugin `plugin_type` (usually IPAM) for `command` with the request's
/// environment and exactly the configuration bytes the request carried, as the spec requires.
pub fn delegate(
    exec: &dyn Exec,
    plugin_type: &str,
    command: Command,
    req: &Request,
) -> Result<Option<CniResult>, CniError> {
    let plugin = find_in_path(plugin_type, &req.path)?;
    let args = InvokeArgs {
        command: command.as_str().to_string(),
        container_id: req.container_id.clone(),
        netns: req
            .netns
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ifname: req.ifname.clone(),
        args: req
            .args
            .pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";"),
        path: req.path.clone(),
    };
    let out = exec
        .exec(&plugin, &req.stdin, &args.env())
        .map_err(|e| e.context(format!("{plugin_type} {}", command.as_str())))?;
    if command == Command::Add {
        return CniResult::from_slice(&out)
            .map(Some)
            .map_err(|e| e.context(format!("{plugin_type} ADD result")));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn finds_plugins_in_path_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        script(b.path(), "p", "true");
        let path = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_in_path("p", &path).unwrap(), b.path().join("p"));
        assert!(find_in_path("q", &path)
            .unwrap_err()
            .msg
            .contains("failed to find plugin"));
        assert!(find_in_path("../p", &path).is_err());
        assert!(find_in_path("p", &[]).is_err());
    }

    #[test]
    fn raw_exec_reports_errors_and_results() {
        let d = tempfile::tempdir().unwrap();
        let ok = script(
            d.path(),
            "ok",
            r#"cat >/dev/null; echo "{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.1.0.2/24\"}],\"x\":\"$CNI_COMMAND\"}""#,
        );
        let out = RawExec
            .exec(&ok, b"{}", &[("CNI_COMMAND".into(), "ADD".into())])
            .unwrap();
        assert!(String::from_utf8_lossy(&out).contains("\"x\":\"ADD\""));
        let bad = script(
            d.path(),
            "bad",
            r#"echo '{"code":7,"msg":"nope","details":"d"}'; exit 1"#,
        );
        let e = RawExec.exec(&bad, b"", &[]).unwrap_err();
        assert_eq!((e.code_u32(), e.msg.as_str()), (7, "nope"));
        let silent = script(d.path(), "silent", "echo oops >&2; exit 3");
        let e = RawExec.exec(&silent, b"", &[]).unwrap_err();
        assert!(e.msg.contains("oops"), "{e}");
        // A plugin that never reads stdin must not wedge us, however big the input.
        let deaf = script(d.path(), "deaf", "exit 0");
        RawExec.exec(&deaf, &vec![b' '; 1 << 20], &[]).unwrap();
    }
}
