//! Namespace ids (`RTM_GETNSID`): how one namespace numbers another; and the kernel's route
//! decision for one destination (`RTM_GETROUTE`, as `ip route get`).
//!
//! A veth reports its peer as (ifindex, `IFLA_LINK_NETNSID`), where the id is local to the
//! namespace doing the reporting. engine-core's netlink client has neither request, so
//! this module sends them itself over a plain blocking netlink socket: one socket, one short
//! request per namespace, no runtime.

use std::os::fd::{AsFd, AsRawFd};

use std::net::IpAddr;

use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use engine_core::netns::Netns;

use crate::error::{Error, Result};

/// A netlink socket that asks its own namespace for the ids it gave other namespaces.
pub struct NsidSocket {
    socket: Socket,
    seq: u32,
}

impl NsidSocket {
    /// A socket in the calling thread's namespace.
    pub fn open() -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open a netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io("bind a netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect a netlink socket", e))?;
        Ok(NsidSocket { socket, seq: 0 })
    }

    /// A socket inside `ns` (created on a throwaway thread there; it stays bound to `ns`).
    pub fn open_in(ns: &Netns) -> Result<Self> {
        ns.run(Self::open)?
    }

    /// The id this socket's namespace uses for `other`; `None` when it has assigned none.
    pub fn nsid_of<F: AsFd>(&mut self, other: &F) -> Result<Option<i32>> {
        let mut m = NsidMessage::default();
        let fd = u32::try_from(other.as_fd().as_raw_fd())
            .map_err(|_| Error::Invalid("negative file descriptor".into()))?;
        m.attributes.push(NsidAttribute::Fd(fd));
        match self.ask(RouteNetlinkMessage::GetNsId(m), "RTM_GETNSID")? {
            Some(RouteNetlinkMessage::NewNsId(m)) => {
                let id = m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) => Some(*id),
                    _ => None,
                });
                Ok(id.filter(|i| *i >= 0))
            }
            _ => Ok(None),
        }
    }

    /// The kernel's own route decision (`ip route get DST [from SRC iif IF]`) in this socket's
    /// namespace: with `iif` the kernel simulates forwarding a packet that came in there, so
    /// it also applies ip_forward and reverse-path filtering (EXDEV) as a real packet would.
    pub fn route_get(
        &mut self,
        dst: IpAddr,
        src: Option<IpAddr>,
        iif: Option<u32>,
    ) -> std::result::Result<RouteAnswer, RouteGetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        if let Some(s) = src {
            m.header.source_prefix_length = if s.is_ipv4() { 32 } else { 128 };
            m.attributes
                .push(RouteAttribute::Source(RouteAddress::from(s)));
        }
        if let Some(i) = iif {
            m.attributes.push(RouteAttribute::Iif(i));
        }
        match self.ask(RouteNetlinkMessage::GetRoute(m), "RTM_GETROUTE") {
            Ok(Some(RouteNetlinkMessage::NewRoute(r))) => {
                let mut a = RouteAnswer {
                    kind: r.header.kind.into(),
                    ..Default::default()
                };
                for attr in &r.attributes {
                    match attr {
                        RouteAttribute::Oif(i) => a.oif = Some(*i),
                        RouteAttribute::Gateway(g) => a.gateway = addr(g),
                        RouteAttribute::PrefSource(p) => a.pref_src = addr(p),
                        _ => {}
                    }
                }
                Ok(a)
            }
            Ok(_) => Err(RouteGetError::Errno(libc::ENETUNREACH)),
            Err(Error::Io { source, .. }) => Err(RouteGetError::Errno(
                source.raw_os_error().unwrap_or(libc::EIO),
            )),
            Err(e) => Err(RouteGetError::Other(e.to_string())),
        }
    }

    /// A VXLAN device's underlay settings: its parent's index (`dev`) and its local address.
    pub fn vxlan_underlay(&mut self, index: u32) -> Result<(Option<u32>, Option<IpAddr>)> {
        use netlink_packet_route::link::{
            InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
        };
        let mut m = LinkMessage::default();
        m.header.index = index;
        let mut out = (None, None);
        if let Some(RouteNetlinkMessage::NewLink(l)) =
            self.ask(RouteNetlinkMessage::GetLink(m), "RTM_GETLINK")?
        {
            for a in &l.attributes {
                let LinkAttribute::LinkInfo(infos) = a else {
                    continue;
                };
                for i in infos {
                    let LinkInfo::Data(InfoData::Vxlan(v)) = i else {
                        continue;
                    };
                    for x in v {
                        match x {
                            InfoVxlan::Link(p) => out.0 = Some(*p),
                            InfoVxlan::Local(a) => out.1 = Some(IpAddr::V4(*a)),
                            InfoVxlan::Local6(a) => out.1 = Some(IpAddr::V6(*a)),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sends one request and returns the first answer to it (`None`: a bare ACK).
    fn ask(&mut self, msg: RouteNetlinkMessage, what: &str) -> Result<Option<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| Error::io(format!("send {what}"), e))?;
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| Error::io(format!("receive the answer to {what}"), e))?;
            let mut rest = &data[..];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    break;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]);
                // Messages in one datagram are 4-byte aligned.
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                let Ok(msg) = msg else { continue };
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => return Ok(Some(m)),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(c) => Err(Error::io(
                                what.to_string(),
                                std::io::Error::from_raw_os_error(c.get().saturating_abs()),
                            )),
                            None => Ok(None),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What `route_get` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAnswer {
    pub kind: u8,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub pref_src: Option<IpAddr>,
}

impl RouteAnswer {
    /// `RTN_LOCAL`: the destination is one of this namespace's own addresses.
    pub fn is_local(&self) -> bool {
        self.kind == 2
    }
}

/// Why the kernel would not route: an errno (`ENETUNREACH` no route, `EXDEV` reverse-path
/// filter, `EHOSTUNREACH`/`EACCES` unreachable/prohibit routes, `EINVAL` forwarding off…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteGetError {
    Errno(i32),
    Other(String),
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}
