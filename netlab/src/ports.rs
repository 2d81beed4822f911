//! The doctor's "missing NAT for a published port" check: every port netloom says it published
//! (netloom-portmap's records, netloomd's endpoint records) must still be in the firewall. A
//! `nft flush ruleset` or a firewalld reload removes them silently: the port then answers
//! nothing, or another service on the host answers instead.
//!
//! The comparison is the firewall engine's own read-only `check`, so netlab judges exactly
//! what netloom would restore.

use std::path::Path;

use engine_core::engine::network_rules;
use engine_core::firewall::{EndpointRules, Firewaller, NetworkRules, NftFirewall};
use engine_core::store::file::FileStore;
use engine_core::{AttachmentKey, Endpoint, Key, Network, PortMapping, StateStoreExt};
use serde::Deserialize;

use crate::doctor::{check, Check, Verdict};

/// What netloom-portmap keeps per attachment (`portmap/<network>/<container>/<ifname>`).
#[derive(Deserialize)]
struct PortmapRecord {
    network: NetworkRules,
    endpoint: EndpointRules,
}

/// The part of netloomd's endpoint record (`docker/endpoints/<network>/<endpoint>`) that says
/// what it published.
#[derive(Deserialize)]
struct DockerEndpoint {
    network_id: String,
    endpoint_id: String,
    #[serde(default)]
    ports: Vec<PortMapping>,
}

/// The interface name netloomd gives Docker endpoints in the engine.
const DOCKER_IFNAME: &str = "eth";

pub fn published_ports(state_dir: &Path) -> Check {
    const ID: &str = "published_ports";
    if !state_dir.is_dir() {
        return check(
            ID,
            Verdict::Skip,
            format!("no netloom state at {}", state_dir.display()),
        );
    }
    let store = match FileStore::open(state_dir) {
        Ok(s) => s,
        Err(e) => return check(ID, Verdict::Skip, format!("netloom state unreadable: {e}")),
    };
    let mut wanted: Vec<(String, NetworkRules, EndpointRules)> = Vec::new();
    if let Ok(recs) = store.list_json::<PortmapRecord>(&Key::new(["portmap"])) {
        for (k, _, r) in recs {
            if !r.endpoint.ports.is_empty() {
                wanted.push((k.to_string(), r.network, r.endpoint));
            }
        }
    }
    if let Ok(recs) = store.list_json::<DockerEndpoint>(&Key::new(["docker", "endpoints"])) {
        for (k, _, r) in recs {
            if r.ports.is_empty() {
                continue;
            }
            let net = store
                .get_json::<Network>(&Key::new(["networks", &r.network_id]))
                .ok()
                .flatten();
            let Some(rules) = net.as_ref().and_then(|(_, n)| network_rules(n)) else {
                continue;
            };
            let Ok(akey) = AttachmentKey::new(&r.endpoint_id, DOCKER_IFNAME) else {
                continue;
            };
            let ep = store
                .get_json::<Endpoint>(&Key::new([
                    "endpoints",
                    &r.network_id,
                    &akey.container_id,
                    &akey.ifname,
                ]))
                .ok()
                .flatten();
            let Some((_, ep)) = ep else {
                continue;
            };
            wanted.push((
                k.to_string(),
                rules,
                EndpointRules {
                    network_id: r.network_id.clone(),
                    owner: akey.owner(),
                    addresses: ep.addresses.iter().map(|a| a.ip()).collect(),
                    ports: r.ports,
                },
            ));
        }
    }
    if wanted.is_empty() {
        return check(ID, Verdict::Ok, "netloom has published no ports");
    }
    let fw = match NftFirewall::new() {
        Ok(f) => f,
        Err(e) => {
            return check(
                ID,
                Verdict::Skip,
                format!("the nftables ruleset cannot be read here: {e}"),
            )
        }
    };
    let mut findings = Vec::new();
    for (key, net, ep) in &wanted {
        match fw.check(net, std::slice::from_ref(ep)) {
            // Anything missing of the publication or of its network's rules breaks the port.
            Ok(drift) => findings.extend(drift.iter().map(|d| format!("{key}: {d}"))),
            Err(e) => findings.push(format!("{key}: cannot check: {e}")),
        }
    }
    if findings.is_empty() {
        return check(
            ID,
            Verdict::Ok,
            format!("all {} publications are in the firewall", wanted.len()),
        );
    }
    let mut c = check(
        ID,
        Verdict::Fail,
        format!(
            "{} published port(s) have no NAT rule: connections to them reach nothing",
            findings.len()
        ),
    );
    c.findings = findings;
    c.fix = Some(
        "netloomd restores them within a second by itself; without it, run the CNI plugin's CHECK/ADD again or restart netloomd".into(),
    );
    c
}
