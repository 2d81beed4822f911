//! Which addresses the endpoints of each Docker network hold, kept in memory.
//!
//! Docker's IPAM (netloom's IpamDriver or Docker's own) chooses every endpoint address and
//! the engine takes it as given. This index is the front door's check that two endpoints of
//! one network still never get the same address (a Docker whose IPAM state was lost, a client
//! speaking the protocol by hand). It replaces a second IPAM lease per endpoint in a
//! per-network "shadow pool", which cost CreateEndpoint and DeleteEndpoint half a dozen
//! state-store files each for a fact the store already holds: the endpoints' own records.
//!
//! The store stays the truth. A network's set is read from its engine endpoints on first use
//! after start, and kept up to date by the calls that change them; netloomd is the only writer
//! of Docker networks (one netloomd per state directory, and the CNI plugins never touch a
//! Docker network).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use engine_core::{Error, Result};

/// Addresses in use per network id.
#[derive(Debug, Default)]
pub struct InUse {
    nets: Mutex<HashMap<String, HashSet<IpAddr>>>,
}

impl InUse {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashSet<IpAddr>>> {
        // Every change below is a single insert or remove: a panic leaves nothing half-done.
        self.nets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `ips` for a new endpoint of `network`, or fails with a Conflict naming the first
    /// address another endpoint holds (then nothing is taken). `load` lists the addresses of
    /// the network's existing endpoints, read the first time the network is seen.
    pub fn claim(
        &self,
        network: &str,
        ips: &[IpAddr],
        load: impl FnOnce() -> Result<Vec<IpAddr>>,
    ) -> Result<()> {
        let mut nets = self.lock();
        if !nets.contains_key(network) {
            let known: HashSet<IpAddr> = load()?.into_iter().collect();
            nets.insert(network.to_string(), known);
        }
        let held = nets.entry(network.to_string()).or_default();
        if let Some(ip) = ips.iter().find(|ip| held.contains(ip)) {
            return Err(Error::Conflict(format!(
                "address {ip} is already in use by another endpoint of network {}",
                &network[..network.len().min(12)]
            )));
        }
        held.extend(ips.iter().copied());
        Ok(())
    }

    /// Gives addresses back (the endpoint is gone, or its creation failed).
    pub fn release(&self, network: &str, ips: &[IpAddr]) {
        if let Some(held) = self.lock().get_mut(network) {
            for ip in ips {
                held.remove(ip);
            }
        }
    }

    /// Forgets a network (deleted).
    pub fn forget(&self, network: &str) {
        self.lock().remove(network);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_held_once_per_network() {
        let u = InUse::default();
        // First use: the existing endpoints' addresses count.
        u.claim("n1", &[ip("10.0.0.2")], || Ok(vec![ip("10.0.0.9")]))
            .unwrap();
        let e = u
            .claim("n1", &[ip("10.0.0.3"), ip("10.0.0.9")], || {
                panic!("loaded once")
            })
            .unwrap_err();
        assert_eq!(e.kind(), engine_core::ErrorKind::Conflict);
        assert!(e.to_string().contains("10.0.0.9"), "{e}");
        // A refused claim took nothing.
        u.claim("n1", &[ip("10.0.0.3")], || panic!("loaded once"))
            .unwrap();
        // Other networks are independent.
        u.claim("n2", &[ip("10.0.0.2")], || Ok(Vec::new())).unwrap();
        u.release("n1", &[ip("10.0.0.2")]);
        u.claim("n1", &[ip("10.0.0.2")], || panic!("loaded once"))
            .unwrap();
        // A forgotten network is read again.
        u.forget("n1");
        let e = u
            .claim("n1", &[ip("10.0.0.2")], || {
                Err(Error::Internal("store".into()))
            })
            .unwrap_err();
        assert_eq!(e.kind(), engine_core::ErrorKind::Internal);
    }
}
