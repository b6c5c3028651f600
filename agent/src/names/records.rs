//! This host's records: `<stateDir>/names/<network>/<containerID>@<ifname>.json`, written by
//! the plugin on ADD (temp + rename) and removed on DEL, watched with inotify.
//!
//! Invariants: only current-boot records that parse ([`plugnet::names::Record::parse`]) are
//! held; a record's file name and its content must agree (network, attachment), so one file
//! cannot speak for another; an inotify overflow, or any doubt, means a full rescan; at most
//! [`MAX_RECORDS`] records are held (bounded memory).

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use plugnet::names::Record;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

pub const MAX_RECORDS: usize = 100_000;

/// The records under one names dir, and the inotify watches that keep them current.
pub struct LocalRecords {
    dir: PathBuf,
    pub inotify: Inotify,
    /// watch → network (`None`: the names dir itself).
    watches: HashMap<WatchDescriptor, Option<String>>,
    /// (network, file name) → record.
    pub records: HashMap<(String, String), Record>,
}

fn dir_flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

fn valid_net_name(n: &str) -> bool {
    plugnet::validate::network_name(n).is_ok()
}

impl LocalRecords {
    /// Creates the names dir if missing, watches it and reads everything.
    pub fn open(names_dir: &Path) -> anyhow::Result<LocalRecords> {
        use anyhow::Context;
        std::fs::create_dir_all(names_dir)
            .with_context(|| format!("create {}", names_dir.display()))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .context("inotify_init")?;
        let mut me = LocalRecords {
            dir: names_dir.to_path_buf(),
            inotify,
            watches: HashMap::new(),
            records: HashMap::new(),
        };
        me.rescan();
        Ok(me)
    }

    /// Reads everything again (start, overflow, periodic safety net).
    pub fn rescan(&mut self) {
        for wd in self.watches.drain().map(|(wd, _)| wd) {
            let _ = self.inotify.rm_watch(wd);
        }
        self.records.clear();
        match self.inotify.add_watch(&self.dir, dir_flags()) {
            Ok(wd) => {
                self.watches.insert(wd, None);
            }
            Err(e) => warn!("names: watch {}: {e}", self.dir.display()),
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let net = e.file_name().to_string_lossy().into_owned();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && valid_net_name(&net) {
                self.scan_network(&net);
            }
        }
    }

    fn scan_network(&mut self, net: &str) {
        let dir = self.dir.join(net);
        match self.inotify.add_watch(&dir, dir_flags()) {
            Ok(wd) => {
                self.watches.insert(wd, Some(net.to_string()));
            }
            Err(e) => {
                debug!("names: watch {}: {e}", dir.display());
                return;
            }
        }
        self.records.retain(|(n, _), _| n != net);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            self.file_changed(net, &file);
        }
    }

    /// One file of network `net` appeared, changed or went.
    fn file_changed(&mut self, net: &str, file: &str) {
        let key = (net.to_string(), file.to_string());
        let Some(stem) = file
            .strip_suffix(".json")
            .filter(|_| !file.starts_with('.'))
        else {
            return;
        };
        let path = self.dir.join(net).join(file);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                self.records.remove(&key);
                return;
            }
        };
        match Record::parse(&bytes) {
            Ok(r)
                if r.network == net
                    && format!("{}@{}", r.container_id, r.ifname) == stem
                    && r.current_boot() =>
            {
                if self.records.len() < MAX_RECORDS || self.records.contains_key(&key) {
                    self.records.insert(key, r);
                } else {
                    warn!(
                        network = net,
                        "names: more than {MAX_RECORDS} records, {file} ignored"
                    );
                }
            }
            Ok(_) => {
                debug!(
                    network = net,
                    "names: {file}: another boot's or misplaced record, ignored"
                );
                self.records.remove(&key);
            }
            Err(e) => {
                warn!(network = net, "names: {file}: {e}; ignored");
                self.records.remove(&key);
            }
        }
    }

    /// Reads what inotify has; true if anything changed.
    pub fn drain_events(&mut self) -> bool {
        let mut changed = false;
        loop {
            let events = match self.inotify.read_events() {
                Ok(ev) if !ev.is_empty() => ev,
                _ => return changed,
            };
            changed = true;
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    self.rescan();
                    return true;
                }
                let Some(net) = self.watches.get(&ev.wd).cloned() else {
                    continue;
                };
                let name = ev.name.as_ref().map(|n| n.to_string_lossy().into_owned());
                match (net, name) {
                    (None, Some(dir)) if valid_net_name(&dir) => {
                        if ev
                            .mask
                            .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                        {
                            self.scan_network(&dir);
                        } else if ev
                            .mask
                            .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                        {
                            self.records.retain(|(n, _), _| *n != dir);
                        }
                    }
                    (None, _) if ev.mask.contains(AddWatchFlags::IN_DELETE_SELF) => {
                        self.rescan();
                        return true;
                    }
                    (Some(net), Some(file)) => self.file_changed(&net, &file),
                    (Some(net), None)
                        if ev.mask.intersects(
                            AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_IGNORED,
                        ) =>
                    {
                        self.watches.remove(&ev.wd);
                        self.records.retain(|(n, _), _| *n != net);
                    }
                    _ => {}
                }
            }
        }
    }
}
