//! plugnet-ipam configuration: a superset of host-local's `ipam` section, plus the addresses a
//! runtime asks for (`runtimeConfig.ips`, `args.cni.ips`, `CNI_ARGS` `IP=`).
//!
//! Invariant: a parsed [`IpamConfig`] has canonical ranges (network-address subnets with at least
//! two host bits, start ≤ end inside the subnet, one family per range set, no overlaps anywhere)
//! so the allocator never re-validates.

use crate::error::CniError;
use crate::types::{Dns, Route};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One allocatable range inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

/// A pool of disjoint ranges of one family; one address is handed out per set.
pub type RangeSet = Vec<Range>;

/// One range as a configuration writes it: the subnet, and the bounds and gateway only if given
/// (no defaults filled in, nothing checked beyond parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenRange {
    pub subnet: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub start: Option<IpAddr>,
    pub end: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub dns: Dns,
    /// Specific addresses asked for, at most one per range set.
    pub requested: Vec<IpAddr>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct WireRange {
    subnet: String,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireIpam {
    #[serde(default)]
    ranges: Vec<Vec<WireRange>>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    resolv_conf: Option<String>,
}

/// Integer view of an address, for arithmetic in both families.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr, CniError> {
    s.parse()
        .map_err(|_| CniError::config(format!("invalid {what} {s:?}: not an IP address")))
}

impl WireIpam {
    /// The legacy single range (if any) and then `ranges`, in order.
    fn written_sets(&self) -> Vec<Vec<WireRange>> {
        let mut sets = Vec::new();
        if let Some(subnet) = self.subnet.clone().filter(|s| !s.is_empty()) {
            sets.push(vec![WireRange {
                subnet,
                range_start: self.range_start.clone(),
                range_end: self.range_end.clone(),
                gateway: self.gateway.clone(),
            }]);
        }
        sets.extend(self.ranges.iter().cloned());
        sets
    }
}

impl WrittenRange {
    fn from_wire(w: &WireRange) -> Result<WrittenRange, CniError> {
        let ip = |what: &str, s: &Option<String>| match s.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => parse_ip(what, s).map(Some),
            None => Ok(None),
        };
        Ok(WrittenRange {
            subnet: w
                .subnet
                .parse()
                .map_err(|e| CniError::config(format!("invalid subnet {:?}: {e}", w.subnet)))?,
            gateway: ip("gateway", &w.gateway)?,
            start: ip("rangeStart", &w.range_start)?,
            end: ip("rangeEnd", &w.range_end)?,
        })
    }
}

/// The ranges of an `ipam` object as written (host-local's shape: the legacy single range
/// first, then `ranges`, in order), for tools that read or rewrite a configuration (the Docker
/// shim); allocation uses [`IpamConfig::from_request`], which fills defaults and validates.
pub fn written_ranges(ipam: &Value) -> Result<Vec<WrittenRange>, CniError> {
    let wire: WireIpam = serde_json::from_value(ipam.clone())
        .map_err(|e| CniError::decode(format!("invalid ipam configuration: {e}")))?;
    wire.written_sets()
        .iter()
        .flatten()
        .map(WrittenRange::from_wire)
        .collect()
}

