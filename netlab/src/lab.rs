//! `netlab lab up|down|ls`: small declarative labs (TOML) of namespaces, bridges, veth links,
//! addresses and routes, for teaching and for reproducing bugs.
//!
//! Every object `up` creates is recorded in `<state dir>/netlab/labs/<name>.json` right after
//! it is made, so `down` removes exactly what `up` made (also after a crash half-way), and
//! objects that were already there and are not the lab's are never touched: `up` refuses to
//! adopt them. `up` is idempotent: on a lab that is up it creates what is missing and
//! re-applies addresses, routes and settings. A file that does not validate creates nothing;
//! a first `up` that fails half-way removes what it made.
//!
//! Lab namespaces are named `<lab>-<name>` under /run/netns. `netns = "host"` (the default for
//! bridges) is the namespace netlab runs in.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use engine_core::netlink::{AddrOptions, BridgeSpec, Netlink, RouteSpec, VethSpec};
use engine_core::netns::{Netns, NETNS_RUN_DIR};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The namespace netlab runs in, as a lab file names it.
pub const HOST: &str = "host";

/// A lab file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    pub name: String,
    #[serde(default)]
    pub namespaces: Vec<NsDef>,
    #[serde(default)]
    pub bridges: Vec<BridgeDef>,
    #[serde(default)]
    pub links: Vec<LinkDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsDef {
    pub name: String,
    /// net.ipv4.ip_forward and net.ipv6.conf.all.forwarding (a router).
    #[serde(default)]
    pub forwarding: bool,
    #[serde(default)]
    pub routes: Vec<RouteDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    /// `default` or a network (`10.2.0.0/24`).
    pub to: String,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeDef {
    pub name: String,
    #[serde(default = "host")]
    pub netns: String,
    #[serde(default)]
    pub addresses: Vec<IpNetwork>,
    pub mtu: Option<u32>,
}

fn host() -> String {
    HOST.to_string()
}

/// A veth pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkDef {
    pub a: EndDef,
    pub b: EndDef,
    /// Both ends' MTU (an end's own `mtu` wins).
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndDef {
    pub netns: String,
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IpNetwork>,
    /// A bridge in the same namespace this end becomes a port of.
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
}

/// What `up` recorded: exactly what `down` removes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub file: Option<PathBuf>,
    /// Full names under /run/netns.
    pub namespaces: Vec<String>,
    /// Links created outside the lab's namespaces (in the host), as (netns, name); links inside
    /// lab namespaces go with the namespace.
    pub links: Vec<(String, String)>,
}

/// What `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub name: String,
    pub created: Vec<String>,
    pub already: Vec<String>,
    pub state: PathBuf,
}

/// One lab in `lab ls`.
#[derive(Debug, Clone, Serialize)]
pub struct LabInfo {
    pub name: String,
    pub file: Option<PathBuf>,
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    /// Recorded objects that are gone (someone removed them by hand).
    pub missing: Vec<String>,
}

/// Where lab state lives.
pub fn state_dir() -> PathBuf {
    engine_core::store::default_state_dir()
        .join("netlab")
        .join("labs")
}

/// Reads and validates a lab file; `name` overrides the file's name.
pub fn load(path: &Path, name: Option<&str>) -> Result<LabFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read lab file {}", path.display()), e))?;
    let mut lab: LabFile = toml::from_str(&text)
        .map_err(|e| Error::Invalid(format!("lab file {}: {e}", path.display())))?;
    if let Some(n) = name {
        lab.name = n.to_string();
    }
    validate(&lab).map_err(|e| Error::Invalid(format!("lab file {}: {e}", path.display())))?;
    Ok(lab)
}

