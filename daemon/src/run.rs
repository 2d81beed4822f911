//! Startup and shutdown: open the store, build the engine, bind the sockets (so Docker's
//! Activate is answered at once), reconcile in the background, serve until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::{anyhow, Context};
use engine_core::engine::Engine;
use engine_core::firewall::{self, FirewallChoice, Firewaller};
use engine_core::netlink::Netlink;
use engine_core::reaper;
use engine_core::sandbox::NetlinkSandboxes;
use engine_core::store::file::FileStore;
use engine_core::StateStore;
use ipam::StoreIpam;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Settings;
use crate::http::{self, App, Readiness};
use crate::service::{AddressSpaces, Service};
use crate::{firewall_guard, reconcile, server};

/// The Docker-facing drivers netloomd can serve, in the engine's names; only those the build's
/// driver registry has get a socket.
const NETWORK_DRIVERS: [&str; 3] = ["bridge", "macvlan", "ipvlan"];

/// Builds the firewall: `auto` falls back to none (ports cannot be published, everything else
/// works) with a warning; an explicit choice that fails stops the daemon.
fn build_firewall(choice: FirewallChoice) -> anyhow::Result<(Option<Arc<dyn Firewaller>>, String)> {
    match firewall::select(choice, None) {
        Ok(fw) => {
            tracing::info!(backend = fw.backend(), "firewall ready");
            Ok((Some(Arc::from(fw)), String::new()))
        }
        Err(e) if choice == FirewallChoice::Auto => {
            let why = format!("no usable firewall backend ({e})");
            tracing::warn!(
                "{why}: running without one; masquerade, isolation and -p are unavailable"
            );
            Ok((None, why))
        }
        Err(e) => Err(anyhow!("--firewall {choice:?}: {e}")),
    }
}

