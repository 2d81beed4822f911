//! Putting an endpoint's link into a container's namespace: move, rename, address, route, up.
//!
//! This is what CNI plugins do themselves and what Docker does for its remote drivers, so the
//! engine uses it only when the front door says the runtime will not ([`SandboxSetup::Configure`]).
//!
//! [`SandboxSetup::Configure`]: crate::engine::SandboxSetup::Configure

use crate::driver::Op;
use crate::engine::{SandboxConfigurator, SandboxInterface};
use crate::error::{Error, ErrorKind, Result, ResultExt};
use crate::journal::UndoStep;
use crate::model::{Drift, Sandbox};
use crate::netlink::{AddrOptions, Netlink, RouteSpec};
use crate::netns::Netns;
use ipnetwork::IpNetwork;

/// The netlink implementation of [`SandboxConfigurator`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NetlinkSandboxes;

impl SandboxConfigurator for NetlinkSandboxes {
    fn configure(
        &self,
        op: &mut Op,
        sandbox: &Sandbox,
        iface: &SandboxInterface<'_>,
    ) -> Result<String> {
        let path = &sandbox.netns_path;
        let ns =
            Netns::open(path).with_context(|| format!("container namespace {}", path.display()))?;
        let inner = Netlink::in_netns(&ns)?;
        if !iface.handoff.placed {
            if inner.link_by_name(iface.ifname)?.is_some() {
                return Err(Error::Conflict(format!(
                    "interface {} already exists in {}; pick another CNI_IFNAME or DEL the old attachment",
                    iface.ifname,
                    path.display()
                )));
            }
            // Once moved, the link's only handle is its name in the container: record that first.
            op.record(UndoStep::DeleteLink {
                netns: Some(path.clone()),
                name: iface.ifname.to_string(),
            })?;
            op.host()?
                .move_to_netns(iface.handoff.link.as_str(), &ns, Some(iface.ifname))?;
            if let Some(mtu) = iface.mtu {
                inner.set_mtu(iface.ifname, mtu)?;
            }
        }
        for a in iface.addresses {
            // No DAD wait: IPAM guarantees uniqueness, and DAD would delay the container by ~1 s.
            inner.add_address(
                iface.ifname,
                *a,
                AddrOptions {
                    nodad: true,
                    ..Default::default()
                },
            )?;
        }
        inner.set_up(iface.ifname)?;
        let index = inner.link_index(iface.ifname)?;
        for r in &iface.join.routes {
            let mut spec = RouteSpec::new(r.destination).dev(index);
            if let Some(gw) = r.gateway {
                spec = spec.via(gw);
            }
            inner
                .add_route(&spec)
                .with_context(|| format!("route {} in {}", r.destination, path.display()))?;
        }
        let mac = inner
            .link_by_index(index)?
            .and_then(|l| l.mac)
            .map(|m| m.to_string())
            .unwrap_or_default();
        Ok(mac)
    }

    fn check(
        &self,
        sandbox: &Sandbox,
        ifname: &str,
        addresses: &[IpNetwork],
    ) -> Result<Vec<Drift>> {
        let subject = format!("interface {ifname} in {}", sandbox.netns_path.display());
        let drift = |problem: String| {
            vec![Drift {
                subject: subject.clone(),
                problem,
            }]
        };
        let ns = match Netns::open(&sandbox.netns_path) {
            Ok(ns) => ns,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(drift("the namespace is gone".into()))
            }
            Err(e) => return Err(e),
        };
        let nl = Netlink::in_netns(&ns)?;
        let Some(link) = nl.link_by_name(ifname)? else {
            return Ok(drift("missing".into()));
        };
        let mut out = Vec::new();
        if !link.is_up() {
            out.extend(drift("down".into()));
        }
        let present = nl.addresses_of(link.index)?;
        for a in addresses {
            if !present.iter().any(|p| p.address == *a) {
                out.extend(drift(format!("address {a} missing")));
            }
        }
        Ok(out)
    }

    fn deconfigure(&self, sandbox: &Sandbox, ifname: &str) -> Result<()> {
        let ns = match Netns::open(&sandbox.netns_path) {
            Ok(ns) => ns,
            // The runtime already removed the namespace, and the interface with it.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidConfig) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let nl = Netlink::in_netns(&ns)?;
        match nl.link_by_name(ifname)? {
            None => Ok(()),
            // A veth goes with its host end, which the driver handed to the reaper; deleting
            // it here would make DEL wait for the kernel.
            Some(l) if l.kind == Some(crate::netlink::LinkKind::Veth) => match nl.set_down(l.index)
            {
                // The reaper was quicker.
                Err(e) if crate::netlink::is_not_found(&e) => Ok(()),
                other => other,
            },
            Some(l) => nl.delete_link_if_exists(l.index).map(|_| ()),
        }
    }
}
