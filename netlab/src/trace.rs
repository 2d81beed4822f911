//! `netlab trace SRC DST`: the path a packet takes across namespaces, computed from what the
//! kernels hold, without sending anything.
//!
//! At each namespace: DNAT in prerouting (nft), the kernel's own route decision
//! (`RTM_GETROUTE`, with the input interface for forwarded packets so ip_forward and rp_filter
//! apply), the filter rules that would drop the packet, masquerade/SNAT in postrouting, and
//! the neighbour entry of the next hop. Between namespaces: the layer-2 walk from the output
//! interface over veth pairs and bridge ports to the interface that holds the next hop's
//! address, with the bridge FDB entry that decides each bridge's port.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use engine_core::netlink::{NeighbourState, Netlink};
use engine_core::netns::Netns;
use serde::Serialize;

use crate::inventory::{Inventory, NsView};
use crate::nft::{Match, Pkt, Ruleset};
use crate::nsid::{NsidSocket, RouteGetError};

/// The longest path netlab follows (a loop between namespaces ends here).
const MAX_HOPS: usize = 16;

/// One namespace the packet passes.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub netns: String,
    /// `send` (the source), `forward`, `deliver`, or `drop` when the path ends here.
    pub action: String,
    /// The interface the packet came in on (`None` at the source).
    pub iif: Option<String>,
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    /// The route that decides (`default via 10.0.0.1 dev eth0`).
    pub route: Option<String>,
    pub oif: Option<String>,
    /// DNAT, masquerade and SNAT applied here, each with its rule.
    pub nat: Vec<String>,
    /// Filter rules (or drop policies) on this hop that drop the packet; `may` when netlab
    /// cannot tell whether the rule matches.
    pub filter: Vec<String>,
    /// The next hop's neighbour entry.
    pub neighbour: Option<String>,
    /// The layer-2 steps to the next namespace.
    pub link: Vec<String>,
    /// Why the path ends here, when it does not reach the destination.
    pub problem: Option<String>,
}

/// A whole path.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub src: String,
    pub dst: IpAddr,
    pub proto: Option<String>,
    pub port: Option<u16>,
    pub hops: Vec<Hop>,
    /// Whether the last hop delivers to the destination address.
    pub reached: bool,
}

/// Per-namespace handles opened on first use.
struct NsCtx {
    netns: Netns,
    sock: Option<NsidSocket>,
    rules: Option<Ruleset>,
    nl: Option<Netlink>,
}

/// The inventory plus lazily opened sockets and rulesets of the namespaces a path visits.
pub struct World<'a> {
    pub inv: &'a Inventory,
    ctx: HashMap<usize, NsCtx>,
}

impl<'a> World<'a> {
    pub fn new(inv: &'a Inventory) -> Self {
        World {
            inv,
            ctx: HashMap::new(),
        }
    }

    pub fn index_of_label(&self, label: &str) -> Option<usize> {
        self.inv.namespaces.iter().position(|n| n.label == label)
    }

    pub fn index_of_inode(&self, inode: u64) -> Option<usize> {
        self.inv.namespaces.iter().position(|n| n.inode == inode)
    }

    fn ctx(&mut self, i: usize) -> Option<&mut NsCtx> {
        if !self.ctx.contains_key(&i) {
            let netns = Netns::open(&self.inv.namespaces[i].path).ok()?;
            self.ctx.insert(
                i,
                NsCtx {
                    netns,
                    sock: None,
                    rules: None,
                    nl: None,
                },
            );
        }
        self.ctx.get_mut(&i)
    }

    pub fn netns(&mut self, i: usize) -> Option<&Netns> {
        self.ctx(i).map(|c| &c.netns)
    }

    /// The kernel's route decision in namespace `i`.
    pub fn route_get(
        &mut self,
        i: usize,
        dst: IpAddr,
        src: Option<IpAddr>,
        iif: Option<u32>,
    ) -> Result<crate::nsid::RouteAnswer, RouteGetError> {
        let c = self
            .ctx(i)
            .ok_or_else(|| RouteGetError::Other("namespace vanished".into()))?;
        if c.sock.is_none() {
            c.sock = Some(
                NsidSocket::open_in(&c.netns).map_err(|e| RouteGetError::Other(e.to_string()))?,
            );
        }
        match c.sock.as_mut() {
            Some(s) => s.route_get(dst, src, iif),
            None => Err(RouteGetError::Other("no netlink socket".into())),
        }
    }

