//! Bandwidth shaping through netlink tc (the `bandwidth` capability): a token bucket (tbf) on
//! the host veth shapes traffic into the container; traffic out of the container is redirected
//! from the host veth's ingress to an ifb device whose tbf shapes it, as the reference
//! bandwidth plugin does; invariant: every qdisc, filter and ifb device it creates is found
//! again from (host veth, ifb name) alone, and `remove` leaves none of them.
//!
//! Why ifb + tbf and not an ingress policer: a policer can only drop what exceeds the rate, so
//! TCP sees bursts of loss and settles well below the limit; tbf on ifb queues (25 ms) and
//! shapes, so a TCP flow gets the configured rate in both directions.

use futures::TryStreamExt;
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkIfb};
use serde::{Deserialize, Serialize};

/// The `bandwidth` capability (`runtimeConfig.bandwidth`), named as the reference plugin names
/// it: rates in bits per second, bursts in bits; 0 or absent means "not limited".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

/// Queueing latency allowed by the buckets (the reference plugin's value).
const LATENCY_MS: u64 = 25;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("invalid bandwidth: {0}")]
    Invalid(String),
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        source: rtnetlink::Error,
    },
    #[error("bandwidth check: {0}")]
    Check(String),
}

impl TcError {
    /// The kernel errno behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TcError::Netlink { source, .. } => errno(source),
            _ => None,
        }
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> TcError {
    let step = step.into();
    move |source| TcError::Netlink { step, source }
}

impl Bandwidth {
    pub fn shapes_ingress(&self) -> bool {
        self.ingress_rate > 0
    }
    pub fn shapes_egress(&self) -> bool {
        self.egress_rate > 0
    }

    pub fn validate(&self) -> Result<(), TcError> {
        for (dir, rate, burst) in [
            ("ingress", self.ingress_rate, self.ingress_burst),
            ("egress", self.egress_rate, self.egress_burst),
        ] {
            if rate > 0 && burst == 0 {
                return Err(TcError::Invalid(format!(
                    "{dir}Rate needs a non-zero {dir}Burst"
                )));
            }
            if rate > 0 && rate < 8 {
                return Err(TcError::Invalid(format!(
                    "{dir}Rate must be at least 8 bit/s"
                )));
            }
            if burst / 8 > u64::from(u32::MAX) {
                return Err(TcError::Invalid(format!("{dir}Burst is too large")));
            }
        }
        Ok(())
    }
}

/// The ifb device for an attachment: `pnb` + 12 hex digits of a digest of its key (≤ 15 bytes).
pub fn ifb_name(network: &str, container_id: &str, ifname: &str) -> String {
    let d = crate::firewall::names::digest(&[network, container_id, ifname]);
    format!("pnb{}", &d[..12])
}

/// `struct tc_tbf_qopt` plus rate64/burst attributes for `rate` bit/s and `burst` bits.
pub fn tbf_options(rate_bits: u64, burst_bits: u64) -> Vec<TcOption> {
    let rate = rate_bits / 8; // bytes per second
    let burst = (burst_bits / 8).max(1);
    let limit = rate.saturating_mul(LATENCY_MS) / 1000 + burst;
    // Time to send `burst` bytes at `rate`, in psched ticks (64 ns).
    let buffer_ns = u128::from(burst) * 1_000_000_000 / u128::from(rate.max(1));
    let buffer_ticks = u32::try_from(buffer_ns >> 6).unwrap_or(u32::MAX);
    let mut q = Vec::with_capacity(36);
    // rate: cell_log u8, linklayer u8 (1 = ethernet: no rate table needed), overhead u16,
    // cell_align i16, mpu u16, rate u32
    q.extend([0u8, 1]);
    q.extend(0u16.to_ne_bytes());
    q.extend((-1i16).to_ne_bytes());
    q.extend(0u16.to_ne_bytes());
    q.extend(u32::try_from(rate).unwrap_or(u32::MAX).to_ne_bytes());
    q.extend([0u8; 12]); // peakrate: none
    q.extend(u32::try_from(limit).unwrap_or(u32::MAX).to_ne_bytes());
    q.extend(buffer_ticks.to_ne_bytes());
    q.extend(0u32.to_ne_bytes()); // mtu (peak bucket only)
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, q))];
    if rate >= u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            rate.to_ne_bytes().to_vec(),
        )));
    }
    let burst32 = u32::try_from(burst).unwrap_or(u32::MAX);
    opts.push(TcOption::Other(DefaultNla::new(
        TCA_TBF_BURST,
        burst32.to_ne_bytes().to_vec(),
    )));
    opts
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, TcError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("look up link {name}"))(e)),
    }
}

