//! Keeps netloom's firewall rules in place when something else rewrites the ruleset: `nft
//! flush ruleset`, a firewalld or iptables-restore reload, a configuration-management run.
//! Docker's and netavark's rules silently vanish then and published ports stop working until
//! the next restart; netloomd puts its own back within a second.
//!
//! A thread polls the backend's generation (one netlink round trip for nftables) every
//! [`POLL`]; when it moved, each network's rules and its endpoints' published ports are
//! reapplied. Reapplying only adds what is missing, so the network's lock (held by network
//! creation and deletion) and the endpoint records' lock (held while ports are published or
//! revoked) are taken around it: a network or port removed meanwhile is never put back.
//! Backends without a generation (iptables) are reapplied every [`IPTABLES_EVERY`] instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::engine::{network_rules, LOCK_TIMEOUT};
use engine_core::firewall::EndpointRules;
use engine_core::{AttachmentKey, Result};
use tokio::sync::watch;

use crate::http::App;
use crate::records;
use crate::service::ENDPOINT_IFNAME;

/// How often the ruleset generation is read.
pub const POLL: Duration = Duration::from_millis(250);

/// How often a backend without a generation is reapplied.
pub const IPTABLES_EVERY: Duration = Duration::from_secs(1);

/// Starts the guard on a thread of its own (the firewall and the store are blocking APIs);
/// it stops when `stop` turns true.
pub fn spawn(app: Arc<App>, stop: watch::Receiver<bool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("netloomd-fwguard".into())
        .spawn(move || run(&app, &stop))
        .map(|_| ())
}

fn run(app: &App, stop: &watch::Receiver<bool>) {
    let Some(fw) = app.service.firewall().cloned() else {
        return;
    };
    let mut seen: Option<u64> = None;
    let mut last_pass = Instant::now();
    while !*stop.borrow() {
        std::thread::sleep(POLL);
        let generation = match fw.generation() {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "firewall guard: cannot read the ruleset generation");
                continue;
            }
        };
        let due = match generation {
            Some(g) => seen != Some(g),
            None => last_pass.elapsed() >= IPTABLES_EVERY,
        };
        if !due {
            continue;
        }
        last_pass = Instant::now();
        match restore(app) {
            Ok(0) => {}
            Ok(n) => {
                app.metrics.add_firewall_restores(n as u64);
                tracing::warn!(
                    restored = n,
                    backend = fw.backend(),
                    "firewall rules had been removed by someone else; put them back"
                );
            }
            Err(e) => tracing::warn!(error = %e, "firewall guard: reapplying failed"),
        }
        // Our own changes moved the generation too: remember the one after them.
        seen = fw.generation().ok().flatten();
    }
}

/// Reapplies every network's rules and published ports; returns how many items were missing.
fn restore(app: &App) -> Result<usize> {
    let svc = &app.service;
    let Some(fw) = svc.firewall() else {
        return Ok(0);
    };
    let store = svc.store();
    let engine = svc.engine();
    let mut restored = 0;
    for net_rec in records::list_networks(store.as_ref())? {
        let _net_lock = store.lock(&format!("network/{}", net_rec.id), LOCK_TIMEOUT)?;
        // Deleted while we waited for its lock: nothing of it must come back.
        let Some(net) = engine.get_network(&net_rec.id)? else {
            continue;
        };
        let Some(rules) = network_rules(&net) else {
            continue;
        };
        let _records = svc.lock_records();
        let mut eps = Vec::new();
        for r in records::list_endpoints(store.as_ref(), Some(&net_rec.id))? {
            let Ok(key) = AttachmentKey::new(&r.endpoint_id, ENDPOINT_IFNAME) else {
                continue;
            };
            let Some(ep) = engine.get_endpoint(&net.id, &key)? else {
                continue;
            };
            eps.push(EndpointRules {
                network_id: net.id.clone(),
                owner: key.owner(),
                addresses: ep.addresses.iter().map(|a| a.ip()).collect(),
                ports: r.ports.clone(),
            });
        }
        restored += fw.reapply(std::slice::from_ref(&rules), &eps)?.len();
    }
    Ok(restored)
}
