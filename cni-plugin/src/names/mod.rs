//! Names (issue 20), the plugin side: with `"resolver": true` a successful ADD writes the
//! attachment's name record to `<agentDir>/names/<network>/<containerID>@<ifname>.json`, where
//! plugnet-agent (inotify) picks it up and serves it; DEL removes it, GC removes the records of
//! attachments not in the valid list. The ADD result's `dns` names the resolver.
//!
//! Invariants: the ADD path gains no IPC (a temp file + rename, no fsync: records are rebuilt by
//! the next ADD, and one from an earlier boot is ignored by its `bootId`); a record holds only
//! names that are DNS labels (others are left out, never escaped); [`Record`] is the one
//! definition of the format, read by the agent too.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, ErrorCode};
use crate::fsutil::{write_atomic, Durability};
use crate::ipam::cluster::local::{boot_id, DEFAULT_AGENT_DIR};
use crate::skel::Request;
use crate::types::CniResult;

/// `format` of a record this build writes and reads.
pub const FORMAT: &str = "plugnet-names 1";
/// The domain when the configuration names none.
pub const DEFAULT_DOMAIN: &str = "dns.plugnet";
/// The `CNI_ARGS` key by which the Docker shim passes the sandbox key (Docker's netns path).
pub const DOCKER_SANDBOX_ARG: &str = "PLUGNET_DOCKER_SANDBOX";
/// At most this many names per record (aliases beyond it are left out).
pub const MAX_NAMES: usize = 64;

/// One attachment's names and addresses: `<agentDir>/names/<network>/<id>@<ifname>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub format: String,
    /// `/proc/sys/kernel/random/boot_id` of the boot that wrote it (hyphenless hex).
    pub boot_id: String,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The network's domain (`<name>.<domain>` is answered besides `<name>`).
    pub domain: String,
    /// DNS labels, lower case, unique.
    pub names: Vec<String>,
    /// Every address of the attachment (A and AAAA records).
    pub addresses: Vec<IpAddr>,
    /// Where the container reaches the resolver (the agent listens on these).
    pub nameservers: Vec<IpAddr>,
    /// Docker's sandbox key (its netns path), for containers attached through the shim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_sandbox: Option<String>,
}

impl Record {
    /// Parses and checks a record's bytes (format, names, sizes). Hostile files are refused.
    pub fn parse(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() > 64 * 1024 {
            return Err("record larger than 64 KiB".into());
        }
        let r: Record = serde_json::from_slice(bytes).map_err(|e| format!("decode: {e}"))?;
        if r.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", r.format));
        }
        if r.names.len() > MAX_NAMES || r.addresses.len() > 64 || r.nameservers.len() > 8 {
            return Err("too many names, addresses or nameservers".into());
        }
        if let Some(bad) = r.names.iter().find(|n| !is_label(n)) {
            return Err(format!("name {bad:?} is not a DNS label"));
        }
        check_domain(&r.domain)?;
        Ok(r)
    }

    /// Written in this boot?
    pub fn current_boot(&self) -> bool {
        self.boot_id == boot_id_hex()
    }
}

/// `<agentDir>/names`
pub fn names_dir(agent_dir: &Path) -> PathBuf {
    agent_dir.join("names")
}

/// `<agentDir>/names/<network>/<containerID>@<ifname>.json`
pub fn record_path(agent_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    names_dir(agent_dir)
        .join(network)
        .join(format!("{container_id}@{ifname}.json"))
}

pub fn boot_id_hex() -> String {
    format!("{:032x}", boot_id())
}

/// Is `s` one DNS label (letters, digits, hyphens, 1-63 bytes, no hyphen at either end)?
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_domain(d: &str) -> Result<(), String> {
    if d.is_empty() || d.len() > 200 || !d.split('.').all(is_label) {
        return Err(format!(
            "domain {d:?}: must be DNS labels joined by dots, at most 200 bytes"
        ));
    }
    Ok(())
}

