//! Traffic control: root tbf qdiscs, the ingress qdisc, a redirect of a link's ingress to
//! another link (ifb), ifb devices, and reading qdiscs back. The bandwidth policy built on
//! these lives in [`crate::tc`].

use rtnetlink::packet_core::{
    DefaultNla, Nla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::LinkIfb;

use super::{Link, Netlink, NetlinkError};

/// Queueing latency allowed by a tbf bucket (the reference bandwidth plugin's value).
const LATENCY_MS: u64 = 25;
const TCA_OPTIONS: u16 = 2;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// Handle of the ingress qdisc (`ffff:`).
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// Where a qdisc is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QdiscParent {
    /// The root of the link's egress.
    Root,
    /// The ingress hook (`ffff:fff1`).
    Ingress,
    /// Under a class (`major:minor` packed as the kernel does).
    Class(u32),
}

impl From<TcHandle> for QdiscParent {
    fn from(h: TcHandle) -> Self {
        if h == TcHandle::ROOT {
            QdiscParent::Root
        } else if h == TcHandle::INGRESS {
            QdiscParent::Ingress
        } else {
            QdiscParent::Class(u32::from(h))
        }
    }
}

/// What the kernel reports about one qdisc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub parent: QdiscParent,
    /// For tbf: the rate in bytes per second.
    pub tbf_rate: Option<u64>,
}

impl Netlink {
    /// `tc qdisc replace dev <index> root handle 1: tbf rate <rate_bits> burst <burst_bits>
    /// latency 25ms` (rate in bit/s, burst in bits).
    pub async fn replace_root_tbf(
        &self,
        index: u32,
        rate_bits: u64,
        burst_bits: u64,
    ) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle { major: 1, minor: 0 };
        msg.attributes.push(TcAttribute::Kind("tbf".to_string()));
        msg.attributes
            .push(TcAttribute::Options(tbf_options(rate_bits, burst_bits)));
        self.command(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &|| format!("add tbf qdisc on link {index}"),
        )
        .await
    }

    /// `tc qdisc add dev <index> ingress`.
    pub async fn add_ingress_qdisc(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::INGRESS;
        msg.header.handle = TcHandle::from(INGRESS_HANDLE);
        msg.attributes
            .push(TcAttribute::Kind("ingress".to_string()));
        self.command(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("add ingress qdisc on link {index}"),
        )
        .await
    }

    /// Deletes the qdisc at `parent` of link `index` (the ingress qdisc for `Ingress`).
    pub async fn del_qdisc(&self, index: u32, parent: QdiscParent) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = match parent {
            QdiscParent::Root => TcHandle::ROOT,
            QdiscParent::Ingress => {
                msg.header.handle = TcHandle::from(INGRESS_HANDLE);
                TcHandle::INGRESS
            }
            QdiscParent::Class(c) => TcHandle::from(c),
        };
        self.command(RouteNetlinkMessage::DelQueueDiscipline(msg), 0, &|| {
            format!("delete {parent:?} qdisc on link {index}")
        })
        .await
    }

    /// `tc filter add dev <index> parent ffff: protocol all u32 match u8 0 0 action mirred
    /// egress redirect dev <to>`: everything entering `index` leaves by `to` (an ifb).
    /// Needs the ingress qdisc.
    pub async fn redirect_ingress(&self, index: u32, to: u32) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::from(INGRESS_HANDLE);
        // info: priority 0 (the kernel picks one), protocol ETH_P_ALL in network byte order.
        msg.header.info = u32::from((libc::ETH_P_ALL as u16).to_be());
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![TcU32Key::default()];
        let mut mirred = TcMirror::default();
        mirred.generic = TcActionGeneric::default();
        mirred.generic.action = TcActionType::Stolen;
        mirred.eaction = TcMirrorActionType::EgressRedir;
        mirred.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirred,
            ))]),
        ];
        msg.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.command(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("redirect ingress of link {index} to link {to}"),
        )
        .await
    }

    /// Creates ifb device `name`, up (`ip link add <name> up type ifb`).
    pub async fn create_ifb(&self, name: &str) -> Result<Link, NetlinkError> {
        let step = || format!("create ifb {name}");
        self.exchange(
            RouteNetlinkMessage::NewLink(LinkIfb::new(name).up().build()),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &step,
        )
        .await?;
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::protocol(step(), "ifb vanished"))
    }

    /// The qdiscs of link `index`.
    pub async fn qdiscs(&self, index: u32) -> Result<Vec<Qdisc>, NetlinkError> {
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(index as i32)),
                NLM_F_REQUEST | NLM_F_DUMP,
                &|| format!("list qdiscs of link {index}"),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index == index as i32 => {
                    qdisc_from(q)
                }
                _ => None,
            })
            .collect())
    }
}

fn qdisc_from(m: &TcMessage) -> Option<Qdisc> {
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
                    let attrs = if nla.kind() & 0x3fff == TCA_OPTIONS {
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
    Some(Qdisc {
        kind: kind?,
        parent: m.header.parent.into(),
        tbf_rate: rate,
    })
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

/// `struct tc_tbf_qopt` plus rate64/burst attributes for `rate_bits` bit/s and `burst_bits`.
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
    fn tbf_rate_is_read_back_from_nested_options() {
        // The kernel's answer: TCA_OPTIONS (nested) holding TCA_TBF_PARMS.
        let mut parms = vec![0u8; 36];
        parms[8..12].copy_from_slice(&1_250_000u32.to_ne_bytes());
        let mut nest = Vec::new();
        nest.extend(40u16.to_ne_bytes());
        nest.extend(TCA_TBF_PARMS.to_ne_bytes());
        nest.extend(&parms);
        let mut m = TcMessage::with_index(3);
        m.header.parent = TcHandle::ROOT;
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(vec![TcOption::Other(
            DefaultNla::new(TCA_OPTIONS | 0x8000, nest),
        )]));
        assert_eq!(
            qdisc_from(&m),
            Some(Qdisc {
                kind: "tbf".into(),
                parent: QdiscParent::Root,
                tbf_rate: Some(1_250_000),
            })
        );
        let mut ing = TcMessage::with_index(3);
        ing.header.parent = TcHandle::INGRESS;
        assert_eq!(qdisc_from(&ing), None, "no kind, no qdisc");
        ing.attributes.push(TcAttribute::Kind("ingress".into()));
        assert_eq!(qdisc_from(&ing).unwrap().parent, QdiscParent::Ingress);
    }
}
