//! Bridge VLAN filtering: the bridge's `vlan_filtering` switch and the VLANs of its ports.
//!
//! What `bridge vlan add dev P vid 10 pvid untagged` does, over netlink: an RTM_SETLINK of
//! family AF_BRIDGE whose `IFLA_AF_SPEC` holds `IFLA_BRIDGE_VLAN_INFO` (flags, vid); removal is
//! the same body in an RTM_DELLINK. The port's VLANs are read back from an AF_BRIDGE link dump
//! with `IFLA_EXT_MASK = RTEXT_FILTER_BRVLAN` (the kernel has no single-link get for them).
//!
//! Kernels built without CONFIG_BRIDGE_VLAN_FILTERING (it depends on 802.1Q support) refuse the
//! bridge option with `EOPNOTSUPP`; [`Netlink::set_vlan_filtering`] turns that into an
//! [`Error::Unsupported`] that says so.

use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoKind,
    LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{LinkRef, Netlink};
use crate::error::{Error, Result};

/// One VLAN of a bridge port, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortVlan {
    pub vid: u16,
    /// Untagged frames entering the port are classified into this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port without a tag.
    pub untagged: bool,
}

/// VLAN ids usable on a bridge (0 and 4095 are reserved by 802.1Q).
pub const VLAN_IDS: std::ops::RangeInclusive<u16> = 1..=4094;

impl Netlink {
    /// Turns VLAN filtering on a bridge on or off (`IFLA_BR_VLAN_FILTERING`).
    pub fn set_vlan_filtering(&self, bridge: impl Into<LinkRef>, on: bool) -> Result<()> {
        let bridge = bridge.into();
        let mut m = by_ref(&bridge);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ]));
        let what = || {
            format!(
                "turn vlan_filtering {} on bridge {bridge}",
                if on { "on" } else { "off" }
            )
        };
        self.exec(&what, RouteNetlinkMessage::NewLink(m), 0)
            .map_err(|e| unsupported_filtering(e, &bridge))
    }

    /// Adds VLAN `vid` to bridge port `port` (`pvid`: untagged ingress lands in it;
    /// `untagged`: it leaves without a tag). Adding an existing VLAN updates its flags.
    pub fn bridge_vlan_add(
        &self,
        port: impl Into<LinkRef>,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<()> {
        let port = port.into();
        check_vid(vid)?;
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let index = self.link_index(&port)?;
        let m = vlan_message(index, flags, vid);
        let what = || {
            format!(
                "add vlan {vid}{}{} to bridge port {port}",
                if pvid { " pvid" } else { "" },
                if untagged { " untagged" } else { "" }
            )
        };
        self.exec(&what, RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Removes VLAN `vid` from bridge port `port`; removing one it does not have succeeds.
    pub fn bridge_vlan_del(&self, port: impl Into<LinkRef>, vid: u16) -> Result<()> {
        let port = port.into();
        check_vid(vid)?;
        let index = self.link_index(&port)?;
        let m = vlan_message(index, BridgeVlanInfoFlags::empty(), vid);
        match self.exec(
            &|| format!("remove vlan {vid} from bridge port {port}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        ) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// The VLANs of every bridge port (and of bridges themselves), by interface index.
    pub fn bridge_vlans(&self) -> Result<Vec<(u32, Vec<PortVlan>)>> {
        let request = || {
            let mut m = LinkMessage::default();
            m.header.interface_family = AddressFamily::Bridge;
            m.attributes
                .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
            RouteNetlinkMessage::GetLink(m)
        };
        let msgs = self.dump(&|| "list bridge port vlans".to_string(), &request)?;
        let mut out = Vec::new();
        for msg in msgs {
            let RouteNetlinkMessage::NewLink(m) = msg else {
                continue;
            };
            let mut vlans = Vec::new();
            for a in &m.attributes {
                if let LinkAttribute::AfSpecBridge(spec) = a {
                    for s in spec {
                        if let AfSpecBridge::VlanInfo(v) = s {
                            expand(v, &mut vlans);
                        }
                    }
                }
            }
            out.push((m.header.index, vlans));
        }
        Ok(out)
    }

    /// The VLANs of one bridge port (empty when it has none or is no bridge port).
    pub fn port_vlans(&self, port: impl Into<LinkRef>) -> Result<Vec<PortVlan>> {
        let index = self.link_index(port)?;
        Ok(self
            .bridge_vlans()?
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, v)| v)
            .unwrap_or_default())
    }
}

/// Adds one VLAN info entry, expanding a range (`RANGE_BEGIN` … `RANGE_END`) the kernel may
/// report compressed: the begin entry is remembered as a pending start.
fn expand(v: &BridgeVlanInfo, out: &mut Vec<PortVlan>) {
    let pv = |vid| PortVlan {
        vid,
        pvid: v.flags.contains(BridgeVlanInfoFlags::Pvid),
        untagged: v.flags.contains(BridgeVlanInfoFlags::Untagged),
    };
    if v.flags.contains(BridgeVlanInfoFlags::RangeEnd) {
        // The begin entry was pushed as a single VLAN: fill in the ones after it.
        let start = out.last().map(|p| p.vid + 1).unwrap_or(v.vid);
        for vid in start..=v.vid {
            out.push(pv(vid));
        }
    } else {
        out.push(pv(v.vid));
    }
}

fn check_vid(vid: u16) -> Result<()> {
    if VLAN_IDS.contains(&vid) {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "VLAN id {vid} is out of range (1-4094)"
        )))
    }
}

fn by_ref(link: &LinkRef) -> LinkMessage {
    let mut m = LinkMessage::default();
    match link {
        LinkRef::Index(i) => m.header.index = *i,
        LinkRef::Name(n) => m.attributes.push(LinkAttribute::IfName(n.clone())),
    }
    m
}

/// The AF_BRIDGE message of `bridge vlan add|del dev <index> vid <vid> master`.
fn vlan_message(index: u32, flags: BridgeVlanInfoFlags, vid: u16) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.interface_family = AddressFamily::Bridge;
    m.header.index = index;
    m.attributes.push(LinkAttribute::AfSpecBridge(vec![
        // Addressed to the port's master (the bridge), not to the port's own driver.
        AfSpecBridge::Flags(BridgeFlag::Controller),
        AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }),
    ]));
    m
}

/// `EOPNOTSUPP` from the bridge option means the kernel was built without VLAN filtering.
fn unsupported_filtering(e: Error, bridge: &LinkRef) -> Error {
    if e.errno() == Some(libc::EOPNOTSUPP) {
        Error::Unsupported(format!(
            "this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING, which needs 802.1Q support), so bridge {bridge} cannot tag ports: remove \"vlan\" or use a kernel with it ({e})"
        ))
    } else {
        e
    }
}
