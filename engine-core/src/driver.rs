//! The driver contract: what a network driver (bridge, host, none, macvlan, ipvlan, overlay)
//! does, independent of which front door (CNI or Docker) asked.
//!
//! Drivers never call IPAM: addresses arrive in the specs, leased by the engine (libnetwork's
//! and CNI's split). Every kernel step a driver takes is recorded in the operation's journal
//! first ([`Op::record`]), so a failure or a crash undoes it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::journal::{Txn, UndoStep};
use crate::model::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, Network, NetworkSpec, Options, RouteSpec, Sandbox,
};
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::store::StateStore;

/// One multi-step operation: its undo journal, the store, and where "the host" is.
pub struct Op {
    txn: Txn,
    store: Arc<dyn StateStore>,
    /// The namespace netloom treats as the host (None = the caller's own). Tests point this at a
    /// fake-host namespace; production leaves it None.
    host_netns: Option<PathBuf>,
    host_netlink: Option<Arc<Netlink>>,
}

impl Op {
    pub fn new(txn: Txn, store: Arc<dyn StateStore>, host_netns: Option<PathBuf>) -> Self {
        Op {
            txn,
            store,
            host_netns,
            host_netlink: None,
        }
    }

    /// Records how to undo the step the driver is about to take.
    pub fn record(&mut self, step: UndoStep) -> Result<()> {
        self.txn.record(step)
    }

    /// The state store, for drivers that keep state of their own.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    pub fn host_netns(&self) -> Option<&Path> {
        self.host_netns.as_deref()
    }

    /// A netlink client in the host namespace, opened once per operation.
    pub fn host(&mut self) -> Result<Arc<Netlink>> {
        if let Some(nl) = &self.host_netlink {
            return Ok(nl.clone());
        }
        let nl = Arc::new(match &self.host_netns {
            None => Netlink::connect()?,
            Some(p) => Netlink::in_netns(&Netns::open(p)?)?,
        });
        self.host_netlink = Some(nl.clone());
        Ok(nl)
    }

    /// Sets a `net.*` sysctl in the host namespace.
    pub fn host_sysctl(&self, key: &str, value: &str) -> Result<bool> {
        match &self.host_netns {
            None => crate::netlink::sysctl_set(key, value),
            Some(p) => crate::netlink::sysctl_set_in(&Netns::open(p)?, key, value),
        }
    }

    pub fn commit(self) -> Result<()> {
        self.txn.commit()
    }

    pub fn rollback(self) -> Result<()> {
        self.txn.rollback()
    }
}

/// What a driver can do, for front doors to advertise and the engine to check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `local` (one host) or `global` (multi-host, needs a shared store).
    pub scope: String,
    /// The driver moves the link into the sandbox itself (CNI), or leaves it in the host for
    /// the runtime to move (Docker).
    pub supports_ipv6: bool,
    pub supports_port_mapping: bool,
    /// Kernel limit on endpoints per network (a Linux bridge takes 1024 ports), if any.
    pub max_endpoints: Option<u32>,
    /// Endpoints get no interface of this network in the sandbox (`none`: loopback only;
    /// `host`: the host's own namespace): the engine neither configures nor checks one.
    #[serde(default)]
    pub no_interface: bool,
}

/// What `create_endpoint` leaves for the sandbox step: a link still in the host namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Name of the link in the host netns that goes into the sandbox (veth peer, macvlan).
    pub link: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The host-side end that stays (veth), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_end: Option<String>,
    /// The driver already put the link into the sandbox under its final name
    /// ([`crate::model::EndpointSpec::placement`]); the sandbox step only configures it.
    #[serde(default)]
    pub placed: bool,
    /// Host interfaces worth reporting (CNI lists the bridge and the host veth in its result).
    #[serde(default)]
    pub host_interfaces: Vec<HostInterface>,
}

/// An interface in the host namespace, by name and MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInterface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// What a sandbox needs after `join`: gateways and routes (Docker's Join answer, CNI's routes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v4: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Name prefix for the interface in the sandbox (Docker's DstPrefix, e.g. "eth").
    #[serde(default)]
    pub dst_prefix: String,
}

/// A network driver. Methods that change the kernel take the operation so every step is
/// journaled; `delete_*` and `leave` are idempotent (they may run again after a crash).
pub trait Driver: Send + Sync {
    /// The driver's name as users type it ("bridge", "macvlan").
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Checks a network spec and returns its options normalised (defaults filled in, spellings
    /// unified). Pure: no kernel, no store.
    fn validate(&self, spec: &NetworkSpec) -> Result<Options>;

    fn create_network(&self, op: &mut Op, net: &Network) -> Result<()>;

    fn delete_network(&self, op: &mut Op, net: &Network) -> Result<()>;

    /// Creates the endpoint's link(s) in the host namespace.
    fn create_endpoint(&self, op: &mut Op, net: &Network, spec: &EndpointSpec) -> Result<Handoff>;

    fn delete_endpoint(&self, op: &mut Op, net: &Network, ep: &Endpoint) -> Result<()>;

    /// Attaches the endpoint to a sandbox and says which gateways and routes it gets.
    fn join(
        &self,
        op: &mut Op,
        net: &Network,
        ep: &Endpoint,
        sandbox: &Sandbox,
    ) -> Result<JoinInfo>;

    fn leave(&self, op: &mut Op, net: &Network, ep: &Endpoint) -> Result<()>;

    /// Compares the kernel (seen through `host`, a client in the host namespace) with what the
    /// endpoint should be; an empty list means all is well.
    fn check(&self, host: &Netlink, net: &Network, ep: &Endpoint) -> Result<Vec<Drift>>;

    /// Removes what belongs to attachments not in `live`; continues past errors and returns them.
    fn gc(&self, op: &mut Op, net: &Network, live: &[AttachmentKey]) -> Result<Vec<crate::Error>>;
}
