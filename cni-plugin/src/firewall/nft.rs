//! The only module that speaks nf_tables netlink (messages built with the rust-netlink
//! project's `netlink-packet-netfilter`, sent on a `netlink-sys` socket; no C library, so
//! the CNI binaries link statically): runs a list of [`Op`]s as ONE atomic batch and answers
//! existence queries; invariant: a batch either commits entirely or leaves the ruleset as it
//! was, and an error names the operation the kernel refused.

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook, Immediate, InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage,
    Operator, Payload, Register, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute,
    SetElementList, SetElementMessage, SetFlags, SetMessage, TableAttribute, TableFlags,
    TableMessage, Verdict as NlVerdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::plan::{
    ElemData, Expr, Fam, Field, ForeignChain, Hook as PHook, KeyVal, Op, Rule, SetData, SetDef,
    Table, Verdict, TABLE,
};

/// The kernel refused an operation of a batch (the whole batch was rolled back).
#[derive(Debug)]
pub struct NftError {
    /// The refused operation in nft syntax, or "send"/"receive" for socket failures.
    pub op: String,
    pub source: io::Error,
}

impl std::fmt::Display for NftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.source)
    }
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NLM_F_ROOT | NLM_F_MATCH: a dump.
const NLM_F_DUMP: u16 = 0x300;
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_00: u32 = 8;
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

    fn recv_nowait(&self, buf: &mut Vec<u8>) -> Option<usize> {
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
fn put(
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

/// Runs `ops` as one transaction. An empty list is a no-op.
pub fn run(ops: &[Op]) -> Result<(), NftError> {
    if ops.is_empty() {
        return Ok(());
    }
    let batch = batch(ops);
    let io_err = |op: &str| {
        let op = op.to_string();
        move |source| NftError { op, source }
    };
    let first_err = with_socket(|sock| {
        send_batch(sock, &batch, ops.len() + 2)?;
        let total = ops.len() + 2;
        let mut buf = recv_buf();
        let mut acked = 0usize;
        let mut first_err: Option<(u32, i32)> = None;
        while acked < total {
            let n = if first_err.is_some() {
                // After an error the kernel may not ack the rest: drain what is there, then stop.
                match sock.recv_nowait(&mut buf) {
                    Some(n) => n,
                    None => break,
                }
            } else {
                sock.recv(&mut buf)?
            };
            for (seq, err) in parse_acks(&buf[..n]) {
                acked += 1;
                if err != 0 && first_err.is_none() {
                    first_err = Some((seq, err));
                }
            }
        }
        Ok(first_err)
    })
    .map_err(io_err("send batch / receive acks"))?;
    match first_err {
        None => Ok(()),
        Some((seq, errno)) => {
            let op = (seq as usize)
                .checked_sub(2)
                .and_then(|i| ops.get(i))
                .map(|op| op.to_string())
                .unwrap_or_else(|| "commit batch".to_string());
            Err(NftError {
                op,
                source: io::Error::from_raw_os_error(errno),
            })
        }
    }
}

/// `ops` as one nfnetlink batch. Sequence numbers: 1 begins the batch, 2.. are the ops, the
/// last one ends it; every message asks for an ack, so a refused op is named by its number.
fn batch(ops: &[Op]) -> Vec<u8> {
    let mut batch = Vec::with_capacity(256 * (ops.len() + 2));
    let unspec = NetfilterProtoFamily::Unspec;
    let subsys = NFNL_SUBSYS_NFTABLES;
    put(
        &mut batch,
        unspec,
        subsys,
        ControlMessage::BatchBegin,
        NLM_F_ACK,
        1,
    );
    for (i, op) in ops.iter().enumerate() {
        let (body, flags) = message(op);
        let family = NetfilterProtoFamily::from(match op {
            Op::InsertForeignRule { at, .. } | Op::DelForeignRule { at, .. } => at.family,
            Op::AddTable(t) | Op::DelTable(t) => t.family(),
            Op::AddBaseChain(c) => Table::of(c.name).family(),
            Op::AddSet(def) => Table::of(def.name).family(),
            Op::AddChain(name) | Op::DelChain(name) => Table::of(name).family(),
            Op::AddRule(r) => Table::of(&r.chain).family(),
            Op::AddElem { set, .. } | Op::DelElem { set, .. } => Table::of(set).family(),
        });
        put(&mut batch, family, 0, body, flags, i as u32 + 2);
    }
    let end = ops.len() as u32 + 2;
    put(
        &mut batch,
        unspec,
        subsys,
        ControlMessage::BatchEnd,
        NLM_F_ACK,
        end,
    );
    batch
}

/// Sends the whole batch in ONE datagram: nfnetlink commits only a batch that begins and
/// ends within one message. The socket buffers are grown (as nft does) so that the batch
/// fits and every ack can queue: the kernel answers the whole batch before we read anything.
fn send_batch(sock: &NfSocket, batch: &[u8], acks: usize) -> io::Result<()> {
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
fn parse_acks(buf: &[u8]) -> Vec<(u32, i32)> {
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

/// An op's nf_tables message and the netlink flags it is sent with (those of libnftnl's
/// batch: tables and chains are created when absent, rules appended, elements exclusive).
fn message(op: &Op) -> (NfTablesMessage, u16) {
    let table = || TableAttribute::Name(TABLE.to_string());
    let chain = |name: &str| {
        vec![
            ChainAttribute::Table(TABLE.to_string()),
            ChainAttribute::Name(name.to_string()),
        ]
    };
    match op {
        Op::AddTable(_) => (
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![table()],
            }),
            NLM_F_ACK,
        ),
        Op::DelTable(_) => (
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![table()],
            }),
            NLM_F_ACK,
        ),
        Op::AddBaseChain(c) => {
            let hook = match c.hook {
                PHook::Prerouting => InetHookNumber::PreRouting,
                PHook::Forward => InetHookNumber::Forward,
                PHook::Output => InetHookNumber::LocalOut,
                PHook::Postrouting => InetHookNumber::PostRouting,
            };
            let mut attributes = chain(c.name);
            attributes.push(ChainAttribute::Hook(vec![
                Hook::Number(hook.into()),
                // The kernel reads the priority as a signed 32-bit number.
                Hook::Priority(c.priority as u32),
            ]));
            attributes.push(ChainAttribute::Type(
                if c.nat { "nat" } else { "filter" }.to_string(),
            ));
            attributes.push(ChainAttribute::Policy(libc::NF_ACCEPT as u32));
            (
                NfTablesMessage::NewChain(ChainMessage { attributes }),
                NLM_F_ACK | NLM_F_CREATE,
            )
        }
        Op::AddChain(name) => (
            NfTablesMessage::NewChain(ChainMessage {
                attributes: chain(name),
            }),
            NLM_F_ACK | NLM_F_CREATE,
        ),
        Op::DelChain(name) => (
            NfTablesMessage::DeleteChain(ChainMessage {
                attributes: chain(name),
            }),
            NLM_F_ACK,
        ),
        Op::AddSet(def) => (
            NfTablesMessage::NewSet(SetMessage {
                attributes: set_definition(def),
            }),
            NLM_F_CREATE | NLM_F_ACK,
        ),
        Op::AddRule(r) => {
            let exprs = r.exprs.iter().flat_map(lower).map(Into::into).collect();
            let attributes = vec![
                RuleAttribute::Table(TABLE.to_string()),
                RuleAttribute::Chain(r.chain.clone()),
                RuleAttribute::Expressions(exprs),
            ];
            (
                NfTablesMessage::NewRule(RuleMessage { attributes }),
                NLM_F_CREATE | NLM_F_APPEND | NLM_F_EXCL | NLM_F_ACK,
            )
        }
        Op::AddElem { set, key, data } => (
            NfTablesMessage::NewSetElement(SetElementMessage {
                attributes: element(set, key, data.as_ref()),
            }),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        ),
        Op::DelElem { set, key } => (
            NfTablesMessage::DeleteSetElement(SetElementMessage {
                attributes: element(set, key, None),
            }),
            NLM_F_ACK,
        ),
        Op::InsertForeignRule { at, exprs, comment } => {
            let exprs = exprs.iter().flat_map(lower).map(Into::into).collect();
            let attributes = vec![
                RuleAttribute::Table(at.table.clone()),
                RuleAttribute::Chain(at.chain.clone()),
                RuleAttribute::Expressions(exprs),
                RuleAttribute::UserData(udata_comment(comment)),
            ];
            // No NLM_F_APPEND and no position: the kernel puts the rule at the chain's head.
            (
                NfTablesMessage::NewRule(RuleMessage { attributes }),
                NLM_F_CREATE | NLM_F_ACK,
            )
        }
        Op::DelForeignRule { at, handle } => (
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(at.table.clone()),
                    RuleAttribute::Chain(at.chain.clone()),
                    RuleAttribute::Handle(*handle),
                ],
            }),
            NLM_F_ACK,
        ),
    }
}