async fn replace_tbf(
    handle: &Handle,
    index: u32,
    rate: u64,
    burst: u64,
    dev: &str,
) -> Result<(), TcError> {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::ROOT;
    msg.header.handle = TcHandle { major: 1, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("tbf".to_string()));
    msg.attributes
        .push(TcAttribute::Options(tbf_options(rate, burst)));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut h = handle.clone();
    let mut resp = h
        .request(req)
        .map_err(nl(format!("add tbf qdisc on {dev}")))?;
    use futures::StreamExt;
    while let Some(m) = resp.next().await {
        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = m.payload {
            if e.code.is_some() {
                return Err(nl(format!("add tbf qdisc on {dev}"))(
                    rtnetlink::Error::NetlinkError(e),
                ));
            }
        }
    }
    Ok(())
}

/// Installs the shaping for one attachment (idempotent: existing qdiscs are replaced).
pub async fn apply(
    handle: &Handle,
    host_veth: &str,
    ifb: &str,
    bw: &Bandwidth,
) -> Result<(), TcError> {
    bw.validate()?;
    crate::firewall::names::check_ifname("host veth name", host_veth)
        .map_err(|e| TcError::Invalid(e.to_string()))?;
    crate::firewall::names::check_ifname("ifb name", ifb)
        .map_err(|e| TcError::Invalid(e.to_string()))?;
    let veth = link_index(handle, host_veth)
        .await?
        .ok_or_else(|| TcError::Invalid(format!("host veth {host_veth} does not exist")))?;
    if bw.shapes_ingress() {
        replace_tbf(handle, veth, bw.ingress_rate, bw.ingress_burst, host_veth).await?;
    }
    if bw.shapes_egress() {
        let ifb_index = match link_index(handle, ifb).await? {
            Some(i) => i,
            None => {
                handle
                    .link()
                    .add(LinkIfb::new(ifb).up().build())
                    .execute()
                    .await
                    .map_err(nl(format!("create ifb {ifb}")))?;
                link_index(handle, ifb)
                    .await?
                    .ok_or_else(|| TcError::Check(format!("ifb {ifb} vanished")))?
            }
        };
        replace_tbf(handle, ifb_index, bw.egress_rate, bw.egress_burst, ifb).await?;
        let has_ingress = qdisc_kinds(handle, veth)
            .await?
            .iter()
            .any(|(k, p)| k == "ingress" && *p == TcHandle::INGRESS);
        if !has_ingress {
            handle
                .qdisc()
                .add(veth as i32)
                .ingress()
                .execute()
                .await
                .map_err(nl(format!("add ingress qdisc on {host_veth}")))?;
            handle
                .traffic_filter(veth as i32)
                .add()
                .parent(0xffff_0000)
                .protocol((libc::ETH_P_ALL as u16).to_be())
                .redirect(ifb_index)
                .map_err(nl("build redirect filter"))?
                .execute()
                .await
                .map_err(nl(format!("redirect {host_veth} ingress to {ifb}")))?;
        }
    }
    Ok(())
}

/// (kind, parent) of every qdisc on `index`.
async fn qdisc_kinds(handle: &Handle, index: u32) -> Result<Vec<(String, TcHandle)>, TcError> {
    Ok(qdiscs(handle, index)
        .await?
        .into_iter()
        .map(|(k, p, _)| (k, p))
        .collect())
}

