//! Links: lookup, listing, creation (bridge, veth, macvlan, vxlan) and changes.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoBridge, InfoBridgePort, InfoData, InfoIpVlan,
    InfoKind, InfoMacVlan, InfoPortData, InfoPortKind, InfoVeth, InfoVlan, InfoVxlan, IpVlanFlags,
    IpVlanMode, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode, State,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};

use super::{ns_fd, LinkRef, MacAddr, Netlink};
use crate::error::{Error, Result};
use crate::model::validate_ifname;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for devices without a link kind (physical NICs, loopback).
    pub kind: Option<LinkKind>,
    pub mtu: u32,
    /// `None` unless the link has a six-byte hardware address.
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub admin_up: bool,
    pub oper_state: OperState,
    pub promisc: bool,
    /// The bridge (or other master) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: a veth's peer, a macvlan's parent. It is an index in the namespace given by
    /// `link_netnsid` when that is set, in this namespace otherwise.
    pub link_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id, *as seen from this namespace*, of the namespace holding the
    /// peer/parent, when that is another namespace.
    pub link_netnsid: Option<i32>,
    /// For bridges: whether VLAN filtering is on.
    pub vlan_filtering: Option<bool>,
    /// For links enslaved to a bridge: their port settings.
    pub bridge_port: Option<BridgePortInfo>,
}

impl Link {
    /// The veth peer's index (see [`Link::link_index`] for which namespace it is in).
    pub fn peer_index(&self) -> Option<u32> {
        (self.kind == Some(LinkKind::Veth))
            .then_some(self.link_index)
            .flatten()
    }

    pub fn is_up(&self) -> bool {
        self.admin_up
    }
}

/// Settings of a bridge port that netloom cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgePortInfo {
    pub hairpin: Option<bool>,
    pub learning: Option<bool>,
}

/// The `IFLA_INFO_KIND` of a link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkKind {
    Bridge,
    Veth,
    Macvlan,
    Ipvlan,
    Vxlan,
    Vlan,
    Dummy,
    Bond,
    Tun,
    Wireguard,
    Other(String),
}

impl LinkKind {
    fn from_info(k: &InfoKind) -> Self {
        match k {
            InfoKind::Bridge => LinkKind::Bridge,
            InfoKind::Veth => LinkKind::Veth,
            InfoKind::MacVlan => LinkKind::Macvlan,
            InfoKind::IpVlan => LinkKind::Ipvlan,
            InfoKind::Vxlan => LinkKind::Vxlan,
            InfoKind::Vlan => LinkKind::Vlan,
            InfoKind::Dummy => LinkKind::Dummy,
            InfoKind::Bond => LinkKind::Bond,
            InfoKind::Tun => LinkKind::Tun,
            InfoKind::Wireguard => LinkKind::Wireguard,
            other => LinkKind::Other(other.to_string()),
        }
    }
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
}

impl From<State> for OperState {
    fn from(s: State) -> Self {
        match s {
            State::NotPresent => OperState::NotPresent,
            State::Down => OperState::Down,
            State::LowerLayerDown => OperState::LowerLayerDown,
            State::Testing => OperState::Testing,
            State::Dormant => OperState::Dormant,
            State::Up => OperState::Up,
            _ => OperState::Unknown,
        }
    }
}

/// A bridge to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// Note the kernel lowers a bridge's MTU to its smallest port's unless set explicitly later.
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// `Some(true)` fails with `EOPNOTSUPP` on kernels built without
    /// CONFIG_BRIDGE_VLAN_FILTERING; off is the default.
    pub vlan_filtering: Option<bool>,
}

impl BridgeSpec {
    pub fn new(name: impl Into<String>) -> Self {
        BridgeSpec {
            name: name.into(),
            ..Default::default()
        }
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    pub fn vlan_filtering(mut self, on: bool) -> Self {
        self.vlan_filtering = Some(on);
        self
    }
}

/// A veth pair to create; the peer can be created directly in another namespace.
#[derive(Debug, Clone, Default)]
pub struct VethSpec<'a> {
    pub name: String,
    pub peer_name: String,
    /// Where the peer goes (`IFLA_NET_NS_FD`); `None`: this client's namespace.
    pub peer_netns: Option<BorrowedFd<'a>>,
    /// Applied to both ends.
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub peer_mac: Option<MacAddr>,
}

