//! The engine: the one orchestrator both front doors call.
//!
//! It ties the contracts together — state store, IPAM, drivers, firewall — and makes each
//! operation a journaled transaction: every step is recorded before it is taken, so an error
//! rolls the whole operation back and a crash is undone by the next operation on the network.
//! Front doors stay thin: they parse their protocol into these calls and render the answer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::driver::{Driver, Handoff, JoinInfo, Op};
use crate::error::{Error, Result, ResultExt};
use crate::firewall::{EndpointRules, Firewaller, NetworkRules};
use crate::ipam::{AddressRequest, Ipam, Release};
use crate::journal::{self, CoreUndoer, Txn, UndoStep, Undoer};
use crate::model::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, Network, NetworkSpec, Placement, PortMapping,
    Sandbox,
};
use crate::store::{Expect, Key, StateStore, StateStoreExt};

/// How long an operation waits for a network's lock before answering "busy, try again".
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Drivers by name.
#[derive(Default, Clone)]
pub struct DriverRegistry {
    drivers: BTreeMap<String, Arc<dyn Driver>>,
}

impl DriverRegistry {
    pub fn register(&mut self, driver: Arc<dyn Driver>) {
        self.drivers.insert(driver.name().to_string(), driver);
    }

    pub fn get(&self, name: &str) -> Result<Arc<dyn Driver>> {
        self.drivers.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.drivers.keys().map(String::as_str).collect();
            Error::NotFound(format!(
                "no network driver named {name:?} (known: {})",
                known.join(", ")
            ))
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.drivers.keys().cloned().collect()
    }
}

/// Whether a network's subnets may overlap other networks'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapPolicy {
    Reject,
    Allow,
}

/// Who puts the endpoint's link into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxSetup {
    /// The engine moves the link into this namespace, names it `ifname`, sets addresses,
    /// routes and brings it up (CNI).
    Configure(Sandbox),
    /// The runtime does it; the link stays in the host for it to take (Docker's Join).
    Runtime,
}

/// What an attach asks for beyond the endpoint spec.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub network_id: String,
    pub key: AttachmentKey,
    pub sandbox: SandboxSetup,
    /// Specific addresses wanted (static IPs); matched to pools by subnet.
    pub static_addresses: Vec<IpAddr>,
    pub mac: Option<String>,
    pub ports: Vec<PortMapping>,
    /// Routes to add in the sandbox beside the driver's (CNI IPAM `routes`).
    pub extra_routes: Vec<crate::model::RouteSpec>,
    pub options: crate::model::Options,
}

/// The result of an attach, for the front door to render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: Network,
    pub endpoint: Endpoint,
    pub handoff: Handoff,
    pub join: JoinInfo,
}

/// What goes into a sandbox.
#[derive(Debug, Clone, Copy)]
pub struct SandboxInterface<'a> {
    pub ifname: &'a str,
    pub handoff: &'a Handoff,
    pub addresses: &'a [IpNetwork],
    pub join: &'a JoinInfo,
    pub mtu: Option<u32>,
}

/// Configures a sandbox after the driver handed over a link. Implemented over netlink by
/// [`crate::sandbox`]; a trait so the engine's own logic is testable without root.
pub trait SandboxConfigurator: Send + Sync {
    /// Moves `iface.handoff.link` into the sandbox as `iface.ifname` with its addresses, the
    /// routes of `iface.join` and the link up; records undo steps in `op` before each change.
    /// Returns the interface's MAC address as it ended up in the sandbox.
    fn configure(
        &self,
        op: &mut Op,
        sandbox: &Sandbox,
        iface: &SandboxInterface<'_>,
    ) -> Result<String>;

    /// Removes `ifname` from the sandbox if it is still there (idempotent; a missing namespace
    /// is fine).
    fn deconfigure(&self, sandbox: &Sandbox, ifname: &str) -> Result<()>;

    /// Compares the sandbox's interface with what it should be (present, up, addresses).
    fn check(&self, sandbox: &Sandbox, ifname: &str, addresses: &[IpNetwork])
        -> Result<Vec<Drift>>;
}

