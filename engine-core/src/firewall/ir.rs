//! A small, pure description of an nftables ruleset: tables, chains, rules, sets, elements.
//!
//! Rule construction never talks to the kernel directly: [`super::plan`] builds these values,
//! the nftables backend lowers them to libnftnl objects, and [`Table::render`] prints them in a
//! stable, `nft list`-like text form. The text form is what the golden tests compare, so a change
//! in what netloom programs shows up as a readable diff without root.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::model::Proto;

/// nftables address families netloom uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 and IPv6 in one table.
    Inet,
    /// Layer-2 frames crossing a bridge.
    Bridge,
    Ip,
    Ip6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The NFPROTO_* number.
    pub fn nfproto(self) -> u16 {
        match self {
            Family::Inet => libc::NFPROTO_INET as u16,
            Family::Bridge => libc::NFPROTO_BRIDGE as u16,
            Family::Ip => libc::NFPROTO_IPV4 as u16,
            Family::Ip6 => libc::NFPROTO_IPV6 as u16,
        }
    }

    pub fn from_nfproto(n: u32) -> Option<Family> {
        match n as i32 {
            libc::NFPROTO_INET => Some(Family::Inet),
            libc::NFPROTO_BRIDGE => Some(Family::Bridge),
            libc::NFPROTO_IPV4 => Some(Family::Ip),
            libc::NFPROTO_IPV6 => Some(Family::Ip6),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Netfilter hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    /// NF_INET_* (the bridge family uses the same numbers for these five).
    pub fn number(self) -> u32 {
        match self {
            Hook::Prerouting => libc::NF_INET_PRE_ROUTING as u32,
            Hook::Input => libc::NF_INET_LOCAL_IN as u32,
            Hook::Forward => libc::NF_INET_FORWARD as u32,
            Hook::Output => libc::NF_INET_LOCAL_OUT as u32,
            Hook::Postrouting => libc::NF_INET_POST_ROUTING as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// What makes a chain a base chain. The policy is always accept: netloom only ever drops with
/// explicit rules, so a half-programmed table can never blackhole another tool's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub ty: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// One rule. The comment is also the rule's identity when checking for drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub comment: String,
}

impl Rule {
    pub fn new(comment: impl Into<String>, exprs: Vec<Expr>) -> Rule {
        Rule {
            exprs,
            comment: comment.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// Verdicts, in rules and in verdict-map elements.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
        }
    }
}

/// What a verdict map is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmapKey {
    Iifname,
    Oifname,
}

/// The statements and matches netloom's rules are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Iifname(Cmp, String),
    Oifname(Cmp, String),
    /// `iifname @set`
    IifnameIn(String),
    /// `iifname . ether saddr != @set`: the frame's (input port, source MAC) pair is not one
    /// of the set's (the MAC spoof check).
    IifnameEtherSaddrNotIn(String),
    /// `oifname @set`
    OifnameIn(String),
    /// `meta nfproto ipv4|ipv6`, the dependency of every address match in an inet table.
    Nfproto(IpFamily),
    /// `meta protocol ip|ip6` (the ethertype), the same dependency in the bridge family.
    EtherType(IpFamily),
    Saddr(IpNetwork),
    Daddr(IpNetwork),
    /// `ct state established,related`
    CtEstablished,
    /// `ct status dnat`: the connection was destination-NATed (a published port).
    CtDnat,
    /// `fib daddr type local`: the packet is for one of this host's addresses.
    FibDaddrLocal,
    Counter,
    Verdict(Verdict),
    /// `iifname vmap @set` / `oifname vmap @set`
    Vmap(VmapKey, String),
    /// `dnat ip to meta l4proto . ip daddr . th dport map @set`; without `with_addr` the key is
    /// `meta l4proto . th dport`; `with_port` = the map's value is `address . port`, else only
    /// the address (the port is kept, for ranges).
    DnatMap {
        family: IpFamily,
        set: String,
        with_addr: bool,
        with_port: bool,
    },
    Masquerade,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ipkw = |fam: IpFamily| if fam == IpFamily::V4 { "ip" } else { "ip6" };
        let netkw = |n: &IpNetwork| if n.is_ipv4() { "ip" } else { "ip6" };
        match self {
            Expr::Iifname(Cmp::Eq, n) => write!(f, "iifname {n:?}"),
            Expr::Iifname(Cmp::Ne, n) => write!(f, "iifname != {n:?}"),
            Expr::Oifname(Cmp::Eq, n) => write!(f, "oifname {n:?}"),
            Expr::Oifname(Cmp::Ne, n) => write!(f, "oifname != {n:?}"),
            Expr::IifnameIn(s) => write!(f, "iifname @{s}"),
            Expr::IifnameEtherSaddrNotIn(s) => write!(f, "iifname . ether saddr != @{s}"),
            Expr::OifnameIn(s) => write!(f, "oifname @{s}"),
            Expr::Nfproto(IpFamily::V4) => f.write_str("meta nfproto ipv4"),
            Expr::Nfproto(IpFamily::V6) => f.write_str("meta nfproto ipv6"),
            Expr::EtherType(IpFamily::V4) => f.write_str("meta protocol ip"),
            Expr::EtherType(IpFamily::V6) => f.write_str("meta protocol ip6"),
            Expr::Saddr(n) => write!(f, "{} saddr {}", netkw(n), fmt_net(n)),
            Expr::Daddr(n) => write!(f, "{} daddr {}", netkw(n), fmt_net(n)),
            Expr::CtEstablished => f.write_str("ct state established,related"),
            Expr::CtDnat => f.write_str("ct status dnat"),
            Expr::FibDaddrLocal => f.write_str("fib daddr type local"),
            Expr::Counter => f.write_str("counter"),
            Expr::Verdict(v) => write!(f, "{v}"),
            Expr::Vmap(VmapKey::Iifname, s) => write!(f, "iifname vmap @{s}"),
            Expr::Vmap(VmapKey::Oifname, s) => write!(f, "oifname vmap @{s}"),
            Expr::DnatMap {
                family,
                set,
                with_addr,
                ..
            } => {
                let kw = ipkw(*family);
                if *with_addr {
                    write!(
                        f,
                        "dnat {kw} to meta l4proto . {kw} daddr . th dport map @{set}"
                    )
                } else {
                    write!(f, "dnat {kw} to meta l4proto . th dport map @{set}")
                }
            }
            Expr::Masquerade => f.write_str("masquerade"),
        }
    }
}

