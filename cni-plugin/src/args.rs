//! `CNI_ARGS`: `KEY=VALUE;KEY2=VALUE2`, parsed as libcni's `LoadArgs` does.
//!
//! Invariant: keys are case-sensitive; a key the plugin does not know is an error unless
//! `IgnoreUnknown` is truthy; every pair has exactly one `=`.

use crate::error::CniError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parse `raw` (the env value; empty means none) accepting only `known` keys unless
    /// `IgnoreUnknown` is set to 1/true (any case).
    pub fn parse(raw: &str, known: &[&str]) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        if raw.is_empty() {
            return Ok(CniArgs { pairs });
        }
        for pair in raw.split(';') {
            let kv: Vec<&str> = pair.split('=').collect();
            if kv.len() != 2 {
                return Err(CniError::env(format!("CNI_ARGS: invalid pair {pair:?}")));
            }
            pairs.push((kv[0].to_string(), kv[1].to_string()));
        }
        let mut ignore_unknown = false;
        for (k, v) in &pairs {
            if k == "IgnoreUnknown" {
                ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(CniError::env(format!(
                            "CNI_ARGS: IgnoreUnknown: invalid boolean {v:?}"
                        )))
                    }
                };
            }
        }
        if !ignore_unknown {
            let unknown: Vec<&str> = pairs
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| *k != "IgnoreUnknown" && !known.contains(k))
                .collect();
            if !unknown.is_empty() {
                return Err(CniError::env(format!("CNI_ARGS: unknown args {unknown:?}")));
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key` (last one wins, as with repeated struct fields in Go).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn parses_known_and_ignores_unknown_when_asked() {
        let a = CniArgs::parse("IP=10.0.0.5;MAC=02:00:00:00:00:01", &["IP", "MAC"]).unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert_eq!(a.get("ip"), None, "keys are case-sensitive");
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=1.2.3.4", &["IP"]).unwrap();
        assert_eq!(a.get("IP"), Some("1.2.3.4"));
        let a = CniArgs::parse("IgnoreUnknown=True;X=y", &[]).unwrap();
        assert_eq!(a.get("X"), Some("y"));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["X=1", "IP", "IP=a=b", "IgnoreUnknown=maybe;X=1", ";"] {
            let e = CniArgs::parse(bad, &["IP"]).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnv, "{bad}");
        }
        assert!(CniArgs::parse("", &[]).unwrap().pairs().is_empty());
    }
}