/// libnftnl's rule user data holding a comment (what `nft list` shows as `comment "..."`):
/// one TLV, type NFTNL_UDATA_RULE_COMMENT (0), the string with its NUL.
fn udata_comment(comment: &str) -> Vec<u8> {
    let mut v = comment.as_bytes().to_vec();
    v.truncate(254);
    v.push(0);
    let mut out = vec![0u8, v.len() as u8];
    out.extend(v);
    out
}

/// The comment in a rule's user data, if any (see [`udata_comment`]).
fn udata_comment_of(udata: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= udata.len() {
        let (kind, len) = (udata[off], udata[off + 1] as usize);
        let value = udata.get(off + 2..off + 2 + len)?;
        if kind == 0 {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        off += 2 + len;
    }
    None
}

fn reg(r: u32) -> Register {
    Register::from(r)
}

/// A 32-bit attribute in network byte order, as nf_tables reads them.
fn be32(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

/// An expression `netlink-packet-netfilter` has no type for, attribute by attribute
/// (kernel numbering, include/uapi/linux/netfilter/nf_tables.h).
fn raw(name: &str, attributes: Vec<DefaultNla>) -> Expressions {
    Expressions::Other {
        expression_type: name.to_string(),
        attributes,
    }
}

fn meta(key: i32, r: u32) -> Expressions {
    Expressions::Meta(vec![
        Meta::Key(MetaKey::from(key as u32)),
        Meta::DestinationRegister(reg(r)),
    ])
}

fn payload(base: i32, offset: u32, len: u32, r: u32) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(reg(r)),
        Payload::Base(base as u32),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

fn cmp(op: i32, data: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(reg(REG_1)),
        Cmp::Op(Operator::from(op as u32)),
        Cmp::Data(DataAttribute::Value(data)),
    ])
}

fn bitwise(mask: Vec<u8>) -> Expressions {
    let len = mask.len();
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(reg(REG_1)),
        Bitwise::DestinationRegister(reg(REG_1)),
        Bitwise::Length(len as u32),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(vec![0; len])),
    ])
}

