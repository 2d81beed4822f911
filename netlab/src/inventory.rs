//! What is inside each namespace (`netlab ls`): interfaces, addresses, routes, and where each
//! veth's other end is.
//!
//! Speed matters (hosts run hundreds of containers): one netlink socket per namespace, three
//! dumps on it, a few worker threads in parallel, and no exec. Peers are resolved from the
//! kernel's own pointers: a veth reports its peer as (ifindex, namespace id), and the host's
//! namespace ids for every namespace come from one `RTM_GETNSID` each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use engine_core::netlink::{Address, Link, LinkKind, Netlink, OperState, Route, RouteKind};
use engine_core::netns::Netns;
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::discover::{Discovery, Namespace, Source};
use crate::nsid::NsidSocket;

/// Every namespace with its contents.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub namespaces: Vec<NsView>,
    pub warnings: Vec<String>,
}

/// One namespace.
#[derive(Debug, Clone, Serialize)]
pub struct NsView {
    pub label: String,
    pub inode: u64,
    /// The id the host namespace gave it (`None` for the host, or when none is assigned).
    pub nsid: Option<i32>,
    pub host: bool,
    pub path: PathBuf,
    pub sources: Vec<Source>,
    pub interfaces: Vec<Iface>,
    /// Main-table default routes, IPv4 then IPv6.
    pub default_routes: Vec<RouteView>,
    /// Every main-table route (for `topo`, `trace` and `probe`).
    pub routes: Vec<RouteView>,
    /// Why the namespace could not be read (it may have vanished meanwhile).
    pub error: Option<String>,
}

/// An interface.
#[derive(Debug, Clone, Serialize)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    /// `veth`, `bridge`, `macvlan`…, or `device` for links without a kind (NICs, loopback).
    pub kind: String,
    pub mtu: u32,
    pub mac: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Operational state (`up`, `down`, `lowerlayerdown`, `unknown`…).
    pub oper: String,
    pub addresses: Vec<IpNetwork>,
    /// The bridge (or other master) this link is a port of.
    pub master: Option<String>,
    /// veth: the other end. macvlan/ipvlan/vlan/vxlan: the parent.
    pub peer: Option<PeerRef>,
    #[serde(skip)]
    pub(crate) raw_link_index: Option<u32>,
    #[serde(skip)]
    pub(crate) raw_link_netnsid: Option<i32>,
}

/// The other end of a veth, or a link's parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRef {
    /// The namespace's label, or `"?"` when netlab cannot see that namespace.
    pub netns: String,
    pub inode: Option<u64>,
    pub index: u32,
    pub ifname: Option<String>,
    pub master: Option<String>,
}

/// A route, flattened for printing.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    pub kind: String,
    pub metric: Option<u32>,
    pub pref_src: Option<IpAddr>,
}

impl NsView {
    pub fn iface(&self, name: &str) -> Option<&Iface> {
        self.interfaces.iter().find(|i| i.name == name)
    }
    pub fn iface_by_index(&self, index: u32) -> Option<&Iface> {
        self.interfaces.iter().find(|i| i.index == index)
    }
}

/// How many namespaces are read at once. The work is mostly waiting for the kernel's answers
/// and thread start-up, so more workers than cores still help.
const WORKERS: usize = 8;

/// Reads every namespace in `found`.
pub fn collect(found: &Discovery) -> Inventory {
    let queue = Mutex::new(found.namespaces.iter().enumerate());
    let results: Mutex<Vec<(usize, NsView, Option<Netns>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(found.namespaces.len().max(1)) {
            s.spawn(|| {
                // Asked from the host: every worker thread starts in netlab's namespace.
                let mut ids = NsidSocket::open().ok();
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((i, ns)) = next else { break };
                    let (view, handle) = read_one(ns, ids.as_mut());
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, view, handle));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _, _)| *i);
    let (mut views, handles): (Vec<NsView>, Vec<Option<Netns>>) =
        results.into_iter().map(|(_, v, h)| (v, h)).unzip();
    resolve_peers(&mut views, &handles);
    Inventory {
        namespaces: views,
        warnings: found.warnings.clone(),
    }
}

fn read_one(ns: &Namespace, ids: Option<&mut NsidSocket>) -> (NsView, Option<Netns>) {
    let mut view = NsView {
        label: ns.label(),
        inode: ns.inode,
        nsid: None,
        host: ns.is_host(),
        path: ns.path.clone(),
        sources: ns.sources.clone(),
        interfaces: Vec::new(),
        default_routes: Vec::new(),
        routes: Vec::new(),
        error: None,
    };
    let handle = match ns.open() {
        Ok(h) => h,
        Err(e) => {
            view.error = Some(e.to_string());
            return (view, None);
        }
    };
    if !view.host {
        view.nsid = ids.and_then(|s| s.nsid_of(&handle).ok().flatten());
    }
    let nl = if view.host {
        Netlink::connect()
    } else {
        Netlink::in_netns(&handle)
    };
    let read = nl.and_then(|nl| Ok((nl.links()?, nl.addresses()?, nl.routes()?)));
    match read {
        Ok((links, addrs, routes)) => fill(&mut view, links, addrs, routes),
        Err(e) => view.error = Some(e.to_string()),
    }
    (view, Some(handle))
}