    /// Namespace `i`'s nft ruleset (read once; `refresh` reads it again, for counters).
    pub fn rules(&mut self, i: usize, refresh: bool) -> Ruleset {
        let Some(c) = self.ctx(i) else {
            return Ruleset::default();
        };
        if refresh || c.rules.is_none() {
            c.rules = Some(Ruleset::read(Some(&c.netns)).unwrap_or_default());
        }
        c.rules.clone().unwrap_or_default()
    }

    pub fn netlink(&mut self, i: usize) -> Option<&Netlink> {
        let c = self.ctx(i)?;
        if c.nl.is_none() {
            c.nl = Netlink::in_netns(&c.netns).ok();
        }
        c.nl.as_ref()
    }

    /// The neighbour entry for `ip` on `ifname` in namespace `i`.
    pub fn neighbour(
        &mut self,
        i: usize,
        ifname: &str,
        ip: IpAddr,
    ) -> Option<engine_core::netlink::Neighbour> {
        let nl = self.netlink(i)?;
        nl.neighbours_of(ifname)
            .ok()?
            .into_iter()
            .find(|n| n.ip == ip)
    }

    /// A `net.*` sysctl of namespace `i`.
    pub fn sysctl(&mut self, i: usize, key: &str) -> Option<String> {
        let c = self.ctx(i)?;
        engine_core::netlink::sysctl_get_in(&c.netns, key).ok()
    }

    /// The namespace and interface that hold `ip` as an address.
    pub fn owner_of(&self, ip: IpAddr) -> Option<(usize, String)> {
        self.inv.namespaces.iter().enumerate().find_map(|(i, n)| {
            n.interfaces
                .iter()
                .find(|f| f.addresses.iter().any(|a| a.ip() == ip))
                .map(|f| (i, f.name.clone()))
        })
    }
}