fn immediate(r: u32, data: Vec<u8>) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(reg(r)),
        Immediate::Data(DataAttribute::Value(data)),
    ])
}

fn verdict_data(v: &Verdict) -> DataAttribute {
    let mut attrs = vec![VerdictAttribute::Code(NlVerdict::from(verdict_code(v)))];
    if let Verdict::Jump(chain) = v {
        attrs.push(VerdictAttribute::Chain(chain.clone()));
    }
    DataAttribute::Verdict(attrs)
}

fn verdict(v: &Verdict) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(reg(REG_VERDICT)),
        Immediate::Data(verdict_data(v)),
    ])
}

fn lookup(set: &str, sreg: u32, dreg: Option<u32>) -> Expressions {
    let mut attrs = vec![
        Lookup::Set(set.to_string()),
        Lookup::SourceRegister(reg(sreg)),
    ];
    if let Some(d) = dreg {
        attrs.push(Lookup::DestinationRegister(reg(d)));
    }
    Expressions::Lookup(attrs)
}

/// NFT_LOOKUP_F_INV: the lookup matches when the key is absent.
const LOOKUP_F_INV: u32 = 1;

/// Loads `key` into consecutive 32-bit registers from NFT_REG32_00, each part padded to 4
/// bytes (the kernel zeroes a part's padding as it loads it), as nft loads a concatenation.
fn load_concat(key: &[Field]) -> Vec<Expressions> {
    let mut v = Vec::new();
    let mut reg32 = REG32_00;
    for f in key {
        v.push(load(*f, reg32));
        reg32 += f.byte_len().div_ceil(4);
    }
    v
}

/// `dnat to <addr in reg 1>:<port in port_reg>` for `family` (NFTA_NAT_*).
fn dnat(family: i32, port_reg: u32) -> Expressions {
    raw(
        "nat",
        vec![
            be32(1, libc::NFT_NAT_DNAT as u32), // NFTA_NAT_TYPE
            be32(2, family as u32),             // NFTA_NAT_FAMILY
            be32(3, REG_1),                     // NFTA_NAT_REG_ADDR_MIN
            be32(5, port_reg),                  // NFTA_NAT_REG_PROTO_MIN
        ],
    )
}

