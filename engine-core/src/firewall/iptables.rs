//! The iptables fallback: [`IptablesFirewall`], for hosts without nftables.
//!
//! Each operation reads the current rules once (`iptables-save`, and `ip6tables-save`), works
//! out the difference with what it wants, and applies it with ONE `iptables-restore --noflush`
//! per family: all of it or nothing. Only netloom's own chains are created, and only lines
//! netloom wrote (every one carries a `netloom` / `net=<id> …` comment) are ever deleted; other
//! tools' rules are never flushed or reordered. Jumps into netloom's chains are appended to the
//! built-in chains, after Docker's.
//!
//! Chains: raw `NETLOOM-GUARD` (loopback destinations arriving from outside, moby#45610),
//! nat `NETLOOM-DNAT` (one rule per published port or identity range) and `NETLOOM-POST`
//! (masquerade, hairpin, localhost publishing), filter `NETLOOM-FORWARD` (per-network blocks)
//! and `NETLOOM-ISOLATION` (one drop rule per pair of networks that must not talk, plus one
//! no-op marker rule per network recording its bridge and isolation flag for later pairs).
//!
//! Unlike the nftables backend, iptables has no sets, so publishing is one rule per port and
//! each operation reads the whole table back; it is the fallback, not the fast path.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ipnetwork::IpNetwork;
use tracing::{debug, info, warn};

use super::ir::{ElemData, Element, IpFamily, Value};
use super::plan::{self, Claims, DnatMap, Holding};
use super::{sysctl, EndpointRules, Firewaller, NetworkRules};
use crate::error::{Error, Result};
use crate::model::{Drift, Proto};
use crate::netns::Netns;

const GUARD: &str = "NETLOOM-GUARD";
const DNAT: &str = "NETLOOM-DNAT";
const POST: &str = "NETLOOM-POST";
const FORWARD: &str = "NETLOOM-FORWARD";
const ISOLATION: &str = "NETLOOM-ISOLATION";

/// netloom's chains by table, in the order they are declared.
const CHAINS: [(&str, &str); 5] = [
    ("raw", GUARD),
    ("nat", DNAT),
    ("nat", POST),
    ("filter", ISOLATION),
    ("filter", FORWARD),
];

/// One rule: `-A <chain> <spec>` in `table`, spec in iptables-save's canonical form so what
/// was written can be recognised when read back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Line {
    pub table: &'static str,
    pub chain: String,
    pub spec: String,
}

impl Line {
    fn new(table: &'static str, chain: &str, spec: String) -> Line {
        Line {
            table,
            chain: chain.to_string(),
            spec,
        }
    }

    /// The comment the rule carries.
    pub fn comment(&self) -> Option<String> {
        let toks = tokens(&self.spec);
        toks.iter()
            .position(|t| t == "--comment")
            .and_then(|i| toks.get(i + 1).cloned())
    }
}

/// `-m comment --comment X` as iptables-save prints it (quoted only when it has a space).
fn comment(c: &str) -> String {
    if c.contains(' ') {
        format!("-m comment --comment \"{c}\"")
    } else {
        format!("-m comment --comment {c}")
    }
}

fn net_tag(net: &str, what: &str) -> String {
    format!("{}{what}", plan::network_rule_prefix(net))
}

fn host_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn subnet_text(s: &IpNetwork) -> String {
    format!("{}/{}", s.network(), s.prefix())
}

