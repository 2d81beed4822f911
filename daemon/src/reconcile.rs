//! Startup reconciliation: make the store and the kernel agree after netloomd died, whatever it
//! was doing.
//!
//! Docker never replays CreateNetwork or CreateEndpoint to a restarted plugin, so what is in the
//! store is what exists. First the engine undoes its own interrupted operations (its journals).
//! Then netloomd's records settle the Docker-level steps, using the order in which the service
//! writes them:
//! - a network record without an engine network: CreateNetwork died before the network existed,
//!   or DeleteNetwork died after removing it → remove its shadow pools (networks of earlier
//!   versions have them) and the record;
//! - a shadow pool without a network record: leftover of either → release it;
//! - an engine endpoint on a Docker network without an endpoint record: CreateEndpoint died
//!   before answering (Docker treats it as failed and will not delete it) → detach it;
//! - an endpoint record without an engine endpoint: DeleteEndpoint died half-way → drop it.
//!
//! Then each Docker network's bridge and firewall rules are re-asserted (idempotent: a host
//! reboot or `nft flush ruleset` loses them while the store keeps the networks), and each
//! endpoint's published ports are set to exactly its record's.

use std::sync::Arc;

use engine_core::driver::Op;
use engine_core::engine::{network_rules, LOCK_TIMEOUT};
use engine_core::firewall::EndpointRules;
use engine_core::journal::{CoreUndoer, Txn, Undoer};
use engine_core::{AttachmentKey, Network, Result, ResultExt};

use crate::records;
use crate::service::{Service, ENDPOINT_IFNAME};

/// What reconciliation did, for the log and /health.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub journals_rolled_back: usize,
    pub journals_failed: usize,
    pub networks_rolled_back: Vec<String>,
    pub pools_released: Vec<String>,
    pub endpoints_rolled_back: Vec<String>,
    pub endpoint_records_dropped: Vec<String>,
    pub networks_repaired: usize,
    /// Problems that did not stop the pass.
    pub problems: Vec<String>,
}

/// Runs the whole pass; individual failures are collected in the report, not fatal.
pub fn run(svc: &Service) -> Result<Report> {
    let mut report = Report::default();
    let engine = svc.engine();
    let store = svc.store().clone();
    let rec = engine
        .recover_all()
        .context("roll back interrupted engine operations")?;
    report.journals_rolled_back = rec.rolled_back.len();
    report.journals_failed = rec.failed.len();
    for (r, e) in &rec.failed {
        report
            .problems
            .push(format!("journal {} ({}): {e}", r.id, r.operation));
    }

    // Networks.
    let mut live: Vec<(records::NetworkRecord, Network)> = Vec::new();
    for net_rec in records::list_networks(store.as_ref())? {
        match engine.get_network(&net_rec.id)? {
            Some(net) => live.push((net_rec, net)),
            None => {
                tracing::info!(network = %net_rec.id, "rolling back a network whose creation or deletion was interrupted");
                match svc.forget_network(&net_rec) {
                    Ok(()) => report.networks_rolled_back.push(net_rec.id.clone()),
                    Err(e) => report.problems.push(format!("network {}: {e}", net_rec.id)),
                }
            }
        }
    }
    for pool in svc.ipam().list_pools()? {
        let Some(owner) = records::shadow_pool_network(&pool.id) else {
            continue;
        };
        if live
            .iter()
            .any(|(r, _)| r.id == owner && r.pools.contains(&pool.id))
        {
            continue;
        }
        tracing::info!(pool = %pool.id, "releasing the pool of a network that does not exist");
        let mut ok = true;
        for _ in 0..pool.refs.max(1) {
            if let Err(e) = svc.ipam().release_pool(&pool.id) {
                report.problems.push(format!("pool {}: {e}", pool.id));
                ok = false;
                break;
            }
        }
        if ok {
            report.pools_released.push(pool.id.clone());
        }
    }

    // Endpoints.
    for (net_rec, net) in &live {
        let recs = records::list_endpoints(store.as_ref(), Some(&net_rec.id))?;
        let eps = engine.list_endpoints(&net.id)?;
        for ep in &eps {
            let known = recs.iter().any(|r| r.endpoint_id == ep.key.container_id);
            if known {
                continue;
            }
            tracing::info!(network = %net.id, endpoint = %ep.key, "rolling back an endpoint whose creation was interrupted");
            match engine.detach(&net.id, &ep.key, None) {
                Ok(()) => report
                    .endpoints_rolled_back
                    .push(ep.key.container_id.clone()),
                Err(e) => report.problems.push(format!("endpoint {}: {e}", ep.key)),
            }
        }
        for r in &recs {
            let exists = eps.iter().any(|e| e.key.container_id == r.endpoint_id);
            if !exists {
                tracing::info!(network = %net.id, endpoint = %r.endpoint_id, "dropping the record of an endpoint whose deletion was interrupted");
                records::delete_endpoint(store.as_ref(), &r.network_id, &r.endpoint_id)?;
                report.endpoint_records_dropped.push(r.endpoint_id.clone());
            }
        }
    }

    // Kernel and firewall state of what remains.
    for (net_rec, net) in &live {
        if let Err(e) = repair_network(svc, net) {
            report.problems.push(format!("network {}: {e}", net.id));
            continue;
        }
        report.networks_repaired += 1;
        let (Some(fw), Some(rules)) = (svc.firewall(), network_rules(net)) else {
            continue;
        };
        for r in records::list_endpoints(store.as_ref(), Some(&net_rec.id))? {
            let Ok(key) = AttachmentKey::new(&r.endpoint_id, ENDPOINT_IFNAME) else {
                continue;
            };
            let Some(ep) = engine.get_endpoint(&net.id, &key)? else {
                continue;
            };
            let ep_rules = EndpointRules {
                network_id: net.id.clone(),
                owner: key.owner(),
                addresses: ep.addresses.iter().map(|a| a.ip()).collect(),
                ports: r.ports.clone(),
            };
            if let Err(e) = fw.add_endpoint(&rules, &ep_rules) {
                report.problems.push(format!(
                    "published ports of endpoint {}: {e}",
                    r.endpoint_id
                ));
            }
        }
    }
    Ok(report)
}

/// Re-runs the driver's (idempotent) network setup and the firewall's network rules: recreates
/// a bridge or gateway address that vanished, changes nothing that is in place. The engine has
/// no call for this, so it is an operation of our own on the network's lock and journal.
fn repair_network(svc: &Service, net: &Network) -> Result<()> {
    let engine = svc.engine();
    let store = svc.store().clone();
    let driver = engine.drivers().get(&net.driver)?;
    let scope = format!("network/{}", net.id);
    let _lock = store.lock(&scope, LOCK_TIMEOUT)?;
    let undoer: Arc<dyn Undoer> = Arc::new(CoreUndoer::new(store.clone(), None));
    let txn = Txn::begin(
        store.clone(),
        undoer,
        &scope,
        format!("repair network {}", net.id),
    )?;
    let mut op = Op::new(txn, store, None);
    driver
        .create_network(&mut op, net)
        .with_context(|| format!("repair network {}", net.name))?;
    op.commit()?;
    if let (Some(fw), Some(rules)) = (svc.firewall(), network_rules(net)) {
        fw.setup_network(&rules)?;
    }
    Ok(())
}
