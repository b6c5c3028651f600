//! The only module that speaks nf_tables netlink (libnftnl through the `nftnl` crate, sent with
//! `mnl`): runs a list of [`Op`]s as ONE atomic batch and answers existence queries;
//! invariant: a batch either commits entirely or leaves the ruleset as it was, and an error
//! names the operation the kernel refused.

use std::cell::{Cell, RefCell};
use std::ffi::{c_void, CStr, CString};
use std::io;
use std::net::IpAddr;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;
use nftnl::{Batch, Chain, ChainType, MsgType, NlMsg, Policy, ProtoFamily, Rule, Table};

use super::plan::{ElemData, Expr, Fam, Field, Hook, KeyVal, Op, SetData, SetDef, Verdict, TABLE};

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

const NFPROTO_INET: u16 = libc::NFPROTO_INET as u16;
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_00: u32 = 8;

thread_local! {
    /// One nfnetlink socket per thread and network namespace, kept open: closing a netfilter
    /// socket waits for nf_tables' deferred destruction of the last transaction (an RCU grace
    /// period, 5-20 ms here), so a socket per request would put that wait on every call.
    static CONN: RefCell<Option<(u64, mnl::Socket)>> = const { RefCell::new(None) };
}

fn netns_id() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Runs `f` with this thread's socket for its current network namespace, with nothing
/// left unread from earlier requests.
pub(super) fn with_socket<T>(f: impl FnOnce(&mnl::Socket) -> io::Result<T>) -> io::Result<T> {
    let ns = netns_id()?;
    CONN.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(id, _)| *id) != Some(ns) {
            *c = Some((ns, mnl::Socket::new(mnl::Bus::Netfilter)?));
        }
        let sock = &c.as_ref().expect("just set").1;
        let mut scratch = vec![0u8; 8192];
        while recv_nowait(sock, &mut scratch).is_some() {}
        let r = f(sock);
        if r.is_err() {
            // Unknown leftovers: start afresh next time.
            *c = None;
        }
        r
    })
}

fn table_name() -> CString {
    CString::new(TABLE).expect("constant has no NUL")
}

fn cstr(s: &str) -> CString {
    // Names were charset-checked or are constants: no interior NUL.
    CString::new(s).expect("validated names have no NUL")
}

/// Runs `ops` as one transaction. An empty list is a no-op.
pub fn run(ops: &[Op]) -> Result<(), NftError> {
    if ops.is_empty() {
        return Ok(());
    }
    let table = Table::new(table_name(), ProtoFamily::Inet);
    let mut batch = Batch::new();
    let mut seqs: Vec<u32> = Vec::with_capacity(ops.len());
    for op in ops {
        let seq = Cell::new(0);
        add_op(&mut batch, &table, op, &seq);
        seqs.push(seq.get());
    }
    let batch = batch.finalize();
    let io_err = |op: &str| {
        let op = op.to_string();
        move |source| NftError { op, source }
    };
    let first_err = with_socket(|sock| {
        send_batch(sock, &batch)?;
        let total = batch.sequence_numbers().len();
        let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
        let mut acked = 0usize;
        let mut first_err: Option<(u32, i32)> = None;
        while acked < total {
            let n = if first_err.is_some() {
                // After an error the kernel may not ack the rest: drain what is there, then stop.
                match recv_nowait(sock, &mut buf) {
                    Some(n) => n,
                    None => break,
                }
            } else {
                sock.recv_raw(&mut buf)?
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
            let op = seqs
                .iter()
                .position(|s| *s == seq)
                .map(|i| ops[i].to_string())
                .unwrap_or_else(|| "commit batch".to_string());
            Err(NftError {
                op,
                source: io::Error::from_raw_os_error(errno),
            })
        }
    }
}

/// Sends the whole batch in ONE sendmsg: nfnetlink commits only a batch that begins and ends
/// within one message (`mnl::Socket::send_all` sends page by page, which splits big batches).
/// The socket buffers are grown (as nft does) so that the batch fits and every ack can queue:
/// the kernel answers the whole batch before we read anything.
fn send_batch(sock: &mnl::Socket, batch: &nftnl::FinalizedBatch) -> io::Result<()> {
    let fd = unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) };
    let pages: Vec<&[u8]> = batch.iter().collect();
    let total: usize = pages.iter().map(|p| p.len()).sum();
    let acks = batch.sequence_numbers().len();
    grow_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, total + 64 * 1024);
    grow_buffer(
        fd,
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        acks * 2048 + 256 * 1024,
    );
    let mut iov: Vec<libc::iovec> = pages
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != total {
        return Err(io::Error::other(format!(
            "sendmsg sent {n} of {total} bytes"
        )));
    }
    Ok(())
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

