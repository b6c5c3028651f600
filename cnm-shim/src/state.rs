//! The shim's persistent state: networks, pools and endpoints, one JSON file per object.
//!
//! Invariant: every file is written atomically (temp file in the same directory, fsync, rename,
//! mode 0600) and carries `"version": 1`; a process killed at any instruction leaves each file
//! either old or new, never torn. Ids are validated before they become file names.
//! Layout (documented in docs/formats.md):
//! `<state-dir>/networks/<NetworkID>.json`, `<state-dir>/pools/<PoolID>.json`,
//! `<state-dir>/endpoints/<EndpointID>.json`, `<state-dir>/cache/` (CNI result cache).

use ipnetwork::IpNetwork;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// On-disk format version of every state file. 2 added `owns_bridge` to networks; version-1
/// files are read as version 2 with `owns_bridge: false` (a bridge whose creation is not
/// recorded is never deleted).
pub const STATE_VERSION: u32 = 2;
/// Older versions [`Store::load`] migrates.
pub const STATE_VERSIONS_READ: &[u64] = &[1, 2];

/// Where a pool's addresses are allocated and which CNI network they belong to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolRecord {
    pub id: String,
    pub pool: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_pool: Option<IpNetwork>,
    pub v6: bool,
    /// How many identical RequestPool calls hold it.
    pub refs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The CNI network (and IPAM store) the pool belongs to.
    pub cni_network: String,
    /// `Some(name)`: the pool was read from the existing conflist `name` (`cni.network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_conflist: Option<String>,
    /// The conflist's `ipam` object when `from_conflist` is set.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub conflist_ipam: Value,
    /// Addresses Docker holds in this pool (gateway, aux, endpoint addresses).
    #[serde(default)]
    pub addresses: BTreeMap<IpAddr, AddrKind>,
    /// Store owner (container id, ifname `reserved`) of each address not yet claimed by an
    /// endpoint.
    #[serde(default)]
    pub owners: BTreeMap<IpAddr, String>,
    /// Endpoint that claimed each address (its CNI attachment owns it in the store).
    #[serde(default)]
    pub endpoint_of: BTreeMap<IpAddr, String>,
    /// Last address handed out (round-robin cursor for stores that have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<IpAddr>,
    /// The cluster network (`--ipam-opt plugnet.cluster=NAME`) whose blocks on this host the
    /// pool's addresses come from; the pool is that network's subnet of the family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The cluster network's subnets (all families) when `cluster` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_subnets: Vec<IpNetwork>,
}

/// Why Docker holds an address.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AddrKind {
    Gateway,
    Aux,
    Endpoint,
}

/// How a Docker network maps to CNI.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The shim derived a conflist (own bridge) from the pool.
    Derived,
    /// `-o cni.network=NAME`: an existing conflist from the CNI conf dir.
    Existing,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkRecord {
    pub id: String,
    pub mode: Mode,
    /// CNI network name (conflist `name`).
    pub cni_name: String,
    /// The derived conflist (mode `derived`); `null` for `existing`.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub conflist: Value,
    /// The derived conflist was written to the CNI conf dir.
    #[serde(default)]
    pub exported: bool,
    /// `--internal`: no gateway handed to Docker.
    #[serde(default)]
    pub internal: bool,
    /// Pools (v4 and v6) the network uses, each with its gateway (bare IP).
    #[serde(default)]
    pub subnets: Vec<SubnetInfo>,
    /// The bridge did not exist at CreateNetwork: plugnet creates it, and DeleteNetwork may
    /// delete it. False for a bridge named with `com.docker.network.bridge.name` that already
    /// existed (docker0, virbr0, …) and for every network of a version-1 state file.
    #[serde(default)]
    pub owns_bridge: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubnetInfo {
    pub pool: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
}

/// Progress of an endpoint's CNI attachment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Recorded before the CNI ADD runs: a crash here is undone at start-up.
    Attaching,
    /// ADD done, interface handed to Docker.
    Joined,
}

/// Everything needed to undo an attachment later, after any restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttachmentRecord {
    pub phase: Phase,
    /// The CNI network name.
    pub cni_name: String,
    /// Conflist used for ADD (DEL must use the same).
    pub conflist: Value,
    /// CNI_NETNS: the staging netns the shim owns, or, with `handoff`, Docker's sandbox (never
    /// created or removed by the shim).
    pub netns: PathBuf,
    /// plugnet's handoff: the container end was born in the host as `tmp_name` (no staging
    /// netns, no netns move).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
    /// CNI_IFNAME inside the staging netns.
    pub ifname: String,
    /// Host-side temporary name handed to Docker as SrcName.
    pub tmp_name: String,
    /// Host-side peer of the container interface, when known (liveness probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// CNI_ARGS pairs.
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// Capability args (runtimeConfig).
    #[serde(default)]
    pub capability_args: serde_json::Map<String, Value>,
    /// The final CNI ADD result (1.0.0 JSON), the prevResult of DEL.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub network_id: String,
    /// Docker's IPAM addresses (CIDR), v4 then v6.
    #[serde(default)]
    pub addresses: Vec<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Port mappings (CNI `portMappings` capability shape) from CreateEndpoint.
    #[serde(default)]
    pub port_mappings: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentRecord>,
}

/// The in-memory image of the state directory.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub networks: HashMap<String, NetworkRecord>,
    pub pools: HashMap<String, PoolRecord>,
    pub endpoints: HashMap<String, EndpointRecord>,
}

