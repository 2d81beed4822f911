//! `netlab doctor`: checks of the host's container networking, each with a verdict, what was
//! found and how to fix it. Read-only: sysctls, netlink dumps, `nft -j list ruleset` (or
//! `iptables-save`), and netloom's state store.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use engine_core::store::file::FileStore;
use engine_core::{Endpoint, Key, StateStore, StateStoreExt};
use serde::Serialize;

use crate::inventory::{Inventory, NsView};
use crate::render::col;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Info,
    Skip,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable id (`ip_forward`, `forward_policy`…), for scripts.
    pub id: &'static str,
    pub verdict: Verdict,
    /// One line: what was found.
    pub summary: String,
    /// The objects concerned, one per line.
    pub findings: Vec<String>,
    /// What to run or change; `None` when nothing needs fixing.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The worst verdict.
    pub verdict: Verdict,
}

/// Where the checks look.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: std::path::PathBuf,
    /// The proc sysctl root (tests may point elsewhere); `/proc/sys`.
    pub sysctl_root: std::path::PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            state_dir: engine_core::store::default_state_dir(),
            sysctl_root: "/proc/sys".into(),
        }
    }
}

pub(crate) fn check(id: &'static str, verdict: Verdict, summary: impl Into<String>) -> Check {
    Check {
        id,
        verdict,
        summary: summary.into(),
        findings: Vec::new(),
        fix: None,
    }
}

/// Runs every check against `inv` (whose host entry is the namespace netlab runs in).
pub fn run(inv: &Inventory, opts: &Options) -> Report {
    let host = inv.namespaces.iter().find(|n| n.host);
    let sys = |k: &str| {
        std::fs::read_to_string(opts.sysctl_root.join(k.replace('.', "/")))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let fw = Firewall::read();
    let rules = crate::nft::Ruleset::read(None).ok();
    let mut checks = vec![
        ip_forward(host, &sys),
        br_netfilter(&sys, &fw),
        forward_policy(host, &fw),
        rp_filter(host, &sys),
        mtu(inv, host),
        leaked_veths(host),
        ipam_leases(&opts.state_dir),
        bridge_ports(host),
        crate::overlay::vxlan_csum(inv, rules.as_ref().unwrap_or(&Default::default())),
        crate::overlay::overlay_mtu(inv),
        crate::overlay::route_conflicts(host),
        crate::overlay::missing_nat(&opts.state_dir, rules.as_ref()),
        crate::ports::published_ports(&opts.state_dir),
    ];
    checks.sort_by_key(|c| std::cmp::Reverse(c.verdict));
    let verdict = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Ok);
    Report { checks, verdict }
}

/// Bridges of the host that have at least one port.
fn bridges(host: &NsView) -> Vec<(&str, usize)> {
    host.interfaces
        .iter()
        .filter(|i| i.kind == "bridge")
        .map(|b| {
            let ports = host
                .interfaces
                .iter()
                .filter(|i| i.master.as_deref() == Some(b.name.as_str()))
                .count();
            (b.name.as_str(), ports)
        })
        .collect()
}

fn ip_forward(host: Option<&NsView>, sys: &dyn Fn(&str) -> Option<String>) -> Check {
    let Some(v) = sys("net.ipv4.ip_forward") else {
        return check(
            "ip_forward",
            Verdict::Skip,
            "net.ipv4.ip_forward cannot be read",
        );
    };
    if v == "1" {
        return check("ip_forward", Verdict::Ok, "net.ipv4.ip_forward = 1");
    }
    let has_bridges = host.is_some_and(|h| bridges(h).iter().any(|(_, p)| *p > 0));
    let mut c = check(
        "ip_forward",
        if has_bridges {
            Verdict::Fail
        } else {
            Verdict::Info
        },
        "net.ipv4.ip_forward = 0: the host routes nothing between interfaces, so containers \
         reach only their own bridge",
    );
    c.fix = Some("sysctl -w net.ipv4.ip_forward=1 (persist in /etc/sysctl.d/)".into());
    c
}