impl<'a> VethSpec<'a> {
    pub fn new(name: impl Into<String>, peer_name: impl Into<String>) -> Self {
        VethSpec {
            name: name.into(),
            peer_name: peer_name.into(),
            ..Default::default()
        }
    }
    /// Creates the peer inside `netns` (a [`crate::netns::Netns`] or any namespace fd).
    pub fn peer_netns<F: AsFd + ?Sized>(mut self, netns: &'a F) -> Self {
        self.peer_netns = Some(netns.as_fd());
        self
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    pub fn peer_mac(mut self, mac: MacAddr) -> Self {
        self.peer_mac = Some(mac);
        self
    }
}

/// How a macvlan shares its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MacvlanMode {
    Private,
    Vepa,
    #[default]
    Bridge,
    Passthru,
    Source,
}

impl MacvlanMode {
    fn to_netlink(self) -> MacVlanMode {
        match self {
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
            MacvlanMode::Source => MacVlanMode::Source,
        }
    }
}

/// A macvlan to create on a parent link, in this client's namespace. To put it into a
/// container, create it under a temporary name and [`Netlink::move_to_netns`] it with its
/// final name, so it never clashes with names in either namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MacvlanSpec {
    pub name: String,
    pub parent: u32,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
}

impl MacvlanSpec {
    pub fn new(name: impl Into<String>, parent: u32, mode: MacvlanMode) -> Self {
        MacvlanSpec {
            name: name.into(),
            parent,
            mode,
            ..Default::default()
        }
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
}

/// A VXLAN device to create. Learning is off by default: netloom programs the FDB itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port (IANA's 4789 by default).
    pub port: u16,
    /// Source address of the tunnel.
    pub local: Option<IpAddr>,
    /// The underlay device.
    pub parent: Option<u32>,
    pub learning: bool,
    /// ARP/NDP suppression (`proxy`): the device answers neighbour solicitations from its own
    /// neighbour table instead of sending them into the tunnel.
    pub proxy: bool,
    pub mtu: Option<u32>,
}

