//! What netloom's nftables ruleset should contain, as pure [`ir`] values.
//!
//! Layout (why: see README.md beside this file):
//! - `table inet netloom`: one table for IPv4 and IPv6, so one transaction covers both families
//!   and one `nft delete table` removes everything. Base chains dispatch through verdict maps
//!   keyed by bridge name to three small chains per network; published ports are elements of
//!   four DNAT maps keyed by `protocol . host address . host port` (ranges as one interval
//!   element). Adding a container therefore only adds map elements.
//! - `table bridge netloom`: the ICC switch and the MAC spoof check. Traffic between two
//!   containers of one bridge is switched at layer 2 and never reaches the inet forward hook
//!   (unless br_netfilter is loaded), so `enable_icc=false` has to be enforced where the bridge
//!   forwards frames: one rule per subnet of such a network (`meta ibrname` would key it by
//!   bridge, but kernels without CONFIG_NFT_BRIDGE_META refuse it, and these rules change only
//!   with networks). The spoof check (CNI `macspoofchk`) is one prerouting rule over two sets,
//!   created on first use (see [`spoof_chain`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::ir::*;
use super::{EndpointRules, NetworkRules};
use crate::error::{Error, Result};
use crate::model::{validate_ifname, Proto};

pub const TABLE: &str = "netloom";

/// Every netloom bridge (isolation drops traffic towards them).
pub const SET_BRIDGES: &str = "bridges";
/// Bridges of networks with `isolate`.
pub const SET_ISOLATED: &str = "isolated";
/// bridge → jump from-<net> (traffic leaving a network's bridge).
pub const MAP_FROM: &str = "from_net";
/// bridge → jump to-<net> (traffic entering a network's bridge from elsewhere).
pub const MAP_TO: &str = "to_net";
/// bridge (as input, then as output interface) → jump masq-<net>, in postrouting.
pub const MAP_MASQ: &str = "masq_net";
/// Ports with at least one publication on a specific host address, per family: `protocol .
/// port` markers that let a fresh process check a port published on every address with a few
/// lookups instead of reading every published port (see `NftFirewall::add_endpoint`). Shared by
/// all endpoints on that port, added idempotently, cleaned when found stale.
pub const SET_BOUND4: &str = "bound4";
pub const SET_BOUND6: &str = "bound6";

pub fn bound_set(family: IpFamily) -> &'static str {
    if family == IpFamily::V4 {
        SET_BOUND4
    } else {
        SET_BOUND6
    }
}

/// The markers an endpoint's DNAT elements need: one per port published on a specific address.
pub fn bound_markers(elems: &[(&'static str, Element)]) -> Vec<(&'static str, Element)> {
    let mut out: Vec<(&'static str, Element)> = Vec::new();
    for (map, e) in elems {
        let Some(m) = DnatMap::by_name(map) else {
            continue;
        };
        let Some(h) = Holding::of(m, e) else { continue };
        if h.addr_lo != h.addr_hi {
            continue;
        }
        for p in h.port_lo..=h.port_hi {
            let marker = Element {
                key: vec![Value::L4(h.proto), Value::Port(p)],
                key_end: None,
                data: None,
                comment: String::new(),
            };
            let set = bound_set(m.family);
            if !out.iter().any(|(s, x)| *s == set && *x == marker) {
                out.push((set, marker));
            }
        }
    }
    out
}

/// How a DNAT map is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnatKind {
    /// `protocol . host address . host port` → `address . port` (hash: O(1) to add or remove).
    Addr,
    /// `protocol . host port` → `address . port`, for ports published on every address.
    Any,
    /// `protocol . host address range . host port range` → `address`, the port kept: one
    /// interval element for a whole range (`8000-8100:8000-8100`).
    Range,
}

/// One of the DNAT maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DnatMap {
    pub name: &'static str,
    pub family: IpFamily,
    pub kind: DnatKind,
}

impl DnatMap {
    pub fn key(&self) -> Vec<Field> {
        let addr = if self.family == IpFamily::V4 {
            Field::Ipv4
        } else {
            Field::Ipv6
        };
        match self.kind {
            DnatKind::Any => vec![Field::L4Proto, Field::Port],
            _ => vec![Field::L4Proto, addr, Field::Port],
        }
    }

    pub fn value(&self) -> Vec<Field> {
        let addr = if self.family == IpFamily::V4 {
            Field::Ipv4
        } else {
            Field::Ipv6
        };
        match self.kind {
            DnatKind::Range => vec![addr],
            _ => vec![addr, Field::Port],
        }
    }

    pub fn interval(&self) -> bool {
        self.kind == DnatKind::Range
    }

    pub fn by_name(name: &str) -> Option<&'static DnatMap> {
        DNAT_MAPS.iter().find(|m| m.name == name)
    }

    fn pick(family: IpFamily, kind: DnatKind) -> &'static DnatMap {
        DNAT_MAPS
            .iter()
            .find(|m| m.family == family && m.kind == kind)
            .unwrap_or(&DNAT_MAPS[0])
    }
}

/// The DNAT maps. Single ports live in hash maps, because the kernel's set type for
/// concatenated ranges (pipapo) rebuilds its lookup tables on every change: adding one
/// container would cost more the more ports exist. Only real ranges go to the interval maps.
pub const DNAT_MAPS: [DnatMap; 6] = [
    DnatMap {
        name: "dnat4",
        family: IpFamily::V4,
        kind: DnatKind::Addr,
    },
    DnatMap {
        name: "dnat4_any",
        family: IpFamily::V4,
        kind: DnatKind::Any,
    },
    DnatMap {
        name: "dnat4_range",
        family: IpFamily::V4,
        kind: DnatKind::Range,
    },
    DnatMap {
        name: "dnat6",
        family: IpFamily::V6,
        kind: DnatKind::Addr,
    },
    DnatMap {
        name: "dnat6_any",
        family: IpFamily::V6,
        kind: DnatKind::Any,
    },
    DnatMap {
        name: "dnat6_range",
        family: IpFamily::V6,
        kind: DnatKind::Range,
    },
];

