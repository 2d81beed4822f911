//! The macvlan side: each endpoint gets its own MAC on the parent's wire.
//!
//! Modes: `bridge` (default; children talk to each other inside the kernel), `private` (they
//! cannot), `vepa` (child-to-child traffic goes out to the switch, which must hairpin it) and
//! `passthru` (one child takes the parent over; one endpoint per parent).

use engine_core::netlink::{MacAddr, MacvlanSpec, Netlink};
use engine_core::netns::Netns;
use engine_core::{EndpointSpec, Error, Network, Result};

use super::names;
use super::options::VlanOptions;

/// The endpoint's MAC: the one asked for, else one derived from the attachment, so the same
/// container on the same network keeps its MAC (DHCP reservations and switch port security
/// keep working across restarts).
pub fn endpoint_mac(net: &Network, spec: &EndpointSpec) -> Result<MacAddr> {
    match &spec.mac {
        Some(m) => {
            let mac: MacAddr = m.parse().map_err(|_| {
                Error::InvalidConfig(format!(
                    "MAC address {m:?} is not valid (want aa:bb:cc:dd:ee:ff)"
                ))
            })?;
            if mac.0[0] & 0x01 != 0 || mac == MacAddr::ZERO {
                return Err(Error::InvalidConfig(format!(
                    "MAC address {m} is a multicast or zero address; an interface needs a unicast one"
                )));
            }
            Ok(mac)
        }
        None => Ok(names::stable_mac(&net.id, &spec.key)),
    }
}

/// Creates the macvlan `name` on `parent`, inside `netns` when given (down either way).
pub fn create(
    nl: &Netlink,
    o: &VlanOptions,
    name: &str,
    parent: u32,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
    netns: Option<&Netns>,
) -> Result<()> {
    let mut spec = MacvlanSpec::new(name, parent, o.macvlan_mode);
    if let Some(m) = mtu {
        spec = spec.mtu(m);
    }
    if let Some(m) = mac {
        spec = spec.mac(m);
    }
    match netns {
        Some(ns) => nl.create_macvlan_in(&spec, ns),
        None => nl.create_macvlan(&spec).map(|_| ()),
    }
}
