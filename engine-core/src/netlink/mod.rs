//! Typed, synchronous rtnetlink access: links, addresses, routes, neighbours and sysctls.
//!
//! [`Netlink`] is a thin layer over rtnetlink's async handle. Each value owns a private
//! current-thread tokio runtime with the netlink connection spawned on it; every method is a
//! plain blocking call (`block_on`), and the connection only makes progress while a call runs.
//! That keeps the callers (drivers, CNI binaries, netlab) free of async, and lets the daemon
//! use it from `spawn_blocking`.
//!
//! **Never call a [`Netlink`] method on an async runtime thread**: tokio cannot nest runtimes.
//! The methods detect that case and return [`Error::Internal`] instead of panicking.
//!
//! A netlink socket belongs to the network namespace it was *created* in, for its whole life.
//! [`Netlink::in_netns`] creates the socket on a throwaway thread inside the namespace
//! ([`Netns::run`]) and then uses it from the caller's thread, so no long-lived thread ever
//! changes namespace.
//!
//! Errors are [`Error::Netlink`] with a context naming the operation and the link
//! ("create veth vethabc/eth0"), the positive errno (so callers can tell `EEXIST`, `ENODEV`,
//! `ENOENT` apart; see [`is_not_found`] and [`is_exists`]) and the kernel's extended-ack
//! message when it sent one.
//!
//! Dumps (the list methods) check `NLM_F_DUMP_INTR`: when the kernel reports that the table
//! changed while it was being dumped, the dump is retried (and also on `EINTR`/`EBUSY`), up to
//! [`DUMP_ATTEMPTS`] times; a dump that never comes out consistent is an `EINTR` error rather
//! than a silently incomplete list.
//!
//! Sysctls under `/proc/sys/net` are per network namespace; see [`sysctl_set_in`].

mod addr;
mod bridge_vlan;
mod deferred;
pub mod ethtool;
mod link;
mod neigh;
mod route;
mod sysctl;
mod vxlan;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::sys::AsyncSocket;

use crate::error::{Error, Result};
use crate::netns::Netns;

pub use addr::{AddrOptions, Address};
pub use bridge_vlan::{PortVlan, VLAN_IDS};
pub use deferred::DeferredDeletes;
pub use link::{
    BridgePortInfo, BridgeSpec, IpvlanFlag, IpvlanMode, IpvlanSpec, Link, LinkDetails, LinkKind,
    MacvlanMode, MacvlanSpec, OperState, VethSpec, VlanSpec, VxlanSpec,
};
pub use neigh::{FdbAdd, FdbEntry, Neighbour, NeighbourState};
pub use route::{Route, RouteKind, RouteSpec, RT_TABLE_MAIN};
pub use sysctl::{sysctl_get, sysctl_get_in, sysctl_path, sysctl_set, sysctl_set_in};
pub use vxlan::{Underlay, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6};

/// How many times a dump is tried before an inconsistent result becomes an error.
pub const DUMP_ATTEMPTS: usize = 5;

/// A synchronous rtnetlink client bound to one network namespace.
///
/// `Send + Sync`: methods take `&self` and may be called from several threads (they take
/// turns driving the private runtime). Must not be used from inside an async runtime thread.
pub struct Netlink {
    /// `Option` only so that `Drop` can take it out and shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    handle: rtnetlink::Handle,
    /// The namespace the socket lives in, for error messages (`None`: the caller's own).
    netns: Option<PathBuf>,
    /// The kernel runs one dump per socket at a time and answers EBUSY to a second one, so
    /// threads sharing a client take turns.
    dump_lock: Mutex<()>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another runtime (a daemon may
        // drop a Netlink in async code). shutdown_background never blocks; the only task is the
        // connection, which is simply dropped and closes the socket.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn connect() -> Result<Self> {
        let rt = new_runtime()?;
        let conn = {
            let _ctx = rt.enter();
            open_connection()?
        };
        Ok(Self::start(rt, conn, None))
    }

    /// Opens a netlink socket inside `netns`. The socket is created on a throwaway thread that
    /// entered the namespace ([`Netns::run`]) and stays bound to it after that thread is gone.
    pub fn in_netns(netns: &Netns) -> Result<Self> {
        let rt = new_runtime()?;
        let rt_handle = rt.handle().clone();
        let conn = netns.run(move || {
            // The socket must be registered with this runtime's I/O driver, which only needs
            // the runtime's context, not its thread.
            let _ctx = rt_handle.enter();
            open_connection()
        })??;
        Ok(Self::start(rt, conn, Some(netns.path().to_path_buf())))
    }

