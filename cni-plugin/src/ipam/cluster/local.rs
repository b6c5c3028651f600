//! The local state plugnet-agent shares with plugnet-ipam: per cluster network, the file
//! `<agentDir>/networks/<name>.json` (the blocks this host may allocate in, and until when) and
//! the address store `<agentDir>/ipam/<name>/` (plugnet-ipam's files-with-lock store).
//!
//! Invariant: the agent writes a network file atomically (temporary, fsync, rename) and, when a
//! change takes capacity away (a block released or revoked), while holding the store's lock,
//! so an ADD — which reads the file under that lock — never allocates in a block this host
//! no longer holds. The format is versioned: a reader refuses a format it does not know.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// The agent's state dir when a conflist names none (`"agentDir"`).
pub const DEFAULT_AGENT_DIR: &str = "/var/lib/plugnet/agent";
/// `format` of a network file this build reads and writes.
pub const FORMAT: &str = "plugnet-agent network 1";

/// `<agentDir>/networks/<name>.json`
pub fn network_file(agent_dir: &Path, network: &str) -> PathBuf {
    agent_dir.join("networks").join(format!("{network}.json"))
}

/// `<agentDir>/ipam`: the data dir of the cluster networks' stores (one per network).
pub fn store_dir(agent_dir: &Path) -> PathBuf {
    agent_dir.join("ipam")
}

/// `<agentDir>/bindings/<name>`: a symlink naming the CNI network that uses the cluster
/// network on this host (one store, so one CNI network; see `ipam::cluster`).
pub fn binding(agent_dir: &Path, network: &str) -> PathBuf {
    agent_dir.join("bindings").join(network)
}

/// `<agentDir>/agent.sock`: the agent's local socket.
pub fn socket(agent_dir: &Path) -> PathBuf {
    agent_dir.join("agent.sock")
}

/// What one cluster network is on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFile {
    pub format: String,
    pub network: String,
    /// This host's name in the cluster.
    pub host: String,
    /// The cluster network's subnets (every host's blocks lie inside them).
    pub subnets: Vec<IpNetwork>,
    pub blocks: Vec<HeldBlock>,
    /// New addresses may be handed out until then: the last contact with etcd plus the
    /// network's reclaim grace period, after which other hosts may take this host's blocks.
    pub alloc_until: Deadline,
    /// The agent's view of etcd when it wrote the file.
    pub etcd: EtcdView,
    /// The network was removed from the cluster: no new addresses; DEL still works.
    #[serde(default)]
    pub removed: bool,
    /// The agent's copy of the network's definition in etcd (plugnet-ipam ignores it).
    #[serde(default)]
    pub definition: serde_json::Value,
    /// The MTU of this network's devices on this host (the underlay's, less the VXLAN
    /// overhead in vxlan mode): the plugin gives it to the bridge and the veths when the
    /// configuration sets no `mtu`. Absent: the plugin's default (the default route's link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldBlock {
    pub cidr: IpNetwork,
    pub state: BlockState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BlockState {
    /// Ours in etcd: addresses are handed out from it.
    Active,
    /// Empty and on its way back to the cluster: no new addresses.
    Releasing,
    /// Another host holds it now (reclaimed while this host was cut off): no new addresses;
    /// the containers still in it are reported until they are deleted.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdView {
    pub reachable: bool,
    /// Seconds since the epoch of the last successful contact (0: never).
    pub last_contact_unix: u64,
}

/// A point in time both the agent and the plugins can compare against: the boot-time clock
/// (immune to wall-clock steps) while the machine has not rebooted, else the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deadline {
    pub boot_id: u128,
    pub boottime_ms: u64,
    pub unix_ms: u64,
}

/// `CLOCK_BOOTTIME` in milliseconds: one clock for every process of this boot, counting
/// suspend, never stepped.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), 0 if unreadable. Read once per
/// process (a process does not outlive its boot): an ADD asks for it from the cluster
/// deadline and the name record, the agent once per name record it loads.
pub fn boot_id() -> u128 {
    static BOOT_ID: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|s| u128::from_str_radix(&s.trim().replace('-', ""), 16).ok())
            .unwrap_or(0)
    })
}

impl Deadline {
    /// `after` from now.
    pub fn after(after: std::time::Duration) -> Deadline {
        let ms = after.as_millis() as u64;
        Deadline {
            boot_id: boot_id(),
            boottime_ms: boottime_ms().saturating_add(ms),
            unix_ms: unix_ms().saturating_add(ms),
        }
    }