fn br_netfilter(sys: &dyn Fn(&str) -> Option<String>, fw: &Firewall) -> Check {
    let Some(v) = sys("net.bridge.bridge-nf-call-iptables") else {
        return check(
            "br_netfilter",
            Verdict::Info,
            "br_netfilter is not loaded: traffic between containers on one bridge skips \
             iptables/nft (needed only for Kubernetes-style service NAT on the bridge)",
        );
    };
    let v6 = sys("net.bridge.bridge-nf-call-ip6tables").unwrap_or_default();
    let summary = format!("br_netfilter loaded: bridge-nf-call-iptables = {v}, ip6tables = {v6}");
    if v == "1" && !fw.forward_drop.is_empty() {
        let mut c = check(
            "br_netfilter",
            Verdict::Warn,
            format!("{summary}; bridged traffic goes through FORWARD, whose policy drops"),
        );
        c.findings = fw.forward_drop.clone();
        c.fix = Some(
            "accept bridge traffic in FORWARD (see forward_policy), or \
             sysctl -w net.bridge.bridge-nf-call-iptables=0 if nothing needs it"
                .into(),
        );
        return c;
    }
    check("br_netfilter", Verdict::Ok, summary)
}

/// What the firewall looks like, as far as the checks need it.
#[derive(Debug)]
struct Firewall {
    /// How it was read (`nft`, `iptables-save`), or why it could not be.
    source: Result<&'static str, String>,
    /// "table ip filter chain FORWARD (policy drop)" for each forward base chain that drops.
    forward_drop: Vec<String>,
    /// The text of every rule in those chains, to look for accepts of a bridge.
    forward_rules: Vec<String>,
}

impl Firewall {
    fn read() -> Firewall {
        match output("nft", &["-j", "list", "ruleset"]) {
            Ok(text) => Self::from_nft_json(&text),
            Err(nft) => match output("iptables-save", &["-t", "filter"]) {
                Ok(text) => Self::from_iptables_save(&text),
                Err(ipt) => Firewall {
                    source: Err(format!("{nft}; {ipt}")),
                    forward_drop: Vec::new(),
                    forward_rules: Vec::new(),
                },
            },
        }
    }

    /// `nft -j list ruleset` (iptables-nft rules show up here too).
    fn from_nft_json(text: &str) -> Firewall {
        let mut fw = Firewall {
            source: Ok("nft"),
            forward_drop: Vec::new(),
            forward_rules: Vec::new(),
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            fw.source = Err("nft printed something that is not JSON".into());
            return fw;
        };
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        let mut dropping: Vec<(String, String, String)> = Vec::new();
        for it in &items {
            let c = &it["chain"];
            if c["hook"] == "forward" && c["policy"] == "drop" {
                let (f, t, n) = (
                    str_of(&c["family"]),
                    str_of(&c["table"]),
                    str_of(&c["name"]),
                );
                fw.forward_drop
                    .push(format!("table {f} {t} chain {n} (policy drop)"));
                dropping.push((f, t, n));
            }
        }
        for it in &items {
            let r = &it["rule"];
            if r.is_null() {
                continue;
            }
            let key = (
                str_of(&r["family"]),
                str_of(&r["table"]),
                str_of(&r["chain"]),
            );
            // Rules in a dropping chain, or in chains it jumps to (Docker's DOCKER-USER etc.).
            if dropping.iter().any(|d| d.0 == key.0 && d.1 == key.1) {
                fw.forward_rules.push(r["expr"].to_string());
            }
        }
        fw
    }

    /// `iptables-save -t filter` (legacy iptables, or when nft is missing).
    fn from_iptables_save(text: &str) -> Firewall {
        let mut fw = Firewall {
            source: Ok("iptables-save"),
            forward_drop: Vec::new(),
            forward_rules: Vec::new(),
        };
        for l in text.lines() {
            if l.starts_with(":FORWARD DROP") {
                fw.forward_drop
                    .push("iptables filter FORWARD (policy DROP)".into());
            } else if l.starts_with("-A ") {
                fw.forward_rules.push(l.to_string());
            }
        }
        fw
    }

