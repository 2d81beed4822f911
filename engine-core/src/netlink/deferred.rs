//! Link deletions finished after this process exits (see [`crate::after_exit`]): for the
//! short-lived CNI plugins, whose DEL should not wait for the kernel to unregister a device.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_REQUEST};

use super::link::link_message;
use super::LinkRef;
use crate::after_exit::{hand_over, Work};
use crate::error::{Error, Result};
use crate::model::validate_ifname;
use crate::netns::Netns;

/// Deletions of links by name in one namespace, and marker files removed after them.
#[derive(Debug)]
pub struct DeferredDeletes {
    /// A plain NETLINK_ROUTE socket bound to the namespace. It also keeps that namespace
    /// alive, so a runtime removing it right after DEL does not race the child.
    sock: OwnedFd,
    requests: Vec<Vec<u8>>,
    unlink: Vec<CString>,
}

impl DeferredDeletes {
    /// Prepares deletions in `netns` (None: the caller's own namespace).
    pub fn new(netns: Option<&Netns>) -> Result<Self> {
        let open = || {
            // SAFETY: plain socket(2); the fd is owned right below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(Error::io(
                    "open a netlink socket for deferred deletion",
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let sock = match netns {
            None => open()?,
            Some(ns) => ns.run(open)??,
        };
        Ok(DeferredDeletes {
            sock,
            requests: Vec::new(),
            unlink: Vec::new(),
        })
    }

    /// Adds the deletion of the link named `name` (a missing link is fine).
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        let m = link_message(&LinkRef::Name(name.to_string()));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(m));
        req.header.flags = NLM_F_REQUEST;
        req.header.sequence_number = self.requests.len() as u32 + 1;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.requests.push(buf);
        Ok(())
    }

    /// Removes `path` once the deletions are done (a marker that says they are pending).
    pub fn then_remove(&mut self, path: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidConfig(format!("path {} has a NUL", path.display())))?;
        self.unlink.push(c);
        Ok(())
    }

    /// Forks the child that does it all after this process exits. Returns false when it could
    /// not fork: nothing was done, and the caller deletes the links itself.
    pub fn start(self) -> bool {
        hand_over(&Work {
            keep: &[self.sock.as_raw_fd()],
            requests: &self.requests,
            unlink: &self.unlink,
            linger: std::time::Duration::ZERO,
        })
        // Our copy of the socket closes here; the child's keeps the namespace alive.
    }
}