/// A network printed the way nft does: a host route without its /32 or /128.
fn fmt_net(n: &IpNetwork) -> String {
    if n.prefix() == if n.is_ipv4() { 32 } else { 128 } {
        n.ip().to_string()
    } else {
        format!("{}/{}", n.network(), n.prefix())
    }
}

/// The key and value field types of sets and maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Ifname,
    EtherAddr,
    Ipv4,
    Ipv6,
    L4Proto,
    Port,
}

impl Field {
    /// Bytes the field occupies on its own.
    pub fn size(self) -> usize {
        match self {
            Field::Ifname => 16,
            Field::EtherAddr => 6,
            Field::Ipv4 => 4,
            Field::Ipv6 => 16,
            Field::L4Proto => 1,
            Field::Port => 2,
        }
    }

    /// nft's datatype number, so `nft list` prints the values as addresses, ports, names.
    pub fn nft_type(self) -> u32 {
        match self {
            Field::Ifname => 41,
            Field::EtherAddr => 9,
            Field::Ipv4 => 7,
            Field::Ipv6 => 8,
            Field::L4Proto => 12,
            Field::Port => 13,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Field::Ifname => "ifname",
            Field::EtherAddr => "ether_addr",
            Field::Ipv4 => "ipv4_addr",
            Field::Ipv6 => "ipv6_addr",
            Field::L4Proto => "inet_proto",
            Field::Port => "inet_service",
        }
    }
}

/// Bytes a list of fields takes in registers and set keys: alone, a field keeps its size;
/// concatenated, each field is padded to 32 bits.
pub fn fields_len(fields: &[Field]) -> usize {
    if fields.len() == 1 {
        fields[0].size()
    } else {
        fields.iter().map(|f| f.size().div_ceil(4) * 4).sum()
    }
}

/// nft's type number of a concatenation (each component shifted in by 6 bits).
pub fn fields_type(fields: &[Field]) -> u32 {
    fields.iter().fold(0, |acc, f| (acc << 6) | f.nft_type())
}

fn fields_name(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(" . ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetData {
    Verdict,
    Fields(Vec<Field>),
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: Vec<Field>,
    pub data: Option<SetData>,
    /// Elements are ranges (`flags interval`); needed for port ranges and "any address".
    pub interval: bool,
    pub comment: String,
    /// Elements, in the full desired-state view (empty in the skeleton).
    pub elements: Vec<Element>,
}

/// One value of a set key or map value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Ifname(String),
    Mac([u8; 6]),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    L4(Proto),
    Port(u16),
}

impl Value {
    /// The value's bytes as the kernel compares them (network byte order, names NUL-padded).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Ifname(n) => {
                let mut b = n.as_bytes().to_vec();
                b.resize(16, 0);
                b
            }
            Value::Mac(m) => m.to_vec(),
            Value::V4(a) => a.octets().to_vec(),
            Value::V6(a) => a.octets().to_vec(),
            Value::L4(p) => vec![p.number()],
            Value::Port(p) => p.to_be_bytes().to_vec(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Ifname(n) => write!(f, "{n:?}"),
            Value::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Value::V4(a) => write!(f, "{a}"),
            Value::V6(a) => write!(f, "{a}"),
            Value::L4(p) => write!(f, "{p}"),
            Value::Port(p) => write!(f, "{p}"),
        }
    }
}

