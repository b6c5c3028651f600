//! The `plugnet up` spec: an ordered list of named networks, each a plugin `type` + `config`
//! or a `conflist` (by name from the CNI conf dir, or inline), with optional `ifname` and
//! per-entry `runtimeConfig` (capability args).
//!
//! Invariant: a parsed [`Spec`] is fully validated — every name that can reach a path (network
//! names, plugin types, conflist names) passes [`crate::validate`], entry names are unique,
//! explicit interface names are valid and unique — so nothing downstream re-checks, and bad
//! input of any shape yields a clear error (never a panic).

use crate::error::CniError;
use crate::libcni::NetworkList;
use crate::validate;
use serde_json::{Map, Value};
use std::path::Path;

/// Largest spec accepted (bytes). A network list this big is a mistake, not a configuration.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// The spec version plugnet writes into a `type` + `config` entry that names none. 1.0.0 is
/// the newest version every maintained plugin understands (Debian's reference plugins stop there).
pub const DEFAULT_CNI_VERSION: &str = "1.0.0";

/// Keys the runtime generates: a spec must not carry them inside `config`.
const RESERVED_CONFIG_KEYS: &[&str] = &["runtimeConfig", "prevResult", "plugins"];

/// An ordered list of networks to attach to one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub networks: Vec<Entry>,
}

/// One network of the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The runner's key for this network (`info`, `metrics`, `down --network`).
    pub name: String,
    pub source: Source,
    /// Interface name in the container; `None` means the next free `ethN`.
    pub ifname: Option<String>,
    /// Capability args for this network's plugins (`portMappings`, `bandwidth`, `ips`, `mac`, …).
    pub runtime_config: Map<String, Value>,
}

/// Where an entry's plugin chain comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// One plugin: its type and its configuration (without `name`/`cniVersion` if omitted).
    Plugin {
        plugin_type: String,
        config: Map<String, Value>,
    },
    /// A network list of that name in the CNI conf dir (`NETCONFPATH`).
    ConfDir(String),
    /// A network list given inline (the conflist JSON object).
    Inline(Value),
}

impl Spec {
    /// Parse and validate spec JSON.
    pub fn from_slice(bytes: &[u8]) -> Result<Spec, CniError> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(CniError::config(format!(
                "spec is {} bytes; the limit is {MAX_SPEC_BYTES}",
                bytes.len()
            )));
        }
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("spec is not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| CniError::decode("spec must be a JSON object {\"networks\": [...]}"))?;
        if let Some(k) = obj.keys().find(|k| k.as_str() != "networks") {
            return Err(CniError::new(
                crate::ErrorCode::UnsupportedField,
                format!("spec: unknown key {k:?} (expected only \"networks\")"),
            ));
        }
        let list = match obj.get("networks") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err(CniError::config("spec: \"networks\" must be a list")),
            None => return Err(CniError::config("spec: missing \"networks\"")),
        };
        if list.is_empty() {
            return Err(CniError::config("spec: \"networks\" is empty"));
        }
        let mut networks: Vec<Entry> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let entry = Entry::from_json(item).map_err(|e| e.context(format!("spec entry {i}")))?;
            if networks.iter().any(|n| n.name == entry.name) {
                return Err(CniError::config(format!(
                    "spec entry {i}: network name {:?} appears twice",
                    entry.name
                )));
            }
            if let Some(ifname) = &entry.ifname {
                if networks.iter().any(|n| n.ifname.as_ref() == Some(ifname)) {
                    return Err(CniError::config(format!(
                        "spec entry {i}: ifname {ifname:?} appears twice"
                    )));
                }
            }
            networks.push(entry);
        }
        Ok(Spec { networks })
    }
}

