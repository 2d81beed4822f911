//! Routes (IPv4 and IPv6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};

use super::{Netlink, Scope};
use crate::error::{Error, Result};

/// The main routing table (`ip route` without `table`).
pub const RT_TABLE_MAIN: u32 = 254;

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination network; `0.0.0.0/0` or `::/0` for a default route.
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// The output interface.
    pub oif: Option<u32>,
    /// `RTA_PRIORITY`. IPv6 routes added without one get 1024 from the kernel.
    pub metric: Option<u32>,
    pub table: u32,
    pub pref_src: Option<IpAddr>,
    pub scope: Scope,
    pub kind: RouteKind,
    /// Who installed it (`RTPROT_*`: 2 kernel, 3 boot, 4 static, …).
    pub protocol: u8,
}

impl Route {
    pub fn is_default(&self) -> bool {
        self.destination.prefix() == 0
    }
}

/// `RTN_*`: what the route does with matching packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Other(u8),
}

impl From<u8> for RouteKind {
    fn from(v: u8) -> Self {
        match v {
            1 => RouteKind::Unicast,
            2 => RouteKind::Local,
            3 => RouteKind::Broadcast,
            4 => RouteKind::Anycast,
            5 => RouteKind::Multicast,
            6 => RouteKind::Blackhole,
            7 => RouteKind::Unreachable,
            8 => RouteKind::Prohibit,
            9 => RouteKind::Throw,
            o => RouteKind::Other(o),
        }
    }
}

/// A route to add or delete. For deletion, unset fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Host bits are cleared before sending (the kernel rejects `10.0.0.1/24` as a route).
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub metric: Option<u32>,
    /// `None`: the main table.
    pub table: Option<u32>,
    pub pref_src: Option<IpAddr>,
    /// The gateway is reachable on `oif` even though no address covers it.
    pub onlink: bool,
}

impl RouteSpec {
    pub fn new(destination: IpNetwork) -> Self {
        RouteSpec {
            destination,
            gateway: None,
            oif: None,
            metric: None,
            table: None,
            pref_src: None,
            onlink: false,
        }
    }

    /// A default route (`0.0.0.0/0` or `::/0`, after the gateway's family) via `gateway`.
    pub fn default_via(gateway: IpAddr) -> Self {
        let any = match gateway {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        // A /0 network is always valid.
        let destination = IpNetwork::new(any, 0).unwrap_or_else(|_| IpNetwork::from(any));
        RouteSpec::new(destination).via(gateway)
    }

    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }
    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }
    pub fn table(mut self, table: u32) -> Self {
        self.table = Some(table);
        self
    }
    pub fn pref_src(mut self, ip: IpAddr) -> Self {
        self.pref_src = Some(ip);
        self
    }
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    fn describe(&self) -> String {
        let mut s = format!("{}", normalized(self.destination));
        if let Some(g) = self.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(o) = self.oif {
            s.push_str(&format!(" dev ifindex {o}"));
        }
        if let Some(m) = self.metric {
            s.push_str(&format!(" metric {m}"));
        }
        if let Some(t) = self.table {
            s.push_str(&format!(" table {t}"));
        }
        s
    }

    pub(super) fn message(&self, for_delete: bool) -> Result<RouteMessage> {
        let dst = normalized(self.destination);
        let v4 = dst.is_ipv4();
        for (what, ip) in [
            ("gateway", self.gateway),
            ("preferred source", self.pref_src),
        ] {
            if let Some(ip) = ip {
                if ip.is_ipv4() != v4 {
                    return Err(Error::InvalidConfig(format!(
                        "route {}: {what} {ip} is not of the destination's address family",
                        self.describe()
                    )));
                }
            }
        }
        let mut m = RouteMessage::default();
        m.header.address_family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.destination_prefix_length = dst.prefix();
        let table = self.table.unwrap_or(RT_TABLE_MAIN);
        // The header field is 8 bits; bigger table ids go in RTA_TABLE (as iproute2 does).
        match u8::try_from(table) {
            Ok(t) => m.header.table = t,
            Err(_) => {
                m.header.table = RouteHeader::RT_TABLE_UNSPEC;
                m.attributes.push(RouteAttribute::Table(table));
            }
        }
        if for_delete {
            // Like `ip route del`: match any scope, type and protocol.
            m.header.scope = RouteScope::NoWhere;
        } else {
            m.header.protocol = RouteProtocol::Static;
            m.header.kind = RouteType::Unicast;
            // iproute2's rule: an IPv4 route without a gateway is on-link (scope link).
            m.header.scope = if v4 && self.gateway.is_none() {
                RouteScope::Link
            } else {
                RouteScope::Universe
            };
        }
        if self.onlink {
            m.header.flags.insert(RouteFlags::Onlink);
        }
        if dst.prefix() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst.ip())));
        }
        if let Some(g) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        if let Some(o) = self.oif {
            m.attributes.push(RouteAttribute::Oif(o));
        }
        if let Some(p) = self.metric {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        if let Some(s) = self.pref_src {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(s)));
        }
        Ok(m)
    }
}

