//! Bandwidth shaping policy (the `bandwidth` capability) over the tc vocabulary of
//! [`crate::netlink`]: a token bucket (tbf) on
//! the host veth shapes traffic into the container; traffic out of the container is redirected
//! from the host veth's ingress to an ifb device whose tbf shapes it, as the reference
//! bandwidth plugin does; invariant: every qdisc, filter and ifb device it creates is found
//! again from (host veth, ifb name) alone, and `remove` leaves none of them.
//!
//! Why ifb + tbf and not an ingress policer: a policer can only drop what exceeds the rate, so
//! TCP sees bursts of loss and settles well below the limit; tbf on ifb queues (25 ms) and
//! shapes, so a TCP flow gets the configured rate in both directions.

use serde::{Deserialize, Serialize};

use crate::netlink::{Netlink, NetlinkError, QdiscParent};

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

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("invalid bandwidth: {0}")]
    Invalid(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("bandwidth check: {0}")]
    Check(String),
}

impl TcError {
    /// The kernel errno behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TcError::Netlink(e) => e.errno(),
            _ => None,
        }
    }
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

async fn link_index(nl: &Netlink, name: &str) -> Result<Option<u32>, TcError> {
    Ok(nl.link_by_name(name).await?.map(|l| l.index))
}

/// Installs the shaping for one attachment (idempotent: existing qdiscs are replaced).
pub async fn apply(
    nl: &Netlink,
    host_veth: &str,
    ifb: &str,
    bw: &Bandwidth,
) -> Result<(), TcError> {
    bw.validate()?;
    crate::firewall::names::check_ifname("host veth name", host_veth)
        .map_err(|e| TcError::Invalid(e.to_string()))?;
    crate::firewall::names::check_ifname("ifb name", ifb)
        .map_err(|e| TcError::Invalid(e.to_string()))?;
    let veth = link_index(nl, host_veth)
        .await?
        .ok_or_else(|| TcError::Invalid(format!("host veth {host_veth} does not exist")))?;
    if bw.shapes_ingress() {
        nl.replace_root_tbf(veth, bw.ingress_rate, bw.ingress_burst)
            .await?;
    }
    if bw.shapes_egress() {
        let ifb_index = match link_index(nl, ifb).await? {
            Some(i) => i,
            None => nl.create_ifb(ifb).await?.index,
        };
        nl.replace_root_tbf(ifb_index, bw.egress_rate, bw.egress_burst)
            .await?;
        let has_ingress = nl
            .qdiscs(veth)
            .await?
            .iter()
            .any(|q| q.kind == "ingress" && q.parent == QdiscParent::Ingress);
        if !has_ingress {
            nl.add_ingress_qdisc(veth).await?;
            nl.redirect_ingress(veth, ifb_index).await?;
        }
    }
    Ok(())
}

/// A root tbf on `index` shaping at `rate_bits` (bit/s)?
async fn has_tbf(nl: &Netlink, index: u32, rate_bits: u64) -> Result<bool, TcError> {
    let want = rate_bits / 8;
    Ok(nl
        .qdiscs(index)
        .await?
        .iter()
        .any(|q| q.kind == "tbf" && q.parent == QdiscParent::Root && q.tbf_rate == Some(want)))
}

/// Removes the shaping; success when nothing (or not even the veth) is there.
pub async fn remove(nl: &Netlink, host_veth: &str, ifb: &str) -> Result<(), TcError> {
    let mut errors = Vec::new();
    if let Some(i) = link_index(nl, ifb).await? {
        if let Err(e) = nl.del_link(i).await {
            if !e.is_not_found() {
                errors.push(e);
            }
        }
    }
    if let Some(veth) = link_index(nl, host_veth).await? {
        for q in nl.qdiscs(veth).await? {
            if q.kind != "tbf" && q.kind != "ingress" {
                continue;
            }
            if let Err(e) = nl.del_qdisc(veth, q.parent).await {
                if !matches!(e.errno(), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) {
                    errors.push(e);
                }
            }
        }
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

/// Verifies the qdiscs (and ifb) the bandwidth asks for are in place.
pub async fn check(
    nl: &Netlink,
    host_veth: &str,
    ifb: &str,
    bw: &Bandwidth,
) -> Result<(), TcError> {
    let veth = link_index(nl, host_veth)
        .await?
        .ok_or_else(|| TcError::Check(format!("{host_veth} is missing")))?;
    if bw.shapes_ingress() && !has_tbf(nl, veth, bw.ingress_rate).await? {
        return Err(TcError::Check(format!(
            "no tbf qdisc at {} bit/s on {host_veth}",
            bw.ingress_rate
        )));
    }
    if bw.shapes_egress() {
        if !nl.qdiscs(veth).await?.iter().any(|q| q.kind == "ingress") {
            return Err(TcError::Check(format!("no ingress qdisc on {host_veth}")));
        }
        let i = link_index(nl, ifb)
            .await?
            .ok_or_else(|| TcError::Check(format!("ifb {ifb} is missing")))?;
        if !has_tbf(nl, i, bw.egress_rate).await? {
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
        assert_eq!(
            crate::attachment::AttachmentId::new("n", "c", "eth0")
                .ifb()
                .len(),
            15
        );
    }
}