/// The rules every netloom host has (jumps into netloom's chains, the guard, the isolation
/// chain's exemption for established and published traffic).
pub fn base_lines(fam: IpFamily) -> Vec<Line> {
    let lo = if fam == IpFamily::V4 {
        "127.0.0.0/8"
    } else {
        "::1/128"
    };
    let tag = comment("netloom");
    vec![
        Line::new("raw", "PREROUTING", format!("{tag} -j {GUARD}")),
        Line::new(
            "raw",
            GUARD,
            format!("-d {lo} ! -i lo {} -j DROP", comment("netloom guard")),
        ),
        Line::new(
            "nat",
            "PREROUTING",
            format!("-m addrtype --dst-type LOCAL {tag} -j {DNAT}"),
        ),
        Line::new(
            "nat",
            "OUTPUT",
            format!("-m addrtype --dst-type LOCAL {tag} -j {DNAT}"),
        ),
        Line::new("nat", "POSTROUTING", format!("{tag} -j {POST}")),
        Line::new("filter", "FORWARD", format!("{tag} -j {FORWARD}")),
        Line::new("filter", FORWARD, format!("{tag} -j {ISOLATION}")),
        Line::new(
            "filter",
            ISOLATION,
            format!(
                "-m conntrack --ctstate RELATED,ESTABLISHED,DNAT {} -j RETURN",
                comment("netloom exempt")
            ),
        ),
    ]
}

/// What another network contributes to isolation: (id, bridge, isolate).
pub type Peer = (String, String, bool);

/// The marker recording a network's bridge and isolation flag (a rule without target).
fn marker(n: &NetworkRules) -> Line {
    let flag = if n.isolate { "yes" } else { "no" };
    Line::new(
        "filter",
        ISOLATION,
        format!(
            "-i {} {}",
            n.interface,
            comment(&net_tag(&n.network_id, &format!("isolate={flag}")))
        ),
    )
}

/// One network's rules for one family, given the other networks (`peers`).
pub fn network_lines(n: &NetworkRules, fam: IpFamily, peers: &[Peer]) -> Vec<Line> {
    let b = &n.interface;
    let t = |w: &str| comment(&net_tag(&n.network_id, w));
    let mut out = vec![Line::new(
        "filter",
        FORWARD,
        format!(
            "-o {b} -m conntrack --ctstate RELATED,ESTABLISHED {} -j ACCEPT",
            t("established")
        ),
    )];
    if !n.internal {
        out.push(Line::new(
            "filter",
            FORWARD,
            format!(
                "-o {b} -m conntrack --ctstate DNAT {} -j ACCEPT",
                t("published")
            ),
        ));
    }
    out.push(Line::new(
        "filter",
        FORWARD,
        format!(
            "-i {b} -o {b} {} -j {}",
            t("icc"),
            if n.icc { "ACCEPT" } else { "DROP" }
        ),
    ));
    if n.internal {
        out.push(Line::new(
            "filter",
            FORWARD,
            format!("-i {b} {} -j DROP", t("internal")),
        ));
        out.push(Line::new(
            "filter",
            FORWARD,
            format!("-o {b} {} -j DROP", t("internal-in")),
        ));
    } else {
        out.push(Line::new(
            "filter",
            FORWARD,
            format!("-i {b} {} -j ACCEPT", t("outbound")),
        ));
        if !n.open_inbound {
            out.push(Line::new(
                "filter",
                FORWARD,
                format!("-o {b} {} -j DROP", t("unpublished")),
            ));
        }
    }
    for (pid, pbr, piso) in peers {
        if pid == plan::net_part(&n.network_id) || pbr == b || !(n.isolate || *piso) {
            continue;
        }
        out.push(Line::new(
            "filter",
            ISOLATION,
            format!(
                "-i {b} -o {pbr} {} -j DROP",
                t(&format!("peer={pid} isolate"))
            ),
        ));
        out.push(Line::new(
            "filter",
            ISOLATION,
            format!(
                "-i {pbr} -o {b} {} -j DROP",
                t(&format!("peer={pid} isolate-in"))
            ),
        ));
    }
    out.push(marker(n));
    for s in n
        .subnets
        .iter()
        .filter(|s| s.is_ipv4() == (fam == IpFamily::V4))
    {
        let s = subnet_text(s);
        out.push(Line::new(
            "nat",
            POST,
            format!(
                "-s {s} -o {b} -m conntrack --ctstate DNAT {} -j MASQUERADE",
                t("hairpin")
            ),
        ));
        if n.masquerade && !n.internal {
            out.push(Line::new(
                "nat",
                POST,
                format!("-s {s} ! -o {b} {} -j MASQUERADE", t("masquerade")),
            ));
        }
    }
    if fam == IpFamily::V4 && !n.internal {
        out.push(Line::new(
            "nat",
            POST,
            format!("-s 127.0.0.0/8 -o {b} {} -j MASQUERADE", t("localhost")),
        ));
    }
    out
}