    fn start(rt: tokio::runtime::Runtime, (conn, handle): Conn, netns: Option<PathBuf>) -> Self {
        // Spawned on the current-thread runtime, the connection is polled whenever a method
        // is inside block_on, which is exactly when a request is waiting for it.
        rt.spawn(conn);
        Netlink {
            rt: Some(rt),
            handle,
            netns,
            dump_lock: Mutex::new(()),
        }
    }

    /// The namespace this client was opened in (`None` when opened with [`Netlink::connect`]).
    pub fn netns_path(&self) -> Option<&std::path::Path> {
        self.netns.as_deref()
    }

    fn block_on<F: Future>(&self, what: &dyn Fn() -> String, f: F) -> Result<F::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Internal(format!(
                "{}: netlink calls block and must not run on an async runtime thread (use spawn_blocking)",
                self.context(what())
            )));
        }
        match &self.rt {
            Some(rt) => Ok(rt.block_on(f)),
            None => Err(Error::Internal("netlink client used after shutdown".into())),
        }
    }

    /// Adds the namespace to an operation's description.
    fn context(&self, what: String) -> String {
        match &self.netns {
            Some(p) => format!("{what} (in netns {})", p.display()),
            None => what,
        }
    }

    fn fail(&self, what: String, f: Fail) -> Error {
        f.into_error(self.context(what))
    }

    /// Sends a request that the kernel acknowledges (create, change, delete).
    fn exec(
        &self,
        what: &dyn Fn() -> String,
        payload: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<()> {
        let handle = self.handle.clone();
        self.block_on(
            what,
            ack_request(handle, payload, NLM_F_REQUEST | NLM_F_ACK | extra_flags),
        )?
        .map_err(|f| self.fail(what(), f))
    }

    /// Sends a non-dump get and returns the single answer; `Ok(None)` when the kernel answers
    /// with one of `absent` errnos.
    fn get_one(
        &self,
        what: &dyn Fn() -> String,
        payload: RouteNetlinkMessage,
        absent: &[i32],
    ) -> Result<Option<RouteNetlinkMessage>> {
        let handle = self.handle.clone();
        match self.block_on(what, get_request(handle, payload))? {
            Ok(m) => Ok(m),
            Err(Fail::Errno { errno, .. }) if absent.contains(&errno) => Ok(None),
            Err(f) => Err(self.fail(what(), f)),
        }
    }

    /// Dumps a table, retrying while the kernel says the dump was interrupted.
    fn dump(
        &self,
        what: &dyn Fn() -> String,
        request: &dyn Fn() -> RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        // A panic while holding the lock cannot leave anything inconsistent behind.
        let _turn = self.dump_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = Fail::Errno {
            errno: libc::EINTR,
            extack: Some("the table kept changing while it was read".into()),
        };
        for attempt in 1..=DUMP_ATTEMPTS {
            let handle = self.handle.clone();
            match self.block_on(what, dump_request(handle, request()))? {
                Ok(Dumped {
                    messages,
                    interrupted: false,
                }) => return Ok(messages),
                Ok(Dumped {
                    interrupted: true, ..
                }) => {
                    tracing::debug!(attempt, what = %what(), "netlink dump interrupted, retrying");
                }
                Err(Fail::Errno { errno, extack })
                    if errno == libc::EINTR || errno == libc::EBUSY =>
                {
                    tracing::debug!(attempt, errno, what = %what(), "netlink dump failed transiently, retrying");
                    last = Fail::Errno { errno, extack };
                }
                Err(f) => return Err(self.fail(what(), f)),
            }
        }
        Err(self.fail(what(), last))
    }
}

type Conn = (
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    rtnetlink::Handle,
);

fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("start the netlink runtime", e))
}