/// nft priorities (`raw`, `dstnat`, `filter`, `srcnat`; the bridge family's `filter` is -200).
pub const PRIO_RAW: i32 = -300;
pub const PRIO_DSTNAT: i32 = -100;
pub const PRIO_FILTER: i32 = 0;
pub const PRIO_SRCNAT: i32 = 100;
pub const PRIO_BRIDGE_FILTER: i32 = -200;

/// The bridge table's only chain.
pub const BRIDGE_CHAIN: &str = "forward";

/// Comments of rules a network owns inside a shared chain start with this.
pub fn network_rule_prefix(net: &str) -> String {
    format!("{} ", tag_network(net))
}

/// The ICC switch of one network, for the bridge table's forward chain: frames between two
/// addresses of the same subnet crossing the bridge are dropped when `icc` is off.
pub fn network_bridge_rules(n: &NetworkRules) -> Vec<Rule> {
    if n.icc {
        return Vec::new();
    }
    n.subnets
        .iter()
        .map(|s| {
            let fam = if s.is_ipv4() {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            let subnet = IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s);
            Rule::new(
                format!("{}icc-off {subnet}", network_rule_prefix(&n.network_id)),
                vec![
                    Expr::EtherType(fam),
                    Expr::Saddr(subnet),
                    Expr::Daddr(subnet),
                    Expr::Verdict(Verdict::Drop),
                ],
            )
        })
        .collect()
}

/// MAC spoof check (CNI `macspoofchk`), in the bridge table, made on first use so hosts without
/// such networks have no extra hook: bridge ports that are checked...
pub const SET_SPOOF_PORTS: &str = "spoofchk_ports";
/// ...and the one source MAC each of them may send (`port . mac`).
pub const SET_SPOOF_MACS: &str = "spoofchk_macs";
/// The base chain holding the single rule that drops the rest.
pub const SPOOF_CHAIN: &str = "spoofchk";
/// Before anything else of the bridge sees the frame (the reference plugin's priority).
pub const PRIO_BRIDGE_SPOOFCHK: i32 = -300;

/// The spoof check's sets (bridge table).
pub fn spoof_sets() -> Vec<Set> {
    vec![
        set(
            SET_SPOOF_PORTS,
            vec![Field::Ifname],
            None,
            false,
            "bridge ports whose source MAC is checked",
        ),
        set(
            SET_SPOOF_MACS,
            vec![Field::Ifname, Field::EtherAddr],
            None,
            false,
            "bridge port . the only source MAC it may send",
        ),
    ]
}

/// The spoof check's base chain: a frame entering by a checked port whose source MAC is not
/// that port's is dropped. One rule for every port: ports come and go as set elements.
pub fn spoof_chain() -> Chain {
    base(
        SPOOF_CHAIN,
        ChainType::Filter,
        Hook::Prerouting,
        PRIO_BRIDGE_SPOOFCHK,
        vec![rule(
            "macspoofchk",
            vec![
                Expr::IifnameIn(SET_SPOOF_PORTS.into()),
                Expr::IifnameEtherSaddrNotIn(SET_SPOOF_MACS.into()),
                Expr::Counter,
                Expr::Verdict(Verdict::Drop),
            ],
        )],
    )
}

/// One port's spoof check elements: (set, element), tagged with the endpoint's tag.
pub fn spoof_elements(sc: &super::SpoofCheck) -> Result<Vec<(&'static str, Element)>> {
    check_id("network id", &sc.network_id, false)?;
    check_id("endpoint owner", &sc.owner, true)?;
    validate_ifname(&sc.port)?;
    let tag = tag_endpoint(&sc.network_id, &sc.owner);
    let port = Value::Ifname(sc.port.clone());
    Ok(vec![
        (
            SET_SPOOF_PORTS,
            Element {
                key: vec![port.clone()],
                key_end: None,
                data: None,
                comment: tag.clone(),
            },
        ),
        (
            SET_SPOOF_MACS,
            Element {
                key: vec![port, Value::Mac(sc.mac)],
                key_end: None,
                data: None,
                comment: tag,
            },
        ),
    ])
}

/// Longest comment the kernel keeps for nft (libnftnl's NFTNL_UDATA_COMMENT_MAXLEN, with NUL).
const COMMENT_MAX: usize = 127;

pub fn chain_from(net: &str) -> String {
    format!("from-{net}")
}
pub fn chain_to(net: &str) -> String {
    format!("to-{net}")
}
pub fn chain_masq(net: &str) -> String {
    format!("masq-{net}")
}

/// The part of a network id that tags carry: all of it up to 48 characters (Docker's 64-hex
/// ids are unique long before that), so every tag fits the kernel's 127-byte comment limit
/// and a network's tags always start the same way.
pub fn net_part(net: &str) -> &str {
    // Ids are ASCII (checked by `validate_network`), so any byte index is a char boundary.
    &net[..net.len().min(48)]
}

/// The tag on every network-level element: `net=<id>`.
pub fn tag_network(net: &str) -> String {
    format!("net={}", net_part(net))
}

