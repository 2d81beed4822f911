//! What a VXLAN overlay needs to know about its underlay: which local address to advertise as
//! the tunnel endpoint, and the MTU the tunnel's packets must fit in.
//!
//! VXLAN adds 50 bytes over IPv4 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14) and 70
//! over IPv6 (outer header 40): the overlay's MTU is the underlay path's MTU minus that, never a
//! fixed 1450 that is wrong on jumbo-frame or tunnelled underlays.

use std::net::IpAddr;

use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteMetric};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Scope};
use crate::error::{Error, Result};

/// Encapsulation overhead of VXLAN over an IPv4 underlay.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Encapsulation overhead of VXLAN over an IPv6 underlay.
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// The underlay as seen from one local tunnel address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// The local address (the VTEP).
    pub local: IpAddr,
    /// The interface holding it.
    pub index: u32,
    pub name: String,
    /// The smallest of the interface's MTU and any `mtu` metric on its routes.
    pub mtu: u32,
}

impl Underlay {
    /// The MTU left for the overlay's frames.
    pub fn overlay_mtu(&self) -> u32 {
        let overhead = if self.local.is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        };
        self.mtu.saturating_sub(overhead)
    }
}

impl Netlink {
    /// The interface holding `local` and the MTU of the underlay behind it: the interface's MTU,
    /// lowered by an `mtu` route metric on any route through it (`ip route … mtu 1400`).
    pub fn underlay(&self, local: IpAddr) -> Result<Underlay> {
        let addr = self
            .addresses()?
            .into_iter()
            .find(|a| a.address.ip() == local)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "advertise address {local} is not an address of this host; give one of its own addresses"
                ))
            })?;
        let link = self.link_by_index(addr.index)?.ok_or_else(|| {
            Error::NotFound(format!(
                "the interface holding {local} vanished while it was read"
            ))
        })?;
        let mut mtu = link.mtu;
        for (oif, m) in self.route_mtus(local.is_ipv4())? {
            if oif == link.index && m > 0 {
                mtu = mtu.min(m);
            }
        }
        Ok(Underlay {
            local,
            index: link.index,
            name: link.name,
            mtu,
        })
    }

    /// The address to advertise when none is configured: the first global address of the
    /// interface the default route leaves through (IPv4 first, then IPv6).
    pub fn default_route_address(&self) -> Result<Option<IpAddr>> {
        let routes = self.routes()?;
        let addrs = self.addresses()?;
        for v4 in [true, false] {
            let Some(oif) = routes
                .iter()
                .filter(|r| r.is_default() && r.destination.is_ipv4() == v4)
                .find_map(|r| r.oif)
            else {
                continue;
            };
            if let Some(a) = addrs.iter().find(|a| {
                a.index == oif
                    && a.address.is_ipv4() == v4
                    && a.scope == Scope::Universe
                    && !a.tentative
            }) {
                return Ok(Some(a.address.ip()));
            }
        }
        Ok(None)
    }

    /// `(output interface, mtu metric)` of every main-table route of one family with an MTU.
    fn route_mtus(&self, v4: bool) -> Result<Vec<(u32, u32)>> {
        let family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let msgs = self.dump(&|| "list route MTUs".to_string(), &|| {
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            RouteNetlinkMessage::GetRoute(m)
        })?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(m) = m else {
                continue;
            };
            let mut oif = None;
            let mut mtu = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    RouteAttribute::Metrics(ms) => {
                        mtu = ms.iter().find_map(|x| match x {
                            RouteMetric::Mtu(v) => Some(*v),
                            _ => None,
                        })
                    }
                    _ => {}
                }
            }
            if let (Some(o), Some(v)) = (oif, mtu) {
                out.push((o, v));
            }
        }
        Ok(out)
    }
}
