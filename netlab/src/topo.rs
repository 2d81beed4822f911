//! The host's topology as a graph: namespaces holding interfaces, joined by veth pairs, bridge
//! ports and parent links (macvlan, ipvlan, vlan, vxlan). Rendered as text, Graphviz DOT or JSON.

use std::collections::BTreeSet;
use std::fmt::Write;

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::inventory::{Inventory, NsView};
use crate::render::clamp;

/// One end of an edge: an interface in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct End {
    pub netns: String,
    pub ifname: String,
}

/// An edge of the graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Edge {
    /// The two ends of a veth pair.
    Veth { a: End, b: End },
    /// `port` is enslaved to `bridge` (or another master) in the same namespace.
    Master { port: End, bridge: End },
    /// `child` (macvlan, ipvlan, vlan, vxlan) sits on `parent`.
    Parent { child: End, parent: End },
}

/// A node: an interface.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub ifname: String,
    pub kind: String,
    pub up: bool,
    pub mtu: u32,
    pub addresses: Vec<IpNetwork>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NsNode {
    pub netns: String,
    pub host: bool,
    pub interfaces: Vec<Node>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub namespaces: Vec<NsNode>,
    pub edges: Vec<Edge>,
}

/// Whether a namespace is worth drawing: the host always, others when they have more than
/// loopback (every process namespace of a desktop would otherwise clutter the picture).
fn interesting(ns: &NsView) -> bool {
    ns.host || ns.interfaces.iter().any(|i| i.name != "lo")
}

pub fn build(inv: &Inventory) -> Topology {
    let mut namespaces = Vec::new();
    let mut edges = BTreeSet::new();
    for ns in inv.namespaces.iter().filter(|n| interesting(n)) {
        namespaces.push(NsNode {
            netns: ns.label.clone(),
            host: ns.host,
            interfaces: ns
                .interfaces
                .iter()
                .filter(|i| i.name != "lo")
                .map(|i| Node {
                    ifname: i.name.clone(),
                    kind: i.kind.clone(),
                    up: i.up,
                    mtu: i.mtu,
                    addresses: i.addresses.clone(),
                })
                .collect(),
        });
        for i in &ns.interfaces {
            let me = End {
                netns: ns.label.clone(),
                ifname: i.name.clone(),
            };
            if let Some(m) = &i.master {
                edges.insert(Edge::Master {
                    port: me.clone(),
                    bridge: End {
                        netns: ns.label.clone(),
                        ifname: m.clone(),
                    },
                });
            }
            let Some(p) = &i.peer else { continue };
            let other = End {
                netns: p.netns.clone(),
                ifname: p.ifname.clone().unwrap_or_else(|| format!("#{}", p.index)),
            };
            if i.kind == "veth" {
                // Each pair is seen from both ends; keep one, in a stable order.
                let (a, b) = if me <= other {
                    (me, other)
                } else {
                    (other, me)
                };
                edges.insert(Edge::Veth { a, b });
            } else {
                edges.insert(Edge::Parent {
                    child: me,
                    parent: other,
                });
            }
        }
    }
    Topology {
        namespaces,
        edges: edges.into_iter().collect(),
    }
}

