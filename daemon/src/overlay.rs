//! Docker's `netloom-overlay` networks: what netloomd adds to the bridge-like Docker path when
//! it runs with `--store`.
//!
//! Docker 20.10 without swarm takes only local-scope plugins and gives each dockerd its own
//! network id, so a network is tied to its cluster-wide overlay by name: `-o overlay=<name>`
//! (default: derived from the subnet, so the same `--subnet` on two hosts is the same overlay).
//! Its addresses must be unique across hosts, so the IPAM driver leases them in the global
//! store when asked with `--ipam-opt overlay=<name>`, from the same pool the `netloom-vxlan`
//! CNI plugin uses: Docker and CNI hosts can share one overlay.

use std::net::IpAddr;
use std::sync::Arc;

use drivers::overlay::control::{self, EndpointRecord, MacAddrText, OverlayRequest};
use drivers::overlay::{agent, names, options as oopt};
use engine_core::ipam::{Ipam, PoolRequest, RangeSpec, OPT_ALLOW_OVERLAP};
use engine_core::model::NetworkSpec;
use engine_core::netlink::Netlink;
use engine_core::{Error, Network, Result, StateStore};
use ipam::StoreIpam;
use ipnetwork::IpNetwork;

/// The Docker option naming the overlay (`-o overlay=…`, `--ipam-opt overlay=…`).
pub const OPT_OVERLAY: &str = "overlay";
/// Docker's spelling for a pinned VNI (`-o vxlanid=…`, as Docker's own overlay driver).
pub const OPT_VXLANID: &str = "vxlanid";

/// What netloomd needs for overlays: the global store, IPAM over it, this host's VTEP.
#[derive(Clone)]
pub struct OverlayCtx {
    pub global: Arc<dyn StateStore>,
    pub ipam: Arc<StoreIpam>,
    pub vtep: IpAddr,
    pub port: u16,
}

impl OverlayCtx {
    pub fn new(global: Arc<dyn StateStore>, vtep: IpAddr, port: u16) -> Self {
        let ipam = Arc::new(StoreIpam::new(global.clone(), ipam::no_host_routes()));
        OverlayCtx {
            global,
            ipam,
            vtep,
            port,
        }
    }
}

/// The overlay name used when none is given: from the subnets ("10.0.9.0_24").
pub fn default_name(subnets: &[IpNetwork]) -> String {
    subnets
        .iter()
        .map(|s| s.to_string().replace(['/', ':'], "_"))
        .collect::<Vec<_>>()
        .join("+")
}

/// The global pool of an overlay: the one netloom-vxlan uses (`cni:overlay:<name>:0`).
pub fn pool_id(overlay: &str) -> String {
    format!("cni:overlay:{overlay}:0")
}

/// Whether a pool id is an overlay's global pool.
pub fn is_overlay_pool(id: &str) -> bool {
    id.starts_with("cni:overlay:")
}

