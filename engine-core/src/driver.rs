//! The driver contract: what a network driver (bridge, host, none, macvlan, ipvlan, overlay)
//! does, independent of which front door (CNI or Docker) asked.
//!
//! Drivers never call IPAM: addresses arrive in the specs, leased by the engine (libnetwork's
//! and CNI's split). Every kernel step a driver takes is recorded in the operation's journal
//! first ([`Op::record`]), so a failure or a crash undoes it.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::journal::{Txn, UndoStep};
use crate::model::{AttachmentKey, Drift, Endpoint, EndpointSpec, Network, NetworkSpec, Options, RouteSpec, Sandbox};

/// One multi-step operation: its undo journal plus where "the host" is.
pub struct Op {
    txn: Txn,
    /// The namespace netloom treats as the host (None = the caller's own). Tests point this at a
    /// fake-host namespace; production leaves it None.
    pub host_netns: Option<PathBuf>,
}

impl Op {
    pub fn new(txn: Txn, host_netns: Option<PathBuf>) -> Self {
        Op { txn, host_netns }
    }

    /// Records how to undo the step the driver is about to take.
    pub fn record(&mut self, step: UndoStep) -> Result<()> {
        self.txn.record(step)
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
    fn join(&self, op: &mut Op, net: &Network, ep: &Endpoint, sandbox: &Sandbox) -> Result<JoinInfo>;

    fn leave(&self, op: &mut Op, net: &Network, ep: &Endpoint) -> Result<()>;

    /// Compares the kernel with what the endpoint should be; an empty list means all is well.
    fn check(&self, net: &Network, ep: &Endpoint) -> Result<Vec<Drift>>;

    /// Removes what belongs to attachments not in `live`; continues past errors and returns them.
    fn gc(&self, op: &mut Op, net: &Network, live: &[AttachmentKey]) -> Result<Vec<crate::Error>>;
}