/// Opens the socket in the calling thread's namespace; needs a tokio runtime context.
fn open_connection() -> Result<Conn> {
    let (mut conn, handle, _unsolicited) =
        rtnetlink::new_connection().map_err(|e| Error::Netlink {
            context: "open netlink socket".into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        })?;
    // Done messages carry NLM_F_DUMP_INTR and dump errors; acks prove a request completed
    // (a stream that ends without one means the connection went away).
    conn.set_forward_done(true);
    conn.set_forward_ack(true);
    let socket = conn.socket_mut().socket_mut();
    // All three are optimisations or better messages; old kernels without them still work.
    // Extended acks carry the kernel's own explanation ("Unknown device type").
    let _ = socket.set_ext_ack(true);
    // Errors then echo only the request header, not the whole request.
    let _ = socket.set_cap_ack(true);
    // Lets the kernel filter dumps (by table, by link) instead of sending everything; the
    // callers filter again, so kernels that ignore it give the same answer.
    let _ = socket.set_netlink_get_strict_chk(true);
    Ok((conn, handle))
}

/// What went wrong with one request, before we know the caller's context.
#[derive(Debug)]
enum Fail {
    Errno {
        errno: i32,
        extack: Option<String>,
    },
    /// The connection task is gone or a request ended without an answer.
    Closed,
    Unexpected(String),
}

impl Fail {
    fn into_error(self, context: String) -> Error {
        match self {
            Fail::Errno { errno, extack } => {
                let e = nix::errno::Errno::from_raw(errno);
                let mut message = format!("{} ({e:?})", e.desc());
                if let Some(x) = extack {
                    message.push_str(": ");
                    message.push_str(&x);
                }
                Error::Netlink {
                    context,
                    errno: Some(errno),
                    message,
                }
            }
            Fail::Closed => Error::Netlink {
                context,
                errno: None,
                message: "the netlink connection closed before the kernel answered".into(),
            },
            Fail::Unexpected(m) => Error::Netlink {
                context,
                errno: None,
                message: m,
            },
        }
    }

    fn from_nlmsgerr(flags: u16, code: i32, echoed: &[u8]) -> Self {
        Fail::Errno {
            errno: code.saturating_abs(),
            extack: extack_message(flags, echoed),
        }
    }
}

async fn ack_request(
    mut handle: rtnetlink::Handle,
    payload: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), Fail> {
    let mut req = NetlinkMessage::from(payload);
    req.header.flags = flags;
    let mut answers = handle.request(req).map_err(|_| Fail::Closed)?;
    while let Some(msg) = answers.next().await {
        let hflags = msg.header.flags;
        if let NetlinkPayload::Error(e) = msg.payload {
            return match e.code {
                Some(code) => Err(Fail::from_nlmsgerr(hflags, code.get(), &e.header)),
                None => Ok(()),
            };
        }
    }
    Err(Fail::Closed)
}

async fn get_request(
    mut handle: rtnetlink::Handle,
    payload: RouteNetlinkMessage,
) -> Result<Option<RouteNetlinkMessage>, Fail> {
    let mut req = NetlinkMessage::from(payload);
    req.header.flags = NLM_F_REQUEST;
    let mut answers = handle.request(req).map_err(|_| Fail::Closed)?;
    let mut found = None;
    while let Some(msg) = answers.next().await {
        let hflags = msg.header.flags;
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => found = found.or(Some(m)),
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(Fail::from_nlmsgerr(hflags, code.get(), &e.header));
                }
            }
            _ => {}
        }
    }
    found.map(Some).ok_or(Fail::Closed)
}

struct Dumped {
    messages: Vec<RouteNetlinkMessage>,
    interrupted: bool,
}

async fn dump_request(
    mut handle: rtnetlink::Handle,
    payload: RouteNetlinkMessage,
) -> Result<Dumped, Fail> {
    let mut req = NetlinkMessage::from(payload);
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut answers = handle.request(req).map_err(|_| Fail::Closed)?;
    let mut out = Dumped {
        messages: Vec::new(),
        interrupted: false,
    };
    let mut done = false;
    while let Some(msg) = answers.next().await {
        let hflags = msg.header.flags;
        // rtnetlink's own dump streams drop this flag; the kernel sets it on the message where
        // it noticed the table change, and on the final Done.
        if hflags & NLM_F_DUMP_INTR != 0 {
            out.interrupted = true;
        }
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.messages.push(m),
            NetlinkPayload::Done(d) => {
                if d.code < 0 {
                    return Err(Fail::Errno {
                        errno: -d.code,
                        extack: None,
                    });
                }
                done = true;
            }
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(Fail::from_nlmsgerr(hflags, code.get(), &e.header));
                }
                done = true;
            }
            // Messages were lost: as bad as an interrupted dump.
            NetlinkPayload::Overrun(_) => out.interrupted = true,
            _ => {}
        }
    }
    if done {
        Ok(out)
    } else {
        Err(Fail::Closed)
    }
}