fn fill(view: &mut NsView, links: Vec<Link>, addrs: Vec<Address>, routes: Vec<Route>) {
    let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut links = links;
    links.sort_by_key(|l| l.index);
    for l in links {
        let addresses = addrs
            .iter()
            .filter(|a| a.index == l.index)
            .map(|a| a.address)
            .collect();
        view.interfaces.push(Iface {
            kind: kind_name(l.kind.as_ref()),
            mtu: l.mtu,
            mac: l
                .mac
                .filter(|m| *m != engine_core::netlink::MacAddr::ZERO)
                .map(|m| m.to_string()),
            up: l.admin_up,
            oper: oper_name(l.oper_state),
            addresses,
            master: l
                .master
                .map(|m| names.get(&m).cloned().unwrap_or_else(|| format!("#{m}"))),
            peer: None,
            raw_link_index: l.link_index,
            raw_link_netnsid: l.link_netnsid,
            name: l.name,
            index: l.index,
        });
    }
    for r in routes {
        let v = RouteView {
            destination: r.destination,
            gateway: r.gateway,
            dev: r
                .oif
                .map(|i| names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"))),
            kind: route_kind(r.kind),
            metric: r.metric,
            pref_src: r.pref_src,
        };
        if r.is_default() && r.kind == RouteKind::Unicast {
            view.default_routes.push(v.clone());
        }
        view.routes.push(v);
    }
}

pub fn kind_name(k: Option<&LinkKind>) -> String {
    match k {
        None => "device".into(),
        Some(LinkKind::Other(s)) => s.clone(),
        Some(k) => format!("{k:?}").to_ascii_lowercase(),
    }
}

fn oper_name(s: OperState) -> String {
    format!("{s:?}").to_ascii_lowercase()
}

fn route_kind(k: RouteKind) -> String {
    match k {
        RouteKind::Other(n) => format!("type{n}"),
        k => format!("{k:?}").to_ascii_lowercase(),
    }
}

/// Fills in `peer` on veths (the other end) and on macvlan/ipvlan/vlan/vxlan (the parent).
fn resolve_peers(views: &mut [NsView], handles: &[Option<Netns>]) {
    let host = views.iter().position(|v| v.host);
    // (host's nsid for the namespace, ifindex there) -> host link, for the host's veths.
    let by_nsid: HashMap<i32, usize> = views
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.nsid.map(|n| (n, i)))
        .collect();
    let mut answers: Vec<(usize, usize, PeerRef)> = Vec::new();
    // Namespace ids as seen from inside non-host namespaces, asked only when needed.
    let mut inner_ids: HashMap<usize, Option<NsidSocket>> = HashMap::new();
    for (vi, v) in views.iter().enumerate() {
        for (ii, iface) in v.interfaces.iter().enumerate() {
            let Some(index) = iface.raw_link_index else {
                continue;
            };
            if !matches!(
                iface.kind.as_str(),
                "veth" | "macvlan" | "ipvlan" | "vlan" | "vxlan"
            ) {
                continue;
            }
            let target = match iface.raw_link_netnsid {
                None => Some(vi),
                Some(id) if v.host => by_nsid.get(&id).copied(),
                Some(id) => find_remote(views, handles, vi, iface, id, host, &mut inner_ids),
            };
            let peer = match target {
                Some(t) => {
                    let tv = &views[t];
                    let other = tv.iface_by_index(index);
                    PeerRef {
                        netns: tv.label.clone(),
                        inode: Some(tv.inode),
                        index,
                        ifname: other.map(|o| o.name.clone()),
                        master: other.and_then(|o| o.master.clone()),
                    }
                }
                None => PeerRef {
                    netns: "?".into(),
                    inode: None,
                    index,
                    ifname: None,
                    master: None,
                },
            };
            answers.push((vi, ii, peer));
        }
    }
    for (vi, ii, p) in answers {
        views[vi].interfaces[ii].peer = Some(p);
    }
}

/// The namespace that namespace `vi` calls `id`, for link `iface`. Cheap checks first: the host
/// (the usual case: a container's veth) by the host's own pointer back, then namespaces whose
/// link at the peer index points back; only when that is ambiguous, ask inside `vi`.
fn find_remote(
    views: &[NsView],
    handles: &[Option<Netns>],
    vi: usize,
    iface: &Iface,
    id: i32,
    host: Option<usize>,
    inner_ids: &mut HashMap<usize, Option<NsidSocket>>,
) -> Option<usize> {
    let index = iface.raw_link_index?;
    let v = &views[vi];
    let points_back = |t: usize| {
        views[t].iface_by_index(index).is_some_and(|o| {
            o.raw_link_index == Some(iface.index)
                && match (o.raw_link_netnsid, views[t].host) {
                    (Some(n), true) => v.nsid == Some(n),
                    (Some(_), false) => true,
                    (None, _) => false,
                }
        })
    };
    if iface.kind == "veth" {
        if let Some(h) = host.filter(|h| points_back(*h)) {
            return Some(h);
        }
        let candidates: Vec<usize> = (0..views.len())
            .filter(|t| *t != vi && !views[*t].host && points_back(*t))
            .collect();
        if let [one] = candidates.as_slice() {
            return Some(*one);
        }
    }
    // Ambiguous, or a parent (which has no pointer back): ask inside the namespace.
    let sock = inner_ids.entry(vi).or_insert_with(|| {
        handles[vi]
            .as_ref()
            .and_then(|h| NsidSocket::open_in(h).ok())
    });
    let sock = sock.as_mut()?;
    (0..views.len()).filter(|t| *t != vi).find(|t| {
        handles[*t]
            .as_ref()
            .and_then(|h| sock.nsid_of(h).ok().flatten())
            .is_some_and(|n| n == id)
    })
}
