//! The only module that speaks nf_tables netlink (messages built with the rust-netlink
//! project's `netlink-packet-netfilter`, sent on a `netlink-sys` socket; no C library, so
//! the CNI binaries link statically): runs a list of [`Op`]s as ONE atomic batch and answers
//! existence queries; invariant: a batch either commits entirely or leaves the ruleset as it
//! was, and an error names the operation the kernel refused.
//!
//! Layers: [`super::nfnl`] is the socket, `encode` turns an [`Op`] into its message, `query`
//! answers what the ruleset holds (plugnet's objects, and the host's own tables for hostfw and
//! hostnft), `monitor` listens to ruleset changes.

mod encode;
mod monitor;
mod query;
#[cfg(test)]
mod tests;

use std::io;

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::NetfilterProtoFamily;

use super::nfnl::{parse_acks, put, recv_buf, send_batch, with_socket};
use super::plan::{Op, Table};
use encode::message;

pub use monitor::Monitor;
pub use query::{
    chain_exists, chain_holds, chain_rules, elem_exists, forward_base_chains, iptables_chain,
    iptables_forward_drops, set_exists, table_exists, tables, TableInfo, POLICY_DROP,
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
