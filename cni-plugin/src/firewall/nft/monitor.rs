//! Listens to this network namespace's nftables ruleset changes (nf_tables' multicast group);
//! invariant: never sends a request.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::firewall::nfnl::recv_buf;

/// nf_tables' multicast group: every committed ruleset change is announced on it, ending with
/// an NFT_MSG_NEWGEN message per transaction (by nft, iptables-nft, firewalld, Docker, plugnet).
const NFNLGRP_NFTABLES: u32 = 7;

/// Listens to this network namespace's nftables ruleset changes (the socket is bound in the
/// namespace of the thread that opens it).
pub struct Monitor {
    sock: Socket,
}

impl Monitor {
    pub fn open() -> io::Result<Monitor> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.add_membership(NFNLGRP_NFTABLES)?;
        Ok(Monitor { sock })
    }

    /// Waits up to `timeout` (forever if None) for a datagram; true if one can be read.
    fn readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        loop {
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
                -1 => return Err(io::Error::last_os_error()),
                n => return Ok(n > 0),
            }
        }
    }

    /// Reads what is queued without waiting. An overrun (ENOBUFS: changes came faster than
    /// they were read) counts as a change too.
    fn drain(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        loop {
            buf.clear();
            match self.sock.recv(buf, libc::MSG_DONTWAIT) {
                Ok(_) if !buf.is_empty() => continue,
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Blocks until the ruleset has changed and then stayed unchanged for `quiet` (or `most`
    /// has passed since the first change, for a ruleset that never settles): true. False if
    /// `max_wait` passed without a change.
    pub fn next_change(
        &self,
        max_wait: Option<Duration>,
        quiet: Duration,
        most: Duration,
    ) -> io::Result<bool> {
        let mut buf = recv_buf();
        if !self.readable(max_wait)? {
            return Ok(false);
        }
        let first = Instant::now();
        self.drain(&mut buf)?;
        while first.elapsed() < most && self.readable(Some(quiet))? {
            self.drain(&mut buf)?;
        }
        Ok(true)
    }
}