fn verdict_code(v: &Verdict) -> u32 {
    (match v {
        Verdict::Accept => libc::NF_ACCEPT,
        Verdict::Drop => libc::NF_DROP,
        Verdict::Return => libc::NFT_RETURN,
        Verdict::Jump(_) => libc::NFT_JUMP,
    }) as u32
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Loads a field into register `reg` (a 128-bit register number or a 32-bit one).
fn load(field: Field, reg: u32) -> Expressions {
    const NH: i32 = libc::NFT_PAYLOAD_NETWORK_HEADER;
    const TH: i32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER;
    match field {
        Field::Iifname => meta(libc::NFT_META_IIFNAME, reg),
        Field::Oifname => meta(libc::NFT_META_OIFNAME, reg),
        Field::Saddr(Fam::V4) => payload(NH, 12, 4, reg),
        Field::Daddr(Fam::V4) => payload(NH, 16, 4, reg),
        Field::Saddr(Fam::V6) => payload(NH, 8, 16, reg),
        Field::Daddr(Fam::V6) => payload(NH, 24, 16, reg),
        Field::L4proto => meta(libc::NFT_META_L4PROTO, reg),
        Field::Dport => payload(TH, 2, 2, reg),
        Field::EtherSaddr => payload(libc::NFT_PAYLOAD_LL_HEADER, 6, 6, reg),
        Field::ArpSha => payload(NH, 8, 6, reg),
        Field::NdLladdr(offset) => payload(TH, offset, 6, reg),
    }
}

/// The kernel expressions one plugnet statement is made of (nft's own bytecode for it).
fn lower(e: &Expr) -> Vec<Expressions> {
    const EQ: i32 = libc::NFT_CMP_EQ;
    match e {
        Expr::Nfproto(f) => {
            let p = if *f == Fam::V4 {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            };
            vec![meta(libc::NFT_META_NFPROTO, REG_1), cmp(EQ, vec![p as u8])]
        }
        Expr::L4proto(p) => vec![meta(libc::NFT_META_L4PROTO, REG_1), cmp(EQ, vec![*p])],
        Expr::Ifname { out, name } => {
            let mut b = name.as_bytes().to_vec();
            b.resize(16, 0);
            let f = if *out { Field::Oifname } else { Field::Iifname };
            vec![load(f, REG_1), cmp(EQ, b)]
        }
        Expr::Addr { dst, net, negate } => {
            let fam = Fam::of(&net.ip());
            let f = if *dst {
                Field::Daddr(fam)
            } else {
                Field::Saddr(fam)
            };
            let mut v = vec![load(f, REG_1)];
            let full = if fam == Fam::V4 { 32 } else { 128 };
            if net.prefix() < full {
                v.push(bitwise(addr_bytes(&net.mask())));
            }
            let op = if *negate { libc::NFT_CMP_NEQ } else { EQ };
            v.push(cmp(op, addr_bytes(&net.network())));
            v
        }
        Expr::AddrRange { dst, start, end } => {
            let fam = Fam::of(start);
            let f = if *dst {
                Field::Daddr(fam)
            } else {
                Field::Saddr(fam)
            };
            if start == end {
                return vec![load(f, REG_1), cmp(EQ, addr_bytes(start))];
            }
            vec![
                load(f, REG_1),
                cmp(libc::NFT_CMP_GTE, addr_bytes(start)),
                cmp(libc::NFT_CMP_LTE, addr_bytes(end)),
            ]
        }
        Expr::Dport { start, end } => {
            let mut v = vec![load(Field::Dport, REG_1)];
            if start == end {
                v.push(cmp(EQ, start.to_be_bytes().to_vec()));
            } else {
                v.push(cmp(libc::NFT_CMP_GTE, start.to_be_bytes().to_vec()));
                v.push(cmp(libc::NFT_CMP_LTE, end.to_be_bytes().to_vec()));
            }
            v
        }
        Expr::Icmp { kind, code } => {
            let th = libc::NFT_PAYLOAD_TRANSPORT_HEADER;
            let mut v = vec![payload(th, 0, 1, REG_1), cmp(EQ, vec![*kind])];
            if let Some(c) = code {
                v.push(payload(th, 1, 1, REG_1));
                v.push(cmp(EQ, vec![*c]));
            }
            v
        }
        Expr::CtEstablished | Expr::CtDnat => {
            let (key, mask) = if *e == Expr::CtEstablished {
                // NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)
                (libc::NFT_CT_STATE, 2u32 | 4)
            } else {
                (libc::NFT_CT_STATUS, 1u32 << 5) // IPS_DST_NAT
            };
            vec![
                // NFTA_CT_DREG, NFTA_CT_KEY
                raw("ct", vec![be32(1, REG_1), be32(2, key as u32)]),
                bitwise(mask.to_ne_bytes().to_vec()),
                cmp(libc::NFT_CMP_NEQ, vec![0; 4]),
            ]
        }
        Expr::FibDaddrLocal => vec![
            // NFTA_FIB_DREG; NFTA_FIB_RESULT = NFT_FIB_RESULT_ADDRTYPE; NFTA_FIB_FLAGS =
            // NFTA_FIB_F_DADDR
            raw("fib", vec![be32(1, REG_1), be32(2, 3), be32(3, 2)]),
            cmp(EQ, 2u32.to_ne_bytes().to_vec()), // RTN_LOCAL
        ],
        Expr::Lookup { set, key, vmap } => {
            // NFT_REG32_00 is the first word of NFT_REG_1.
            let mut v = load_concat(key);
            v.push(lookup(set, REG32_00, vmap.then_some(REG_VERDICT)));
            v
        }
        Expr::NotIn { set, key } => {
            let mut v = load_concat(key);
            let Expressions::Lookup(mut attrs) = lookup(set, REG32_00, None) else {
                unreachable!("lookup() builds a lookup")
            };
            attrs.push(Lookup::Flags(LOOKUP_F_INV));
            v.push(Expressions::Lookup(attrs));
            v
        }
        Expr::Protocol(t) => vec![
            meta(libc::NFT_META_PROTOCOL, REG_1),
            cmp(EQ, t.to_be_bytes().to_vec()),
        ],
        Expr::ThByte { offset, value } => vec![
            payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, *offset, 1, REG_1),
            cmp(EQ, vec![*value]),
        ],
        Expr::Dnat { addr, port } => {
            let family = if addr.is_ipv4() {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            };
            vec![
                immediate(REG_1, addr_bytes(addr)),
                immediate(REG_2, port.to_be_bytes().to_vec()),
                dnat(family, REG_2),
            ]
        }
        Expr::DnatMap { fam, set, key } => {
            let mut v = load_concat(key);
            // The map yields address . port into NFT_REG_1 onwards: the port follows the
            // address in the next 32-bit register.
            let (family, port_reg) = match fam {
                Fam::V4 => (libc::NFPROTO_IPV4, REG32_00 + 1),
                Fam::V6 => (libc::NFPROTO_IPV6, REG32_00 + 4),
            };
            v.push(lookup(set, REG32_00, Some(REG_1)));
            v.push(dnat(family, port_reg));
            v
        }
        Expr::Masquerade => vec![raw("masq", vec![])],
        Expr::Counter => vec![raw("counter", vec![])],
        // NFTA_REJECT_TYPE (32 bits), NFTA_REJECT_ICMP_CODE (8 bits)
        Expr::Reject => vec![raw(
            "reject",
            vec![
                be32(1, libc::NFT_REJECT_ICMPX_UNREACH as u32),
                DefaultNla::new(2, vec![libc::NFT_REJECT_ICMPX_ADMIN_PROHIBITED as u8]),
            ],
        )],
        Expr::Verdict(v) => vec![verdict(v)],
    }
}

