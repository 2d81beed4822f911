//! The nftables backend: [`NftFirewall`].
//!
//! Each operation reads what it needs of the current ruleset (a [`wire::Snapshot`] at one
//! generation), decides the minimal change with the pure [`plan`], and sends it as ONE batch
//! tied to that generation. If anything changed the ruleset in between, the kernel refuses the
//! batch and the operation starts over, so decisions (such as "this host port is free") are
//! never based on stale reads. No process is executed.

mod view;
mod wire;

use std::sync::{Mutex, MutexGuard};

use tracing::{debug, info, warn};

use self::view::{Change, View};
use self::wire::{Batch, Commit, ElemInfo, Snapshot, Socket};
use super::ir::{self, Element, Family};
use super::plan::{self, Holding, TABLE};
use super::{sysctl, EndpointRules, Firewaller, NetworkRules};
use crate::error::{Error, Result, ResultExt};
use crate::model::Drift;
use crate::netns::Netns;

/// How often an operation is retried when the ruleset changed under it.
const MAX_ATTEMPTS: usize = 20;

/// netloom's nftables firewall, bound to one network namespace.
pub struct NftFirewall {
    ns: Netns,
    state: Mutex<State>,
}

/// The socket, and what this process last knew of the ruleset.
struct State {
    sock: Socket,
    /// The view endpoint operations used, updated with their own changes and valid for the
    /// generation it carries: while no one else touches nftables, adding a container reads
    /// nothing back from the kernel (no dump of every published port).
    cache: Option<View>,
    /// Whether this instance already ran an operation: a long-lived one (the daemon) reads the
    /// maps whole once and keeps them; a fresh one (one CNI call) uses lookups.
    used: bool,
    /// The generation the ruleset had right after this instance's last transaction, which
    /// contained only that transaction's own changes.
    committed_at: Option<u32>,
    /// Networks whose rules `add_endpoint` found in place, with the generation right after.
    verified: Vec<(String, u32)>,
}

/// How [`NftFirewall::transact`] ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Commit the batch.
    Apply,
    /// Commit, reusing and updating the cached snapshot (endpoint operations).
    ApplyCached,
    /// Only report drift.
    DryRun,
}

impl std::fmt::Debug for NftFirewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftFirewall")
            .field("netns", &self.ns.path())
            .finish()
    }
}