/// The engine. Cheap to clone; every method is synchronous (daemons call it from blocking
/// tasks) and safe to run from many processes at once.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn StateStore>,
    ipam: Arc<dyn Ipam>,
    drivers: DriverRegistry,
    firewall: Option<Arc<dyn Firewaller>>,
    sandboxes: Arc<dyn SandboxConfigurator>,
    /// The namespace treated as the host (tests: a fake host); None = our own.
    host_netns: Option<PathBuf>,
    /// Whether an endpoint's firewall entries are only ever its record's ports (see
    /// [`Engine::with_ports_only_in_records`]).
    ports_only_in_records: bool,
}

fn network_key(id: &str) -> Key {
    Key::new(["networks", id])
}

fn endpoint_prefix(network_id: &str) -> Key {
    Key::new(["endpoints", network_id])
}

fn endpoint_key(network_id: &str, key: &AttachmentKey) -> Key {
    Key::new(["endpoints", network_id, &key.container_id, &key.ifname])
}

fn network_scope(id: &str) -> String {
    format!("network/{id}")
}

impl Engine {
    pub fn new(
        store: Arc<dyn StateStore>,
        ipam: Arc<dyn Ipam>,
        drivers: DriverRegistry,
        firewall: Option<Arc<dyn Firewaller>>,
        sandboxes: Arc<dyn SandboxConfigurator>,
        host_netns: Option<PathBuf>,
    ) -> Self {
        Engine {
            store,
            ipam,
            drivers,
            firewall,
            sandboxes,
            host_netns,
            ports_only_in_records: false,
        }
    }