fn validate(lab: &LabFile) -> std::result::Result<(), String> {
    let bad = |e: engine_core::Error| e.to_string();
    engine_core::model::validate_network_name(&lab.name).map_err(bad)?;
    let mut ns_names = BTreeSet::from([HOST.to_string()]);
    for n in &lab.namespaces {
        if !ns_names.insert(n.name.clone()) {
            return Err(format!(
                "namespace {:?} is declared twice (or is \"host\")",
                n.name
            ));
        }
        engine_core::model::validate_network_name(&full_name(&lab.name, &n.name)).map_err(bad)?;
    }
    let known = |ns: &str| {
        if ns_names.contains(ns) {
            Ok(())
        } else {
            Err(format!(
                "namespace {ns:?} is not declared under [[namespaces]]"
            ))
        }
    };
    // Interface names per namespace, to catch duplicates and dangling references.
    let mut ifs: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut bridges: BTreeSet<(&str, &str)> = BTreeSet::new();
    for b in &lab.bridges {
        known(&b.netns)?;
        engine_core::model::validate_ifname(&b.name).map_err(bad)?;
        if !ifs.entry(&b.netns).or_default().insert(&b.name) {
            return Err(format!(
                "interface {} in {} is declared twice",
                b.name, b.netns
            ));
        }
        bridges.insert((&b.netns, &b.name));
    }
    for l in &lab.links {
        for e in [&l.a, &l.b] {
            known(&e.netns)?;
            engine_core::model::validate_ifname(&e.name).map_err(bad)?;
            if !ifs.entry(&e.netns).or_default().insert(&e.name) {
                return Err(format!(
                    "interface {} in {} is declared twice",
                    e.name, e.netns
                ));
            }
            if let Some(br) = &e.bridge {
                if !bridges.contains(&(e.netns.as_str(), br.as_str())) {
                    return Err(format!(
                        "{}:{} is to join bridge {br}, which is not declared in {}",
                        e.netns, e.name, e.netns
                    ));
                }
            }
            if let Some(m) = e.mtu.or(l.mtu) {
                if !(68..=65535).contains(&m) {
                    return Err(format!("mtu {m} of {}:{} is out of range", e.netns, e.name));
                }
            }
        }
    }
    for n in &lab.namespaces {
        for r in &n.routes {
            parse_to(&r.to, r.via)?;
            if let Some(d) = &r.dev {
                if !ifs
                    .get(n.name.as_str())
                    .is_some_and(|s| s.contains(d.as_str()))
                {
                    return Err(format!(
                        "route in {} uses dev {d}, which it does not have",
                        n.name
                    ));
                }
            }
            if r.via.is_none() && r.dev.is_none() {
                return Err(format!("route to {} in {} needs via or dev", r.to, n.name));
            }
        }
    }
    Ok(())
}

fn parse_to(to: &str, via: Option<IpAddr>) -> std::result::Result<IpNetwork, String> {
    if to == "default" {
        let any: IpAddr = match via {
            Some(IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        };
        return IpNetwork::new(any, 0).map_err(|e| e.to_string());
    }
    to.parse::<IpNetwork>()
        .map_err(|e| format!("route destination {to:?}: {e}"))
}

/// `<lab>-<name>`.
pub fn full_name(lab: &str, ns: &str) -> String {
    format!("{lab}-{ns}")
}

fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

fn read_state(dir: &Path, name: &str) -> Result<Option<State>> {
    let p = state_path(dir, name);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("lab state {}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

fn write_state(dir: &Path, s: &State) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let p = state_path(dir, &s.name);
    let tmp = p.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(s)
        .map_err(|e| Error::Invalid(format!("encode lab state: {e}")))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    // Rename: a crash leaves the old record or the new one, never half of one.
    std::fs::rename(&tmp, &p).map_err(|e| Error::io(format!("write {}", p.display()), e))
}

/// Builds the lab (or completes it, when it is already up).
pub fn up(lab: &LabFile, file: Option<&Path>, dir: &Path) -> Result<UpReport> {
    let existing = read_state(dir, &lab.name)?;
    let fresh = existing.is_none();
    let mut state = existing.unwrap_or_else(|| State {
        name: lab.name.clone(),
        ..Default::default()
    });
    state.file = file.map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf()));
    let mut report = UpReport {
        name: lab.name.clone(),
        created: Vec::new(),
        already: Vec::new(),
        state: state_path(dir, &lab.name),
    };
    let r = build(lab, dir, &mut state, &mut report);
    if let Err(e) = r {
        if fresh {
            // Nothing half-made: take back what this run created.
            if let Err(e2) = remove(&state) {
                tracing::warn!("lab {}: cleanup after a failed up: {e2}", lab.name);
            }
            let _ = std::fs::remove_file(state_path(dir, &lab.name));
        }
        return Err(e);
    }
    Ok(report)
}