/// What an operation needs to read.
#[derive(Default)]
struct Want {
    /// Rules of netloom's tables and of other tools' blocking forward chains.
    rules: bool,
    /// Elements of these sets of netloom's tables.
    elements: Vec<(Family, &'static str)>,
    /// Instead of reading `elements` whole, look these keys up one by one (a fresh process
    /// publishing single ports): (set, key).
    probes: Option<Vec<(&'static str, Vec<u8>)>>,
}

/// The lookups that tell whether an endpoint's single-port publications are free: the exact
/// slot, the "every address" slot, any range containing the port, and (for ports published on
/// every address) the marker of specific-address publications. None when a range is published
/// (checking it port by port would cost more than reading the maps).
fn probes_for(elems: &[(&'static str, Element)]) -> Option<Vec<(&'static str, Vec<u8>)>> {
    use ir::Value;
    let mut out = Vec::new();
    for (map, e) in elems {
        let m = plan::DnatMap::by_name(map)?;
        let h = Holding::of(m, e)?;
        if m.kind == plan::DnatKind::Range {
            return None;
        }
        let fam = m.family;
        let pick = |k: plan::DnatKind| {
            plan::DNAT_MAPS
                .iter()
                .find(|x| x.family == fam && x.kind == k)
                .map(|x| x.name)
        };
        let any_key = ir::encode_values(&[Value::L4(h.proto), Value::Port(h.port_lo)]);
        let addr = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(a) => Value::V4(a),
            std::net::IpAddr::V6(a) => Value::V6(a),
        };
        let point =
            ir::encode_values(&[Value::L4(h.proto), addr(h.addr_lo), Value::Port(h.port_lo)]);
        out.push((pick(plan::DnatKind::Any)?, any_key.clone()));
        out.push((pick(plan::DnatKind::Range)?, point.clone()));
        if m.kind == plan::DnatKind::Addr {
            out.push((pick(plan::DnatKind::Addr)?, point));
        } else {
            out.push((plan::bound_set(fam), any_key));
        }
    }
    Some(out)
}

const NETWORK_SETS: [(Family, &str); 5] = [
    (Family::Inet, plan::SET_BRIDGES),
    (Family::Inet, plan::SET_ISOLATED),
    (Family::Inet, plan::MAP_FROM),
    (Family::Inet, plan::MAP_TO),
    (Family::Inet, plan::MAP_MASQ),
];

fn dnat_sets() -> Vec<(Family, &'static str)> {
    plan::DNAT_MAPS
        .iter()
        .map(|m| (Family::Inet, m.name))
        .collect()
}

/// The DNAT maps and the port markers: what endpoint operations read.
fn endpoint_sets() -> Vec<(Family, &'static str)> {
    let mut v = dnat_sets();
    v.extend([
        (Family::Inet, plan::SET_BOUND4),
        (Family::Inet, plan::SET_BOUND6),
    ]);
    v
}

/// The MAC spoof check's sets (bridge table; they exist once a spoof check was added).
const SPOOF_SETS: [(Family, &str); 2] = [
    (Family::Bridge, plan::SET_SPOOF_PORTS),
    (Family::Bridge, plan::SET_SPOOF_MACS),
];

fn all_sets() -> Vec<(Family, &'static str)> {
    let mut v = NETWORK_SETS.to_vec();
    v.extend(endpoint_sets());
    v
}

fn is_interval(family: Family, set: &str) -> bool {
    family == Family::Inet && plan::DnatMap::by_name(set).is_some_and(|m| m.interval())
}

/// The tag of the accept rules netloom adds to another tool's blocking chain.
fn foreign_tag(net: &str, dir: &str) -> String {
    format!("netloom net={net} {dir}")
}

fn drift(subject: impl Into<String>, problem: impl Into<String>) -> Drift {
    Drift {
        subject: subject.into(),
        problem: problem.into(),
    }
}

/// Decisions of one operation: the batch it will send and the drift it found on the way.
struct Plan<'a> {
    snap: &'a View,
    batch: Batch,
    drifts: Vec<Drift>,
    next_set_id: u32,
    /// Chains this plan flushes: their network-owned rules must be added again too.
    flushed: Vec<(Family, String)>,
    /// Port claims this plan adds (so endpoints restored together are checked together).
    claims: plan::Claims,
    changes: Vec<(Family, &'static str, Change)>,
    /// The lookups were not enough to decide: read the sets whole and decide again.
    need_full: bool,
}

impl<'a> Plan<'a> {
    fn new(snap: &'a View) -> Self {
        Plan {
            snap,
            batch: Batch::default(),
            drifts: Vec::new(),
            next_set_id: 1,
            flushed: Vec::new(),
            claims: plan::Claims::default(),
            changes: Vec::new(),
            need_full: false,
        }
    }

    fn add_rules(&mut self, family: Family, c: &ir::Chain) -> Result<()> {
        for r in &c.rules {
            self.batch.add_rule(family, TABLE, &c.name, r)?;
        }
        Ok(())
    }

    /// Makes netloom's chains exist with exactly the wanted rules. Rules are compared by their
    /// comments (which name what each rule does); a chain that differs is flushed and refilled
    /// in the same transaction, so there is no moment without it. All missing chains are created
    /// before any rule is added, since rules may jump to a chain that comes later in the list.
    fn ensure_chains(&mut self, family: Family, chains: &[ir::Chain]) -> Result<()> {
        let table_exists = self.snap.has_table(family, TABLE);
        let mut created = Vec::new();
        for c in chains {
            if !table_exists || !self.snap.has_chain(family, TABLE, &c.name) {
                if table_exists {
                    self.drifts.push(drift(
                        format!("nft chain {family} {TABLE} {}", c.name),
                        "missing",
                    ));
                }
                self.batch.add_chain(family, TABLE, c)?;
                created.push(c.name.as_str());
            }
        }
        for c in chains {
            if created.contains(&c.name.as_str()) {
                self.add_rules(family, c)?;
                continue;
            }
            if !self.snap.rules_loaded {
                continue;
            }
            // Rules networks own in a shared chain are checked by ensure_network.
            let have: Vec<&str> = self
                .snap
                .rules(family, TABLE, &c.name)
                .iter()
                .map(|r| r.comment.as_str())
                .filter(|c| !c.starts_with("net="))
                .collect();
            let want: Vec<&str> = c.rules.iter().map(|r| r.comment.as_str()).collect();
            if have != want {
                self.drifts.push(drift(
                    format!("nft chain {family} {TABLE} {}", c.name),
                    format!(
                        "has rules [{}], expected [{}]",
                        have.join(", "),
                        want.join(", ")
                    ),
                ));
                self.batch.flush_chain(family, TABLE, &c.name)?;
                self.flushed.push((family, c.name.clone()));
                self.add_rules(family, c)?;
            }
        }
        Ok(())
    }

    fn ensure_skeleton(&mut self) -> Result<()> {
        for t in plan::skeleton() {
            if !self.snap.has_table(t.family, TABLE) {
                self.drifts
                    .push(drift(format!("nft table {} {TABLE}", t.family), "missing"));
                self.batch.add_table(t.family, TABLE)?;
            }
            for s in &t.sets {
                if !self.snap.has_set(t.family, TABLE, &s.name) {
                    if self.snap.has_table(t.family, TABLE) {
                        self.drifts.push(drift(
                            format!("nft set {} {TABLE} {}", t.family, s.name),
                            "missing",
                        ));
                    }
                    let id = self.next_set_id;
                    self.next_set_id += 1;
                    self.batch.add_set(t.family, TABLE, s, id)?;
                }
            }
            self.ensure_chains(t.family, &t.chains)?;
        }
        Ok(())
    }

    /// Deletes elements as read back, and remembers it for the cache.
    fn delete_elements(
        &mut self,
        family: Family,
        set: &'static str,
        del: &[&ElemInfo],
    ) -> Result<()> {
        if del.is_empty() {
            return Ok(());
        }
        self.batch.del_raw_elements(family, TABLE, set, del)?;
        for e in del {
            self.changes.push((family, set, Change::Del((*e).clone())));
        }
        Ok(())
    }

    /// Makes `want` the only elements tagged `tag` in `set`: adds what is missing, replaces what
    /// differs, removes what is stale (unless `keep_stale`, used by reapply which only adds).
    fn ensure_elements(
        &mut self,
        family: Family,
        set: &'static str,
        want: &[&Element],
        tag: &str,
        keep_stale: bool,
    ) -> Result<()> {
        let interval = is_interval(family, set);
        let wanted: Vec<ElemInfo> = want
            .iter()
            .map(|e| ElemInfo::from_element(interval, e))
            .collect();
        let have = self.snap.elems(family, set);
        let mut add: Vec<&Element> = Vec::new();
        let mut del: Vec<&'a ElemInfo> = Vec::new();
        let mut found: Vec<(String, &'static str)> = Vec::new();
        for (e, w) in want.iter().zip(&wanted) {
            match have.get(w) {
                Some(x) if x == w => {}
                Some(x) => {
                    found.push((e.key_text(), "differs"));
                    del.push(x);
                    add.push(e);
                }
                None => {
                    found.push((e.key_text(), "missing"));
                    add.push(e);
                }
            }
        }
        if !keep_stale {
            for x in have.tagged(tag) {
                if !wanted.iter().any(|w| w == x) && !del.iter().any(|d| std::ptr::eq(*d, x)) {
                    del.push(x);
                }
            }
        }
        for (k, problem) in found {
            self.drifts.push(drift(
                format!("nft element {family} {TABLE} {set} {k}"),
                problem,
            ));
        }
        self.delete_elements(family, set, &del)?;
        if !add.is_empty() {
            self.batch
                .elements(true, family, TABLE, set, interval, &add)?;
            for e in add {
                self.changes.push((
                    family,
                    set,
                    Change::Add(ElemInfo::from_element(interval, e)),
                ));
            }
        }
        Ok(())
    }

    fn ensure_network(&mut self, net: &NetworkRules, keep_stale: bool) -> Result<()> {
        self.ensure_chains(Family::Inet, &plan::network_chains(net))?;
        self.ensure_bridge_rules(net)?;
        let elems = plan::network_elements(net);
        let tag = plan::tag_network(&net.network_id);
        for (family, set) in NETWORK_SETS {
            let want: Vec<&Element> = elems
                .iter()
                .filter(|(f, s, _)| *f == family && *s == set)
                .map(|(_, _, e)| e)
                .collect();
            self.ensure_elements(family, set, &want, &tag, keep_stale)?;
        }
        Ok(())
    }

    /// The network's ICC rules in the bridge table (owned rules in a shared chain, found by the
    /// network prefix of their comments).
    fn ensure_bridge_rules(&mut self, net: &NetworkRules) -> Result<()> {
        let want = plan::network_bridge_rules(net);
        let fresh = !self
            .snap
            .has_chain(Family::Bridge, TABLE, plan::BRIDGE_CHAIN)
            || self
                .flushed
                .contains(&(Family::Bridge, plan::BRIDGE_CHAIN.to_string()));
        if !self.snap.rules_loaded && !fresh {
            return Ok(());
        }
        let prefix = plan::network_rule_prefix(&net.network_id);
        let have: Vec<&wire::RuleInfo> = if fresh {
            Vec::new()
        } else {
            self.snap
                .rules(Family::Bridge, TABLE, plan::BRIDGE_CHAIN)
                .iter()
                .filter(|r| r.comment.starts_with(&prefix))
                .collect()
        };
        let have_c: Vec<&str> = have.iter().map(|r| r.comment.as_str()).collect();
        let want_c: Vec<&str> = want.iter().map(|r| r.comment.as_str()).collect();
        if have_c == want_c {
            return Ok(());
        }
        if !want.is_empty() {
            self.drifts.push(drift(
                format!("nft chain bridge {TABLE} {}", plan::BRIDGE_CHAIN),
                format!(
                    "ICC rules of network {} are [{}], expected [{}]",
                    net.network_id,
                    have_c.join(", "),
                    want_c.join(", ")
                ),
            ));
        }
        for r in have {
            self.batch
                .del_rule(Family::Bridge, TABLE, plan::BRIDGE_CHAIN, r.handle)?;
        }
        for r in &want {
            self.batch
                .add_rule(Family::Bridge, TABLE, plan::BRIDGE_CHAIN, r)?;
        }
        Ok(())
    }

    /// Accept rules in other tools' forward chains whose policy is drop (Docker's iptables
    /// FORWARD, ufw...): netloom's own table decides, these only keep the other policy from
    /// overruling it. Appended, so the other tool's own rules (DOCKER-USER) still come first.
    fn ensure_coexistence(&mut self, net: &NetworkRules) -> Result<()> {
        if !self.snap.rules_loaded {
            return Ok(());
        }
        for c in blocking_chains(self.snap) {
            for (dir, expr) in [
                (
                    "from-bridge",
                    ir::Expr::Iifname(ir::Cmp::Eq, net.interface.clone()),
                ),
                (
                    "to-bridge",
                    ir::Expr::Oifname(ir::Cmp::Eq, net.interface.clone()),
                ),
            ] {
                let tag = foreign_tag(&net.network_id, dir);
                if self
                    .snap
                    .rules(c.family, &c.table, &c.name)
                    .iter()
                    .any(|r| r.comment == tag)
                {
                    continue;
                }
                self.drifts.push(drift(
                    format!("accept rule in {} {} {}", c.family, c.table, c.name),
                    format!("missing for network {} ({dir})", net.network_id),
                ));
                let rule = ir::Rule::new(tag, vec![expr, ir::Expr::Verdict(ir::Verdict::Accept)]);
                self.batch.add_rule(c.family, &c.table, &c.name, &rule)?;
            }
        }
        Ok(())
    }

    fn remove_coexistence(&mut self, net: &str) -> Result<()> {
        let prefix = format!("netloom net={net} ");
        for c in blocking_chains(self.snap) {
            for r in self.snap.rules(c.family, &c.table, &c.name) {
                if r.comment.starts_with(&prefix) {
                    self.batch.del_rule(c.family, &c.table, &c.name, r.handle)?;
                }
            }
        }
        Ok(())
    }

    /// Adds an endpoint's DNAT elements after checking no one else holds the host ports.
    /// `on_conflict_skip` (reapply) logs and skips instead of failing.
    fn ensure_endpoint(
        &mut self,
        net: &NetworkRules,
        ep: &EndpointRules,
        keep_stale: bool,
        on_conflict_skip: bool,
    ) -> Result<()> {
        let want = plan::endpoint_elements(net, ep)?;
        let tag = plan::tag_endpoint(&net.network_id, &ep.owner);
        let mut conflict = None;
        let mut mine = Vec::new();
        for (map, e) in &want {
            let Some(h) = plan::DnatMap::by_name(map).and_then(|m| Holding::of(m, e)) else {
                continue;
            };
            if let Some(other) = self
                .snap
                .claims
                .conflict(&h, &tag)
                .or_else(|| self.claims.conflict(&h, &tag))
            {
                conflict = Some((h.describe(), plan::describe_tag(&other.tag)));
                break;
            }
            mine.push(h);
        }
        if let Some((port, holder)) = conflict {
            let msg = format!("host port {port} is already published by {holder}");
            if on_conflict_skip {
                warn!(endpoint = %ep.owner, network = %net.network_id, "{msg}; not restoring it");
                self.drifts
                    .push(drift(format!("published port {port} of {}", ep.owner), msg));
                return Ok(());
            }
            return Err(Error::Conflict(msg));
        }
        // Ports published on every address: a marker means someone publishes that port on a
        // specific address, which only the whole maps can tell (or the marker is stale).
        for h in mine.iter().filter(|h| h.addr_lo != h.addr_hi) {
            let fam = if h.addr_lo.is_ipv6() {
                ir::IpFamily::V6
            } else {
                ir::IpFamily::V4
            };
            let marker = ElemInfo::from_element(false, &bound_marker(h.proto, h.port_lo));
            let Some(found) = self
                .snap
                .elems(Family::Inet, plan::bound_set(fam))
                .get(&marker)
            else {
                continue;
            };
            if !self.snap.complete {
                self.need_full = true;
                return Ok(());
            }
            if !self
                .snap
                .claims
                .has_specific(h.proto, h.addr_lo.is_ipv6(), h.port_lo)
            {
                let found: &'a ElemInfo = found;
                self.delete_elements(Family::Inet, plan::bound_set(fam), &[found])?;
            }
        }
        // Later endpoints of the same plan (reapply) must see these claims.
        for h in mine {
            self.claims.insert(h);
        }
        for set in plan::DNAT_MAPS.iter().map(|m| m.name) {
            let w: Vec<&Element> = want
                .iter()
                .filter(|(s, _)| *s == set)
                .map(|(_, e)| e)
                .collect();
            self.ensure_elements(Family::Inet, set, &w, &tag, keep_stale)?;
        }
        let markers = plan::bound_markers(&want);
        for set in [plan::SET_BOUND4, plan::SET_BOUND6] {
            let add: Vec<&Element> = markers
                .iter()
                .filter(|(s, m)| {
                    *s == set
                        && self
                            .snap
                            .elems(Family::Inet, set)
                            .get(&ElemInfo::from_element(false, m))
                            .is_none()
                })
                .map(|(_, m)| m)
                .collect();
            if add.is_empty() {
                continue;
            }
            if self.snap.complete {
                for m in &add {
                    self.drifts.push(drift(
                        format!("nft element inet {TABLE} {set} {}", m.key_text()),
                        "missing",
                    ));
                }
            }
            self.batch
                .add_elements_shared(Family::Inet, TABLE, set, &add)?;
            for m in add {
                self.changes.push((
                    Family::Inet,
                    set,
                    Change::Add(ElemInfo::from_element(false, m)),
                ));
            }
        }
        Ok(())
    }

    /// Port markers no specific-address publication needs any more (after `gone` is removed).
    fn stale_markers(&mut self, gone: &dyn Fn(&str) -> bool) -> Result<()> {
        let mut keep = std::collections::HashSet::new();
        for m in &plan::DNAT_MAPS {
            for x in self
                .snap
                .elems(Family::Inet, m.name)
                .iter()
                .filter(|x| !gone(&x.comment))
            {
                if let Some(h) =
                    view::holding(Family::Inet, m.name, x).filter(|h| h.addr_lo == h.addr_hi)
                {
                    for p in h.port_lo..=h.port_hi {
                        keep.insert((h.proto, h.addr_lo.is_ipv6(), p));
                    }
                }
            }
        }
        for (set, v6) in [(plan::SET_BOUND4, false), (plan::SET_BOUND6, true)] {
            let snap = self.snap;
            let stale: Vec<&ElemInfo> = snap
                .elems(Family::Inet, set)
                .iter()
                .filter(|x| {
                    let proto = x
                        .key
                        .first()
                        .and_then(|b| crate::model::Proto::from_number(*b));
                    let port = x.key.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]]));
                    match (proto, port) {
                        (Some(pr), Some(po)) => !keep.contains(&(pr, v6, po)),
                        _ => true,
                    }
                })
                .collect();
            self.delete_elements(Family::Inet, set, &stale)?;
        }
        Ok(())
    }
}

