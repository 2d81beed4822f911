//! A namespace's nftables ruleset as `probe`, `trace` and `doctor` need it: base chains with
//! their hook and policy, rules with their counters, verdicts and NAT statements, and a small
//! matcher that says whether a rule applies to a given packet.
//!
//! The ruleset is read with `nft -j list ruleset` started inside the namespace (read-only, the
//! same reader `doctor` uses on the host); engine-core's nft wire layer only reads the parts of
//! the ruleset netloom itself wrote, without expressions or counters.

use std::net::IpAddr;

use engine_core::netns::Netns;
use ipnetwork::IpNetwork;
use serde_json::Value;

/// One chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// `filter`, `nat`, `route` for base chains.
    pub kind: Option<String>,
    pub hook: Option<String>,
    pub prio: i64,
    pub policy: Option<String>,
}

impl Chain {
    /// `table inet filter chain forward`.
    pub fn name_text(&self) -> String {
        format!("table {} {} chain {}", self.family, self.table, self.name)
    }
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub expr: Vec<Value>,
    /// (packets, bytes) when the rule has a `counter`.
    pub counter: Option<(u64, u64)>,
}

impl Rule {
    /// `table inet filter chain forward handle 4: ip daddr 10.1.0.3 counter drop`.
    pub fn describe(&self) -> String {
        format!(
            "table {} {} chain {} handle {}: {}",
            self.family,
            self.table,
            self.chain,
            self.handle,
            self.text()
        )
    }

    /// The rule in nft's own syntax (counters left out), as far as netlab can render it.
    pub fn text(&self) -> String {
        self.expr
            .iter()
            .filter(|e| e.get("counter").is_none())
            .map(render_stmt)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The statement that decides the packet's fate: `accept`, `drop`, `reject`, `jump X`,
    /// `goto X`, `return`, `masquerade`, `snat`, `dnat`, `redirect`.
    pub fn verdict(&self) -> Option<(String, Option<String>)> {
        self.expr.iter().rev().find_map(|e| {
            let (k, v) = e.as_object()?.iter().next()?;
            match k.as_str() {
                "accept" | "drop" | "reject" | "return" | "masquerade" | "snat" | "dnat"
                | "redirect" => Some((k.clone(), None)),
                "jump" | "goto" => Some((k.clone(), v["target"].as_str().map(str::to_string))),
                _ => None,
            }
        })
    }

    /// Whether the rule drops or rejects what it matches.
    pub fn drops(&self) -> bool {
        matches!(self.verdict(), Some((v, _)) if v == "drop" || v == "reject")
    }

    /// For a `dnat` rule: the new destination address and port.
    pub fn dnat_to(&self) -> Option<(IpAddr, Option<u16>)> {
        let d = self.expr.iter().find_map(|e| e.get("dnat"))?;
        let addr = d["addr"].as_str()?.parse().ok()?;
        let port = d["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        Some((addr, port))
    }
}

/// A namespace's ruleset.
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

/// The packet a matcher is asked about.
#[derive(Debug, Clone, Default)]
pub struct Pkt {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// `icmp`, `tcp`, `udp` (ICMPv6 is `icmpv6`).
    pub proto: Option<String>,
    pub dport: Option<u16>,
    pub iif: Option<String>,
    pub oif: Option<String>,
}

/// Whether a rule applies: `Maybe` when it tests something netlab does not model (marks, ct
/// state…), which the callers report as "may".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Yes,
    Maybe,
    No,
}

impl Ruleset {
    /// Reads the ruleset of `ns` (`None`: the caller's namespace). An absent `nft` binary or
    /// an empty ruleset is an empty [`Ruleset`].
    pub fn read(ns: Option<&Netns>) -> Result<Ruleset, String> {
        let mut cmd = std::process::Command::new("nft");
        cmd.args(["-j", "list", "ruleset"])
            .stdin(std::process::Stdio::null());
        if let Some(ns) = ns {
            ns.command(&mut cmd).map_err(|e| e.to_string())?;
        }
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ruleset::default()),
            Err(e) => return Err(format!("run nft: {e}")),
        };
        if !out.status.success() {
            return Err(format!(
                "nft -j list ruleset: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Ruleset::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Parses `nft -j list ruleset` output.
    pub fn parse(text: &str) -> Ruleset {
        let mut r = Ruleset::default();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return r;
        };
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(c) = item.get("chain") {
                r.chains.push(Chain {
                    family: s(&c["family"]),
                    table: s(&c["table"]),
                    name: s(&c["name"]),
                    kind: c["type"].as_str().map(str::to_string),
                    hook: c["hook"].as_str().map(str::to_string),
                    prio: c["prio"].as_i64().unwrap_or(0),
                    policy: c["policy"].as_str().map(str::to_string),
                });
            } else if let Some(rule) = item.get("rule") {
                let expr = rule["expr"].as_array().cloned().unwrap_or_default();
                let counter = expr.iter().find_map(|e| {
                    let c = e.get("counter")?;
                    Some((c["packets"].as_u64()?, c["bytes"].as_u64()?))
                });
                r.rules.push(Rule {
                    family: s(&rule["family"]),
                    table: s(&rule["table"]),
                    chain: s(&rule["chain"]),
                    handle: rule["handle"].as_u64().unwrap_or(0),
                    expr,
                    counter,
                });
            }
        }
        r
    }

    pub fn chain_rules<'a>(&'a self, c: &Chain) -> impl Iterator<Item = &'a Rule> + 'a {
        let (f, t, n) = (c.family.clone(), c.table.clone(), c.name.clone());
        self.rules
            .iter()
            .filter(move |r| r.family == f && r.table == t && r.chain == n)
    }