/// (kind, parent, tbf rate in bytes/s) of every qdisc on `index`.
async fn qdiscs(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(String, TcHandle, Option<u64>)>, TcError> {
    use rtnetlink::packet_core::Nla;
    let mut out = Vec::new();
    let mut q = handle.qdisc().get().index(index as i32).execute();
    while let Some(m) = q.try_next().await.map_err(nl("list qdiscs"))? {
        if m.header.index != index as i32 {
            continue;
        }
        let mut kind = None;
        let mut rate = None;
        for a in &m.attributes {
            match a {
                TcAttribute::Kind(k) => kind = Some(k.clone()),
                TcAttribute::Options(opts) => {
                    for o in opts {
                        let TcOption::Other(nla) = o else { continue };
                        let mut v = vec![0u8; nla.value_len()];
                        nla.emit_value(&mut v);
                        // Options of a qdisc kind the crate does not know arrive as one
                        // TCA_OPTIONS attribute holding the nested TCA_TBF_* attributes.
                        let attrs = if nla.kind() & 0x3fff == 2 {
                            nested(&v)
                        } else {
                            vec![(nla.kind(), v)]
                        };
                        for (t, v) in attrs {
                            match t {
                                TCA_TBF_PARMS if v.len() >= 12 => {
                                    let r = u32::from_ne_bytes(v[8..12].try_into().expect("4"));
                                    rate = rate.or(Some(u64::from(r)));
                                }
                                TCA_TBF_RATE64 if v.len() >= 8 => {
                                    rate = Some(u64::from_ne_bytes(v[..8].try_into().expect("8")))
                                }
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(k) = kind {
            out.push((k, m.header.parent, rate));
        }
    }
    Ok(out)
}

/// (type without flags, value) of the netlink attributes in `b`.
fn nested(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        if len < 4 || len > b.len() {
            break;
        }
        out.push((
            u16::from_ne_bytes([b[2], b[3]]) & 0x3fff,
            b[4..len].to_vec(),
        ));
        b = &b[len.div_ceil(4).saturating_mul(4).min(b.len())..];
    }
    out
}

/// A root tbf on `index` shaping at `rate_bits` (bit/s)?
async fn has_tbf(handle: &Handle, index: u32, rate_bits: u64) -> Result<bool, TcError> {
    let want = rate_bits / 8;
    Ok(qdiscs(handle, index)
        .await?
        .iter()
        .any(|(k, p, r)| k == "tbf" && *p == TcHandle::ROOT && r.is_some_and(|r| r == want)))
}

/// Removes the shaping; success when nothing (or not even the veth) is there.
pub async fn remove(handle: &Handle, host_veth: &str, ifb: &str) -> Result<(), TcError> {
    let mut errors = Vec::new();
    if let Some(i) = link_index(handle, ifb).await? {
        if let Err(e) = handle.link().del(i).execute().await {
            if errno(&e) != Some(libc::ENODEV) {
                errors.push(nl(format!("delete ifb {ifb}"))(e));
            }
        }
    }
    if let Some(veth) = link_index(handle, host_veth).await? {
        for (kind, parent) in qdisc_kinds(handle, veth).await? {
            if kind != "tbf" && kind != "ingress" {
                continue;
            }
            let mut msg = TcMessage::with_index(veth as i32);
            msg.header.parent = parent;
            if kind == "ingress" {
                msg.header.handle = TcHandle::from(0xffff_0000);
            }
            let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(msg));
            req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
            let mut h = handle.clone();
            match h.request(req) {
                Ok(mut resp) => {
                    use futures::StreamExt;
                    while let Some(m) = resp.next().await {
                        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = m.payload {
                            let code = e.raw_code();
                            if code != 0
                                && -code != libc::ENOENT
                                && -code != libc::EINVAL
                                && -code != libc::ENODEV
                            {
                                errors.push(nl(format!("delete {kind} qdisc on {host_veth}"))(
                                    rtnetlink::Error::NetlinkError(e),
                                ));
                            }
                        }
                    }
                }
                Err(e) => errors.push(nl(format!("delete {kind} qdisc on {host_veth}"))(e)),
            }
        }
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Verifies the qdiscs (and ifb) the bandwidth asks for are in place.
pub async fn check(
    handle: &Handle,
    host_veth: &str,
    ifb: &str,
    bw: &Bandwidth,
) -> Result<(), TcError> {
    let veth = link_index(handle, host_veth)
        .await?
        .ok_or_else(|| TcError::Check(format!("{host_veth} is missing")))?;
    let kinds = qdisc_kinds(handle, veth).await?;
    if bw.shapes_ingress() && !has_tbf(handle, veth, bw.ingress_rate).await? {
        return Err(TcError::Check(format!(
            "no tbf qdisc at {} bit/s on {host_veth}",
            bw.ingress_rate
        )));
    }
    if bw.shapes_egress() {
        if !kinds.iter().any(|(k, _)| k == "ingress") {
            return Err(TcError::Check(format!("no ingress qdisc on {host_veth}")));
        }
        let i = link_index(handle, ifb)
            .await?
            .ok_or_else(|| TcError::Check(format!("ifb {ifb} is missing")))?;
        if !has_tbf(handle, i, bw.egress_rate).await? {
            return Err(TcError::Check(format!(
                "no tbf qdisc at {} bit/s on {ifb}",
                bw.egress_rate
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_parameters_match_tc() {
        // 10 Mbit/s, burst 100 kbit (12500 bytes): buffer = 12500 B / 1.25 MB/s = 10 ms
        // = 156250 ticks of 64 ns; limit = 1.25 MB/s * 25 ms + 12500 B.
        let opts = tbf_options(10_000_000, 100_000);
        let TcOption::Other(parms) = &opts[0] else {
            panic!()
        };
        let mut b = vec![0u8; 36];
        use rtnetlink::packet_core::Nla;
        parms.emit_value(&mut b);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 1_250_000);
        assert_eq!(
            u32::from_ne_bytes(b[24..28].try_into().unwrap()),
            31_250 + 12_500
        );
        assert_eq!(u32::from_ne_bytes(b[28..32].try_into().unwrap()), 156_250);
        assert_eq!(opts.len(), 2);
    }

    #[test]
    fn bandwidth_wire_names_and_validation() {
        let bw: Bandwidth =
            serde_json::from_str(r#"{"ingressRate":1000000,"ingressBurst":10000,"egressRate":0}"#)
                .unwrap();
        assert!(bw.shapes_ingress() && !bw.shapes_egress());
        bw.validate().unwrap();
        let bad = Bandwidth {
            egress_rate: 1000,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("egressBurst"));
        assert_eq!(ifb_name("n", "c", "eth0").len(), 15);
    }
}