impl Range {
    fn from_wire(w: &WireRange) -> Result<Range, CniError> {
        let subnet: IpNetwork = w
            .subnet
            .parse()
            .map_err(|e| CniError::config(format!("invalid subnet {:?}: {e}", w.subnet)))?;
        if subnet.network() != subnet.ip() {
            return Err(CniError::config(format!(
                "network {} has host bits set; use {}/{}",
                w.subnet,
                subnet.network(),
                subnet.prefix()
            )));
        }
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        if bits - subnet.prefix() < 2 {
            return Err(CniError::config(format!(
                "network {} too small to allocate from",
                w.subnet
            )));
        }
        let v4 = subnet.is_ipv4();
        let net = to_u128(subnet.network());
        let host_bits = u32::from(bits - subnet.prefix());
        let last = net | u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
        let in_subnet = |ip: IpAddr| ip.is_ipv4() == v4 && subnet.contains(ip);
        let gateway = match w.gateway.as_deref().filter(|s| !s.is_empty()) {
            Some(g) => {
                let g = parse_ip("gateway", g)?;
                if g.is_ipv4() != v4 {
                    return Err(CniError::config(format!(
                        "gateway {g} is not of the family of subnet {subnet}"
                    )));
                }
                Some(g)
            }
            None => Some(from_u128(net + 1, v4)),
        };
        let start = match w.range_start.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let ip = parse_ip("rangeStart", s)?;
                if !in_subnet(ip) {
                    return Err(CniError::config(format!(
                        "rangeStart {ip} not in network {subnet}"
                    )));
                }
                ip
            }
            None => from_u128(net + 1, v4),
        };
        let end = match w.range_end.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let ip = parse_ip("rangeEnd", s)?;
                if !in_subnet(ip) {
                    return Err(CniError::config(format!(
                        "rangeEnd {ip} not in network {subnet}"
                    )));
                }
                ip
            }
            // IPv4: the broadcast address is never handed out.
            None => from_u128(if v4 { last - 1 } else { last }, v4),
        };
        if to_u128(start) > to_u128(end) {
            return Err(CniError::config(format!(
                "rangeStart {start} is after rangeEnd {end}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Number of addresses from start to end; 2^128 (all of `::/0`) saturates to `u128::MAX`.
    pub fn span(&self) -> u128 {
        (to_u128(self.end) - to_u128(self.start)).saturating_add(1)
    }

    /// Number of addresses in the range, gateway excluded (saturating, as [`Range::span`]).
    pub fn size(&self) -> u128 {
        let gateway_inside = self.gateway.is_some_and(|g| self.contains(g));
        (to_u128(self.end) - to_u128(self.start)).saturating_add(u128::from(!gateway_inside))
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.subnet.is_ipv4() == other.subnet.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }

    /// `start-end` as error messages show it.
    pub fn describe(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }
}

/// The range set `ip` belongs to: the one with a range holding it, else the first whose
/// subnet holds it (two sets may share a subnet with disjoint ranges).
pub fn set_of(ranges: &[RangeSet], ip: IpAddr) -> Option<usize> {
    ranges
        .iter()
        .position(|set| set.iter().any(|r| r.contains(ip)))
        .or_else(|| {
            ranges
                .iter()
                .position(|set| set.iter().any(|r| r.subnet.contains(ip)))
        })
}

impl IpamConfig {
    /// Parse from a whole plugin configuration (the `ipam` key plus the runtime's requests).
    /// `cni_args_ip` is the `CNI_ARGS` `IP=` value, comma-separated for several.
    pub fn from_request(conf: &Value, cni_args_ip: Option<&str>) -> Result<IpamConfig, CniError> {
        let ipam = conf
            .get("ipam")
            .filter(|v| !v.is_null())
            .ok_or_else(|| CniError::config("IPAM config missing 'ipam' key"))?;
        let wire: WireIpam = serde_json::from_value(ipam.clone())
            .map_err(|e| CniError::decode(format!("invalid ipam configuration: {e}")))?;

        let mut sets: Vec<Vec<WireRange>> = Vec::new();
        // runtimeConfig.ipRanges come first, as host-local does.
        if let Some(rt) = conf.pointer("/runtimeConfig/ipRanges") {
            let rt: Vec<Vec<WireRange>> = serde_json::from_value(rt.clone())
                .map_err(|e| CniError::decode(format!("invalid runtimeConfig.ipRanges: {e}")))?;
            sets.extend(rt);
        }
        sets.extend(wire.written_sets());
        if sets.is_empty() {
            return Err(CniError::config("no IP ranges specified"));
        }
        let mut ranges: Vec<RangeSet> = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            if set.is_empty() {
                return Err(CniError::config(format!("range set {i} is empty")));
            }
            let parsed: Vec<Range> = set.iter().map(Range::from_wire).collect::<Result<_, _>>()?;
            let v4 = parsed[0].subnet.is_ipv4();
            if parsed.iter().any(|r| r.subnet.is_ipv4() != v4) {
                return Err(CniError::config(format!(
                    "range set {i} mixes IPv4 and IPv6"
                )));
            }
            for (a, ra) in parsed.iter().enumerate() {
                for rb in &parsed[a + 1..] {
                    if ra.overlaps(rb) {
                        return Err(CniError::config(format!(
                            "range set {i}: ranges {} and {} overlap",
                            ra.describe(),
                            rb.describe()
                        )));
                    }
                }
            }
            for (j, earlier) in ranges.iter().enumerate() {
                if earlier.iter().any(|a| parsed.iter().any(|b| a.overlaps(b))) {
                    return Err(CniError::config(format!("range set {i} overlaps with {j}")));
                }
            }
            ranges.push(parsed);
        }

        let mut requested = Vec::new();
        let mut push = |s: &str, source: &str| -> Result<(), CniError> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(());
            }
            let ip = s
                .split('/')
                .next()
                .unwrap_or_default()
                .parse::<IpAddr>()
                .map_err(|_| CniError::config(format!("{source}: invalid IP {s:?}")))?;
            if !requested.contains(&ip) {
                requested.push(ip);
            }
            Ok(())
        };
        // `args.cni.ips` and `runtimeConfig.ips` supersede CNI_ARGS (CONVENTIONS.md).
        let mut from_args = Vec::new();
        for (ptr, source) in [
            ("/runtimeConfig/ips", "runtimeConfig.ips"),
            ("/args/cni/ips", "args.cni.ips"),
        ] {
            if let Some(list) = conf.pointer(ptr).and_then(Value::as_array) {
                for v in list {
                    let s = v
                        .as_str()
                        .ok_or_else(|| CniError::config(format!("{source}: not a string: {v}")))?;
                    from_args.push((s.to_string(), source));
                }
            }
        }
        if from_args.is_empty() {
            for s in cni_args_ip.unwrap_or_default().split(',') {
                push(s, "CNI_ARGS IP")?;
            }
        } else {
            for (s, source) in from_args {
                push(&s, source)?;
            }
        }

        let dns = match wire.resolv_conf.as_deref().filter(|s| !s.is_empty()) {
            Some(path) => parse_resolv_conf(
                &std::fs::read_to_string(path)
                    .map_err(|e| CniError::config(format!("resolvConf {path}: {e}")))?,
            ),
            None => Dns::default(),
        };
        let data_dir = wire
            .data_dir
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        // A relative dir would follow each runtime's working directory: one store per caller.
        if !data_dir.is_absolute() {
            return Err(CniError::config(format!(
                "ipam.dataDir {:?} must be an absolute path",
                data_dir.display()
            )));
        }
        Ok(IpamConfig {
            ranges,
            routes: wire.routes,
            data_dir,
            dns,
            requested,
        })
    }
}