fn recv_nowait(sock: &mnl::Socket, buf: &mut [u8]) -> Option<usize> {
    let fd = unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) };
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    (n > 0).then_some(n as usize)
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

/// Wraps a message so the batch tells us the sequence number it was given.
struct Seq<'a, T: NlMsg>(&'a T, &'a Cell<u32>);

unsafe impl<T: NlMsg> NlMsg for Seq<'_, T> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        self.1.set(seq);
        unsafe { self.0.write(buf, seq, msg_type) }
    }
}

fn add_op(batch: &mut Batch, table: &Table, op: &Op, seq: &Cell<u32>) {
    match op {
        Op::AddTable => batch.add(&Seq(table, seq), MsgType::Add),
        Op::DelTable => batch.add(&Seq(table, seq), MsgType::Del),
        Op::AddBaseChain(c) => {
            let mut chain = Chain::new(cstr(c.name), table);
            let hook = match c.hook {
                Hook::Prerouting => nftnl::Hook::PreRouting,
                Hook::Forward => nftnl::Hook::Forward,
                Hook::Output => nftnl::Hook::Out,
                Hook::Postrouting => nftnl::Hook::PostRouting,
            };
            chain.set_hook(hook, c.priority);
            chain.set_type(if c.nat {
                ChainType::Nat
            } else {
                ChainType::Filter
            });
            chain.set_policy(Policy::Accept);
            batch.add(&Seq(&chain, seq), MsgType::Add);
        }
        Op::AddChain(name) => batch.add(&Seq(&Chain::new(cstr(name), table), seq), MsgType::Add),
        Op::DelChain(name) => batch.add(&Seq(&Chain::new(cstr(name), table), seq), MsgType::Del),
        Op::AddSet(def) => batch.add(&Seq(&RawSet::definition(def), seq), MsgType::Add),
        Op::AddRule(r) => {
            let chain = Chain::new(cstr(&r.chain), table);
            let mut rule = Rule::new(&chain);
            for e in &r.exprs {
                for raw in lower(e) {
                    rule.add_expr(&raw);
                }
            }
            batch.add(&Seq(&rule, seq), MsgType::Add);
        }
        Op::AddElem { set, key, data } => batch.add(
            &Seq(
                &RawSet::element(set, key, data.as_ref(), libc::NFT_MSG_NEWSETELEM),
                seq,
            ),
            MsgType::Add,
        ),
        Op::DelElem { set, key } => batch.add(
            &Seq(
                &RawSet::element(set, key, None, libc::NFT_MSG_DELSETELEM),
                seq,
            ),
            MsgType::Del,
        ),
    }
}

/// A libnftnl expression built attribute by attribute (the `nftnl` crate's typed expressions
/// cover too little: no fib, no concatenations, no verdict maps, no 32-bit registers).
struct RawExpr {
    name: &'static CStr,
    u32s: Vec<(u32, u32)>,
    data: Vec<(u32, Vec<u8>)>,
    strs: Vec<(u32, CString)>,
}

impl RawExpr {
    fn new(name: &'static CStr) -> Self {
        RawExpr {
            name,
            u32s: vec![],
            data: vec![],
            strs: vec![],
        }
    }
    fn u32(mut self, attr: u32, v: u32) -> Self {
        self.u32s.push((attr, v));
        self
    }
    fn data(mut self, attr: u32, v: Vec<u8>) -> Self {
        self.data.push((attr, v));
        self
    }
    fn str(mut self, attr: u32, v: &str) -> Self {
        self.strs.push((attr, cstr(v)));
        self
    }
}

impl nftnl::expr::Expression for RawExpr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        unsafe {
            let e = sys::nftnl_expr_alloc(self.name.as_ptr());
            let e = NonNull::new(e).expect("nftnl_expr_alloc: out of memory");
            for (a, v) in &self.u32s {
                sys::nftnl_expr_set_u32(e.as_ptr(), *a as u16, *v);
            }
            for (a, v) in &self.data {
                sys::nftnl_expr_set(e.as_ptr(), *a as u16, v.as_ptr().cast(), v.len() as u32);
            }
            for (a, v) in &self.strs {
                sys::nftnl_expr_set_str(e.as_ptr(), *a as u16, v.as_ptr());
            }
            e
        }
    }
}

