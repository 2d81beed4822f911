//! More `netlab doctor` checks: VXLAN checksum offload (flannel#1279), overlay MTU against the
//! underlay, container subnets that overlap host routes through other interfaces, and netloom
//! networks that should masquerade but have no masquerade rule.
//!
//! The offload state is read with the `ETHTOOL_GTXCSUM` ioctl (read-only) on a socket opened
//! in the device's namespace.

use std::net::IpAddr;
use std::path::Path;

use engine_core::netns::Netns;
use engine_core::store::file::FileStore;
use engine_core::{Key, Network, StateStoreExt};
use ipnetwork::IpNetwork;

use crate::doctor::{check, Check, Verdict};
use crate::inventory::{Inventory, NsView};
use crate::nft::{Match, Pkt, Ruleset};

/// VXLAN encapsulation overhead over an IPv4 underlay (outer IP 20 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14); over IPv6 it is 70.
const VXLAN_V4_OVERHEAD: u32 = 50;
const VXLAN_V6_OVERHEAD: u32 = 70;

/// flannel#1279 / calico#3145: with tx checksum offload on a VXLAN device and the outer packet
/// NATed, kernels before 5.7 sent VXLAN packets with bad UDP checksums, dropped by the receiver
/// (the "63-second delay"). The verdict follows the overlay driver's own rule
/// (`needs_tx_checksum_workaround`): offload on is a warning only on such kernels; on newer
/// ones it is what netloom leaves, and offload off is worth knowing because it costs
/// throughput (the kernel then segments in software).
pub fn vxlan_csum(inv: &Inventory, host_rules: &Ruleset) -> Check {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for ns in &inv.namespaces {
        let vx: Vec<String> = ns
            .interfaces
            .iter()
            .filter(|i| i.kind == "vxlan")
            .map(|i| i.name.clone())
            .collect();
        if vx.is_empty() {
            continue;
        }
        let Ok(handle) = Netns::open(&ns.path) else {
            continue;
        };
        for name in &vx {
            // engine-core's read-only ETHTOOL_GTXCSUM, in the device's namespace.
            match engine_core::netlink::ethtool::tx_checksum(Some(&handle), name) {
                Ok(true) => on.push(format!("{}:{name} tx-checksumming on", ns.label)),
                Ok(false) => off.push(format!("{}:{name} tx-checksumming off", ns.label)),
                Err(_) => {}
            }
        }
    }
    if on.is_empty() && off.is_empty() {
        return check("vxlan_csum", Verdict::Ok, "no VXLAN device");
    }
    let old_kernel = engine_core::netlink::ethtool::needs_tx_checksum_workaround();
    let mut c = if old_kernel {
        if on.is_empty() {
            let mut c = check(
                "vxlan_csum",
                Verdict::Ok,
                "VXLAN tx checksum offload is off, as this kernel (< 5.7) needs",
            );
            c.findings = off;
            return c;
        }
        let why = if host_rules.has_masquerade() {
            "this kernel (< 5.7) sends VXLAN packets with bad checksums when the outer packet is \
             NATed, and the host masquerades (flannel#1279)"
        } else {
            "this kernel (< 5.7) sends VXLAN packets with bad checksums as soon as the outer \
             packet is NATed (flannel#1279)"
        };
        let mut c = check(
            "vxlan_csum",
            Verdict::Warn,
            format!("VXLAN tx checksum offload on: {why}"),
        );
        c.fix = Some(
            "ethtool -K <vxlan-dev> tx-checksum-ip-generic off (netloom's overlay does this \
             itself on such kernels)"
                .into(),
        );
        c.findings = std::mem::take(&mut on);
        c
    } else if off.is_empty() {
        check(
            "vxlan_csum",
            Verdict::Ok,
            "VXLAN tx checksum offload on: this kernel (>= 5.7) has the fix for flannel#1279",
        )
    } else {
        let mut c = check(
            "vxlan_csum",
            Verdict::Info,
            "VXLAN tx checksum offload off: this kernel (>= 5.7) does not need the flannel#1279 \
             workaround, and it costs throughput (TCP is segmented in software)",
        );
        c.fix = Some("ethtool -K <vxlan-dev> tx-checksum-ip-generic on".into());
        c.findings = off;
        c
    };
    if c.findings.is_empty() {
        c.findings = on;
    }
    c
}

