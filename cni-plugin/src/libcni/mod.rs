//! Network lists as a runtime runs them (Go's libcni): load a conflist, run its plugin chain
//! for ADD/CHECK/DEL/GC/STATUS with `prevResult` threading, and cache each attachment's result.
//!
//! Invariant: the cached result of an attachment exists iff its last ADD succeeded and no DEL
//! has succeeded since; it is written atomically (temp, fsync, rename, 0600) and is the
//! `prevResult` of every CHECK and DEL.

use crate::error::CniError;
use crate::invoke::{find_in_path, Exec, InvokeArgs};
use crate::types::{Attachment, CniResult};
use base64::Engine;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod conflist;
pub use conflist::NetworkList;

/// The container side of one attachment.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, `ips`, `mac`, …), passed to the
    /// plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

/// Runs network lists with one plugin path, one cache and one executor.
#[derive(Clone)]
pub struct CniConfig {
    pub path: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub exec: Arc<dyn Exec>,
    pub cache_names: CacheNames,
}

/// How result-cache files are named under `<cache_dir>/results`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheNames {
    /// libcni's `<net>-<id>-<ifname>`, for a directory shared with runtimes that use libcni.
    /// Ambiguous (`-` is in all three charsets: network `a` with container `b-c` and network
    /// `a-b` with container `c` share a name), so a file is used only when its content names
    /// the attachment.
    Libcni,
    /// `<net>:<id>:<ifname>`: `:` is in none of the three charsets, so no two attachments
    /// share a file (the runner's own state dir). Files of the libcni naming an older plugnet
    /// wrote there are still read, and replaced or removed, when their content names the
    /// attachment.
    Unambiguous,
}

/// `kind` of libcni's cache files.
const CACHE_KIND: &str = "cniCacheV1";

impl CniConfig {
    pub fn new(path: Vec<PathBuf>, cache_dir: PathBuf, exec: Arc<dyn Exec>) -> CniConfig {
        CniConfig {
            path,
            cache_dir,
            exec,
            cache_names: CacheNames::Libcni,
        }
    }

    fn invoke(
        &self,
        command: &str,
        plugin: &Value,
        net: &NetworkList,
        rt: Option<&RuntimeConf>,
        inject: Map<String, Value>,
    ) -> Result<Vec<u8>, CniError> {
        let plugin_type = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let binary = find_in_path(plugin_type, &self.path)?;
        let mut conf = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("cniVersion".into(), Value::from(net.cni_version.clone()));
        conf.insert("name".into(), Value::from(net.name.clone()));
        conf.extend(inject);
        let stdin = serde_json::to_vec(&conf).expect("config serialises");
        let args = InvokeArgs {
            command: command.to_string(),
            container_id: rt.map(|r| r.container_id.clone()).unwrap_or_default(),
            netns: rt
                .and_then(|r| r.netns.as_ref())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ifname: rt.map(|r| r.ifname.clone()).unwrap_or_default(),
            args: rt
                .map(|r| {
                    r.args
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(";")
                })
                .unwrap_or_default(),
            path: self.path.clone(),
        };
        self.exec.exec(&binary, &stdin, &args.env()).map_err(|e| {
            e.context(format!(
                "plugin type={plugin_type:?} name={:?} {command}",
                net.name
            ))
        })
    }