fn meta(key: i32, reg: u32) -> RawExpr {
    RawExpr::new(c"meta")
        .u32(sys::NFTNL_EXPR_META_KEY, key as u32)
        .u32(sys::NFTNL_EXPR_META_DREG, reg)
}

fn payload(base: i32, offset: u32, len: u32, reg: u32) -> RawExpr {
    RawExpr::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, reg)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base as u32)
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
}

fn cmp(op: i32, data: Vec<u8>) -> RawExpr {
    RawExpr::new(c"cmp")
        .u32(sys::NFTNL_EXPR_CMP_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_CMP_OP, op as u32)
        .data(sys::NFTNL_EXPR_CMP_DATA, data)
}

fn bitwise(mask: Vec<u8>) -> RawExpr {
    let len = mask.len();
    RawExpr::new(c"bitwise")
        .u32(sys::NFTNL_EXPR_BITWISE_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_LEN, len as u32)
        .data(sys::NFTNL_EXPR_BITWISE_MASK, mask)
        .data(sys::NFTNL_EXPR_BITWISE_XOR, vec![0; len])
}

fn immediate(reg: u32, data: Vec<u8>) -> RawExpr {
    RawExpr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, reg)
        .data(sys::NFTNL_EXPR_IMM_DATA, data)
}

fn verdict(v: &Verdict) -> RawExpr {
    let code = verdict_code(v);
    let e = RawExpr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, REG_VERDICT)
        .u32(sys::NFTNL_EXPR_IMM_VERDICT, code);
    match v {
        Verdict::Jump(chain) => e.str(sys::NFTNL_EXPR_IMM_CHAIN, chain),
        _ => e,
    }
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
fn load(field: Field, reg: u32) -> RawExpr {
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
    }
}

/// The kernel expressions one plugnet statement is made of (nft's own bytecode for it).
fn lower(e: &Expr) -> Vec<RawExpr> {
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
                RawExpr::new(c"ct")
                    .u32(sys::NFTNL_EXPR_CT_KEY, key as u32)
                    .u32(sys::NFTNL_EXPR_CT_DREG, REG_1),
                bitwise(mask.to_ne_bytes().to_vec()),
                cmp(libc::NFT_CMP_NEQ, vec![0; 4]),
            ]
        }
        Expr::FibDaddrLocal => vec![
            RawExpr::new(c"fib")
                .u32(sys::NFTNL_EXPR_FIB_DREG, REG_1)
                .u32(sys::NFTNL_EXPR_FIB_RESULT, 3) // NFT_FIB_RESULT_ADDRTYPE
                .u32(sys::NFTNL_EXPR_FIB_FLAGS, 2), // NFTA_FIB_F_DADDR
            cmp(EQ, 2u32.to_ne_bytes().to_vec()), // RTN_LOCAL
        ],
        Expr::Lookup { set, key, vmap } => {
            // A concatenation is loaded into consecutive 32-bit registers, each part padded to
            // 4 bytes (NFT_REG32_00 is the first word of NFT_REG_1), as nft does.
            let mut v = Vec::new();
            let mut reg32 = REG32_00;
            for f in key {
                v.push(load(*f, reg32));
                reg32 += f.byte_len().div_ceil(4);
            }
            let mut l = RawExpr::new(c"lookup")
                .u32(sys::NFTNL_EXPR_LOOKUP_SREG, REG32_00)
                .str(sys::NFTNL_EXPR_LOOKUP_SET, set);
            if *vmap {
                l = l.u32(sys::NFTNL_EXPR_LOOKUP_DREG, REG_VERDICT);
            }
            v.push(l);
            v
        }
        Expr::Dnat { addr, port } => {
            let family = if addr.is_ipv4() {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            };
            vec![
                immediate(REG_1, addr_bytes(addr)),
                immediate(REG_2, port.to_be_bytes().to_vec()),
                RawExpr::new(c"nat")
                    .u32(sys::NFTNL_EXPR_NAT_TYPE, libc::NFT_NAT_DNAT as u32)
                    .u32(sys::NFTNL_EXPR_NAT_FAMILY, family as u32)
                    .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, REG_1)
                    .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, REG_2),
            ]
        }
        Expr::DnatMap { fam, set, key } => {
            let mut v = Vec::new();
            let mut reg32 = REG32_00;
            for f in key {
                v.push(load(*f, reg32));
                reg32 += f.byte_len().div_ceil(4);
            }
            // The map yields address . port into NFT_REG_1 onwards: the port follows the
            // address in the next 32-bit register.
            let (family, port_reg) = match fam {
                Fam::V4 => (libc::NFPROTO_IPV4, REG32_00 + 1),
                Fam::V6 => (libc::NFPROTO_IPV6, REG32_00 + 4),
            };
            v.push(
                RawExpr::new(c"lookup")
                    .u32(sys::NFTNL_EXPR_LOOKUP_SREG, REG32_00)
                    .u32(sys::NFTNL_EXPR_LOOKUP_DREG, REG_1)
                    .str(sys::NFTNL_EXPR_LOOKUP_SET, set),
            );
            v.push(
                RawExpr::new(c"nat")
                    .u32(sys::NFTNL_EXPR_NAT_TYPE, libc::NFT_NAT_DNAT as u32)
                    .u32(sys::NFTNL_EXPR_NAT_FAMILY, family as u32)
                    .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, REG_1)
                    .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, port_reg),
            );
            v
        }
        Expr::Masquerade => vec![RawExpr::new(c"masq")],
        Expr::Counter => vec![RawExpr::new(c"counter")],
        Expr::Reject => vec![RawExpr::new(c"reject")
            .u32(
                sys::NFTNL_EXPR_REJECT_TYPE,
                libc::NFT_REJECT_ICMPX_UNREACH as u32,
            )
            .u32(
                sys::NFTNL_EXPR_REJECT_CODE,
                libc::NFT_REJECT_ICMPX_ADMIN_PROHIBITED as u32,
            )],
        Expr::Verdict(v) => vec![verdict(v)],
    }
}

