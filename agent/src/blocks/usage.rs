//! What the local store says about this host's blocks: addresses in use per block (a readdir
//! of the store's claims, no lock), the containers in a block (for reports), and changes of the
//! network file made under the store's lock.
//!
//! Invariant: a change that takes capacity away (release, revoke) is written while holding the
//! same lock every ADD holds while it reads the network file and allocates.

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use plugnet::ipam::cluster::local::{store_dir, NetworkFile};
use plugnet::ipam::store::{FileStore, Store};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// Addresses claimed in the network's store (empty when it has none yet).
pub fn claimed(state: &Path, net: &str) -> Vec<IpAddr> {
    let dir = store_dir(state).join(net).join("ip");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Claimed addresses per block of `blocks` (blocks with none are present with 0).
pub fn per_block(claimed: &[IpAddr], blocks: &[IpNetwork]) -> BTreeMap<IpNetwork, u64> {
    let mut out: BTreeMap<IpNetwork, u64> = blocks.iter().map(|b| (*b, 0)).collect();
    for ip in claimed {
        if let Some(b) = blocks.iter().find(|b| b.contains(*ip)) {
            *out.entry(*b).or_default() += 1;
        }
    }
    out
}

/// Who holds addresses in `block`: (container id, ifname, address).
pub fn holders(state: &Path, net: &str, block: IpNetwork) -> Vec<(String, String, IpAddr)> {
    let Ok(Some(store)) = FileStore::open(&store_dir(state), net, false) else {
        return Vec::new();
    };
    let mut out: Vec<_> = store
        .claims()
        .unwrap_or_default()
        .into_iter()
        .filter(|(ip, _)| block.contains(*ip))
        .map(|(ip, o)| (o.container_id, o.ifname, ip))
        .collect();
    out.sort();
    out
}

/// Under the store's lock: `check` sees the claims as they are now and says whether `file`
/// may be written; if so it is. Returns what `check` answered.
pub fn write_locked(
    state: &Path,
    file: &NetworkFile,
    check: impl FnOnce(&[IpAddr]) -> bool,
) -> Result<bool> {
    let store = FileStore::open(&store_dir(state), &file.network, true)
        .with_context(|| format!("open the store of {}", file.network))?
        .expect("created");
    let _guard = store
        .lock()
        .with_context(|| format!("lock the store of {}", file.network))?;
    if !check(&claimed(state, &file.network)) {
        return Ok(false);
    }
    file.write_with(state, plugnet::fsutil::Durability::FileAndDir)
        .with_context(|| format!("write the network file of {}", file.network))?;
    Ok(true)
}

/// Remove a network's local state (file, store, binding) once nothing is held in it.
pub fn remove_if_unused(state: &Path, net: &str) -> Result<bool> {
    let store_path = store_dir(state).join(net);
    if let Ok(Some(store)) = FileStore::open(&store_dir(state), net, false) {
        let _guard = store.lock()?;
        if !claimed(state, net).is_empty() || !store.records()?.is_empty() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&store_path)
            .with_context(|| format!("remove {}", store_path.display()))?;
    }
    for p in [
        plugnet::ipam::cluster::local::network_file(state, net),
        plugnet::ipam::cluster::local::binding(state, net),
    ] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove {}", p.display()))
            }
            _ => {}
        }
    }
    Ok(true)
}