/// Traces from namespace `src` to `dst` for a packet of `proto` to `port`.
pub fn trace(
    w: &mut World<'_>,
    src: usize,
    dst: IpAddr,
    proto: Option<&str>,
    port: Option<u16>,
) -> Trace {
    let inv = w.inv;
    let mut t = Trace {
        src: inv.namespaces[src].label.clone(),
        dst,
        proto: proto.map(str::to_string),
        port,
        hops: Vec::new(),
        reached: false,
    };
    let mut cur = src;
    let mut iif: Option<String> = None;
    let mut s_addr: Option<IpAddr> = None;
    let mut d_addr = dst;
    let mut d_port = port;
    let mut seen = HashSet::new();
    for _ in 0..MAX_HOPS {
        let ns = &inv.namespaces[cur];
        let mut hop = Hop {
            netns: ns.label.clone(),
            action: "forward".into(),
            iif: iif.clone(),
            src: s_addr,
            dst: d_addr,
            route: None,
            oif: None,
            nat: Vec::new(),
            filter: Vec::new(),
            neighbour: None,
            link: Vec::new(),
            problem: None,
        };
        if !seen.insert((cur, iif.clone())) {
            hop.action = "drop".into();
            hop.problem = Some("routing loop: the packet comes back the way it went".into());
            t.hops.push(hop);
            break;
        }
        let mut pkt = Pkt {
            src: s_addr,
            dst: Some(d_addr),
            proto: proto.map(|p| proto_name(p, d_addr)),
            dport: d_port,
            iif: iif.clone(),
            oif: None,
        };
        let rules = w.rules(cur, false);
        if iif.is_some() {
            if let Some((r, m)) = rules.nat_rule("prerouting", &["dnat"], &pkt) {
                if let Some((to, to_port)) = r.dnat_to() {
                    hop.nat.push(format!(
                        "{}dnat {d_addr} → {to}{} ({})",
                        may(m),
                        to_port.map(|p| format!(":{p}")).unwrap_or_default(),
                        r.describe()
                    ));
                    d_addr = to;
                    d_port = to_port.or(d_port);
                    pkt.dst = Some(to);
                    pkt.dport = d_port;
                    hop.dst = to;
                }
            }
        }
        let iif_index = iif.as_deref().and_then(|n| ns.iface(n)).map(|f| f.index);
        let answer = w.route_get(cur, d_addr, iif.as_ref().and(s_addr), iif_index);
        let a = match answer {
            Ok(a) => a,
            Err(e) => {
                hop.action = "drop".into();
                hop.problem = Some(route_problem(w, cur, &e, d_addr, s_addr, iif.as_deref()));
                t.hops.push(hop);
                break;
            }
        };
        if a.is_local() {
            hop.action = "deliver".into();
            hop.route = Some(format!("local {d_addr}"));
            pkt.iif = iif.clone();
            let drops = rules.drops_on("input", &pkt);
            for (d, m) in &drops {
                hop.filter.push(format!("{}{d}", may(*m)));
            }
            if let Some((d, _)) = drops.iter().find(|(_, m)| *m == Match::Yes) {
                hop.action = "drop".into();
                hop.problem = Some(format!("dropped by the firewall in {}: {d}", ns.label));
            } else {
                t.reached = true;
            }
            t.hops.push(hop);
            break;
        }
        if cur == src {
            s_addr = a.pref_src.or(s_addr);
            hop.src = s_addr;
            pkt.src = s_addr;
            hop.action = "send".into();
        } else if forwarding_off(w, cur, d_addr) {
            hop.action = "drop".into();
            hop.problem = Some(format!(
                "forwarding is off in {} ({} = 0): it does not route between interfaces",
                ns.label,
                forward_key(d_addr)
            ));
            t.hops.push(hop);
            break;
        }
        let oif = a
            .oif
            .and_then(|i| ns.iface_by_index(i))
            .map(|f| f.name.clone())
            .unwrap_or_else(|| "?".into());
        hop.route = Some(route_text(ns, d_addr, a.gateway, &oif));
        hop.oif = Some(oif.clone());
        pkt.oif = Some(oif.clone());
        let hook = if cur == src { "output" } else { "forward" };
        let drops = rules.drops_on(hook, &pkt);
        for (d, m) in &drops {
            hop.filter.push(format!("{}{d}", may(*m)));
        }
        if let Some((d, _)) = drops.iter().find(|(_, m)| *m == Match::Yes) {
            hop.action = "drop".into();
            hop.problem = Some(format!("dropped by the firewall in {}: {d}", ns.label));
            t.hops.push(hop);
            break;
        }
        if let Some((r, m)) = rules.nat_rule("postrouting", &["masquerade", "snat"], &pkt) {
            let new_src = r
                .expr
                .iter()
                .find_map(|e| e.get("snat")?["addr"].as_str()?.parse().ok())
                .or_else(|| iface_addr(ns, &oif, d_addr));
            if let Some(ns_src) = new_src {
                hop.nat.push(format!(
                    "{}{} {} → {ns_src} ({})",
                    may(m),
                    r.verdict().map(|v| v.0).unwrap_or_default(),
                    s_addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
                    r.describe()
                ));
                s_addr = Some(ns_src);
            }
        }
        let next_hop = a.gateway.unwrap_or(d_addr);
        match w.neighbour(cur, &oif, next_hop) {
            Some(n) => {
                hop.neighbour = Some(format!(
                    "{next_hop} {} {}",
                    n.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                    neigh_state(n.state)
                ))
            }
            None => hop.neighbour = Some(format!("{next_hop} not yet resolved")),
        }
        let (next, steps) = l2_walk(w, cur, &oif, next_hop);
        hop.link = steps;
        match next {
            Some((n, in_if)) => {
                t.hops.push(hop);
                cur = n;
                iif = Some(in_if);
            }
            None => {
                hop.problem = Some(format!(
                    "next hop {next_hop} via {oif} is in no namespace netlab can see (the \
                     packet leaves here)"
                ));
                t.hops.push(hop);
                break;
            }
        }
    }
    t
}

fn may(m: Match) -> &'static str {
    if m == Match::Maybe {
        "may "
    } else {
        ""
    }
}

/// The protocol name as nft calls it for this address family.
pub fn proto_name(p: &str, dst: IpAddr) -> String {
    match (p, dst) {
        ("icmp", IpAddr::V6(_)) => "icmpv6".into(),
        ("dns", _) => "udp".into(),
        (p, _) => p.to_string(),
    }
}

fn forward_key(dst: IpAddr) -> &'static str {
    if dst.is_ipv4() {
        "net.ipv4.ip_forward"
    } else {
        "net.ipv6.conf.all.forwarding"
    }
}

fn forwarding_off(w: &mut World<'_>, i: usize, dst: IpAddr) -> bool {
    w.sysctl(i, forward_key(dst)).as_deref() == Some("0")
}

