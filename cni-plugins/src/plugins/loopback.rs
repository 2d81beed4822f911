//! `netloom-loopback`: brings `lo` up in the container, as the reference `loopback` plugin.

use engine_core::netlink::Netlink;
use engine_core::netns::Netns;
use engine_core::ErrorKind;

use crate::error::CniError;
use crate::result::{CniResult, Interface, IpConfig};
use crate::skel::{Plugin, Request};

/// The plugin.
pub struct LoopbackPlugin;

fn lo(req: &Request) -> Result<Option<Netlink>, CniError> {
    let Some(path) = &req.netns else {
        return Ok(None);
    };
    match Netns::open(path) {
        Ok(ns) => Ok(Some(Netlink::in_netns(&ns)?)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Plugin for LoopbackPlugin {
    fn name(&self) -> &str {
        "netloom-loopback"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let netns = req.netns()?.to_path_buf();
        let nl = lo(req)?.ok_or_else(|| {
            CniError::invalid_netns(format!("namespace {} does not exist", netns.display()))
        })?;
        nl.set_up("lo")?;
        let mut r = CniResult::default();
        r.interfaces.push(Interface {
            name: "lo".into(),
            mac: Some("00:00:00:00:00:00".into()),
            sandbox: Some(netns.to_string_lossy().into_owned()),
            ..Default::default()
        });
        for a in nl.addresses_of("lo")? {
            r.ips.push(IpConfig {
                address: a.address,
                gateway: None,
                interface: Some(0),
            });
        }
        Ok(r)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        // DEL must succeed when the namespace is already gone.
        if let Some(nl) = lo(req)? {
            nl.set_down("lo")?;
        }
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let nl = lo(req)?
            .ok_or_else(|| CniError::invalid_netns("the container namespace does not exist"))?;
        match nl.link_by_name("lo")? {
            Some(l) if l.is_up() => Ok(()),
            _ => Err(CniError::new(
                crate::error::code::KERNEL,
                "lo is down in the container",
            )),
        }
    }
}