/// One endpoint's DNAT rules for one family, derived from the same elements the nftables
/// backend programs (so both backends publish exactly the same things).
pub fn endpoint_lines(n: &NetworkRules, ep: &EndpointRules, fam: IpFamily) -> Result<Vec<Line>> {
    let mut out = Vec::new();
    for (map, e) in plan::endpoint_elements(n, ep)? {
        let Some(m) = DnatMap::by_name(map) else {
            continue;
        };
        if m.family != fam {
            continue;
        }
        let Some(h) = Holding::of(m, &e) else {
            continue;
        };
        let dst = if h.addr_lo == h.addr_hi {
            format!("-d {} ", host_net(h.addr_lo))
        } else {
            String::new()
        };
        let ports = if h.port_lo == h.port_hi {
            h.port_lo.to_string()
        } else {
            format!("{}:{}", h.port_lo, h.port_hi)
        };
        let to = match &e.data {
            Some(ElemData::Values(v)) => match v.as_slice() {
                [Value::V4(a), Value::Port(p)] => format!("{a}:{p}"),
                [Value::V6(a), Value::Port(p)] => format!("[{a}]:{p}"),
                [Value::V4(a)] => a.to_string(),
                [Value::V6(a)] => a.to_string(),
                _ => continue,
            },
            _ => continue,
        };
        out.push(Line::new(
            "nat",
            DNAT,
            format!(
                "{dst}-p {p} -m {p} --dport {ports} {} -j DNAT --to-destination {to}",
                comment(&e.comment),
                p = h.proto
            ),
        ));
    }
    Ok(out)
}

/// Splits an iptables-save rule into arguments, honouring double quotes.
fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The host-port claim of a NETLOOM-DNAT rule read back.
fn holding_of(l: &Line, fam: IpFamily) -> Option<Holding> {
    let t = tokens(&l.spec);
    let arg = |k: &str| {
        t.iter()
            .position(|x| x == k)
            .and_then(|i| t.get(i + 1))
            .cloned()
    };
    let proto: Proto = arg("-p")?.parse().ok()?;
    let (lo, hi) = match arg("--dport")?.split_once(':') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = arg("--dport")?.parse().ok()?;
            (p, p)
        }
    };
    let tag = arg("--comment").unwrap_or_default();
    let map = DnatMap::by_name(if fam == IpFamily::V4 {
        "dnat4_any"
    } else {
        "dnat6_any"
    })?;
    let (key, key_end) = match arg("-d") {
        Some(d) => {
            let ip: IpAddr = d.split('/').next()?.parse().ok()?;
            let v = match ip {
                IpAddr::V4(a) => Value::V4(a),
                IpAddr::V6(a) => Value::V6(a),
            };
            (
                vec![Value::L4(proto), v.clone(), Value::Port(lo)],
                vec![Value::L4(proto), v, Value::Port(hi)],
            )
        }
        None => (
            vec![Value::L4(proto), Value::Port(lo)],
            vec![Value::L4(proto), Value::Port(hi)],
        ),
    };
    Holding::of(
        map,
        &Element {
            key,
            key_end: Some(key_end),
            data: None,
            comment: tag,
        },
    )
}