fn build(lab: &LabFile, dir: &Path, state: &mut State, report: &mut UpReport) -> Result<()> {
    let run_dir = Path::new(NETNS_RUN_DIR);
    // Namespaces.
    let mut handles: HashMap<String, Netns> = HashMap::new();
    handles.insert(HOST.into(), Netns::current()?);
    for n in &lab.namespaces {
        let full = full_name(&lab.name, &n.name);
        let path = run_dir.join(&full);
        if path.exists() {
            if !state.namespaces.contains(&full) {
                return Err(Error::Invalid(format!(
                    "namespace {full} exists and is not lab {}'s: refusing to adopt it",
                    lab.name
                )));
            }
            report.already.push(format!("netns {full}"));
            handles.insert(n.name.clone(), Netns::open(&path)?);
            continue;
        }
        let ns = Netns::create_named(&full)?.persist();
        if !state.namespaces.contains(&full) {
            state.namespaces.push(full.clone());
        }
        write_state(dir, state)?;
        report.created.push(format!("netns {full}"));
        handles.insert(n.name.clone(), ns);
    }
    let mut clients: HashMap<String, Netlink> = HashMap::new();
    for (k, ns) in &handles {
        clients.insert(k.clone(), Netlink::in_netns(ns)?);
    }
    let nl = |ns: &str| -> Result<&Netlink> {
        clients
            .get(ns)
            .ok_or_else(|| Error::Invalid(format!("namespace {ns} is not in the lab")))
    };
    for n in &lab.namespaces {
        nl(&n.name)?.set_up("lo")?;
    }
    let label = |ns: &str| {
        if ns == HOST {
            HOST.to_string()
        } else {
            full_name(&lab.name, ns)
        }
    };
    // Whether an existing link may be taken as the lab's own.
    let owned = |state: &State, ns: &str, name: &str| {
        ns != HOST || state.links.contains(&(HOST.to_string(), name.to_string()))
    };
    // Bridges.
    for b in &lab.bridges {
        let c = nl(&b.netns)?;
        if c.link_by_name(&b.name)?.is_some() {
            if !owned(state, &b.netns, &b.name) {
                return Err(Error::Invalid(format!(
                    "{} already exists in {} and is not lab {}'s: refusing to adopt it",
                    b.name, b.netns, lab.name
                )));
            }
            report
                .already
                .push(format!("bridge {}:{}", label(&b.netns), b.name));
        } else {
            let mut spec = BridgeSpec::new(&b.name);
            if let Some(m) = b.mtu {
                spec = spec.mtu(m);
            }
            c.create_bridge(&spec)?;
            if b.netns == HOST && !owned(state, HOST, &b.name) {
                state.links.push((HOST.into(), b.name.clone()));
                write_state(dir, state)?;
            }
            report
                .created
                .push(format!("bridge {}:{}", label(&b.netns), b.name));
        }
        for a in &b.addresses {
            add_addr(c, &b.name, *a)?;
        }
        c.set_up(b.name.as_str())?;
    }
    // veth links.
    for l in &lab.links {
        let ca = nl(&l.a.netns)?;
        let cb = nl(&l.b.netns)?;
        let a_there = ca.link_by_name(&l.a.name)?.is_some();
        let b_there = cb.link_by_name(&l.b.name)?.is_some();
        let what = format!(
            "veth {}:{} ═ {}:{}",
            label(&l.a.netns),
            l.a.name,
            label(&l.b.netns),
            l.b.name
        );
        let mine = owned(state, &l.a.netns, &l.a.name) && owned(state, &l.b.netns, &l.b.name);
        if (a_there || b_there) && !mine {
            return Err(Error::Invalid(format!(
                "{what}: an end already exists and is not lab {}'s: refusing to adopt it",
                lab.name
            )));
        }
        if a_there && b_there {
            report.already.push(what);
        } else {
            // One end left (its namespace was deleted by hand): the pair is rebuilt.
            for (there, e, c) in [(a_there, &l.a, ca), (b_there, &l.b, cb)] {
                if there {
                    c.delete_link_if_exists(e.name.as_str())?;
                }
            }
            let peer_ns = handles
                .get(&l.b.netns)
                .ok_or_else(|| Error::Invalid(format!("namespace {} unknown", l.b.netns)))?;
            ca.create_veth(&VethSpec::new(&l.a.name, &l.b.name).peer_netns(peer_ns))?;
            for e in [&l.a, &l.b] {
                let rec = (HOST.to_string(), e.name.clone());
                if e.netns == HOST && !state.links.contains(&rec) {
                    state.links.push(rec);
                }
            }
            write_state(dir, state)?;
            report.created.push(what);
        }
        for (e, c) in [(&l.a, ca), (&l.b, cb)] {
            if let Some(m) = e.mtu.or(l.mtu) {
                c.set_mtu(e.name.as_str(), m)?;
            }
            if let Some(br) = &e.bridge {
                c.set_master(e.name.as_str(), br.as_str())?;
            }
            for a in &e.addresses {
                add_addr(c, &e.name, *a)?;
            }
            c.set_up(e.name.as_str())?;
        }
    }
    // Forwarding and routes, once every address is there.
    for n in &lab.namespaces {
        let ns = handles
            .get(&n.name)
            .ok_or_else(|| Error::Invalid(format!("namespace {} unknown", n.name)))?;
        if n.forwarding {
            engine_core::netlink::sysctl_set_in(ns, "net.ipv4.ip_forward", "1")?;
            engine_core::netlink::sysctl_set_in(ns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        let c = nl(&n.name)?;
        for r in &n.routes {
            let to = parse_to(&r.to, r.via).map_err(Error::Invalid)?;
            let mut spec = RouteSpec::new(to);
            if let Some(v) = r.via {
                spec = spec.via(v);
            }
            if let Some(d) = &r.dev {
                spec = spec.dev(c.link_index(d.as_str())?);
            }
            c.replace_route(&spec)?;
        }
    }
    write_state(dir, state)
}

fn add_addr(c: &Netlink, link: &str, a: IpNetwork) -> Result<()> {
    let opts = AddrOptions {
        nodad: true,
        ..Default::default()
    };
    match c.add_address(link, a, opts) {
        Err(e) if engine_core::netlink::is_exists(&e) => Ok(()),
        r => Ok(r?),
    }
}

/// Removes everything `state` records; missing objects are fine.
fn remove(state: &State) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    // Host links first: a veth whose peer sits in a lab namespace would otherwise linger until
    // the kernel finishes tearing that namespace down (asynchronously).
    let host = Netlink::connect()?;
    for (_, name) in state.links.iter().rev() {
        if host.delete_link_if_exists(name.as_str())? {
            removed.push(format!("link host:{name}"));
        }
    }
    let run_dir = Path::new(NETNS_RUN_DIR);
    for n in state.namespaces.iter().rev() {
        if run_dir.join(n).exists() {
            Netns::remove_named(run_dir, n)?;
            removed.push(format!("netns {n}"));
        }
    }
    Ok(removed)
}

/// Tears a lab down by name; returns what was removed. An unknown lab is an error.
pub fn down(name: &str, dir: &Path) -> Result<Vec<String>> {
    let state = read_state(dir, name)?.ok_or_else(|| {
        let up: Vec<String> = list(dir)
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.name)
            .collect();
        Error::Invalid(format!(
            "no lab named {name:?} is up ({} in {})",
            if up.is_empty() {
                "none is".to_string()
            } else {
                format!("up: {}", up.join(", "))
            },
            dir.display()
        ))
    })?;
    let removed = remove(&state)?;
    let p = state_path(dir, name);
    std::fs::remove_file(&p).map_err(|e| Error::io(format!("remove {}", p.display()), e))?;
    Ok(removed)
}

