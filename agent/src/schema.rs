//! The cluster's layout in etcd, version 1 (docs/cluster.md is the reference):
//!
//! ```text
//! /plugnet/v1/schema                   {"version":1}            created with the first network
//! /plugnet/v1/networks/<net>           NetworkDef (JSON)        no lease
//! /plugnet/v1/hosts/<host>             HostRecord (JSON)        under the host's lease
//! /plugnet/v1/blocks/<net>/<ip>-<len>  BlockValue (JSON)        no lease
//! ```
//!
//! Invariant: key encodings never change within a version (a new layout is /plugnet/v2); a
//! block key with no value holder is free, a `held` value names its host, a `reclaimed` value
//! is free but handed out only when no never-used block is left.

use anyhow::{bail, Result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub const VERSION: u32 = 1;
pub const ROOT: &str = "/plugnet/v1/";
pub const SCHEMA_KEY: &str = "/plugnet/v1/schema";
pub const NETWORKS: &str = "/plugnet/v1/networks/";
pub const HOSTS: &str = "/plugnet/v1/hosts/";
pub const BLOCKS: &str = "/plugnet/v1/blocks/";

/// Names of hosts and networks: what CNI allows for network names, at most 63 bytes, never
/// `.` or `..` (they become path components on hosts and key components in etcd).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name != "."
        && name != ".."
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        bail!("{what} {name:?}: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit");
    }
    Ok(())
}

pub fn network_key(net: &str) -> String {
    format!("{NETWORKS}{net}")
}

pub fn host_key(host: &str) -> String {
    format!("{HOSTS}{host}")
}

pub fn blocks_prefix(net: &str) -> String {
    format!("{BLOCKS}{net}/")
}

/// `/plugnet/v1/blocks/<net>/10.244.0.64-26`, `/plugnet/v1/blocks/<net>/fd00::40-122`.
pub fn block_key(net: &str, block: IpNetwork) -> String {
    format!("{BLOCKS}{net}/{}-{}", block.network(), block.prefix())
}

/// The network and block of a block key.
pub fn parse_block_key(key: &[u8]) -> Option<(String, IpNetwork)> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(BLOCKS)?;
    let (net, rest) = key.split_once('/')?;
    let (ip, len) = rest.rsplit_once('-')?;
    let ip: IpAddr = ip.parse().ok()?;
    let block = IpNetwork::new(ip, len.parse().ok()?).ok()?;
    (block.network() == ip).then(|| (net.to_string(), block))
}

/// The name in `/plugnet/v1/hosts/<host>` or `/plugnet/v1/networks/<net>`.
pub fn name_after<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(key).ok()?.strip_prefix(prefix)
}

/// How packets cross hosts (the data plane, issue 22, reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    HostGw,
    Vxlan,
}

/// `/plugnet/v1/networks/<net>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkDef {
    pub name: String,
    /// At most one per family... or several of a family; blocks are cut from them in order.
    pub subnets: Vec<IpNetwork>,
    pub block_prefix_v4: u8,
    pub block_prefix_v6: u8,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// A host's blocks are reclaimed this long after its lease was first seen gone (twice).
    pub reclaim_grace_secs: u64,
    pub created_unix: u64,
}

/// `/plugnet/v1/hosts/<host>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    pub name: String,
    pub id: String,
    pub underlay: IpAddr,
    pub vtep_mac: String,
    pub agent_version: String,
    pub started_unix: u64,
    /// The IPv6 link-local address of the underlay link: host-gw's next hop for IPv6 blocks
    /// over an IPv4 underlay (absent from records of agents before the data plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_link_local: Option<std::net::Ipv6Addr>,
}

/// `/plugnet/v1/blocks/<net>/<block>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum BlockValue {
    /// Claimed by `host` (whose id is `host_id`).
    #[serde(rename_all = "camelCase")]
    Held {
        host: String,
        host_id: String,
        claimed_unix: u64,
    },
    /// Taken back from a dead host: free, handed out last (its former host's containers may
    /// still use addresses in it if that host comes back).
    #[serde(rename_all = "camelCase")]
    Reclaimed { at_unix: u64 },
}

impl BlockValue {
    pub fn holder(&self) -> Option<&str> {
        match self {
            BlockValue::Held { host, .. } => Some(host),
            BlockValue::Reclaimed { .. } => None,
        }
    }
}

pub fn now_unix() -> u64 {
    plugnet::ipam::cluster::local::unix_ms() / 1000
}

/// Parse a JSON value read from etcd, naming the key when it is not what this schema writes.
pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| {
        anyhow::anyhow!(
            "etcd key {}: unreadable value ({e}); written by a newer plugnet?",
            String::from_utf8_lossy(key)
        )
    })
}

pub fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_never_change() {
        let b4: IpNetwork = "10.244.0.64/26".parse().unwrap();
        let b6: IpNetwork = "fd00::40/122".parse().unwrap();
        assert_eq!(
            block_key("prod", b4),
            "/plugnet/v1/blocks/prod/10.244.0.64-26"
        );
        assert_eq!(
            block_key("prod", b6),
            "/plugnet/v1/blocks/prod/fd00::40-122"
        );
        for b in [b4, b6] {
            assert_eq!(
                parse_block_key(block_key("prod", b).as_bytes()),
                Some(("prod".to_string(), b))
            );
        }
        assert_eq!(
            parse_block_key(b"/plugnet/v1/blocks/prod/10.244.0.65-26"),
            None
        );
        assert_eq!(parse_block_key(b"/plugnet/v1/blocks/prod"), None);
        assert_eq!(host_key("h1"), "/plugnet/v1/hosts/h1");
        assert_eq!(network_key("prod"), "/plugnet/v1/networks/prod");
        assert_eq!(name_after(HOSTS, b"/plugnet/v1/hosts/h1"), Some("h1"));
    }

    #[test]
    fn values_have_their_documented_shape() {
        let held = BlockValue::Held {
            host: "h1".into(),
            host_id: "ab".into(),
            claimed_unix: 5,
        };
        assert_eq!(
            encode(&held),
            r#"{"state":"held","host":"h1","hostId":"ab","claimedUnix":5}"#
        );
        assert_eq!(
            encode(&BlockValue::Reclaimed { at_unix: 7 }),
            r#"{"state":"reclaimed","atUnix":7}"#
        );
        assert!(decode::<BlockValue>(b"k", b"{\"state\":\"x\"}").is_err());
        let def = NetworkDef {
            name: "prod".into(),
            subnets: vec!["10.244.0.0/16".parse().unwrap()],
            block_prefix_v4: 26,
            block_prefix_v6: 122,
            mode: Mode::HostGw,
            vni: None,
            reclaim_grace_secs: 600,
            created_unix: 1,
        };
        let text = encode(&def);
        assert!(text.contains(r#""mode":"host-gw""#), "{text}");
        assert_eq!(decode::<NetworkDef>(b"k", text.as_bytes()).unwrap(), def);
    }

    #[test]
    fn names() {
        for ok in ["a", "host-1", "n.b_c", "0x"] {
            check_name("x", ok).unwrap();
        }
        for bad in ["", ".", "..", "-a", "a/b", "a b", "é", &"a".repeat(64)] {
            assert!(check_name("x", bad).is_err(), "{bad:?}");
        }
    }
}