impl VxlanSpec {
    pub fn new(name: impl Into<String>, vni: u32) -> Self {
        VxlanSpec {
            name: name.into(),
            vni,
            port: 4789,
            local: None,
            parent: None,
            learning: false,
            proxy: false,
            mtu: None,
        }
    }
    pub fn proxy(mut self, on: bool) -> Self {
        self.proxy = on;
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    pub fn local(mut self, ip: IpAddr) -> Self {
        self.local = Some(ip);
        self
    }
    pub fn parent(mut self, index: u32) -> Self {
        self.parent = Some(index);
        self
    }
    pub fn learning(mut self, on: bool) -> Self {
        self.learning = on;
        self
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

/// The ENODEV answers to a get (both mean "no such link").
const NO_SUCH_LINK: &[i32] = &[libc::ENODEV];

impl Netlink {
    /// The link called `name`, or `None`.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        validate_ifname(name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let what = || format!("look up link {name}");
        let got = self.get_one(&what, RouteNetlinkMessage::GetLink(m), NO_SUCH_LINK)?;
        got.map(|m| {
            parse_link_answer(m)
                .ok_or_else(|| self.fail(what(), unexpected("a link without a name")))
        })
        .transpose()
    }

    /// The link with index `index`, or `None`.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        if index == 0 {
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.header.index = index;
        let what = || format!("look up link with ifindex {index}");
        let got = self.get_one(&what, RouteNetlinkMessage::GetLink(m), NO_SUCH_LINK)?;
        got.map(|m| {
            parse_link_answer(m)
                .ok_or_else(|| self.fail(what(), unexpected("a link without a name")))
        })
        .transpose()
    }

    /// Looks a link up by name or index.
    pub fn link(&self, link: impl Into<LinkRef>) -> Result<Option<Link>> {
        match link.into() {
            LinkRef::Index(i) => self.link_by_index(i),
            LinkRef::Name(n) => self.link_by_name(&n),
        }
    }

    /// The index of a link; an `ENODEV` [`Error::Netlink`] naming it when it does not exist.
    pub fn link_index(&self, link: impl Into<LinkRef>) -> Result<u32> {
        match link.into() {
            LinkRef::Index(i) => Ok(i),
            LinkRef::Name(n) => match self.link_by_name(&n)? {
                Some(l) => Ok(l.index),
                None => Err(no_such_link(self, &LinkRef::Name(n))),
            },
        }
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let msgs = self.dump(&|| "list links".to_string(), &|| {
            RouteNetlinkMessage::GetLink(LinkMessage::default())
        })?;
        Ok(msgs.into_iter().filter_map(parse_link_answer).collect())
    }

    /// Creates a bridge (down); returns it.
    pub fn create_bridge(&self, spec: &BridgeSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        push_common(&mut m, spec.mtu, spec.mac);
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        // Off is the kernel's default, and not sending it keeps `Some(false)` working on kernels
        // without CONFIG_BRIDGE_VLAN_FILTERING, which refuse the attribute whatever its value.
        if spec.vlan_filtering == Some(true) {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        m.attributes.push(LinkAttribute::LinkInfo(info));
        // Kernels built without CONFIG_BRIDGE_VLAN_FILTERING answer EOPNOTSUPP to the option
        // alone; naming it in the context points there.
        let what = || match spec.vlan_filtering {
            Some(true) => format!("create bridge {} with vlan_filtering on", spec.name),
            _ => format!("create bridge {}", spec.name),
        };
        self.create(&what, m, &spec.name)
    }

    /// Creates a veth pair (both ends down); returns the end in this client's namespace.
    pub fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link> {
        validate_ifname(&spec.name)?;
        validate_ifname(&spec.peer_name)?;
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.clone()));
        push_common(&mut peer, spec.mtu, spec.peer_mac);
        if let Some(fd) = &spec.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(ns_fd(fd)));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        push_common(&mut m, spec.mtu, spec.mac);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.create(
            &|| format!("create veth {}/{}", spec.name, spec.peer_name),
            m,
            &spec.name,
        )
    }

    /// Creates a macvlan on `spec.parent` (down); returns it.
    pub fn create_macvlan(&self, spec: &MacvlanSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        m.attributes.push(LinkAttribute::Link(spec.parent));
        push_common(&mut m, spec.mtu, spec.mac);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                spec.mode.to_netlink(),
            )])),
        ]));
        self.create(
            &|| format!("create macvlan {} on ifindex {}", spec.name, spec.parent),
            m,
            &spec.name,
        )
    }

    /// Creates a VXLAN device (down); returns it.
    pub fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(spec.learning),
        ];
        if spec.proxy {
            data.push(InfoVxlan::Proxy(true));
        }
        match spec.local {
            Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
            Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
            None => {}
        }
        if let Some(p) = spec.parent {
            data.push(InfoVxlan::Link(p));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        push_common(&mut m, spec.mtu, None);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.create(
            &|| format!("create vxlan {} (vni {})", spec.name, spec.vni),
            m,
            &spec.name,
        )
    }

    fn create(&self, what: &dyn Fn() -> String, m: LinkMessage, name: &str) -> Result<Link> {
        self.exec(
            what,
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        // Somebody may delete it between the two calls; say so rather than return a stale value.
        self.link_by_name(name)?
            .ok_or_else(|| self.fail(what(), unexpected("the link vanished right after creation")))
    }

    /// Brings a link up.
    pub fn set_up(&self, link: impl Into<LinkRef>) -> Result<()> {
        let link = link.into();
        self.change(&|| format!("set {link} up"), &link, |m| {
            m.header.flags.insert(LinkFlags::Up);
            m.header.change_mask.insert(LinkFlags::Up);
        })
    }

    /// Takes a link down.
    pub fn set_down(&self, link: impl Into<LinkRef>) -> Result<()> {
        let link = link.into();
        self.change(&|| format!("set {link} down"), &link, |m| {
            m.header.flags.remove(LinkFlags::Up);
            m.header.change_mask.insert(LinkFlags::Up);
        })
    }

    pub fn set_promisc(&self, link: impl Into<LinkRef>, on: bool) -> Result<()> {
        let link = link.into();
        self.change(
            &|| format!("set promiscuous mode {} on {link}", on_off(on)),
            &link,
            |m| {
                m.header.flags.set(LinkFlags::Promisc, on);
                m.header.change_mask.insert(LinkFlags::Promisc);
            },
        )
    }

    pub fn set_mtu(&self, link: impl Into<LinkRef>, mtu: u32) -> Result<()> {
        let link = link.into();
        self.change(&|| format!("set mtu {mtu} on {link}"), &link, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu))
        })
    }

    pub fn set_mac(&self, link: impl Into<LinkRef>, mac: MacAddr) -> Result<()> {
        let link = link.into();
        self.change(&|| format!("set address {mac} on {link}"), &link, |m| {
            m.attributes.push(LinkAttribute::Address(mac.0.to_vec()))
        })
    }

    /// Enslaves a link to a bridge (or another master).
    pub fn set_master(&self, link: impl Into<LinkRef>, master: impl Into<LinkRef>) -> Result<()> {
        let link = link.into();
        let master = master.into();
        let master_index = self.link_index(&master)?;
        self.change(&|| format!("attach {link} to {master}"), &link, |m| {
            m.attributes.push(LinkAttribute::Controller(master_index))
        })
    }

    /// Releases a link from its master.
    pub fn set_nomaster(&self, link: impl Into<LinkRef>) -> Result<()> {
        let link = link.into();
        self.change(&|| format!("detach {link} from its master"), &link, |m| {
            m.attributes.push(LinkAttribute::Controller(0))
        })
    }

    /// Turns hairpin mode on a bridge port on or off (traffic may leave by the port it came in).
    pub fn set_hairpin(&self, port: impl Into<LinkRef>, on: bool) -> Result<()> {
        let port = port.into();
        self.change(
            &|| format!("set hairpin {} on bridge port {port}", on_off(on)),
            &port,
            |m| {
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::PortKind(InfoPortKind::Bridge),
                    LinkInfo::PortData(InfoPortData::BridgePort(vec![
                        InfoBridgePort::HairpinMode(on),
                    ])),
                ]))
            },
        )
    }

    /// Sets `net.ipv4.conf.<link>.route_localnet` to 1 through netlink (`IFLA_INET_CONF`), so
    /// it works where /proc/sys is read-only (a Docker managed plugin). Only the non-zero
    /// fields of the request reach the kernel: nothing else of the link's settings changes.
    pub fn enable_route_localnet(&self, link: impl Into<LinkRef>) -> Result<()> {
        let link = link.into();
        let mut conf = InetDevConf::default();
        conf.route_localnet = 1;
        self.change(&|| format!("enable route_localnet on {link}"), &link, |m| {
            m.attributes
                .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                    AfSpecInet::DevConfRequest(conf),
                ])]))
        })
    }

    /// Renames a link. Kernels before 6.x refuse (`EBUSY`) while the link is up (6.18 allows
    /// it for veth), so take it down first when it matters.
    pub fn rename(&self, link: impl Into<LinkRef>, new_name: &str) -> Result<()> {
        validate_ifname(new_name)?;
        let link = link.into();
        // IFLA_IFNAME is the new name here, so the link must be named by index.
        let index = self.link_index(&link)?;
        self.change(
            &|| format!("rename {link} to {new_name}"),
            &LinkRef::Index(index),
            |m| {
                m.attributes
                    .push(LinkAttribute::IfName(new_name.to_string()))
            },
        )
    }

    /// Moves a link into another namespace, optionally renaming it there in the same step (so
    /// it never clashes with a name in either namespace).
    pub fn move_to_netns<F: AsFd + ?Sized>(
        &self,
        link: impl Into<LinkRef>,
        netns: &F,
        new_name: Option<&str>,
    ) -> Result<()> {
        if let Some(n) = new_name {
            validate_ifname(n)?;
        }
        let link = link.into();
        let index = self.link_index(&link)?;
        let fd = ns_fd(netns);
        let what = || match new_name {
            Some(n) => format!("move {link} to another namespace as {n}"),
            None => format!("move {link} to another namespace"),
        };
        self.change(&what, &LinkRef::Index(index), |m| {
            m.attributes.push(LinkAttribute::NetNsFd(fd));
            if let Some(n) = new_name {
                m.attributes.push(LinkAttribute::IfName(n.to_string()));
            }
        })
    }

    /// Deletes a link; `ENODEV` when it does not exist. Deleting one end of a veth pair deletes
    /// both.
    pub fn delete_link(&self, link: impl Into<LinkRef>) -> Result<()> {
        let link = link.into();
        let m = link_message(&link);
        self.exec(
            &|| format!("delete link {link}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
    }

    /// Deletes a link if it exists; returns whether it did. Missing is success (undo steps and
    /// DEL must be idempotent).
    pub fn delete_link_if_exists(&self, link: impl Into<LinkRef>) -> Result<bool> {
        match self.delete_link(link) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// RTM_NEWLINK without NLM_F_CREATE, like `ip link set`: changes an existing link only.
    fn change(
        &self,
        what: &dyn Fn() -> String,
        link: &LinkRef,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<()> {
        if let LinkRef::Name(n) = link {
            validate_ifname(n)?;
        }
        let mut m = link_message(link);
        edit(&mut m);
        self.exec(what, RouteNetlinkMessage::NewLink(m), 0)
    }
}

/// A message addressing `link`: by index in the header, or by `IFLA_IFNAME` (the kernel looks
/// names up when the index is 0).
pub(super) fn link_message(link: &LinkRef) -> LinkMessage {
    let mut m = LinkMessage::default();
    match link {
        LinkRef::Index(i) => m.header.index = *i,
        LinkRef::Name(n) => m.attributes.push(LinkAttribute::IfName(n.clone())),
    }
    m
}

fn push_common(m: &mut LinkMessage, mtu: Option<u32>, mac: Option<MacAddr>) {
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn unexpected(what: &str) -> super::Fail {
    super::Fail::Unexpected(format!("unexpected answer from the kernel: {what}"))
}

pub(super) fn no_such_link(nl: &Netlink, link: &LinkRef) -> Error {
    nl.fail(
        format!("find link {link}"),
        super::Fail::Errno {
            errno: libc::ENODEV,
            extack: None,
        },
    )
}

fn parse_link_answer(m: RouteNetlinkMessage) -> Option<Link> {
    match m {
        RouteNetlinkMessage::NewLink(m) => parse_link(m),
        _ => None,
    }
}

fn parse_link(m: LinkMessage) -> Option<Link> {
    let flags = m.header.flags;
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: None,
        admin_up: flags.contains(LinkFlags::Up),
        oper_state: OperState::Unknown,
        promisc: flags.contains(LinkFlags::Promisc),
        master: None,
        link_index: None,
        link_netnsid: None,
        vlan_filtering: None,
        bridge_port: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(v) => link.mtu = v,
            LinkAttribute::Address(b) => link.mac = MacAddr::from_slice(&b),
            LinkAttribute::OperState(s) => link.oper_state = s.into(),
            LinkAttribute::Controller(i) if i != 0 => link.master = Some(i),
            LinkAttribute::Link(i) if i != 0 => link.link_index = Some(i),
            LinkAttribute::LinkNetNsId(id) if id >= 0 => link.link_netnsid = Some(id),
            LinkAttribute::LinkInfo(infos) => parse_link_info(&mut link, infos),
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

fn parse_link_info(link: &mut Link, infos: Vec<LinkInfo>) {
    for i in infos {
        match i {
            LinkInfo::Kind(k) => link.kind = Some(LinkKind::from_info(&k)),
            LinkInfo::Data(InfoData::Bridge(opts)) => {
                link.vlan_filtering = opts.iter().find_map(|o| match o {
                    InfoBridge::VlanFiltering(v) => Some(*v),
                    _ => None,
                });
            }
            LinkInfo::PortKind(InfoPortKind::Bridge) => {
                link.bridge_port.get_or_insert_with(BridgePortInfo::default);
            }
            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                let port = link.bridge_port.get_or_insert_with(BridgePortInfo::default);
                for o in opts {
                    match o {
                        InfoBridgePort::HairpinMode(v) => port.hairpin = Some(v),
                        InfoBridgePort::Learning(v) => port.learning = Some(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- ipvlan, 802.1Q vlan, dummy
//
// Builders for the macvlan/ipvlan drivers (drivers/src/vlan). Self-contained: the types, the
// create calls and one read-back of the kind-specific settings.

/// The layer at which an ipvlan switches between its slaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpvlanMode {
    #[default]
    L2,
    L3,
    L3s,
}

impl IpvlanMode {
    fn to_netlink(self) -> IpVlanMode {
        match self {
            IpvlanMode::L2 => IpVlanMode::L2,
            IpvlanMode::L3 => IpVlanMode::L3,
            IpvlanMode::L3s => IpVlanMode::L3S,
        }
    }
}

/// How ipvlan slaves of one parent reach each other (`IFLA_IPVLAN_FLAGS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpvlanFlag {
    /// Slaves talk to each other inside the kernel.
    #[default]
    Bridge,
    /// Slaves cannot talk to each other.
    Private,
    /// Slave-to-slave traffic goes out to the switch (which must hairpin it).
    Vepa,
}

impl IpvlanFlag {
    fn to_netlink(self) -> IpVlanFlags {
        match self {
            IpvlanFlag::Bridge => IpVlanFlags::empty(),
            IpvlanFlag::Private => IpVlanFlags::Private,
            IpvlanFlag::Vepa => IpVlanFlags::Vepa,
        }
    }
}

/// An ipvlan to create on a parent link. Its slaves share the parent's MAC address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvlanSpec {
    pub name: String,
    pub parent: u32,
    pub mode: IpvlanMode,
    pub flag: IpvlanFlag,
    pub mtu: Option<u32>,
}

impl IpvlanSpec {
    pub fn new(name: impl Into<String>, parent: u32, mode: IpvlanMode, flag: IpvlanFlag) -> Self {
        IpvlanSpec {
            name: name.into(),
            parent,
            mode,
            flag,
            mtu: None,
        }
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

/// An 802.1Q VLAN sub-interface to create (`ip link add link eth1 name eth1.50 type vlan id 50`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VlanSpec {
    pub name: String,
    pub parent: u32,
    /// 1-4094.
    pub id: u16,
    pub mtu: Option<u32>,
}

impl VlanSpec {
    pub fn new(name: impl Into<String>, parent: u32, id: u16) -> Self {
        VlanSpec {
            name: name.into(),
            parent,
            id,
            mtu: None,
        }
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

/// The kind-specific settings of a link, as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkDetails {
    pub vlan_id: Option<u16>,
    pub macvlan_mode: Option<MacvlanMode>,
    pub ipvlan_mode: Option<IpvlanMode>,
    pub ipvlan_flag: Option<IpvlanFlag>,
}

fn macvlan_message(spec: &MacvlanSpec) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
    m.attributes.push(LinkAttribute::Link(spec.parent));
    push_common(&mut m, spec.mtu, spec.mac);
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::MacVlan),
        LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
            spec.mode.to_netlink(),
        )])),
    ]));
    m
}

fn ipvlan_message(spec: &IpvlanSpec) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
    m.attributes.push(LinkAttribute::Link(spec.parent));
    push_common(&mut m, spec.mtu, None);
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::IpVlan),
        LinkInfo::Data(InfoData::IpVlan(vec![
            InfoIpVlan::Mode(spec.mode.to_netlink()),
            InfoIpVlan::Flags(spec.flag.to_netlink()),
        ])),
    ]));
    m
}