/// A set's definition (NEWSET attributes).
fn set_definition(def: &SetDef) -> Vec<SetAttribute> {
    let key_len: u32 = if def.key.len() == 1 {
        def.key[0].byte_len()
    } else {
        def.key.iter().map(|f| f.byte_len().div_ceil(4) * 4).sum()
    };
    // nft encodes a concatenation's type as 6-bit datatype numbers shifted in order.
    let key_type = def
        .key
        .iter()
        .fold(0u32, |acc, f| (acc << 6) | f.nft_type());
    // nft's userdata: the key's byte order (TLV type 0 = KEYBYTEORDER; 1 host order as nft
    // uses for strings, 2 big-endian), so `nft list` prints single-field keys.
    let order = if matches!(def.key[0], Field::Iifname | Field::Oifname) {
        1
    } else {
        2
    };
    let mut attrs = vec![
        SetAttribute::Table(TABLE.to_string()),
        SetAttribute::Name(def.name.to_string()),
        SetAttribute::KeyType(key_type),
        SetAttribute::KeyLen(key_len),
        // The kernel requires a transaction-local id for every new set.
        SetAttribute::Id(set_id(def.name)),
        SetAttribute::UserData(vec![0, 4, order, 0, 0, 0]),
    ];
    match &def.data {
        SetData::None => {}
        SetData::Verdict => {
            attrs.push(SetAttribute::Flags(SetFlags::Map));
            attrs.push(SetAttribute::DataType(libc::NFT_DATA_VERDICT));
        }
        SetData::Value(fields) => {
            attrs.push(SetAttribute::Flags(SetFlags::Map));
            attrs.push(SetAttribute::DataType(
                fields.iter().fold(0u32, |acc, f| (acc << 6) | f.nft_type()),
            ));
            attrs.push(SetAttribute::DataLen(
                fields.iter().map(|f| f.byte_len().div_ceil(4) * 4).sum(),
            ));
        }
    }
    attrs
}

/// A one-element set-element message body (NEWSETELEM, DELSETELEM, GETSETELEM).
fn element(set: &str, key: &[KeyVal], data: Option<&ElemData>) -> Vec<SetElementList> {
    let mut k = KeyVal::concat(key);
    if key.len() == 1 {
        if let KeyVal::Ifname(n) = &key[0] {
            k = n.as_bytes().to_vec();
            k.resize(16, 0);
        }
    }
    let mut elem = vec![SetElementAttribute::Key(DataAttribute::Value(k))];
    match data {
        Some(ElemData::Verdict(v)) => elem.push(SetElementAttribute::Data(verdict_data(v))),
        Some(ElemData::Value(v)) => elem.push(SetElementAttribute::Data(DataAttribute::Value(
            KeyVal::concat(v),
        ))),
        None => {}
    }
    vec![
        SetElementList::Table(TABLE.to_string()),
        SetElementList::Set(set.to_string()),
        SetElementList::Elements(vec![ListAttribute::Element(elem)]),
    ]
}

fn set_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One GET request: `None` when the kernel answers ENOENT, else the objects it returned.
fn get(
    family: NetfilterProtoFamily,
    body: NfTablesMessage,
) -> io::Result<Option<Vec<NfTablesMessage>>> {
    Ok(request(family, body, NLM_F_ACK)?.map(|v| v.into_iter().map(|(_, m)| m).collect()))
}

/// One dump request: every object it returned, with its family.
fn dump(
    family: NetfilterProtoFamily,
    body: NfTablesMessage,
) -> io::Result<Vec<(u8, NfTablesMessage)>> {
    Ok(request(family, body, NLM_F_DUMP)?.unwrap_or_default())
}

/// One request (a GET, or a dump with `NLM_F_DUMP`): `None` when the kernel answers ENOENT,
/// else the objects it returned, each with the family of its header.
fn request(
    family: NetfilterProtoFamily,
    body: NfTablesMessage,
    flags: u16,
) -> io::Result<Option<Vec<(u8, NfTablesMessage)>>> {
    const SEQ: u32 = 1;
    let mut req = Vec::with_capacity(128);
    put(&mut req, family, 0, body, flags, SEQ);
    with_socket(|sock| {
        sock.send(&req)?;
        let mut buf = recv_buf();
        let mut found = Vec::new();
        loop {
            let n = sock.recv(&mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || off + len > n {
                    break;
                }
                match NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len]) {
                    Ok(m) if m.header.sequence_number != SEQ => {}
                    Ok(m) => match m.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(Some(found)),
                                Some(c) if -c.get() == libc::ENOENT => Ok(None),
                                Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                            }
                        }
                        NetlinkPayload::Done(_) => return Ok(Some(found)),
                        NetlinkPayload::InnerMessage(NetfilterMessage {
                            header,
                            inner: NetfilterMessageInner::NfTables(obj),
                            ..
                        }) => found.push((u8::from(header.family), obj)),
                        _ => {}
                    },
                    // An object this library cannot parse still exists.
                    Err(_) => {}
                }
                off += len.div_ceil(4) * 4;
            }
        }
    })
}

/// Does plugnet's table `t` exist?
pub fn table_exists(t: Table) -> io::Result<bool> {
    let body = NfTablesMessage::GetTable(TableMessage {
        attributes: vec![TableAttribute::Name(TABLE.to_string())],
    });
    Ok(get(NetfilterProtoFamily::from(t.family()), body)?.is_some())
}

fn get_chain(
    family: NetfilterProtoFamily,
    table: &str,
    name: &str,
) -> io::Result<Option<Vec<NfTablesMessage>>> {
    let body = NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(name.to_string()),
        ],
    });
    get(family, body)
}

/// The nfgenmsg family of plugnet's object `name` (see [`Table::of`]).
fn family_of(name: &str) -> NetfilterProtoFamily {
    NetfilterProtoFamily::from(Table::of(name).family())
}

/// Does chain `name` exist in plugnet's table?
pub fn chain_exists(name: &str) -> io::Result<bool> {
    Ok(get_chain(family_of(name), TABLE, name)?.is_some())
}

/// Does set/map `name` exist in plugnet's table?
pub fn set_exists(name: &str) -> io::Result<bool> {
    let body = NfTablesMessage::GetSet(SetMessage {
        attributes: vec![
            SetAttribute::Table(TABLE.to_string()),
            SetAttribute::Name(name.to_string()),
        ],
    });
    Ok(get(family_of(name), body)?.is_some())
}