/// Opens the global store and starts the overlay agent (blocking: netlink and the store client).
fn start_overlay_agent(
    spec: &str,
    advertise: Option<std::net::IpAddr>,
    port: u16,
    ttl: std::time::Duration,
    purge_after: Option<std::time::Duration>,
) -> anyhow::Result<(
    drivers::overlay::agent::AgentHandle,
    crate::overlay::OverlayCtx,
)> {
    let global =
        engine_core::store::open_global(spec).with_context(|| format!("--store {spec}"))?;
    let vtep = match advertise {
        Some(a) => a,
        None => Netlink::connect()?
            .default_route_address()?
            .ok_or_else(|| {
                anyhow!(
                    "--store given but no --advertise-addr, and no default route to take it from"
                )
            })?,
    };
    // Fails early on an address this host does not have.
    Netlink::connect()?
        .underlay(vtep)
        .context("--advertise-addr")?;
    let ctx = crate::overlay::OverlayCtx::new(global.clone(), vtep, port);
    let mut cfg = drivers::overlay::agent::AgentConfig::new(global, vtep, port);
    cfg.lease_ttl = ttl;
    cfg.purge_after = purge_after;
    // A purged host's addresses go back to the overlays' pools.
    cfg.ipam = Some(ctx.ipam.clone());
    tracing::info!(store = spec, vtep = %vtep, port, "overlay agent starting");
    Ok((drivers::overlay::agent::spawn(cfg)?, ctx))
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(host) = settings.purge_overlay_host {
        // An operator command, not a daemon: no local state, no sockets.
        let spec = settings
            .store
            .clone()
            .ok_or_else(|| anyhow!("--purge-overlay-host needs --store etcd://…"))?;
        let r = http::off_runtime(move || crate::overlay::purge_host(&spec, host))
            .await
            .map_err(|e| anyhow!("--purge-overlay-host {host}: {e}"))??;
        println!(
            "purged overlay host {host}: {} endpoint records, {} address leases",
            r.endpoints, r.addresses
        );
        return Ok(());
    }
    tracing::info!(state_dir = %settings.state_dir.display(), plugin_dir = %settings.plugin_dir.display(), "netloomd starting");
    // Deleting a veth takes the kernel tens of ms; a daemon can leave that to a thread and
    // answer DeleteEndpoint at once.
    reaper::set_strategy(reaper::Strategy::Thread);
    let store: Arc<dyn StateStore> = Arc::new(
        FileStore::open(&settings.state_dir)
            .with_context(|| format!("open state dir {}", settings.state_dir.display()))?,
    );
    // One netloomd per state directory: two would each "reconcile" the other's work away.
    let _instance = store.try_lock("netloomd")?.ok_or_else(|| {
        anyhow!(
            "another netloomd is running with state dir {}",
            settings.state_dir.display()
        )
    })?;
    // Default pools must avoid subnets the host already routes; asked only when one is chosen.
    let routes: ipam::RouteProvider = Box::new(|| Netlink::connect()?.host_routes());
    let ipam = Arc::new(StoreIpam::new(store.clone(), routes));
    let (fw, fw_missing) = build_firewall(settings.firewall)?;
    let drivers = drivers::registry();
    let engine = Engine::new(
        store.clone(),
        ipam,
        drivers.clone(),
        fw.clone(),
        Arc::new(NetlinkSandboxes),
        None,
    );
    let (_overlay_agent, overlay_ctx) = match settings.store.clone() {
        Some(spec) => {
            let (port, addr, ttl, purge) = (
                settings.vxlan_port,
                settings.advertise_addr,
                settings.host_ttl,
                settings.purge_hosts_after,
            );
            let (agent, ctx) =
                http::off_runtime(move || start_overlay_agent(&spec, addr, port, ttl, purge))
                    .await
                    .map_err(|e| anyhow!("start the overlay agent: {e}"))??;
            (Some(agent), Some(ctx))
        }
        None => (None, None),
    };
    let mut service = Service::new(engine, fw, fw_missing, AddressSpaces::default());
    if let Some(ctx) = overlay_ctx {
        service = service.with_overlay(ctx);
    }
    let service = Arc::new(service);
    let (app, ready_tx) = App::new(service.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut served = Vec::new();
    if let Some(file) = &settings.combined_socket {
        // Managed plugin: Docker names both drivers after the plugin; only bridge networks.
        let path = settings.plugin_dir.join(file);
        let l = server::bind(&path)?;
        tracing::info!(socket = %path.display(), "NetworkDriver (bridge) and IpamDriver listening on one socket");
        let router = http::combined_router(app.clone(), &settings.plugin_prefix, "bridge");
        served.push(server::serve(path, l, router, stop_rx.clone()));
    } else {
        let names = drivers.names();
        // Overlays only with a global store to keep them in.
        let overlay = settings.store.as_ref().map(|_| "overlay");
        for d in NETWORK_DRIVERS
            .iter()
            .copied()
            .chain(overlay)
            .filter(|d| names.iter().any(|n| n == d))
        {
            let (plugin, path) = settings.network_socket(d);
            let l = server::bind(&path)?;
            tracing::info!(driver = %plugin, socket = %path.display(), "NetworkDriver listening");
            let router = http::network_router(app.clone(), &plugin, d);
            served.push(server::serve(path, l, router, stop_rx.clone()));
        }
        let (ipam_name, ipam_path) = settings.ipam_socket();
        let l = server::bind(&ipam_path)?;
        tracing::info!(driver = %ipam_name, socket = %ipam_path.display(), "IpamDriver listening");
        served.push(server::serve(
            ipam_path,
            l,
            http::ipam_router(app.clone()),
            stop_rx.clone(),
        ));
    }
    if let Some(path) = &settings.admin_socket {
        let l = server::bind(path)?;
        tracing::info!(socket = %path.display(), "admin API listening");
        served.push(server::serve(
            path.clone(),
            l,
            http::admin_router(app.clone()),
            stop_rx.clone(),
        ));
    }

    // Reconcile while already answering Activate; state-changing requests wait for it.
    let svc = service.clone();
    tokio::spawn(async move {
        let outcome = http::off_runtime(move || {
            // Links a reaper thread of the previous process did not get to delete.
            match Netlink::connect().and_then(|nl| reaper::sweep(&nl)) {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(links = ?gone, "removed links left for deletion")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not sweep links left for deletion"),
            }
            reconcile::run(&svc)
        })
        .await;
        let readiness = match outcome {
            Ok(Ok(report)) => {
                for p in &report.problems {
                    tracing::warn!(problem = %p, "reconciliation could not settle everything");
                }
                tracing::info!(?report, "state reconciled; serving");
                Readiness::Ready(Box::new(report))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "state reconciliation failed; serving anyway");
                Readiness::Degraded(e.to_string())
            }
            Err(e) => Readiness::Degraded(format!("reconciliation: {e}")),
        };
        let _ = ready_tx.send(readiness);
    });
    // After reconciliation's own pass the guard keeps the rules in place.
    firewall_guard::spawn(app.clone(), stop_rx.clone()).context("start the firewall guard")?;

    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    for s in served {
        match s.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(socket = %s.path.display(), error = %e, "server stopped with an error")
            }
            Err(e) => tracing::warn!(socket = %s.path.display(), error = %e, "server task failed"),
        }
        server::remove(&s.path);
    }
    tracing::info!("netloomd stopped");
    Ok(())
}