/// Every lab with a state record.
pub fn list(dir: &Path) -> Result<Vec<LabInfo>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let host = Netlink::connect().ok();
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let p = ent.path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(name) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let Some(s) = read_state(dir, name)? else {
            continue;
        };
        let mut missing = Vec::new();
        for n in &s.namespaces {
            if !Path::new(NETNS_RUN_DIR).join(n).exists() {
                missing.push(format!("netns {n}"));
            }
        }
        for (_, l) in &s.links {
            if let Some(h) = &host {
                if h.link_by_name(l).ok().flatten().is_none() {
                    missing.push(format!("link host:{l}"));
                }
            }
        }
        out.push(LabInfo {
            name: s.name.clone(),
            file: s.file.clone(),
            namespaces: s.namespaces.clone(),
            links: s.links.iter().map(|(_, l)| format!("host:{l}")).collect(),
            missing,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `lab ls` as text.
pub fn list_text(labs: &[LabInfo]) -> String {
    if labs.is_empty() {
        return "no labs are up\n".into();
    }
    let mut out = String::new();
    for l in labs {
        out.push_str(&format!(
            "{}  {} namespaces, {} host links{}{}\n",
            l.name,
            l.namespaces.len(),
            l.links.len(),
            l.file
                .as_ref()
                .map(|f| format!("  ({})", f.display()))
                .unwrap_or_default(),
            if l.missing.is_empty() {
                String::new()
            } else {
                format!("  MISSING: {}", l.missing.join(", "))
            }
        ));
        out.push_str(&format!("  netns: {}\n", l.namespaces.join(" ")));
        if !l.links.is_empty() {
            out.push_str(&format!("  links: {}\n", l.links.join(" ")));
        }
    }
    crate::render::wrap(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::result::Result<(), String> {
        let lab: LabFile = toml::from_str(s).map_err(|e| e.to_string())?;
        validate(&lab)
    }

    #[test]
    fn validation_catches_bad_references() {
        let ok = r#"
            name = "l"
            [[namespaces]]
            name = "a"
            routes = [{ to = "default", via = "10.1.0.1" }]
            [[bridges]]
            name = "br0"
            addresses = ["10.1.0.1/24"]
            [[links]]
            a = { netns = "a", name = "eth0", addresses = ["10.1.0.2/24"] }
            b = { netns = "host", name = "veth-a", bridge = "br0" }
        "#;
        assert_eq!(parse(ok), Ok(()));
        assert!(parse(&ok.replace("bridge = \"br0\"", "bridge = \"br9\"")).is_err());
        assert!(parse(&ok.replace("netns = \"a\"", "netns = \"z\"")).is_err());
        assert!(parse(&ok.replace("veth-a", "eth0-that-is-far-too-long")).is_err());
        assert!(parse(&ok.replace("to = \"default\"", "to = \"nonsense\"")).is_err());
        assert!(parse(&format!("{ok}\nbogus = 1")).is_err());
    }
}