// Flags of an NLMSG_ERROR message (include/uapi/linux/netlink.h).
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// The kernel's extended-ack text from an NLMSG_ERROR payload (after the errno): the echoed
/// request (only its header when capped), then attributes.
fn extack_message(flags: u16, echoed: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = u32::from_ne_bytes(echoed.get(..4)?.try_into().ok()?) as usize;
        align4(len)
    };
    let mut rest = echoed.get(skip..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            break;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = rest[4..len].split(|b| *b == 0).next().unwrap_or_default();
            let text = String::from_utf8_lossy(text).trim().to_string();
            return (!text.is_empty()).then_some(text);
        }
        rest = rest.get(align4(len)..).unwrap_or_default();
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Whether `e` says the thing does not exist (no such link, address, route or neighbour).
pub fn is_not_found(e: &Error) -> bool {
    matches!(
        e.errno(),
        Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
    )
}

/// Whether `e` says the thing already exists.
pub fn is_exists(e: &Error) -> bool {
    e.errno() == Some(libc::EEXIST)
}

/// A link named by index or by name. Most methods take `impl Into<LinkRef>`, so both
/// `nl.set_up("eth0")` and `nl.set_up(7)` work; names make better error messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkRef {
    Index(u32),
    Name(String),
}

impl fmt::Display for LinkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkRef::Index(i) => write!(f, "ifindex {i}"),
            LinkRef::Name(n) => f.write_str(n),
        }
    }
}

impl From<u32> for LinkRef {
    fn from(i: u32) -> Self {
        LinkRef::Index(i)
    }
}
impl From<&str> for LinkRef {
    fn from(n: &str) -> Self {
        LinkRef::Name(n.to_string())
    }
}
impl From<String> for LinkRef {
    fn from(n: String) -> Self {
        LinkRef::Name(n)
    }
}
impl From<&String> for LinkRef {
    fn from(n: &String) -> Self {
        LinkRef::Name(n.clone())
    }
}
impl From<&Link> for LinkRef {
    fn from(l: &Link) -> Self {
        LinkRef::Index(l.index)
    }
}
impl From<&LinkRef> for LinkRef {
    fn from(l: &LinkRef) -> Self {
        l.clone()
    }
}

/// An Ethernet (EUI-48) address. Displays as `aa:bb:cc:dd:ee:ff`; parses that form or `-`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// From the raw bytes of a netlink attribute; `None` unless exactly six bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(MacAddr)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidConfig(format!(
                "{s:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"
            ))
        };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

/// The scope of an address or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Universe,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

impl From<u8> for Scope {
    fn from(v: u8) -> Self {
        match v {
            0 => Scope::Universe,
            200 => Scope::Site,
            253 => Scope::Link,
            254 => Scope::Host,
            255 => Scope::Nowhere,
            o => Scope::Other(o),
        }
    }
}

/// Opening netlink clients and reading/writing sysctls inside a namespace.
///
/// Lives here rather than in `netns.rs` so that module stays about switching namespaces only.
pub trait NetnsNetlinkExt {
    /// A netlink client bound to this namespace ([`Netlink::in_netns`]).
    fn netlink(&self) -> Result<Netlink>;
    /// [`sysctl_get_in`].
    fn sysctl_get(&self, key: &str) -> Result<String>;
    /// [`sysctl_set_in`].
    fn sysctl_set(&self, key: &str, value: &str) -> Result<bool>;
}

impl NetnsNetlinkExt for Netns {
    fn netlink(&self) -> Result<Netlink> {
        Netlink::in_netns(self)
    }
    fn sysctl_get(&self, key: &str) -> Result<String> {
        sysctl_get_in(self, key)
    }
    fn sysctl_set(&self, key: &str, value: &str) -> Result<bool> {
        sysctl_set_in(self, key, value)
    }
}

/// The raw fd number of a namespace handle, for `IFLA_NET_NS_FD`. The borrow in the caller
/// keeps the fd open until the request has been sent.
fn ns_fd<F: AsFd + ?Sized>(ns: &F) -> i32 {
    use std::os::fd::AsRawFd;
    ns.as_fd().as_raw_fd()
}
