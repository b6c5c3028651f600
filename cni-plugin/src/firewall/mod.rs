//! plugnet's packet filtering and NAT for container attachments (ipMasq, port mappings, egress
//! rules), in an nftables table of its own, and coexistence with host firewalls that drop
//! forwarded traffic (Docker's iptables: `hostfw`; the host's own nftables chains: `hostnft`);
//! invariant: every `apply`/`remove` is one nftables transaction that touches only the
//! attachment's own chains and map elements (plus shared objects on their first/last use), and
//! the state directory always describes what is installed, so `reload` can rebuild it.
//!
//! Layout (`nft list table inet plugnet`): verdict maps keyed per container (`pm_any`,
//! `pm_ip4`, `pm_ip6` for port mappings; `egress4/6` by bridge . source address) jump to
//! per-container chains `c-<key>-dnat` / `c-<key>-out`; sets keyed per container (`masq4/6`,
//! `members4/6`) drive masquerading and hairpin NAT; `routed` holds the host veths of routed
//! attachments (whose "bridge" is their own host veth: traffic out to one keeps its source
//! address); base chains `guard`, `prerouting`,
//! `output`, `postrouting`, `forward` hold a fixed handful of rules. See docs/firewall.md.
mod attach;
mod conntrack;
mod egress;
mod error;
mod host;
pub mod hostfw;
mod hostnft;
mod kernel;
pub mod l2;
mod ledger;
pub mod names;
mod nfnl;
mod nft;
pub mod plan;
pub mod state;
mod sysctl;
pub mod types;
mod undo;
pub mod vocab;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::FirewallError;
pub use host::watch;
pub use hostfw::forward_may_drop as host_forward_may_drop;
pub use types::{
    Attachment, IcmpMatch, NetOut, NetOutDefault, NetOutProtocol, NetOutRule, NetRange,
    PortMapping, PortRange, Protocol,
};

use kernel::{Kernel, Netlink};
use state::Store;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/plugnet/firewall";

/// How the firewall runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where attachments and reference counts are kept.
    pub state_dir: PathBuf,
    /// Keep iptables' FORWARD path (Docker's DOCKER-USER) open for plugnet bridges.
    pub host_firewall: bool,
    /// Flush stale UDP conntrack entries of mapped ports on apply/remove.
    pub flush_conntrack: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            host_firewall: true,
            flush_conntrack: true,
        }
    }
}

/// What `reload` rebuilt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadReport {
    pub attachments: usize,
    pub bridges: usize,
}

/// The firewall over one state directory.
#[derive(Clone, Debug)]
pub struct Firewall {
    opts: Options,
    store: Store,
    kernel: Arc<dyn Kernel>,
}

impl Firewall {
    /// The firewall whose state lives in `state_dir`, with the default options otherwise (the
    /// plugin, the CLI and plugnet-shim all use these).
    pub fn at(state_dir: impl Into<PathBuf>) -> Firewall {
        Firewall::new(Options {
            state_dir: state_dir.into(),
            ..Options::default()
        })
    }

    pub fn new(opts: Options) -> Firewall {
        Firewall::with_kernel(opts, Arc::new(Netlink))
    }

    /// The firewall over another kernel (a fake, in unit tests).
    pub(crate) fn with_kernel(opts: Options, kernel: Arc<dyn Kernel>) -> Firewall {
        let store = Store::new(opts.state_dir.clone());
        Firewall {
            opts,
            store,
            kernel,
        }
    }
}

/// [`Firewall::apply`] with default options.
pub fn apply(att: &Attachment) -> Result<(), FirewallError> {
    Firewall::new(Options::default()).apply(att)
}

/// [`Firewall::remove`] with default options.
pub fn remove(network: &str, container_id: &str, ifname: &str) -> Result<(), FirewallError> {
    Firewall::new(Options::default()).remove(network, container_id, ifname)
}

/// [`Firewall::check`] with default options.
pub fn check(att: &Attachment) -> Result<(), FirewallError> {
    Firewall::new(Options::default()).check(att)
}

/// [`Firewall::repair`] over `state_dir` (default options otherwise); `Ok(None)` also when
/// the directory does not exist.
pub fn repair(state_dir: impl Into<PathBuf>) -> Result<Option<ReloadReport>, FirewallError> {
    let state_dir = state_dir.into();
    if !state_dir.exists() {
        return Ok(None);
    }
    Firewall::at(state_dir).repair()
}

/// [`Firewall::reload`] over `state_dir`.
pub fn reload(state_dir: impl Into<PathBuf>) -> Result<ReloadReport, FirewallError> {
    Firewall::at(state_dir).reload()
}

#[cfg(test)]
mod tests;