impl Netlink {
    /// Adds a route; `EEXIST` if an identical one exists.
    pub fn add_route(&self, spec: &RouteSpec) -> Result<()> {
        let m = spec.message(false)?;
        self.exec(
            &|| format!("add route {}", spec.describe()),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds a route or replaces the one with the same destination, table and metric.
    pub fn replace_route(&self, spec: &RouteSpec) -> Result<()> {
        let m = spec.message(false)?;
        self.exec(
            &|| format!("replace route {}", spec.describe()),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes a route; returns whether it was there. A missing route (or link) is success.
    pub fn del_route(&self, spec: &RouteSpec) -> Result<bool> {
        let m = spec.message(true)?;
        match self.exec(
            &|| format!("delete route {}", spec.describe()),
            RouteNetlinkMessage::DelRoute(m),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT | libc::ENODEV)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The routes of the main table, IPv4 then IPv6, default routes included.
    pub fn routes(&self) -> Result<Vec<Route>> {
        self.routes_in(Some(RT_TABLE_MAIN))
    }

    /// The routes of one table, or of every table (`None`: local, main, policy tables…).
    pub fn routes_in(&self, table: Option<u32>) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let what = || {
                format!(
                    "list {} routes",
                    if family == AddressFamily::Inet {
                        "IPv4"
                    } else {
                        "IPv6"
                    }
                )
            };
            let msgs = self.dump(&what, &|| {
                let mut m = RouteMessage::default();
                m.header.address_family = family;
                // A filter when strict checking is on; filtered again below either way.
                if let Some(t) = table {
                    match u8::try_from(t) {
                        Ok(t) => m.header.table = t,
                        Err(_) => m.attributes.push(RouteAttribute::Table(t)),
                    }
                }
                RouteNetlinkMessage::GetRoute(m)
            });
            let msgs = match msgs {
                Ok(m) => m,
                // Strict dumps of a table that does not exist (yet) in this family.
                Err(e) if table.is_some() && e.errno() == Some(libc::ENOENT) => Vec::new(),
                Err(e) => return Err(e),
            };
            out.extend(
                msgs.into_iter()
                    .filter_map(|m| match m {
                        RouteNetlinkMessage::NewRoute(m) => parse_route(m),
                        _ => None,
                    })
                    .filter(|r| table.is_none_or(|t| r.table == t)),
            );
        }
        Ok(out)
    }

    /// The destinations of the main table's routes, without default routes: the networks this
    /// host already reaches, which IPAM must not hand out again. Host bits cleared, no duplicates.
    pub fn host_routes(&self) -> Result<Vec<IpNetwork>> {
        let mut out: Vec<IpNetwork> = Vec::new();
        for r in self.routes()? {
            if r.is_default()
                || !matches!(
                    r.kind,
                    RouteKind::Unicast
                        | RouteKind::Blackhole
                        | RouteKind::Unreachable
                        | RouteKind::Prohibit
                )
            {
                continue;
            }
            let n = normalized(r.destination);
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(out)
    }
}

/// The network of `n` (host bits cleared).
fn normalized(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn parse_route(m: RouteMessage) -> Option<Route> {
    let any = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = None;
    let mut r = Route {
        destination: IpNetwork::new(any, 0).ok()?,
        gateway: None,
        oif: None,
        metric: None,
        table: u32::from(m.header.table),
        pref_src: None,
        scope: u8::from(m.header.scope).into(),
        kind: u8::from(m.header.kind).into(),
        protocol: u8::from(m.header.protocol),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::Via(RouteVia::Inet(ip)) => r.gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Via(RouteVia::Inet6(ip)) => r.gateway = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(o) => r.oif = Some(*o),
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::PrefSource(s) => r.pref_src = route_ip(s),
            _ => {}
        }
    }
    r.destination = IpNetwork::new(dst.unwrap_or(any), m.header.destination_prefix_length).ok()?;
    Some(r)
}