/// The subset of resolv.conf(5) a CNI result carries.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(String::from)),
            Some("domain") => dns.domain = words.next().map(String::from),
            Some("search") => dns.search = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(ipam: Value) -> Result<IpamConfig, CniError> {
        IpamConfig::from_request(&json!({"name": "n", "ipam": ipam}), None)
    }

    #[test]
    fn defaults_match_host_local() {
        let c = parse(json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]})).unwrap();
        let r = &c.ranges[0][0];
        assert_eq!(r.start.to_string(), "10.1.2.1");
        assert_eq!(r.end.to_string(), "10.1.2.254");
        assert_eq!(r.gateway.unwrap().to_string(), "10.1.2.1");
        assert_eq!(r.size(), 253);
        let c = parse(json!({"ranges": [[{"subnet": "fd00::/120"}]]})).unwrap();
        assert_eq!(c.ranges[0][0].end.to_string(), "fd00::ff");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn legacy_subnet_form_comes_first() {
        let c = parse(json!({
            "subnet": "10.9.0.0/24", "rangeStart": "10.9.0.100", "rangeEnd": "10.9.0.110",
            "ranges": [[{"subnet": "fd00::/64"}]]
        }))
        .unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.ranges[0][0].start.to_string(), "10.9.0.100");
    }

    #[test]
    fn rejects_bad_ranges() {
        for (ipam, needle) in [
            (json!({}), "no IP ranges"),
            (
                json!({"ranges": [[{"subnet": "10.0.0.1/24"}]]}),
                "host bits",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/31"}]]}),
                "too small",
            ),
            (json!({"ranges": [[{"subnet": "fd00::/127"}]]}), "too small"),
            (json!({"ranges": [[{"subnet": "nope"}]]}), "invalid subnet"),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]}),
                "not in network",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]}),
                "after",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
                "overlaps",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
                "mixes",
            ),
            (json!({"ranges": [[]]}), "empty"),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": "rel/dir"}),
                "absolute",
            ),
        ] {
            let e = parse(ipam.clone()).unwrap_err();
            assert!(e.msg.contains(needle), "{ipam}: {e}");
        }
        let e = IpamConfig::from_request(&json!({"name": "n"}), None).unwrap_err();
        assert!(e.msg.contains("'ipam'"));
    }

    #[test]
    fn requested_addresses_from_every_source() {
        let base = json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]});
        let c = IpamConfig::from_request(
            &json!({"ipam": base, "name": "n"}),
            Some("10.0.0.7,fd00::7"),
        )
        .unwrap();
        assert_eq!(c.requested.len(), 2);
        let c = IpamConfig::from_request(
            &json!({"ipam": base, "runtimeConfig": {"ips": ["10.0.0.8/24"]}}),
            Some("10.0.0.7"),
        )
        .unwrap();
        assert_eq!(c.requested, vec!["10.0.0.8".parse::<IpAddr>().unwrap()]);
        let c = IpamConfig::from_request(
            &json!({"ipam": base, "runtimeConfig": {"ipRanges": [[{"subnet": "10.5.0.0/24"}]]}}),
            None,
        )
        .unwrap();
        assert_eq!(c.ranges[0][0].subnet.to_string(), "10.5.0.0/24");
        assert!(IpamConfig::from_request(&json!({"ipam": base}), Some("bogus")).is_err());
    }

    #[test]
    fn resolv_conf() {
        let d = parse_resolv_conf(
            "# c\nnameserver 10.0.0.53\nnameserver fd00::53 # x\nsearch a.example b.example\ndomain example\noptions ndots:2 rotate\n",
        );
        assert_eq!(d.nameservers, vec!["10.0.0.53", "fd00::53"]);
        assert_eq!(d.search, vec!["a.example", "b.example"]);
        assert_eq!(d.domain.as_deref(), Some("example"));
        assert_eq!(d.options, vec!["ndots:2", "rotate"]);
    }
}