/// What iptables-save shows of one family.
#[derive(Debug, Default)]
struct Saved {
    /// (table, chain) pairs that exist.
    chains: HashSet<(String, String)>,
    lines: Vec<Line>,
    /// NETLOOM-DNAT lines by tag (indexes into `lines`), so per-endpoint work stays cheap.
    dnat_by_tag: std::collections::HashMap<String, Vec<usize>>,
}

impl Saved {
    fn parse(text: &str) -> Saved {
        let mut s = Saved::default();
        let mut table: &'static str = "";
        for l in text.lines() {
            if let Some(t) = l.strip_prefix('*') {
                table = match t.trim() {
                    "raw" => "raw",
                    "nat" => "nat",
                    "filter" => "filter",
                    "mangle" => "mangle",
                    _ => "other",
                };
            } else if let Some(c) = l.strip_prefix(':') {
                if let Some(name) = c.split_whitespace().next() {
                    s.chains.insert((table.to_string(), name.to_string()));
                }
            } else if let Some(r) = l.strip_prefix("-A ") {
                if let Some((chain, spec)) = r.split_once(' ') {
                    let line = Line::new(table, chain, spec.to_string());
                    if chain == DNAT {
                        if let Some(c) = line.comment() {
                            s.dnat_by_tag.entry(c).or_default().push(s.lines.len());
                        }
                    }
                    s.lines.push(line);
                }
            }
        }
        s
    }

    fn dnat_tagged(&self, tag: &str) -> Vec<&Line> {
        self.dnat_by_tag
            .get(tag)
            .map(|v| v.iter().filter_map(|i| self.lines.get(*i)).collect())
            .unwrap_or_default()
    }

    fn has(&self, l: &Line) -> bool {
        self.lines.contains(l)
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chains
            .contains(&(table.to_string(), chain.to_string()))
    }

    /// Lines netloom wrote for network `net` (its own block, pairs naming it, endpoints).
    fn of_network(&self, net: &str) -> Vec<&Line> {
        let prefix = plan::network_rule_prefix(net);
        let peer = format!(" peer={} ", plan::net_part(net));
        self.lines
            .iter()
            .filter(|l| {
                l.comment()
                    .is_some_and(|c| c.starts_with(&prefix) || c.contains(&peer))
            })
            .collect()
    }

    /// Other networks, from their markers.
    fn peers(&self) -> Vec<Peer> {
        let mut out = Vec::new();
        for l in self
            .lines
            .iter()
            .filter(|l| l.table == "filter" && l.chain == ISOLATION)
        {
            let Some(c) = l.comment() else { continue };
            let Some(rest) = c.strip_prefix("net=") else {
                continue;
            };
            let Some((id, flag)) = rest.split_once(" isolate=") else {
                continue;
            };
            let t = tokens(&l.spec);
            if let Some(br) = t.iter().position(|x| x == "-i").and_then(|i| t.get(i + 1)) {
                out.push((id.to_string(), br.clone(), flag == "yes"));
            }
        }
        out
    }
}

/// Lines to send to iptables-restore for one family, grouped by table.
#[derive(Default)]
struct Restore {
    by_table: BTreeMap<&'static str, Vec<String>>,
}

impl Restore {
    fn push(&mut self, table: &'static str, line: String) {
        self.by_table.entry(table).or_default().push(line);
    }
    fn add(&mut self, l: &Line) {
        self.push(l.table, format!("-A {} {}", l.chain, l.spec));
    }
    fn insert_first(&mut self, l: &Line) {
        self.push(l.table, format!("-I {} 1 {}", l.chain, l.spec));
    }
    fn del(&mut self, l: &Line) {
        self.push(l.table, format!("-D {} {}", l.chain, l.spec));
    }
    fn is_empty(&self) -> bool {
        self.by_table.values().all(|v| v.is_empty())
    }
    fn text(&self) -> String {
        let mut s = String::new();
        for (t, lines) in &self.by_table {
            if lines.is_empty() {
                continue;
            }
            s.push_str(&format!("*{t}\n"));
            for l in lines {
                s.push_str(l);
                s.push('\n');
            }
            s.push_str("COMMIT\n");
        }
        s
    }
}

