//! Namespace ids (`RTM_GETNSID`): how one namespace numbers another.
//!
//! A veth reports its peer as (ifindex, `IFLA_LINK_NETNSID`), where the id is local to the
//! namespace doing the reporting. engine-core's netlink client has no namespace-id request, so
//! this module sends it itself over a plain blocking netlink socket: one socket, one short
//! request per namespace, no runtime.

use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
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
        self.seq = self.seq.wrapping_add(1);
        let mut m = NsidMessage::default();
        let fd = u32::try_from(other.as_fd().as_raw_fd())
            .map_err(|_| Error::Invalid("negative file descriptor".into()))?;
        m.attributes.push(NsidAttribute::Fd(fd));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(m));
        req.header.flags = NLM_F_REQUEST;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| Error::io("send RTM_GETNSID", e))?;
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| Error::io("receive RTM_NEWNSID", e))?;
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
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                        let id = m.attributes.iter().find_map(|a| match a {
                            NsidAttribute::Id(id) => Some(*id),
                            _ => None,
                        });
                        return Ok(id.filter(|i| *i >= 0));
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(c) => Err(Error::io(
                                "RTM_GETNSID",
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