fn addrs(n: &Node) -> String {
    n.addresses
        .iter()
        .filter(|a| !matches!(a, IpNetwork::V6(v) if (v.ip().segments()[0] & 0xffc0) == 0xfe80))
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Text: per namespace its interfaces, bridges with their ports, and where each veth leads.
pub fn text(t: &Topology) -> String {
    let mut out = String::new();
    for ns in &t.namespaces {
        let _ = writeln!(out, "{}{}", ns.netns, if ns.host { " (host)" } else { "" });
        let ports_of = |br: &str| -> Vec<&End> {
            t.edges
                .iter()
                .filter_map(|e| match e {
                    Edge::Master { port, bridge }
                        if bridge.netns == ns.netns && bridge.ifname == br =>
                    {
                        Some(port)
                    }
                    _ => None,
                })
                .collect()
        };
        let is_port = |name: &str| {
            t.edges.iter().any(|e| {
                matches!(e, Edge::Master { port, .. }
                if port.netns == ns.netns && port.ifname == name)
            })
        };
        for n in ns.interfaces.iter().filter(|n| !is_port(&n.ifname)) {
            let _ = writeln!(out, "  {}", describe(t, ns, n));
            let ports = ports_of(&n.ifname);
            for (k, p) in ports.iter().enumerate() {
                let branch = if k + 1 == ports.len() {
                    "└─"
                } else {
                    "├─"
                };
                let node = ns.interfaces.iter().find(|x| x.ifname == p.ifname);
                let d = node
                    .map(|x| describe(t, ns, x))
                    .unwrap_or_else(|| p.ifname.clone());
                let _ = writeln!(out, "    {branch} {d}");
            }
        }
    }
    clamp(&out)
}

fn describe(t: &Topology, ns: &NsNode, n: &Node) -> String {
    let mut s = format!("{} {} mtu {}", n.kind, n.ifname, n.mtu);
    if !n.up {
        s.push_str(" DOWN");
    }
    let a = addrs(n);
    if !a.is_empty() {
        let _ = write!(s, " {a}");
    }
    let me = End {
        netns: ns.netns.clone(),
        ifname: n.ifname.clone(),
    };
    for e in &t.edges {
        match e {
            Edge::Veth { a, b } if *a == me || *b == me => {
                let other = if *a == me { b } else { a };
                let far = t
                    .namespaces
                    .iter()
                    .find(|x| x.netns == other.netns)
                    .and_then(|x| x.interfaces.iter().find(|i| i.ifname == other.ifname))
                    .map(addrs)
                    .filter(|s| !s.is_empty())
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                let _ = write!(s, " <-> {}:{}{far}", other.netns, other.ifname);
            }
            Edge::Parent { child, parent } if *child == me => {
                let _ = write!(s, " on {}:{}", parent.netns, parent.ifname);
            }
            _ => {}
        }
    }
    s
}

fn dot_id(e: &End) -> String {
    format!("\"{}:{}\"", esc(&e.netns), esc(&e.ifname))
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT: a cluster per namespace, veth pairs as solid lines, bridge ports dashed,
/// parents dotted. `dot -Tsvg` renders it.
pub fn dot(t: &Topology) -> String {
    let mut out = String::from(
        "graph netlab {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"monospace\"];\n",
    );
    for (k, ns) in t.namespaces.iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{k} {{");
        let style = if ns.host { "filled" } else { "solid" };
        let _ = writeln!(
            out,
            "    label=\"{}\"; style={style}; color=\"#888888\"; fillcolor=\"#f4f4f4\";",
            esc(&ns.netns)
        );
        for n in &ns.interfaces {
            let id = dot_id(&End {
                netns: ns.netns.clone(),
                ifname: n.ifname.clone(),
            });
            let a = addrs(n);
            let label = if a.is_empty() {
                format!("{}\\n{}", esc(&n.ifname), n.kind)
            } else {
                format!(
                    "{}\\n{}\\n{}",
                    esc(&n.ifname),
                    n.kind,
                    a.replace(',', "\\n")
                )
            };
            let shape = if n.kind == "bridge" {
                ", shape=component"
            } else {
                ""
            };
            let color = if n.up { "" } else { ", color=red" };
            let _ = writeln!(out, "    {id} [label=\"{label}\"{shape}{color}];");
        }
        out.push_str("  }\n");
    }
    for e in &t.edges {
        let _ = match e {
            Edge::Veth { a, b } => {
                writeln!(out, "  {} -- {} [label=\"veth\"];", dot_id(a), dot_id(b))
            }
            Edge::Master { port, bridge } => {
                writeln!(
                    out,
                    "  {} -- {} [style=dashed];",
                    dot_id(port),
                    dot_id(bridge)
                )
            }
            Edge::Parent { child, parent } => {
                writeln!(
                    out,
                    "  {} -- {} [style=dotted, label=\"parent\"];",
                    dot_id(child),
                    dot_id(parent)
                )
            }
        };
    }
    out.push_str("}\n");
    out
}
