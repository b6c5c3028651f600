//! The capability args of a spec entry (`runtimeConfig`), checked at `up` with the decoders
//! ADD itself uses, so a wrong type is refused before anything is recorded or attached.
//!
//! Invariant: an entry that passed [`validate`] carries, for every capability plugnet or the
//! CNI conventions define, a value of the shape its plugins decode; capabilities nobody here
//! knows pass through untouched (a third-party plugin's own business). Without this, an ADD
//! fails on the value, the rollback's DEL fails on the same value, and the record stays.

use crate::error::CniError;
use crate::firewall::{NetOut, PortMapping};
use crate::ipam::IpamConfig;
use crate::netlink::Mac;
use crate::tc::Bandwidth;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

fn decode<T: DeserializeOwned>(key: &str, v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("{key}: {e}"))
}

fn strings(key: &str, v: &Value) -> Result<Vec<String>, String> {
    decode::<Vec<String>>(key, v).map_err(|_| format!("{key}: must be a list of strings"))
}

/// One capability's value, by the shape CONVENTIONS.md (and plugnet's own features) give it.
fn check(key: &str, v: &Value) -> Result<(), String> {
    match key {
        "portMappings" => decode::<Vec<PortMapping>>(key, v).map(drop),
        "bandwidth" => decode::<Bandwidth>(key, v)?
            .validate()
            .map_err(|e| format!("{key}: {e}")),
        "netOut" => decode::<NetOut>(key, v)?
            .validate()
            .map_err(|e| format!("{key}: {e}")),
        "mac" => {
            let s = decode::<String>(key, v).map_err(|_| format!("{key}: must be a string"))?;
            let mac: Mac = s.parse().map_err(|e| format!("{key}: {e}"))?;
            if mac.0[0] & 1 == 1 {
                return Err(format!("{key}: {s} is a multicast address"));
            }
            Ok(())
        }
        "ips" => {
            for s in strings(key, v)? {
                let ip = s.split('/').next().unwrap_or_default();
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| format!("{key}: {s:?} is not an IP address"))?;
            }
            Ok(())
        }
        "ipRanges" => {
            // The IPAM parser itself, with an empty static config (the ranges are the runtime's).
            let conf = json!({"ipam": {}, "runtimeConfig": {"ipRanges": v}});
            IpamConfig::from_request(&conf, None)
                .map(drop)
                .map_err(|e| format!("{key}: {}", e.msg))
        }
        "dns" => {
            let obj = v
                .as_object()
                .ok_or_else(|| format!("{key}: must be an object"))?;
            for (k, list) in obj {
                strings(&format!("{key}.{k}"), list)?;
            }
            Ok(())
        }
        "aliases" => {
            let obj = v
                .as_object()
                .ok_or_else(|| format!("{key}: must be an object of lists"))?;
            for (k, list) in obj {
                strings(&format!("{key}.{k}"), list)?;
            }
            Ok(())
        }
        "infinibandGUID" | "deviceID" | "cgroupPath" => decode::<String>(key, v)
            .map(drop)
            .map_err(|_| format!("{key}: must be a string")),
        _ => Ok(()),
    }
}

/// Checks every known capability arg of network `network`'s `runtimeConfig`.
pub fn validate(network: &str, runtime_config: &Map<String, Value>) -> Result<(), CniError> {
    for (k, v) in runtime_config {
        if v.is_null() {
            continue; // absent, as the plugins read it
        }
        check(k, v)
            .map_err(|e| CniError::config(format!("network {network:?}: runtimeConfig.{e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn good_values_of_every_capability_pass() {
        validate(
            "n",
            &map(json!({
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000},
                "mac": "02:00:00:00:00:01",
                "ips": ["10.0.0.5/24", "fd00::5"],
                "ipRanges": [[{"subnet": "10.1.0.0/24"}]],
                "dns": {"servers": ["10.0.0.53"], "searches": ["example"]},
                "aliases": {"n": ["web"]},
                "cgroupPath": "/x",
                "somethingElse": {"any": "shape"},
                "ips6": null
            })),
        )
        .unwrap();
    }

    #[test]
    fn wrong_types_are_refused_naming_the_key() {
        for (rc, needle) in [
            (
                json!({"portMappings": "8080:80"}),
                "runtimeConfig.portMappings",
            ),
            (
                json!({"portMappings": [{"hostPort": 70000, "containerPort": 80}]}),
                "portMappings",
            ),
            (
                json!({"bandwidth": {"ingressRate": "fast"}}),
                "runtimeConfig.bandwidth",
            ),
            (json!({"mac": 5}), "runtimeConfig.mac: must be a string"),
            (json!({"mac": "01:00:00:00:00:01"}), "multicast"),
            (json!({"ips": ["10.0.0.300"]}), "runtimeConfig.ips"),
            (json!({"ips": "10.0.0.5"}), "runtimeConfig.ips"),
            (
                json!({"ipRanges": [[{"subnet": "nope"}]]}),
                "runtimeConfig.ipRanges",
            ),
            (
                json!({"dns": {"servers": "x"}}),
                "runtimeConfig.dns.servers",
            ),
            (json!({"cgroupPath": []}), "runtimeConfig.cgroupPath"),
        ] {
            let e = validate("front", &map(rc.clone())).unwrap_err();
            assert!(e.msg.contains(needle), "{rc}: {}", e.msg);
            assert!(e.msg.contains("network \"front\""), "{}", e.msg);
        }
    }
}
