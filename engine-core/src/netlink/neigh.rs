//! Neighbours (ARP/NDP entries) and bridge/VXLAN forwarding-database entries.

use std::net::IpAddr;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
    NeighbourState as NlState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};

use super::{LinkRef, MacAddr, Netlink};
use crate::error::Result;

/// An ARP (IPv4) or NDP (IPv6) cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    /// `None` while unresolved.
    pub mac: Option<MacAddr>,
    pub state: NeighbourState,
}

/// `NUD_*` state of a neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighbourState {
    Incomplete,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    Noarp,
    Permanent,
    None,
    Other(u16),
}

impl From<NlState> for NeighbourState {
    fn from(s: NlState) -> Self {
        match s {
            NlState::Incomplete => NeighbourState::Incomplete,
            NlState::Reachable => NeighbourState::Reachable,
            NlState::Stale => NeighbourState::Stale,
            NlState::Delay => NeighbourState::Delay,
            NlState::Probe => NeighbourState::Probe,
            NlState::Failed => NeighbourState::Failed,
            NlState::Noarp => NeighbourState::Noarp,
            NlState::Permanent => NeighbourState::Permanent,
            NlState::None => NeighbourState::None,
            other => NeighbourState::Other(u16::from(other)),
        }
    }
}

/// A forwarding-database entry: which MAC lives behind which port, or for VXLAN, behind
/// which remote tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: MacAddr,
    /// VXLAN: the remote VTEP (`dst`).
    pub remote: Option<IpAddr>,
    pub permanent: bool,
    /// The bridge the port belongs to, for entries in a bridge's table.
    pub master: Option<u32>,
}

/// How [`Netlink::add_fdb`] treats existing entries for the same MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbAdd {
    /// One destination per MAC (`bridge fdb replace`).
    Replace,
    /// Another destination for the MAC (`bridge fdb append`), as VXLAN flooding entries with
    /// the all-zero MAC need: one per remote VTEP.
    Append,
}

impl Netlink {
    /// Every IPv4 and IPv6 neighbour entry in the namespace.
    pub fn neighbours(&self) -> Result<Vec<Neighbour>> {
        self.dump_neighbours(None)
    }

    /// The neighbour entries of one link.
    pub fn neighbours_of(&self, link: impl Into<LinkRef>) -> Result<Vec<Neighbour>> {
        let index = self.link_index(link)?;
        self.dump_neighbours(Some(index))
    }

    fn dump_neighbours(&self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        // AF_UNSPEC dumps both the ARP and the NDP tables (not the bridge FDB).
        let msgs = self.dump(&|| "list neighbours".to_string(), &|| {
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default())
        })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(m) => parse_neighbour(m),
                _ => None,
            })
            .filter(|n| index.is_none_or(|i| n.index == i))
            .collect())
    }

    /// Sets a permanent neighbour entry (`ip neigh replace … nud permanent`): creates it, or
    /// overwrites the entry for the same IP. Used to pre-seed ARP/NDP on VXLAN overlays.
    pub fn add_neighbour(&self, link: impl Into<LinkRef>, ip: IpAddr, mac: MacAddr) -> Result<()> {
        let link = link.into();
        let index = self.link_index(&link)?;
        let mut m = neighbour_message(index, ip);
        m.header.state = NlState::Permanent;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.exec(
            &|| format!("add neighbour {ip} lladdr {mac} on {link}"),
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes a neighbour entry; returns whether it was there. A missing entry or link is success.
    pub fn del_neighbour(&self, link: impl Into<LinkRef>, ip: IpAddr) -> Result<bool> {
        let link = link.into();
        let Some(l) = self.link(&link)? else {
            return Ok(false);
        };
        let m = neighbour_message(l.index, ip);
        match self.exec(
            &|| format!("delete neighbour {ip} on {link}"),
            RouteNetlinkMessage::DelNeighbour(m),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The forwarding-database entries of one link (a bridge port or a VXLAN device).
    pub fn fdb_entries(&self, link: impl Into<LinkRef>) -> Result<Vec<FdbEntry>> {
        let index = self.link_index(link)?;
        let msgs = self.dump(&|| format!("list fdb entries of ifindex {index}"), &|| {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            RouteNetlinkMessage::GetNeighbour(m)
        })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(m) => parse_fdb(m),
                _ => None,
            })
            .filter(|e| e.index == index)
            .collect())
    }

    /// Adds a permanent entry to the device's own FDB (`bridge fdb … self permanent`), with an
    /// optional remote VTEP for VXLAN devices.
    pub fn add_fdb(
        &self,
        link: impl Into<LinkRef>,
        mac: MacAddr,
        remote: Option<IpAddr>,
        mode: FdbAdd,
    ) -> Result<()> {
        let link = link.into();
        let index = self.link_index(&link)?;
        let mut m = fdb_message(index, mac, remote);
        m.header.state = NlState::Permanent;
        let flags = match mode {
            FdbAdd::Replace => NLM_F_CREATE | NLM_F_REPLACE,
            FdbAdd::Append => NLM_F_CREATE | NLM_F_APPEND,
        };
        let what = || match remote {
            Some(r) => format!("add fdb entry {mac} dst {r} on {link}"),
            None => format!("add fdb entry {mac} on {link}"),
        };
        self.exec(&what, RouteNetlinkMessage::NewNeighbour(m), flags)
    }

    /// Deletes an entry from the device's own FDB (with `remote`, only that destination);
    /// returns whether it was there. Missing is success. Caveat: for VXLAN the kernel also
    /// answers success when the MAC exists but `remote` is not one of its destinations, so
    /// `true` then does not prove something was removed.
    pub fn del_fdb(
        &self,
        link: impl Into<LinkRef>,
        mac: MacAddr,
        remote: Option<IpAddr>,
    ) -> Result<bool> {
        let link = link.into();
        let Some(l) = self.link(&link)? else {
            return Ok(false);
        };
        let m = fdb_message(l.index, mac, remote);
        match self.exec(
            &|| format!("delete fdb entry {mac} on {link}"),
            RouteNetlinkMessage::DelNeighbour(m),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.ifindex = index;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    m
}

fn fdb_message(index: u32, mac: MacAddr, remote: Option<IpAddr>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    // NTF_SELF: the device's own table (VXLAN's), not the bridge it may be enslaved to.
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    if let Some(r) = remote {
        m.attributes.push(NeighbourAttribute::Destination(match r {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    }
    m
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        // In AF_BRIDGE messages (FDB entries) the parser cannot know the family of NDA_DST;
        // its length tells.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn parse_neighbour(m: NeighbourMessage) -> Option<Neighbour> {
    if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = neighbour_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
            _ => {}
        }
    }
    Some(Neighbour {
        index: m.header.ifindex,
        ip: ip?,
        mac,
        state: m.header.state.into(),
    })
}

fn parse_fdb(m: NeighbourMessage) -> Option<FdbEntry> {
    if m.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut remote = None;
    let mut master = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
            NeighbourAttribute::Destination(d) => remote = neighbour_ip(d),
            NeighbourAttribute::Controller(i) => master = Some(*i),
            _ => {}
        }
    }
    Some(FdbEntry {
        index: m.header.ifindex,
        mac: mac?,
        remote,
        permanent: m.header.state == NlState::Permanent,
        master,
    })
}