impl Plan<'_> {
    /// One container's spoof-check entries (its port, its port . MAC), with the sets and
    /// chain they live in.
    fn ensure_spoof_entries(&mut self, elems: &[(&str, Element)], tag: &str) -> Result<()> {
        self.ensure_spoof_skeleton()?;
        for (fam, set) in SPOOF_SETS {
            let w: Vec<&Element> = elems
                .iter()
                .filter(|(s, _)| *s == set)
                .map(|(_, e)| e)
                .collect();
            self.ensure_elements(fam, set, &w, tag, false)?;
        }
        Ok(())
    }

    /// The spoof check's sets and base chain, when missing (made on first use).
    fn ensure_spoof_skeleton(&mut self) -> Result<()> {
        for set in plan::spoof_sets() {
            if !self.snap.has_set(Family::Bridge, TABLE, &set.name) {
                let id = self.next_set_id;
                self.next_set_id += 1;
                self.batch.add_set(Family::Bridge, TABLE, &set, id)?;
            }
        }
        let chain = plan::spoof_chain();
        if !self.snap.has_chain(Family::Bridge, TABLE, &chain.name) {
            self.batch.add_chain(Family::Bridge, TABLE, &chain)?;
            self.add_rules(Family::Bridge, &chain)?;
        } else if self.snap.rules_loaded
            && !self
                .snap
                .rules(Family::Bridge, TABLE, &chain.name)
                .iter()
                .any(|r| r.comment == "macspoofchk")
        {
            self.drifts.push(drift(
                format!("nft chain bridge {TABLE} {}", chain.name),
                "the macspoofchk rule is missing",
            ));
            self.batch.flush_chain(Family::Bridge, TABLE, &chain.name)?;
            self.add_rules(Family::Bridge, &chain)?;
        }
        Ok(())
    }
}

