//! `netloom-ipam`: host-local's configuration and results, over netloom's crash-safe IPAM.
//! Usable under any main plugin (it is exec'd with the main plugin's configuration).

use std::path::PathBuf;

use engine_core::ipam::{AddressRequest, Ipam, Release};
use serde::Deserialize;

use crate::error::CniError;
use crate::plugins::bridge::requested_ips;
use crate::plugins::context::{state_dir, Context, Needs};
use crate::plugins::hostlocal::IpamConf;
use crate::plugins::mirror::Mirror;
use crate::result::{CniResult, IpConfig};
use crate::skel::{GcRequest, Plugin, Request, StatusRequest};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct TopConf {
    state_dir: Option<PathBuf>,
}

/// The plugin.
pub struct IpamPlugin;

fn open(config: &crate::config::NetConf) -> Result<(IpamConf, Context), CniError> {
    let ipam_obj = config.ipam.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "netloom-ipam needs the \"ipam\" section of the network configuration",
        )
    })?;
    let conf = IpamConf::parse(ipam_obj)?;
    let top: TopConf = config.plugin_config()?;
    let ctx = Context::open_with(state_dir(top.state_dir, Some(&conf)), Needs::default())?;
    Ok((conf, ctx))
}

impl Plugin for IpamPlugin {
    fn name(&self) -> &str {
        "netloom-ipam"
    }

    fn known_args(&self) -> &[&str] {
        &super::MAIN_PLUGIN_ARGS[..5]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let (conf, ctx) = open(&req.config)?;
        let pools = ctx.ensure_pools(&req.config.name, &conf)?;
        let wanted = requested_ips(req)?;
        let owner = req.key.owner();
        let mut result = CniResult::default();
        for (i, pool) in pools.iter().enumerate() {
            let address = wanted
                .iter()
                .copied()
                .find(|a| conf.range_sets[i].iter().any(|r| r.subnet.contains(*a)));
            let lease = ctx.ipam.request_address(
                pool,
                &AddressRequest {
                    owner: owner.clone(),
                    address,
                },
            );
            let lease = match lease {
                Ok(l) => l,
                Err(e) => {
                    // One address per range set or none: give back what this ADD already took.
                    for p in &pools[..i] {
                        let _ = ctx.ipam.release_address(p, &Release::Owner(owner.clone()));
                    }
                    return Err(e.into());
                }
            };
            result.ips.push(IpConfig {
                address: lease.address,
                gateway: lease.gateway,
                interface: None,
            });
        }
        let ips: Vec<std::net::IpAddr> = result.ips.iter().map(|i| i.address.ip()).collect();
        Mirror::new(conf.data_dir.as_deref(), &req.config.name).add(&req.key, &ips);
        result.routes = conf.routes.clone();
        result.dns = conf.dns()?;
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (conf, ctx) = open(&req.config)?;
        for i in 0..conf.range_sets.len() {
            ctx.ipam.release_address(
                &IpamConf::pool_id(&req.config.name, i),
                &Release::Owner(req.key.owner()),
            )?;
        }
        Mirror::new(conf.data_dir.as_deref(), &req.config.name).remove_owner(&req.key);
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (conf, ctx) = open(&req.config)?;
        let owner = req.key.owner();
        for i in 0..conf.range_sets.len() {
            let pool = IpamConf::pool_id(&req.config.name, i);
            if !ctx.ipam.leases(&pool)?.iter().any(|l| l.owner == owner) {
                return Err(CniError::new(
                    crate::error::code::NOT_FOUND,
                    format!(
                        "{owner} holds no address in range set {i} of network {}",
                        req.config.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn status(&self, req: &StatusRequest) -> Result<(), CniError> {
        let (conf, ctx) = open(&req.config).map_err(|e| CniError::unavailable(e.msg))?;
        let _ = conf;
        ctx.store
            .list(&engine_core::Key::new(["ipam", "pools"]))
            .map_err(|e| CniError::status_from(&e, false))?;
        Ok(())
    }

    fn gc(&self, req: &GcRequest) -> Result<(), CniError> {
        let (conf, ctx) = open(&req.config)?;
        let mut first_error = None;
        let mut leased = Vec::new();
        for i in 0..conf.range_sets.len() {
            let pool = IpamConf::pool_id(&req.config.name, i);
            let leases = match ctx.ipam.leases(&pool) {
                Ok(l) => l,
                Err(e) if e.kind() == engine_core::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            // Keep every owner the runtime still lists; free the rest.
            let live: Vec<String> = leases
                .iter()
                .filter(|l| {
                    l.owner
                        .split_once('/')
                        .and_then(|(c, i)| engine_core::AttachmentKey::new(c, i).ok())
                        .is_some_and(|k| req.is_valid(&k))
                })
                .map(|l| l.owner.clone())
                .collect();
            if let Err(e) = ctx.ipam.gc(&pool, &live) {
                first_error.get_or_insert(e);
            }
            leased.extend(ctx.ipam.leases(&pool)?.iter().map(|l| l.address.ip()));
        }
        Mirror::new(conf.data_dir.as_deref(), &req.config.name).retain(&leased);
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