fn route_problem(
    w: &mut World<'_>,
    i: usize,
    e: &RouteGetError,
    dst: IpAddr,
    src: Option<IpAddr>,
    iif: Option<&str>,
) -> String {
    let label = w.inv.namespaces[i].label.clone();
    // Kernels report a failed reverse-path check as EXDEV (older) or EINVAL (newer, where it
    // is one of the "martian source" reasons): tell it from the sysctls and the route back.
    let rp = match (e, iif) {
        (RouteGetError::Errno(libc::EXDEV), Some(_)) => true,
        (RouteGetError::Errno(libc::EINVAL), Some(ifname)) => {
            let strict = ["all", ifname].iter().any(|k| {
                w.sysctl(i, &format!("net.ipv4.conf.{k}.rp_filter"))
                    .as_deref()
                    == Some("1")
            });
            let back = src.and_then(|s| w.route_get(i, s, None, None).ok());
            let in_index = w.inv.namespaces[i].iface(ifname).map(|f| f.index);
            strict && back.is_some_and(|b| b.oif != in_index)
        }
        _ => false,
    };
    if rp {
        // The kernel uses the larger of `all` and the interface's own value.
        let ifname = iif.unwrap_or("all");
        let all = w.sysctl(i, "net.ipv4.conf.all.rp_filter");
        let dev = w.sysctl(i, &format!("net.ipv4.conf.{ifname}.rp_filter"));
        return format!(
            "reverse-path filter in {label}: the route back to {} does not leave via {ifname} \
             (rp_filter all={}, {ifname}={}; 1 is strict)",
            src.map(|s| s.to_string())
                .unwrap_or_else(|| "the source".into()),
            all.as_deref().unwrap_or("?"),
            dev.as_deref().unwrap_or("?")
        );
    }
    match e {
        RouteGetError::Errno(libc::ENETUNREACH) => {
            format!("no route to {dst} in {label}")
        }
        RouteGetError::Errno(libc::EHOSTUNREACH) => {
            if iif.is_some() && forwarding_off(w, i, dst) {
                format!(
                    "forwarding is off in {label} ({} = 0): it does not route between interfaces",
                    forward_key(dst)
                )
            } else {
                format!("{label} has an unreachable route for {dst}")
            }
        }
        RouteGetError::Errno(libc::EACCES) => format!("{label} has a prohibit route for {dst}"),
        RouteGetError::Errno(libc::EINVAL) if iif.is_some() => {
            format!(
                "{label} refuses to route a packet from this source (martian or forwarding off)"
            )
        }
        RouteGetError::Errno(n) => format!(
            "route lookup for {dst} in {label} failed: {}",
            std::io::Error::from_raw_os_error(*n)
        ),
        RouteGetError::Other(s) => format!("route lookup for {dst} in {label} failed: {s}"),
    }
}

/// The route the kernel used, written as `ip route` shows it (the most specific main-table
/// route through that interface).
fn route_text(ns: &NsView, dst: IpAddr, gw: Option<IpAddr>, oif: &str) -> String {
    let best = ns
        .routes
        .iter()
        .filter(|r| r.destination.contains(dst) && r.dev.as_deref() == Some(oif))
        .filter(|r| gw.is_none() || r.gateway == gw || r.gateway.is_none())
        .max_by_key(|r| r.destination.prefix());
    match best {
        Some(r) => {
            let dest = if r.destination.prefix() == 0 {
                "default".to_string()
            } else {
                r.destination.to_string()
            };
            match r.gateway {
                Some(g) => format!("{dest} via {g} dev {oif}"),
                None => format!("{dest} dev {oif}"),
            }
        }
        None => match gw {
            Some(g) => format!("{dst} via {g} dev {oif}"),
            None => format!("{dst} dev {oif}"),
        },
    }
}

fn iface_addr(ns: &NsView, ifname: &str, like: IpAddr) -> Option<IpAddr> {
    ns.iface(ifname)?
        .addresses
        .iter()
        .map(|a| a.ip())
        .find(|a| a.is_ipv4() == like.is_ipv4())
}

pub fn neigh_state(s: NeighbourState) -> String {
    format!("{s:?}").to_ascii_uppercase()
}

