//! The Docker plugin methods over the engine: synchronous, one method per protocol call, each
//! called from a blocking task by the HTTP layer (the engine's netlink work blocks).
//!
//! How Docker's model maps onto the engine's:
//! - A Docker network is an engine network with the same id. Its subnets come from the
//!   CreateNetwork's IPv4Data/IPv6Data, which Docker's IPAM (netloom's IpamDriver or Docker's
//!   own) already allocated; they carry no engine IPAM pool (the addresses are leased outside
//!   the engine, by Docker's IPAM). Networks created by earlier versions mirror their subnets
//!   into a *shadow pool* (`docker-net/<id>/v4|v6`), which the engine keeps leasing from.
//! - A Docker endpoint is an engine endpoint keyed (endpoint id, "eth"). The address Docker
//!   gives in CreateEndpoint is attached as a static address, taken as it is; [`InUse`] refuses
//!   an address another endpoint of the network holds, and the subnet's gateway.
//! - Join hands over the link the driver left in the host; Docker moves it into the sandbox and
//!   configures it. Ports are published in ProgramExternalConnectivity, through the firewall.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use engine_core::engine::{network_rules, AttachRequest, Engine, OverlapPolicy, SandboxSetup};
use engine_core::firewall::{EndpointRules, Firewaller};
use engine_core::ipam::{AddressRequest, Ipam, PoolRequest, RangeSpec, Release};
use engine_core::{
    AttachmentKey, Error, ErrorKind, Network, NetworkSpec, Options, PortMapping, Result, Sandbox,
    StateStore, SubnetConfig,
};
use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::addresses::InUse;
use crate::docker_api::*;
use crate::fault;
use crate::records::{self, EndpointRecord, NetworkRecord};
use crate::translate::{self, PortRequest};

/// The interface part of every Docker endpoint's attachment key. Docker names the interface in
/// the container itself (DstPrefix + index); this only has to be constant.
pub const ENDPOINT_IFNAME: &str = "eth";

/// The address spaces the IpamDriver advertises; its pool ids start with one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSpaces {
    pub local: String,
    pub global: String,
}

impl Default for AddressSpaces {
    fn default() -> Self {
        AddressSpaces {
            local: "netloom-local".into(),
            global: "netloom-global".into(),
        }
    }
}

/// The front door's state: the engine, its IPAM and store, and the firewall for ports.
pub struct Service {
    engine: Engine,
    firewall: Option<Arc<dyn Firewaller>>,
    /// Why there is no firewall, for error messages.
    firewall_missing: String,
    spaces: AddressSpaces,
    owner_seq: AtomicU64,
    /// Serialises read-modify-write of endpoint records (Join, Leave and the port calls each
    /// update one): Docker sends them in order per endpoint, this keeps a stray concurrent one
    /// from undoing another's change. One netloomd per state directory, so a process lock does.
    records_lock: Mutex<()>,
    /// The addresses each Docker network's endpoints hold.
    in_use: InUse,
    /// Overlays (netloomd --store): the global store and this host's VTEP.
    overlay: Option<crate::overlay::OverlayCtx>,
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn not_found_network(id: &str) -> Error {
    Error::NotFound(format!(
        "network {} is not a netloom network (unknown id, or created before netloom's state was lost)",
        short(id)
    ))
}

impl Service {
    pub fn new(
        engine: Engine,
        firewall: Option<Arc<dyn Firewaller>>,
        firewall_missing: String,
        spaces: AddressSpaces,
    ) -> Self {
        Service {
            engine,
            firewall,
            firewall_missing,
            spaces,
            owner_seq: AtomicU64::new(0),
            records_lock: Mutex::new(()),
            in_use: InUse::default(),
            overlay: None,
        }
    }

    /// Serves overlay networks too (netloomd with `--store`).
    pub fn with_overlay(mut self, ctx: crate::overlay::OverlayCtx) -> Self {
        self.overlay = Some(ctx);
        self
    }

    fn overlay_ctx(&self) -> Result<&crate::overlay::OverlayCtx> {
        self.overlay.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "overlay networks need netloomd started with --store etcd://…".into(),
            )
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        self.engine.store()
    }

    pub fn ipam(&self) -> &Arc<dyn Ipam> {
        self.engine.ipam()
    }

    pub fn firewall(&self) -> Option<&Arc<dyn Firewaller>> {
        self.firewall.as_ref()
    }

    pub fn spaces(&self) -> &AddressSpaces {
        &self.spaces
    }

    fn key(endpoint_id: &str) -> Result<AttachmentKey> {
        AttachmentKey::new(endpoint_id, ENDPOINT_IFNAME).map_err(|_| {
            Error::InvalidConfig(format!("endpoint id {endpoint_id:?} is not a valid id"))
        })
    }

