//! The overlay driver: one subnet spanning hosts over VXLAN.
//!
//! Per host and overlay: a bridge (the bridge driver's, with the subnet's gateway on it, so
//! containers leave through the local host with masquerade) and a VXLAN device enslaved to it
//! (learning off, ARP/NDP proxy on). Containers get veths on the bridge exactly as with the
//! bridge driver, with a MAC derived from their address ([`control::mac_for`]).
//!
//! The cluster-wide parts live in the global store ([`control`]): the VNI, the endpoints of
//! every host, leased host records. Front doors resolve the VNI and the local tunnel address
//! before creating the network, so this driver only does kernel work; remote containers are
//! programmed into the VXLAN device ([`program`]) by the front door (the first container of an
//! overlay on a host) and by the per-host [`agent`] (every later change).

pub mod agent;
pub mod control;
pub mod names;
pub mod options;
pub mod program;

use engine_core::driver::{Capabilities, Driver, Handoff, JoinInfo, Op};
use engine_core::journal::UndoStep;
use engine_core::netlink::{ethtool, LinkKind, VxlanSpec};
use engine_core::netns::Netns;
use engine_core::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, Error, Network, NetworkSpec, Options, Result,
    Sandbox,
};

use crate::bridge::BridgeDriver;
pub use options::{OverlayOptions, TxCsum};

/// The overlay driver (Docker `netloom-overlay`, CNI `netloom-vxlan`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OverlayDriver;

/// Strips the overlay's own options so the bridge driver sees only its own.
fn bridge_view(net: &Network) -> Network {
    let mut n = net.clone();
    n.options.retain(|k, _| {
        ![
            options::OVERLAY,
            options::VNI,
            options::VXLAN_PORT,
            options::VTEP,
            options::VXLAN,
            options::TX_CSUM_OFFLOAD,
        ]
        .contains(&k.as_str())
    });
    n
}

impl OverlayDriver {
    fn ensure_vxlan(&self, op: &mut Op, net: &Network, o: &OverlayOptions) -> Result<()> {
        let nl = op.host()?;
        let bridge = net
            .options
            .get(crate::bridge::options::BRIDGE)
            .cloned()
            .ok_or_else(|| Error::Internal("overlay network without a bridge name".into()))?;
        let br = nl.link_index(bridge.as_str())?;
        if let Some(l) = nl.link_by_name(&o.vxlan)? {
            if l.kind != Some(LinkKind::Vxlan) {
                return Err(Error::Conflict(format!(
                    "{} exists and is not a VXLAN device; remove it",
                    o.vxlan
                )));
            }
        } else {
            let underlay = nl.underlay(o.vtep)?;
            let host_ns = op.host_netns().map(|p| p.to_path_buf());
            op.record(UndoStep::DeleteLink {
                netns: host_ns,
                name: o.vxlan.clone(),
            })?;
            let mut spec = VxlanSpec::new(&o.vxlan, o.vni)
                .port(o.port)
                .local(o.vtep)
                .parent(underlay.index)
                .learning(false)
                .proxy(true);
            if let Some(mtu) = net.mtu {
                spec = spec.mtu(mtu);
            }
            match nl.create_vxlan(&spec) {
                Ok(_) => {}
                // EEXIST: a parallel ADD on this host made it first, or another VXLAN device
                // here already uses this VNI and port (the kernel allows one).
                Err(e) if engine_core::netlink::is_exists(&e) => {
                    if nl.link_by_name(&o.vxlan)?.is_none() {
                        return Err(Error::Conflict(format!(
                            "another VXLAN device on this host already uses VNI {} on UDP port {}; remove it or pin another vxlanid",
                            o.vni, o.port
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let off = match o.tx_csum {
            TxCsum::Off => true,
            TxCsum::On => false,
            TxCsum::Auto => ethtool::needs_tx_checksum_workaround(),
        };
        if off {
            let ns = op.host_netns().map(Netns::open).transpose()?;
            ethtool::set_tx_checksum(ns.as_ref(), &o.vxlan, false)
                .map_err(|e| e.context(format!("turn off tx checksum offload on {}", o.vxlan)))?;
        }
        nl.set_master(o.vxlan.as_str(), br)?;
        nl.set_up(o.vxlan.as_str())?;
        Ok(())
    }
}

impl Driver for OverlayDriver {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            scope: "global".into(),
            supports_ipv6: true,
            supports_port_mapping: true,
            max_endpoints: Some(crate::bridge::MAX_PORTS - 1),
            no_interface: false,
        }
    }

    fn validate(&self, spec: &NetworkSpec) -> Result<Options> {
        options::normalise(spec)
    }

    fn create_network(&self, op: &mut Op, net: &Network) -> Result<()> {
        let o = OverlayOptions::from_network(&net.options)?;
        BridgeDriver.create_network(op, &bridge_view(net))?;
        self.ensure_vxlan(op, net, &o)
    }

    fn delete_network(&self, op: &mut Op, net: &Network) -> Result<()> {
        let o = OverlayOptions::from_network(&net.options)?;
        let nl = op.host()?;
        nl.delete_link_if_exists(o.vxlan.as_str())?;
        BridgeDriver.delete_network(op, &bridge_view(net))
    }

    fn create_endpoint(&self, op: &mut Op, net: &Network, spec: &EndpointSpec) -> Result<Handoff> {
        let mut spec = spec.clone();
        if spec.mac.is_none() {
            // Remote hosts are told the MAC with the address; derive it so it is known up front.
            if let Some(a) = spec
                .addresses
                .iter()
                .find(|a| a.is_ipv4())
                .or(spec.addresses.first())
            {
                spec.mac = Some(control::mac_for(a.ip()).to_string());
            }
        }
        BridgeDriver.create_endpoint(op, &bridge_view(net), &spec)
    }

    fn delete_endpoint(&self, op: &mut Op, net: &Network, ep: &Endpoint) -> Result<()> {
        BridgeDriver.delete_endpoint(op, &bridge_view(net), ep)
    }

    fn join(
        &self,
        op: &mut Op,
        net: &Network,
        ep: &Endpoint,
        sandbox: &Sandbox,
    ) -> Result<JoinInfo> {
        BridgeDriver.join(op, &bridge_view(net), ep, sandbox)
    }

    fn leave(&self, op: &mut Op, net: &Network, ep: &Endpoint) -> Result<()> {
        BridgeDriver.leave(op, &bridge_view(net), ep)
    }

    fn check(
        &self,
        host: &engine_core::netlink::Netlink,
        net: &Network,
        ep: &Endpoint,
    ) -> Result<Vec<Drift>> {
        let o = OverlayOptions::from_network(&net.options)?;
        let mut drift = BridgeDriver.check(host, &bridge_view(net), ep)?;
        match host.link_by_name(&o.vxlan)? {
            None => drift.push(Drift {
                subject: format!("vxlan {}", o.vxlan),
                problem: "missing".into(),
            }),
            Some(l) if !l.is_up() => drift.push(Drift {
                subject: format!("vxlan {}", o.vxlan),
                problem: "down".into(),
            }),
            Some(_) => {}
        }
        Ok(drift)
    }

    fn gc(&self, op: &mut Op, net: &Network, live: &[AttachmentKey]) -> Result<Vec<Error>> {
        BridgeDriver.gc(op, &bridge_view(net), live)
    }
}
