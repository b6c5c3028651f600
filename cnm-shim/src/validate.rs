//! Validation of request data at decoding, before any handler or state sees it.
//!
//! Invariant: a request that reaches a handler carries ids of bounded length and a safe
//! alphabet (Docker ids, swarm ids or pool ids this driver made), and every option the driver
//! later turns into a name, path, number or kernel attribute has been checked here, with an
//! error that names the field. Handlers may still fail, but never on the shape of an id.

use crate::api::*;
use anyhow::{bail, Result};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Longest accepted network / endpoint id. Docker's are 64 hex characters
/// (`stringid.GenerateRandomID`); swarm-scoped networks carry 25-character base-36 ids.
pub const MAX_ID: usize = 64;
/// Longest accepted PoolID (this driver makes them: `pn-<address>_<prefix>[-<sub>]`).
pub const MAX_POOL_ID: usize = 200;
/// `IFNAMSIZ - 1`.
pub const MAX_IFNAME: usize = 15;
/// CreateNetwork option naming the bridge.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// CreateNetwork option setting the MTU.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// A Docker network or endpoint id: 1..=64 characters of `[0-9a-z]` (Docker's 64-hex ids and
/// swarm's 25-character base-36 ids both fit; nothing else is ever sent by dockerd).
pub fn docker_id(field: &str, id: &str) -> Result<()> {
    let b = id.as_bytes();
    if b.is_empty() || b.len() > MAX_ID {
        bail!(
            "{field}: {} bytes; Docker ids are 1 to {MAX_ID} characters",
            b.len()
        );
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    {
        bail!(
            "{field} {:?}: Docker ids are lower-case letters and digits only",
            preview(id)
        );
    }
    Ok(())
}

/// A PoolID: one this driver handed out has the shape of [`crate::state::valid_id`].
pub fn pool_id(id: &str) -> Result<()> {
    if id.len() > MAX_POOL_ID || !crate::state::valid_id(id) {
        bail!("PoolID {:?} is not one this driver hands out", preview(id));
    }
    Ok(())
}

/// At most 40 characters of `s` (cut on a character boundary), for error messages.
pub fn preview(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A Linux interface name: 1..=15 bytes, no '/', no whitespace or control characters, no
/// ':' (alias syntax), not "." or "..".
pub fn ifname(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("{field}: empty interface name");
    }
    if name.len() > MAX_IFNAME {
        bail!(
            "{field} {:?} is longer than {MAX_IFNAME} bytes (IFNAMSIZ)",
            preview(name)
        );
    }
    if name == "." || name == ".." {
        bail!("{field} {name:?} is not a valid interface name");
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        bail!("{field} {name:?}: {c:?} cannot occur in an interface name");
    }
    Ok(())
}

/// An MTU option: a decimal number the kernel can take for an Ethernet-like link.
pub fn mtu(v: &str) -> Result<u32> {
    let m: u32 = v
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{MTU_OPTION} {:?} is not a number", preview(v)))?;
    if !(68..=65535).contains(&m) {
        bail!("{MTU_OPTION} {m}: must be between 68 and 65535");
    }
    Ok(m)
}

/// A unicast Ethernet MAC `xx:xx:xx:xx:xx:xx` (empty = unset).
pub fn mac(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = v.split(':').collect();
    let ok = v.len() == 17
        && parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        bail!(
            "{field} {:?} is not a MAC address (xx:xx:xx:xx:xx:xx)",
            preview(v)
        );
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(0);
    if first & 1 == 1 {
        bail!("{field} {v}: a multicast MAC cannot be an interface's address");
    }
    Ok(())
}

/// A `SandboxKey`: empty, or an absolute path without control characters, ';' or '='
/// (it travels in CNI_NETNS and, for some plugins, inside CNI_ARGS).
pub fn sandbox_key(v: &str) -> Result<()> {
    if v.is_empty() {
        return Ok(());
    }
    if !v.starts_with('/') {
        bail!("SandboxKey {:?} is not an absolute path", preview(v));
    }
    if v.len() > 4096 {
        bail!("SandboxKey is {} bytes (PATH_MAX is 4096)", v.len());
    }
    if let Some(c) = v.chars().find(|c| c.is_control() || *c == ';' || *c == '=') {
        bail!(
            "SandboxKey {:?}: {c:?} is not accepted in a path",
            preview(v)
        );
    }
    Ok(())
}

/// The published ports of a request (`com.docker.network.portmap`), decoded and checked:
/// each `HostIP` is empty or an address.
pub fn port_bindings(options: &Map<String, Value>) -> Result<Vec<PortBinding>> {
    let ports: Vec<PortBinding> = match options.get(PORTMAP_OPTION) {
        Some(v) if !v.is_null() => serde_json::from_value(v.clone())
            .map_err(|e| anyhow::anyhow!("decode port mappings ({PORTMAP_OPTION}): {e}"))?,
        _ => Vec::new(),
    };
    for p in &ports {
        if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
            bail!(
                "{PORTMAP_OPTION}: HostIP {:?} is not an IP address",
                preview(&p.host_ip)
            );
        }
        if !p.ip.is_empty() && p.ip.parse::<IpAddr>().is_err() {
            bail!(
                "{PORTMAP_OPTION}: IP {:?} is not an IP address",
                preview(&p.ip)
            );
        }
    }
    Ok(ports)
}