    fn chain(&self, family: &str, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }

    /// Base chains of `kind` on `hook` that see packets of `p`'s family, lowest priority first.
    pub fn base_chains(&self, kind: &str, hook: &str, p: &Pkt) -> Vec<&Chain> {
        let v6 = p.dst.is_some_and(|d| d.is_ipv6());
        let mut v: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.kind.as_deref() == Some(kind) && c.hook.as_deref() == Some(hook))
            .filter(|c| match c.family.as_str() {
                "ip" => !v6,
                "ip6" => v6,
                "inet" => true,
                _ => false,
            })
            .collect();
        v.sort_by_key(|c| c.prio);
        v
    }

    /// What a filter hook does to `p`: the drop/reject rules (or drop policies) it would meet,
    /// each with whether it surely applies. Accept in a base chain ends that chain only (the
    /// next base chain on the hook still sees the packet), as in the kernel.
    pub fn drops_on(&self, hook: &str, p: &Pkt) -> Vec<(String, Match)> {
        let mut out = Vec::new();
        for c in self.base_chains("filter", hook, p) {
            let mut sure = Match::Yes;
            let end = self.walk(c, p, &mut sure, &mut out, 0);
            if !end && c.policy.as_deref() == Some("drop") {
                out.push((format!("{} policy drop", c.name_text()), sure));
            }
        }
        out
    }

    /// Walks `c`'s rules; returns true when a rule surely ended the chain (accept/drop).
    fn walk(
        &self,
        c: &Chain,
        p: &Pkt,
        sure: &mut Match,
        out: &mut Vec<(String, Match)>,
        depth: usize,
    ) -> bool {
        if depth > 8 {
            return false;
        }
        for r in self.chain_rules(c) {
            let m = self.matches(r, p);
            if m == Match::No {
                continue;
            }
            let m = if *sure == Match::Maybe {
                Match::Maybe
            } else {
                m
            };
            match r.verdict() {
                Some((v, _)) if v == "drop" || v == "reject" => {
                    out.push((r.describe(), m));
                    if m == Match::Yes {
                        return true;
                    }
                }
                Some((v, _)) if v == "accept" => {
                    if m == Match::Yes {
                        return true;
                    }
                    *sure = Match::Maybe;
                }
                Some((v, Some(target))) if v == "jump" || v == "goto" => {
                    if let Some(t) = self.chain(&c.family, &c.table, &target) {
                        let mut inner = m;
                        if self.walk(t, p, &mut inner, out, depth + 1) {
                            return true;
                        }
                        if inner == Match::Maybe {
                            *sure = Match::Maybe;
                        }
                    }
                }
                Some((v, _)) if v == "return" && m == Match::Yes => return false,
                _ => {}
            }
        }
        false
    }

    /// The first NAT rule of `verdicts` (`dnat`, `masquerade`/`snat`) on `hook` that surely or
    /// maybe applies to `p`.
    pub fn nat_rule(&self, hook: &str, verdicts: &[&str], p: &Pkt) -> Option<(&Rule, Match)> {
        for c in self.base_chains("nat", hook, p) {
            if let Some(hit) = self.nat_in(c, verdicts, p, 0) {
                return Some(hit);
            }
        }
        None
    }

    fn nat_in<'s>(
        &'s self,
        c: &Chain,
        verdicts: &[&str],
        p: &Pkt,
        depth: usize,
    ) -> Option<(&'s Rule, Match)> {
        if depth > 8 {
            return None;
        }
        for r in self.chain_rules(c) {
            let m = self.matches(r, p);
            if m == Match::No {
                continue;
            }
            match r.verdict() {
                Some((v, _)) if verdicts.contains(&v.as_str()) => return Some((r, m)),
                Some((v, Some(t))) if v == "jump" || v == "goto" => {
                    if let Some(t) = self.chain(&c.family, &c.table, &t) {
                        if let Some(hit) = self.nat_in(t, verdicts, p, depth + 1) {
                            return Some(hit);
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Whether `r`'s match expressions apply to `p`.
    pub fn matches(&self, r: &Rule, p: &Pkt) -> Match {
        let mut verdict = Match::Yes;
        for e in &r.expr {
            let Some(m) = e.get("match") else { continue };
            match match_one(m, p) {
                Match::No => return Match::No,
                Match::Maybe => verdict = Match::Maybe,
                Match::Yes => {}
            }
        }
        verdict
    }

    /// Whether any base chain of the ruleset is a NAT chain that masquerades or SNATs.
    pub fn has_masquerade(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.verdict(), Some((v, _)) if v == "masquerade" || v == "snat"))
    }
}

/// Evaluates one `{"match": {left, op, right}}`.
fn match_one(m: &Value, p: &Pkt) -> Match {
    let op = m["op"].as_str().unwrap_or("==");
    let left = &m["left"];
    let right = &m["right"];
    let hit: Option<bool> = if let Some(pl) = left.get("payload") {
        let field = pl["field"].as_str().unwrap_or_default();
        let proto = pl["protocol"].as_str().unwrap_or_default();
        match (proto, field) {
            ("ip" | "ip6", "saddr") => p.src.map(|a| addr_in(a, right)),
            ("ip" | "ip6", "daddr") => p.dst.map(|a| addr_in(a, right)),
            // The only ICMP netlab sends or traces is an echo request.
            ("icmp" | "icmpv6", "type") => {
                Some(p.proto.as_deref() == Some(proto) && name_in("echo-request", right))
            }
            ("tcp" | "udp" | "th", "dport") => {
                let same_proto = proto == "th" || p.proto.as_deref() == Some(proto);
                if !same_proto {
                    Some(false)
                } else {
                    p.dport.map(|d| num_in(u64::from(d), right))
                }
            }
            _ => None,
        }
    } else if let Some(meta) = left.get("meta") {
        match meta["key"].as_str().unwrap_or_default() {
            "iifname" => p.iif.as_deref().map(|n| name_in(n, right)),
            "oifname" => p.oif.as_deref().map(|n| name_in(n, right)),
            "l4proto" => p.proto.as_deref().map(|pr| proto_in(pr, right)),
            "nfproto" => p
                .dst
                .map(|d| name_in(if d.is_ipv4() { "ipv4" } else { "ipv6" }, right)),
            _ => None,
        }
    } else {
        None
    };
    match (hit, op) {
        (None, _) => Match::Maybe,
        (Some(h), "!=") => bool_match(!h),
        (Some(h), "==" | "in") => bool_match(h),
        _ => Match::Maybe,
    }
}

fn bool_match(b: bool) -> Match {
    if b {
        Match::Yes
    } else {
        Match::No
    }
}

fn set_items(v: &Value) -> Vec<&Value> {
    match v.get("set").and_then(Value::as_array) {
        Some(a) => a.iter().collect(),
        None => vec![v],
    }
}

fn addr_in(a: IpAddr, right: &Value) -> bool {
    set_items(right).into_iter().any(|item| {
        if let Some(s) = item.as_str() {
            return s.parse::<IpAddr>() == Ok(a);
        }
        if let Some(pf) = item.get("prefix") {
            let net = format!(
                "{}/{}",
                pf["addr"].as_str().unwrap_or_default(),
                pf["len"].as_u64().unwrap_or(0)
            );
            return net.parse::<IpNetwork>().is_ok_and(|n| n.contains(a));
        }
        if let Some(r) = item.get("range").and_then(Value::as_array) {
            let lo = r
                .first()
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok());
            let hi = r
                .get(1)
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok());
            return matches!((lo, hi), (Some(l), Some(h)) if l <= a && a <= h);
        }
        false
    })
}

fn num_in(n: u64, right: &Value) -> bool {
    set_items(right).into_iter().any(|item| {
        if let Some(v) = item.as_u64() {
            return v == n;
        }
        if let Some(r) = item.get("range").and_then(Value::as_array) {
            let lo = r.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
            let hi = r.get(1).and_then(Value::as_u64).unwrap_or(0);
            return lo <= n && n <= hi;
        }
        false
    })
}

fn name_in(n: &str, right: &Value) -> bool {
    set_items(right).into_iter().any(|item| {
        item.as_str().is_some_and(|s| match s.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => s == n,
        })
    })
}

