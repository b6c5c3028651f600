//! The one sysctl the firewall changes: `route_localnet` on a bridge with port mappings
//! (DNAT to 127.0.0.1 from the bridge); invariant: the previous value is returned, so it can
//! be restored.

use std::fs;

use super::error::FirewallError;
use super::names::check_ifname;

/// `net.ipv4.conf.<bridge>.route_localnet`.
pub(super) fn read_route_localnet(bridge: &str) -> Result<String, FirewallError> {
    check_ifname("bridge name", bridge)?;
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| FirewallError::Sysctl { path, source })
}

/// Sets `net.ipv4.conf.<bridge>.route_localnet`, returning the previous value.
pub(super) fn set_route_localnet(bridge: &str, value: &str) -> Result<String, FirewallError> {
    check_ifname("bridge name", bridge)?;
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    let err = |source| FirewallError::Sysctl {
        path: path.clone(),
        source,
    };
    let was = fs::read_to_string(&path).map_err(err)?.trim().to_string();
    if was != value {
        fs::write(&path, value).map_err(err)?;
    }
    Ok(was)
}
