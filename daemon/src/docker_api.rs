//! The Docker plugin protocol's wire structs (libnetwork `remote/api` and `ipams/remote/api`),
//! kept apart from the engine's model so a protocol change touches only this file.
//!
//! Field names are Docker's (PascalCase, with its `ID`/`IPv4`/`IP` spellings). Docker sends
//! `null` for empty maps and lists in places (`"Options": null` in RequestAddress), so those
//! fields read `null` as empty. Unknown fields are ignored: newer engines add some.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Reads `null` (or an absent field, with `#[serde(default)]`) as the type's empty value.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The content type plugins answer with.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `CreateNetwork` option: the user's `-o key=value` pairs.
pub const OPT_GENERIC: &str = "com.docker.network.generic";
pub const OPT_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
pub const OPT_ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
pub const OPT_INTERNAL: &str = "com.docker.network.internal";
/// Endpoint option: published ports (`-p`).
pub const OPT_PORTMAP: &str = "com.docker.network.portmap";
/// `RequestAddress` option key and the value marking a gateway request.
pub const OPT_REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";

// ------------------------------------------------------------------ common

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: Vec<String>,
}

/// A failure on the NetworkDriver interface.
#[derive(Debug, Clone, Serialize)]
pub struct ErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

/// A failure on the IpamDriver interface: libnetwork's IPAM client reads `Error`, the generic
/// plugin client reads `Err`; both are set.
#[derive(Debug, Clone, Serialize)]
pub struct IpamErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
    #[serde(rename = "Error")]
    pub error: String,
}

/// `{}`: the answer of methods that return nothing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Empty {}

// ------------------------------------------------------------------ NetworkDriver

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCapabilities {
    pub scope: String,
    pub connectivity_scope: String,
}

/// One pool of a network as Docker's IPAM handed it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default, deserialize_with = "nullable")]
    pub address_space: String,
    /// The subnet, CIDR.
    pub pool: String,
    /// The gateway as CIDR ("10.1.0.1/24"); absent when Docker allocated none.
    #[serde(default, deserialize_with = "nullable")]
    pub gateway: String,
    /// `--aux-address name=ip`: CIDRs Docker reserved in the pool.
    #[serde(default, deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
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

/// DeleteNetwork.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// The interface part of CreateEndpoint: what Docker already decided ("" = left to the driver).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Default, Deserialize)]
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

/// CreateEndpoint's answer: only fields the request left empty, else Docker refuses the
/// endpoint ("cannot be modified").
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// DeleteEndpoint, EndpointOperInfo, Leave, RevokeExternalConnectivity.
#[derive(Debug, Clone, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The container's netns path.
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceName {
    /// The link in the host namespace that Docker moves into the sandbox.
    #[serde(rename = "SrcName")]
    pub src_name: String,
    /// The name prefix it gets there (Docker appends an index: eth0, eth1…).
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    /// 0: via `NextHop`; 1: directly connected.
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", default, skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

pub const ROUTE_NEXTHOP: u8 = 0;
pub const ROUTE_CONNECTED: u8 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(
        rename = "GatewayIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway_ipv6: String,
    #[serde(
        rename = "StaticRoutes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub static_routes: Vec<StaticRoute>,
    /// Keeps Docker from adding a docker_gwbridge interface when no gateway is given.
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Map<String, Value>,
}

/// One `-p` binding as Docker sends it. `HostPort..=HostPortEnd` is a range to *choose one*
/// port from (`-p 8000-8010:80`); ranges of container ports arrive as one binding per port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// IANA protocol number: 6 tcp, 17 udp, 132 sctp.
    #[serde(rename = "Proto")]
    pub proto: u8,
    /// The container address ("" = the endpoint's).
    #[serde(rename = "IP", default, deserialize_with = "nullable")]
    pub ip: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "HostIP", default, deserialize_with = "nullable")]
    pub host_ip: String,
    #[serde(rename = "HostPort", default)]
    pub host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    pub host_port_end: u16,
}

/// DiscoverNew / DiscoverDelete: accepted and ignored (swarm node discovery).
#[derive(Debug, Clone, Deserialize)]
pub struct DiscoveryRequest {
    #[serde(rename = "DiscoveryType", default)]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData", default)]
    pub discovery_data: Value,
}

// ------------------------------------------------------------------ IpamDriver

#[derive(Debug, Clone, Serialize)]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// false: netloom keeps its pools and leases itself, Docker need not replay them.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpacesResponse {
    pub local_default_address_space: String,
    pub global_default_address_space: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default, deserialize_with = "nullable")]
    pub address_space: String,
    /// CIDR, or "" for a pool netloom chooses.
    #[serde(rename = "Pool", default, deserialize_with = "nullable")]
    pub pool: String,
    /// `--ip-range`: where dynamic addresses come from.
    #[serde(rename = "SubPool", default, deserialize_with = "nullable")]
    pub sub_pool: String,
    /// `--ipam-opt`.
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// "" = any free address; else exactly this one.
    #[serde(rename = "Address", default, deserialize_with = "nullable")]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestAddressResponse {
    /// CIDR: the address with its pool's prefix length.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A plain IP.
    #[serde(rename = "Address")]
    pub address: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_read_docker_spellings_and_nulls() {
        let r: CreateNetworkRequest = serde_json::from_value(json!({
            "NetworkID": "n1",
            "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {"a": "b"}},
            "IPv4Data": [{"AddressSpace": "s", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24",
                          "AuxAddresses": {"x": "10.1.0.5/24"}}],
            "IPv6Data": null
        }))
        .unwrap();
        assert_eq!(r.ipv4_data[0].aux_addresses["x"], "10.1.0.5/24");
        assert!(r.ipv6_data.is_empty());
        let a: RequestAddressRequest =
            serde_json::from_value(json!({"PoolID": "p", "Address": "", "Options": null})).unwrap();
        assert!(a.options.is_empty());
        assert!(serde_json::from_value::<NetworkRequest>(json!({})).is_err());
    }

    #[test]
    fn answers_never_carry_empty_fields() {
        let r = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:0a:01:00:02".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"Interface": {"MacAddress": "02:42:0a:01:00:02"}})
        );
        assert_eq!(
            serde_json::to_value(CreateEndpointResponse::default()).unwrap(),
            json!({})
        );
        let j = JoinResponse {
            interface_name: InterfaceName {
                src_name: "nc1".into(),
                dst_prefix: "eth".into(),
            },
            gateway: "10.1.0.1".into(),
            disable_gateway_service: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&j).unwrap(),
            json!({"InterfaceName": {"SrcName": "nc1", "DstPrefix": "eth"}, "Gateway": "10.1.0.1",
                   "DisableGatewayService": true})
        );
    }
}