/// Does element `key` exist in set/map `set`?
pub fn elem_exists(set: &str, key: &[KeyVal]) -> io::Result<bool> {
    let body = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: element(set, key, None),
    });
    Ok(get(family_of(set), body)?.is_some())
}

/// Whether plugnet's chain `name` holds exactly the rules `want` (its `AddRule` ops), rule for
/// rule, as far as [`expression_signature`] tells them apart. `Ok(false)` when the chain is
/// missing, or a rule is gone, added or changed.
pub fn chain_holds(name: &str, want: &[Op]) -> io::Result<bool> {
    let body = NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.to_string()),
            RuleAttribute::Chain(name.to_string()),
        ],
    });
    let have: Vec<Vec<String>> = dump(family_of(name), body)?
        .into_iter()
        .filter_map(|(_, m)| match m {
            NfTablesMessage::NewRule(r) => r.attributes.into_iter().find_map(|a| match a {
                RuleAttribute::Expressions(e) => Some(e.iter().map(expression_signature).collect()),
                _ => None,
            }),
            _ => None,
        })
        .collect();
    let want: Vec<Vec<String>> = want
        .iter()
        .filter_map(|op| match op {
            Op::AddRule(Rule { exprs, .. }) => Some(
                exprs
                    .iter()
                    .flat_map(lower)
                    .map(|e| expression_signature(&e.into()))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    Ok(have == want)
}

/// What one expression does, registers aside (the kernel lists them renumbered): its kind,
/// and what it loads (meta key; payload base, offset, length), compares with, looks up (set,
/// inverted or not) or decides.
fn expression_signature(e: &ListAttribute<ExpressionAttribute>) -> String {
    let ListAttribute::Element(attrs) = e else {
        return "?".into();
    };
    let mut sig = String::new();
    for a in attrs {
        match a {
            ExpressionAttribute::Name(n) => sig.push_str(n),
            ExpressionAttribute::Data(Expressions::Meta(m)) => {
                for x in m {
                    if let Meta::Key(k) = x {
                        sig.push_str(&format!(" key={}", u32::from(*k)));
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Payload(p)) => {
                for x in p {
                    match x {
                        Payload::Base(b) => sig.push_str(&format!(" base={b}")),
                        Payload::Offset(o) => sig.push_str(&format!(" off={o}")),
                        Payload::Len(l) => sig.push_str(&format!(" len={l}")),
                        _ => {}
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Cmp(c)) => {
                for x in c {
                    match x {
                        Cmp::Op(o) => sig.push_str(&format!(" op={}", u32::from(*o))),
                        Cmp::Data(DataAttribute::Value(v)) => sig.push_str(&format!(" {v:02x?}")),
                        _ => {}
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Lookup(l)) => {
                for x in l {
                    match x {
                        Lookup::Set(n) => sig.push_str(&format!(" @{n}")),
                        Lookup::Flags(f) if *f & LOOKUP_F_INV != 0 => sig.push_str(" !="),
                        _ => {}
                    }
                }
            }
            ExpressionAttribute::Data(Expressions::Immediate(i)) => {
                for x in i {
                    if let Immediate::Data(DataAttribute::Verdict(v)) = x {
                        for c in v {
                            if let VerdictAttribute::Code(code) = c {
                                sig.push_str(&format!(" verdict={}", u32::from(*code) as i32));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    sig
}

const NF_DROP: u32 = 0;

/// What the policy of iptables-nft's `FORWARD` chain (table `filter`) in `family`
/// (`NFPROTO_IPV4`, `NFPROTO_IPV6`) says: `Some(true)` drops, `Some(false)` accepts, `None`
/// when there is no such chain (no iptables-nft user on this host). One netlink request.
pub fn iptables_forward_drops(family: u8) -> io::Result<Option<bool>> {
    Ok(iptables_chain(family, "FORWARD")?.map(|policy| policy == Some(NF_DROP)))
}

/// Chain `name` of iptables-nft's `filter` table in `family`: `None` when it does not exist,
/// else its policy (`None` for a chain without one, i.e. not a base chain).
pub fn iptables_chain(family: u8, name: &str) -> io::Result<Option<Option<u32>>> {
    let Some(found) = get_chain(NetfilterProtoFamily::from(family), "filter", name)? else {
        return Ok(None);
    };
    let policy = found.iter().find_map(|m| match m {
        NfTablesMessage::NewChain(c) => c.attributes.iter().find_map(|a| match a {
            ChainAttribute::Policy(p) => Some(*p),
            _ => None,
        }),
        _ => None,
    });
    Ok(Some(policy))
}

/// A table as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    pub family: u8,
    pub name: String,
    /// Owned by a process (NFT_TABLE_F_OWNER): only that process may change it.
    pub owned: bool,
    /// Dormant: its chains see no packets.
    pub dormant: bool,
}

/// Every table of every family. One dump.
pub fn tables() -> io::Result<Vec<TableInfo>> {
    let body = NfTablesMessage::GetTable(TableMessage { attributes: vec![] });
    Ok(dump(NetfilterProtoFamily::Unspec, body)?
        .into_iter()
        .filter_map(|(family, m)| {
            let NfTablesMessage::NewTable(t) = m else {
                return None;
            };
            let (mut name, mut flags) = (None, TableFlags::empty());
            for a in t.attributes {
                match a {
                    TableAttribute::Name(n) => name = Some(n),
                    TableAttribute::Flags(f) => flags = f,
                    _ => {}
                }
            }
            Some(TableInfo {
                family,
                name: name?,
                owned: flags.contains(TableFlags::Owner),
                dormant: flags.contains(TableFlags::Dormant),
            })
        })
        .collect())
}

/// The base chains of `family` on the forward hook, each with its policy. One dump.
pub fn forward_base_chains(family: u8) -> io::Result<Vec<(ForeignChain, u32)>> {
    let body = NfTablesMessage::GetChain(ChainMessage { attributes: vec![] });
    let forward = u32::from(InetHookNumber::Forward);
    Ok(dump(NetfilterProtoFamily::from(family), body)?
        .into_iter()
        .filter_map(|(family, m)| {
            let NfTablesMessage::NewChain(c) = m else {
                return None;
            };
            let (mut table, mut chain, mut hook, mut policy) = (None, None, None, None);
            for a in c.attributes {
                match a {
                    ChainAttribute::Table(t) => table = Some(t),
                    ChainAttribute::Name(n) => chain = Some(n),
                    ChainAttribute::Policy(p) => policy = Some(p),
                    ChainAttribute::Hook(h) => {
                        hook = h.into_iter().find_map(|x| match x {
                            Hook::Number(n) => Some(u32::from(n)),
                            _ => None,
                        })
                    }
                    _ => {}
                }
            }
            (hook == Some(forward)).then_some(())?;
            Some((
                ForeignChain {
                    family,
                    table: table?,
                    chain: chain?,
                },
                policy?,
            ))
        })
        .collect())
}

/// A rule as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub handle: u64,
    /// Its comment (libnftnl user data), if any.
    pub comment: Option<String>,
    /// It drops or rejects every packet reaching it: besides `counter` and `log`, its only
    /// statement is `reject` or a `drop` verdict (firewalld ends its forward chain so).
    pub drops_all: bool,
}

/// The rules of chain `at`, in order. One dump.
pub fn chain_rules(at: &ForeignChain) -> io::Result<Vec<RuleInfo>> {
    let body = NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(at.table.clone()),
            RuleAttribute::Chain(at.chain.clone()),
        ],
    });
    Ok(dump(NetfilterProtoFamily::from(at.family), body)?
        .into_iter()
        .filter_map(|(_, m)| {
            let NfTablesMessage::NewRule(r) = m else {
                return None;
            };
            let (mut handle, mut comment, mut table, mut chain) = (None, None, None, None);
            let mut drops_all = false;
            for a in r.attributes {
                match a {
                    RuleAttribute::Handle(h) => handle = Some(h),
                    RuleAttribute::UserData(u) => comment = udata_comment_of(&u),
                    RuleAttribute::Table(t) => table = Some(t),
                    RuleAttribute::Chain(c) => chain = Some(c),
                    RuleAttribute::Expressions(e) => drops_all = drops_every_packet(&e),
                    _ => {}
                }
            }
            // The kernel filters by table and chain; checked again all the same.
            (table.as_deref() == Some(&at.table) && chain.as_deref() == Some(&at.chain))
                .then_some(())?;
            Some(RuleInfo {
                handle: handle?,
                comment,
                drops_all,
            })
        })
        .collect())
}

/// Whether a rule made of `exprs` drops or rejects every packet (see [`RuleInfo::drops_all`]).
fn drops_every_packet(exprs: &[ListAttribute<ExpressionAttribute>]) -> bool {
    let mut verdicts = Vec::new();
    for e in exprs {
        let ListAttribute::Element(attrs) = e else {
            return false;
        };
        let name = attrs.iter().find_map(|a| match a {
            ExpressionAttribute::Name(n) => Some(n.as_str()),
            _ => None,
        });
        match name {
            Some("counter" | "log") => {}
            Some("reject") => verdicts.push(true),
            Some("immediate") => {
                let drop = attrs.iter().any(|a| {
                    matches!(a, ExpressionAttribute::Data(Expressions::Immediate(imm))
                        if imm.iter().any(|i| matches!(i,
                            Immediate::Data(DataAttribute::Verdict(v))
                                if v.iter().any(|c| matches!(c,
                                    VerdictAttribute::Code(code) if u32::from(*code) == NF_DROP)))))
                });
                verdicts.push(drop);
            }
            _ => return false,
        }
    }
    verdicts == [true]
}

/// NF_DROP, as a chain policy.
pub const POLICY_DROP: u32 = NF_DROP;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::plan::{BaseChain, Rule};
    use netlink_packet_netfilter::nftables::ExpressionAttribute;

    /// Every netlink message of `buf`, parsed back with the same library.
    fn messages(buf: &[u8]) -> Vec<NetlinkMessage<NetfilterMessage>> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            out.push(NetlinkMessage::deserialize(&buf[off..off + len]).unwrap());
            off += len.div_ceil(4) * 4;
        }
        out
    }

    fn add_rule(exprs: Vec<Expr>) -> Op {
        Op::AddRule(Rule {
            chain: "forward".to_string(),
            exprs,
        })
    }

    #[test]
    fn rule_comments_are_libnftnl_user_data() {
        let u = udata_comment("plugnet bridge br0");
        assert_eq!(&u[..2], &[0, 19]);
        assert_eq!(u.last(), Some(&0));
        assert_eq!(udata_comment_of(&u).as_deref(), Some("plugnet bridge br0"));
        // Another TLV first (nft's rule user data may hold more than a comment).
        let mut two = vec![7u8, 2, 1, 2];
        two.extend(&u);
        assert_eq!(
            udata_comment_of(&two).as_deref(),
            Some("plugnet bridge br0")
        );
        // Cut short or empty: no comment, no panic.
        assert_eq!(udata_comment_of(&u[..5]), None);
        assert_eq!(udata_comment_of(&[]), None);
    }

    #[test]
    fn batch_is_framed_numbered_and_flagged_like_libnftnl() {
        let ops = [
            Op::AddTable(Table::Inet),
            Op::AddChain("c".into()),
            add_rule(vec![Expr::Counter]),
            Op::DelChain("c".into()),
        ];
        let msgs = messages(&batch(&ops));
        assert_eq!(msgs.len(), ops.len() + 2);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.header.sequence_number).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        // NFNL_MSG_BATCH_BEGIN / END, addressed to the nf_tables subsystem.
        for (m, kind) in [(&msgs[0], 0x10), (&msgs[5], 0x11)] {
            assert_eq!(m.header.message_type, kind);
            let NetlinkPayload::InnerMessage(inner) = &m.payload else {
                panic!("batch marker is not a netfilter message: {m:?}")
            };
            assert_eq!(inner.header.res_id, NFNL_SUBSYS_NFTABLES);
        }
        let flags: Vec<u16> = msgs.iter().map(|m| m.header.flags).collect();
        let req = NLM_F_REQUEST | NLM_F_ACK;
        let append = req | NLM_F_CREATE | NLM_F_APPEND | NLM_F_EXCL;
        assert_eq!(flags, [req, req, req | NLM_F_CREATE, append, req, req]);
    }

    /// The kernel expressions one statement becomes, by name.
    fn lowered(e: Expr) -> Vec<String> {
        let msgs = messages(&batch(&[add_rule(vec![e])]));
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)),
            ..
        }) = &msgs[1].payload
        else {
            panic!("not a NEWRULE: {:?}", msgs[1]);
        };
        let exprs = rule
            .attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Expressions(e) => Some(e),
                _ => None,
            })
            .expect("rule has expressions");
        exprs
            .iter()
            .map(|e| match e {
                ListAttribute::Element(attrs) => attrs
                    .iter()
                    .find_map(|a| match a {
                        ExpressionAttribute::Name(n) => Some(n.clone()),
                        _ => None,
                    })
                    .expect("expression has a name"),
                other => panic!("not an expression: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn statements_lower_to_nfts_own_expressions() {
        let net = |s: &str| s.parse().unwrap();
        let addr = |dst, n: &str, negate| Expr::Addr {
            dst,
            net: net(n),
            negate,
        };
        assert_eq!(
            lowered(addr(false, "10.1.0.0/16", false)),
            ["payload", "bitwise", "cmp"]
        );
        assert_eq!(lowered(addr(true, "10.1.0.5/32", true)), ["payload", "cmp"]);
        assert_eq!(lowered(Expr::CtEstablished), ["ct", "bitwise", "cmp"]);
        assert_eq!(lowered(Expr::FibDaddrLocal), ["fib", "cmp"]);
        let dnat = Expr::Dnat {
            addr: "10.1.0.5".parse().unwrap(),
            port: 80,
        };
        assert_eq!(lowered(dnat), ["immediate", "immediate", "nat"]);
        assert_eq!(lowered(Expr::Masquerade), ["masq"]);
        assert_eq!(lowered(Expr::Reject), ["reject"]);
        let jump = Expr::Verdict(Verdict::Jump("x".into()));
        assert_eq!(lowered(jump), ["immediate"]);
    }

    #[test]
    fn negative_hook_priority_reaches_the_kernel_as_its_twos_complement() {
        let chain = BaseChain {
            name: "prerouting",
            hook: PHook::Prerouting,
            priority: -100,
            nat: true,
        };
        let (NfTablesMessage::NewChain(c), _) = message(&Op::AddBaseChain(chain)) else {
            panic!("not a NEWCHAIN")
        };
        let hook = c
            .attributes
            .iter()
            .find_map(|a| match a {
                ChainAttribute::Hook(h) => Some(h.clone()),
                _ => None,
            })
            .expect("base chain has a hook");
        assert!(hook.contains(&Hook::Priority(-100i32 as u32)));
        assert!(c.attributes.contains(&ChainAttribute::Type("nat".into())));
    }

    #[test]
    fn acks_are_read_by_sequence_number() {
        // NLMSG_ERROR with the original header only (capped), as the socket asks for.
        let ack = |seq: u32, err: i32| {
            let mut m = Vec::new();
            m.extend(36u32.to_ne_bytes());
            m.extend((libc::NLMSG_ERROR as u16).to_ne_bytes());
            m.extend(0u16.to_ne_bytes());
            m.extend(seq.to_ne_bytes());
            m.extend(0u32.to_ne_bytes());
            m.extend(err.to_ne_bytes());
            m.extend(16u32.to_ne_bytes());
            m.extend(0u32.to_ne_bytes());
            m.extend(seq.to_ne_bytes());
            m.extend(0u32.to_ne_bytes());
            m
        };
        let mut buf = ack(7, -libc::ENOENT);
        buf.extend(ack(8, 0));
        assert_eq!(parse_acks(&buf), vec![(7, libc::ENOENT), (8, 0)]);
        assert_eq!(parse_acks(&buf[..20]), vec![], "a cut message is not read");
    }
}