/// Which directory a record lives in.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Network,
    Pool,
    Endpoint,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Pool => "pools",
            Kind::Endpoint => "endpoints",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    #[serde(flatten)]
    record: T,
}

/// True for ids safe as file names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 200 bytes.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 200
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating, mode 0700) the state directory.
    pub fn open(root: &Path) -> io::Result<Store> {
        for sub in ["", "networks", "pools", "endpoints", "cache"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| ctx(e, "create state dir", &d))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
                .map_err(|e| ctx(e, "chmod state dir", &d))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory for the CNI result cache (libcni layout).
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    fn path(&self, kind: Kind, id: &str) -> io::Result<PathBuf> {
        if !valid_id(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid id {id:?}"),
            ));
        }
        Ok(self.root.join(kind.dir()).join(format!("{id}.json")))
    }

    /// Atomically write one record.
    pub fn put<T: Serialize>(&self, kind: Kind, id: &str, record: &T) -> io::Result<()> {
        let path = self.path(kind, id)?;
        let body = serde_json::to_vec_pretty(&Envelope {
            version: STATE_VERSION,
            record,
        })
        .map_err(io::Error::other)?;
        write_atomic(&path, &body, 0o600)
    }

    /// Remove one record; absent is success.
    pub fn delete(&self, kind: Kind, id: &str) -> io::Result<()> {
        let path = self.path(kind, id)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ctx(e, "remove state file", &path))
            }
            _ => Ok(()),
        }
    }

    /// Load everything. Files of another version or unreadable files are reported in the
    /// returned warnings and skipped (left in place for an operator), never fatal.
    pub fn load(&self) -> (State, Vec<String>) {
        let mut st = State::default();
        let mut warnings = Vec::new();
        load_dir(
            &self.root.join("networks"),
            &mut warnings,
            |r: NetworkRecord| {
                st.networks.insert(r.id.clone(), r);
            },
        );
        load_dir(&self.root.join("pools"), &mut warnings, |r: PoolRecord| {
            st.pools.insert(r.id.clone(), r);
        });
        load_dir(
            &self.root.join("endpoints"),
            &mut warnings,
            |r: EndpointRecord| {
                st.endpoints.insert(r.id.clone(), r);
            },
        );
        (st, warnings)
    }
}

fn load_dir<T: DeserializeOwned>(dir: &Path, warnings: &mut Vec<String>, mut f: impl FnMut(T)) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            warnings.push(format!("read {}: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            // A temp file left by a crash mid-write: the rename never happened.
            let _ = fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
            .and_then(|v| match v.get("version").and_then(Value::as_u64) {
                Some(ver) if STATE_VERSIONS_READ.contains(&ver) => {
                    serde_json::from_value::<Envelope<T>>(v).map_err(|e| e.to_string())
                }
                other => Err(format!("unsupported state version {other:?}")),
            });
        match parsed {
            Ok(env) => f(env.record),
            Err(e) => warnings.push(format!("skip {}: {e}", path.display())),
        }
    }
}

/// Write `body` to `path` atomically: temp file in the same dir, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> io::Result<()> {
    plugnet::fsutil::write_atomic(path, body, mode, plugnet::fsutil::Durability::FileAndDir)
        .map_err(|e| ctx(e, "write state file", path))
}

fn ctx(e: io::Error, step: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{step} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn net(id: &str) -> NetworkRecord {
        NetworkRecord {
            id: id.into(),
            mode: Mode::Derived,
            cni_name: "pn-10.60.1.0_24".into(),
            conflist: serde_json::json!({"name": "pn-10.60.1.0_24"}),
            exported: false,
            internal: false,
            owns_bridge: true,
            subnets: vec![SubnetInfo {
                pool: "10.60.1.0/24".parse().unwrap(),
                gateway: Some("10.60.1.1".parse().unwrap()),
                pool_id: None,
            }],
        }
    }

    #[test]
    fn roundtrip_survives_reopen_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put(Kind::Network, "n1", &net("n1")).unwrap();
        let file = dir.path().join("networks/n1.json");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        let v: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(v["version"], STATE_VERSION);
        let (st, warn) = Store::open(dir.path()).unwrap().load();
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(st.networks["n1"], net("n1"));
        s.delete(Kind::Network, "n1").unwrap();
        s.delete(Kind::Network, "n1").unwrap();
        assert!(Store::open(dir.path())
            .unwrap()
            .load()
            .0
            .networks
            .is_empty());
    }

    #[test]
    fn bad_ids_never_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for id in ["", "../x", "a/b", ".hidden", "x y"] {
            assert!(s.put(Kind::Endpoint, id, &net("x")).is_err(), "{id}");
        }
    }

    #[test]
    fn foreign_versions_and_garbage_are_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        fs::write(
            dir.path().join("networks/a.json"),
            br#"{"version":3,"id":"a"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("networks/b.json"), b"{trunc").unwrap();
        fs::write(dir.path().join("networks/.c.json.1.tmp"), b"x").unwrap();
        s.put(Kind::Network, "ok", &net("ok")).unwrap();
        let (st, warn) = s.load();
        assert_eq!(st.networks.len(), 1);
        assert_eq!(warn.len(), 2, "{warn:?}");
        assert!(!dir.path().join("networks/.c.json.1.tmp").exists());
    }
}