/// The tag on every endpoint element: `net=<id> ep=<owner>` (the owner cut at the comment limit).
pub fn tag_endpoint(net: &str, owner: &str) -> String {
    let mut t = format!("net={} ep={owner}", net_part(net));
    t.truncate(COMMENT_MAX);
    t
}

/// Reads a tag back: (network, owner).
pub fn parse_tag(comment: &str) -> Option<(String, Option<String>)> {
    let rest = comment.strip_prefix("net=")?;
    match rest.split_once(" ep=") {
        Some((n, o)) => Some((n.to_string(), Some(o.to_string()))),
        None => Some((rest.to_string(), None)),
    }
}

/// Who a tag names, for error messages.
pub fn describe_tag(comment: &str) -> String {
    match parse_tag(comment) {
        Some((net, Some(owner))) => format!("container {owner} (network {net})"),
        Some((net, None)) => format!("network {net}"),
        None if comment.is_empty() => "an untagged entry".to_string(),
        None => format!("{comment:?}"),
    }
}

/// Ids end up in chain names, comments and iptables-restore input: keep them to a charset that
/// is safe in all three.
fn check_id(what: &str, id: &str, allow_slash: bool) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'_' | b'.' | b'-')
                || (allow_slash && b == b'/')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{what} {id:?} cannot be used in firewall rules: use letters, digits, '_', '.' and '-'"
        )))
    }
}

pub fn validate_network(net: &NetworkRules) -> Result<()> {
    check_id("network id", &net.network_id, false)?;
    validate_ifname(&net.interface)?;
    // An interface name ends up quoted in rules; the kernel allows characters nft would not.
    if net
        .interface
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || !b.is_ascii_graphic())
    {
        return Err(Error::InvalidConfig(format!(
            "interface name {:?} cannot be used in firewall rules",
            net.interface
        )));
    }
    Ok(())
}

pub fn validate_endpoint(net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
    if ep.network_id != net.network_id {
        return Err(Error::InvalidConfig(format!(
            "endpoint {} belongs to network {}, not {}",
            ep.owner, ep.network_id, net.network_id
        )));
    }
    check_id("endpoint owner", &ep.owner, true)
}

fn rule(comment: &str, exprs: Vec<Expr>) -> Rule {
    Rule::new(comment, exprs)
}

fn base(name: &str, ty: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.to_string(),
        base: Some(BaseChain { ty, hook, priority }),
        rules,
    }
}

fn set(name: &str, key: Vec<Field>, data: Option<SetData>, interval: bool, comment: &str) -> Set {
    Set {
        name: name.to_string(),
        key,
        data,
        interval,
        comment: comment.to_string(),
        elements: Vec::new(),
    }
}

fn net(s: &str) -> IpNetwork {
    // Only called with the literals below.
    s.parse()
        .unwrap_or_else(|_| IpNetwork::V4(ipnetwork::Ipv4Network::from(Ipv4Addr::LOCALHOST)))
}

