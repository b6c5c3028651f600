//! The nfnetlink transport shared by nf_tables ([`super::nft`]) and ctnetlink
//! ([`super::conntrack`]): one socket per thread and network namespace, kept open, framing of
//! requests and reading of acks; invariant: a request starts with nothing left unread on the
//! socket, and a socket that failed is never reused.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NetlinkMessage, NLM_F_REQUEST};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

/// Receive buffer for one datagram (nfnetlink answers in NLMSG_GOODSIZE pieces).
const RECV_BUF: usize = 64 * 1024;

/// An nfnetlink socket (nf_tables and ctnetlink requests), bound so acks come back to it.
pub(super) struct NfSocket {
    sock: Socket,
}

impl NfSocket {
    fn open() -> io::Result<NfSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        // Acks carry the request's header only, not its payload: a big batch's acks queue
        // in a fraction of the receive buffer.
        sock.set_cap_ack(true)?;
        Ok(NfSocket { sock })
    }

    /// Sends one datagram, whole.
    pub(super) fn send(&self, buf: &[u8]) -> io::Result<()> {
        let n = self.sock.send(buf, 0)?;
        if n != buf.len() {
            return Err(io::Error::other(format!(
                "netlink send sent {n} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram (blocking) into `buf`, replacing its contents; returns its
    /// length. `buf`'s capacity is the most it takes ([`recv_buf`]): the kernel writes into
    /// spare capacity, so no page of the buffer is touched beyond what arrives.
    pub(super) fn recv(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        buf.clear();
        self.sock.recv(buf, 0)?;
        Ok(buf.len())
    }

    pub(super) fn recv_nowait(&self, buf: &mut Vec<u8>) -> Option<usize> {
        buf.clear();
        match self.sock.recv(buf, libc::MSG_DONTWAIT) {
            Ok(_) if !buf.is_empty() => Some(buf.len()),
            _ => None,
        }
    }

    /// Waits for the ack of request `seq`: `Ok` or the errno the kernel answered.
    pub(super) fn ack(&self, seq: u32) -> io::Result<()> {
        let mut buf = recv_buf();
        loop {
            let n = self.recv(&mut buf)?;
            for (s, err) in parse_acks(&buf[..n]) {
                if s == seq {
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(err))
                    };
                }
            }
        }
    }
}

/// A receive buffer for [`NfSocket::recv`]: capacity only, nothing zeroed or touched.
pub(super) fn recv_buf() -> Vec<u8> {
    Vec::with_capacity(RECV_BUF)
}

thread_local! {
    /// One nfnetlink socket per thread and network namespace, kept open: closing a netfilter
    /// socket waits for nf_tables' deferred destruction of the last transaction (an RCU grace
    /// period, 5-20 ms here), so a socket per request would put that wait on every call.
    static CONN: RefCell<Option<(u64, NfSocket)>> = const { RefCell::new(None) };
}

fn netns_id() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Runs `f` with this thread's socket for its current network namespace, with nothing
/// left unread from earlier requests.
pub(super) fn with_socket<T>(f: impl FnOnce(&NfSocket) -> io::Result<T>) -> io::Result<T> {
    let ns = netns_id()?;
    CONN.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(id, _)| *id) != Some(ns) {
            *c = Some((ns, NfSocket::open()?));
        }
        let sock = &c.as_ref().expect("just set").1;
        let mut scratch = Vec::with_capacity(8192);
        while sock.recv_nowait(&mut scratch).is_some() {}
        let r = f(sock);
        if r.is_err() {
            // Unknown leftovers: start afresh next time.
            *c = None;
        }
        r
    })
}

/// Appends one nfnetlink message (`family` in its nfgenmsg header) to `buf`.
pub(super) fn put(
    buf: &mut Vec<u8>,
    family: NetfilterProtoFamily,
    res_id: u16,
    body: impl Into<NetfilterMessageInner>,
    flags: u16,
    seq: u32,
) {
    let mut m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(family, 0, res_id),
        body,
    ));
    m.header.flags = NLM_F_REQUEST | flags;
    m.header.sequence_number = seq;
    m.finalize();
    let off = buf.len();
    buf.resize(off + m.buffer_len(), 0);
    m.serialize(&mut buf[off..]);
}

/// Sends the whole batch in ONE datagram: nfnetlink commits only a batch that begins and
/// ends within one message. The socket buffers are grown (as nft does) so that the batch
/// fits and every ack can queue: the kernel answers the whole batch before we read anything.
pub(super) fn send_batch(sock: &NfSocket, batch: &[u8], acks: usize) -> io::Result<()> {
    let fd = sock.sock.as_raw_fd();
    grow_buffer(
        fd,
        libc::SO_SNDBUFFORCE,
        libc::SO_SNDBUF,
        batch.len() + 64 * 1024,
    );
    grow_buffer(
        fd,
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        acks * 2048 + 256 * 1024,
    );
    sock.send(batch)
}

/// Raises a socket buffer to at least `want` bytes (the FORCE option as root, else the plain
/// one up to the system limit); never shrinks it.
fn grow_buffer(fd: i32, force: i32, plain: i32, want: usize) {
    let get = |opt: i32| -> usize {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            v.max(0) as usize
        } else {
            0
        }
    };
    if get(plain) / 2 >= want {
        return;
    }
    let v = want.min(i32::MAX as usize) as libc::c_int;
    for opt in [force, plain] {
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// (seq, -errno or 0) of every NLMSG_ERROR (ack) message in `buf`.
pub(super) fn parse_acks(buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
        if len < 16 || off + len > buf.len() {
            break;
        }
        if kind == libc::NLMSG_ERROR as u16 && len >= 16 + 4 + 16 {
            let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
            let seq = u32::from_ne_bytes(buf[off + 28..off + 32].try_into().expect("4 bytes"));
            out.push((seq, -err));
        }
        off += len.div_ceil(4) * 4;
    }
    out
}