/// A set definition or a one-element set-element message, built with raw libnftnl.
struct RawSet {
    set: NonNull<sys::nftnl_set>,
    msg: i32,
    flags: u16,
}

impl RawSet {
    fn base(name: &str) -> NonNull<sys::nftnl_set> {
        unsafe {
            let s = NonNull::new(sys::nftnl_set_alloc()).expect("nftnl_set_alloc: out of memory");
            let t = table_name();
            let n = cstr(name);
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16, t.as_ptr());
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_NAME as u16, n.as_ptr());
            sys::nftnl_set_set_u32(
                s.as_ptr(),
                sys::NFTNL_SET_FAMILY as u16,
                u32::from(NFPROTO_INET),
            );
            s
        }
    }

    fn definition(def: &SetDef) -> RawSet {
        let s = Self::base(def.name);
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
        unsafe {
            sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_KEY_TYPE as u16, key_type);
            sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_KEY_LEN as u16, key_len);
            // The kernel requires a transaction-local id for every new set.
            sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_ID as u16, set_id(def.name));
            // nft's userdata: the key's byte order (TLV type 0 = KEYBYTEORDER; 1 host order as
            // nft uses for strings, 2 big-endian), so `nft list` prints single-field keys.
            let order = if matches!(def.key[0], Field::Iifname | Field::Oifname) {
                1
            } else {
                2
            };
            let udata: [u8; 6] = [0, 4, order, 0, 0, 0];
            sys::nftnl_set_set_data(
                s.as_ptr(),
                sys::NFTNL_SET_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            );
            let map = |data_type: u32| {
                sys::nftnl_set_set_u32(
                    s.as_ptr(),
                    sys::NFTNL_SET_FLAGS as u16,
                    libc::NFT_SET_MAP as u32,
                );
                sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_DATA_TYPE as u16, data_type);
            };
            match &def.data {
                SetData::None => {}
                SetData::Verdict => map(libc::NFT_DATA_VERDICT),
                SetData::Value(fields) => {
                    map(fields.iter().fold(0u32, |acc, f| (acc << 6) | f.nft_type()));
                    let len: u32 = fields.iter().map(|f| f.byte_len().div_ceil(4) * 4).sum();
                    sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_DATA_LEN as u16, len);
                }
            }
        }
        RawSet {
            set: s,
            msg: libc::NFT_MSG_NEWSET,
            flags: (libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16,
        }
    }

    fn element(set: &str, key: &[KeyVal], data: Option<&ElemData>, msg: i32) -> RawSet {
        let s = Self::base(set);
        let mut k = KeyVal::concat(key);
        if key.len() == 1 {
            if let KeyVal::Ifname(n) = &key[0] {
                k = n.as_bytes().to_vec();
                k.resize(16, 0);
            }
        }
        unsafe {
            let e = sys::nftnl_set_elem_alloc();
            assert!(!e.is_null(), "nftnl_set_elem_alloc: out of memory");
            sys::nftnl_set_elem_set(
                e,
                sys::NFTNL_SET_ELEM_KEY as u16,
                k.as_ptr().cast(),
                k.len() as u32,
            );
            match data {
                Some(ElemData::Verdict(v)) => {
                    sys::nftnl_set_elem_set_u32(
                        e,
                        sys::NFTNL_SET_ELEM_VERDICT as u16,
                        verdict_code(v),
                    );
                    if let Verdict::Jump(chain) = v {
                        let c = cstr(chain);
                        sys::nftnl_set_elem_set_str(
                            e,
                            sys::NFTNL_SET_ELEM_CHAIN as u16,
                            c.as_ptr(),
                        );
                    }
                }
                Some(ElemData::Value(v)) => {
                    let d = KeyVal::concat(v);
                    sys::nftnl_set_elem_set(
                        e,
                        sys::NFTNL_SET_ELEM_DATA as u16,
                        d.as_ptr().cast(),
                        d.len() as u32,
                    );
                }
                None => {}
            }
            sys::nftnl_set_elem_add(s.as_ptr(), e);
        }
        let flags = if msg == libc::NFT_MSG_NEWSETELEM {
            libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK
        } else {
            libc::NLM_F_ACK
        };
        RawSet {
            set: s,
            msg,
            flags: flags as u16,
        }
    }
}

