//! The firewall's error type, at the bottom of the module: every other file returns it, it
//! depends on nothing of theirs but the nftables error it wraps.

use std::io;

use super::nft;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("invalid firewall input: {0}")]
    Invalid(String),
    #[error("firewall state: {step}: {source}")]
    State {
        step: &'static str,
        source: io::Error,
    },
    #[error("nftables: {step}: {op}: {source}")]
    Nft {
        step: &'static str,
        op: String,
        source: io::Error,
    },
    #[error("port mapping conflict: {0}")]
    PortConflict(String),
    #[error("host firewall: {0}")]
    HostFirewall(String),
    #[error("sysctl {path}: {source}")]
    Sysctl { path: String, source: io::Error },
    #[error("firewall check: {0}")]
    Check(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<FirewallError>),
}

impl FirewallError {
    /// The kernel errno behind this error, if any (EEXIST, ENOENT, EPERM, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            FirewallError::Nft { source, .. }
            | FirewallError::State { source, .. }
            | FirewallError::Sysctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub(super) fn state_err(step: &'static str) -> impl FnOnce(io::Error) -> FirewallError {
    move |source| FirewallError::State { step, source }
}

pub(super) fn nft_err(step: &'static str) -> impl FnOnce(nft::NftError) -> FirewallError {
    move |e| {
        if e.source.raw_os_error() == Some(libc::EEXIST)
            && e.op.starts_with("add element inet plugnet pm")
        {
            return FirewallError::PortConflict(format!(
                "host port already mapped by another attachment ({})",
                e.op
            ));
        }
        FirewallError::Nft {
            step,
            op: e.op,
            source: e.source,
        }
    }
}
