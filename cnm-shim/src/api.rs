//! Docker remote-plugin wire types: every field named exactly as libnetwork spells it.
//!
//! Invariant: these types only describe the wire. Requests accept `null` wherever Docker may
//! send it; responses never emit `null` for a value the daemon parses (trap 19) and never echo
//! fields the daemon owns. Domain values (`IpNetwork`, `IpAddr`) live in the driver.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Content type plugins conventionally answer with (the daemon ignores it).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `RequestAddress` option naming the request as the pool's gateway.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Value of [`REQUEST_ADDRESS_TYPE`] (and the `RequestPool` data key) for gateways.
pub const GATEWAY_OPTION: &str = "com.docker.network.gateway";
/// CreateNetwork option holding the `-o k=v` driver options.
pub const GENERIC_OPTION: &str = "com.docker.network.generic";
/// Endpoint/sandbox option carrying the published ports.
pub const PORTMAP_OPTION: &str = "com.docker.network.portmap";
/// CreateNetwork option: `--internal`.
pub const INTERNAL_OPTION: &str = "com.docker.network.internal";

/// Deserialize `null` (or an absent field, with `#[serde(default)]`) as the type's default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------------------------
// Handshake and errors

/// `Plugin.Activate` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

/// NetworkDriver error body (`Err`); also understood by the daemon for any non-200 reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

/// IpamDriver error body (`Error`), sent with status 200 as the IPAM API defines it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpamErrResponse {
    #[serde(rename = "Error")]
    pub error: String,
}

// ---------------------------------------------------------------------------------------------
// NetworkDriver

/// `NetworkDriver.GetCapabilities` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetCapabilities {
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

/// One element of `IPv4Data` / `IPv6Data` (driverapi.IPAMData).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default, deserialize_with = "nullable")]
    pub address_space: String,
    /// CIDR of the pool.
    #[serde(rename = "Pool", default, deserialize_with = "nullable")]
    pub pool: String,
    /// Gateway address **with the pool's prefix length** ("10.1.0.1/24").
    #[serde(rename = "Gateway", default, deserialize_with = "nullable")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", default, deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `NetworkDriver.CreateNetwork` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Map<String, Value>,
    #[serde(rename = "IPv4Data", default, deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

/// Requests that carry only a network id (`DeleteNetwork`, `FreeNetwork`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// `GwAllocCheck` request (new Docker only; answered for completeness).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GwAllocCheckRequest {
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

/// `GwAllocCheck` reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GwAllocCheckResponse {
    #[serde(rename = "SkipIPv4")]
    pub skip_ipv4: bool,
    #[serde(rename = "SkipIPv6")]
    pub skip_ipv6: bool,
}

/// The endpoint interface of `CreateEndpoint` (request: all fields, "" when unset; reply:
/// only fields the driver fills in that Docker left empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointInterface {
    #[serde(
        rename = "Address",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(
        rename = "MacAddress",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

/// `NetworkDriver.CreateEndpoint` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default, deserialize_with = "nullable")]
    pub interface: EndpointInterface,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

/// `NetworkDriver.CreateEndpoint` reply: `{}` unless the driver fills an empty field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// Requests that name one endpoint (`DeleteEndpoint`, `EndpointOperInfo`, `Leave`,
/// `RevokeExternalConnectivity`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `NetworkDriver.EndpointOperInfo` reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: Map<String, Value>,
}

/// `NetworkDriver.Join` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default, deserialize_with = "nullable")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

/// `InterfaceName` of the Join reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// `RouteType` 0: via `NextHop`.
pub const ROUTE_NEXTHOP: u8 = 0;
/// `RouteType` 1: on-link on this endpoint's interface.
pub const ROUTE_CONNECTED: u8 = 1;

/// One entry of `StaticRoutes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(
        rename = "NextHop",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_hop: String,
}

/// `NetworkDriver.Join` reply. `Gateway`/`GatewayIPv6` are bare IPs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName", skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,
    #[serde(
        rename = "Gateway",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway: String,
    #[serde(
        rename = "GatewayIPv6",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway_ipv6: String,
    #[serde(
        rename = "StaticRoutes",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub static_routes: Vec<StaticRoute>,
    #[serde(
        rename = "DisableGatewayService",
        default,
        skip_serializing_if = "is_false"
    )]
    pub disable_gateway_service: bool,
}

/// `ProgramExternalConnectivity` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

/// `DiscoverNew` / `DiscoverDelete` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiscoveryNotification {
    #[serde(rename = "DiscoveryType", default)]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData", default)]
    pub discovery_data: Value,
}

/// One element of `com.docker.network.portmap` (libnetwork types.PortBinding).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortBinding {
    #[serde(rename = "Proto", default)]
    pub proto: u8,
    #[serde(rename = "IP", default, deserialize_with = "nullable")]
    pub ip: String,
    #[serde(rename = "Port", default)]
    pub port: u16,
    #[serde(rename = "HostIP", default, deserialize_with = "nullable")]
    pub host_ip: String,
    #[serde(rename = "HostPort", default)]
    pub host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    pub host_port_end: u16,
}

// ---------------------------------------------------------------------------------------------
// IpamDriver