fn set_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

unsafe impl NlMsg for RawSet {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                self.msg as u16,
                NFPROTO_INET,
                self.flags,
                seq,
            );
            if self.msg == libc::NFT_MSG_NEWSET {
                sys::nftnl_set_nlmsg_build_payload(hdr, self.set.as_ptr());
            } else {
                sys::nftnl_set_elems_nlmsg_build_payload(hdr, self.set.as_ptr());
            }
        }
    }
}

impl Drop for RawSet {
    fn drop(&mut self) {
        unsafe { sys::nftnl_set_free(self.set.as_ptr()) };
    }
}

/// What a single GET request found.
fn get(build: impl FnOnce(*mut libc::c_char, u32)) -> io::Result<bool> {
    get_parsed(build, ignore_reply, &mut ())
}

fn ignore_reply(_: &mnl::mnl_sys::libc::nlmsghdr, _: &mut ()) -> libc::c_int {
    MNL_CB_OK
}

/// A single GET request whose reply messages go through `parse`; whether the object exists.
fn get_parsed<T>(
    build: impl FnOnce(*mut libc::c_char, u32),
    parse: mnl::Callback<T>,
    data: &mut T,
) -> io::Result<bool> {
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let seq = 1;
    build(buf.as_mut_ptr().cast(), seq);
    let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    let msg = buf[..len].to_vec();
    with_socket(|sock| {
        sock.send(&msg)?;
        loop {
            let n = sock.recv_raw(&mut buf)?;
            if n == 0 {
                return Ok(true);
            }
            match mnl::cb_run2(&buf[..n], seq, sock.portid(), parse, data) {
                Ok(mnl::CbResult::Stop) => return Ok(true),
                Ok(mnl::CbResult::Ok) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    })
}

/// Builds a GETCHAIN request for chain `name` of `table` in `family` into `buf`.
fn build_getchain(buf: *mut libc::c_char, seq: u32, family: u16, table: &CStr, name: &str) {
    unsafe {
        let c = NonNull::new(sys::nftnl_chain_alloc()).expect("nftnl_chain_alloc: out of memory");
        let n = cstr(name);
        sys::nftnl_chain_set_str(c.as_ptr(), sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
        sys::nftnl_chain_set_str(c.as_ptr(), sys::NFTNL_CHAIN_NAME as u16, n.as_ptr());
        let hdr = sys::nftnl_nlmsg_build_hdr(
            buf,
            libc::NFT_MSG_GETCHAIN as u16,
            family,
            libc::NLM_F_ACK as u16,
            seq,
        );
        sys::nftnl_chain_nlmsg_build_payload(hdr, c.as_ptr());
        sys::nftnl_chain_free(c.as_ptr());
    }
}

/// Does plugnet's table exist?
pub fn table_exists() -> io::Result<bool> {
    get(|buf, seq| unsafe {
        let t = NonNull::new(sys::nftnl_table_alloc()).expect("nftnl_table_alloc: out of memory");
        let name = table_name();
        sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
        let hdr = sys::nftnl_nlmsg_build_hdr(
            buf,
            libc::NFT_MSG_GETTABLE as u16,
            NFPROTO_INET,
            libc::NLM_F_ACK as u16,
            seq,
        );
        sys::nftnl_table_nlmsg_build_payload(hdr, t.as_ptr());
        sys::nftnl_table_free(t.as_ptr());
    })
}

/// Does chain `name` exist in plugnet's table?
pub fn chain_exists(name: &str) -> io::Result<bool> {
    get(|buf, seq| build_getchain(buf, seq, NFPROTO_INET, &table_name(), name))
}

/// Does set/map `name` exist in plugnet's table?
pub fn set_exists(name: &str) -> io::Result<bool> {
    get(|buf, seq| unsafe {
        let st = NonNull::new(sys::nftnl_set_alloc()).expect("nftnl_set_alloc: out of memory");
        let t = table_name();
        let n = cstr(name);
        sys::nftnl_set_set_str(st.as_ptr(), sys::NFTNL_SET_TABLE as u16, t.as_ptr());
        sys::nftnl_set_set_str(st.as_ptr(), sys::NFTNL_SET_NAME as u16, n.as_ptr());
        let hdr = sys::nftnl_nlmsg_build_hdr(
            buf,
            libc::NFT_MSG_GETSET as u16,
            NFPROTO_INET,
            libc::NLM_F_ACK as u16,
            seq,
        );
        sys::nftnl_set_nlmsg_build_payload(hdr, st.as_ptr());
        sys::nftnl_set_free(st.as_ptr());
    })
}

/// Does element `key` exist in set/map `set`?
pub fn elem_exists(set: &str, key: &[KeyVal]) -> io::Result<bool> {
    let raw = RawSet::element(set, key, None, libc::NFT_MSG_GETSETELEM);
    get(|buf, seq| unsafe {
        let hdr = sys::nftnl_nlmsg_build_hdr(
            buf,
            libc::NFT_MSG_GETSETELEM as u16,
            NFPROTO_INET,
            libc::NLM_F_ACK as u16,
            seq,
        );
        sys::nftnl_set_elems_nlmsg_build_payload(hdr, raw.set.as_ptr());
    })
}

const NF_DROP: u32 = 0;
const MNL_CB_OK: libc::c_int = 1;

/// What the policy of iptables-nft's `FORWARD` chain (table `filter`) in `family`
/// (`NFPROTO_IPV4`, `NFPROTO_IPV6`) says: `Some(true)` drops, `Some(false)` accepts, `None`
/// when there is no such chain (no iptables-nft user on this host). One netlink request.
pub fn iptables_forward_drops(family: u8) -> io::Result<Option<bool>> {
    Ok(iptables_chain(family, "FORWARD")?.map(|policy| policy == Some(NF_DROP)))
}

/// Chain `name` of iptables-nft's `filter` table in `family`: `None` when it does not exist,
/// else its policy (`None` for a chain without one, i.e. not a base chain).
pub fn iptables_chain(family: u8, name: &str) -> io::Result<Option<Option<u32>>> {
    let mut policy: Option<u32> = None;
    let found = get_parsed(
        |buf, seq| build_getchain(buf, seq, u16::from(family), &cstr("filter"), name),
        chain_policy,
        &mut policy,
    )?;
    Ok(found.then_some(policy))
}

/// `cb_run2` callback: the policy of the chain in `msg`, when it has one (base chains do).
fn chain_policy(msg: &mnl::mnl_sys::libc::nlmsghdr, policy: &mut Option<u32>) -> libc::c_int {
    // SAFETY: `msg` is a complete netlink message validated by `cb_run2`; the chain object is
    // allocated, filled and freed here.
    unsafe {
        let Some(c) = NonNull::new(sys::nftnl_chain_alloc()) else {
            return MNL_CB_OK;
        };
        let attr = sys::NFTNL_CHAIN_POLICY as u16;
        if sys::nftnl_chain_nlmsg_parse(
            (msg as *const mnl::mnl_sys::libc::nlmsghdr).cast(),
            c.as_ptr(),
        ) >= 0
            && sys::nftnl_chain_is_set(c.as_ptr(), attr)
        {
            *policy = Some(sys::nftnl_chain_get_u32(c.as_ptr(), attr));
        }
        sys::nftnl_chain_free(c.as_ptr());
    }
    MNL_CB_OK
}
