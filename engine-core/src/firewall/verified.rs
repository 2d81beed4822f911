//! "This network's rules were in place at ruleset generation G": lets an attach that adds no
//! firewall entries of its own (an endpoint without published ports) skip reading the ruleset
//! back.
//!
//! Why: every attach makes sure its network's rules are still there, so that the next ADD
//! after someone flushed the ruleset puts them back even with no daemon running. Checking
//! means reading tables, chains and sets back from the kernel (a fresh CNI process has no
//! cache), and opening the firewall at all makes the process's exit wait on the kernel's
//! deferred frees of anyone's recent deletions. nftables' generation changes with every
//! commit by anyone, so while it stays what it was when the rules were last seen, they are
//! still there: one GETGEN and one small file read replace the dumps. The stamp also names
//! the boot and the namespace, because generations start over with each.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{EndpointRules, Firewaller, NetworkRules};
use crate::error::Result;
use crate::netns::Netns;
use crate::store::{Expect, Key, StateStore, StateStoreExt};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    boot_id: String,
    netns_inode: u64,
    generation: u64,
}

/// Per network and per host (boot and namespace): in a store shared by several hosts (etcd)
/// each host keeps its own stamp instead of overwriting the others'.
fn key(network_id: &str, s: &Stamp) -> Key {
    Key::new([
        "firewall",
        "verified",
        network_id,
        &format!("{}-{}", s.boot_id, s.netns_inode),
    ])
}

fn stamp(fw: &dyn Firewaller, netns: Option<&Path>) -> Result<Option<Stamp>> {
    match fw.generation()? {
        Some(generation) => stamp_at(generation, netns).map(Some),
        // iptables has no generation: always check.
        None => Ok(None),
    }
}

fn stamp_at(generation: u64, netns: Option<&Path>) -> Result<Stamp> {
    let ns = match netns {
        Some(p) => Netns::open(p)?,
        None => Netns::current()?,
    };
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(Stamp {
        boot_id,
        netns_inode: ns.inode()?,
        generation,
    })
}

/// For an endpoint without published ports: makes sure the network's rules are in place
/// (restoring them if someone removed them), reading the ruleset only when it changed since
/// they were last seen in place. `netns` is the namespace the firewall programs (None: the
/// calling thread's).
pub fn ensure_network(
    store: &dyn StateStore,
    fw: &dyn Firewaller,
    netns: Option<&Path>,
    rules: &NetworkRules,
    portless: &EndpointRules,
) -> Result<()> {
    debug_assert!(portless.ports.is_empty());
    if let Some(now) = stamp(fw, netns)? {
        let key = key(&rules.network_id, &now);
        if store.get_json::<Stamp>(&key)?.map(|(_, s)| s) == Some(now) {
            return Ok(());
        }
    }
    // An endpoint without ports has no entries: this adds nothing and only heals the
    // network's rules when they are missing.
    fw.add_endpoint(rules, portless)?;
    if let Some(now) = stamp(fw, netns)? {
        store.put_json(&key(&rules.network_id, &now), &now, Expect::Any)?;
    }
    Ok(())
}

/// After publishing an endpoint's ports (CNI portmap): stores the generation at which the
/// firewall saw the network's rules in place, if it knows one, so that the next plain ADD on
/// the network (the next container's main plugin) reads nothing back.
pub fn record(
    store: &dyn StateStore,
    fw: &dyn Firewaller,
    netns: Option<&Path>,
    network_id: &str,
) -> Result<()> {
    if let Some(g) = fw.verified_generation(network_id)? {
        let now = stamp_at(g, netns)?;
        store.put_json(&key(network_id, &now), &now, Expect::Any)?;
    }
    Ok(())
}

/// Drops the network's stamps, every host's (the network is gone).
pub fn forget(store: &dyn StateStore, network_id: &str) -> Result<()> {
    for (k, _) in store.list(&Key::new(["firewall", "verified", network_id]))? {
        store.delete(&k, Expect::Any)?;
    }
    Ok(())
}