/// The cross-process lock of the iptables backend.
const LOCK_FILE: &str = "/run/lock/netloom-iptables.lock";

/// An exclusive flock, released when dropped (closing the file releases it, also when the
/// process dies).
struct FileLock {
    /// Held only for the lock it carries.
    _file: std::fs::File,
}

impl FileLock {
    fn take(path: &std::path::Path) -> Result<FileLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                format!("lock {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(FileLock { _file: f })
    }
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileLock")
    }
}

/// netloom's iptables firewall, bound to one network namespace.
#[derive(Debug)]
pub struct IptablesFirewall {
    ns: Netns,
    /// Whether ip6tables works here (IPv6 rules are skipped, with a warning, when not).
    v6: bool,
    /// Serialises this process's read-modify-write cycles (iptables' own lock covers the write).
    lock: Mutex<()>,
}

impl IptablesFirewall {
    /// A firewall for the namespace the calling thread is in.
    pub fn new() -> Result<Self> {
        Self::in_netns(Netns::current()?)
    }

    /// A firewall for `ns`: iptables runs inside it.
    pub fn in_netns(ns: Netns) -> Result<Self> {
        let fw = IptablesFirewall {
            ns,
            v6: false,
            lock: Mutex::new(()),
        };
        fw.exec("iptables-save", &["-t", "filter"], None)
            .map_err(|e| Error::Unsupported(format!("iptables is not usable: {e}")))?;
        let v6 = fw.exec("ip6tables-save", &["-t", "filter"], None).is_ok();
        if !v6 {
            warn!("ip6tables is not usable; IPv6 traffic will not be published or isolated");
        }
        Ok(IptablesFirewall { v6, ..fw })
    }

    /// Serialises read-check-write cycles: within this process (mutex) and across processes
    /// (an flock'd file), so two concurrent publishers cannot both see a port free. iptables'
    /// own lock only covers each single command.
    fn lock(&self) -> Result<(std::sync::MutexGuard<'_, ()>, FileLock)> {
        let g = self
            .lock
            .lock()
            .map_err(|_| Error::Internal("iptables lock poisoned".into()))?;
        Ok((g, FileLock::take(std::path::Path::new(LOCK_FILE))?))
    }

    fn families(&self) -> Vec<IpFamily> {
        if self.v6 {
            vec![IpFamily::V4, IpFamily::V6]
        } else {
            vec![IpFamily::V4]
        }
    }