/// Walks layer 2 from `ifname` in namespace `ns` to the interface that holds `ip`: over veth
/// pairs (into other namespaces), from a port up to its bridge and from a bridge down to its
/// ports. Returns that namespace and interface, and the steps in words.
fn l2_walk(
    w: &mut World<'_>,
    ns: usize,
    ifname: &str,
    ip: IpAddr,
) -> (Option<(usize, String)>, Vec<String>) {
    let inv = w.inv;
    type Node = (usize, String);
    let start: Node = (ns, ifname.to_string());
    let mut prev: HashMap<Node, Node> = HashMap::new();
    let mut queue = VecDeque::from([start.clone()]);
    let mut seen = HashSet::from([start.clone()]);
    let mut found = None;
    while let Some(node) = queue.pop_front() {
        let view = &inv.namespaces[node.0];
        let Some(f) = view.iface(&node.1) else {
            continue;
        };
        if node != start && f.addresses.iter().any(|a| a.ip() == ip) {
            found = Some(node);
            break;
        }
        let mut next: Vec<Node> = Vec::new();
        if f.kind == "veth" {
            if let Some(p) = &f.peer {
                if let (Some(pi), Some(pn)) =
                    (p.inode.and_then(|i| w.index_of_inode(i)), p.ifname.as_ref())
                {
                    next.push((pi, pn.clone()));
                }
            }
        }
        if let Some(m) = &f.master {
            next.push((node.0, m.clone()));
        }
        if f.kind == "bridge" {
            for port in view
                .interfaces
                .iter()
                .filter(|i| i.master.as_deref() == Some(&f.name))
            {
                next.push((node.0, port.name.clone()));
            }
        }
        for n in next {
            if seen.insert(n.clone()) {
                prev.insert(n.clone(), node.clone());
                queue.push_back(n);
            }
        }
    }
    let Some(end) = found else {
        return (
            None,
            vec![format!("{ifname}: no interface on this segment holds {ip}")],
        );
    };
    let mut path = vec![end.clone()];
    while let Some(p) = prev.get(path.last().unwrap_or(&start)) {
        path.push(p.clone());
    }
    path.reverse();
    // The MAC the sender resolved for the next hop, to name the FDB entry each bridge uses.
    let mac = w.neighbour(ns, ifname, ip).and_then(|n| n.mac);
    let mut steps = Vec::new();
    for pair in path.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let la = &inv.namespaces[a.0].label;
        let lb = &inv.namespaces[b.0].label;
        let kind_a = inv.namespaces[a.0]
            .iface(&a.1)
            .map(|f| f.kind.clone())
            .unwrap_or_default();
        let kind_b = inv.namespaces[b.0]
            .iface(&b.1)
            .map(|f| f.kind.clone())
            .unwrap_or_default();
        if a.0 != b.0 {
            steps.push(format!("veth {la}:{} ═ {lb}:{}", a.1, b.1));
        } else if kind_b == "bridge" {
            steps.push(format!("{lb}:{} is a port of bridge {}", a.1, b.1));
        } else if kind_a == "bridge" {
            let fdb = mac.and_then(|m| {
                let nl = w.netlink(a.0)?;
                let entries = nl.fdb_entries(b.1.as_str()).ok()?;
                Some(entries.iter().any(|e| e.mac == m))
            });
            let why = match (fdb, mac) {
                (Some(true), Some(m)) => format!("fdb: {m} is on {}", b.1),
                (Some(false), Some(m)) => format!("{m} not in the fdb: flooded, {} answers", b.1),
                _ => "MAC not known yet: flooded".to_string(),
            };
            steps.push(format!("bridge {la}:{} → port {} ({why})", a.1, b.1));
        }
    }
    (Some(end), steps)
}

/// The path as text, one block per namespace.
pub fn text(t: &Trace) -> String {
    let mut out = format!(
        "trace {} → {}{}\n",
        t.src,
        t.dst,
        match (&t.proto, t.port) {
            (Some(p), Some(port)) => format!(" ({p}/{port})"),
            (Some(p), None) => format!(" ({p})"),
            _ => String::new(),
        }
    );
    for (n, h) in t.hops.iter().enumerate() {
        let arrow = match (&h.iif, h.action.as_str()) {
            (Some(i), _) => format!("in {i}"),
            (None, _) => format!("from {}", opt(h.src)),
        };
        out.push_str(&format!(
            "{:>2} {}  {}  {arrow}  {} → {}\n",
            n + 1,
            h.netns,
            h.action,
            opt(h.src),
            h.dst
        ));
        for nat in &h.nat {
            out.push_str(&format!("     nat     {nat}\n"));
        }
        if let Some(r) = &h.route {
            out.push_str(&format!("     route   {r}\n"));
        }
        for f in &h.filter {
            out.push_str(&format!("     filter  drops: {f}\n"));
        }
        if let Some(nb) = &h.neighbour {
            out.push_str(&format!("     neigh   {nb}\n"));
        }
        for l in &h.link {
            out.push_str(&format!("     link    {l}\n"));
        }
        if let Some(p) = &h.problem {
            out.push_str(&format!("     ✗ {p}\n"));
        }
    }
    if let (true, Some(last)) = (t.reached, t.hops.last()) {
        if last.dst == t.dst {
            out.push_str(&format!("reached {} in {}\n", t.dst, last.netns));
        } else {
            out.push_str(&format!(
                "reached {} (DNAT of {}) in {}\n",
                last.dst, t.dst, last.netns
            ));
        }
    } else {
        out.push_str(&format!("does not reach {}\n", t.dst));
    }
    crate::render::wrap(&out)
}

fn opt(a: Option<IpAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}