    fn docker_network(&self, id: &str) -> Result<(NetworkRecord, Network)> {
        let rec = records::get_network(self.store().as_ref(), id)?
            .ok_or_else(|| not_found_network(id))?;
        let net = self
            .engine
            .get_network(id)?
            .ok_or_else(|| not_found_network(id))?;
        Ok((rec, net))
    }

    fn docker_endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<EndpointRecord> {
        records::get_endpoint(self.store().as_ref(), network_id, endpoint_id)?.ok_or_else(|| {
            Error::NotFound(format!(
                "endpoint {} does not exist on network {}",
                short(endpoint_id),
                short(network_id)
            ))
        })
    }

    // ------------------------------------------------------------ NetworkDriver

    /// CreateNetwork for the Docker driver `plugin`, built on the engine driver `driver`.
    pub fn create_network(
        &self,
        plugin: &str,
        driver: &str,
        req: &CreateNetworkRequest,
    ) -> Result<()> {
        let id = req.network_id.as_str();
        engine_core::validate_network_name(id)
            .map_err(|_| Error::InvalidConfig(format!("NetworkID {id:?} is not a valid id")))?;
        let opts = translate::network_options(&req.options, plugin, driver)?;
        let v4 = translate::pool_data(&req.ipv4_data, false)?;
        let v6 = translate::pool_data(&req.ipv6_data, true)?;
        if v4.is_empty() && v6.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "network {}: Docker sent no subnet (neither IPv4Data nor IPv6Data)",
                short(id)
            )));
        }
        // No engine pool: Docker's IPAM leased the addresses already (see the module doc).
        let subnets: Vec<SubnetConfig> = v4
            .iter()
            .chain(v6.iter())
            .map(|d| SubnetConfig {
                subnet: d.subnet,
                gateway: d.gateway,
                pool_id: String::new(),
            })
            .collect();
        let rec = NetworkRecord {
            id: id.to_string(),
            driver: driver.to_string(),
            plugin: plugin.to_string(),
            pools: Vec::new(),
            host_binding: opts.host_binding,
            iface_prefix: opts.iface_prefix.clone(),
        };
        let mut spec = NetworkSpec {
            name: short(id).to_string(),
            driver: driver.to_string(),
            subnets,
            internal: opts.internal,
            enable_ipv6: opts.enable_ipv6 || !v6.is_empty(),
            mtu: opts.mtu,
            options: opts.driver.clone(),
        };
        // An overlay's VNI comes from the global store, its VTEP and MTU from this host.
        let overlay = if driver == "overlay" {
            let ctx = self.overlay_ctx()?;
            let name = crate::overlay::resolve(ctx, &mut spec)?;
            Some((name.clone(), crate::overlay::device_exists(&name)?))
        } else {
            None
        };
        let store = self.store().as_ref();
        if let Some(existing) = self.engine.get_network(id)? {
            // Docker repeats a request whose answer it lost (we crashed after the work).
            let options = self.engine.drivers().get(driver)?.validate(&spec)?;
            // Pools aside: a network of an earlier version has shadow pools, this answer none.
            let plain = |s: &[SubnetConfig]| -> Vec<(IpNetwork, Option<IpAddr>)> {
                s.iter().map(|s| (s.subnet, s.gateway)).collect()
            };
            let same = plain(&existing.subnets) == plain(&spec.subnets)
                && existing.internal == spec.internal
                && existing.enable_ipv6 == spec.enable_ipv6
                && existing.mtu == spec.mtu
                && existing.options == options;
            let same_record = records::get_network(store, id)?.is_some_and(|r| {
                NetworkRecord {
                    pools: Vec::new(),
                    ..r
                } == rec
            });
            if same && same_record {
                return Ok(());
            }
            return Err(Error::Conflict(format!(
                "network {} already exists",
                short(id)
            )));
        }
        // The record goes first: if we die before the network exists, startup sees a record
        // without a network and removes it with its pools.
        records::put_network(store, &rec)?;
        fault::point("create-network:after-record");
        fault::point("create-network:after-pools");
        let done = self.engine.ensure_network(id, &spec, OverlapPolicy::Reject);
        match done {
            Ok(net) => {
                if let (Some((name, false)), Some(ctx)) = (&overlay, &self.overlay) {
                    // The device is new here: bring it up to date (the agent does the rest).
                    if let Err(e) = crate::overlay::sync_new_device(ctx, name) {
                        tracing::warn!(overlay = %name, error = %e, "could not copy the overlay's remote containers yet; the agent's next re-sync will");
                    }
                }
                tracing::info!(network = %short(id), bridge = ?net.options.get("bridge"), subnets = ?net.subnets.iter().map(|s| s.subnet.to_string()).collect::<Vec<_>>(), "network created");
                Ok(())
            }
            Err(e) => {
                if let Err(u) = self.forget_network(&rec) {
                    tracing::warn!(network = %short(id), error = %u, "could not undo a failed CreateNetwork; the next start will");
                }
                Err(e)
            }
        }
    }

    /// Drops every reference to a pool; a missing pool is fine.
    fn release_pool_fully(&self, pool_id: &str) -> Result<()> {
        let Some(pool) = self.ipam().get_pool(pool_id)? else {
            return Ok(());
        };
        for _ in 0..pool.refs.max(1) {
            match self.ipam().release_pool(pool_id) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes what a Docker network owns besides the engine network: its shadow pools (earlier
    /// versions), its endpoint records, then its record.
    pub(crate) fn forget_network(&self, rec: &NetworkRecord) -> Result<()> {
        self.in_use.forget(&rec.id);
        for p in &rec.pools {
            self.release_pool_fully(p)?;
        }
        for ep in records::list_endpoints(self.store().as_ref(), Some(&rec.id))? {
            records::delete_endpoint(self.store().as_ref(), &ep.network_id, &ep.endpoint_id)?;
        }
        records::delete_network(self.store().as_ref(), &rec.id)
    }

    pub fn delete_network(&self, req: &NetworkRequest) -> Result<()> {
        let id = req.network_id.as_str();
        let Some(rec) = records::get_network(self.store().as_ref(), id)? else {
            // Already gone (a repeated request), or never ours: nothing of ours to remove.
            tracing::info!(network = %short(id), "DeleteNetwork for a network netloom does not have; nothing to do");
            return Ok(());
        };
        // Docker deletes a network only once it has no endpoints left; any the engine still
        // has are leftovers of failed DeleteEndpoints and would block the deletion forever.
        for ep in self.engine.list_endpoints(id)? {
            tracing::warn!(network = %short(id), endpoint = %ep.key, "removing an endpoint Docker no longer has");
            self.engine.detach(id, &ep.key, None)?;
        }
        self.engine.delete_network(id)?;
        fault::point("delete-network:after-engine");
        self.forget_network(&rec)?;
        tracing::info!(network = %short(id), "network deleted");
        Ok(())
    }

    pub fn create_endpoint(&self, req: &CreateEndpointRequest) -> Result<CreateEndpointResponse> {
        let (nid, eid) = (req.network_id.as_str(), req.endpoint_id.as_str());
        let (_, net) = self.docker_network(nid)?;
        let key = Self::key(eid)?;
        let v4 = translate::endpoint_address(&req.interface.address, false)?;
        let v6 = translate::endpoint_address(&req.interface.address_ipv6, true)?;
        let addresses: Vec<IpNetwork> = [v4, v6].into_iter().flatten().collect();
        for a in &addresses {
            if !net
                .subnets
                .iter()
                .any(|s| s.subnet.contains(a.ip()) && s.subnet.prefix() == a.prefix())
            {
                return Err(Error::InvalidConfig(format!(
                    "address {a} is in no subnet of network {} ({})",
                    short(nid),
                    net.subnets
                        .iter()
                        .map(|s| s.subnet.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if net.subnets.iter().any(|s| s.gateway == Some(a.ip())) {
                return Err(Error::Conflict(format!(
                    "address {} is the gateway of network {}",
                    a.ip(),
                    short(nid)
                )));
            }
        }
        // The engine leases one address per pool: a family with no address from Docker would
        // get one Docker never configures in the container.
        for (family, v6, have) in [("IPv4", false, v4.is_some()), ("IPv6", true, v6.is_some())] {
            if !have && net.subnets.iter().any(|s| s.subnet.is_ipv6() == v6) {
                return Err(Error::InvalidConfig(format!(
                    "Docker sent no {family} address for endpoint {} although network {} has {family} subnets",
                    short(eid),
                    short(nid)
                )));
            }
        }
        let (mac, mac_generated) = if req.interface.mac_address.is_empty() {
            (translate::generated_mac(v4.map(|a| a.ip()), eid), true)
        } else {
            (translate::normalise_mac(&req.interface.mac_address)?, false)
        };
        let store = self.store().as_ref();
        if let Some(rec) = records::get_endpoint(store, nid, eid)? {
            // A repeated request whose answer was lost: same endpoint, same answer.
            let same = self
                .engine
                .get_endpoint(nid, &key)?
                .is_some_and(|ep| ep.addresses == addresses);
            if same && rec.mac == mac {
                return Ok(endpoint_answer(&rec));
            }
            return Err(Error::Conflict(format!(
                "endpoint {} already exists on network {} with other settings",
                short(eid),
                short(nid)
            )));
        }
        let ips: Vec<IpAddr> = addresses.iter().map(|a| a.ip()).collect();
        let engine = &self.engine;
        self.in_use.claim(nid, &ips, || {
            Ok(engine
                .list_endpoints(nid)?
                .iter()
                .flat_map(|e| e.addresses.iter().map(|a| a.ip()))
                .collect())
        })?;
        let att = match self.engine.attach(&AttachRequest {
            network_id: nid.to_string(),
            key: key.clone(),
            sandbox: SandboxSetup::Runtime,
            static_addresses: ips.clone(),
            mac: Some(mac.clone()),
            ports: Vec::new(),
            extra_routes: Vec::new(),
            options: Options::new(),
        }) {
            Ok(att) => att,
            Err(e) => {
                self.in_use.release(nid, &ips);
                return Err(e);
            }
        };
        fault::point("create-endpoint:after-attach");
        let rec = EndpointRecord {
            network_id: nid.to_string(),
            endpoint_id: eid.to_string(),
            src_name: att.handoff.link.clone(),
            mac,
            mac_generated,
            ports: Vec::new(),
            sandbox_key: None,
        };
        // An overlay endpoint is announced to the other hosts (withdrawn again below if
        // anything fails).
        let published = match (crate::overlay::overlay_of(&net), &self.overlay) {
            (Some(o), Some(ctx)) => crate::overlay::publish(
                ctx,
                o,
                &key.owner(),
                addresses.iter().map(|a| a.ip()).collect(),
                &rec.mac,
            ),
            _ => Ok(()),
        };
        if let Err(e) = published.and_then(|()| records::put_endpoint(store, &rec)) {
            if let (Some(o), Some(ctx)) = (crate::overlay::overlay_of(&net), &self.overlay) {
                let _ = crate::overlay::withdraw(ctx, o, &key.owner());
            }
            match self.engine.detach(nid, &key, None) {
                Ok(()) => self.in_use.release(nid, &ips),
                Err(u) => {
                    tracing::warn!(endpoint = %short(eid), error = %u, "could not undo a failed CreateEndpoint; the next start will")
                }
            }
            return Err(e);
        }
        tracing::info!(network = %short(nid), endpoint = %short(eid), link = %rec.src_name, addresses = ?addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(), "endpoint created");
        Ok(endpoint_answer(&rec))
    }

    pub fn delete_endpoint(&self, req: &EndpointRequest) -> Result<()> {
        let (nid, eid) = (req.network_id.as_str(), req.endpoint_id.as_str());
        if records::get_network(self.store().as_ref(), nid)?.is_none() {
            tracing::info!(network = %short(nid), endpoint = %short(eid), "DeleteEndpoint on a network netloom does not have; nothing to do");
            return Ok(());
        }
        let key = Self::key(eid)?;
        if let Some(net) = self.engine.get_network(nid)? {
            if let Some(o) = crate::overlay::overlay_of(&net) {
                // Other hosts stop sending to it before it goes.
                crate::overlay::withdraw(self.overlay_ctx()?, o, &key.owner())?;
            }
        }
        let held: Vec<IpAddr> = self
            .engine
            .get_endpoint(nid, &key)?
            .map(|e| e.addresses.iter().map(|a| a.ip()).collect())
            .unwrap_or_default();
        // Idempotent: removes by name and owner whatever exists of the endpoint.
        self.engine.detach(nid, &key, None)?;
        self.in_use.release(nid, &held);
        fault::point("delete-endpoint:after-detach");
        records::delete_endpoint(self.store().as_ref(), nid, eid)?;
        tracing::info!(network = %short(nid), endpoint = %short(eid), "endpoint deleted");
        Ok(())
    }

    pub fn endpoint_oper_info(&self, req: &EndpointRequest) -> Result<EndpointOperInfoResponse> {
        let rec = self.docker_endpoint(&req.network_id, &req.endpoint_id)?;
        let key = Self::key(&req.endpoint_id)?;
        let ep = self.engine.get_endpoint(&req.network_id, &key)?;
        let mut value = Map::new();
        value.insert("netloom.src_name".into(), json!(rec.src_name));
        value.insert("netloom.mac".into(), json!(rec.mac));
        if let Some(ep) = &ep {
            value.insert("netloom.host_interface".into(), json!(ep.host_ifname));
            value.insert(
                "netloom.addresses".into(),
                json!(ep
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()),
            );
        }
        let container_v4 = ep
            .as_ref()
            .and_then(|e| e.addresses.iter().find(|a| a.is_ipv4()).map(|a| a.ip()));
        let bindings = translate::port_bindings(&rec.ports, container_v4);
        value.insert(
            OPT_PORTMAP.into(),
            serde_json::to_value(bindings).map_err(|e| Error::json("encode port bindings", e))?,
        );
        Ok(EndpointOperInfoResponse { value })
    }

    pub fn join(&self, req: &JoinRequest) -> Result<JoinResponse> {
        let (nid, eid) = (req.network_id.as_str(), req.endpoint_id.as_str());
        let (net_rec, _) = self.docker_network(nid)?;
        let rec = self.docker_endpoint(nid, eid)?;
        if req.sandbox_key.is_empty() {
            return Err(Error::InvalidConfig("Join without a SandboxKey".into()));
        }
        let key = Self::key(eid)?;
        let sandbox = Sandbox {
            netns_path: PathBuf::from(&req.sandbox_key),
        };
        let info = self.engine.join(nid, &key, &sandbox)?;
        let mut resp = JoinResponse {
            interface_name: InterfaceName {
                src_name: rec.src_name.clone(),
                dst_prefix: net_rec
                    .iface_prefix
                    .clone()
                    .or_else(|| (!info.dst_prefix.is_empty()).then(|| info.dst_prefix.clone()))
                    .unwrap_or_else(|| "eth".into()),
            },
            // Docker must never add its docker_gwbridge: the gateway, if any, is ours.
            disable_gateway_service: true,
            ..Default::default()
        };
        for r in &info.routes {
            let default = r.destination.prefix() == 0;
            match r.gateway {
                Some(gw) if default && gw.is_ipv4() && resp.gateway.is_empty() => {
                    resp.gateway = gw.to_string()
                }
                Some(gw) if default && gw.is_ipv6() && resp.gateway_ipv6.is_empty() => {
                    resp.gateway_ipv6 = gw.to_string()
                }
                Some(gw) => resp.static_routes.push(StaticRoute {
                    destination: r.destination.to_string(),
                    route_type: ROUTE_NEXTHOP,
                    next_hop: gw.to_string(),
                }),
                None => resp.static_routes.push(StaticRoute {
                    destination: r.destination.to_string(),
                    route_type: ROUTE_CONNECTED,
                    next_hop: String::new(),
                }),
            }
        }
        let _guard = self.lock_records();
        let mut rec = self.docker_endpoint(nid, eid)?;
        rec.sandbox_key = Some(req.sandbox_key.clone());
        records::put_endpoint(self.store().as_ref(), &rec)?;
        tracing::info!(network = %short(nid), endpoint = %short(eid), sandbox = %req.sandbox_key, "endpoint joined");
        Ok(resp)
    }

    pub fn leave(&self, req: &EndpointRequest) -> Result<()> {
        let _guard = self.lock_records();
        let Some(mut rec) =
            records::get_endpoint(self.store().as_ref(), &req.network_id, &req.endpoint_id)?
        else {
            return Ok(());
        };
        if !rec.ports.is_empty() {
            // Docker revokes before Leave; this covers a Revoke that failed.
            self.publish_locked(&req.network_id, &req.endpoint_id, &[])?;
            rec.ports.clear();
        }
        rec.sandbox_key = None;
        records::put_endpoint(self.store().as_ref(), &rec)
    }

    pub fn program_external_connectivity(
        &self,
        req: &ProgramExternalConnectivityRequest,
    ) -> Result<()> {
        let (nid, eid) = (req.network_id.as_str(), req.endpoint_id.as_str());
        let (net_rec, net) = self.docker_network(nid)?;
        self.docker_endpoint(nid, eid)?;
        let bindings: Vec<PortBinding> = match req.options.get(OPT_PORTMAP) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                Error::InvalidConfig(format!(
                    "option {OPT_PORTMAP} is not a list of port bindings: {e}"
                ))
            })?,
        };
        if net.internal {
            // Docker's own bridge publishes nothing on an internal network either.
            if !bindings.is_empty() {
                tracing::info!(network = %short(nid), endpoint = %short(eid), "not publishing ports on an internal network");
            }
            return Ok(());
        }
        let wanted = translate::port_requests(&bindings, net_rec.host_binding)?;
        self.publish(nid, eid, &wanted)
    }

    pub fn revoke_external_connectivity(&self, req: &EndpointRequest) -> Result<()> {
        match records::get_endpoint(self.store().as_ref(), &req.network_id, &req.endpoint_id)? {
            Some(rec) if !rec.ports.is_empty() => {
                self.publish(&req.network_id, &req.endpoint_id, &[])
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn lock_records(&self) -> MutexGuard<'_, ()> {
        // A panic while holding it changed no record half-way (each is one write).
        self.records_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, nid: &str, eid: &str, wanted: &[PortRequest]) -> Result<()> {
        let _guard = self.lock_records();
        self.publish_locked(nid, eid, wanted)
    }

    /// Makes the endpoint's published ports exactly `wanted` in the firewall, then in its
    /// record (the caller holds the records lock). The firewall call replaces the endpoint's
    /// entries as a whole, so startup reconciliation can restore the record's set after a crash
    /// between the two.
    fn publish_locked(&self, nid: &str, eid: &str, wanted: &[PortRequest]) -> Result<()> {
        let store = self.store().as_ref();
        let mut rec = self.docker_endpoint(nid, eid)?;
        if wanted.is_empty() && rec.ports.is_empty() {
            return Ok(());
        }
        let Some(fw) = &self.firewall else {
            if wanted.is_empty() {
                rec.ports.clear();
                return records::put_endpoint(store, &rec);
            }
            return Err(Error::Unsupported(format!(
                "publishing ports needs a firewall and netloomd has none: {}",
                self.firewall_missing
            )));
        };
        let (_, net) = self.docker_network(nid)?;
        let rules = network_rules(&net).ok_or_else(|| {
            Error::Unsupported(format!(
                "network {} has no host interface to publish ports on",
                short(nid)
            ))
        })?;
        let key = Self::key(eid)?;
        let ep = self.engine.get_endpoint(nid, &key)?.ok_or_else(|| {
            Error::NotFound(format!(
                "endpoint {} does not exist on network {}",
                short(eid),
                short(nid)
            ))
        })?;
        let apply = |ports: &[PortMapping]| {
            fw.add_endpoint(
                &rules,
                &EndpointRules {
                    network_id: nid.to_string(),
                    owner: key.owner(),
                    addresses: ep.addresses.iter().map(|a| a.ip()).collect(),
                    ports: ports.to_vec(),
                },
            )
        };
        let previous = rec.ports.clone();
        let restore = |e: Error| -> Error {
            if let Err(u) = apply(&previous) {
                tracing::warn!(endpoint = %short(eid), error = %u, "could not restore the previous published ports");
            }
            e
        };
        let mut chosen: Vec<PortMapping> = wanted
            .iter()
            .filter_map(|w| match w {
                PortRequest::Fixed(m) => Some(m.clone()),
                PortRequest::Choose { .. } => None,
            })
            .collect();
        apply(&chosen).map_err(restore)?;
        for w in wanted {
            let PortRequest::Choose {
                proto,
                host_ip,
                first,
                last,
                container_port,
            } = *w
            else {
                continue;
            };
            // Docker's `-p 8000-8010:80`: the first free port of the range.
            let mut found = false;
            for port in first..=last {
                chosen.push(PortMapping::new(
                    proto,
                    host_ip,
                    (port, port),
                    container_port,
                )?);
                match apply(&chosen) {
                    Ok(()) => {
                        found = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Conflict => {
                        chosen.pop();
                    }
                    Err(e) => return Err(restore(e)),
                }
            }
            if !found {
                return Err(restore(Error::Conflict(format!(
                    "no free host port in {first}-{last}/{proto} for container port {container_port}"
                ))));
            }
        }
        fault::point("publish:after-firewall");
        rec.ports = chosen;
        records::put_endpoint(store, &rec).map_err(restore)?;
        tracing::info!(endpoint = %short(eid), ports = rec.ports.len(), "published ports updated");
        Ok(())
    }

    // ------------------------------------------------------------ IpamDriver

    pub fn address_spaces(&self) -> AddressSpacesResponse {
        AddressSpacesResponse {
            local_default_address_space: self.spaces.local.clone(),
            global_default_address_space: self.spaces.global.clone(),
        }
    }

    /// Whether a pool id was handed out by the IpamDriver (the shadow pools of networks and
    /// the CNI plugins' pools are not Docker's to touch).
    /// The IPAM a pool id belongs to: an overlay's global pool, or this host's.
    fn ipam_for(&self, pool_id: &str) -> Result<Arc<dyn Ipam>> {
        if crate::overlay::is_overlay_pool(pool_id) {
            let ipam: Arc<dyn Ipam> = self.overlay_ctx()?.ipam.clone();
            return Ok(ipam);
        }
        self.ipam_pool_id(pool_id)?;
        Ok(self.ipam().clone())
    }

    fn ipam_pool_id<'a>(&self, pool_id: &'a str) -> Result<&'a str> {
        let ours = [&self.spaces.local, &self.spaces.global].iter().any(|s| {
            pool_id
                .strip_prefix(s.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        });
        if ours {
            Ok(pool_id)
        } else {
            Err(Error::InvalidConfig(format!(
                "pool {pool_id:?} was not handed out by netloom's IPAM driver"
            )))
        }
    }

    /// A lease owner no other request shares: Docker does not say which endpoint an address is
    /// for, so every RequestAddress is its own owner and ReleaseAddress goes by address.
    fn new_owner(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "docker-{:x}-{nanos:x}-{}",
            std::process::id(),
            self.owner_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub fn request_pool(&self, req: &RequestPoolRequest) -> Result<RequestPoolResponse> {
        let space = if req.address_space.is_empty() {
            self.spaces.local.clone()
        } else {
            req.address_space.clone()
        };
        if space != self.spaces.local && space != self.spaces.global {
            return Err(Error::InvalidConfig(format!(
                "address space {space:?} is not one of netloom's ({}, {})",
                self.spaces.local, self.spaces.global
            )));
        }
        if let Some(name) = req.options.get(crate::overlay::OPT_OVERLAY) {
            // An overlay's addresses are leased cluster-wide, from the pool its CNI hosts use.
            let subnet: IpNetwork = req.pool.parse().map_err(|_| {
                Error::InvalidConfig(format!(
                    "--ipam-opt overlay={name} needs --subnet (the overlay's subnet on every host)"
                ))
            })?;
            let id = crate::overlay::request_pool(self.overlay_ctx()?, name, subnet)?;
            tracing::info!(pool = %id, %subnet, "overlay IPAM pool handed out");
            return Ok(RequestPoolResponse {
                pool_id: id,
                pool: subnet.to_string(),
                data: Default::default(),
            });
        }
        for k in req.options.keys() {
            // Docker's own keys pass through; what users type with --ipam-opt means nothing here.
            if !k.starts_with("com.docker.") {
                return Err(Error::InvalidConfig(format!(
                    "unknown --ipam-opt {k:?}: netloom's IPAM driver takes no options"
                )));
            }
        }
        let family = if req.v6 { "IPv6" } else { "IPv4" };
        let pool = if req.pool.is_empty() {
            if !req.sub_pool.is_empty() {
                return Err(Error::InvalidConfig("--ip-range needs --subnet".into()));
            }
            let n = self.owner_seq.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            self.ipam().request_pool(&PoolRequest {
                id: Some(format!("{space}/auto-{nanos:x}-{n}")),
                v6: req.v6,
                ..Default::default()
            })?
        } else {
            let subnet: IpNetwork = req.pool.parse().map_err(|_| {
                Error::InvalidConfig(format!("--subnet {:?} is not a CIDR", req.pool))
            })?;
            if subnet.is_ipv6() != req.v6 {
                return Err(Error::InvalidConfig(format!(
                    "--subnet {subnet} is not an {family} subnet"
                )));
            }
            if subnet.ip() != subnet.network() {
                return Err(Error::InvalidConfig(format!(
                    "--subnet {subnet} has host bits set (did you mean {}/{}?)",
                    subnet.network(),
                    subnet.prefix()
                )));
            }
            let mut range = RangeSpec {
                subnet,
                start: None,
                end: None,
                gateway: None,
            };
            let mut id = format!("{space}/{subnet}");
            if !req.sub_pool.is_empty() {
                let sub: IpNetwork = req.sub_pool.parse().map_err(|_| {
                    Error::InvalidConfig(format!("--ip-range {:?} is not a CIDR", req.sub_pool))
                })?;
                let (lo, hi) = bounds(&sub);
                if sub.is_ipv6() != subnet.is_ipv6()
                    || !subnet.contains(lo)
                    || !subnet.contains(hi)
                    || sub.prefix() < subnet.prefix()
                {
                    return Err(Error::InvalidConfig(format!(
                        "--ip-range {sub} is not inside --subnet {subnet}"
                    )));
                }
                let (net_lo, net_hi) = bounds(&subnet);
                // The subnet's own network and broadcast addresses are never handed out anyway.
                range.start = (lo != net_lo).then_some(lo);
                range.end = (hi != net_hi || subnet.is_ipv6()).then_some(hi);
                id = format!("{id}/{sub}");
            }
            self.ipam()
                .request_pool(&PoolRequest {
                    id: Some(id),
                    ranges: vec![range],
                    ..Default::default()
                })
                .map_err(|e| match e.kind() {
                    ErrorKind::Conflict => Error::Conflict(format!("--subnet {subnet}: {e}")),
                    _ => e,
                })?
        };
        let subnet = pool
            .ranges
            .first()
            .map(|r| r.subnet)
            .ok_or_else(|| Error::Internal(format!("pool {} has no range", pool.id)))?;
        tracing::info!(pool = %pool.id, %subnet, refs = pool.refs, "IPAM pool handed out");
        Ok(RequestPoolResponse {
            pool_id: pool.id,
            pool: subnet.to_string(),
            data: Default::default(),
        })
    }

    pub fn release_pool(&self, req: &ReleasePoolRequest) -> Result<()> {
        if crate::overlay::is_overlay_pool(&req.pool_id) {
            // Shared by every host of the overlay (and its CNI hosts): one host's
            // `docker network rm` must not take the other hosts' leases with it.
            return Ok(());
        }
        let id = self.ipam_pool_id(&req.pool_id)?;
        match self.ipam().release_pool(id) {
            Ok(()) => Ok(()),
            // Released already (Docker repeats a request whose answer it lost).
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn request_address(&self, req: &RequestAddressRequest) -> Result<RequestAddressResponse> {
        let ipam = self.ipam_for(&req.pool_id)?;
        let id = req.pool_id.as_str();
        let pool = ipam.get_pool(id)?.ok_or_else(|| {
            Error::NotFound(format!(
                "pool {id} does not exist (released, or netloom's state was lost)"
            ))
        })?;
        let first = pool
            .ranges
            .first()
            .ok_or_else(|| Error::Internal(format!("pool {id} has no range")))?;
        let mut wanted: Option<IpAddr> = if req.address.is_empty() {
            None
        } else {
            Some(translate::parse_ip_or_cidr(&req.address).ok_or_else(|| {
                Error::InvalidConfig(format!("address {:?} is not an IP address", req.address))
            })?)
        };
        let cidr = |ip: IpAddr| -> Result<String> {
            let r = pool
                .ranges
                .iter()
                .find(|r| r.subnet.contains(ip))
                .unwrap_or(first);
            IpNetwork::new(ip, r.subnet.prefix())
                .map(|n| n.to_string())
                .map_err(|e| Error::Internal(format!("{ip}/{}: {e}", r.subnet.prefix())))
        };
        if req
            .options
            .get(OPT_REQUEST_ADDRESS_TYPE)
            .map(String::as_str)
            == Some(GATEWAY_REQUEST)
        {
            // Pools netloom chose carry their gateway (the first address), excluded from leases.
            let reserved_gw = pool.ranges.iter().find_map(|r| r.gateway);
            match (wanted, reserved_gw) {
                (None, Some(gw)) => return Ok(address_answer(cidr(gw)?)),
                (Some(w), Some(gw)) if w == gw => return Ok(address_answer(cidr(gw)?)),
                // Like Docker's IPAM: the gateway is the subnet's first address, even when
                // --ip-range puts the dynamic addresses elsewhere.
                (None, None) => wanted = Some(bounds_first_host(&first.subnet)),
                _ => {}
            }
        }
        let lease = ipam
            .request_address(
                id,
                &AddressRequest {
                    owner: self.new_owner(),
                    address: wanted,
                },
            )
            .map_err(|e| match (e.kind(), wanted) {
                (ErrorKind::Conflict, Some(w)) if e.to_string().contains("already leased") => {
                    Error::Conflict(format!("address {w} is already in use in {}", first.subnet))
                }
                _ => e,
            })?;
        Ok(address_answer(lease.address.to_string()))
    }

    pub fn release_address(&self, req: &ReleaseAddressRequest) -> Result<()> {
        let ipam = self.ipam_for(&req.pool_id)?;
        let id = req.pool_id.as_str();
        let ip = translate::parse_ip_or_cidr(&req.address).ok_or_else(|| {
            Error::InvalidConfig(format!("address {:?} is not an IP address", req.address))
        })?;
        match ipam.release_address(id, &Release::Address(ip)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn endpoint_answer(rec: &EndpointRecord) -> CreateEndpointResponse {
    CreateEndpointResponse {
        interface: rec.mac_generated.then(|| EndpointInterface {
            mac_address: rec.mac.clone(),
            ..Default::default()
        }),
    }
}

fn address_answer(address: String) -> RequestAddressResponse {
    RequestAddressResponse {
        address,
        data: Default::default(),
    }
}

/// The first and last address of a subnet.
fn bounds(n: &IpNetwork) -> (IpAddr, IpAddr) {
    match n {
        IpNetwork::V4(v) => (IpAddr::V4(v.network()), IpAddr::V4(v.broadcast())),
        IpNetwork::V6(v) => {
            let lo = u128::from(v.network());
            let host_bits = 128 - u32::from(v.prefix());
            let hi = if host_bits >= 128 {
                u128::MAX
            } else {
                lo | ((1u128 << host_bits) - 1)
            };
            (IpAddr::V6(lo.into()), IpAddr::V6(hi.into()))
        }
    }
}

/// The subnet's first host address (its network address + 1).
fn bounds_first_host(n: &IpNetwork) -> IpAddr {
    match bounds(n).0 {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).saturating_add(1).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).saturating_add(1).into()),
    }
}