    /// Already past (a deadline that cannot be read as "not yet" is past).
    pub const PAST: Deadline = Deadline {
        boot_id: 0,
        boottime_ms: 0,
        unix_ms: 0,
    };

    /// Milliseconds left (0 when past).
    pub fn remaining_ms(&self) -> u64 {
        let id = boot_id();
        if id != 0 && id == self.boot_id {
            self.boottime_ms.saturating_sub(boottime_ms())
        } else {
            self.unix_ms.saturating_sub(unix_ms())
        }
    }
}

impl NetworkFile {
    /// Read `<agentDir>/networks/<name>.json`; `Ok(None)` when the agent has not written it.
    pub fn read(agent_dir: &Path, network: &str) -> io::Result<Option<NetworkFile>> {
        let path = network_file(agent_dir, network);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file: NetworkFile = serde_json::from_slice(&data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        if file.format != FORMAT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: unsupported format {:?} (this plugnet reads {FORMAT:?}): \
                     plugnet-agent and the plugins are of different versions",
                    path.display(),
                    file.format
                ),
            ));
        }
        if file.network != network {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: names network {:?}", path.display(), file.network),
            ));
        }
        Ok(Some(file))
    }

    /// Write it atomically and durably (the agent's side).
    pub fn write(&self, agent_dir: &Path) -> io::Result<()> {
        self.write_with(agent_dir, crate::fsutil::Durability::FileAndDir)
    }

    /// Write it atomically, as durably as asked: a change that only moves the deadline
    /// forward may be lost in a power cut (the older deadline is the safer one).
    pub fn write_with(
        &self,
        agent_dir: &Path,
        durability: crate::fsutil::Durability,
    ) -> io::Result<()> {
        let path = network_file(agent_dir, &self.network);
        let data = serde_json::to_vec(self).expect("serialises");
        crate::fsutil::write_atomic(&path, &data, 0o644, durability)
    }

    /// The blocks new addresses may come from.
    pub fn active(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.blocks
            .iter()
            .filter(|b| b.state == BlockState::Active)
            .map(|b| b.cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NetworkFile {
        NetworkFile {
            format: FORMAT.into(),
            network: "prod".into(),
            host: "h1".into(),
            subnets: vec!["10.244.0.0/16".parse().unwrap()],
            blocks: vec![
                HeldBlock {
                    cidr: "10.244.0.0/26".parse().unwrap(),
                    state: BlockState::Active,
                },
                HeldBlock {
                    cidr: "10.244.0.64/26".parse().unwrap(),
                    state: BlockState::Revoked,
                },
            ],
            alloc_until: Deadline::after(std::time::Duration::from_secs(60)),
            etcd: EtcdView {
                reachable: true,
                last_contact_unix: 1,
            },
            removed: false,
            definition: serde_json::Value::Null,
            mtu: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("networks")).unwrap();
        assert!(NetworkFile::read(tmp.path(), "prod").unwrap().is_none());
        let f = sample();
        f.write(tmp.path()).unwrap();
        let back = NetworkFile::read(tmp.path(), "prod").unwrap().unwrap();
        assert_eq!(back, f);
        assert_eq!(back.active().count(), 1);
        let text = std::fs::read_to_string(network_file(tmp.path(), "prod")).unwrap();
        assert!(text.contains("\"allocUntil\""), "{text}");
        let mut other = f.clone();
        other.format = "plugnet-agent network 2".into();
        other.write(tmp.path()).unwrap();
        let e = NetworkFile::read(tmp.path(), "prod").unwrap_err();
        assert!(e.to_string().contains("unsupported format"), "{e}");
        std::fs::write(network_file(tmp.path(), "prod"), "{").unwrap();
        assert!(NetworkFile::read(tmp.path(), "prod").is_err());
    }

    #[test]
    fn deadlines_count_down_on_the_boot_clock() {
        let d = Deadline::after(std::time::Duration::from_secs(10));
        let left = d.remaining_ms();
        assert!(left > 9_000 && left <= 10_000, "{left}");
        assert_eq!(Deadline::PAST.remaining_ms(), 0);
        // Another boot: the wall clock decides.
        let other_boot = Deadline {
            boot_id: d.boot_id ^ 1,
            ..d
        };
        assert!(other_boot.remaining_ms() > 9_000);
        let stale = Deadline {
            boot_id: d.boot_id ^ 1,
            unix_ms: 1,
            ..d
        };
        assert_eq!(stale.remaining_ms(), 0);
    }
}
