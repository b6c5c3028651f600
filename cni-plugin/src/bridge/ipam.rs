//! Where the bridge's addresses come from: plugnet-ipam called in-process (no second exec),
//! any other IPAM plugin executed through `CNI_PATH` exactly as the spec says, or none (L2 only).

use crate::bridge::config::IpamKind;
use crate::error::CniError;
use crate::invoke::{self, Exec};
use crate::ipam::{self, Durable};
use crate::skel::{Command, Request};
use crate::types::CniResult;

/// ADD: the addresses, routes and DNS for the attachment (empty result for L2-only networks),
/// and what makes them durable. In-process the fsync of the store runs on a thread while the
/// caller builds the interfaces; the caller answers only after [`Durable::wait`]. A delegated
/// plugin's addresses are durable when it answered.
pub fn add(
    exec: &dyn Exec,
    kind: &IpamKind,
    req: &Request,
) -> Result<(CniResult, Option<Durable>), CniError> {
    match kind {
        IpamKind::None => Ok((CniResult::default(), None)),
        IpamKind::InProcess => ipam::add_deferred(req).map(|(r, d)| (r, Some(d))),
        IpamKind::Delegate(t) => invoke::delegate(exec, t, Command::Add, req)?
            .map(|r| (r, None))
            .ok_or_else(|| CniError::internal(format!("IPAM plugin {t} returned no result"))),
    }
}

/// Waits for an ADD's addresses to be durable (see [`add`]).
pub fn durable(pending: Option<Durable>) -> Result<(), CniError> {
    pending.map_or(Ok(()), Durable::wait)
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