    /// Whether some forward rule accepts traffic of `bridge` (by interface name).
    fn accepts(&self, bridge: &str) -> bool {
        let quoted = format!("\"{bridge}\"");
        self.forward_rules.iter().any(|r| {
            let names_it = r.contains(&quoted) || r.contains(&format!(" {bridge} "));
            names_it && (r.contains("accept") || r.contains("ACCEPT"))
        })
    }
}

fn str_of(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Runs a read-only tool and returns its stdout.
fn output(bin: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn forward_policy(host: Option<&NsView>, fw: &Firewall) -> Check {
    if let Err(e) = &fw.source {
        return check(
            "forward_policy",
            Verdict::Skip,
            format!("cannot read the firewall: {e}"),
        );
    }
    if fw.forward_drop.is_empty() {
        return check(
            "forward_policy",
            Verdict::Ok,
            "no forward chain drops by default",
        );
    }
    let blocked: Vec<&str> = host
        .map(|h| {
            bridges(h)
                .into_iter()
                .filter(|(_, p)| *p > 0)
                .map(|(b, _)| b)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|b| !fw.accepts(b))
        .collect();
    if blocked.is_empty() {
        let mut c = check(
            "forward_policy",
            Verdict::Ok,
            "forward policy is drop, and every bridge with ports has an accept rule",
        );
        c.findings = fw.forward_drop.clone();
        return c;
    }
    let mut c = check(
        "forward_policy",
        Verdict::Fail,
        format!(
            "forward policy drops and no rule accepts bridge(s) {}: containers cannot reach \
             anything beyond their bridge (Docker sets FORWARD to DROP)",
            blocked.join(", ")
        ),
    );
    c.findings = fw.forward_drop.clone();
    let b = blocked[0];
    c.fix = Some(format!(
        "iptables -I FORWARD -i {b} -j ACCEPT && iptables -I FORWARD -o {b} -m conntrack \
         --ctstate RELATED,ESTABLISHED -j ACCEPT (Docker: the DOCKER-USER chain)"
    ));
    c
}

fn rp_filter(host: Option<&NsView>, sys: &dyn Fn(&str) -> Option<String>) -> Check {
    let Some(h) = host else {
        return check(
            "rp_filter",
            Verdict::Skip,
            "the host namespace could not be read",
        );
    };
    let all: u8 = sys("net.ipv4.conf.all.rp_filter")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut strict = Vec::new();
    for i in &h.interfaces {
        let own: u8 = sys(&format!("net.ipv4.conf.{}.rp_filter", i.name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // The kernel uses the larger of "all" and the interface's own value.
        if all.max(own) == 1 && matches!(i.kind.as_str(), "bridge" | "veth" | "vxlan" | "macvlan") {
            strict.push(format!(
                "{} ({}): rp_filter {} (all = {all})",
                i.name, i.kind, own
            ));
        }
    }
    if strict.is_empty() {
        return check(
            "rp_filter",
            Verdict::Ok,
            "no container-facing interface filters strictly",
        );
    }
    let mut c = check(
        "rp_filter",
        Verdict::Warn,
        "strict reverse-path filtering on container-facing interfaces: packets whose source is \
         routed out another way (multi-homed containers, overlays, policy routing) are dropped \
         silently",
    );
    c.findings = strict;
    c.fix = Some(
        "sysctl -w net.ipv4.conf.all.rp_filter=2 and net.ipv4.conf.<if>.rp_filter=2 (loose)".into(),
    );
    c
}

fn mtu(inv: &Inventory, host: Option<&NsView>) -> Check {
    let Some(h) = host else {
        return check("mtu", Verdict::Skip, "the host namespace could not be read");
    };
    let mut found = Vec::new();
    let uplink = h
        .default_routes
        .first()
        .and_then(|r| r.dev.as_deref())
        .and_then(|d| h.iface(d))
        .map(|i| (i.name.clone(), i.mtu));
    for i in h.interfaces.iter().filter(|i| i.kind == "veth") {
        if let Some(br) = i.master.as_deref().and_then(|m| h.iface(m)) {
            if br.mtu != i.mtu {
                found.push(format!(
                    "{} mtu {} on bridge {} mtu {}",
                    i.name, i.mtu, br.name, br.mtu
                ));
            }
        }
        let Some(p) = &i.peer else { continue };
        let far = inv
            .namespaces
            .iter()
            .find(|n| Some(n.inode) == p.inode)
            .and_then(|n| n.iface_by_index(p.index));
        if let Some(f) = far {
            if f.mtu != i.mtu {
                found.push(format!(
                    "{} mtu {} <-> {}:{} mtu {}",
                    i.name, i.mtu, p.netns, f.name, f.mtu
                ));
            }
            if let Some((up, umtu)) = &uplink {
                if f.mtu > *umtu {
                    found.push(format!(
                        "{}:{} mtu {} > uplink {up} mtu {umtu}: large packets to the outside need \
                         path MTU discovery",
                        p.netns, f.name, f.mtu
                    ));
                }
            }
        }
    }
    if found.is_empty() {
        return check(
            "mtu",
            Verdict::Ok,
            "veths, their peers and bridges agree on the MTU",
        );
    }
    let mut c = check(
        "mtu",
        Verdict::Warn,
        "MTU mismatches: frames larger than the smaller side are dropped without an error",
    );
    c.findings = found;
    c.fix = Some(
        "give both ends of each veth, its bridge and the container the same MTU \
                  (at most the uplink's, minus overlay overhead)"
            .into(),
    );
    c
}

fn leaked_veths(host: Option<&NsView>) -> Check {
    let Some(h) = host else {
        return check(
            "leaked_veths",
            Verdict::Skip,
            "the host namespace could not be read",
        );
    };
    let mut found = Vec::new();
    for i in h.interfaces.iter().filter(|i| i.kind == "veth") {
        match &i.peer {
            Some(p) if p.netns == "?" => found.push(format!(
                "{}: its peer (ifindex {}) is in a namespace no /run/netns entry, process or \
                 container holds",
                i.name, p.index
            )),
            // Both ends still here, down and on no bridge: a pair whose move into a container
            // never happened. Reported once, from the end whose name sorts first.
            Some(p)
                if p.inode == Some(h.inode)
                    && !i.up
                    && i.master.is_none()
                    && p.master.is_none()
                    && i.name.as_str() < p.ifname.as_deref().unwrap_or_default() =>
            {
                found.push(format!(
                    "{} <-> {}: both ends in the host, down, on no bridge",
                    i.name,
                    p.ifname.as_deref().unwrap_or("?")
                ))
            }
            _ => {}
        }
    }
    if found.is_empty() {
        return check(
            "leaked_veths",
            Verdict::Ok,
            "every host veth leads to a known namespace",
        );
    }
    let mut c = check(
        "leaked_veths",
        Verdict::Warn,
        format!("{} leaked veth(s)", found.len()),
    );
    c.fix = Some(format!(
        "ip link del {} (deleting one end removes the pair)",
        found[0]
            .split(':')
            .next()
            .unwrap_or_default()
            .split(' ')
            .next()
            .unwrap_or_default()
    ));
    c.findings = found;
    c
}

fn ipam_leases(dir: &Path) -> Check {
    if !dir.join("data").is_dir() {
        return check(
            "ipam_leases",
            Verdict::Skip,
            format!("no netloom state at {}", dir.display()),
        );
    }
    match stale_leases(dir) {
        Err(e) => check(
            "ipam_leases",
            Verdict::Skip,
            format!("cannot read {}: {e}", dir.display()),
        ),
        Ok((total, stale)) if stale.is_empty() => check(
            "ipam_leases",
            Verdict::Ok,
            format!("{total} lease(s), all held by live containers"),
        ),
        Ok((total, stale)) => {
            let mut c = check(
                "ipam_leases",
                Verdict::Warn,
                format!(
                    "{} of {total} lease(s) belong to containers that are gone",
                    stale.len()
                ),
            );
            c.findings = stale;
            c.fix =
                Some("run the runtime's CNI DEL for those containers, or netloom's IPAM gc".into());
            c
        }
    }
}

/// (number of leases, the stale ones described). A lease is stale when no endpoint record names
/// its container, or the endpoint's namespace no longer exists.
fn stale_leases(dir: &Path) -> engine_core::Result<(usize, Vec<String>)> {
    let store = FileStore::open(dir)?;
    let mut alive: HashMap<String, bool> = HashMap::new();
    for (_, _, ep) in store.list_json::<Endpoint>(&Key::new(["endpoints"]))? {
        let live = ep.sandbox.as_ref().is_none_or(|s| s.netns_path.exists());
        let e = alive.entry(ep.key.container_id.clone()).or_insert(false);
        *e = *e || live;
    }
    let mut total = 0;
    let mut stale = Vec::new();
    for (key, v) in store.list(&Key::new(["ipam", "leases"]))? {
        total += 1;
        let owner = String::from_utf8_lossy(&v.value).trim().to_string();
        let container = owner.split('/').next().unwrap_or_default();
        let segs = key.segments();
        let (pool, ip) = (
            segs.get(2).cloned().unwrap_or_default(),
            key.last().unwrap_or_default(),
        );
        match alive.get(container) {
            Some(true) => {}
            Some(false) => stale.push(format!(
                "{ip} in pool {pool}: owner {owner}, its namespace is gone"
            )),
            None => stale.push(format!(
                "{ip} in pool {pool}: owner {owner} has no endpoint record"
            )),
        }
    }
    Ok((total, stale))
}

/// The kernel refuses the 1025th port of a bridge (BR_MAX_PORTS).
const BR_MAX_PORTS: usize = 1024;

fn bridge_ports(host: Option<&NsView>) -> Check {
    let Some(h) = host else {
        return check(
            "bridge_ports",
            Verdict::Skip,
            "the host namespace could not be read",
        );
    };
    let counts: BTreeMap<&str, usize> = bridges(h).into_iter().collect();
    let near: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n * 10 >= BR_MAX_PORTS * 9)
        .map(|(b, n)| format!("{b}: {n} of {BR_MAX_PORTS} ports"))
        .collect();
    if near.is_empty() {
        let max = counts.values().max().copied().unwrap_or(0);
        return check(
            "bridge_ports",
            Verdict::Ok,
            format!("largest bridge has {max} of {BR_MAX_PORTS} ports"),
        );
    }
    let full = counts.values().any(|n| *n >= BR_MAX_PORTS);
    let mut c = check(
        "bridge_ports",
        if full { Verdict::Fail } else { Verdict::Warn },
        "bridges near the kernel's limit of 1024 ports: new containers will fail to attach",
    );
    c.findings = near;
    c.fix = Some("spread containers over several networks (bridges)".into());
    c
}

/// The report as text.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    for c in &r.checks {
        let v = format!("{:?}", c.verdict).to_ascii_uppercase();
        let _ = writeln!(out, "{} {} {}", col(&v, 5), col(c.id, 15), c.summary);
        for f in &c.findings {
            let _ = writeln!(out, "{:22}- {f}", "");
        }
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "{:22}fix: {fix}", "");
        }
    }
    let _ = writeln!(out, "verdict: {:?}", r.verdict);
    wrap(&out)
}

/// Long summaries are wrapped (not cut) at 100 columns, continuing under the text column.
fn wrap(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut rest = line.to_string();
        while rest.chars().count() > crate::render::WIDTH {
            let cut: String = rest.chars().take(crate::render::WIDTH).collect();
            let at = cut.rfind(' ').filter(|a| *a > 22).unwrap_or(cut.len());
            out.push_str(rest[..at].trim_end());
            out.push('\n');
            rest = format!("{:22}{}", "", rest[at..].trim_start());
        }
        out.push_str(&rest);
        out.push('\n');
    }
    out
}
