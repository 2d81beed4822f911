//! Human output: tables that fit a 100-column terminal.

use std::fmt::Write;

use crate::discover::{short, Source};
use crate::inventory::{Iface, Inventory, NsView};

/// The widest line netlab prints in human mode.
pub const WIDTH: usize = 100;

/// `s` cut to `w` characters, with `…` marking the cut.
pub fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `s` cut or padded to exactly `w` characters.
pub fn col(s: &str, w: usize) -> String {
    format!("{:<w$}", fit(s, w))
}

/// Cuts every line of `text` to [`WIDTH`].
pub fn clamp(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for l in text.lines() {
        out.push_str(&fit(l.trim_end(), WIDTH));
        out.push('\n');
    }
    out
}

/// `netlab ls` as text: a header line per namespace, then one line per interface. IPv6
/// link-local addresses are left out here (they are in the JSON) to keep lines short.
pub fn ls(inv: &Inventory) -> String {
    let mut out = String::new();
    for ns in &inv.namespaces {
        ls_block(&mut out, ns);
    }
    for w in &inv.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    clamp(&out)
}

/// What a namespace is known as, besides its label.
pub fn sources_text(ns: &NsView) -> String {
    let mut parts = Vec::new();
    for s in &ns.sources {
        match s {
            Source::Host => {}
            Source::Netns { name, .. } if *name != ns.label => parts.push(format!("netns {name}")),
            Source::Netns { .. } => {}
            Source::Process {
                pid,
                comm,
                processes,
            } => parts.push(format!("pid {pid} {comm} ({processes} proc)")),
            Source::Docker { id, name } => parts.push(format!("docker {name} {}", short(id))),
            Source::Container {
                id,
                network,
                ifname,
                via,
            } => parts.push(format!("{via} {} {network}/{ifname}", short(id))),
        }
    }
    parts.join(", ")
}

fn ls_block(out: &mut String, ns: &NsView) {
    let mut head = format!("{}  inode {}", ns.label, ns.inode);
    if let Some(id) = ns.nsid {
        let _ = write!(head, " nsid {id}");
    }
    let src = sources_text(ns);
    if !src.is_empty() {
        let _ = write!(head, "  ({src})");
    }
    let _ = writeln!(out, "{head}");
    if let Some(e) = &ns.error {
        let _ = writeln!(out, "  unreadable: {e}");
        return;
    }
    for i in &ns.interfaces {
        let addrs: Vec<String> = i
            .addresses
            .iter()
            .filter(|a| !is_link_local_v6(a))
            .map(|a| a.to_string())
            .collect();
        let addrs = if addrs.is_empty() {
            "-".to_string()
        } else {
            addrs.join(",")
        };
        let _ = writeln!(
            out,
            "  {} {} {} {} {}",
            col(&i.name, 15),
            col(&i.kind, 7),
            col(state(i), 5),
            col(&addrs, 28),
            peer_text(i)
        );
    }
    for r in &ns.default_routes {
        let via = r.gateway.map(|g| format!("via {g} ")).unwrap_or_default();
        let dev = r
            .dev
            .as_deref()
            .map(|d| format!("dev {d}"))
            .unwrap_or_default();
        let _ = writeln!(out, "  default {via}{dev}");
    }
}

fn is_link_local_v6(a: &ipnetwork::IpNetwork) -> bool {
    match a {
        ipnetwork::IpNetwork::V6(n) => (n.ip().segments()[0] & 0xffc0) == 0xfe80,
        _ => false,
    }
}

fn state(i: &Iface) -> &'static str {
    match (i.up, i.oper.as_str()) {
        (false, _) => "down",
        (true, "up" | "unknown") => "up",
        (true, _) => "nocarr",
    }
}

/// "⇄ ns:ifname [br]" for a veth, "on ns:parent" for macvlan and friends, plus its own master.
pub fn peer_text(i: &Iface) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &i.peer {
        let name = p.ifname.clone().unwrap_or_else(|| format!("#{}", p.index));
        let mut t = if i.kind == "veth" {
            format!("<-> {}:{name}", p.netns)
        } else {
            format!("on {}:{name}", p.netns)
        };
        if let Some(m) = &p.master {
            let _ = write!(t, " [{m}]");
        }
        parts.push(t);
    }
    if let Some(m) = &i.master {
        parts.push(format!("master {m}"));
    }
    parts.join("  ")
}

/// Wraps (does not cut) every line of `text` at [`WIDTH`]. The rest continues on the next
/// line under the line's text column: after a `label  ` (two or more spaces) or a `fix: `.
pub fn wrap(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.trim_end();
        let indent = text_column(line);
        let mut rest = line.to_string();
        while rest.chars().count() > WIDTH {
            let cut: String = rest.chars().take(WIDTH).collect();
            let at = cut.rfind(' ').filter(|a| *a > indent).unwrap_or(cut.len());
            out.push_str(rest[..at].trim_end());
            out.push('\n');
            rest = format!("{:indent$}{}", "", rest[at..].trim_start());
        }
        out.push_str(&rest);
        out.push('\n');
    }
    out
}

/// Where a line's text starts, for continuation lines (see [`wrap`]).
fn text_column(line: &str) -> usize {
    let lead = line.len() - line.trim_start().len();
    let rest = &line[lead..];
    if rest.starts_with("fix: ") {
        return lead + 5;
    }
    match rest.find("  ") {
        Some(gap) if gap > 0 => {
            let after = &rest[gap..];
            let col = lead + gap + (after.len() - after.trim_start().len());
            if col < WIDTH / 2 {
                col
            } else {
                lead + 4
            }
        }
        _ => lead + 4,
    }
}
