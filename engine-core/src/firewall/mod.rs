//! The firewall contract: masquerade, isolation and port publishing for a network.
//!
//! Shaped after libnetwork's per-network firewaller: the engine hands the firewall a network's
//! configuration once, then adds and removes endpoints (addresses and published ports) one at a
//! time. Implementations (nftables, iptables) program each call in one kernel transaction and
//! keep per-endpoint entries in sets/maps so adding one container never rewrites the others.
//!
//! Backends: [`NftFirewall`] (default; netlink, one atomic batch per operation) and
//! [`IptablesFirewall`] (fallback; one `iptables-restore --noflush` per family and operation).
//! [`select`] picks one. What they program and how to inspect it: README.md beside this file.

pub mod iptables;
pub mod ir;
pub mod lazy;
pub mod nft;
pub mod plan;
mod sysctl;
pub mod verified;

#[cfg(test)]
mod golden;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Drift, PortMapping};

/// A network as the firewall needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRules {
    pub network_id: String,
    /// The host-side interface traffic enters and leaves by (the bridge).
    pub interface: String,
    pub subnets: Vec<IpNetwork>,
    /// Masquerade traffic leaving for other interfaces (Docker `enable_ip_masquerade`).
    pub masquerade: bool,
    /// Allow traffic between endpoints of this network (Docker `enable_icc`).
    pub icc: bool,
    /// No traffic to or from outside the network (Docker `--internal`).
    pub internal: bool,
    /// Keep this network apart from other netloom networks.
    pub isolate: bool,
    /// Let traffic from elsewhere reach the containers directly (routed pod networks: CNI
    /// users route pod subnets between nodes). false = Docker's nat mode: only published
    /// ports are reachable from outside.
    #[serde(default)]
    pub open_inbound: bool,
}

/// One endpoint's firewall entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRules {
    pub network_id: String,
    /// Container id (or Docker endpoint id): every entry is tagged with it.
    pub owner: String,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortMapping>,
}

/// The MAC spoof check of one endpoint (CNI `macspoofchk`): frames entering the bridge by
/// `port` (the host end of the endpoint's veth) must carry `mac` as their source address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoofCheck {
    pub network_id: String,
    /// The endpoint's owner, as in [`EndpointRules::owner`].
    pub owner: String,
    pub port: String,
    pub mac: [u8; 6],
}

/// A firewall backend.
pub trait Firewaller: Send + Sync {
    /// "nftables" or "iptables".
    fn backend(&self) -> &'static str;

    /// Installs the network-level rules (idempotent).
    fn setup_network(&self, net: &NetworkRules) -> Result<()>;

    /// Removes the network-level rules and every endpoint entry of the network (idempotent).
    fn teardown_network(&self, network_id: &str) -> Result<()>;

    /// Adds an endpoint's entries; fails without changing anything when a host port is already
    /// published by someone else, naming the holder.
    fn add_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()>;

    /// Removes an endpoint's entries (idempotent).
    fn del_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()>;

    /// Restores whatever is missing of what should be there (after `nft flush ruleset`, a
    /// firewalld reload…). Returns what was missing.
    fn reapply(&self, nets: &[NetworkRules], eps: &[EndpointRules]) -> Result<Vec<Drift>>;

    /// Reports what is missing without changing anything.
    fn check(&self, net: &NetworkRules, eps: &[EndpointRules]) -> Result<Vec<Drift>>;

    /// Installs an endpoint's MAC spoof check in one transaction (idempotent; replaces an
    /// older check of the same endpoint). Backends without layer-2 filtering refuse.
    fn add_spoofcheck(&self, net: &NetworkRules, sc: &SpoofCheck) -> Result<()> {
        let _ = (net, sc);
        Err(crate::error::Error::Unsupported(format!(
            "macspoofchk needs the nftables firewall backend (the {} backend does not filter bridged frames); use backend \"nftables\" or remove macspoofchk",
            self.backend()
        )))
    }

    /// Removes an endpoint's MAC spoof check (idempotent).
    fn del_spoofcheck(&self, network_id: &str, owner: &str) -> Result<()> {
        let _ = (network_id, owner);
        Ok(())
    }

    /// Reports what is missing of an endpoint's MAC spoof check.
    fn check_spoofcheck(&self, sc: &SpoofCheck) -> Result<Vec<Drift>> {
        let _ = sc;
        Ok(vec![Drift {
            subject: format!("MAC spoof check of {}", sc.owner),
            problem: format!("the {} backend cannot enforce it", self.backend()),
        }])
    }

    /// A number that changes whenever anyone changes the ruleset (nftables' generation id),
    /// so a watcher can tell "someone flushed it" from "nothing happened" with one cheap
    /// query. `None` when the backend has no such number (iptables): watch by time instead.
    fn generation(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The generation at which this instance last saw `network_id`'s rules in place, right
    /// after a transaction of its own that added an endpoint's entries: what
    /// [`verified::record`] stores so that the next port-less attach reads nothing back.
    /// `None` when it knows none (or has no generations).
    fn verified_generation(&self, network_id: &str) -> Result<Option<u64>> {
        let _ = network_id;
        Ok(None)
    }
}

pub use self::iptables::IptablesFirewall;
pub use self::lazy::LazyFirewall;
pub use self::nft::NftFirewall;

/// Which backend to use (`--firewall nftables|iptables|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallChoice {
    Nftables,
    Iptables,
    /// nftables when the kernel offers it, else iptables.
    #[default]
    Auto,
}

impl std::str::FromStr for FirewallChoice {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nftables" | "nft" => Ok(FirewallChoice::Nftables),
            "iptables" => Ok(FirewallChoice::Iptables),
            "auto" | "" => Ok(FirewallChoice::Auto),
            _ => Err(crate::error::Error::InvalidConfig(format!(
                "firewall backend {s:?} is not one of nftables, iptables, auto"
            ))),
        }
    }
}

/// Builds the chosen backend for `netns` (None: the calling thread's namespace).
pub fn select(
    choice: FirewallChoice,
    netns: Option<crate::netns::Netns>,
) -> Result<Box<dyn Firewaller>> {
    let ns = match netns {
        Some(ns) => ns,
        None => crate::netns::Netns::current()?,
    };
    match choice {
        FirewallChoice::Nftables => Ok(Box::new(NftFirewall::in_netns(ns)?)),
        FirewallChoice::Iptables => Ok(Box::new(IptablesFirewall::in_netns(ns)?)),
        FirewallChoice::Auto => {
            // Reopen by inode-stable path so the fallback still has a handle if nft fails.
            let path = ns.path().to_path_buf();
            match NftFirewall::in_netns(ns) {
                Ok(f) => Ok(Box::new(f)),
                Err(e) => {
                    tracing::info!(error = %e, "nftables unavailable; using iptables");
                    let ns = crate::netns::Netns::open(&path)?;
                    Ok(Box::new(IptablesFirewall::in_netns(ns)?))
                }
            }
        }
    }
}