fn bound_marker(proto: crate::model::Proto, port: u16) -> Element {
    Element {
        key: vec![ir::Value::L4(proto), ir::Value::Port(port)],
        key_end: None,
        data: None,
        comment: String::new(),
    }
}

/// Other tools' base chains on the forward hook whose policy drops what no rule accepted.
fn blocking_chains(snap: &Snapshot) -> Vec<&wire::ChainInfo> {
    snap.chains
        .iter()
        .filter(|c| {
            matches!(c.family, Family::Ip | Family::Ip6 | Family::Inet)
                && !(c.family == Family::Inet && c.table == TABLE)
                && c.hook == Some(ir::Hook::Forward.number())
                && c.policy == Some(libc::NF_DROP as u32)
        })
        .collect()
}

impl NftFirewall {
    /// A firewall for the namespace the calling thread is in.
    pub fn new() -> Result<Self> {
        Self::in_netns(Netns::current()?)
    }

    /// A firewall for `ns`: its netlink socket is opened inside it, and sysctls are written
    /// from inside it.
    pub fn in_netns(ns: Netns) -> Result<Self> {
        let mut sock = Socket::open_in(&ns)?;
        // Fail now, with a clear message, on a kernel without nf_tables.
        sock.genid().map_err(|e| {
            Error::Unsupported(format!(
                "nftables is not usable in {}: {e}",
                ns.path().display()
            ))
        })?;
        Ok(NftFirewall {
            ns,
            state: Mutex::new(State {
                sock,
                cache: None,
                used: false,
                committed_at: None,
                verified: Vec::new(),
            }),
        })
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::Internal("nftables socket lock poisoned by a panic".into()))
    }

    fn read(&self, sock: &mut Socket, want: &Want, genid: u32) -> Result<Snapshot> {
        let mut snap = Snapshot {
            genid,
            ..Default::default()
        };
        snap.tables = sock.tables()?;
        snap.chains = sock.chains()?;
        for fam in [Family::Inet, Family::Bridge] {
            if snap.has_table(fam, TABLE) {
                for s in sock.sets(fam, TABLE)? {
                    snap.sets.insert((fam, TABLE.to_string(), s));
                }
            }
        }
        match &want.probes {
            Some(probes) => {
                for (set, key) in probes {
                    if !snap.has_set(Family::Inet, TABLE, set) {
                        continue;
                    }
                    if let Some(e) = sock.get_element(Family::Inet, TABLE, set, key)? {
                        let v = snap
                            .elements
                            .entry((Family::Inet, set.to_string()))
                            .or_default();
                        if !v.contains(&e) {
                            v.push(e);
                        }
                    }
                }
            }
            None => {
                for (fam, set) in &want.elements {
                    if snap.has_set(*fam, TABLE, set) {
                        let e = sock.elements(*fam, TABLE, set)?;
                        snap.elements.insert((*fam, set.to_string()), e);
                    }
                }
            }
        }
        if want.rules {
            let mut tables: Vec<(Family, String)> = [Family::Inet, Family::Bridge]
                .into_iter()
                .filter(|f| snap.has_table(*f, TABLE))
                .map(|f| (f, TABLE.to_string()))
                .collect();
            for c in blocking_chains(&snap) {
                let t = (c.family, c.table.clone());
                if !tables.contains(&t) {
                    tables.push(t);
                }
            }
            for (fam, table) in tables {
                for (chain, rules) in sock.rules(fam, &table)? {
                    snap.rules.insert((fam, table.clone(), chain), rules);
                }
            }
            snap.rules_loaded = true;
        }
        Ok(snap)
    }

    /// Reads, plans, commits; starts over when the ruleset changed in between.
    fn transact<F>(&self, what: &str, want: Want, mode: Mode, mut decide: F) -> Result<Vec<Drift>>
    where
        F: FnMut(&mut Plan<'_>) -> Result<()>,
    {
        let mut guard = self.lock()?;
        let st = &mut *guard;
        let mut want = want;
        // Lookups only for the first endpoint operation of an instance (see `State::used`).
        if mode == Mode::ApplyCached {
            if st.used {
                want.probes = None;
            }
            st.used = true;
        }
        for attempt in 1..=MAX_ATTEMPTS {
            let genid = st
                .sock
                .genid()
                .with_context(|| format!("{what}: read the ruleset generation"))?;
            let cached = if mode == Mode::ApplyCached {
                st.cache.take().filter(|c| c.genid == genid)
            } else {
                None
            };
            let snap = match cached {
                Some(c) => c,
                None => {
                    let complete = want.probes.is_none();
                    let s = self
                        .read(&mut st.sock, &want, genid)
                        .with_context(|| format!("{what}: read the ruleset"))?;
                    View::new(s, complete)
                }
            };
            let mut p = Plan::new(&snap);
            decide(&mut p)?;
            if p.need_full && !snap.complete {
                want.probes = None;
                continue;
            }
            if mode == Mode::DryRun {
                return Ok(p.drifts);
            }
            let n = p.batch.len();
            match st
                .sock
                .commit(&p.batch, genid)
                .with_context(|| what.to_string())?
            {
                Commit::Done => {
                    debug!(
                        operation = what,
                        messages = n,
                        attempt,
                        "nftables transaction committed"
                    );
                    let Plan {
                        drifts, changes, ..
                    } = p;
                    // A committed transaction advances the generation by exactly one; an
                    // empty batch sends nothing.
                    let after = if n == 0 { genid } else { genid.wrapping_add(1) };
                    st.committed_at = Some(after);
                    if mode == Mode::ApplyCached && snap.complete {
                        let mut view = snap;
                        view.apply(changes, after);
                        st.cache = Some(view);
                    }
                    return Ok(drifts);
                }
                Commit::Restart => {
                    debug!(
                        operation = what,
                        attempt, "ruleset changed meanwhile; retrying"
                    );
                    // Back off a little so two busy writers do not keep invalidating each other.
                    std::thread::sleep(std::time::Duration::from_millis(attempt as u64));
                }
            }
        }
        Err(Error::Busy(format!(
            "{what}: the nftables ruleset kept changing; gave up after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Runs `attempt`, which reports whether `what_vanished` (the network's base rules) was
    /// missing and nothing was done; then restores the network's rules and tries once more.
    /// Someone flushing the ruleset between our calls is healed, not reported as an error.
    fn healing(
        &self,
        net: &NetworkRules,
        what: &str,
        what_vanished: &str,
        mut attempt: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let mut healed = false;
        while attempt()? {
            if healed {
                return Err(Error::Firewall(format!(
                    "{what}: {what_vanished} vanished again right after being restored"
                )));
            }
            warn!(network = %net.network_id, "{what_vanished} missing; restoring the network's rules first");
            self.setup_network(net)?;
            healed = true;
        }
        Ok(())
    }
}

impl Firewaller for NftFirewall {
    fn backend(&self) -> &'static str {
        "nftables"
    }

    fn generation(&self) -> Result<Option<u64>> {
        Ok(Some(u64::from(self.lock()?.sock.genid()?)))
    }

    fn setup_network(&self, net: &NetworkRules) -> Result<()> {
        plan::validate_network(net)?;
        let want = Want {
            rules: true,
            elements: NETWORK_SETS.to_vec(),
            probes: None,
        };
        self.transact(
            &format!("set up firewall for network {}", net.network_id),
            want,
            Mode::Apply,
            |p| {
                p.ensure_skeleton()?;
                p.ensure_network(net, false)?;
                p.ensure_coexistence(net)
            },
        )?;
        if !net.internal {
            sysctl::enable_route_localnet(&self.ns, &net.interface)?;
        }
        info!(network = %net.network_id, bridge = %net.interface, "nftables rules in place");
        Ok(())
    }

    fn teardown_network(&self, network_id: &str) -> Result<()> {
        let mut sets = all_sets();
        sets.extend(SPOOF_SETS);
        let want = Want {
            rules: true,
            elements: sets.clone(),
            probes: None,
        };
        let tag = plan::tag_network(network_id);
        let ep_prefix = format!("{tag} ep=");
        self.transact(
            &format!("remove firewall of network {network_id}"),
            want,
            Mode::Apply,
            |p| {
                p.remove_coexistence(network_id)?;
                let snap = p.snap;
                let others = snap
                    .elems(Family::Inet, plan::SET_BRIDGES)
                    .iter()
                    .any(|e| e.comment != tag);
                if !others {
                    // The last network: nothing of netloom's stays behind.
                    for fam in [Family::Inet, Family::Bridge] {
                        if snap.has_table(fam, TABLE) {
                            p.batch.del_table(fam, TABLE)?;
                        }
                    }
                    return Ok(());
                }
                for &(fam, set) in &sets {
                    let del: Vec<&ElemInfo> = snap
                        .elems(fam, set)
                        .iter()
                        .filter(|e| e.comment == tag || e.comment.starts_with(&ep_prefix))
                        .collect();
                    if !del.is_empty() {
                        p.batch.del_raw_elements(fam, TABLE, set, &del)?;
                    }
                }
                let gone = |c: &str| c.starts_with(&ep_prefix);
                p.stale_markers(&gone)?;
                let prefix = plan::network_rule_prefix(network_id);
                for r in snap.rules(Family::Bridge, TABLE, plan::BRIDGE_CHAIN) {
                    if r.comment.starts_with(&prefix) {
                        p.batch
                            .del_rule(Family::Bridge, TABLE, plan::BRIDGE_CHAIN, r.handle)?;
                    }
                }
                for c in [
                    plan::chain_from(network_id),
                    plan::chain_to(network_id),
                    plan::chain_masq(network_id),
                ] {
                    if snap.has_chain(Family::Inet, TABLE, &c) {
                        p.batch.del_chain(Family::Inet, TABLE, &c)?;
                    }
                }
                Ok(())
            },
        )?;
        // A long-lived instance (netloomd) must not keep vouching for a network that is gone,
        // nor for a later one of the same name.
        self.lock()?.verified.retain(|(n, _)| n != network_id);
        info!(network = %network_id, "nftables rules removed");
        Ok(())
    }

    fn add_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        plan::validate_network(net)?;
        plan::validate_endpoint(net, ep)?;
        // The common case touches only the DNAT maps; a missing network (someone flushed the
        // ruleset) is healed first so the endpoint's entries have somewhere to live.
        let what = format!(
            "publish ports of {} on network {}",
            ep.owner, net.network_id
        );
        let desired = plan::endpoint_elements(net, ep)?;
        self.healing(net, &what, "the network's rules", || {
            let mut missing = false;
            let want = Want {
                rules: false,
                elements: endpoint_sets(),
                probes: probes_for(&desired),
            };
            self.transact(&what, want, Mode::ApplyCached, |p| {
                let s = p.snap;
                missing = !(s.has_table(Family::Inet, TABLE)
                    && s.has_table(Family::Bridge, TABLE)
                    && plan::DNAT_MAPS
                        .iter()
                        .all(|m| s.has_set(Family::Inet, TABLE, m.name))
                    && s.has_chain(Family::Inet, TABLE, &plan::chain_from(&net.network_id)));
                if missing {
                    return Ok(());
                }
                p.ensure_endpoint(net, ep, false, false)
            })?;
            Ok(missing)
        })?;
        // The transaction found the network's rules in place and added only the endpoint's
        // entries, so they are still in place at the generation it left behind.
        let mut st = self.lock()?;
        if let Some(g) = st.committed_at {
            st.verified.retain(|(n, _)| n != &net.network_id);
            st.verified.push((net.network_id.clone(), g));
        }
        drop(st);
        debug!(endpoint = %ep.owner, network = %net.network_id, ports = ep.ports.len(), "endpoint firewall entries in place");
        Ok(())
    }

    fn verified_generation(&self, network_id: &str) -> Result<Option<u64>> {
        Ok(self
            .lock()?
            .verified
            .iter()
            .find(|(n, _)| n == network_id)
            .map(|(_, g)| u64::from(*g)))
    }

    fn del_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        plan::validate_endpoint(net, ep)?;
        let tag = plan::tag_endpoint(&net.network_id, &ep.owner);
        let want = Want {
            rules: false,
            elements: endpoint_sets(),
            probes: None,
        };
        let what = format!(
            "unpublish ports of {} on network {}",
            ep.owner, net.network_id
        );
        self.transact(&what, want, Mode::ApplyCached, |p| {
            for (fam, set) in dnat_sets() {
                let del: Vec<&ElemInfo> = p.snap.elems(fam, set).tagged(&tag);
                p.delete_elements(fam, set, &del)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn add_spoofcheck(&self, net: &NetworkRules, sc: &super::SpoofCheck) -> Result<()> {
        plan::validate_network(net)?;
        let elems = plan::spoof_elements(sc)?;
        let tag = plan::tag_endpoint(&sc.network_id, &sc.owner);
        let what = format!(
            "MAC spoof check of {} on network {}",
            sc.owner, net.network_id
        );
        self.healing(net, &what, "netloom's bridge table", || {
            let mut missing = false;
            let want = Want {
                rules: false,
                elements: SPOOF_SETS.to_vec(),
                probes: None,
            };
            self.transact(&what, want, Mode::Apply, |p| {
                missing = !p.snap.has_table(Family::Bridge, TABLE);
                if missing {
                    return Ok(());
                }
                p.ensure_spoof_entries(&elems, &tag)
            })?;
            Ok(missing)
        })?;
        debug!(endpoint = %sc.owner, port = %sc.port, "MAC spoof check in place");
        Ok(())
    }

    fn del_spoofcheck(&self, network_id: &str, owner: &str) -> Result<()> {
        let tag = plan::tag_endpoint(network_id, owner);
        let want = Want {
            rules: false,
            elements: SPOOF_SETS.to_vec(),
            probes: None,
        };
        self.transact(
            &format!("remove MAC spoof check of {owner} on network {network_id}"),
            want,
            Mode::Apply,
            |p| {
                for (fam, set) in SPOOF_SETS {
                    let del: Vec<&ElemInfo> = p.snap.elems(fam, set).tagged(&tag);
                    p.delete_elements(fam, set, &del)?;
                }
                Ok(())
            },
        )?;
        Ok(())
    }

    fn check_spoofcheck(&self, sc: &super::SpoofCheck) -> Result<Vec<Drift>> {
        let elems = plan::spoof_elements(sc)?;
        let tag = plan::tag_endpoint(&sc.network_id, &sc.owner);
        let want = Want {
            rules: true,
            elements: SPOOF_SETS.to_vec(),
            probes: None,
        };
        self.transact(
            &format!("check MAC spoof check of {}", sc.owner),
            want,
            Mode::DryRun,
            |p| {
                if !p.snap.has_table(Family::Bridge, TABLE) {
                    p.drifts
                        .push(drift(format!("nft table bridge {TABLE}"), "missing"));
                    return Ok(());
                }
                for (what, present) in [
                    (
                        format!("nft chain bridge {TABLE} {}", plan::SPOOF_CHAIN),
                        p.snap.has_chain(Family::Bridge, TABLE, plan::SPOOF_CHAIN),
                    ),
                    (
                        format!("nft set bridge {TABLE} {}", plan::SET_SPOOF_PORTS),
                        p.snap.has_set(Family::Bridge, TABLE, plan::SET_SPOOF_PORTS),
                    ),
                    (
                        format!("nft set bridge {TABLE} {}", plan::SET_SPOOF_MACS),
                        p.snap.has_set(Family::Bridge, TABLE, plan::SET_SPOOF_MACS),
                    ),
                ] {
                    if !present {
                        p.drifts.push(drift(what, "missing"));
                    }
                }
                p.ensure_spoof_entries(&elems, &tag)
            },
        )
    }

    fn reapply(&self, nets: &[NetworkRules], eps: &[EndpointRules]) -> Result<Vec<Drift>> {
        for n in nets {
            plan::validate_network(n)?;
        }
        let want = Want {
            rules: true,
            elements: all_sets(),
            probes: None,
        };
        let drifts = self.transact("reapply the firewall", want, Mode::Apply, |p| {
            p.ensure_skeleton()?;
            for n in nets {
                p.ensure_network(n, true)?;
                p.ensure_coexistence(n)?;
            }
            for ep in eps {
                let Some(n) = nets.iter().find(|n| n.network_id == ep.network_id) else {
                    warn!(endpoint = %ep.owner, network = %ep.network_id, "endpoint of an unknown network; skipped");
                    continue;
                };
                p.ensure_endpoint(n, ep, true, true)?;
            }
            Ok(())
        })?;
        for n in nets.iter().filter(|n| !n.internal) {
            sysctl::enable_route_localnet(&self.ns, &n.interface)?;
        }
        if !drifts.is_empty() {
            info!(restored = drifts.len(), "firewall drift repaired");
        }
        Ok(drifts)
    }

    fn check(&self, net: &NetworkRules, eps: &[EndpointRules]) -> Result<Vec<Drift>> {
        plan::validate_network(net)?;
        let want = Want {
            rules: true,
            elements: all_sets(),
            probes: None,
        };
        let mut drifts = self.transact(
            &format!("check firewall of network {}", net.network_id),
            want,
            Mode::DryRun,
            |p| {
                p.ensure_skeleton()?;
                p.ensure_network(net, true)?;
                p.ensure_coexistence(net)?;
                for ep in eps.iter().filter(|e| e.network_id == net.network_id) {
                    p.ensure_endpoint(net, ep, true, true)?;
                }
                Ok(())
            },
        )?;
        if !net.internal {
            drifts.extend(sysctl::check_route_localnet(&self.ns, &net.interface)?);
        }
        Ok(drifts)
    }
}