/// Encodes values as a set key: one field alone keeps its size, concatenated fields are padded
/// to 32 bits each (how nft lays out concatenations in registers).
pub fn encode_values(values: &[Value]) -> Vec<u8> {
    if values.len() == 1 {
        return values[0].bytes();
    }
    let mut out = Vec::new();
    for v in values {
        let mut b = v.bytes();
        b.resize(b.len().div_ceil(4) * 4, 0);
        out.extend(b);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ElemData {
    Verdict(Verdict),
    Values(Vec<Value>),
}

/// A set or map element. `key_end` is the inclusive end of a range (interval sets only; None
/// there means a single value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    pub key: Vec<Value>,
    pub key_end: Option<Vec<Value>>,
    pub data: Option<ElemData>,
    pub comment: String,
}

impl Element {
    /// The key as nft prints it: `tcp . 0.0.0.0-255.255.255.255 . 8000-8100`.
    pub fn key_text(&self) -> String {
        match &self.key_end {
            None => self
                .key
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" . "),
            Some(end) => self
                .key
                .iter()
                .zip(end)
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" . "),
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key_text())?;
        if !self.comment.is_empty() {
            write!(f, " comment {:?}", self.comment)?;
        }
        match &self.data {
            None => Ok(()),
            Some(ElemData::Verdict(v)) => write!(f, " : {v}"),
            Some(ElemData::Values(vs)) => {
                write!(
                    f,
                    " : {}",
                    vs.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(" . ")
                )
            }
        }
    }
}

/// A table netloom owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn set_mut(&mut self, name: &str) -> Option<&mut Set> {
        self.sets.iter_mut().find(|s| s.name == name)
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The stable text form (close to `nft list table`; elements sorted so the output does not
    /// depend on insertion order).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "table {} {} {{", self.family, self.name);
        for s in &self.sets {
            let kind = if s.data.is_some() { "map" } else { "set" };
            let _ = writeln!(out, "\t{kind} {} {{", s.name);
            let data = match &s.data {
                None => String::new(),
                Some(SetData::Verdict) => " : verdict".to_string(),
                Some(SetData::Fields(f)) => format!(" : {}", fields_name(f)),
            };
            let _ = writeln!(out, "\t\ttype {}{data}", fields_name(&s.key));
            if s.interval {
                let _ = writeln!(out, "\t\tflags interval");
            }
            if !s.comment.is_empty() {
                let _ = writeln!(out, "\t\tcomment {:?}", s.comment);
            }
            if !s.elements.is_empty() {
                let mut elems: Vec<String> = s.elements.iter().map(|e| e.to_string()).collect();
                elems.sort();
                let _ = writeln!(out, "\t\telements = {{");
                for e in elems {
                    let _ = writeln!(out, "\t\t\t{e},");
                }
                let _ = writeln!(out, "\t\t}}");
            }
            let _ = writeln!(out, "\t}}");
        }
        for c in &self.chains {
            let _ = writeln!(out, "\tchain {} {{", c.name);
            if let Some(b) = &c.base {
                let _ = writeln!(
                    out,
                    "\t\ttype {} hook {} priority {}; policy accept;",
                    b.ty.name(),
                    b.hook.name(),
                    b.priority
                );
            }
            for r in &c.rules {
                let _ = writeln!(out, "\t\t{}", render_rule(r));
            }
            let _ = writeln!(out, "\t}}");
        }
        out.push_str("}\n");
        out
    }
}

pub fn render_rule(r: &Rule) -> String {
    let mut s = r
        .exprs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    if !r.comment.is_empty() {
        let _ = write!(s, " comment {:?}", r.comment);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenations_are_padded_and_typed_like_nft() {
        let key = [Field::L4Proto, Field::Ipv4, Field::Port];
        assert_eq!(fields_len(&key), 12);
        assert_eq!(fields_type(&key), (12 << 12) | (7 << 6) | 13);
        assert_eq!(fields_len(&[Field::Ifname]), 16);
        let b = encode_values(&[
            Value::L4(Proto::Tcp),
            Value::V4(Ipv4Addr::new(10, 0, 0, 2)),
            Value::Port(8000),
        ]);
        assert_eq!(b, vec![6, 0, 0, 0, 10, 0, 0, 2, 0x1f, 0x40, 0, 0]);
    }

    #[test]
    fn element_text_shows_ranges() {
        let e = Element {
            key: vec![
                Value::L4(Proto::Udp),
                Value::V4(Ipv4Addr::UNSPECIFIED),
                Value::Port(53),
            ],
            key_end: Some(vec![
                Value::L4(Proto::Udp),
                Value::V4(Ipv4Addr::BROADCAST),
                Value::Port(54),
            ]),
            data: Some(ElemData::Values(vec![Value::V4(Ipv4Addr::new(
                10, 0, 0, 2,
            ))])),
            comment: "x".into(),
        };
        assert_eq!(
            e.to_string(),
            "udp . 0.0.0.0-255.255.255.255 . 53-54 comment \"x\" : 10.0.0.2"
        );
    }
}