/// VXLAN devices whose MTU leaves no room for the encapsulation on their underlay.
pub fn overlay_mtu(inv: &Inventory) -> Check {
    let mut found = Vec::new();
    for ns in &inv.namespaces {
        let vx: Vec<&crate::inventory::Iface> =
            ns.interfaces.iter().filter(|i| i.kind == "vxlan").collect();
        if vx.is_empty() {
            continue;
        }
        let mut sock = Netns::open(&ns.path)
            .ok()
            .and_then(|h| crate::nsid::NsidSocket::open_in(&h).ok());
        for v in vx {
            // The underlay: the parent (`dev`), else the interface holding the local address,
            // else the interface of the default route.
            let (parent, local) = sock
                .as_mut()
                .and_then(|s| s.vxlan_underlay(v.index).ok())
                .unwrap_or_default();
            let parent = parent
                .and_then(|p| ns.iface_by_index(p))
                .or_else(|| {
                    local.and_then(|l| {
                        ns.interfaces
                            .iter()
                            .find(|i| i.addresses.iter().any(|a| a.ip() == l))
                    })
                })
                .or_else(|| {
                    ns.default_routes
                        .first()
                        .and_then(|r| r.dev.as_deref())
                        .and_then(|d| ns.iface(d))
                });
            let Some(u) = parent else { continue };
            let v6_underlay =
                !u.addresses.iter().any(|a| a.is_ipv4()) && u.addresses.iter().any(|a| a.is_ipv6());
            let overhead = if v6_underlay {
                VXLAN_V6_OVERHEAD
            } else {
                VXLAN_V4_OVERHEAD
            };
            let max = u.mtu.saturating_sub(overhead);
            if v.mtu > max {
                found.push(format!(
                    "{}:{} mtu {} > underlay {} mtu {} - {overhead} = {max}",
                    ns.label, v.name, v.mtu, u.name, u.mtu
                ));
            }
        }
    }
    if found.is_empty() {
        return check(
            "overlay_mtu",
            Verdict::Ok,
            "every VXLAN device fits its underlay's MTU",
        );
    }
    let mut c = check(
        "overlay_mtu",
        Verdict::Warn,
        "VXLAN MTU too large for the underlay: full-size packets are dropped after \
         encapsulation (small ones like ping pass, so it looks intermittent)",
    );
    c.findings = found;
    c.fix = Some(
        "set the VXLAN device (and the containers on it) to the underlay MTU minus 50 (IPv4) \
         or 70 (IPv6)"
            .into(),
    );
    c
}