impl Netlink {
    /// Creates a macvlan directly inside `netns` under its final name (the parent is looked up
    /// in this client's namespace). Saves the move between namespaces, which costs the kernel
    /// an RCU grace period. Nothing is returned: the link is not in this client's namespace.
    pub fn create_macvlan_in<F: AsFd + ?Sized>(&self, spec: &MacvlanSpec, netns: &F) -> Result<()> {
        validate_ifname(&spec.name)?;
        self.create_in(
            "macvlan",
            &spec.name,
            spec.parent,
            macvlan_message(spec),
            netns,
        )
    }

    /// Sends a link creation with the target namespace attached (see `create_macvlan_in`).
    fn create_in<F: AsFd + ?Sized>(
        &self,
        kind: &str,
        name: &str,
        parent: u32,
        mut m: LinkMessage,
        netns: &F,
    ) -> Result<()> {
        m.attributes.push(LinkAttribute::NetNsFd(ns_fd(netns)));
        self.exec(
            &|| format!("create {kind} {name} on ifindex {parent} in another namespace"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates an ipvlan on `spec.parent` (down); returns it.
    pub fn create_ipvlan(&self, spec: &IpvlanSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        self.create(
            &|| format!("create ipvlan {} on ifindex {}", spec.name, spec.parent),
            ipvlan_message(spec),
            &spec.name,
        )
    }

    /// Like [`Netlink::create_macvlan_in`], for an ipvlan.
    pub fn create_ipvlan_in<F: AsFd + ?Sized>(&self, spec: &IpvlanSpec, netns: &F) -> Result<()> {
        validate_ifname(&spec.name)?;
        self.create_in(
            "ipvlan",
            &spec.name,
            spec.parent,
            ipvlan_message(spec),
            netns,
        )
    }

    /// Creates an 802.1Q VLAN sub-interface (down); returns it.
    pub fn create_vlan(&self, spec: &VlanSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        if !(1..=4094).contains(&spec.id) {
            return Err(Error::InvalidConfig(format!(
                "VLAN id {} of {} is out of range (1-4094)",
                spec.id, spec.name
            )));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        m.attributes.push(LinkAttribute::Link(spec.parent));
        push_common(&mut m, spec.mtu, None);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(spec.id)])),
        ]));
        self.create(
            &|| {
                format!(
                    "create vlan {} (id {}) on ifindex {}",
                    spec.name, spec.id, spec.parent
                )
            },
            m,
            &spec.name,
        )
    }

    /// Creates a dummy link (down); returns it. Kernels without CONFIG_DUMMY answer
    /// `EOPNOTSUPP` ("Unknown device type").
    pub fn create_dummy(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        validate_ifname(name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        push_common(&mut m, mtu, None);
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        self.create(&|| format!("create dummy {name}"), m, name)
    }

    /// The kind-specific settings of a link (VLAN id, macvlan or ipvlan mode); `None` when the
    /// link does not exist.
    pub fn link_details(&self, link: impl Into<LinkRef>) -> Result<Option<LinkDetails>> {
        let link = link.into();
        let m = link_message(&link);
        let what = || format!("look up details of link {link}");
        let Some(RouteNetlinkMessage::NewLink(m)) =
            self.get_one(&what, RouteNetlinkMessage::GetLink(m), NO_SUCH_LINK)?
        else {
            return Ok(None);
        };
        let mut d = LinkDetails::default();
        for a in m.attributes {
            let LinkAttribute::LinkInfo(infos) = a else {
                continue;
            };
            for i in infos {
                match i {
                    LinkInfo::Data(InfoData::Vlan(v)) => {
                        d.vlan_id = v.iter().find_map(|x| match x {
                            InfoVlan::Id(id) => Some(*id),
                            _ => None,
                        });
                    }
                    LinkInfo::Data(InfoData::MacVlan(v)) => {
                        d.macvlan_mode = v.iter().find_map(|x| match x {
                            InfoMacVlan::Mode(MacVlanMode::Private) => Some(MacvlanMode::Private),
                            InfoMacVlan::Mode(MacVlanMode::Vepa) => Some(MacvlanMode::Vepa),
                            InfoMacVlan::Mode(MacVlanMode::Bridge) => Some(MacvlanMode::Bridge),
                            InfoMacVlan::Mode(MacVlanMode::Passthrough) => {
                                Some(MacvlanMode::Passthru)
                            }
                            InfoMacVlan::Mode(MacVlanMode::Source) => Some(MacvlanMode::Source),
                            _ => None,
                        });
                    }
                    LinkInfo::Data(InfoData::IpVlan(v)) => {
                        for x in v {
                            match x {
                                InfoIpVlan::Mode(IpVlanMode::L2) => {
                                    d.ipvlan_mode = Some(IpvlanMode::L2)
                                }
                                InfoIpVlan::Mode(IpVlanMode::L3) => {
                                    d.ipvlan_mode = Some(IpvlanMode::L3)
                                }
                                InfoIpVlan::Mode(IpVlanMode::L3S) => {
                                    d.ipvlan_mode = Some(IpvlanMode::L3s)
                                }
                                InfoIpVlan::Flags(f) if f.contains(IpVlanFlags::Private) => {
                                    d.ipvlan_flag = Some(IpvlanFlag::Private)
                                }
                                InfoIpVlan::Flags(f) if f.contains(IpVlanFlags::Vepa) => {
                                    d.ipvlan_flag = Some(IpvlanFlag::Vepa)
                                }
                                InfoIpVlan::Flags(_) => d.ipvlan_flag = Some(IpvlanFlag::Bridge),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Some(d))
    }
}
