//! The bridge driver: a Linux bridge per network, a veth pair per endpoint, the gateway address
//! on the bridge. Masquerade, isolation and published ports are the firewall's part (the engine
//! calls it with the options this driver normalises).

pub mod options;

use std::net::IpAddr;

use engine_core::driver::{Capabilities, Driver, Handoff, HostInterface, JoinInfo, Op};
use engine_core::journal::UndoStep;
use engine_core::netlink::{AddrOptions, BridgeSpec, LinkKind, MacAddr, Netlink, VethSpec};
use engine_core::reaper;
use engine_core::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, Error, Expect, Key, Network, NetworkSpec,
    Options, Result, RouteSpec, Sandbox, StateStore,
};
use ipnetwork::IpNetwork;

use crate::naming;
pub use options::BridgeOptions;

/// A Linux bridge takes at most 1024 ports (BR_MAX_PORTS).
pub const MAX_PORTS: u32 = 1024;

/// The bridge driver.
#[derive(Debug, Default, Clone, Copy)]
pub struct BridgeDriver;

/// Marks a bridge netloom created (and so may delete): `drivers/bridge/created/<network id>`.
fn created_marker(network_id: &str) -> Key {
    Key::new(["drivers", "bridge", "created", network_id])
}

/// The gateway addresses the bridge carries: each subnet's gateway with the subnet's prefix.
fn gateway_addresses(net: &Network) -> Vec<IpNetwork> {
    net.subnets
        .iter()
        .filter_map(|s| {
            s.gateway
                .and_then(|gw| IpNetwork::new(gw, s.subnet.prefix()).ok())
        })
        .collect()
}

impl BridgeDriver {
    fn ensure_bridge(&self, op: &mut Op, net: &Network, o: &BridgeOptions) -> Result<u32> {
        let nl = op.host()?;
        if let Some(l) = nl.link_by_name(&o.bridge)? {
            if l.kind != Some(LinkKind::Bridge) {
                return Err(Error::InvalidConfig(format!(
                    "{} exists and is not a bridge ({}); choose another bridge name",
                    o.bridge,
                    l.kind
                        .map(|k| format!("{k:?}"))
                        .unwrap_or_else(|| "no kind".into())
                )));
            }
            if wants_vlans(o) && l.vlan_filtering != Some(true) {
                // The reference plugin only sets it on bridges it creates; a VLAN on a port of
                // a bridge that does not filter would isolate nothing.
                nl.set_vlan_filtering(l.index, true)?;
            }
            return Ok(l.index);
        }
        let host_ns = op.host_netns().map(|p| p.to_path_buf());
        op.record(UndoStep::DeleteLink {
            netns: host_ns,
            name: o.bridge.clone(),
        })?;
        let marker = created_marker(&net.id);
        op.record(UndoStep::RestoreKey {
            key: marker.to_string(),
            value: None,
        })?;
        op.store().put(&marker, o.bridge.as_bytes(), Expect::Any)?;
        let mut spec = BridgeSpec::new(&o.bridge).mac(crate::naming::bridge_mac(&o.bridge));
        if let Some(mtu) = net.mtu {
            spec = spec.mtu(mtu);
        }
        let index = match nl.create_bridge(&spec) {
            Ok(l) => l.index,
            // Another process made it between our look and our create (parallel CNI ADDs):
            // that is the bridge we wanted.
            Err(e) if engine_core::netlink::is_exists(&e) => nl.link_index(o.bridge.as_str())?,
            Err(e) => return Err(e),
        };
        if wants_vlans(o) {
            // Set after creation rather than in it, so both paths give the same clear error
            // on kernels without VLAN filtering.
            nl.set_vlan_filtering(index, true)?;
        }
        Ok(index)
    }