    /// Declares that every firewall entry of an endpoint comes from the ports in its record
    /// (true of the CNI plugins, where the chained portmap keeps and removes its own), so a
    /// detach of an endpoint recorded without ports need not open the firewall at all. Off by
    /// default: netloomd publishes ports after the attach, outside the endpoint's record, and
    /// relies on the detach to remove them.
    pub fn with_ports_only_in_records(mut self, yes: bool) -> Self {
        self.ports_only_in_records = yes;
        self
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    pub fn ipam(&self) -> &Arc<dyn Ipam> {
        &self.ipam
    }

    pub fn drivers(&self) -> &DriverRegistry {
        &self.drivers
    }

    fn undoer(&self) -> Arc<dyn Undoer> {
        let next: Arc<dyn Undoer> = Arc::new(EngineUndoer {
            ipam: self.ipam.clone(),
            firewall: self.firewall.clone(),
        });
        Arc::new(CoreUndoer::new(self.store.clone(), Some(next)))
    }

    fn begin(&self, scope: &str, what: String) -> Result<Op> {
        // Finish what a crashed operation on this scope left, before starting anew.
        let undoer = self.undoer();
        let rec = journal::recover(self.store.as_ref(), undoer.as_ref(), scope)?;
        for (r, e) in &rec.failed {
            tracing::warn!(journal = %r.id, error = %e, "crashed operation could not be fully undone");
        }
        let txn = Txn::begin(self.store.clone(), undoer, scope, what)?;
        Ok(Op::new(txn, self.store.clone(), self.host_netns.clone()))
    }

    /// Undoes every operation whose process died (daemon start).
    pub fn recover_all(&self) -> Result<journal::Recovery> {
        let undoer = self.undoer();
        journal::recover_all(self.store.as_ref(), undoer.as_ref())
    }

    // ------------------------------------------------------------ networks

    pub fn get_network(&self, id: &str) -> Result<Option<Network>> {
        Ok(self
            .store
            .get_json::<Network>(&network_key(id))?
            .map(|(_, n)| n))
    }

    pub fn list_networks(&self) -> Result<Vec<Network>> {
        Ok(self
            .store
            .list_json::<Network>(&Key::new(["networks"]))?
            .into_iter()
            .map(|(_, _, n)| n)
            .collect())
    }

    /// Creates a network, or returns it unchanged if one with this id and the same spec exists
    /// (CNI runtimes "create" on every ADD). `overlap` says whether its subnets may overlap
    /// other networks' (CNI: yes, networks are independent by name; Docker: no).
    pub fn ensure_network(
        &self,
        id: &str,
        spec: &NetworkSpec,
        overlap: OverlapPolicy,
    ) -> Result<Network> {
        crate::model::validate_network_name(id)?;
        let driver = self.drivers.get(&spec.driver)?;
        let options = driver.validate(spec)?;
        let wanted = Network {
            id: id.to_string(),
            name: spec.name.clone(),
            driver: spec.driver.clone(),
            subnets: spec.subnets.clone(),
            internal: spec.internal,
            enable_ipv6: spec.enable_ipv6,
            mtu: spec.mtu,
            options,
        };
        if let Some((_, existing)) = self.store.get_json::<Network>(&network_key(id))? {
            if existing == wanted {
                return Ok(existing);
            }
        }
        if overlap == OverlapPolicy::Reject {
            self.check_overlaps(&wanted)?;
        }
        let _lock = self.store.lock(&network_scope(id), LOCK_TIMEOUT)?;
        // Someone may have created it while we waited for the lock (parallel CNI ADDs).
        let key = network_key(id);
        let previous = self.store.get(&key)?;
        if let Some(p) = &previous {
            if serde_json::from_slice::<Network>(&p.value).ok().as_ref() == Some(&wanted) {
                return Ok(wanted);
            }
        }
        let mut op = self.begin(&network_scope(id), format!("create network {id}"))?;
        driver
            .create_network(&mut op, &wanted)
            .with_context(|| format!("network {}", wanted.name))?;
        if let Some(fw) = &self.firewall {
            if let Some(rules) = network_rules(&wanted) {
                op.record(UndoStep::Custom {
                    kind: "firewall-network".into(),
                    data: serde_json::json!({ "network_id": id }),
                })?;
                fw.setup_network(&rules)?;
            }
        }
        // The record goes in last: whoever sees it may rely on the bridge and rules existing.
        op.record(UndoStep::RestoreKey {
            key: key.to_string(),
            value: previous.map(|v| v.value),
        })?;
        self.store.put_json(&key, &wanted, Expect::Any)?;
        op.commit()?;
        Ok(wanted)
    }

    fn check_overlaps(&self, net: &Network) -> Result<()> {
        for other in self.list_networks()? {
            if other.id == net.id {
                continue;
            }
            for s in &net.subnets {
                for o in &other.subnets {
                    if crate::model::subnets_overlap(s.subnet, o.subnet) && !shares_pool(s, o) {
                        return Err(Error::Conflict(format!(
                            "subnet {} overlaps subnet {} of network {}",
                            s.subnet, o.subnet, other.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes a network that has no endpoints left.
    pub fn delete_network(&self, id: &str) -> Result<()> {
        let Some(net) = self.get_network(id)? else {
            return Ok(());
        };
        let _lock = self.store.lock(&network_scope(id), LOCK_TIMEOUT)?;
        let eps = self.store.list(&endpoint_prefix(id))?;
        if !eps.is_empty() {
            return Err(Error::Conflict(format!(
                "network {} still has {} endpoint(s); detach them first",
                net.name,
                eps.len()
            )));
        }
        let driver = self.drivers.get(&net.driver)?;
        let mut op = self.begin(&network_scope(id), format!("delete network {id}"))?;
        if let Some(fw) = &self.firewall {
            fw.teardown_network(id)?;
            crate::firewall::verified::forget(self.store.as_ref(), id)?;
        }
        driver.delete_network(&mut op, &net)?;
        self.store.delete(&network_key(id), Expect::Any)?;
        op.commit()
    }

    // ------------------------------------------------------------ endpoints

    pub fn get_endpoint(&self, network_id: &str, key: &AttachmentKey) -> Result<Option<Endpoint>> {
        Ok(self
            .store
            .get_json::<Endpoint>(&endpoint_key(network_id, key))?
            .map(|(_, e)| e))
    }

    pub fn list_endpoints(&self, network_id: &str) -> Result<Vec<Endpoint>> {
        Ok(self
            .store
            .list_json::<Endpoint>(&endpoint_prefix(network_id))?
            .into_iter()
            .map(|(_, _, e)| e)
            .collect())
    }

    /// Attaches a container: leases addresses, has the driver create the endpoint, configures
    /// the sandbox (or leaves the link for the runtime), programs the firewall and stores the
    /// endpoint. On any error everything done so far is undone.
    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment> {
        let net = self
            .get_network(&req.network_id)?
            .ok_or_else(|| Error::NotFound(format!("network {} does not exist", req.network_id)))?;
        let driver = self.drivers.get(&net.driver)?;
        if let Some(existing) = self.get_endpoint(&net.id, &req.key)? {
            return Err(Error::Conflict(format!(
                "container {} already has interface {} on network {} (addresses {}); DEL it first",
                req.key.container_id,
                req.key.ifname,
                net.name,
                join_addrs(&existing.addresses)
            )));
        }
        let mut op = self.begin(
            &network_scope(&net.id),
            format!("attach {} to {}", req.key, net.name),
        )?;
        let owner = req.key.owner();
        let mut addresses = Vec::new();
        for pool_id in pool_ids(&net) {
            // A static address picks the pool whose subnets contain it.
            let wanted = req.static_addresses.iter().copied().find(|a| {
                net.subnets
                    .iter()
                    .any(|s| s.pool_id == pool_id && s.subnet.contains(*a))
            });
            op.record(UndoStep::ReleaseAddress {
                pool_id: pool_id.clone(),
                owner: owner.clone(),
                address: wanted,
            })?;
            let lease = self
                .ipam
                .request_address(
                    &pool_id,
                    &AddressRequest {
                        owner: owner.clone(),
                        address: wanted,
                    },
                )
                .with_context(|| format!("network {}", net.name))?;
            addresses.push(lease.address);
        }
        // Subnets without a pool hold addresses leased outside netloom (a CNI IPAM plugin the
        // front door ran): the requested address is taken as it is, with the subnet's prefix.
        for a in &req.static_addresses {
            if let Some(s) = net
                .subnets
                .iter()
                .find(|s| s.pool_id.is_empty() && s.subnet.contains(*a))
            {
                let addr = IpNetwork::new(*a, s.subnet.prefix())
                    .map_err(|e| Error::InvalidConfig(format!("address {a}: {e}")))?;
                if !addresses.contains(&addr) {
                    addresses.push(addr);
                }
            }
        }
        for a in &req.static_addresses {
            if !net.subnets.iter().any(|s| s.subnet.contains(*a)) {
                return Err(Error::InvalidConfig(format!(
                    "requested address {a} is in no subnet of network {} ({})",
                    net.name,
                    net.subnets
                        .iter()
                        .map(|s| s.subnet.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let spec = EndpointSpec {
            network_id: net.id.clone(),
            key: req.key.clone(),
            addresses: addresses.clone(),
            mac: req.mac.clone(),
            mtu: net.mtu,
            ports: req.ports.clone(),
            options: req.options.clone(),
            placement: match &req.sandbox {
                SandboxSetup::Configure(sb) => Some(Placement {
                    netns_path: sb.netns_path.clone(),
                    ifname: req.key.ifname.clone(),
                }),
                SandboxSetup::Runtime => None,
            },
        };
        let handoff = driver.create_endpoint(&mut op, &net, &spec)?;
        let sandbox = match &req.sandbox {
            SandboxSetup::Configure(sb) => Some(sb.clone()),
            SandboxSetup::Runtime => None,
        };
        let mut endpoint = Endpoint {
            network_id: net.id.clone(),
            key: req.key.clone(),
            addresses: addresses.clone(),
            mac: handoff.mac.clone().or_else(|| req.mac.clone()),
            host_ifname: handoff.host_end.clone(),
            sandbox: sandbox.clone(),
            ports: req.ports.clone(),
            options: req.options.clone(),
        };
        let join = match &sandbox {
            Some(sb) => {
                let mut join = driver.join(&mut op, &net, &endpoint, sb)?;
                // A route the driver already adds (the default route of isDefaultGateway) and
                // the IPAM configuration also lists is configured once, as the reference
                // bridge plugin does.
                for r in &req.extra_routes {
                    if !join.routes.iter().any(|j| j.destination == r.destination) {
                        join.routes.push(r.clone());
                    }
                }
                let iface = SandboxInterface {
                    ifname: &req.key.ifname,
                    handoff: &handoff,
                    addresses: &addresses,
                    join: &join,
                    mtu: net.mtu,
                };
                // Drivers without a link (none, host) have nothing for the sandbox step.
                if !driver.capabilities().no_interface {
                    let mac = self.sandboxes.configure(&mut op, sb, &iface)?;
                    endpoint.mac = Some(mac);
                }
                join
            }
            None => JoinInfo::default(),
        };
        if let (Some(fw), Some(rules)) = (&self.firewall, network_rules(&net)) {
            let ep_rules = endpoint_rules(&net, &endpoint);
            if ep_rules.ports.is_empty() {
                // Nothing of the endpoint's own to add or undo; only the network's rules must
                // still be there (restored if someone flushed them).
                crate::firewall::verified::ensure_network(
                    self.store.as_ref(),
                    fw.as_ref(),
                    self.host_netns.as_deref(),
                    &rules,
                    &ep_rules,
                )?;
            } else {
                op.record(UndoStep::Custom {
                    kind: "firewall-endpoint".into(),
                    data: serde_json::to_value((&rules, &ep_rules))
                        .map_err(|e| Error::json("encode firewall undo", e))?,
                })?;
                fw.add_endpoint(&rules, &ep_rules)?;
            }
        }
        if wants_spoofcheck(&net) {
            let (Some(fw), Some(rules)) = (&self.firewall, network_rules(&net)) else {
                return Err(Error::Unsupported(format!(
                    "network {} asks for macspoofchk but netloom runs without a firewall backend here; remove macspoofchk rather than run unprotected",
                    net.name
                )));
            };
            let sc = spoof_check(&net, &endpoint)?;
            op.record(UndoStep::Custom {
                kind: "firewall-spoofcheck".into(),
                data: serde_json::json!({ "network_id": net.id, "owner": sc.owner }),
            })?;
            fw.add_spoofcheck(&rules, &sc)?;
            // Remembered on the endpoint, so its DEL removes the check even if the network's
            // configuration no longer asks for one by then.
            endpoint.options.insert(SPOOFCHECKED.into(), "true".into());
        }
        endpoint.sandbox = sandbox;
        let key = endpoint_key(&net.id, &req.key);
        op.record(UndoStep::RestoreKey {
            key: key.to_string(),
            value: None,
        })?;
        self.store.put_json(&key, &endpoint, Expect::Absent)?;
        op.commit()?;
        Ok(Attachment {
            network: net,
            endpoint,
            handoff,
            join,
        })
    }

    /// Docker's Join: the endpoint exists; attach it to a sandbox the runtime will configure.
    pub fn join(
        &self,
        network_id: &str,
        key: &AttachmentKey,
        sandbox: &Sandbox,
    ) -> Result<JoinInfo> {
        let net = self
            .get_network(network_id)?
            .ok_or_else(|| Error::NotFound(format!("network {network_id} does not exist")))?;
        let ep = self.get_endpoint(network_id, key)?.ok_or_else(|| {
            Error::NotFound(format!(
                "endpoint {key} does not exist on network {}",
                net.name
            ))
        })?;
        let driver = self.drivers.get(&net.driver)?;
        let mut op = self.begin(&network_scope(network_id), format!("join {key}"))?;
        let info = driver.join(&mut op, &net, &ep, sandbox)?;
        op.commit()?;
        Ok(info)
    }

    /// Detaches a container. Idempotent, and works when the sandbox is gone or the endpoint was
    /// never stored (a failed ADD): leases, links and firewall entries are removed by owner.
    pub fn detach(
        &self,
        network_id: &str,
        key: &AttachmentKey,
        sandbox: Option<&Sandbox>,
    ) -> Result<()> {
        let Some(net) = self.get_network(network_id)? else {
            return Ok(());
        };
        let driver = self.drivers.get(&net.driver)?;
        let stored = self.get_endpoint(network_id, key)?;
        let op_sandbox = sandbox
            .cloned()
            .or_else(|| stored.as_ref().and_then(|e| e.sandbox.clone()));
        let mut op = self.begin(
            &network_scope(network_id),
            format!("detach {key} from {}", net.name),
        )?;
        let ep = stored.clone().unwrap_or_else(|| Endpoint {
            network_id: network_id.to_string(),
            key: key.clone(),
            addresses: Vec::new(),
            mac: None,
            host_ifname: None,
            sandbox: op_sandbox.clone(),
            ports: Vec::new(),
            options: Default::default(),
        });
        let mut errors = Vec::new();
        // Where an endpoint's firewall entries are only its recorded ports, a stored endpoint
        // without any has nothing to remove, and not asking saves a CNI DEL opening the
        // firewall at all (see `LazyFirewall`). An endpoint we have no record of is cleaned
        // up by its tag.
        let may_have_entries =
            !self.ports_only_in_records || stored.as_ref().is_none_or(|e| !e.ports.is_empty());
        if let (Some(fw), Some(rules), true) =
            (&self.firewall, network_rules(&net), may_have_entries)
        {
            if let Err(e) = fw.del_endpoint(&rules, &endpoint_rules(&net, &ep)) {
                errors.push(e);
            }
        }
        let checked = ep.options.get(SPOOFCHECKED).is_some_and(|v| v == "true");
        if let (Some(fw), true) = (&self.firewall, checked || wants_spoofcheck(&net)) {
            if let Err(e) = fw.del_spoofcheck(&net.id, &key.owner()) {
                errors.push(e);
            }
        }
        if let Err(e) = driver.leave(&mut op, &net, &ep) {
            errors.push(e);
        }
        // The driver first: removing a veth's host end takes the container end with it, so the
        // sandbox step then has nothing slow left to do.
        if let Err(e) = driver.delete_endpoint(&mut op, &net, &ep) {
            errors.push(e);
        }
        if let Some(sb) = &op_sandbox {
            // Without an interface of ours, `ifname` in the sandbox may belong to another
            // network: never touch it.
            let result = if driver.capabilities().no_interface {
                Ok(())
            } else {
                self.sandboxes.deconfigure(sb, &key.ifname)
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        for pool_id in pool_ids(&net) {
            if let Err(e) = self
                .ipam
                .release_address(&pool_id, &Release::Owner(key.owner()))
            {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            self.store
                .delete(&endpoint_key(network_id, key), Expect::Any)?;
            op.commit()
        } else {
            // Keep the endpoint record so a repeated DEL retries; nothing to undo.
            op.commit()?;
            let n = errors.len();
            let first = errors.remove(0);
            Err(first.context(format!("detach {key} from {} ({n} error(s))", net.name)))
        }
    }

    /// Compares an endpoint with the kernel and the firewall.
    pub fn check(&self, network_id: &str, key: &AttachmentKey) -> Result<Vec<Drift>> {
        let net = self
            .get_network(network_id)?
            .ok_or_else(|| Error::NotFound(format!("network {network_id} does not exist")))?;
        let ep = self.get_endpoint(network_id, key)?.ok_or_else(|| {
            Error::NotFound(format!(
                "container {} has no interface {} on network {}",
                key.container_id, key.ifname, net.name
            ))
        })?;
        let driver = self.drivers.get(&net.driver)?;
        let host = match &self.host_netns {
            None => crate::netlink::Netlink::connect()?,
            Some(p) => crate::netlink::Netlink::in_netns(&crate::netns::Netns::open(p)?)?,
        };
        let mut drift = driver.check(&host, &net, &ep)?;
        if let (Some(sb), false) = (&ep.sandbox, driver.capabilities().no_interface) {
            drift.extend(self.sandboxes.check(sb, &key.ifname, &ep.addresses)?);
        }
        if let (Some(fw), Some(rules)) = (&self.firewall, network_rules(&net)) {
            drift.extend(fw.check(&rules, &[endpoint_rules(&net, &ep)])?);
        }
        if let (Some(fw), true) = (&self.firewall, wants_spoofcheck(&net)) {
            drift.extend(fw.check_spoofcheck(&spoof_check(&net, &ep)?)?);
        }
        Ok(drift)
    }

    /// Removes every attachment of the network not in `live`; continues past errors.
    pub fn gc(&self, network_id: &str, live: &[AttachmentKey]) -> Result<Vec<Error>> {
        let Some(net) = self.get_network(network_id)? else {
            return Ok(Vec::new());
        };
        let mut errors = Vec::new();
        for ep in self.list_endpoints(network_id)? {
            if !live.contains(&ep.key) {
                if let Err(e) = self.detach(network_id, &ep.key, None) {
                    errors.push(e);
                }
            }
        }
        let owners: Vec<String> = live.iter().map(AttachmentKey::owner).collect();
        for pool_id in pool_ids(&net) {
            match self.ipam.gc(&pool_id, &owners) {
                Ok(freed) => {
                    for l in freed {
                        tracing::info!(network = %net.name, address = %l.address, owner = %l.owner, "gc released a lease");
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        let driver = self.drivers.get(&net.driver)?;
        let mut op = self.begin(&network_scope(network_id), format!("gc {}", net.name))?;
        errors.extend(driver.gc(&mut op, &net, live)?);
        op.commit()?;
        Ok(errors)
    }
}

/// The network's pools in subnet order, each once (a pool may span several subnets).
/// The IPAM pools of a network's subnets; a subnet with an empty pool id is leased outside
/// netloom and has none.
fn pool_ids(net: &Network) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in &net.subnets {
        if !s.pool_id.is_empty() && !out.contains(&s.pool_id) {
            out.push(s.pool_id.clone());
        }
    }
    out
}

fn shares_pool(a: &crate::model::SubnetConfig, b: &crate::model::SubnetConfig) -> bool {
    // Two subnets leased outside netloom share nothing we know of.
    !a.pool_id.is_empty() && a.pool_id == b.pool_id
}

fn join_addrs(a: &[IpNetwork]) -> String {
    a.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The firewall's view of a network; None for networks with no host-side interface to filter on
/// (host, none).
pub fn network_rules(net: &Network) -> Option<NetworkRules> {
    // Routed traffic enters and leaves by the gateway's interface: the bridge, unless the
    // driver put the gateway elsewhere (a VLAN network's gateway port).
    let interface = net
        .options
        .get("gateway_interface")
        .or_else(|| net.options.get("bridge"))
        .cloned()?;
    let flag = |k: &str, default: bool| net.options.get(k).map(|v| v == "true").unwrap_or(default);
    Some(NetworkRules {
        network_id: net.id.clone(),
        interface,
        subnets: net.subnets.iter().map(|s| s.subnet).collect(),
        masquerade: flag("ip_masquerade", true) && !net.internal,
        icc: flag("icc", true),
        internal: net.internal,
        isolate: flag("isolate", true),
        open_inbound: flag("open_inbound", false),
    })
}

/// The endpoint option that says a MAC spoof check was installed for it.
const SPOOFCHECKED: &str = "macspoofchk";

/// Whether the network drops frames with a forged source MAC (CNI `macspoofchk`).
fn wants_spoofcheck(net: &Network) -> bool {
    net.options.get("macspoofchk").is_some_and(|v| v == "true")
}

/// The spoof check of an attached endpoint: its host port and the MAC the sandbox has.
fn spoof_check(net: &Network, ep: &Endpoint) -> Result<crate::firewall::SpoofCheck> {
    let port = ep.host_ifname.clone().ok_or_else(|| {
        Error::Unsupported(format!(
            "macspoofchk on network {}: endpoint {} has no host-side port to check",
            net.name, ep.key
        ))
    })?;
    let mac: crate::netlink::MacAddr = ep
        .mac
        .as_deref()
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "macspoofchk on network {}: the MAC of endpoint {} is not known when it is attached (ask for one)",
                net.name, ep.key
            ))
        })?
        .parse()?;
    Ok(crate::firewall::SpoofCheck {
        network_id: net.id.clone(),
        owner: ep.key.owner(),
        port,
        mac: mac.octets(),
    })
}

/// The firewall's view of an endpoint.
pub fn endpoint_rules(net: &Network, ep: &Endpoint) -> EndpointRules {
    EndpointRules {
        network_id: net.id.clone(),
        owner: ep.key.owner(),
        addresses: ep.addresses.iter().map(|a| a.ip()).collect(),
        ports: ep.ports.clone(),
    }
}

/// Undoes the steps only the engine knows: IPAM leases and firewall entries.
struct EngineUndoer {
    ipam: Arc<dyn Ipam>,
    firewall: Option<Arc<dyn Firewaller>>,
}

impl Undoer for EngineUndoer {
    fn undo(&self, step: &UndoStep) -> Result<()> {
        match step {
            UndoStep::ReleaseAddress { pool_id, owner, .. } => self
                .ipam
                .release_address(pool_id, &Release::Owner(owner.clone())),
            UndoStep::Custom { kind, data } if kind == "firewall-network" => {
                let Some(fw) = &self.firewall else {
                    return Ok(());
                };
                let id = data
                    .get("network_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                fw.teardown_network(id)
            }
            UndoStep::Custom { kind, data } if kind == "firewall-endpoint" => {
                let Some(fw) = &self.firewall else {
                    return Ok(());
                };
                let (net, ep): (NetworkRules, EndpointRules) = serde_json::from_value(data.clone())
                    .map_err(|e| Error::json("decode firewall undo step", e))?;
                fw.del_endpoint(&net, &ep)
            }
            UndoStep::Custom { kind, data } if kind == "firewall-spoofcheck" => {
                let Some(fw) = &self.firewall else {
                    return Ok(());
                };
                let field = |k: &str| data.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                fw.del_spoofcheck(field("network_id"), field("owner"))
            }
            other => Err(Error::Unsupported(format!("no undoer for step: {other}"))),
        }
    }
}