/// The tables with their base chains and (empty) sets: everything that does not depend on a
/// network. Programmed once; later operations only add chains for networks and elements.
pub fn skeleton() -> Vec<Table> {
    use Expr::*;
    let inet = Table {
        family: Family::Inet,
        name: TABLE.to_string(),
        sets: [
            set(
                SET_BRIDGES,
                vec![Field::Ifname],
                None,
                false,
                "bridges of netloom networks",
            ),
            set(
                SET_ISOLATED,
                vec![Field::Ifname],
                None,
                false,
                "bridges of isolated networks",
            ),
            set(
                MAP_FROM,
                vec![Field::Ifname],
                Some(SetData::Verdict),
                false,
                "bridge -> chain for traffic from it",
            ),
            set(
                MAP_TO,
                vec![Field::Ifname],
                Some(SetData::Verdict),
                false,
                "bridge -> chain for traffic to it",
            ),
            set(
                MAP_MASQ,
                vec![Field::Ifname],
                Some(SetData::Verdict),
                false,
                "bridge -> source NAT chain",
            ),
        ]
        .into_iter()
        .chain([SET_BOUND4, SET_BOUND6].map(|n| {
            set(
                n,
                vec![Field::L4Proto, Field::Port],
                None,
                false,
                "ports published on a specific address",
            )
        }))
        .chain(DNAT_MAPS.iter().map(|m| {
            let fam = if m.family == IpFamily::V4 {
                "IPv4"
            } else {
                "IPv6"
            };
            let what = match m.kind {
                DnatKind::Addr => {
                    format!("{fam} ports published on one address -> container address . port")
                }
                DnatKind::Any => {
                    format!("{fam} ports published on every address -> container address . port")
                }
                DnatKind::Range => format!("{fam} port ranges -> container address, same ports"),
            };
            set(
                m.name,
                m.key(),
                Some(SetData::Fields(m.value())),
                m.interval(),
                &what,
            )
        }))
        .collect(),
        chains: vec![
            base(
                "guard",
                ChainType::Filter,
                Hook::Prerouting,
                PRIO_RAW,
                vec![
                    // moby#45610: with route_localnet on a bridge, a LAN host could send to
                    // 127.0.0.1:<published port> and be DNATed to the container. Loopback
                    // destinations only ever legitimately arrive on lo.
                    rule(
                        "guard-localhost-v4",
                        vec![
                            Iifname(Cmp::Ne, "lo".into()),
                            Nfproto(IpFamily::V4),
                            Daddr(net("127.0.0.0/8")),
                            Verdict(self::Verdict::Drop),
                        ],
                    ),
                    rule(
                        "guard-localhost-v6",
                        vec![
                            Iifname(Cmp::Ne, "lo".into()),
                            Nfproto(IpFamily::V6),
                            Daddr(net("::1/128")),
                            Verdict(self::Verdict::Drop),
                        ],
                    ),
                ],
            ),
            base(
                "prerouting",
                ChainType::Nat,
                Hook::Prerouting,
                PRIO_DSTNAT,
                vec![rule(
                    "published-ports",
                    vec![
                        FibDaddrLocal,
                        Verdict(self::Verdict::Jump("publish".into())),
                    ],
                )],
            ),
            base(
                "output",
                ChainType::Nat,
                Hook::Output,
                PRIO_DSTNAT,
                vec![rule(
                    "published-ports",
                    vec![
                        FibDaddrLocal,
                        Verdict(self::Verdict::Jump("publish".into())),
                    ],
                )],
            ),
            Chain {
                name: "publish".into(),
                base: None,
                rules: DNAT_MAPS
                    .iter()
                    .map(|m| {
                        rule(
                            m.name,
                            vec![
                                Nfproto(m.family),
                                DnatMap {
                                    family: m.family,
                                    set: m.name.to_string(),
                                    with_addr: m.kind != DnatKind::Any,
                                    with_port: m.kind != DnatKind::Range,
                                },
                            ],
                        )
                    })
                    .collect(),
            },
            base(
                "postrouting",
                ChainType::Nat,
                Hook::Postrouting,
                PRIO_SRCNAT,
                vec![
                    // A port published on 127.0.0.1 is DNATed from lo to a bridge; the container
                    // would answer to its own loopback without this.
                    rule(
                        "localhost-published",
                        vec![
                            OifnameIn(SET_BRIDGES.into()),
                            Nfproto(IpFamily::V4),
                            Saddr(net("127.0.0.0/8")),
                            Masquerade,
                        ],
                    ),
                    rule(
                        "from-networks",
                        vec![Vmap(VmapKey::Iifname, MAP_MASQ.into())],
                    ),
                    rule("to-networks", vec![Vmap(VmapKey::Oifname, MAP_MASQ.into())]),
                ],
            ),
            base(
                "forward",
                ChainType::Filter,
                Hook::Forward,
                PRIO_FILTER,
                vec![
                    rule(
                        "established",
                        vec![CtEstablished, Verdict(self::Verdict::Accept)],
                    ),
                    rule(
                        "from-networks",
                        vec![Vmap(VmapKey::Iifname, MAP_FROM.into())],
                    ),
                    rule("to-networks", vec![Vmap(VmapKey::Oifname, MAP_TO.into())]),
                ],
            ),
        ],
    };
    let bridge = Table {
        family: Family::Bridge,
        name: TABLE.to_string(),
        sets: Vec::new(),
        // Holds only per-network rules (see [`network_bridge_rules`]).
        chains: vec![base(
            BRIDGE_CHAIN,
            ChainType::Filter,
            Hook::Forward,
            PRIO_BRIDGE_FILTER,
            Vec::new(),
        )],
    };
    vec![inet, bridge]
}

/// The three chains of one network (inet table).
pub fn network_chains(n: &NetworkRules) -> Vec<Chain> {
    use Expr::*;
    let br = n.interface.clone();
    // Connections to published ports (from this network back to itself, or to another
    // network's published port) are accepted before ICC and isolation, as Docker does.
    let mut from = vec![if n.internal {
        rule(
            "hairpin",
            vec![
                Oifname(Cmp::Eq, br.clone()),
                CtDnat,
                Verdict(self::Verdict::Accept),
            ],
        )
    } else {
        rule("published", vec![CtDnat, Verdict(self::Verdict::Accept)])
    }];
    from.push(rule(
        if n.icc { "icc accept" } else { "icc drop" },
        vec![
            Oifname(Cmp::Eq, br.clone()),
            Verdict(if n.icc {
                self::Verdict::Accept
            } else {
                self::Verdict::Drop
            }),
        ],
    ));
    if n.internal {
        from.push(rule("internal", vec![Verdict(self::Verdict::Drop)]));
    } else {
        // An isolated network reaches no other netloom network; any network stays away from
        // isolated ones (so isolation holds whichever side starts).
        let targets = if n.isolate { SET_BRIDGES } else { SET_ISOLATED };
        let comment = if n.isolate {
            "isolate from all networks"
        } else {
            "isolate from isolated networks"
        };
        from.push(rule(
            comment,
            vec![OifnameIn(targets.into()), Verdict(self::Verdict::Drop)],
        ));
        from.push(rule("outbound", vec![Verdict(self::Verdict::Accept)]));
    }
    let to = if n.internal {
        vec![rule("internal", vec![Verdict(self::Verdict::Drop)])]
    } else if n.open_inbound {
        vec![rule("routed", vec![Verdict(self::Verdict::Accept)])]
    } else {
        vec![
            rule("published", vec![CtDnat, Verdict(self::Verdict::Accept)]),
            // Like Docker's nat mode: containers are reached through published ports only.
            rule("unpublished", vec![Verdict(self::Verdict::Drop)]),
        ]
    };
    // Reached both by input interface (traffic from the network) and by output interface
    // (traffic to it). Hairpin: a container reaching a published port of its own network must
    // see the answer come from the gateway, not from its neighbour; matched by source subnet
    // and output bridge, because with br_netfilter the kernel bridges such DNATed frames and
    // postrouting sees no input interface.
    let mut masq = Vec::new();
    for s in &n.subnets {
        let fam = if s.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        let subnet = IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s);
        masq.push(rule(
            &format!("hairpin {subnet}"),
            vec![
                Oifname(Cmp::Eq, br.clone()),
                CtDnat,
                Nfproto(fam),
                Saddr(subnet),
                Masquerade,
            ],
        ));
    }
    if n.masquerade && !n.internal {
        for s in &n.subnets {
            let fam = if s.is_ipv4() {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            let subnet = IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s);
            masq.push(rule(
                &format!("masquerade {subnet}"),
                vec![
                    Oifname(Cmp::Ne, br.clone()),
                    Nfproto(fam),
                    Saddr(subnet),
                    Masquerade,
                ],
            ));
        }
    }
    vec![
        Chain {
            name: chain_from(&n.network_id),
            base: None,
            rules: from,
        },
        Chain {
            name: chain_to(&n.network_id),
            base: None,
            rules: to,
        },
        Chain {
            name: chain_masq(&n.network_id),
            base: None,
            rules: masq,
        },
    ]
}

