//! The IPAM contract: pools of addresses and leases on them.
//!
//! Implemented by the `ipam` crate over a [`crate::StateStore`]. Shaped after libnetwork's
//! `ipamapi.Ipam` (so the Docker IpamDriver maps 1:1) with host-local's semantics for CNI:
//! a pool is one *range set* (one or more ranges; one address per pool per owner).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// `PoolRequest::options` key: `"true"` lets an explicit pool overlap other pools (CNI
/// networks are independent by name, as host-local's per-network directories are).
pub const OPT_ALLOW_OVERLAP: &str = "netloom.allow_overlap";

/// Who holds a lease: for CNI `<container id>/<ifname>` ([`crate::AttachmentKey::owner`]); Docker
/// does not say which endpoint an address is for, so its front door uses its own owner strings.
pub type Owner = String;

/// One contiguous range inside a subnet. `start`/`end` default to the first and last usable
/// address of the subnet (network and broadcast addresses are never handed out in IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub subnet: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<IpAddr>,
    /// Excluded from allocation and reported in leases as the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// Asks for a pool. Identical requests (same `id`, or same ranges when `id` is None) return the
/// same pool and bump its reference count (Docker's rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRequest {
    /// A caller-chosen id (CNI: `<network>/<range set index>`); None = derived from the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Empty = pick a free subnet from the default pools (never overlapping another pool or a
    /// route on the host).
    #[serde(default)]
    pub ranges: Vec<RangeSpec>,
    /// When `ranges` is empty: whether an IPv6 default pool is wanted.
    #[serde(default)]
    pub v6: bool,
    /// Addresses never handed out (Docker `--aux-address`, reserved IPs).
    #[serde(default)]
    pub reserved: Vec<IpAddr>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub id: String,
    pub ranges: Vec<RangeSpec>,
    #[serde(default)]
    pub reserved: Vec<IpAddr>,
    /// How many identical RequestPool calls hold it.
    pub refs: u32,
}

/// Asks for an address from a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRequest {
    pub owner: Owner,
    /// A specific address (static IP, Docker `--ip`, gateway request); None = next free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
}

/// A granted address with its prefix length and the range's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub pool_id: String,
    pub owner: Owner,
    /// The address with the subnet's prefix length (e.g. 10.1.0.5/24).
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// Which lease to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    Owner(Owner),
    Address(IpAddr),
}

/// Address management. Every method is safe to call from many processes at once.
pub trait Ipam: Send + Sync {
    fn request_pool(&self, req: &PoolRequest) -> Result<Pool>;

    /// Drops one reference; the pool and its leases go with the last one.
    fn release_pool(&self, pool_id: &str) -> Result<()>;

    fn get_pool(&self, pool_id: &str) -> Result<Option<Pool>>;

    fn list_pools(&self) -> Result<Vec<Pool>>;

    /// Idempotent per owner: the same owner gets its existing lease back.
    fn request_address(&self, pool_id: &str, req: &AddressRequest) -> Result<Lease>;

    /// Releasing what is not leased is a success (DEL is idempotent).
    fn release_address(&self, pool_id: &str, which: &Release) -> Result<()>;

    fn leases(&self, pool_id: &str) -> Result<Vec<Lease>>;

    /// Releases every lease of the pool whose owner is not in `live`; returns what it freed.
    fn gc(&self, pool_id: &str, live: &[Owner]) -> Result<Vec<Lease>>;
}