    fn exec(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.ns.command(&mut cmd)?;
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("run {bin}"), e))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| Error::io(format!("write to {bin}"), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("wait for {bin}"), e))?;
        if !out.status.success() {
            return Err(Error::Firewall(format!(
                "{bin} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn save(&self, fam: IpFamily) -> Result<Saved> {
        let bin = if fam == IpFamily::V4 {
            "iptables-save"
        } else {
            "ip6tables-save"
        };
        Ok(Saved::parse(&self.exec(bin, &[], None)?))
    }

    fn restore(&self, fam: IpFamily, r: &Restore, what: &str) -> Result<()> {
        if r.is_empty() {
            return Ok(());
        }
        let bin = if fam == IpFamily::V4 {
            "iptables-restore"
        } else {
            "ip6tables-restore"
        };
        let text = r.text();
        debug!(operation = what, input = %text, "{bin}");
        self.exec(bin, &["--noflush", "-w"], Some(&text))
            .map_err(|e| e.context(what.to_string()))?;
        Ok(())
    }

    /// Adds what is missing of the chains and base rules.
    fn ensure_base(&self, fam: IpFamily, s: &Saved, r: &mut Restore, drifts: &mut Vec<Drift>) {
        for (t, c) in CHAINS {
            if !s.has_chain(t, c) {
                drifts.push(drift(
                    format!("{} chain {t} {c}", family_name(fam)),
                    "missing",
                ));
                r.push(t, format!(":{c} - [0:0]"));
            }
        }
        for l in base_lines(fam) {
            if !s.has(&l) {
                drifts.push(drift(
                    format!("{} rule {} {}", family_name(fam), l.table, l.chain),
                    format!("missing: {}", l.spec),
                ));
                // The isolation jump must come before the per-network accepts.
                if l.chain == FORWARD {
                    r.insert_first(&l);
                } else {
                    r.add(&l);
                }
            }
        }
    }

    /// Makes the network's block exactly `want`: when anything differs, the block is deleted
    /// and written again (its rules depend on their order).
    fn ensure_network(
        &self,
        fam: IpFamily,
        n: &NetworkRules,
        s: &Saved,
        r: &mut Restore,
        drifts: &mut Vec<Drift>,
    ) {
        let want = network_lines(n, fam, &s.peers());
        let ep_prefix = format!("{}ep=", plan::network_rule_prefix(&n.network_id));
        let have: Vec<&Line> = s
            .of_network(&n.network_id)
            .into_iter()
            .filter(|l| !l.comment().is_some_and(|c| c.starts_with(&ep_prefix)))
            .collect();
        let same = have.len() == want.len() && want.iter().all(|w| have.contains(&w));
        if same {
            return;
        }
        for w in want.iter().filter(|w| !have.contains(w)) {
            drifts.push(drift(
                format!("{} rule {} {}", family_name(fam), w.table, w.chain),
                format!("missing: {}", w.spec),
            ));
        }
        for l in have {
            r.del(l);
        }
        for l in &want {
            r.add(l);
        }
    }

    fn ensure_endpoint(
        fam: IpFamily,
        n: &NetworkRules,
        ep: &EndpointRules,
        s: &Saved,
        claims: &mut Claims,
        r: &mut Restore,
        reapplying: bool,
    ) -> Result<Vec<Drift>> {
        let want = endpoint_lines(n, ep, fam)?;
        let tag = plan::tag_endpoint(&n.network_id, &ep.owner);
        for w in &want {
            let Some(h) = holding_of(w, fam) else {
                continue;
            };
            if let Some(o) = claims.conflict(&h, &tag) {
                let msg = format!(
                    "host port {} is already published by {}",
                    h.describe(),
                    plan::describe_tag(&o.tag)
                );
                if reapplying {
                    warn!(endpoint = %ep.owner, "{msg}; not restoring it");
                    return Ok(vec![drift(
                        format!("published port {} of {}", h.describe(), ep.owner),
                        msg,
                    )]);
                }
                return Err(Error::Conflict(msg));
            }
        }
        let mut drifts = Vec::new();
        let have = s.dnat_tagged(&tag);
        for w in &want {
            if !have.contains(&w) {
                drifts.push(drift(
                    format!("{} rule nat {DNAT}", family_name(fam)),
                    format!("missing: {}", w.spec),
                ));
                r.add(w);
                if let Some(h) = holding_of(w, fam) {
                    claims.insert(h);
                }
            }
        }
        if !reapplying {
            for l in have.into_iter().filter(|l| !want.contains(l)) {
                r.del(l);
            }
        }
        Ok(drifts)
    }
}

fn family_name(f: IpFamily) -> &'static str {
    if f == IpFamily::V4 {
        "iptables"
    } else {
        "ip6tables"
    }
}

fn drift(subject: impl Into<String>, problem: impl Into<String>) -> Drift {
    Drift {
        subject: subject.into(),
        problem: problem.into(),
    }
}

fn claims_of(s: &Saved, fam: IpFamily) -> Claims {
    let mut c = Claims::default();
    for l in s.lines.iter().filter(|l| l.chain == DNAT) {
        if let Some(h) = holding_of(l, fam) {
            c.insert(h);
        }
    }
    c
}

impl Firewaller for IptablesFirewall {
    fn backend(&self) -> &'static str {
        "iptables"
    }

    fn setup_network(&self, net: &NetworkRules) -> Result<()> {
        plan::validate_network(net)?;
        let _g = self.lock()?;
        for fam in self.families() {
            let s = self.save(fam)?;
            let mut r = Restore::default();
            let mut d = Vec::new();
            self.ensure_base(fam, &s, &mut r, &mut d);
            self.ensure_network(fam, net, &s, &mut r, &mut d);
            self.restore(
                fam,
                &r,
                &format!("set up firewall for network {}", net.network_id),
            )?;
        }
        if !net.internal {
            sysctl::enable_route_localnet(&self.ns, &net.interface)?;
        }
        info!(network = %net.network_id, bridge = %net.interface, "iptables rules in place");
        Ok(())
    }

    fn teardown_network(&self, network_id: &str) -> Result<()> {
        let _g = self.lock()?;
        for fam in self.families() {
            let s = self.save(fam)?;
            let mut r = Restore::default();
            for l in s.of_network(network_id) {
                r.del(l);
            }
            let others = s.peers().iter().any(|(id, _, _)| id != network_id);
            if !others {
                // The last network: remove the base rules and netloom's chains too.
                for l in base_lines(fam).iter().filter(|l| s.has(l)) {
                    r.del(l);
                }
                // Flush all first: a chain can only go once nothing jumps to it.
                for (t, c) in CHAINS.iter().filter(|(t, c)| s.has_chain(t, c)) {
                    r.push(t, format!("-F {c}"));
                }
                for (t, c) in CHAINS.iter().filter(|(t, c)| s.has_chain(t, c)) {
                    r.push(t, format!("-X {c}"));
                }
            }
            self.restore(fam, &r, &format!("remove firewall of network {network_id}"))?;
        }
        info!(network = %network_id, "iptables rules removed");
        Ok(())
    }

    fn add_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        plan::validate_network(net)?;
        let _g = self.lock()?;
        // Check both families before writing either, so a conflict changes nothing.
        let mut work = Vec::new();
        for fam in self.families() {
            let s = self.save(fam)?;
            let mut claims = claims_of(&s, fam);
            let mut r = Restore::default();
            if !s.has_chain("nat", DNAT) {
                return Err(Error::NotFound(format!(
                    "network {} has no iptables rules: set it up (or reapply) first",
                    net.network_id
                )));
            }
            Self::ensure_endpoint(fam, net, ep, &s, &mut claims, &mut r, false)?;
            work.push((fam, r));
        }
        for (fam, r) in work {
            self.restore(
                fam,
                &r,
                &format!(
                    "publish ports of {} on network {}",
                    ep.owner, net.network_id
                ),
            )?;
        }
        Ok(())
    }

    fn del_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        plan::validate_endpoint(net, ep)?;
        let _g = self.lock()?;
        let tag = plan::tag_endpoint(&net.network_id, &ep.owner);
        for fam in self.families() {
            let s = self.save(fam)?;
            let mut r = Restore::default();
            for l in s.dnat_tagged(&tag) {
                r.del(l);
            }
            self.restore(
                fam,
                &r,
                &format!(
                    "unpublish ports of {} on network {}",
                    ep.owner, net.network_id
                ),
            )?;
        }
        Ok(())
    }

    fn reapply(&self, nets: &[NetworkRules], eps: &[EndpointRules]) -> Result<Vec<Drift>> {
        let _g = self.lock()?;
        let mut drifts = Vec::new();
        for fam in self.families() {
            let s = self.save(fam)?;
            let mut r = Restore::default();
            self.ensure_base(fam, &s, &mut r, &mut drifts);
            for n in nets {
                plan::validate_network(n)?;
                self.ensure_network(fam, n, &s, &mut r, &mut drifts);
            }
            let mut claims = claims_of(&s, fam);
            for ep in eps {
                let Some(n) = nets.iter().find(|n| n.network_id == ep.network_id) else {
                    continue;
                };
                drifts.extend(Self::ensure_endpoint(
                    fam,
                    n,
                    ep,
                    &s,
                    &mut claims,
                    &mut r,
                    true,
                )?);
            }
            self.restore(fam, &r, "reapply the firewall")?;
        }
        for n in nets.iter().filter(|n| !n.internal) {
            sysctl::enable_route_localnet(&self.ns, &n.interface)?;
        }
        Ok(drifts)
    }

    fn check(&self, net: &NetworkRules, eps: &[EndpointRules]) -> Result<Vec<Drift>> {
        plan::validate_network(net)?;
        let _g = self.lock()?;
        let mut drifts = Vec::new();
        for fam in self.families() {
            let s = self.save(fam)?;
            let mut r = Restore::default();
            self.ensure_base(fam, &s, &mut r, &mut drifts);
            self.ensure_network(fam, net, &s, &mut r, &mut drifts);
            let mut claims = claims_of(&s, fam);
            for ep in eps.iter().filter(|e| e.network_id == net.network_id) {
                drifts.extend(Self::ensure_endpoint(
                    fam,
                    net,
                    ep,
                    &s,
                    &mut claims,
                    &mut r,
                    true,
                )?);
            }
        }
        if !net.internal {
            drifts.extend(sysctl::check_route_localnet(&self.ns, &net.interface)?);
        }
        Ok(drifts)
    }
}

