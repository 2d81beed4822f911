//! The plugins themselves: each binary in `src/bin/` is `run_process(&Plugin)`.

pub mod bridge;
pub mod context;
pub mod delegate;
pub mod dns;
pub mod hostlocal;
pub mod ipam;
pub mod ipvlan;
pub mod loopback;
pub mod macvlan;
pub mod mirror;
pub mod portmap;
pub mod vxlan;

/// CNI_ARGS keys the main plugins understand: the Kubernetes ones runtimes always send, plus
/// static `IP` and `MAC`.
pub const MAIN_PLUGIN_ARGS: &[&str] = &[
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
    "MAC",
];

/// The ADD result of a main plugin: the host interfaces the driver reports (a bridge and the
/// host veth), the container's interface, its addresses with their subnets' gateways, the
/// routes it got, and DNS from the network config or else IPAM's `resolvConf`.
pub fn attachment_result(
    a: &engine_core::engine::Attachment,
    req: &crate::skel::Request,
    netns: &std::path::Path,
    ipam: &hostlocal::IpamConf,
) -> Result<crate::result::CniResult, crate::error::CniError> {
    use crate::result::{CniResult, Interface, IpConfig, Route};
    let mut result = CniResult::default();
    for h in &a.handoff.host_interfaces {
        result.interfaces.push(Interface {
            name: h.name.clone(),
            mac: h.mac.clone(),
            ..Default::default()
        });
    }
    let container_index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: req.key.ifname.clone(),
        mac: a.endpoint.mac.clone(),
        sandbox: Some(netns.to_string_lossy().into_owned()),
        ..Default::default()
    });
    for addr in &a.endpoint.addresses {
        let gateway = a
            .network
            .subnets
            .iter()
            .find(|s| s.subnet.contains(addr.ip()))
            .and_then(|s| s.gateway);
        result.ips.push(IpConfig {
            address: *addr,
            gateway,
            interface: Some(container_index),
        });
    }
    for r in &a.join.routes {
        result.routes.push(Route::new(r.destination, r.gateway));
    }
    result.dns = match req.config.dns.clone() {
        Some(d) if !d.is_empty() => d,
        _ => ipam.dns()?,
    };
    Ok(result)
}

/// [`attachment_result`] for addresses a delegated IPAM plugin handed out: its DNS settings
/// (unless the configuration has its own) instead of a resolvConf file.
pub fn delegated_attachment_result(
    a: &engine_core::engine::Attachment,
    req: &crate::skel::Request,
    netns: &std::path::Path,
    ipam_dns: crate::result::Dns,
) -> Result<crate::result::CniResult, crate::error::CniError> {
    let none = hostlocal::IpamConf::none();
    let mut result = attachment_result(a, req, netns, &none)?;
    if result.dns.is_empty() {
        result.dns = ipam_dns;
    }
    Ok(result)
}