/// `IpamDriver.GetCapabilities` reply (note `MAC`, not `Mac`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces` reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddressSpaces {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: String,
}

/// `IpamDriver.RequestPool` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default, deserialize_with = "nullable")]
    pub address_space: String,
    #[serde(rename = "Pool", default, deserialize_with = "nullable")]
    pub pool: String,
    #[serde(rename = "SubPool", default, deserialize_with = "nullable")]
    pub sub_pool: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// `IpamDriver.RequestPool` reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleasePool` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress` request (`Address` is a bare IP or "").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address", default, deserialize_with = "nullable")]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

/// `IpamDriver.RequestAddress` reply (`Address` is CIDR).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestAddressResponse {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleaseAddress` request (`Address` is a bare IP).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address", default, deserialize_with = "nullable")]
    pub address: String,
}

/// The empty success body `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_network_decodes_docker_2010_body() {
        let body = r#"{"NetworkID":"abc","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"cni.network":"n2"}},
            "IPv4Data":[{"AddressSpace":"plugnet-local","Gateway":"10.60.1.1/24","Pool":"10.60.1.0/24"}],
            "IPv6Data":[]}"#;
        let r: CreateNetworkRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.network_id, "abc");
        assert_eq!(r.ipv4_data[0].gateway, "10.60.1.1/24");
        assert_eq!(r.ipv4_data[0].pool, "10.60.1.0/24");
        assert!(r.ipv4_data[0].aux_addresses.is_empty());
        assert_eq!(r.options[GENERIC_OPTION]["cni.network"], "n2");
    }

    #[test]
    fn nulls_decode_as_defaults() {
        let r: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"x","Options":null,"IPv4Data":null,"IPv6Data":null}"#,
        )
        .unwrap();
        assert!(r.options.is_empty() && r.ipv4_data.is_empty() && r.ipv6_data.is_empty());
        let r: RequestPoolRequest = serde_json::from_str(
            r#"{"AddressSpace":"a","Pool":"","SubPool":"","Options":null,"V6":false}"#,
        )
        .unwrap();
        assert!(r.options.is_empty());
        let r: CreateEndpointRequest =
            serde_json::from_str(r#"{"NetworkID":"n","EndpointID":"e","Interface":null}"#).unwrap();
        assert_eq!(r.interface, EndpointInterface::default());
    }

    #[test]
    fn create_endpoint_reply_is_empty_object_unless_filled() {
        let v = serde_json::to_value(CreateEndpointResponse::default()).unwrap();
        assert_eq!(v, json!({}));
        let v = serde_json::to_value(CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:0a:00:00:02".into(),
                ..Default::default()
            }),
        })
        .unwrap();
        assert_eq!(v, json!({"Interface": {"MacAddress": "02:42:0a:00:00:02"}}));
    }

    #[test]
    fn join_reply_field_case_is_exact() {
        let r = JoinResponse {
            interface_name: Some(InterfaceName {
                src_name: "pnj0123456789ab".into(),
                dst_prefix: "eth".into(),
            }),
            gateway: "10.60.1.1".into(),
            gateway_ipv6: String::new(),
            static_routes: vec![
                StaticRoute {
                    destination: "10.61.0.0/16".into(),
                    route_type: ROUTE_NEXTHOP,
                    next_hop: "10.60.1.254".into(),
                },
                StaticRoute {
                    destination: "10.62.0.0/16".into(),
                    route_type: ROUTE_CONNECTED,
                    next_hop: String::new(),
                },
            ],
            disable_gateway_service: true,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({
                "InterfaceName": {"SrcName": "pnj0123456789ab", "DstPrefix": "eth"},
                "Gateway": "10.60.1.1",
                "StaticRoutes": [
                    {"Destination": "10.61.0.0/16", "RouteType": 0, "NextHop": "10.60.1.254"},
                    {"Destination": "10.62.0.0/16", "RouteType": 1}
                ],
                "DisableGatewayService": true
            })
        );
    }

    #[test]
    fn ipam_replies_field_case_is_exact() {
        assert_eq!(
            serde_json::to_value(IpamCapabilities::default()).unwrap(),
            json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
        );
        assert_eq!(
            serde_json::to_value(RequestPoolResponse {
                pool_id: "p".into(),
                pool: "10.60.0.0/24".into(),
                data: BTreeMap::new()
            })
            .unwrap(),
            json!({"PoolID": "p", "Pool": "10.60.0.0/24", "Data": {}})
        );
        assert_eq!(
            serde_json::to_value(IpamErrResponse { error: "x".into() }).unwrap(),
            json!({"Error": "x"})
        );
        assert_eq!(
            serde_json::to_value(ErrResponse { err: "x".into() }).unwrap(),
            json!({"Err": "x"})
        );
        assert_eq!(
            serde_json::to_value(NetCapabilities {
                scope: "local".into(),
                connectivity_scope: "local".into()
            })
            .unwrap(),
            json!({"Scope": "local", "ConnectivityScope": "local"})
        );
    }

    #[test]
    fn portmap_option_decodes() {
        let v =
            json!([{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]);
        let p: Vec<PortBinding> = serde_json::from_value(v).unwrap();
        assert_eq!(p[0].proto, 6);
        assert_eq!(p[0].host_port, 8080);
    }
}