/// A network-level element: (table family, set, element).
pub type NetElement = (Family, &'static str, Element);

/// The network-level elements (bridge membership and verdict-map entries).
pub fn network_elements(n: &NetworkRules) -> Vec<NetElement> {
    let tag = tag_network(&n.network_id);
    let br = || vec![Value::Ifname(n.interface.clone())];
    let plain = |set: &'static str| {
        (
            Family::Inet,
            set,
            Element {
                key: br(),
                key_end: None,
                data: None,
                comment: tag.clone(),
            },
        )
    };
    let jump = |set: &'static str, chain: String| {
        (
            Family::Inet,
            set,
            Element {
                key: br(),
                key_end: None,
                data: Some(ElemData::Verdict(Verdict::Jump(chain))),
                comment: tag.clone(),
            },
        )
    };
    let mut out = vec![plain(SET_BRIDGES)];
    if n.isolate {
        out.push(plain(SET_ISOLATED));
    }
    out.push(jump(MAP_FROM, chain_from(&n.network_id)));
    out.push(jump(MAP_TO, chain_to(&n.network_id)));
    out.push(jump(MAP_MASQ, chain_masq(&n.network_id)));
    out
}

/// The DNAT map elements of one endpoint: (map, element). Identity mappings (host port ==
/// container port), single or ranged, are ONE interval element of a `_keep` map; a shifted range
/// needs one element per port because nft's NAT cannot add an offset to the port.
pub fn endpoint_elements(
    n: &NetworkRules,
    ep: &EndpointRules,
) -> Result<Vec<(&'static str, Element)>> {
    validate_endpoint(n, ep)?;
    let tag = tag_endpoint(&n.network_id, &ep.owner);
    let v4 = ep.addresses.iter().find_map(|a| match a {
        IpAddr::V4(a) => Some(*a),
        _ => None,
    });
    let v6 = ep.addresses.iter().find_map(|a| match a {
        IpAddr::V6(a) => Some(*a),
        _ => None,
    });
    let mut out = Vec::new();
    for m in &ep.ports {
        if m.host_port == 0 || m.host_port_end < m.host_port || m.container_port == 0 {
            return Err(Error::InvalidConfig(format!(
                "port mapping {}-{}:{}/{} is invalid",
                m.host_port, m.host_port_end, m.container_port, m.proto
            )));
        }
        let span = m.host_port_end - m.host_port;
        if m.container_port.checked_add(span).is_none() {
            return Err(Error::InvalidConfig(format!(
                "port mapping {}-{}:{}/{}: the container range would pass port 65535",
                m.host_port, m.host_port_end, m.container_port, m.proto
            )));
        }
        // Which families to publish on, with the host address range of the key.
        let mut targets: Vec<(IpFamily, IpAddr, IpAddr, IpAddr)> = Vec::new();
        let mut want = |fam: IpFamily, lo: IpAddr, hi: IpAddr, required: bool| -> Result<()> {
            let dest = match fam {
                IpFamily::V4 => v4.map(IpAddr::V4),
                IpFamily::V6 => v6.map(IpAddr::V6),
            };
            match dest {
                Some(d) => targets.push((fam, lo, hi, d)),
                None if required => {
                    return Err(Error::InvalidConfig(format!(
                        "port {}/{} is published on {lo} but container {} has no {} address (netloom has no userland proxy to translate between families)",
                        m.host_port,
                        m.proto,
                        ep.owner,
                        if fam == IpFamily::V4 { "IPv4" } else { "IPv6" }
                    )))
                }
                None => {}
            }
            Ok(())
        };
        match m.host_ip {
            None => {
                want(IpFamily::V4, Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::BROADCAST.into(), false)?;
                want(IpFamily::V6, Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::from(u128::MAX).into(), false)?;
                if v4.is_none() && v6.is_none() {
                    return Err(Error::InvalidConfig(format!(
                        "container {} publishes port {}/{} but has no address",
                        ep.owner, m.host_port, m.proto
                    )));
                }
            }
            Some(IpAddr::V4(a)) if a.is_unspecified() => {
                want(IpFamily::V4, a.into(), Ipv4Addr::BROADCAST.into(), true)?
            }
            Some(IpAddr::V6(a)) if a.is_unspecified() => {
                want(IpFamily::V6, a.into(), Ipv6Addr::from(u128::MAX).into(), true)?
            }
            Some(IpAddr::V6(a)) if a.is_loopback() => {
                return Err(Error::Unsupported(format!(
                    "publishing on [::1] is not possible without a userland proxy: the kernel never routes ::1 off the host; publish on 127.0.0.1 or a host address (mapping {}/{})",
                    m.host_port, m.proto
                )))
            }
            Some(ip) => want(IpFamily::of(&ip), ip, ip, true)?,
        }
        for (fam, lo, hi, dest) in targets {
            let addr = |a: IpAddr| match a {
                IpAddr::V4(a) => Value::V4(a),
                IpAddr::V6(a) => Value::V6(a),
            };
            let key = |port: u16, a: IpAddr| vec![Value::L4(m.proto), addr(a), Value::Port(port)];
            let any = lo != hi;
            if m.container_port == m.host_port && m.host_port_end != m.host_port {
                out.push((
                    DnatMap::pick(fam, DnatKind::Range).name,
                    Element {
                        key: key(m.host_port, lo),
                        key_end: Some(key(m.host_port_end, hi)),
                        data: Some(ElemData::Values(vec![addr(dest)])),
                        comment: tag.clone(),
                    },
                ));
            } else {
                // Single ports, and shifted ranges port by port (nft's NAT cannot add an
                // offset to a port).
                let map = DnatMap::pick(fam, if any { DnatKind::Any } else { DnatKind::Addr });
                for i in 0..=span {
                    let p = m.host_port + i;
                    let k = if any {
                        vec![Value::L4(m.proto), Value::Port(p)]
                    } else {
                        key(p, lo)
                    };
                    out.push((
                        map.name,
                        Element {
                            key: k,
                            key_end: None,
                            data: Some(ElemData::Values(vec![
                                addr(dest),
                                Value::Port(m.container_port + i),
                            ])),
                            comment: tag.clone(),
                        },
                    ));
                }
            }
        }
    }
    // Two mappings of one endpoint must not claim the same host port either.
    for (i, (ma, a)) in out.iter().enumerate() {
        if let Some(ha) = DnatMap::by_name(ma).and_then(|m| Holding::of(m, a)) {
            for (mb, b) in &out[i + 1..] {
                if DnatMap::by_name(mb)
                    .and_then(|m| Holding::of(m, b))
                    .is_some_and(|hb| ha.overlaps(&hb))
                {
                    return Err(Error::InvalidConfig(format!(
                        "container {} publishes host port {} twice",
                        ep.owner,
                        ha.describe()
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// A claim on host ports, decoded from a DNAT element: protocol, host address range, port
/// range and the tag of whoever holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub proto: Proto,
    pub addr_lo: IpAddr,
    pub addr_hi: IpAddr,
    pub port_lo: u16,
    pub port_hi: u16,
    pub tag: String,
}

impl Holding {
    /// The claim an element of DNAT map `m` makes.
    pub fn of(m: &DnatMap, e: &Element) -> Option<Holding> {
        let end = e.key_end.as_ref().unwrap_or(&e.key);
        let ip = |v: &Value| match v {
            Value::V4(a) => Some(IpAddr::V4(*a)),
            Value::V6(a) => Some(IpAddr::V6(*a)),
            _ => None,
        };
        let (proto, addr_lo, addr_hi, port_lo, port_hi) = match (e.key.as_slice(), end.as_slice()) {
            ([Value::L4(p), a, Value::Port(lo)], [Value::L4(_), b, Value::Port(hi)]) => {
                (*p, ip(a)?, ip(b)?, *lo, *hi)
            }
            ([Value::L4(p), Value::Port(lo)], [Value::L4(_), Value::Port(hi)]) => {
                let (a, b): (IpAddr, IpAddr) = if m.family == IpFamily::V4 {
                    (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::BROADCAST.into())
                } else {
                    (
                        Ipv6Addr::UNSPECIFIED.into(),
                        Ipv6Addr::from(u128::MAX).into(),
                    )
                };
                (*p, a, b, *lo, *hi)
            }
            _ => return None,
        };
        Some(Holding {
            proto,
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
            tag: e.comment.clone(),
        })
    }

    pub fn overlaps(&self, o: &Holding) -> bool {
        self.proto == o.proto
            && self.addr_lo.is_ipv4() == o.addr_lo.is_ipv4()
            && self.addr_lo <= o.addr_hi
            && o.addr_lo <= self.addr_hi
            && self.port_lo <= o.port_hi
            && o.port_lo <= self.port_hi
    }

    /// `tcp 8080 on 10.0.0.1`, `udp 8000-8100 on every IPv4 address`.
    pub fn describe(&self) -> String {
        let ports = if self.port_lo == self.port_hi {
            self.port_lo.to_string()
        } else {
            format!("{}-{}", self.port_lo, self.port_hi)
        };
        let addr = if self.addr_lo == self.addr_hi {
            self.addr_lo.to_string()
        } else if self.addr_lo.is_ipv4() {
            "every IPv4 address".to_string()
        } else {
            "every IPv6 address".to_string()
        };
        format!("{} {ports} on {addr}", self.proto)
    }
}

/// Every host-port claim, indexed so that checking a single port costs the same with one or
/// thousands of published ports: single ports by (protocol, family, port), ranges in a list
/// (they are rare).
#[derive(Debug, Default, Clone)]
pub struct Claims {
    singles: std::collections::HashMap<(Proto, bool, u16), Vec<Holding>>,
    ranges: Vec<Holding>,
}

impl Claims {
    pub fn insert(&mut self, h: Holding) {
        if h.port_lo == h.port_hi {
            self.singles
                .entry((h.proto, h.addr_lo.is_ipv6(), h.port_lo))
                .or_default()
                .push(h);
        } else {
            self.ranges.push(h);
        }
    }

    pub fn remove(&mut self, h: &Holding) {
        let list = if h.port_lo == h.port_hi {
            match self
                .singles
                .get_mut(&(h.proto, h.addr_lo.is_ipv6(), h.port_lo))
            {
                Some(l) => l,
                None => return,
            }
        } else {
            &mut self.ranges
        };
        if let Some(i) = list.iter().position(|x| x == h) {
            list.swap_remove(i);
        }
    }

    /// Whether anyone publishes `port` on a specific address of this family.
    pub fn has_specific(&self, proto: Proto, v6: bool, port: u16) -> bool {
        let specific =
            |h: &Holding| h.addr_lo == h.addr_hi && h.proto == proto && h.addr_lo.is_ipv6() == v6;
        self.singles
            .get(&(proto, v6, port))
            .is_some_and(|v| v.iter().any(specific))
            || self
                .ranges
                .iter()
                .any(|h| specific(h) && h.port_lo <= port && port <= h.port_hi)
    }

    /// A claim by someone other than `tag` that overlaps `h`.
    pub fn conflict(&self, h: &Holding, tag: &str) -> Option<&Holding> {
        let other = |o: &&Holding| o.tag != tag && o.overlaps(h);
        if let Some(x) = self.ranges.iter().find(other) {
            return Some(x);
        }
        (h.port_lo..=h.port_hi).find_map(|p| {
            self.singles
                .get(&(h.proto, h.addr_lo.is_ipv6(), p))
                .and_then(|v| v.iter().find(other))
        })
    }
}

/// Decodes a DNAT map key read back from the kernel (the inverse of [`encode_values`] for
/// `proto . [addr .] port`, each field padded to 32 bits).
pub fn decode_dnat_key(m: &DnatMap, bytes: &[u8]) -> Option<Vec<Value>> {
    let alen = if m.family == IpFamily::V6 { 16 } else { 4 };
    let proto = Proto::from_number(*bytes.first()?)?;
    if m.kind == DnatKind::Any {
        if bytes.len() != 8 {
            return None;
        }
        return Some(vec![
            Value::L4(proto),
            Value::Port(u16::from_be_bytes([bytes[4], bytes[5]])),
        ]);
    }
    if bytes.len() != 8 + alen {
        return None;
    }
    let addr = decode_addr(m.family, &bytes[4..4 + alen])?;
    let p = 4 + alen;
    Some(vec![
        Value::L4(proto),
        addr,
        Value::Port(u16::from_be_bytes([bytes[p], bytes[p + 1]])),
    ])
}

fn decode_addr(family: IpFamily, b: &[u8]) -> Option<Value> {
    match family {
        IpFamily::V4 => Some(Value::V4(Ipv4Addr::new(
            *b.first()?,
            *b.get(1)?,
            *b.get(2)?,
            *b.get(3)?,
        ))),
        IpFamily::V6 => {
            let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(Value::V6(Ipv6Addr::from(o)))
        }
    }
}

/// Decodes a DNAT map value: `addr` (range maps) or `addr . port`.
pub fn decode_dnat_value(m: &DnatMap, bytes: &[u8]) -> Option<Vec<Value>> {
    let alen = if m.family == IpFamily::V6 { 16 } else { 4 };
    let with_port = m.kind != DnatKind::Range;
    if bytes.len() != if with_port { alen + 4 } else { alen } {
        return None;
    }
    let mut out = vec![decode_addr(m.family, &bytes[..alen])?];
    if with_port {
        out.push(Value::Port(u16::from_be_bytes([
            bytes[alen],
            bytes[alen + 1],
        ])));
    }
    Some(out)
}

/// The complete desired ruleset for these networks and endpoints (golden tests, reapply).
pub fn full(nets: &[NetworkRules], eps: &[EndpointRules]) -> Result<Vec<Table>> {
    let mut tables = skeleton();
    for n in nets {
        validate_network(n)?;
        for c in network_chains(n) {
            tables[0].chains.push(c);
        }
        if let Some(c) = tables[1].chains.iter_mut().find(|c| c.name == BRIDGE_CHAIN) {
            c.rules.extend(network_bridge_rules(n));
        }
        for (fam, set, e) in network_elements(n) {
            let t = if fam == Family::Inet {
                &mut tables[0]
            } else {
                &mut tables[1]
            };
            if let Some(s) = t.set_mut(set) {
                s.elements.push(e);
            }
        }
    }
    for ep in eps {
        let n = nets
            .iter()
            .find(|n| n.network_id == ep.network_id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "endpoint {} refers to unknown network {}",
                    ep.owner, ep.network_id
                ))
            })?;
        let elems = endpoint_elements(n, ep)?;
        for (set, e) in bound_markers(&elems).into_iter().chain(elems) {
            if let Some(s) = tables[0].set_mut(set) {
                if !s.elements.contains(&e) {
                    s.elements.push(e);
                }
            }
        }
    }
    Ok(tables)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::PortMapping;

    fn net(id: &str, br: &str) -> NetworkRules {
        NetworkRules {
            network_id: id.into(),
            interface: br.into(),
            subnets: vec![
                "10.88.0.0/24".parse().unwrap(),
                "fd00:88::/64".parse().unwrap(),
            ],
            masquerade: true,
            icc: true,
            internal: false,
            isolate: true,
            open_inbound: false,
        }
    }

    /// The golden case: a network with 2 endpoints and 3 mappings (a single port with a
    /// different container port, a range, a port bound to one host address).
    pub(crate) fn golden_case() -> (Vec<NetworkRules>, Vec<EndpointRules>) {
        let mut n = net("web", "nl-web0");
        n.icc = false;
        let e1 = EndpointRules {
            network_id: "web".into(),
            owner: "c1/eth0".into(),
            addresses: vec!["10.88.0.2".parse().unwrap(), "fd00:88::2".parse().unwrap()],
            ports: vec![
                PortMapping::new(Proto::Tcp, None, (8080, 8080), 80).unwrap(),
                PortMapping::new(Proto::Udp, None, (5000, 5010), 5000).unwrap(),
            ],
        };
        let e2 = EndpointRules {
            network_id: "web".into(),
            owner: "c2/eth0".into(),
            addresses: vec!["10.88.0.3".parse().unwrap()],
            ports: vec![PortMapping::new(
                Proto::Tcp,
                Some("127.0.0.1".parse().unwrap()),
                (9090, 9090),
                9090,
            )
            .unwrap()],
        };
        (vec![n], vec![e1, e2])
    }

    #[test]
    fn golden_two_endpoints_three_mappings() {
        let (nets, eps) = golden_case();
        let text: String = full(&nets, &eps)
            .unwrap()
            .iter()
            .map(|t| t.render())
            .collect::<Vec<_>>()
            .join("\n");
        crate::firewall::golden::check("nft_network_2eps_3maps.golden", &text);
    }

    #[test]
    fn ranges_are_one_element_and_shifted_ports_expand() {
        let n = net("a", "br-a");
        let mut ep = EndpointRules {
            network_id: "a".into(),
            owner: "c".into(),
            addresses: vec!["10.88.0.2".parse().unwrap()],
            ports: vec![PortMapping::new(Proto::Tcp, None, (10000, 10999), 10000).unwrap()],
        };
        let els = endpoint_elements(&n, &ep).unwrap();
        assert_eq!(els.len(), 1, "1000-port identity range is one element");
        ep.ports = vec![PortMapping::new(Proto::Tcp, None, (8000, 8002), 9000).unwrap()];
        let els = endpoint_elements(&n, &ep).unwrap();
        assert_eq!(els.len(), 3);
        assert_eq!(els[2].0, "dnat4_any");
        assert_eq!(
            els[2].1.data,
            Some(ElemData::Values(vec![
                Value::V4("10.88.0.2".parse().unwrap()),
                Value::Port(9002)
            ]))
        );
    }

    #[test]
    fn overlapping_claims() {
        let h = |p: Proto, lo: &str, hi: &str, a: u16, b: u16| Holding {
            proto: p,
            addr_lo: lo.parse().unwrap(),
            addr_hi: hi.parse().unwrap(),
            port_lo: a,
            port_hi: b,
            tag: String::new(),
        };
        let any = h(Proto::Tcp, "0.0.0.0", "255.255.255.255", 8080, 8080);
        assert!(any.overlaps(&h(Proto::Tcp, "127.0.0.1", "127.0.0.1", 8000, 8100)));
        assert!(!any.overlaps(&h(Proto::Udp, "127.0.0.1", "127.0.0.1", 8080, 8080)));
        assert!(!h(Proto::Tcp, "10.0.0.1", "10.0.0.1", 80, 80).overlaps(&h(
            Proto::Tcp,
            "10.0.0.2",
            "10.0.0.2",
            80,
            80
        )));
        assert!(!any.overlaps(&h(
            Proto::Tcp,
            "::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            8080,
            8080
        )));
    }

    #[test]
    fn bad_input_is_rejected() {
        let mut n = net("a b", "br0");
        assert!(validate_network(&n).is_err());
        n.network_id = "ok".into();
        n.interface = "way-too-long-bridge-name".into();
        assert!(validate_network(&n).is_err());
        let n = net("a", "br0");
        let ep = EndpointRules {
            network_id: "a".into(),
            owner: "c\"1".into(),
            addresses: vec![],
            ports: vec![],
        };
        assert!(endpoint_elements(&n, &ep).is_err());
        let ep = EndpointRules {
            network_id: "a".into(),
            owner: "c1".into(),
            addresses: vec!["10.0.0.2".parse().unwrap()],
            ports: vec![
                PortMapping::new(Proto::Tcp, Some("::1".parse().unwrap()), (80, 80), 80).unwrap(),
            ],
        };
        assert!(endpoint_elements(&n, &ep).is_err());
    }

    #[test]
    fn spoof_check_renders_like_nft() {
        let mut t = Table {
            family: Family::Bridge,
            name: TABLE.into(),
            sets: spoof_sets(),
            chains: vec![spoof_chain()],
        };
        let sc = crate::firewall::SpoofCheck {
            network_id: "n1".into(),
            owner: "c1/eth0".into(),
            port: "nl0123456789a".into(),
            mac: [0x02, 0, 0, 0, 0, 0x0a],
        };
        for (set, e) in spoof_elements(&sc).unwrap() {
            t.set_mut(set).unwrap().elements.push(e);
        }
        let text = t.render();
        assert!(
            text.contains("iifname @spoofchk_ports iifname . ether saddr != @spoofchk_macs counter drop comment \"macspoofchk\""),
            "{text}"
        );
        assert!(
            text.contains("\"nl0123456789a\" . 02:00:00:00:00:0a comment \"net=n1 ep=c1/eth0\""),
            "{text}"
        );
        assert_eq!(fields_len(&[Field::Ifname, Field::EtherAddr]), 24);
        let bad = crate::firewall::SpoofCheck {
            port: "no such port name".into(),
            ..sc
        };
        assert!(spoof_elements(&bad).is_err());
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(
            parse_tag(&tag_endpoint("n1", "c1/eth0")),
            Some(("n1".into(), Some("c1/eth0".into())))
        );
        let long = "a".repeat(64);
        let t = tag_endpoint(&long, &format!("{long}/eth0"));
        assert!(t.len() <= 127);
        // Teardown finds a network's endpoint entries by this prefix, whatever the id lengths.
        assert!(t.starts_with(&format!("{}ep=", network_rule_prefix(&long))));
    }
}
