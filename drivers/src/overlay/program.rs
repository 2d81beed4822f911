//! Remote endpoints in the kernel: a static FDB entry (container MAC → remote VTEP) and a
//! permanent neighbour entry (container IP → MAC) per remote container on the local VXLAN
//! device. The device has learning off and ARP/NDP proxy on, so it answers neighbour requests
//! itself from those entries: nothing is flooded, nothing is multicast.

use std::collections::BTreeSet;
use std::net::IpAddr;

use engine_core::netlink::{FdbAdd, MacAddr, NeighbourState, Netlink};
use engine_core::Result;

use super::control::EndpointRecord;

/// One remote container as the kernel needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Remote {
    pub mac: MacAddr,
    pub vtep: IpAddr,
    pub ips: Vec<IpAddr>,
}

impl Remote {
    pub fn from_record(r: &EndpointRecord) -> Result<Remote> {
        Ok(Remote {
            mac: r.mac.mac()?,
            vtep: r.vtep,
            ips: r.ips.clone(),
        })
    }
}

/// Adds (or corrects) one remote container's entries on `dev`.
pub fn apply(nl: &Netlink, dev: &str, r: &Remote) -> Result<()> {
    nl.add_fdb(dev, r.mac, Some(r.vtep), FdbAdd::Replace)?;
    for ip in &r.ips {
        nl.add_neighbour(dev, *ip, r.mac)?;
    }
    Ok(())
}

/// Removes one remote container's entries from `dev` (missing entries are fine). The FDB entry
/// goes only if it still points at this container's VTEP, so a MAC that moved hosts keeps its
/// new entry.
pub fn remove(nl: &Netlink, dev: &str, r: &Remote) -> Result<()> {
    let entries = nl.fdb_entries(dev)?;
    if entries
        .iter()
        .any(|e| e.mac == r.mac && e.remote == Some(r.vtep))
    {
        nl.del_fdb(dev, r.mac, Some(r.vtep))?;
    }
    let neigh = nl.neighbours_of(dev)?;
    for ip in &r.ips {
        if neigh.iter().any(|n| n.ip == *ip && n.mac == Some(r.mac)) {
            nl.del_neighbour(dev, *ip)?;
        }
    }
    Ok(())
}

/// What a [`sync`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
}

/// Makes `dev`'s remote entries exactly `desired`: adds what is missing, removes what no live
/// remote container needs any more (a host whose lease expired, a container gone while this
/// host was not watching).
pub fn sync(nl: &Netlink, dev: &str, desired: &[Remote]) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    let want_fdb: BTreeSet<(MacAddr, IpAddr)> = desired.iter().map(|r| (r.mac, r.vtep)).collect();
    let want_neigh: BTreeSet<(IpAddr, MacAddr)> = desired
        .iter()
        .flat_map(|r| r.ips.iter().map(move |ip| (*ip, r.mac)))
        .collect();
    let have_fdb: BTreeSet<(MacAddr, IpAddr)> = nl
        .fdb_entries(dev)?
        .into_iter()
        .filter_map(|e| e.remote.map(|v| (e.mac, v)))
        .collect();
    let have_neigh: BTreeSet<(IpAddr, MacAddr)> = nl
        .neighbours_of(dev)?
        .into_iter()
        .filter(|n| n.state == NeighbourState::Permanent)
        .filter_map(|n| n.mac.map(|m| (n.ip, m)))
        .collect();
    for (mac, vtep) in have_fdb.difference(&want_fdb) {
        nl.del_fdb(dev, *mac, Some(*vtep))?;
        report.removed += 1;
    }
    for (ip, _) in have_neigh.difference(&want_neigh) {
        // An IP that just has another MAC now is replaced below instead.
        if !want_neigh.iter().any(|(i, _)| i == ip) {
            nl.del_neighbour(dev, *ip)?;
            report.removed += 1;
        }
    }
    for (mac, vtep) in want_fdb.difference(&have_fdb) {
        nl.add_fdb(dev, *mac, Some(*vtep), FdbAdd::Replace)?;
        report.added += 1;
    }
    for (ip, mac) in want_neigh.difference(&have_neigh) {
        nl.add_neighbour(dev, *ip, *mac)?;
        report.added += 1;
    }
    Ok(report)
}
