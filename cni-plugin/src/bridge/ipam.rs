//! Where the bridge's addresses come from: plugnet-ipam called in-process (no second exec),
//! any other IPAM plugin executed through `CNI_PATH` exactly as the spec says, or none (L2 only).

use crate::bridge::config::IpamKind;
use crate::error::CniError;
use crate::invoke::{self, Exec};
use crate::ipam;
use crate::skel::{Command, Request};
use crate::types::CniResult;

/// ADD: the addresses, routes and DNS for the attachment (empty result for L2-only networks).
pub fn add(exec: &dyn Exec, kind: &IpamKind, req: &Request) -> Result<CniResult, CniError> {
    match kind {
        IpamKind::None => Ok(CniResult::default()),
        IpamKind::InProcess => ipam::add(req),
        IpamKind::Delegate(t) => invoke::delegate(exec, t, Command::Add, req)?
            .ok_or_else(|| CniError::internal(format!("IPAM plugin {t} returned no result"))),
    }
}

/// Runs a command that returns nothing (DEL, CHECK, STATUS, GC) on the IPAM.
pub fn exec(
    exec: &dyn Exec,
    kind: &IpamKind,
    command: Command,
    req: &Request,
) -> Result<(), CniError> {
    match kind {
        IpamKind::None => Ok(()),
        IpamKind::InProcess => match command {
            Command::Del => ipam::del(req),
            Command::Check => ipam::check(req),
            Command::Status => ipam::status(req),
            Command::Gc => ipam::gc(req),
            Command::Add | Command::Version => Err(CniError::internal(format!(
                "{} is not an IPAM command without a result",
                command.as_str()
            ))),
        },
        IpamKind::Delegate(t) => invoke::delegate(exec, t, command, req).map(drop),
    }
}