/// The names part of a configuration: `resolver`, `domain`, `agentDir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamesConf {
    pub domain: String,
    pub agent_dir: PathBuf,
}

fn bad(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

impl NamesConf {
    /// `None` unless `"resolver": true`.
    pub fn from_config(raw: &Value) -> Result<Option<NamesConf>, CniError> {
        match raw.get("resolver") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
            Some(Value::Bool(true)) => {}
            Some(other) => return Err(bad(format!("resolver must be true or false, got {other}"))),
        }
        let domain = match raw.get("domain") {
            None | Some(Value::Null) => DEFAULT_DOMAIN.to_string(),
            Some(Value::String(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
            Some(other) => return Err(bad(format!("domain must be a string, got {other}"))),
        };
        check_domain(&domain).map_err(bad)?;
        let agent_dir = match raw.get("agentDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_AGENT_DIR),
            Some(Value::String(p)) if p.starts_with('/') => PathBuf::from(p),
            Some(other) => {
                return Err(bad(format!(
                    "agentDir must be an absolute path, got {other}"
                )))
            }
        };
        Ok(Some(NamesConf { domain, agent_dir }))
    }
}

/// The names an ADD carries: `K8S_POD_NAME`, `runtimeConfig.aliases[<network>]`, and the
/// container ID when it is a label (the runner's `--id` handle; a 64-hex runtime ID is not).
/// Lower-cased; names that are not DNS labels are left out (returned second, for the log).
pub fn names_of(req: &Request) -> (Vec<String>, Vec<String>) {
    let mut wanted: Vec<String> = Vec::new();
    if let Some(n) = req.args.get("K8S_POD_NAME") {
        wanted.push(n.to_string());
    }
    if let Some(Value::Object(aliases)) = req.config.runtime_config.get("aliases") {
        if let Some(Value::Array(list)) = aliases.get(&req.config.name) {
            wanted.extend(list.iter().filter_map(|v| v.as_str()).map(String::from));
        }
    }
    wanted.push(req.container_id.clone());
    let (mut good, mut refused) = (Vec::new(), Vec::new());
    for n in wanted {
        let lower = n.to_ascii_lowercase();
        if !is_label(&lower) {
            refused.push(n);
        } else if !good.contains(&lower) && good.len() < MAX_NAMES {
            good.push(lower);
        }
    }
    (good, refused)
}

/// Where a container of this attachment reaches the resolver: the gateways of its addresses
/// (bridge mode) or the routed next hop 169.254.1.1 (routed mode: the container's gateway is
/// the host veth's link-local address, which carries 169.254.1.1 too).
pub fn nameservers(result: &CniResult, routed: bool) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if routed {
        if result.ips.iter().any(|ip| ip.address.is_ipv4()) {
            out.push(IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)));
        }
        return out;
    }
    for ip in &result.ips {
        if let Some(gw) = ip.gateway {
            if !out.contains(&gw) {
                out.push(gw);
            }
        }
    }
    out
}

/// After a successful ADD: names the resolver in the result's `dns` and writes the record.
pub fn add(
    conf: &NamesConf,
    req: &Request,
    routed: bool,
    result: &mut CniResult,
) -> Result<(), CniError> {
    let servers = nameservers(result, routed);
    if servers.is_empty() {
        return Err(bad(format!(
            "network {:?}: \"resolver\": true needs an address the container reaches on the \
             host (isGateway in bridge mode, or an IPv4 address in routed mode)",
            req.config.name
        )));
    }
    let (names, refused) = names_of(req);
    if !refused.is_empty() {
        tracing::warn!("names that are not DNS labels are not served: {refused:?}");
    }
    let record = Record {
        format: FORMAT.into(),
        boot_id: boot_id_hex(),
        network: req.config.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        domain: conf.domain.clone(),
        names,
        addresses: result.ips.iter().map(|ip| ip.address.ip()).collect(),
        nameservers: servers.clone(),
        docker_sandbox: req.args.get(DOCKER_SANDBOX_ARG).map(String::from),
    };
    write(conf, &record).map_err(|e| {
        CniError::internal(format!(
            "write the name record of {}@{}: {e}",
            req.container_id, req.ifname
        ))
    })?;
    let mut nameservers: Vec<String> = servers.iter().map(|a| a.to_string()).collect();
    for n in result.dns.nameservers.drain(..) {
        if !nameservers.contains(&n) {
            nameservers.push(n);
        }
    }
    result.dns.nameservers = nameservers;
    if !result.dns.search.contains(&conf.domain) {
        result.dns.search.insert(0, conf.domain.clone());
    }
    Ok(())
}

