//! A firewall that opens its backend on first use.
//!
//! Why: most CNI calls never touch the firewall (an ADD or DEL on a network that already has
//! its rules and no spoof check), yet opening nftables binds a netfilter socket, and the
//! kernel handles the release of every bound netfilter socket under the ruleset's commit
//! mutex, first finishing any deletion still waiting for its RCU grace period (10–40 ms
//! here). So a bridge DEL that merely *opened* the firewall right after the portmap DEL of
//! the same chain waited at exit for that plugin's deletions. Not opening it costs nothing.

use std::sync::{Mutex, OnceLock};

use super::{select, EndpointRules, FirewallChoice, Firewaller, NetworkRules, SpoofCheck};
use crate::error::{Error, Result};
use crate::model::Drift;
use crate::netns::Netns;

/// A [`Firewaller`] that is [`select`]ed for the namespace given at construction the first
/// time any method needs it. A failure to open is reported to every caller that needs it.
pub struct LazyFirewall {
    choice: FirewallChoice,
    /// The namespace, until the backend takes it; then the error, if opening failed.
    pending: Mutex<std::result::Result<Option<Netns>, String>>,
    opened: OnceLock<Box<dyn Firewaller>>,
}

impl LazyFirewall {
    /// Captures the namespace now (`None`: the calling thread's), so a first use from another
    /// thread or namespace still programs the right one.
    pub fn new(choice: FirewallChoice, netns: Option<Netns>) -> Result<Self> {
        let ns = match netns {
            Some(ns) => ns,
            None => Netns::current()?,
        };
        Ok(LazyFirewall {
            choice,
            pending: Mutex::new(Ok(Some(ns))),
            opened: OnceLock::new(),
        })
    }

    fn get(&self) -> Result<&dyn Firewaller> {
        if let Some(fw) = self.opened.get() {
            return Ok(fw.as_ref());
        }
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| Error::Internal("firewall opener poisoned by a panic".into()))?;
        if let Some(fw) = self.opened.get() {
            return Ok(fw.as_ref());
        }
        let ns = match &mut *pending {
            Ok(ns) => ns.take(),
            Err(msg) => return Err(Error::Firewall(msg.clone())),
        };
        let Some(ns) = ns else {
            return Err(Error::Internal("firewall backend opened twice".into()));
        };
        match select(self.choice, Some(ns)) {
            Ok(fw) => Ok(self.opened.get_or_init(|| fw).as_ref()),
            Err(e) => {
                *pending = Err(e.to_string());
                Err(e)
            }
        }
    }
}

impl std::fmt::Debug for LazyFirewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFirewall")
            .field("choice", &self.choice)
            .field("opened", &self.opened.get().map(|fw| fw.backend()))
            .finish()
    }
}

impl Firewaller for LazyFirewall {
    fn backend(&self) -> &'static str {
        match (self.opened.get(), self.choice) {
            (Some(fw), _) => fw.backend(),
            (None, FirewallChoice::Nftables) => "nftables",
            (None, FirewallChoice::Iptables) => "iptables",
            (None, FirewallChoice::Auto) => self.get().map(|fw| fw.backend()).unwrap_or("none"),
        }
    }

    fn setup_network(&self, net: &NetworkRules) -> Result<()> {
        self.get()?.setup_network(net)
    }

    fn teardown_network(&self, network_id: &str) -> Result<()> {
        self.get()?.teardown_network(network_id)
    }

    fn add_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        self.get()?.add_endpoint(net, ep)
    }

    fn del_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        self.get()?.del_endpoint(net, ep)
    }

    fn reapply(&self, nets: &[NetworkRules], eps: &[EndpointRules]) -> Result<Vec<Drift>> {
        self.get()?.reapply(nets, eps)
    }

    fn check(&self, net: &NetworkRules, eps: &[EndpointRules]) -> Result<Vec<Drift>> {
        self.get()?.check(net, eps)
    }

    fn add_spoofcheck(&self, net: &NetworkRules, sc: &SpoofCheck) -> Result<()> {
        self.get()?.add_spoofcheck(net, sc)
    }

    fn del_spoofcheck(&self, network_id: &str, owner: &str) -> Result<()> {
        self.get()?.del_spoofcheck(network_id, owner)
    }

    fn check_spoofcheck(&self, sc: &SpoofCheck) -> Result<Vec<Drift>> {
        self.get()?.check_spoofcheck(sc)
    }

    fn generation(&self) -> Result<Option<u64>> {
        self.get()?.generation()
    }

    fn verified_generation(&self, network_id: &str) -> Result<Option<u64>> {
        match self.opened.get() {
            Some(fw) => fw.verified_generation(network_id),
            // Never opened: it has seen nothing.
            None => Ok(None),
        }
    }
}