/// Checks a decoded request before a handler sees it.
pub trait Validate {
    fn validate(&self) -> Result<()>;
}

impl Validate for CreateNetworkRequest {
    fn validate(&self) -> Result<()> {
        docker_id("NetworkID", &self.network_id)?;
        if let Some(g) = self.options.get(GENERIC_OPTION) {
            if !g.is_null() && !g.is_object() {
                bail!("{GENERIC_OPTION}: expected an object of driver options");
            }
            if let Some(v) = g.get(BRIDGE_NAME_OPTION) {
                match v.as_str() {
                    Some(name) => ifname(BRIDGE_NAME_OPTION, name)?,
                    None => bail!("{BRIDGE_NAME_OPTION}: expected a string"),
                }
            }
            if let Some(v) = g.get(MTU_OPTION) {
                let s = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                mtu(&s)?;
            }
        }
        Ok(())
    }
}

impl Validate for NetworkRequest {
    fn validate(&self) -> Result<()> {
        docker_id("NetworkID", &self.network_id)
    }
}

impl Validate for CreateEndpointRequest {
    fn validate(&self) -> Result<()> {
        docker_id("NetworkID", &self.network_id)?;
        docker_id("EndpointID", &self.endpoint_id)?;
        mac("MacAddress", &self.interface.mac_address)?;
        port_bindings(&self.options)?;
        Ok(())
    }
}

impl Validate for EndpointRequest {
    fn validate(&self) -> Result<()> {
        docker_id("NetworkID", &self.network_id)?;
        docker_id("EndpointID", &self.endpoint_id)
    }
}

impl Validate for JoinRequest {
    fn validate(&self) -> Result<()> {
        docker_id("NetworkID", &self.network_id)?;
        docker_id("EndpointID", &self.endpoint_id)?;
        sandbox_key(&self.sandbox_key)?;
        port_bindings(&self.options)?;
        Ok(())
    }
}

impl Validate for ProgramExternalConnectivityRequest {
    fn validate(&self) -> Result<()> {
        docker_id("NetworkID", &self.network_id)?;
        docker_id("EndpointID", &self.endpoint_id)
    }
}

impl Validate for RequestPoolRequest {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl Validate for ReleasePoolRequest {
    fn validate(&self) -> Result<()> {
        pool_id(&self.pool_id)
    }
}

impl Validate for RequestAddressRequest {
    fn validate(&self) -> Result<()> {
        pool_id(&self.pool_id)
    }
}

impl Validate for ReleaseAddressRequest {
    fn validate(&self) -> Result<()> {
        pool_id(&self.pool_id)
    }
}

impl Validate for DiscoveryNotification {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl Validate for GwAllocCheckRequest {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(docker_id("x", &"a".repeat(64)).is_ok());
        assert!(docker_id("x", "0123456789abcdefghijklmno").is_ok()); // swarm
        assert!(docker_id("x", &"a".repeat(65)).is_err());
        assert!(docker_id("x", "").is_err());
        assert!(docker_id("x", "aéééééé").is_err());
        assert!(docker_id("x", "0123456789aé").is_err());
        assert!(docker_id("x", "../x").is_err());
        assert!(docker_id("x", "ABC").is_err());
        assert!(pool_id("pn-10.60.1.0_24").is_ok());
        assert!(pool_id(&"a".repeat(201)).is_err());
        assert!(pool_id("é").is_err());
        // An error message never panics on a multi-byte boundary.
        let e = docker_id("x", &"é".repeat(100)).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
        assert_eq!(preview(&"é".repeat(50)).chars().count(), 41);
    }

    #[test]
    fn bridge_names() {
        for ok in ["br0", "docker0", "a.b", "x-y_z", "123456789012345"] {
            assert!(ifname("b", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "../x",
            "x y",
            ".",
            "..",
            "1234567890123456",
            "a:b",
            "a\tb",
        ] {
            assert!(ifname("b", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mtu_mac_sandbox() {
        assert_eq!(mtu("1450").unwrap(), 1450);
        assert!(mtu("0").is_err() && mtu("x").is_err() && mtu("99999999999").is_err());
        assert!(mac("m", "02:42:0a:00:00:02").is_ok() && mac("m", "").is_ok());
        assert!(mac("m", "01:00:5e:00:00:01").is_err());
        assert!(mac("m", "02:42:0a:00:00").is_err() && mac("m", "zz:42:0a:00:00:02").is_err());
        assert!(mac("m", "é2:42:0a:00:00:0").is_err());
        assert!(sandbox_key("/var/run/docker/netns/abc").is_ok() && sandbox_key("").is_ok());
        for bad in ["rel/x", "/a;b", "/a=b", "/a\nb"] {
            assert!(sandbox_key(bad).is_err(), "{bad:?}");
        }
    }
}