fn write(conf: &NamesConf, record: &Record) -> io::Result<()> {
    let path = record_path(
        &conf.agent_dir,
        &record.network,
        &record.container_id,
        &record.ifname,
    );
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    // The network's directory exists after its first ADD: create it only when the write
    // finds it missing, not with a mkdir and a stat on every ADD.
    match write_atomic(&path, &bytes, 0o644, Durability::Atomic) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_atomic(&path, &bytes, 0o644, Durability::Atomic)
        }
        r => r,
    }
}

/// DEL: the record goes (absent is success).
pub fn del(conf: &NamesConf, req: &Request) -> Result<(), String> {
    let path = record_path(
        &conf.agent_dir,
        &req.config.name,
        &req.container_id,
        &req.ifname,
    );
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove name record {}: {e}", path.display())),
    }
}

/// GC: records of this network whose attachment is not in `valid` go (and dead temporaries).
pub fn gc(conf: &NamesConf, network: &str, valid: &[(String, String)]) -> Result<(), String> {
    let dir = names_dir(&conf.agent_dir).join(network);
    let _ = crate::fsutil::sweep_dead_temporaries(&dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Some((id, ifname)) = stem.rsplit_once('@') else {
            continue;
        };
        if valid.iter().any(|(v, i)| v == id && i == ifname) {
            continue;
        }
        if let Err(e) = std::fs::remove_file(entry.path()) {
            if e.kind() != io::ErrorKind::NotFound {
                errors.push(format!("remove {}: {e}", entry.path().display()));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_keys() {
        assert_eq!(NamesConf::from_config(&json!({})).unwrap(), None);
        let c = NamesConf::from_config(&json!({"resolver": true}))
            .unwrap()
            .unwrap();
        assert_eq!(c.domain, DEFAULT_DOMAIN);
        assert_eq!(c.agent_dir, PathBuf::from(DEFAULT_AGENT_DIR));
        let c = NamesConf::from_config(
            &json!({"resolver": true, "domain": "Corp.Example.", "agentDir": "/x"}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.domain, "corp.example");
        for bad in [
            json!({"resolver": "yes"}),
            json!({"resolver": true, "domain": "a..b"}),
            json!({"resolver": true, "domain": "a_b"}),
            json!({"resolver": true, "agentDir": "rel"}),
        ] {
            assert!(NamesConf::from_config(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        assert!(is_label("web") && is_label("a-1") && is_label(&"a".repeat(63)));
        for bad in ["", "-a", "a-", "a_b", "a.b", "ü", &"a".repeat(64)] {
            assert!(!is_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn record_round_trip_and_refusals() {
        let r = Record {
            format: FORMAT.into(),
            boot_id: boot_id_hex(),
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            domain: DEFAULT_DOMAIN.into(),
            names: vec!["web".into()],
            addresses: vec!["10.172.0.2".parse().unwrap()],
            nameservers: vec!["10.172.0.1".parse().unwrap()],
            docker_sandbox: None,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(Record::parse(&bytes).unwrap(), r);
        assert!(r.current_boot());
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v["names"] = json!(["a b"]);
        assert!(Record::parse(&serde_json::to_vec(&v).unwrap()).is_err());
        v["names"] = json!([]);
        v["format"] = json!("plugnet-names 2");
        assert!(Record::parse(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(Record::parse(b"{").is_err());
    }
}