/// Container subnets (the networks on the host's bridges) that overlap a route through another
/// interface: one of the two destinations is hidden behind the other.
pub fn route_conflicts(host: Option<&NsView>) -> Check {
    let Some(h) = host else {
        return check(
            "route_conflicts",
            Verdict::Skip,
            "the host namespace could not be read",
        );
    };
    let mut found = Vec::new();
    for b in h.interfaces.iter().filter(|i| i.kind == "bridge") {
        for a in &b.addresses {
            let Ok(subnet) = IpNetwork::new(a.network(), a.prefix()) else {
                continue;
            };
            if is_link_local(subnet.ip()) {
                continue;
            }
            for r in &h.routes {
                let other = r.dev.as_deref().is_some_and(|d| d != b.name);
                if r.destination.prefix() == 0 || !other || r.kind != "unicast" {
                    continue;
                }
                if engine_core::model::subnets_overlap(r.destination, subnet) {
                    found.push(format!(
                        "{subnet} on {} overlaps route {}{} dev {}",
                        b.name,
                        r.destination,
                        r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                        r.dev.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
    }
    if found.is_empty() {
        return check(
            "route_conflicts",
            Verdict::Ok,
            "no container subnet overlaps a route through another interface",
        );
    }
    let mut c = check(
        "route_conflicts",
        Verdict::Warn,
        "container subnets overlap host routes: the more specific route wins, so either the \
         containers or that other network become unreachable",
    );
    c.findings = found;
    c.fix = Some(
        "move the network to a free subnet (or remove the stale route); netloom's IPAM skips \
         subnets that host routes use"
            .into(),
    );
    c
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// netloom networks with masquerade on (and not internal) whose subnets no masquerade or SNAT
/// rule in the host's ruleset covers: their containers cannot reach the outside.
pub fn missing_nat(state_dir: &Path, rules: Option<&Ruleset>) -> Check {
    if !state_dir.is_dir() {
        return check(
            "missing_nat",
            Verdict::Skip,
            format!("no netloom state at {}", state_dir.display()),
        );
    }
    let nets = match FileStore::open(state_dir)
        .and_then(|s| s.list_json::<Network>(&Key::new(["networks"])))
    {
        Ok(n) => n,
        Err(e) => {
            return check(
                "missing_nat",
                Verdict::Skip,
                format!("netloom networks unreadable: {e}"),
            )
        }
    };
    let Some(rules) = rules else {
        return check(
            "missing_nat",
            Verdict::Skip,
            "the host's nft ruleset could not be read",
        );
    };
    let mut found = Vec::new();
    let mut checked = 0;
    for (_, _, net) in &nets {
        let Some(nr) = engine_core::engine::network_rules(net) else {
            continue;
        };
        if !nr.masquerade {
            continue;
        }
        for s in &nr.subnets {
            checked += 1;
            // A packet from the subnet's first host to an outside address (documentation
            // range, never sent: this only asks the matcher), leaving by another interface.
            let host_ip = first_host(*s);
            let dst: IpAddr = if s.is_ipv4() {
                "198.51.100.1".parse().unwrap_or(host_ip)
            } else {
                "2001:db8::1".parse().unwrap_or(host_ip)
            };
            let pkt = Pkt {
                src: Some(host_ip),
                dst: Some(dst),
                proto: Some("udp".into()),
                dport: Some(53),
                iif: Some(nr.interface.clone()),
                oif: Some("netlab-uplink".into()),
            };
            let covered = rules.rules.iter().any(|r| {
                matches!(r.verdict(), Some((v, _)) if v == "masquerade" || v == "snat")
                    && rules.matches(r, &pkt) == Match::Yes
            });
            if !covered {
                found.push(format!(
                    "network {} ({}) subnet {s} on {}: no masquerade rule",
                    net.name, net.id, nr.interface
                ));
            }
        }
    }
    if checked == 0 {
        return check(
            "missing_nat",
            Verdict::Ok,
            "no netloom network asks for masquerade",
        );
    }
    if found.is_empty() {
        return check(
            "missing_nat",
            Verdict::Ok,
            format!("{checked} masqueraded subnets have their masquerade rule"),
        );
    }
    let mut c = check(
        "missing_nat",
        Verdict::Fail,
        "netloom networks that should masquerade have no masquerade rule: their containers \
         reach nothing outside the host (replies cannot come back)",
    );
    c.findings = found;
    c.fix = Some(
        "restart netloomd (it restores missing rules), or check that nothing flushed the \
         netloom table (nft list table inet netloom)"
            .into(),
    );
    c
}

fn first_host(n: IpNetwork) -> IpAddr {
    match n {
        IpNetwork::V4(v) => IpAddr::V4((u32::from(v.network()).saturating_add(2)).into()),
        IpNetwork::V6(v) => IpAddr::V6((u128::from(v.network()).saturating_add(2)).into()),
    }
}
