//! The ipvlan side: every endpoint shares the parent's MAC (for wires and switches that allow
//! one MAC per port), distinguished by IP address.
//!
//! Modes: `l2` (default; the children switch frames, ARP works as usual), `l3` (the parent
//! routes: no ARP, no broadcast or multicast; containers get an on-link default route and the
//! upstream needs routes to the containers) and `l3s` (l3 that goes through the host's
//! netfilter, so conntrack and iptables see container traffic). Flags: `bridge` (default),
//! `private` (children cannot talk to each other), `vepa` (child-to-child traffic goes out).

use engine_core::netlink::{IpvlanSpec, Netlink};
use engine_core::netns::Netns;
use engine_core::{EndpointSpec, Error, Result};

use super::options::VlanOptions;

/// ipvlan children cannot have a MAC of their own: say so rather than ignore the request.
pub fn refuse_mac(spec: &EndpointSpec) -> Result<()> {
    match &spec.mac {
        Some(m) => Err(Error::InvalidConfig(format!(
            "MAC address {m} asked for, but ipvlan interfaces share their parent's MAC; use macvlan for per-container MACs"
        ))),
        None => Ok(()),
    }
}

/// Creates the ipvlan `name` on `parent`, inside `netns` when given (down either way).
pub fn create(
    nl: &Netlink,
    o: &VlanOptions,
    name: &str,
    parent: u32,
    mtu: Option<u32>,
    netns: Option<&Netns>,
) -> Result<()> {
    let mut spec = IpvlanSpec::new(name, parent, o.ipvlan_mode, o.ipvlan_flag);
    if let Some(m) = mtu {
        spec = spec.mtu(m);
    }
    match netns {
        Some(ns) => nl.create_ipvlan_in(&spec, ns),
        None => nl.create_ipvlan(&spec).map(|_| ()),
    }
}
