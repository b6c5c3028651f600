//! On-disk firewall state: one file per attachment plus one file of shared reference counts,
//! versioned JSON, written atomically (temp, fsync, rename; mode 0600) under an exclusive lock;
//! invariant: after every successful apply/remove the files describe exactly what plugnet has
//! installed, so `reload` can rebuild it from nothing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fs2::FileExt;
use serde::{Deserialize, Serialize};

use super::types::Attachment;

pub const VERSION: u32 = 1;

/// Shared, reference-counted objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub version: u32,
    /// Number of attachments recorded (the table is deleted when it reaches 0).
    pub attachments: u64,
    /// Bridge name -> its users.
    pub bridges: BTreeMap<String, BridgeRef>,
    /// Attachments with a source MAC check (the bridge table lives while > 0).
    #[serde(default)]
    pub mac_checks: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeRef {
    /// Attachments on this bridge (host firewall accept rules live while > 0).
    pub refs: u64,
    /// Attachments with port mappings (hairpin/localnet elements, route_localnet while > 0).
    pub portmap_refs: u64,
    /// route_localnet's value before plugnet set it, restored with the last port mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_localnet_was: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct AttachmentFile {
    version: u32,
    attachment: Attachment,
}

/// The state directory (default `/var/lib/plugnet/firewall`).
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Held while state and kernel are changed together; released on drop.
pub struct Lock(#[allow(dead_code)] File);

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn attachments_dir(&self) -> PathBuf {
        self.dir.join("attachments")
    }

    fn ensure_dirs(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.attachments_dir())
    }

    fn holds_dir(&self) -> PathBuf {
        self.dir.join("holds")
    }

    /// Bridges held open in the host firewall, whoever holds them (see `Firewall::hold`). A
    /// hold is the file `holds/<bridge>@<holder>`: created and removed whole, so it survives
    /// or vanishes with no partial state.
    pub fn held_bridges(&self) -> io::Result<std::collections::BTreeSet<String>> {
        let mut out = std::collections::BTreeSet::new();
        for name in entry_names(&self.holds_dir())? {
            if let Some((bridge, _)) = name.rsplit_once('@') {
                if !name.starts_with('.') {
                    out.insert(bridge.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Records (`on`) or forgets the hold of `bridge` by `holder`; durable.
    pub fn set_hold(&self, bridge: &str, holder: &str, on: bool) -> io::Result<()> {
        let path = self.holds_dir().join(format!("{bridge}@{holder}"));
        if on {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.holds_dir())?;
            write_atomic(&path, b"", true)
        } else {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }

    /// Exclusive lock over the whole store (concurrent plugin processes serialise here).
    pub fn lock(&self) -> io::Result<Lock> {
        self.ensure_dirs()?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join("lock"))?;
        f.lock_exclusive()?;
        Ok(Lock(f))
    }

    pub fn load_shared(&self) -> io::Result<Shared> {
        match fs::read(self.dir.join("shared.json")) {
            Ok(b) => {
                let s: Shared = serde_json::from_slice(&b).map_err(io::Error::other)?;
                check_version(s.version)?;
                Ok(s)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Shared {
                version: VERSION,
                ..Shared::default()
            }),
            Err(e) => Err(e),
        }
    }

    pub fn save_shared(&self, s: &Shared) -> io::Result<()> {
        let mut s = s.clone();
        s.version = VERSION;
        // A cache of what the attachment files imply (recomputed by reload and by the ADD that
        // finds the table gone, e.g. after a reboot): atomic, but not worth an fsync per ADD.
        write_atomic(
            &self.dir.join("shared.json"),
            &serde_json::to_vec_pretty(&s).map_err(io::Error::other)?,
            false,
        )
    }

    fn attachment_path(&self, key: &str) -> PathBuf {
        self.attachments_dir().join(format!("{key}.json"))
    }

    /// The attachment recorded under `key`. A record cut short by a power loss (empty, or not
    /// JSON to its end: records are not fsynced, see [`Store::save_attachment`]) is read as
    /// absent; a whole record of another version or shape is an error.
    pub fn load_attachment(&self, key: &str) -> io::Result<Option<Attachment>> {
        match fs::read(self.attachment_path(key)) {
            Ok(b) => {
                let f: AttachmentFile = match serde_json::from_slice(&b) {
                    Ok(f) => f,
                    Err(e) if e.is_eof() || e.is_syntax() => {
                        tracing::warn!(
                            "firewall state: attachment record {key} is torn ({e}); reading it \
                             as absent"
                        );
                        return Ok(None);
                    }
                    Err(e) => return Err(io::Error::other(e)),
                };
                check_version(f.version)?;
                Ok(Some(f.attachment))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records `a` under `key`: atomic (temporary file, rename), not fsynced. A record
    /// describes kernel objects (rules, the veth) that only a power loss or a crash of the
    /// kernel could outlive the page cache of — and those objects do not outlive it either; a
    /// record such an event tears is read as absent ([`Store::load_attachment`]). The fsync
    /// was ≈ 0.7 ms of every ADD that records one (ipMasq, port mappings, netOut, and every ADD
    /// on a host whose FORWARD drops).
    pub fn save_attachment(&self, key: &str, a: &Attachment) -> io::Result<()> {
        let f = AttachmentFile {
            version: VERSION,
            attachment: a.clone(),
        };
        write_atomic(
            &self.attachment_path(key),
            &serde_json::to_vec_pretty(&f).map_err(io::Error::other)?,
            false,
        )
    }

    pub fn delete_attachment(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.attachment_path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Is `key` recorded (its file exists)?
    pub fn has_attachment(&self, key: &str) -> bool {
        self.attachment_path(key).exists()
    }

    /// Is any attachment other than `key` recorded? Stops at the first one found.
    pub fn has_other_attachment(&self, key: &str) -> io::Result<bool> {
        let rd = match fs::read_dir(self.attachments_dir()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let own = format!("{key}.json");
        for ent in rd {
            let name = ent?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json") && !name.starts_with('.') && name != own {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Remove temporary files of writers killed before their rename. Returns how many.
    pub fn sweep_temporaries(&self) -> io::Result<usize> {
        Ok(
            crate::fsutil::sweep_dead_temporaries(&self.attachments_dir())?
                + crate::fsutil::sweep_dead_temporaries(&self.holds_dir())?
                + crate::fsutil::sweep_dead_temporaries(&self.dir)?,
        )
    }

    /// Every recorded attachment with its key, sorted by key.
    pub fn all_attachments(&self) -> io::Result<Vec<(String, Attachment)>> {
        let mut out = Vec::new();
        for name in entry_names(&self.attachments_dir())? {
            if let Some(key) = name.strip_suffix(".json") {
                if let Some(a) = self.load_attachment(key)? {
                    out.push((key.to_string(), a));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The names of `dir`'s entries; none when `dir` does not exist (nothing recorded yet).
fn entry_names(dir: &Path) -> io::Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    rd.map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn check_version(v: u32) -> io::Result<()> {
    if v == VERSION {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("state format version {v}, this plugnet reads {VERSION}"),
        ))
    }
}

/// Attachments and the shared counts describe kernel objects that a reboot removes anyway, so
/// only atomicity matters for them: no fsync on the ADD path. Holds (`durable`) are not on it.
fn write_atomic(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    use crate::fsutil::{self, Durability};
    let durability = if durable {
        Durability::File
    } else {
        Durability::Atomic
    };
    fsutil::write_atomic(path, data, 0o600, durability)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn att() -> Attachment {
        Attachment {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            bridge: "br0".into(),
            host_veth: "veth0".into(),
            container_ips: vec!["10.70.0.2/24".parse().unwrap()],
            ip_masq: true,
            port_mappings: vec![],
            net_out: None,
            source_mac: None,
            keep_source_to: Vec::new(),
        }
    }

    #[test]
    fn roundtrip_and_permissions() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("fw"));
        let _l = s.lock().unwrap();
        assert_eq!(s.load_shared().unwrap().attachments, 0);
        assert!(s.load_attachment("k").unwrap().is_none());
        s.save_attachment("k", &att()).unwrap();
        assert_eq!(s.load_attachment("k").unwrap(), Some(att()));
        let mode = fs::metadata(d.path().join("fw/attachments/k.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut sh = s.load_shared().unwrap();
        sh.attachments = 1;
        sh.bridges.insert(
            "br0".into(),
            BridgeRef {
                refs: 1,
                ..Default::default()
            },
        );
        s.save_shared(&sh).unwrap();
        assert_eq!(s.load_shared().unwrap().bridges["br0"].refs, 1);
        assert_eq!(s.all_attachments().unwrap().len(), 1);
        assert!(!s.has_other_attachment("k").unwrap());
        assert!(s.has_other_attachment("x").unwrap());
        s.delete_attachment("k").unwrap();
        s.delete_attachment("k").unwrap();
        assert!(s.all_attachments().unwrap().is_empty());
    }

    #[test]
    fn refuses_unknown_version() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        s.ensure_dirs().unwrap();
        fs::write(
            d.path().join("shared.json"),
            r#"{"version":99,"attachments":0,"bridges":{}}"#,
        )
        .unwrap();
        assert!(s
            .load_shared()
            .unwrap_err()
            .to_string()
            .contains("version 99"));
    }

    #[test]
    fn a_record_torn_by_a_power_loss_reads_as_absent_and_a_whole_one_of_another_shape_does_not() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("fw"));
        let _l = s.lock().unwrap();
        s.save_attachment("whole", &att()).unwrap();
        for (key, bytes) in [
            ("empty", &b""[..]),
            ("zeros", &[0u8; 64][..]),
            (
                "cut",
                &br#"{"version": 1, "attachment": {"network": "n""#[..],
            ),
        ] {
            fs::write(d.path().join(format!("fw/attachments/{key}.json")), bytes).unwrap();
            assert_eq!(s.load_attachment(key).unwrap(), None, "{key}");
        }
        let keys: Vec<String> = s
            .all_attachments()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["whole"]);
        // Whole JSON that is not an attachment record is not a power loss: it stays an error.
        fs::write(
            d.path().join("fw/attachments/odd.json"),
            br#"{"version": 1}"#,
        )
        .unwrap();
        assert!(s.load_attachment("odd").is_err());
    }
}