impl Entry {
    fn from_json(v: &Value) -> Result<Entry, CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| CniError::config("must be an object"))?;
        for k in obj.keys() {
            if !matches!(
                k.as_str(),
                "name" | "type" | "config" | "conflist" | "ifname" | "runtimeConfig"
            ) {
                return Err(CniError::new(
                    crate::ErrorCode::UnsupportedField,
                    format!(
                        "unknown key {k:?} (expected name, type, config, conflist, ifname, runtimeConfig)"
                    ),
                ));
            }
        }
        let name = str_field(obj, "name")?.ok_or_else(|| CniError::config("missing \"name\""))?;
        validate::network_name(&name)?;
        let ifname = str_field(obj, "ifname")?;
        if let Some(i) = &ifname {
            validate::interface_name(i)
                .map_err(|e| CniError::config(format!("network {name:?}: ifname: {e}")))?;
        }
        let runtime_config = match obj.get("runtimeConfig") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(CniError::config(format!(
                    "network {name:?}: \"runtimeConfig\" must be an object"
                )))
            }
        };
        super::capabilities::validate(&name, &runtime_config)?;
        let source = match (obj.get("type"), obj.get("conflist")) {
            (Some(_), Some(_)) => {
                return Err(CniError::config(format!(
                "network {name:?}: give either \"type\" (+ \"config\") or \"conflist\", not both"
            )))
            }
            (None, None) => {
                return Err(CniError::config(format!(
                    "network {name:?}: needs \"type\" (+ \"config\") or \"conflist\""
                )))
            }
            (Some(_), None) => plugin_source(&name, obj)?,
            (None, Some(c)) => {
                if obj.contains_key("config") {
                    return Err(CniError::config(format!(
                        "network {name:?}: \"config\" goes with \"type\"; a conflist carries its own"
                    )));
                }
                match c {
                    Value::String(s) => {
                        validate::network_name(s)
                            .map_err(|e| e.context(format!("network {name:?}: conflist")))?;
                        Source::ConfDir(s.clone())
                    }
                    Value::Object(_) => {
                        // Validate now so a bad inline list fails before anything is attached.
                        NetworkList::from_bytes(c.to_string().as_bytes())
                            .map_err(|e| e.context(format!("network {name:?}: conflist")))?;
                        Source::Inline(c.clone())
                    }
                    _ => {
                        return Err(CniError::config(format!(
                        "network {name:?}: \"conflist\" must be a network name or a conflist object"
                    )))
                    }
                }
            }
        };
        Ok(Entry {
            name,
            source,
            ifname,
            runtime_config,
        })
    }

    /// The network list this entry runs. `conf_dir` is consulted only for [`Source::ConfDir`].
    ///
    /// A `type` entry becomes a one-plugin list named after the entry; the plugin declares
    /// every capability the entry passes in `runtimeConfig` (the entry asked for it explicitly).
    /// A conflist keeps its own name (its plugins' state, e.g. IPAM, is keyed by it) and its
    /// own `capabilities`, as libcni does.
    pub fn network_list(&self, conf_dir: &Path) -> Result<NetworkList, CniError> {
        let ctx = |e: CniError| e.context(format!("network {:?}", self.name));
        match &self.source {
            Source::ConfDir(list) => NetworkList::load(conf_dir, list).map_err(ctx),
            Source::Inline(v) => NetworkList::from_bytes(v.to_string().as_bytes()).map_err(ctx),
            Source::Plugin {
                plugin_type,
                config,
            } => {
                let mut plugin = config.clone();
                let version = plugin
                    .remove("cniVersion")
                    .unwrap_or_else(|| Value::from(DEFAULT_CNI_VERSION));
                plugin.remove("name");
                plugin.insert("type".into(), Value::from(plugin_type.clone()));
                if !self.runtime_config.is_empty() {
                    let caps = plugin
                        .entry("capabilities")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(caps) = caps {
                        for k in self.runtime_config.keys() {
                            caps.insert(k.clone(), Value::Bool(true));
                        }
                    }
                }
                let list = serde_json::json!({
                    "cniVersion": version,
                    "name": self.name,
                    "plugins": [Value::Object(plugin)],
                });
                NetworkList::from_bytes(list.to_string().as_bytes()).map_err(ctx)
            }
        }
    }
}

