//! A network configuration list as loaded from disk (`.conflist`, or a single `.conf` wrapped
//! into one); invariant: a list that loads is one the chain can run (name, version, plugins
//! checked).

use crate::error::CniError;
use crate::validate;
use crate::version::CniVersion;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// A network configuration list (`.conflist`, or a single `.conf` wrapped into one).
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<Value>,
    /// The file's bytes, as cached alongside results.
    pub bytes: Vec<u8>,
}

impl NetworkList {
    /// Parse a conflist, or a single plugin configuration (wrapped as libcni does).
    pub fn from_bytes(bytes: &[u8]) -> Result<NetworkList, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("error parsing configuration list: {e}")))?;
        Self::from_parsed(&v, bytes)
    }

    /// [`NetworkList::from_bytes`] of a conflist already in memory (its bytes are its
    /// serialisation).
    pub fn from_json(v: &Value) -> Result<NetworkList, CniError> {
        let bytes = serde_json::to_vec(v)
            .map_err(|e| CniError::decode(format!("error encoding configuration list: {e}")))?;
        Self::from_parsed(v, &bytes)
    }

    /// The list in conflist shape (a wrapped single `.conf` comes out as a one-plugin list).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "disableGC": self.disable_gc,
            "plugins": self.plugins,
        })
    }

    fn from_parsed(v: &Value, bytes: &[u8]) -> Result<NetworkList, CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| CniError::decode("configuration must be a JSON object"))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CniError::config("error parsing configuration list: no name"))?
            .to_string();
        validate::network_name(&name)?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_string();
        let flag = |k: &str| match obj.get(k) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) if list.is_empty() => {
                return Err(CniError::config(
                    "error parsing configuration list: no plugins in list",
                ))
            }
            Some(Value::Array(list)) => list.clone(),
            Some(_) => return Err(CniError::config("'plugins' must be a list")),
            None if obj.contains_key("type") => {
                let mut single = obj.clone();
                single.remove("name");
                single.remove("cniVersion");
                vec![Value::Object(single)]
            }
            None => {
                return Err(CniError::config(
                    "error parsing configuration list: no 'plugins' key",
                ))
            }
        };
        for p in &plugins {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            if t.is_empty() {
                return Err(CniError::config(format!(
                    "plugin in list {name:?} is missing 'type'"
                )));
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            disable_check: flag("disableCheck"),
            disable_gc: flag("disableGC"),
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// The first list named `name` in `dir`: `.conflist` files first, then `.conf`/`.json`,
    /// each sorted lexically (libcni's order).
    pub fn load(dir: &Path, name: &str) -> Result<NetworkList, CniError> {
        validate::network_name(name)?;
        let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                return Err(CniError::config(format!(
                    "reading CNI config dir {}: {e}",
                    dir.display()
                )))
            }
        };
        files.sort();
        let ext = |p: &PathBuf| {
            p.extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_string()
        };
        let ordered = files.iter().filter(|p| ext(p) == "conflist").chain(
            files
                .iter()
                .filter(|p| matches!(ext(p).as_str(), "conf" | "json")),
        );
        for path in ordered {
            let Ok(bytes) = fs::read(path) else { continue };
            if let Ok(list) = NetworkList::from_bytes(&bytes) {
                if list.name == name {
                    return Ok(list);
                }
            }
        }
        Err(CniError::config(format!(
            "no net configuration with name {name:?} in {} (add a conflist with that \"name\" \
             there, or point NETCONFPATH at the directory that has it)",
            dir.display()
        )))
    }

    pub(super) fn version(&self) -> Result<CniVersion, CniError> {
        CniVersion::parse(&self.cni_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip_and_a_wrapped_single_conf() {
        let list = json!({"cniVersion":"1.0.0","name":"n1","disableCheck":true,"disableGC":false,
            "plugins":[{"type":"plugnet","bridge":"pn0"}]});
        let nl = NetworkList::from_json(&list).unwrap();
        assert_eq!(nl.to_json(), list);
        assert_eq!(nl.bytes, serde_json::to_vec(&list).unwrap());
        let single = json!({"cniVersion":"1.0.0","name":"n2","type":"bridge"});
        let nl = NetworkList::from_json(&single).unwrap();
        assert_eq!(nl.to_json()["plugins"], json!([{"type":"bridge"}]));
        assert!(NetworkList::from_json(&json!({"name":"n3"})).is_err());
    }
}