/// The rules for a set of networks and endpoints as iptables-restore input (golden tests).
pub fn render(nets: &[NetworkRules], eps: &[EndpointRules]) -> Result<String> {
    let mut out = String::new();
    for fam in [IpFamily::V4, IpFamily::V6] {
        let peers: Vec<Peer> = nets
            .iter()
            .map(|n| (n.network_id.clone(), n.interface.clone(), n.isolate))
            .collect();
        let mut lines = base_lines(fam);
        for n in nets {
            plan::validate_network(n)?;
            lines.extend(network_lines(n, fam, &peers));
        }
        for ep in eps {
            let Some(n) = nets.iter().find(|n| n.network_id == ep.network_id) else {
                continue;
            };
            lines.extend(endpoint_lines(n, ep, fam)?);
        }
        out.push_str(&format!("# {}\n", family_name(fam)));
        let mut r = Restore::default();
        for (t, c) in CHAINS {
            r.push(t, format!(":{c} - [0:0]"));
        }
        for l in &lines {
            r.add(l);
        }
        out.push_str(&r.text());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_two_endpoints_three_mappings() {
        let (nets, eps) = crate::firewall::plan::tests::golden_case();
        crate::firewall::golden::check(
            "iptables_network_2eps_3maps.golden",
            &render(&nets, &eps).unwrap(),
        );
    }

    #[test]
    fn saved_rules_round_trip() {
        let (nets, eps) = crate::firewall::plan::tests::golden_case();
        let text = render(&nets, &eps).unwrap();
        let v4 = text.split("# ip6tables").next().unwrap();
        let s = Saved::parse(v4);
        assert_eq!(
            s.peers(),
            vec![("web".to_string(), "nl-web0".to_string(), true)]
        );
        let claims = claims_of(&s, IpFamily::V4);
        let h = holding_of(
            &endpoint_lines(&nets[0], &eps[1], IpFamily::V4).unwrap()[0],
            IpFamily::V4,
        )
        .unwrap();
        assert!(claims.conflict(&h, "someone else").is_some());
        assert_eq!(
            tokens(r#"-m comment --comment "net=a ep=b" -j X"#),
            vec!["-m", "comment", "--comment", "net=a ep=b", "-j", "X"]
        );
    }
}
