//! Flushes stale UDP conntrack entries for a host port through ctnetlink (dump, then delete by
//! original tuple), as portmap does; invariant: only entries whose original destination port is
//! the mapped host port and whose protocol is UDP are deleted.

use std::io;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Deletes every UDP conntrack entry (both families) whose original destination port is one
/// of `ports`. Returns how many were deleted.
pub fn flush_udp_ports(ports: &[u16]) -> io::Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let tuples = dump_matching(family, ports)?;
        for t in tuples {
            match request(&message(
                IPCTNL_MSG_CT_DELETE,
                libc::NLM_F_ACK as u16,
                family,
                &t,
            )) {
                Ok(()) => deleted += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

fn message(kind: u16, flags: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend((libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // seq
    m.extend(0u32.to_ne_bytes()); // pid
    m.extend([family, 0, 0, 0]); // nfgenmsg: family, version, res_id
    m.extend(attrs);
    m
}

fn request(msg: &[u8]) -> io::Result<()> {
    super::nfnl::with_socket(|sock| {
        sock.send(msg)?;
        sock.ack(1)
    })
}

/// The raw CTA_TUPLE_ORIG attributes (header included) of matching entries.
fn dump_matching(family: u8, ports: &[u16]) -> io::Result<Vec<Vec<u8>>> {
    super::nfnl::with_socket(|sock| dump_on(sock, family, ports))
}

fn dump_on(sock: &super::nfnl::NfSocket, family: u8, ports: &[u16]) -> io::Result<Vec<Vec<u8>>> {
    sock.send(&message(
        IPCTNL_MSG_CT_GET,
        libc::NLM_F_DUMP as u16,
        family,
        &[],
    ))?;
    let mut buf = super::nfnl::recv_buf();
    let mut out = Vec::new();
    loop {
        let n = sock.recv(&mut buf)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
            if len < 16 || off + len > n {
                break;
            }
            if kind == libc::NLMSG_DONE as u16 {
                return Ok(out);
            }
            if kind == libc::NLMSG_ERROR as u16 {
                let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(-err));
                }
            } else if len > 20 {
                for (t, payload, whole) in attrs(&buf[off + 20..off + len]) {
                    if t == CTA_TUPLE_ORIG && orig_matches(payload, ports) {
                        out.push(whole.to_vec());
                    }
                }
            }
            off += len.div_ceil(4) * 4;
        }
    }
}

fn orig_matches(tuple: &[u8], ports: &[u16]) -> bool {
    for (t, payload, _) in attrs(tuple) {
        if t == CTA_TUPLE_PROTO {
            let mut proto = None;
            let mut dport = None;
            for (pt, pv, _) in attrs(payload) {
                match pt {
                    CTA_PROTO_NUM if !pv.is_empty() => proto = Some(pv[0]),
                    CTA_PROTO_DST_PORT if pv.len() >= 2 => {
                        dport = Some(u16::from_be_bytes([pv[0], pv[1]]))
                    }
                    _ => {}
                }
            }
            return proto == Some(libc::IPPROTO_UDP as u8)
                && dport.is_some_and(|p| ports.contains(&p));
        }
    }
    false
}

/// (type without flags, payload, whole attribute padded) for each netlink attribute.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut v = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let t = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        let padded = len.div_ceil(4) * 4;
        v.push((t, &b[4..len], &b[..len]));
        b = &b[padded.min(b.len())..];
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(t: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend(t.to_ne_bytes());
        v.extend(payload);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    }

    #[test]
    fn matches_udp_dst_port_only() {
        let proto = |p: u8, port: u16| {
            let mut inner = nla(CTA_PROTO_NUM, &[p]);
            inner.extend(nla(2, &1234u16.to_be_bytes()));
            inner.extend(nla(CTA_PROTO_DST_PORT, &port.to_be_bytes()));
            let mut t = nla(1 | 0x8000, &[0; 8]);
            t.extend(nla(CTA_TUPLE_PROTO | 0x8000, &inner));
            t
        };
        assert!(orig_matches(&proto(17, 5353), &[5353]));
        assert!(!orig_matches(&proto(6, 5353), &[5353]));
        assert!(!orig_matches(&proto(17, 5354), &[5353]));
        let msg = message(
            IPCTNL_MSG_CT_DELETE,
            0,
            2,
            &nla(CTA_TUPLE_ORIG, &proto(17, 1)),
        );
        assert_eq!(
            u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize,
            msg.len()
        );
    }
}