/// Creates (or joins) the overlay's global pool for Docker's RequestPool, with exactly the
/// settings netloom-vxlan gives it (host-local's: gateway at the first address), so both
/// front doors share it.
pub fn request_pool(ctx: &OverlayCtx, overlay: &str, subnet: IpNetwork) -> Result<String> {
    let id = pool_id(overlay);
    let first = match subnet {
        IpNetwork::V4(n) => IpAddr::V4(n.nth(1).ok_or_else(|| {
            Error::InvalidConfig(format!("--subnet {subnet} is too small for an overlay"))
        })?),
        IpNetwork::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n.network()) + 1)),
    };
    let range = RangeSpec {
        subnet,
        start: None,
        end: None,
        gateway: Some(first),
    };
    if let Some(p) = ctx.ipam.get_pool(&id)? {
        if p.ranges.first().map(|r| r.subnet) == Some(subnet) {
            return Ok(id);
        }
        return Err(Error::Conflict(format!(
            "overlay {overlay} already has another subnet ({})",
            p.ranges
                .iter()
                .map(|r| r.subnet.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut req = PoolRequest {
        id: Some(id.clone()),
        ranges: vec![range],
        ..Default::default()
    };
    req.options.insert(OPT_ALLOW_OVERLAP.into(), "true".into());
    match ctx.ipam.request_pool(&req) {
        Ok(_) => Ok(id),
        // Another host made it a moment ago.
        Err(e)
            if e.kind() == engine_core::ErrorKind::Conflict
                && ctx.ipam.get_pool(&id)?.is_some() =>
        {
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Fills in an overlay network's spec before the engine creates it: the VNI from the global
/// store (claimed there if new), this host's VTEP and port, the MTU from the underlay.
pub fn resolve(ctx: &OverlayCtx, spec: &mut NetworkSpec) -> Result<String> {
    let name = spec.options.remove(OPT_OVERLAY).unwrap_or_else(|| {
        default_name(&spec.subnets.iter().map(|s| s.subnet).collect::<Vec<_>>())
    });
    let vni = match spec.options.remove(OPT_VXLANID) {
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            Error::InvalidConfig(format!("-o vxlanid={v}: not a number (1-16777215)"))
        })?),
        None => None,
    };
    let rec = control::ensure_overlay(
        ctx.global.as_ref(),
        &OverlayRequest {
            name: name.clone(),
            subnets: spec.subnets.iter().map(|s| s.subnet).collect(),
            vni,
            port: ctx.port,
        },
    )?;
    spec.options.insert(oopt::OVERLAY.into(), name.clone());
    spec.options.insert(oopt::VNI.into(), rec.vni.to_string());
    spec.options
        .insert(oopt::VXLAN_PORT.into(), ctx.port.to_string());
    spec.options.insert(oopt::VTEP.into(), ctx.vtep.to_string());
    if spec.mtu.is_none() {
        spec.mtu = Some(Netlink::connect()?.underlay(ctx.vtep)?.overlay_mtu());
    }
    Ok(name)
}

/// Whether this host already has the overlay's VXLAN device.
pub fn device_exists(overlay: &str) -> Result<bool> {
    Ok(Netlink::connect()?
        .link_by_name(&names::vxlan(overlay))?
        .is_some())
}

/// Copies the overlay's remote containers into a device this host just created.
pub fn sync_new_device(ctx: &OverlayCtx, overlay: &str) -> Result<()> {
    let nl = Netlink::connect()?;
    agent::sync_overlay(ctx.global.as_ref(), &nl, overlay, ctx.vtep).map(|_| ())
}

/// The overlay name of a network, if it is an overlay network.
pub fn overlay_of(net: &Network) -> Option<&str> {
    (net.driver == "overlay")
        .then(|| net.options.get(oopt::OVERLAY).map(String::as_str))
        .flatten()
}

/// Announces a local container to the other hosts.
pub fn publish(
    ctx: &OverlayCtx,
    overlay: &str,
    owner: &str,
    ips: Vec<IpAddr>,
    mac: &str,
) -> Result<()> {
    control::publish_endpoint(
        ctx.global.as_ref(),
        overlay,
        owner,
        &EndpointRecord {
            ips,
            mac: MacAddrText(mac.to_string()),
            vtep: ctx.vtep,
        },
    )
}

/// `netloomd --purge-overlay-host`: removes the records of a host that is gone for good from
/// the global store at once, instead of waiting for `--purge-hosts-after`.
pub fn purge_host(spec: &str, host: IpAddr) -> Result<control::PurgeReport> {
    let global = engine_core::store::open_global(spec)?;
    let ipam = StoreIpam::new(global.clone(), ipam::no_host_routes());
    let id = control::host_id(host);
    let r = control::purge_host(global.as_ref(), Some(&ipam), &id)?;
    // Its departure note, if any, has nothing left to date.
    global.delete(&control::departed_key(&id), engine_core::Expect::Any)?;
    Ok(r)
}

/// Withdraws a local container (idempotent).
pub fn withdraw(ctx: &OverlayCtx, overlay: &str, owner: &str) -> Result<()> {
    control::withdraw_endpoint(ctx.global.as_ref(), overlay, ctx.vtep, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pools() {
        assert_eq!(
            default_name(&["10.0.9.0/24".parse().unwrap()]),
            "10.0.9.0_24"
        );
        assert_eq!(pool_id("web"), "cni:overlay:web:0");
        assert!(is_overlay_pool(&pool_id("web")));
        assert!(!is_overlay_pool("LocalDefault/10.0.0.0/24"));
    }
}
