//! The error every netlink operation returns: the step that failed plus the cause, with the
//! kernel errno reachable so callers can match EEXIST/ENOENT/ENODEV.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Cause {
    /// The kernel answered with this (positive) errno.
    Kernel(i32),
    /// The socket or the connection failed.
    Io(io::Error),
    /// The kernel answered with something we did not expect.
    Protocol(String),
}

#[derive(Debug)]
pub struct NetlinkError {
    step: String,
    cause: Cause,
}

impl NetlinkError {
    pub fn new(step: impl Into<String>, cause: Cause) -> Self {
        NetlinkError {
            step: step.into(),
            cause,
        }
    }

    pub fn io(step: impl Into<String>, err: io::Error) -> Self {
        Self::new(step, Cause::Io(err))
    }

    pub fn protocol(step: impl Into<String>, what: impl Into<String>) -> Self {
        Self::new(step, Cause::Protocol(what.into()))
    }

    /// The step that failed, e.g. `create veth pair pn1a2b3c4d5e/eth0`.
    pub fn step(&self) -> &str {
        &self.step
    }

    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// The kernel errno (positive), also for I/O errors that carry one.
    pub fn errno(&self) -> Option<i32> {
        match &self.cause {
            Cause::Kernel(e) => Some(*e),
            Cause::Io(e) => e.raw_os_error(),
            Cause::Protocol(_) => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object is not there: ENOENT, ENODEV (links), ESRCH (routes), EADDRNOTAVAIL (addresses).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Kernel(e) => write!(f, "{}: {}", self.step, io::Error::from_raw_os_error(*e)),
            Cause::Io(e) => write!(f, "{}: {e}", self.step),
            Cause::Protocol(s) => write!(f, "{}: {s}", self.step),
        }
    }
}

impl std::error::Error for NetlinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_is_reachable_and_step_is_named() {
        let e = NetlinkError::new("create bridge pnb0", Cause::Kernel(libc::EEXIST));
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().starts_with("create bridge pnb0: File exists"));
        let e = NetlinkError::new("delete link 7", Cause::Kernel(libc::ENODEV));
        assert!(e.is_not_found());
        let e = NetlinkError::protocol("get link x", "no reply");
        assert_eq!(e.errno(), None);
    }
}