    /// `runtimeConfig` for `plugin`: the capability args it declared.
    fn runtime_config(plugin: &Value, rt: &RuntimeConf) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = rt.capability_args.get(cap) {
                        out.insert(cap.clone(), v.clone());
                    }
                }
            }
        }
        out
    }

    fn inject_for(plugin: &Value, rt: &RuntimeConf, prev: Option<&Value>) -> Map<String, Value> {
        let mut inject = Map::new();
        let runtime = Self::runtime_config(plugin, rt);
        if !runtime.is_empty() {
            inject.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        if let Some(p) = prev {
            inject.insert("prevResult".into(), p.clone());
        }
        inject
    }

    /// ADD the attachment to every plugin of the list, in order; cache and return the result.
    pub fn add_network_list(
        &self,
        net: &NetworkList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, CniError> {
        let version = net.version()?;
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            let out = self.invoke(
                "ADD",
                plugin,
                net,
                Some(rt),
                Self::inject_for(plugin, rt, prev.as_ref()),
            )?;
            let parsed = CniResult::from_slice(&out)?;
            prev = Some(parsed.to_json(version));
        }
        let result = CniResult::from_json(&prev.unwrap_or(Value::Null))?;
        self.write_cache(net, rt, &result)?;
        Ok(result)
    }

    /// CHECK every plugin of the list in order against the cached result.
    pub fn check_network_list(&self, net: &NetworkList, rt: &RuntimeConf) -> Result<(), CniError> {
        let version = net.version()?;
        if !version.allows_check() {
            return Err(CniError::new(
                crate::ErrorCode::IncompatibleVersion,
                format!("configuration version {version} does not support the CHECK command"),
            ));
        }
        if net.disable_check {
            return Ok(());
        }
        let cached = self.cached_result(net, rt).map(|r| r.to_json(version));
        for plugin in &net.plugins {
            self.invoke(
                "CHECK",
                plugin,
                net,
                Some(rt),
                Self::inject_for(plugin, rt, cached.as_ref()),
            )?;
        }
        Ok(())
    }

    /// DEL the attachment from every plugin of the list in reverse order; drop the cache.
    pub fn del_network_list(&self, net: &NetworkList, rt: &RuntimeConf) -> Result<(), CniError> {
        let version = net.version()?;
        let cached = if version.passes_prev_result_on_del() {
            self.cached_result(net, rt).map(|r| r.to_json(version))
        } else {
            None
        };
        for plugin in net.plugins.iter().rev() {
            self.invoke(
                "DEL",
                plugin,
                net,
                Some(rt),
                Self::inject_for(plugin, rt, cached.as_ref()),
            )?;
        }
        self.remove_cache(net, rt);
        Ok(())
    }

    /// DEL every cached attachment of this network not in `valid`, then (1.1.0 lists) send GC
    /// with the valid list to every plugin. Errors are collected; everything is attempted.
    pub fn gc_network_list(&self, net: &NetworkList, valid: &[Attachment]) -> Result<(), CniError> {
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let mut errors = Vec::new();
        for (rt, _) in self.cached_attachments(&net.name) {
            if !keep.contains(&(rt.container_id.as_str(), rt.ifname.as_str())) {
                if let Err(e) = self.del_network_list(net, &rt) {
                    errors.push(e.to_string());
                }
            }
        }
        let version = net.version()?;
        if version.allows_status_and_gc() && !net.disable_gc {
            let list = serde_json::to_value(valid).expect("attachments serialise");
            for plugin in &net.plugins {
                let mut inject = Map::new();
                inject.insert("cni.dev/valid-attachments".into(), list.clone());
                inject.insert("cni.dev/attachments".into(), list.clone());
                if let Err(e) = self.invoke("GC", plugin, net, None, inject) {
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::internal(format!(
                "GC of {:?}: {}",
                net.name,
                errors.join("; ")
            )))
        }
    }

    /// STATUS of every plugin (1.1.0 lists only; older lists are assumed available).
    pub fn status_network_list(&self, net: &NetworkList) -> Result<(), CniError> {
        if !net.version()?.allows_status_and_gc() {
            return Ok(());
        }
        for plugin in &net.plugins {
            self.invoke("STATUS", plugin, net, None, Map::new())?;
        }
        Ok(())
    }

    /// Where the attachment's result may be cached: the name this config writes first, then
    /// (unambiguous naming) the libcni name an older plugnet wrote.
    fn cache_paths(&self, net: &str, container_id: &str, ifname: &str) -> Vec<PathBuf> {
        let dir = self.cache_dir.join("results");
        let libcni = dir.join(format!("{net}-{container_id}-{ifname}"));
        match self.cache_names {
            CacheNames::Libcni => vec![libcni],
            CacheNames::Unambiguous => {
                vec![dir.join(format!("{net}:{container_id}:{ifname}")), libcni]
            }
        }
    }

    /// The parsed cache file at `path` if it is the attachment's: a cniCacheV1 document whose
    /// `networkName`, `containerId` and `ifName` are the attachment's, or (under a name only it
    /// can have) a bare result from before cniCacheV1.
    fn read_cache_file(
        path: &Path,
        net: &str,
        rt: &RuntimeConf,
        unambiguous_name: bool,
    ) -> Option<Value> {
        let v: Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        if v.get("kind").and_then(Value::as_str) != Some(CACHE_KIND) {
            return unambiguous_name.then_some(v);
        }
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        let ours = field("networkName") == Some(net)
            && field("containerId") == Some(rt.container_id.as_str())
            && field("ifName") == Some(rt.ifname.as_str());
        ours.then_some(v)
    }

    /// The attachment's cache document and the file it came from.
    fn find_cache(&self, net: &str, rt: &RuntimeConf) -> Option<(PathBuf, Value)> {
        let paths = self.cache_paths(net, &rt.container_id, &rt.ifname);
        let only_one = paths.len() == 1;
        paths.into_iter().enumerate().find_map(|(i, p)| {
            // Under libcni naming the one name is as good as it gets (a runtime may have
            // written a bare result there); a fallback name must prove it is ours.
            let unambiguous = i == 0;
            let v = Self::read_cache_file(&p, net, rt, unambiguous || only_one)?;
            Some((p, v))
        })
    }

    fn write_cache(
        &self,
        net: &NetworkList,
        rt: &RuntimeConf,
        result: &CniResult,
    ) -> Result<(), CniError> {
        let version = net.version()?;
        let mut doc = Map::new();
        doc.insert("kind".into(), Value::from(CACHE_KIND));
        doc.insert("containerId".into(), Value::from(rt.container_id.clone()));
        doc.insert(
            "config".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(&net.bytes)),
        );
        doc.insert("ifName".into(), Value::from(rt.ifname.clone()));
        doc.insert("networkName".into(), Value::from(net.name.clone()));
        if let Some(ns) = &rt.netns {
            doc.insert(
                "netns".into(),
                Value::from(ns.to_string_lossy().into_owned()),
            );
        }
        if !rt.args.is_empty() {
            let args: Vec<Value> = rt
                .args
                .iter()
                .map(|(k, v)| serde_json::json!([k, v]))
                .collect();
            doc.insert("cniArgs".into(), Value::Array(args));
        }
        if !rt.capability_args.is_empty() {
            doc.insert(
                "capabilityArgs".into(),
                Value::Object(rt.capability_args.clone()),
            );
        }
        doc.insert("result".into(), result.to_json(version));
        let paths = self.cache_paths(&net.name, &rt.container_id, &rt.ifname);
        let path = &paths[0];
        write_atomic(
            path,
            &serde_json::to_vec(&Value::Object(doc)).expect("serialises"),
        )
        .map_err(|e| CniError::io(format!("writing result cache {}: {e}", path.display())))?;
        // The older name of the same attachment (migrated), never another attachment's file.
        for old in &paths[1..] {
            if Self::read_cache_file(old, &net.name, rt, false).is_some() {
                let _ = fs::remove_file(old);
            }
        }
        Ok(())
    }

    fn remove_cache(&self, net: &NetworkList, rt: &RuntimeConf) {
        // Every file that is this attachment's, and only those.
        while let Some((path, _)) = self.find_cache(&net.name, rt) {
            if fs::remove_file(&path).is_err() {
                break;
            }
        }
    }

    /// The cached result of an attachment (cniCacheV1, or a legacy bare result).
    pub fn cached_result(&self, net: &NetworkList, rt: &RuntimeConf) -> Option<CniResult> {
        let (_, v) = self.find_cache(&net.name, rt)?;
        let result = if v.get("kind").and_then(Value::as_str) == Some(CACHE_KIND) {
            v.get("result")?.clone()
        } else {
            v
        };
        CniResult::from_json(&result).ok()
    }

    /// Every cached attachment of network `net`, with the cache's runtime parameters.
    pub fn cached_attachments(&self, net: &str) -> Vec<(RuntimeConf, CniResult)> {
        let mut out = Vec::new();
        for (_, v) in cache_files(&self.cache_dir) {
            if v.get("networkName").and_then(Value::as_str) != Some(net) {
                continue;
            }
            let s = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let rt = RuntimeConf {
                container_id: s("containerId"),
                netns: v.get("netns").and_then(Value::as_str).map(PathBuf::from),
                ifname: s("ifName"),
                args: v
                    .get("cniArgs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| {
                                Some((
                                    p.get(0)?.as_str()?.to_string(),
                                    p.get(1)?.as_str()?.to_string(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                capability_args: v
                    .get("capabilityArgs")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            };
            if let Some(r) = v.get("result").and_then(|r| CniResult::from_json(r).ok()) {
                out.push((rt, r));
            }
        }
        out
    }
}

/// One libcni result-cache file (`<cache>/results/<net>-<id>-<ifname>`), as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub path: PathBuf,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The namespace paths the attachment was added in: the cache's `netns` (libcni >= 1.2
    /// records it), else the `sandbox` of the cached result's interfaces (what libcni 1.1
    /// caches carry). Only absolute paths; empty when neither says.
    pub netns: Vec<PathBuf>,
}

/// Every cniCacheV1 file under `<cache_dir>/results`, sorted by path; other files are skipped
/// (a runtime may keep its own files there).
pub fn cache_entries(cache_dir: &Path) -> Vec<CacheEntry> {
    let mut out = Vec::new();
    for (path, v) in cache_files(cache_dir) {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        if s("networkName").is_empty() || s("containerId").is_empty() {
            continue;
        }
        out.push(CacheEntry {
            path,
            network: s("networkName").to_string(),
            container_id: s("containerId").to_string(),
            ifname: s("ifName").to_string(),
            netns: cached_netns(&v),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The readable cniCacheV1 files under `<cache_dir>/results`, parsed; anything else is skipped
/// (a runtime may keep its own files there).
fn cache_files(cache_dir: &Path) -> impl Iterator<Item = (PathBuf, Value)> {
    fs::read_dir(cache_dir.join("results"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let v: Value = serde_json::from_slice(&fs::read(entry.path()).ok()?).ok()?;
            (v.get("kind").and_then(Value::as_str) == Some(CACHE_KIND)).then(|| (entry.path(), v))
        })
}

fn cached_netns(v: &Value) -> Vec<PathBuf> {
    let abs = |p: &&str| p.starts_with('/');
    if let Some(p) = v.get("netns").and_then(Value::as_str).filter(abs) {
        return vec![PathBuf::from(p)];
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let ifaces = v.pointer("/result/interfaces").and_then(Value::as_array);
    for i in ifaces.into_iter().flatten() {
        if let Some(p) = i.get("sandbox").and_then(Value::as_str).filter(abs) {
            if !out.iter().any(|o| o.as_os_str() == p) {
                out.push(PathBuf::from(p));
            }
        }
    }
    out
}

/// Remove one cache file (what libcni does after a successful DEL); a missing file is success.
pub fn remove_cache_entry(entry: &CacheEntry) -> std::io::Result<()> {
    match fs::remove_file(&entry.path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Write `bytes` to `path` atomically and durably (0600 file in a 0700 directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    crate::fsutil::write_atomic(path, bytes, 0o600, crate::fsutil::Durability::FileAndDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    /// Records every invocation; answers ADD with an IPAM-like result naming the plugin.
    #[derive(Default)]
    struct FakeExec {
        calls: Mutex<Vec<(String, String, Value)>>,
    }

    impl Exec for FakeExec {
        fn exec(
            &self,
            plugin: &Path,
            stdin: &[u8],
            env: &[(String, String)],
        ) -> Result<Vec<u8>, CniError> {
            let cmd = env
                .iter()
                .find(|(k, _)| k == "CNI_COMMAND")
                .unwrap()
                .1
                .clone();
            let name = plugin.file_name().unwrap().to_string_lossy().into_owned();
            let conf: Value = serde_json::from_slice(stdin).unwrap();
            self.calls
                .lock()
                .unwrap()
                .push((name.clone(), cmd.clone(), conf.clone()));
            if name == "failing" {
                return Err(CniError::internal("boom"));
            }
            if cmd == "ADD" {
                let mut r = conf.get("prevResult").cloned().unwrap_or(
                    json!({"cniVersion": conf["cniVersion"], "ips": [{"address": "10.3.0.2/24"}]}),
                );
                r["interfaces"] = json!([{"name": name}]);
                return Ok(serde_json::to_vec(&r).unwrap());
            }
            Ok(Vec::new())
        }
    }

    fn setup(plugins: &[&str]) -> (tempfile::TempDir, CniConfig, Arc<FakeExec>, NetworkList) {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        fs::create_dir(&bin).unwrap();
        for p in plugins {
            fs::write(bin.join(p), "").unwrap();
        }
        let exec = Arc::new(FakeExec::default());
        let cfg = CniConfig::new(vec![bin], d.path().join("cache"), exec.clone());
        let list: Vec<Value> = plugins
            .iter()
            .map(|p| json!({"type": p, "capabilities": {"portMappings": *p == "b"}}))
            .collect();
        let net = NetworkList::from_bytes(
            json!({"cniVersion": "1.1.0", "name": "net1", "plugins": list})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        (d, cfg, exec, net)
    }

    fn rt() -> RuntimeConf {
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        caps.insert("bandwidth".into(), json!({}));
        RuntimeConf {
            container_id: "c1".into(),
            netns: Some("/run/netns/c1".into()),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: caps,
        }
    }

    #[test]
    fn chain_threads_prev_result_and_capabilities() {
        let (_d, cfg, exec, net) = setup(&["a", "b"]);
        let r = cfg.add_network_list(&net, &rt()).unwrap();
        assert_eq!(r.interfaces[0].name, "b");
        let calls = exec.calls.lock().unwrap().clone();
        assert!(
            calls[0].2.get("prevResult").is_none(),
            "first plugin gets no prevResult"
        );
        assert!(
            calls[0].2.get("runtimeConfig").is_none(),
            "a declared no capability"
        );
        assert_eq!(calls[1].2["prevResult"]["interfaces"][0]["name"], "a");
        assert_eq!(
            calls[1].2["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert!(calls[1].2["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(cfg.cached_result(&net, &rt()).unwrap(), r);

        exec.calls.lock().unwrap().clear();
        cfg.check_network_list(&net, &rt()).unwrap();
        cfg.del_network_list(&net, &rt()).unwrap();
        let calls = exec.calls.lock().unwrap().clone();
        let order: Vec<(String, String)> =
            calls.iter().map(|c| (c.0.clone(), c.1.clone())).collect();
        assert_eq!(
            order,
            [("a", "CHECK"), ("b", "CHECK"), ("b", "DEL"), ("a", "DEL")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(
            calls[2].2["prevResult"]["interfaces"][0]["name"], "b",
            "DEL gets the cached result"
        );
        assert!(
            cfg.cached_result(&net, &rt()).is_none(),
            "cache dropped after DEL"
        );
    }

    #[test]
    fn gc_dels_stale_cached_attachments_then_sends_gc() {
        let (_d, cfg, exec, net) = setup(&["a"]);
        let mut other = rt();
        other.container_id = "c2".into();
        cfg.add_network_list(&net, &rt()).unwrap();
        cfg.add_network_list(&net, &other).unwrap();
        exec.calls.lock().unwrap().clear();
        let valid = vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        cfg.gc_network_list(&net, &valid).unwrap();
        let calls = exec.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1, "DEL");
        assert_eq!(calls[1].1, "GC");
        assert_eq!(
            calls[1].2["cni.dev/valid-attachments"][0]["containerID"],
            "c1"
        );
        assert!(cfg.cached_result(&net, &rt()).is_some());
        assert!(cfg.cached_result(&net, &other).is_none());
    }

    #[test]
    fn a_failing_plugin_stops_the_chain_and_caches_nothing() {
        let (_d, cfg, _exec, net) = setup(&["a", "failing"]);
        let e = cfg.add_network_list(&net, &rt()).unwrap_err();
        assert!(e.msg.contains("boom"), "{e}");
        assert!(cfg.cached_result(&net, &rt()).is_none());
    }

    #[test]
    fn loads_lists_like_libcni() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"n1","type":"bridge"}"#,
        )
        .unwrap();
        fs::write(
            d.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n1","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        fs::write(d.path().join("30-c.conflist"), "not json").unwrap();
        let l = NetworkList::load(d.path(), "n1").unwrap();
        assert_eq!(l.cni_version, "1.0.0", ".conflist wins over .conf");
        fs::remove_file(d.path().join("20-b.conflist")).unwrap();
        let l = NetworkList::load(d.path(), "n1").unwrap();
        assert_eq!(l.plugins[0]["type"], "bridge");
        assert!(l.plugins[0].get("name").is_none());
        assert!(NetworkList::load(d.path(), "missing").is_err());
        assert!(NetworkList::load(d.path(), "../x").is_err());
        for bad in [
            r#"{"cniVersion":"1.0.0"}"#,
            r#"{"name":"x"}"#,
            r#"{"name":"x","plugins":[]}"#,
            r#"{"name":"x","plugins":[{}]}"#,
        ] {
            assert!(NetworkList::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