fn proto_in(pr: &str, right: &Value) -> bool {
    let num = match pr {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "icmpv6" => 58,
        _ => 0,
    };
    set_items(right)
        .into_iter()
        .any(|item| item.as_str() == Some(pr) || item.as_u64() == Some(num))
}

/// One statement in nft syntax (best effort; unknown ones show their keyword).
fn render_stmt(e: &Value) -> String {
    let Some((k, v)) = e.as_object().and_then(|o| o.iter().next()) else {
        return String::new();
    };
    match k.as_str() {
        "match" => {
            let op = match v["op"].as_str().unwrap_or("==") {
                "==" | "in" => String::new(),
                o => format!("{o} "),
            };
            format!(
                "{} {op}{}",
                render_value(&v["left"]),
                render_value(&v["right"])
            )
        }
        "jump" | "goto" => format!("{k} {}", v["target"].as_str().unwrap_or("?")),
        "dnat" | "snat" => {
            let mut s = format!("{k} to {}", render_value(&v["addr"]));
            if let Some(p) = v["port"].as_u64() {
                s.push_str(&format!(":{p}"));
            }
            s
        }
        "reject" => "reject".into(),
        other => other.to_string(),
    }
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(render_value).collect::<Vec<_>>().join(","),
        Value::Object(o) => {
            if let Some(pl) = o.get("payload") {
                format!(
                    "{} {}",
                    pl["protocol"].as_str().unwrap_or("?"),
                    pl["field"].as_str().unwrap_or("?")
                )
            } else if let Some(m) = o.get("meta") {
                let key = m["key"].as_str().unwrap_or("?");
                if matches!(key, "iifname" | "oifname" | "iif" | "oif") {
                    key.to_string()
                } else {
                    format!("meta {key}")
                }
            } else if let Some(ct) = o.get("ct") {
                format!("ct {}", ct["key"].as_str().unwrap_or("?"))
            } else if let Some(pf) = o.get("prefix") {
                format!("{}/{}", render_value(&pf["addr"]), pf["len"])
            } else if let Some(s) = o.get("set").and_then(Value::as_array) {
                format!(
                    "{{ {} }}",
                    s.iter().map(render_value).collect::<Vec<_>>().join(", ")
                )
            } else if let Some(r) = o.get("range").and_then(Value::as_array) {
                r.iter().map(render_value).collect::<Vec<_>>().join("-")
            } else {
                Value::Object(o.clone()).to_string()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = r#"{"nftables": [
      {"chain": {"family": "inet", "table": "t", "name": "fwd", "handle": 1, "type": "filter",
                 "hook": "forward", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "t", "chain": "fwd", "handle": 3, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"prefix": {"addr": "10.9.0.0", "len": 24}}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": 80}},
        {"counter": {"packets": 4, "bytes": 240}},
        {"drop": null}]}},
      {"chain": {"family": "ip", "table": "n", "name": "post", "handle": 1, "type": "nat",
                 "hook": "postrouting", "prio": 100, "policy": "accept"}},
      {"rule": {"family": "ip", "table": "n", "chain": "post", "handle": 2, "expr": [
        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br0"}},
        {"masquerade": null}]}}
    ]}"#;

    #[test]
    fn parses_matches_and_renders() {
        let r = Ruleset::parse(RULESET);
        assert_eq!(r.rules.len(), 2);
        assert_eq!(r.rules[0].counter, Some((4, 240)));
        assert_eq!(
            r.rules[0].describe(),
            "table inet t chain fwd handle 3: ip daddr 10.9.0.0/24 tcp dport 80 drop"
        );
        let mut p = Pkt {
            dst: "10.9.0.7".parse().ok(),
            proto: Some("tcp".into()),
            dport: Some(80),
            ..Default::default()
        };
        assert_eq!(r.drops_on("forward", &p).len(), 1);
        p.dport = Some(443);
        assert!(r.drops_on("forward", &p).is_empty());
        p.proto = Some("udp".into());
        assert!(r.drops_on("forward", &p).is_empty());
        p.oif = Some("eth1".into());
        assert!(r.nat_rule("postrouting", &["masquerade"], &p).is_some());
        p.oif = Some("br0".into());
        assert!(r.nat_rule("postrouting", &["masquerade"], &p).is_none());
        assert!(r.has_masquerade());
    }
}