fn plugin_source(name: &str, obj: &Map<String, Value>) -> Result<Source, CniError> {
    let plugin_type = str_field(obj, "type")?.unwrap_or_default();
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
        || plugin_type.len() > 255
    {
        return Err(CniError::config(format!(
            "network {name:?}: invalid plugin type {plugin_type:?}"
        )));
    }
    let config = match obj.get("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(CniError::config(format!(
                "network {name:?}: \"config\" must be an object"
            )))
        }
    };
    for k in RESERVED_CONFIG_KEYS {
        if config.contains_key(*k) {
            return Err(CniError::config(format!(
                "network {name:?}: config must not contain {k:?} (runtimeConfig goes on the entry; lists go under \"conflist\")"
            )));
        }
    }
    if let Some(t) = config.get("type") {
        if t.as_str() != Some(plugin_type.as_str()) {
            return Err(CniError::config(format!(
                "network {name:?}: config \"type\" {t} differs from the entry's type {plugin_type:?}"
            )));
        }
    }
    if let Some(n) = config.get("name") {
        if n.as_str() != Some(name) {
            return Err(CniError::config(format!(
                "network {name:?}: config \"name\" {n} differs from the entry's name"
            )));
        }
    }
    if let Some(v) = config.get("cniVersion") {
        let v = v.as_str().ok_or_else(|| {
            CniError::config(format!("network {name:?}: cniVersion must be a string"))
        })?;
        crate::CniVersion::parse(v).map_err(|e| e.context(format!("network {name:?}")))?;
    }
    Ok(Source::Plugin {
        plugin_type,
        config,
    })
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::config(format!(
            "\"{key}\" must be a string, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Spec, CniError> {
        Spec::from_slice(v.to_string().as_bytes())
    }

    #[test]
    fn parses_the_issue_example() {
        let s = parse(json!({"networks": [
            {"name": "underlay", "type": "plugnet", "config": {"bridge": "pn-u", "isGateway": true,
               "ipam": {"type": "plugnet-ipam", "ranges": [[{"subnet": "10.31.0.0/24"}]]}}},
            {"name": "overlay", "conflist": "overlay-net"},
            {"name": "private", "type": "bridge", "ifname": "priv0", "config": {"bridge": "x"},
             "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
        ]}))
        .unwrap();
        assert_eq!(s.networks.len(), 3);
        assert_eq!(s.networks[1].source, Source::ConfDir("overlay-net".into()));
        assert_eq!(s.networks[2].ifname.as_deref(), Some("priv0"));
        let list = s.networks[2]
            .network_list(Path::new("/nonexistent"))
            .unwrap();
        assert_eq!(list.name, "private");
        assert_eq!(list.cni_version, DEFAULT_CNI_VERSION);
        assert_eq!(list.plugins[0]["type"], "bridge");
        assert_eq!(list.plugins[0]["capabilities"]["portMappings"], true);
        let list = s.networks[0]
            .network_list(Path::new("/nonexistent"))
            .unwrap();
        assert!(list.plugins[0].get("capabilities").is_none());
        assert!(s.networks[1]
            .network_list(Path::new("/nonexistent"))
            .is_err());
    }

    #[test]
    fn inline_conflists_keep_their_name_and_version() {
        let s = parse(json!({"networks": [{"name": "n", "conflist":
            {"cniVersion": "0.4.0", "name": "shared", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}}]}))
        .unwrap();
        let l = s.networks[0].network_list(Path::new("/")).unwrap();
        assert_eq!(
            (l.name.as_str(), l.cni_version.as_str()),
            ("shared", "0.4.0")
        );
        assert_eq!(l.plugins.len(), 2);
    }

    #[test]
    fn bad_specs_get_clear_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "JSON object"),
            (json!({}), "missing \"networks\""),
            (json!({"networks": []}), "empty"),
            (json!({"networks": {}}), "must be a list"),
            (json!({"networks": [], "x": 1}), "unknown key"),
            (json!({"networks": [1]}), "must be an object"),
            (
                json!({"networks": [{"type": "bridge"}]}),
                "missing \"name\"",
            ),
            (
                json!({"networks": [{"name": "../x", "type": "bridge"}]}),
                "invalid characters",
            ),
            (json!({"networks": [{"name": "a"}]}), "needs \"type\""),
            (
                json!({"networks": [{"name": "a", "type": "b", "conflist": "c"}]}),
                "not both",
            ),
            (
                json!({"networks": [{"name": "a", "type": "../b"}]}),
                "invalid plugin type",
            ),
            (
                json!({"networks": [{"name": "a", "type": 3}]}),
                "must be a string",
            ),
            (
                json!({"networks": [{"name": "a", "conflist": "../etc"}]}),
                "invalid characters",
            ),
            (
                json!({"networks": [{"name": "a", "conflist": {"name": "x"}}]}),
                "plugins",
            ),
            (
                json!({"networks": [{"name": "a", "conflist": 5}]}),
                "conflist",
            ),
            (
                json!({"networks": [{"name": "a", "conflist": "c", "config": {}}]}),
                "goes with",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "config": []}]}),
                "must be an object",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "config": {"runtimeConfig": {}}}]}),
                "must not contain",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "config": {"type": "c"}}]}),
                "differs",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "config": {"name": "c"}}]}),
                "differs",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "config": {"cniVersion": "9.9.9"}}]}),
                "9.9.9",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "ifname": "a/b"}]}),
                "ifname",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "ifname": "x".repeat(16)}]}),
                "longer",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "runtimeConfig": 1}]}),
                "runtimeConfig",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "bogus": 1}]}),
                "unknown key",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b"}, {"name": "a", "type": "c"}]}),
                "twice",
            ),
            (
                json!({"networks": [{"name": "a", "type": "b", "ifname": "x"},
                                 {"name": "c", "type": "b", "ifname": "x"}]}),
                "twice",
            ),
        ];
        for (v, want) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.to_string().contains(want), "{v}: {e}");
        }
        assert!(Spec::from_slice(b"{not json")
            .unwrap_err()
            .msg
            .contains("not valid JSON"));
        let huge = vec![b' '; MAX_SPEC_BYTES + 1];
        assert!(Spec::from_slice(&huge).unwrap_err().msg.contains("limit"));
        // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Spec::from_slice(deep.as_bytes()).is_err());
    }
}
