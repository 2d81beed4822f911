//! What netloomd keeps beside the engine's own records, under `docker/` in the state store.
//!
//! The engine stores networks and endpoints; these records add what only the Docker front door
//! knows (which engine networks Docker created, the link Join hands over, published ports) and
//! mark which objects are Docker's, so netloomd never touches a CNI network. Each record is
//! written before the answer that depends on it, and in an order that lets startup
//! reconciliation tell a finished operation from one a crash interrupted (see reconcile.rs).

use std::net::IpAddr;

use engine_core::{Expect, Key, PortMapping, Result, StateStore, StateStoreExt};
use serde::{Deserialize, Serialize};

/// A network created through the Docker plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    /// The engine driver ("bridge").
    pub driver: String,
    /// The Docker driver name it was created with ("netloom-bridge").
    pub plugin: String,
    /// The IPAM pools mirroring Docker's IPv4Data/IPv6Data (see `shadow_pool_id`).
    pub pools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_binding: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface_prefix: Option<String>,
}

/// An endpoint created through the Docker plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    pub endpoint_id: String,
    /// The host link Join hands to Docker (`SrcName`).
    pub src_name: String,
    pub mac: String,
    /// Whether netloomd chose the MAC (then CreateEndpoint answered it).
    #[serde(default)]
    pub mac_generated: bool,
    /// Published ports (ProgramExternalConnectivity), as programmed in the firewall.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The container's netns, once joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_key: Option<String>,
}

const ROOT: &str = "docker";

fn networks_prefix() -> Key {
    Key::new([ROOT, "networks"])
}

fn network_key(id: &str) -> Key {
    networks_prefix().join(id)
}

fn endpoints_prefix() -> Key {
    Key::new([ROOT, "endpoints"])
}

fn endpoint_key(network_id: &str, endpoint_id: &str) -> Key {
    endpoints_prefix().join(network_id).join(endpoint_id)
}

/// Pools created for Docker networks start with this; the IpamDriver refuses to touch them.
pub const SHADOW_POOL_PREFIX: &str = "docker-net/";

/// The IPAM pool that mirrors one family of a Docker network's subnets. The engine leases each
/// endpoint's address from it (the address Docker's IPAM already chose, as a static request),
/// which keeps the engine's one-address-per-endpoint bookkeeping whichever IPAM driver Docker
/// used — netloom's or Docker's own.
pub fn shadow_pool_id(network_id: &str, v6: bool) -> String {
    format!(
        "{SHADOW_POOL_PREFIX}{network_id}/{}",
        if v6 { "v6" } else { "v4" }
    )
}

/// The network id a shadow pool belongs to.
pub fn shadow_pool_network(pool_id: &str) -> Option<&str> {
    pool_id
        .strip_prefix(SHADOW_POOL_PREFIX)?
        .rsplit_once('/')
        .map(|(n, _)| n)
}

pub fn get_network(store: &dyn StateStore, id: &str) -> Result<Option<NetworkRecord>> {
    Ok(store.get_json(&network_key(id))?.map(|(_, r)| r))
}

pub fn put_network(store: &dyn StateStore, rec: &NetworkRecord) -> Result<()> {
    store.put_json(&network_key(&rec.id), rec, Expect::Any)?;
    Ok(())
}

pub fn delete_network(store: &dyn StateStore, id: &str) -> Result<()> {
    store.delete(&network_key(id), Expect::Any)?;
    Ok(())
}

pub fn list_networks(store: &dyn StateStore) -> Result<Vec<NetworkRecord>> {
    let depth = networks_prefix().segments().len() + 1;
    Ok(store
        .list_json::<NetworkRecord>(&networks_prefix())?
        .into_iter()
        .filter(|(k, _, _)| k.segments().len() == depth)
        .map(|(_, _, r)| r)
        .collect())
}

pub fn get_endpoint(
    store: &dyn StateStore,
    network_id: &str,
    endpoint_id: &str,
) -> Result<Option<EndpointRecord>> {
    Ok(store
        .get_json(&endpoint_key(network_id, endpoint_id))?
        .map(|(_, r)| r))
}

pub fn put_endpoint(store: &dyn StateStore, rec: &EndpointRecord) -> Result<()> {
    store.put_json(
        &endpoint_key(&rec.network_id, &rec.endpoint_id),
        rec,
        Expect::Any,
    )?;
    Ok(())
}

pub fn delete_endpoint(store: &dyn StateStore, network_id: &str, endpoint_id: &str) -> Result<()> {
    store.delete(&endpoint_key(network_id, endpoint_id), Expect::Any)?;
    Ok(())
}

/// Every endpoint record, or those of one network.
pub fn list_endpoints(
    store: &dyn StateStore,
    network_id: Option<&str>,
) -> Result<Vec<EndpointRecord>> {
    let prefix = match network_id {
        Some(n) => endpoints_prefix().join(n),
        None => endpoints_prefix(),
    };
    Ok(store
        .list_json::<EndpointRecord>(&prefix)?
        .into_iter()
        .map(|(_, _, r)| r)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_pool_ids_name_their_network() {
        let id = shadow_pool_id("b88f49005d5a", true);
        assert_eq!(id, "docker-net/b88f49005d5a/v6");
        assert_eq!(shadow_pool_network(&id), Some("b88f49005d5a"));
        assert_eq!(shadow_pool_network("netloom-local/10.1.0.0/24"), None);
    }
}