    /// The gateway port of a VLAN network: a veth pair whose bridge end is an access port of
    /// the VLAN and whose other end (`<bridge>.<vid>`) carries the gateway addresses, as the
    /// reference plugin builds it (no 802.1Q device: it works wherever bridge VLAN filtering
    /// does). Shared by every network of that bridge and VLAN.
    fn ensure_vlan_gateway(
        &self,
        op: &mut Op,
        net: &Network,
        o: &BridgeOptions,
        br: u32,
        vid: u16,
        gw_if: &str,
    ) -> Result<()> {
        let nl = op.host()?;
        if nl.link_by_name(gw_if)?.is_some() {
            return Ok(());
        }
        let port = vlan_gateway_port(&o.bridge, vid);
        nl.delete_link_if_exists(port.as_str())?;
        let host_ns = op.host_netns().map(|p| p.to_path_buf());
        op.record(UndoStep::DeleteLink {
            netns: host_ns,
            name: gw_if.to_string(),
        })?;
        let mut veth = VethSpec::new(&port, gw_if).peer_mac(crate::naming::stable_mac(&[
            "vlan-gateway",
            &o.bridge,
            &vid.to_string(),
        ]));
        if let Some(mtu) = net.mtu {
            veth = veth.mtu(mtu);
        }
        let port_link = match nl.create_veth(&veth) {
            Ok(l) => l,
            // A parallel ADD of another container made it.
            Err(e) if engine_core::netlink::is_exists(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        nl.set_master(port_link.index, br)?;
        configure_port_vlans(&nl, port_link.index, o)?;
        nl.set_up(port_link.index)?;
        nl.set_up(gw_if)?;
        Ok(())
    }

    fn ensure_gateway_addresses(
        &self,
        op: &mut Op,
        net: &Network,
        o: &BridgeOptions,
        nl: &Netlink,
    ) -> Result<()> {
        let gw_if = gateway_interface(o);
        let present = nl.addresses_of(gw_if)?;
        for gw in gateway_addresses(net) {
            if present.iter().any(|a| a.address == gw) {
                continue;
            }
            // Another address of the same subnet on the bridge means someone else configured
            // it: replace it only when asked (CNI forceAddress).
            for a in present
                .iter()
                .filter(|a| a.address.is_ipv4() == gw.is_ipv4() && a.address.contains(gw.ip()))
            {
                if !o.force_address {
                    return Err(Error::Conflict(format!(
                        "{gw_if} has address {} but network {} wants gateway {}; set forceAddress to replace it",
                        a.address, net.name, gw
                    )));
                }
                nl.del_address(gw_if, a.address)?;
            }
            let host_ns = op.host_netns().map(|p| p.to_path_buf());
            op.record(UndoStep::DeleteAddress {
                netns: host_ns,
                link: gw_if.to_string(),
                address: gw,
            })?;
            let opts = AddrOptions {
                nodad: true,
                ..Default::default()
            };
            match nl.add_address(gw_if, gw, opts) {
                Ok(()) => {}
                // A parallel ADD added it first.
                Err(e) if engine_core::netlink::is_exists(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Driver for BridgeDriver {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            scope: "local".into(),
            supports_ipv6: true,
            supports_port_mapping: true,
            max_endpoints: Some(MAX_PORTS),
            no_interface: false,
        }
    }

    fn validate(&self, spec: &NetworkSpec) -> Result<Options> {
        options::normalise(spec)
    }

    fn create_network(&self, op: &mut Op, net: &Network) -> Result<()> {
        let o = BridgeOptions::from_network(&net.options)?;
        let br = self.ensure_bridge(op, net, &o)?;
        if let (Some(vid), Some(gw_if), true) =
            (o.vlan, o.gateway_interface.as_deref(), o.is_gateway)
        {
            self.ensure_vlan_gateway(op, net, &o, br, vid, gw_if)?;
        }
        let nl = op.host()?;
        if o.promisc {
            nl.set_promisc(o.bridge.as_str(), true)?;
        }
        if o.is_gateway {
            self.ensure_gateway_addresses(op, net, &o, &nl)?;
        }
        nl.set_up(o.bridge.as_str())?;
        if o.is_gateway && !net.internal {
            // Containers reach the outside through the host's routing.
            if net.subnets.iter().any(|s| s.subnet.is_ipv4()) {
                op.host_sysctl("net.ipv4.ip_forward", "1")?;
            }
            if net.subnets.iter().any(|s| s.subnet.is_ipv6()) {
                op.host_sysctl("net.ipv6.conf.all.forwarding", "1")?;
            }
        }
        Ok(())
    }

    fn delete_network(&self, op: &mut Op, net: &Network) -> Result<()> {
        let o = BridgeOptions::from_network(&net.options)?;
        let marker = created_marker(&net.id);
        let nl = op.host()?;
        let Some(br) = nl.link_by_name(&o.bridge)? else {
            op.store().delete(&marker, Expect::Any)?;
            return Ok(());
        };
        let links = nl.links()?;
        // VLAN gateway ports belong to the bridge's networks, not to containers.
        let (gw_ports, ports): (Vec<&engine_core::netlink::Link>, Vec<_>) = links
            .iter()
            .filter(|l| l.master == Some(br.index))
            .partition(|l| is_vlan_gateway_port(&l.name));
        if op.store().get(&marker)?.is_some() && ports.is_empty() {
            for p in gw_ports {
                nl.delete_link_if_exists(p.index)?;
            }
            nl.delete_link_if_exists(br.index)?;
        } else {
            // A bridge we did not create, or one still in use: leave it, minus our addresses.
            let gw_if = gateway_interface(&o);
            for gw in gateway_addresses(net) {
                // Already missing (with its interface, even) is fine.
                nl.del_address(gw_if, gw)?;
            }
        }
        op.store().delete(&marker, Expect::Any)?;
        Ok(())
    }

    fn create_endpoint(&self, op: &mut Op, net: &Network, spec: &EndpointSpec) -> Result<Handoff> {
        let o = BridgeOptions::from_network(&net.options)?;
        let host = naming::host_veth(&net.id, &spec.key);
        let peer = naming::temp_peer(&net.id, &spec.key);
        let nl = op.host()?;
        let br = nl.link_by_name(&o.bridge)?.ok_or_else(|| {
            Error::NotFound(format!(
                "bridge {} of network {} is gone; recreate the network",
                o.bridge, net.name
            ))
        })?;
        // Names are derived from the attachment: one left by a crash that escaped the journal
        // is ours, and in the way.
        nl.delete_link_if_exists(host.as_str())?;
        nl.delete_link_if_exists(peer.as_str())?;
        let host_ns = op.host_netns().map(|p| p.to_path_buf());
        op.record(UndoStep::DeleteLink {
            netns: host_ns,
            name: host.clone(),
        })?;
        // With a placement the peer is born in the container under its final name: a move
        // between namespaces costs the kernel an RCU grace period (~20 ms).
        let target = match &spec.placement {
            Some(p) => Some((
                engine_core::netns::Netns::open(&p.netns_path).map_err(|e| {
                    e.context(format!("container namespace {}", p.netns_path.display()))
                })?,
                p.ifname.clone(),
            )),
            None => None,
        };
        let peer = target.as_ref().map(|(_, n)| n.clone()).unwrap_or(peer);
        let mut veth = VethSpec::new(&host, &peer);
        if let Some((ns, _)) = &target {
            veth = veth.peer_netns(ns);
        }
        if let Some(mtu) = spec.mtu.or(net.mtu) {
            veth = veth.mtu(mtu);
        }
        if let Some(mac) = &spec.mac {
            let mac: MacAddr = mac.parse().map_err(|_| {
                Error::InvalidConfig(format!(
                    "MAC address {mac:?} is not valid (want aa:bb:cc:dd:ee:ff)"
                ))
            })?;
            veth = veth.peer_mac(mac);
        }
        let host_link = match nl.create_veth(&veth) {
            Ok(l) => l,
            Err(e) if target.is_some() && engine_core::netlink::is_exists(&e) => {
                // The host name is ours and was cleared above, so the clash is in the container.
                return Err(Error::Conflict(format!(
                    "interface {peer} already exists in the container; pick another CNI_IFNAME or DEL the old attachment"
                )));
            }
            Err(e) => return Err(e),
        };
        // The kernel enforces the 1024-port limit (EXFULL); counting ports ourselves would cost
        // a dump per ADD.
        nl.set_master(host_link.index, br.index).map_err(|e| {
            if e.errno() == Some(libc::EXFULL) {
                Error::Exhausted(format!(
                    "bridge {} already has {MAX_PORTS} ports, the most a Linux bridge can hold; use another network for more containers",
                    o.bridge
                ))
            } else {
                e
            }
        })?;
        if o.hairpin {
            nl.set_hairpin(host_link.index, true)?;
        }
        configure_port_vlans(&nl, host_link.index, &o)?;
        nl.set_up(host_link.index)?;
        // A bridge without an explicit MAC takes its first port's: read it after attaching.
        let br_mac = nl.link_by_index(br.index)?.and_then(|l| l.mac).or(br.mac);
        Ok(Handoff {
            placed: target.is_some(),
            link: peer,
            mac: spec.mac.clone(),
            host_end: Some(host.clone()),
            host_interfaces: vec![
                HostInterface {
                    name: o.bridge.clone(),
                    mac: br_mac.map(|m| m.to_string()),
                },
                HostInterface {
                    name: host,
                    mac: host_link.mac.map(|m| m.to_string()),
                },
            ],
        })
    }

    fn delete_endpoint(&self, op: &mut Op, net: &Network, ep: &Endpoint) -> Result<()> {
        let host = naming::host_veth(&net.id, &ep.key);
        let nl = op.host()?;
        let Some(link) = nl.link_by_name(&host)? else {
            return Ok(());
        };
        // Cut it off now (down, off the bridge, out of the way of a new veth of the same
        // name): the container loses its carrier at once and its address can be reused. The
        // kernel's slow unregister goes to the reaper; deleting the host end takes the
        // container end with it.
        nl.set_down(link.index)?;
        nl.set_nomaster(link.index)?;
        let grave = reaper::graveyard_name();
        nl.rename(link.index, &grave)?;
        reaper::reap_later(reaper::Job {
            netns: op.host_netns().map(|p| p.to_path_buf()),
            links: vec![grave],
        })
    }

    fn join(
        &self,
        _op: &mut Op,
        net: &Network,
        ep: &Endpoint,
        _sandbox: &Sandbox,
    ) -> Result<JoinInfo> {
        let o = BridgeOptions::from_network(&net.options)?;
        let has = |v4: bool| ep.addresses.iter().any(|a| a.is_ipv4() == v4);
        let gateway = |v4: bool| -> Option<IpAddr> {
            if !o.is_gateway || !has(v4) {
                return None;
            }
            net.subnets
                .iter()
                .filter(|s| s.subnet.is_ipv4() == v4)
                .find_map(|s| s.gateway)
        };
        let (gw4, gw6) = (gateway(true), gateway(false));
        let mut routes = Vec::new();
        if o.is_default_gateway {
            for gw in [gw4, gw6].into_iter().flatten() {
                let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                let destination = dst
                    .parse()
                    .map_err(|_| Error::Internal("default route literal".into()))?;
                routes.push(RouteSpec {
                    destination,
                    gateway: Some(gw),
                });
            }
        }
        Ok(JoinInfo {
            gateway_v4: gw4,
            gateway_v6: gw6,
            routes,
            dst_prefix: "eth".into(),
        })
    }

    fn leave(&self, _op: &mut Op, _net: &Network, _ep: &Endpoint) -> Result<()> {
        // The veth goes with delete_endpoint; nothing is bound to the sandbox itself.
        Ok(())
    }

    fn check(&self, host: &Netlink, net: &Network, ep: &Endpoint) -> Result<Vec<Drift>> {
        let o = BridgeOptions::from_network(&net.options)?;
        check_endpoint(host, net, &o, ep)
    }

    fn gc(&self, op: &mut Op, net: &Network, live: &[AttachmentKey]) -> Result<Vec<Error>> {
        let o = BridgeOptions::from_network(&net.options)?;
        let nl = op.host()?;
        let Some(br) = nl.link_by_name(&o.bridge)? else {
            return Ok(Vec::new());
        };
        let keep: Vec<String> = live.iter().map(|k| naming::host_veth(&net.id, k)).collect();
        let mut errors = Vec::new();
        // Links a killed reaper left behind.
        if let Err(e) = reaper::sweep(&nl) {
            errors.push(e);
        }
        for l in nl.links()? {
            if l.master == Some(br.index)
                && naming::is_host_veth(&l.name)
                && !keep.contains(&l.name)
            {
                tracing::info!(network = %net.name, link = %l.name, "gc removes a stale veth");
                if let Err(e) = nl.delete_link_if_exists(l.index) {
                    errors.push(e);
                }
            }
        }
        Ok(errors)
    }
}

/// Compares one endpoint with the kernel as seen through `nl` (the host namespace).
pub fn check_endpoint(
    nl: &Netlink,
    net: &Network,
    o: &BridgeOptions,
    ep: &Endpoint,
) -> Result<Vec<Drift>> {
    let mut drift = Vec::new();
    let Some(br) = nl.link_by_name(&o.bridge)? else {
        drift.push(Drift {
            subject: format!("bridge {}", o.bridge),
            problem: "missing".into(),
        });
        return Ok(drift);
    };
    if !br.is_up() {
        drift.push(Drift {
            subject: format!("bridge {}", o.bridge),
            problem: "down".into(),
        });
    }
    if wants_vlans(o) && br.vlan_filtering != Some(true) {
        drift.push(Drift {
            subject: format!("bridge {}", o.bridge),
            problem: "vlan_filtering is off".into(),
        });
    }
    if o.is_gateway {
        let gw_if = gateway_interface(o);
        match nl.link_by_name(gw_if)? {
            None => drift.push(Drift {
                subject: format!("gateway interface {gw_if}"),
                problem: "missing".into(),
            }),
            Some(l) => {
                let present = nl.addresses_of(l.index)?;
                for gw in gateway_addresses(net) {
                    if !present.iter().any(|a| a.address == gw) {
                        drift.push(Drift {
                            subject: format!(
                                "{} {gw_if}",
                                if gw_if == o.bridge {
                                    "bridge"
                                } else {
                                    "gateway interface"
                                }
                            ),
                            problem: format!("gateway address {gw} missing"),
                        });
                    }
                }
            }
        }
    }
    let host = naming::host_veth(&net.id, &ep.key);
    match nl.link_by_name(&host)? {
        None => drift.push(Drift {
            subject: format!("veth {host}"),
            problem: "missing on the host".into(),
        }),
        Some(l) => {
            if l.master != Some(br.index) {
                drift.push(Drift {
                    subject: format!("veth {host}"),
                    problem: format!("not attached to bridge {}", o.bridge),
                });
            }
            if !l.is_up() {
                drift.push(Drift {
                    subject: format!("veth {host}"),
                    problem: "down".into(),
                });
            }
            if wants_vlans(o) {
                let have = nl.port_vlans(l.index)?;
                for problem in vlan_drift(o, &have) {
                    drift.push(Drift {
                        subject: format!("veth {host}"),
                        problem,
                    });
                }
            }
        }
    }
    Ok(drift)
}

/// Whether the network tags its ports (CNI `vlan` or `vlanTrunk`).
fn wants_vlans(o: &BridgeOptions) -> bool {
    o.vlan.is_some() || !o.vlan_trunk.is_empty()
}

/// The interface carrying the gateway addresses: the VLAN gateway port, else the bridge.
fn gateway_interface(o: &BridgeOptions) -> &str {
    o.gateway_interface.as_deref().unwrap_or(&o.bridge)
}

/// The bridge end of a VLAN gateway port: `nlgp` + 6 hex digits of the bridge name + `-<vid>`
/// (never mistaken for a container's host veth, see [`naming::is_host_veth`]).
fn vlan_gateway_port(bridge: &str, vid: u16) -> String {
    format!(
        "nlgp{:06x}-{vid}",
        crate::naming::fnv1a(&["vlan-gateway-port", bridge]) & 0xff_ffff
    )
}

fn is_vlan_gateway_port(name: &str) -> bool {
    name.starts_with("nlgp")
        && name
            .get(4..10)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        && name.get(10..11) == Some("-")
}

/// Gives a new bridge port the network's VLANs: the access VLAN as PVID and untagged (the
/// container never sees tags), trunk VLANs tagged; without `preserveDefaultVlan` the bridge's
/// default VLAN is taken off first, as the reference plugin does.
fn configure_port_vlans(nl: &Netlink, port: u32, o: &BridgeOptions) -> Result<()> {
    if !wants_vlans(o) {
        return Ok(());
    }
    if !o.preserve_default_vlan {
        for v in nl.port_vlans(port)? {
            nl.bridge_vlan_del(port, v.vid)?;
        }
    }
    if let Some(vid) = o.vlan {
        nl.bridge_vlan_add(port, vid, true, true)?;
    }
    for &vid in &o.vlan_trunk {
        nl.bridge_vlan_add(port, vid, false, false)?;
    }
    Ok(())
}

/// What is wrong with a port's VLANs (`have`) for these options.
fn vlan_drift(o: &BridgeOptions, have: &[engine_core::netlink::PortVlan]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(vid) = o.vlan {
        match have.iter().find(|v| v.vid == vid) {
            None => out.push(format!("vlan {vid} missing on the bridge port")),
            Some(v) if !v.pvid || !v.untagged => {
                out.push(format!("vlan {vid} is not the port's untagged PVID"))
            }
            Some(_) => {}
        }
        if let Some(other) = have.iter().find(|v| v.pvid && v.vid != vid) {
            out.push(format!("port PVID is {} instead of {vid}", other.vid));
        }
    }
    let missing: Vec<u16> = o
        .vlan_trunk
        .iter()
        .copied()
        .filter(|t| !have.iter().any(|v| v.vid == *t))
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "trunk vlan(s) {} missing on the bridge port",
            options::format_trunk(&missing)
        ));
    }
    out
}

/// Whether the store says netloom created this network's bridge.
pub fn created_bridge(store: &dyn StateStore, network_id: &str) -> Result<bool> {
    Ok(store.get(&created_marker(network_id))?.is_some())
}
