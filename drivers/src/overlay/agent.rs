//! The per-host overlay agent: keeps this host registered in the global store and its VXLAN
//! devices' remote entries equal to what the store says.
//!
//! - Registration: a leased `overlay/hosts/<vtep>` record, renewed by the store client; if the
//!   agent (or the host) dies, the lease expires and every other agent removes this host's
//!   containers from its kernel.
//! - Watch: one `list_and_watch` on `overlay/`. A snapshot is applied as a full [`program::sync`]
//!   of every local VXLAN device; each later event is applied incrementally (one FDB and one
//!   neighbour change per container), which is what makes a new container reachable from here
//!   within milliseconds of its ADD on another host.
//! - Outage: a broken watch (store unreachable) leaves the kernel as it is — traffic between
//!   existing containers continues — and the agent re-lists and re-syncs when the store is back.
//!
//! Only devices that exist on this host are programmed: an overlay with no local container has
//! no device, and the first local ADD programs the device it creates itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine_core::netlink::Netlink;
use engine_core::netns::Netns;
use engine_core::store::{LeaseGuard, WatchEvent};
use engine_core::{Key, Result, StateStore};

use super::control::{self, EndpointRecord, Entry, HostRecord};
use super::names;
use super::program::{self, Remote};

/// How the agent is set up.
#[derive(Clone)]
pub struct AgentConfig {
    pub global: Arc<dyn StateStore>,
    /// The namespace treated as the host (tests: a fake host); None = our own.
    pub host_netns: Option<PathBuf>,
    pub vtep: IpAddr,
    pub port: u16,
    /// How long the host record outlives the agent.
    pub lease_ttl: Duration,
    /// A full re-sync of every device this often, to repair what someone else changed.
    pub resync_every: Duration,
}

impl AgentConfig {
    pub fn new(global: Arc<dyn StateStore>, vtep: IpAddr, port: u16) -> Self {
        AgentConfig {
            global,
            host_netns: None,
            vtep,
            port,
            lease_ttl: Duration::from_secs(10),
            resync_every: Duration::from_secs(30),
        }
    }
}

/// A running agent; dropping it stops the thread. The host record stays until its lease
/// expires (see the end of `Agent::run`).
pub struct AgentHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentHandle {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the agent on its own thread.
pub fn spawn(cfg: AgentConfig) -> Result<AgentHandle> {
    let nl = match &cfg.host_netns {
        None => Netlink::connect()?,
        Some(p) => Netlink::in_netns(&Netns::open(p)?)?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("overlay-agent".into())
        .spawn(move || Agent::new(cfg, nl).run(&s))
        .map_err(|e| engine_core::Error::io("start the overlay agent thread", e))?;
    Ok(AgentHandle {
        stop,
        thread: Some(thread),
    })
}

/// The store's view, as far as this host cares.
#[derive(Default)]
struct Model {
    /// Every overlay of the cluster: a full re-sync visits each local device, also one whose
    /// remote containers all went away while this agent was not watching.
    overlays: BTreeSet<String>,
    hosts: BTreeSet<String>,
    /// (overlay, host, owner) → record.
    endpoints: BTreeMap<(String, String, String), EndpointRecord>,
}

struct Agent {
    cfg: AgentConfig,
    nl: Netlink,
    me: String,
    model: Model,
}

impl Agent {
    fn new(cfg: AgentConfig, nl: Netlink) -> Self {
        let me = control::host_id(cfg.vtep);
        Agent {
            cfg,
            nl,
            me,
            model: Model::default(),
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut lease: Option<Box<dyn LeaseGuard>> = None;
        let mut logged_down = false;
        while !stop.load(Ordering::SeqCst) {
            if lease.as_ref().is_none_or(|l| !l.alive()) {
                lease = None;
                match self.register() {
                    Ok(l) => lease = Some(l),
                    Err(e) => {
                        if !logged_down {
                            tracing::warn!(error = %e, "overlay agent cannot register this host; retrying");
                            logged_down = true;
                        }
                        pause(stop, Duration::from_millis(500));
                        continue;
                    }
                }
            }
            let (snapshot, mut watcher) = match self.cfg.global.list_and_watch(&control::root()) {
                Ok(x) => x,
                Err(e) => {
                    if !logged_down {
                        tracing::warn!(error = %e, "overlay agent cannot watch the global store; kernel state kept, retrying");
                        logged_down = true;
                    }
                    pause(stop, Duration::from_millis(500));
                    continue;
                }
            };
            if logged_down {
                tracing::info!("overlay agent reconnected to the global store; re-syncing");
                logged_down = false;
            }
            self.load(snapshot);
            self.sync_all();
            let mut last_sync = Instant::now();
            loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if lease.as_ref().is_none_or(|l| !l.alive()) {
                    // Renewals failed past the TTL: others have dropped us; register again and
                    // re-list so nothing missed in between stays missed.
                    break;
                }
                match watcher.next(Duration::from_millis(200)) {
                    Ok(Some(ev)) => self.event(ev),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "overlay watch broke; kernel state kept, re-listing when the store is back");
                        logged_down = true;
                        break;
                    }
                }
                if last_sync.elapsed() >= self.cfg.resync_every {
                    self.sync_all();
                    last_sync = Instant::now();
                }
            }
        }
        // Stopping is not leaving: netloomd stops to restart or upgrade, and the containers
        // here keep running. Dropping the guard would revoke the record and make every other
        // host drop this host's containers until the next start; instead the record is left
        // to its lease: a start within the TTL takes it over (a new lease on the same key),
        // and a host that stays down disappears from the others after the TTL.
        if let Some(l) = lease {
            std::mem::forget(l);
        }
    }

    fn register(&self) -> Result<Box<dyn LeaseGuard>> {
        let rec = HostRecord::new(self.cfg.vtep, self.cfg.port);
        let value = serde_json::to_vec(&rec)
            .map_err(|e| engine_core::Error::json("encode host record", e))?;
        self.cfg
            .global
            .put_leased(&control::host_key(&self.me), &value, self.cfg.lease_ttl)
    }

    fn load(&mut self, snapshot: Vec<(Key, engine_core::Versioned)>) {
        self.model = Model::default();
        for (k, v) in snapshot {
            self.remember(&k, Some(&v.value));
        }
    }

    /// Updates the model; returns the endpoint record that was there before, if any.
    fn remember(&mut self, k: &Key, value: Option<&[u8]>) -> Option<EndpointRecord> {
        match control::classify(k) {
            Entry::Network(n) => {
                if value.is_some() {
                    self.model.overlays.insert(n);
                }
                None
            }
            Entry::Host(h) => {
                if value.is_some() {
                    self.model.hosts.insert(h);
                } else {
                    self.model.hosts.remove(&h);
                }
                None
            }
            Entry::Endpoint {
                overlay,
                host,
                owner,
            } => {
                self.model.overlays.insert(overlay.clone());
                let id = (overlay, host, owner);
                match value.map(serde_json::from_slice::<EndpointRecord>) {
                    Some(Ok(r)) => self.model.endpoints.insert(id, r),
                    Some(Err(e)) => {
                        tracing::warn!(key = %k, error = %e, "ignoring an unreadable endpoint record");
                        self.model.endpoints.remove(&id)
                    }
                    None => self.model.endpoints.remove(&id),
                }
            }
            Entry::Other => None,
        }
    }

    fn event(&mut self, ev: WatchEvent) {
        let (key, value) = match &ev {
            WatchEvent::Put(k, v) => (k.clone(), Some(v.value.clone())),
            WatchEvent::Delete(k) => (k.clone(), None),
        };
        let before = self.remember(&key, value.as_deref());
        let result = match control::classify(&key) {
            Entry::Host(h) if h != self.me => self.host_changed(&h, value.is_some()),
            Entry::Endpoint {
                overlay,
                host,
                owner,
            } if host != self.me => {
                let now = self
                    .model
                    .endpoints
                    .get(&(overlay.clone(), host.clone(), owner))
                    .cloned();
                self.endpoint_changed(&overlay, &host, before, now)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(key = %key, error = %e, "could not apply an overlay change; the next re-sync retries");
        }
    }

    /// The local VXLAN device of `overlay`, if this host has one.
    fn device(&self, overlay: &str) -> Result<Option<String>> {
        let dev = names::vxlan(overlay);
        Ok(self.nl.link_by_name(&dev)?.map(|_| dev))
    }

    fn endpoint_changed(
        &self,
        overlay: &str,
        host: &str,
        before: Option<EndpointRecord>,
        now: Option<EndpointRecord>,
    ) -> Result<()> {
        let Some(dev) = self.device(overlay)? else {
            return Ok(());
        };
        if let Some(old) = &before {
            if now.as_ref() != Some(old) {
                program::remove(&self.nl, &dev, &Remote::from_record(old)?)?;
            }
        }
        if let Some(new) = &now {
            if self.model.hosts.contains(host) {
                program::apply(&self.nl, &dev, &Remote::from_record(new)?)?;
                tracing::debug!(overlay, host, ips = ?new.ips, "remote container programmed");
            }
        }
        Ok(())
    }

    fn host_changed(&self, host: &str, alive: bool) -> Result<()> {
        tracing::info!(host, alive, "overlay host changed");
        let mut first_err = None;
        for ((overlay, h, _), rec) in &self.model.endpoints {
            if h != host {
                continue;
            }
            let Some(dev) = self.device(overlay)? else {
                continue;
            };
            let r = Remote::from_record(rec)?;
            let res = if alive {
                program::apply(&self.nl, &dev, &r)
            } else {
                program::remove(&self.nl, &dev, &r)
            };
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Full re-sync of every local device of a known overlay.
    fn sync_all(&self) {
        for overlay in &self.model.overlays {
            let dev = match self.device(overlay) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(overlay = %overlay, error = %e, "cannot look up the VXLAN device");
                    continue;
                }
            };
            let desired: Vec<Remote> = self
                .model
                .endpoints
                .iter()
                .filter(|((o, h, _), _)| {
                    o == overlay && *h != self.me && self.model.hosts.contains(h)
                })
                .filter_map(|(_, r)| Remote::from_record(r).ok())
                .collect();
            match program::sync(&self.nl, &dev, &desired) {
                Ok(r) if r.added + r.removed > 0 => {
                    tracing::info!(overlay = %overlay, added = r.added, removed = r.removed, "overlay re-synced")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(overlay = %overlay, error = %e, "overlay re-sync failed"),
            }
        }
    }
}

/// Sleeps up to `d`, waking early when asked to stop.
fn pause(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Re-syncs one overlay's device from the store (the front door, after creating the device).
pub fn sync_overlay(
    global: &dyn StateStore,
    nl: &Netlink,
    overlay: &str,
    vtep: IpAddr,
) -> Result<program::SyncReport> {
    let dev = names::vxlan(overlay);
    let desired: Vec<Remote> = control::remote_endpoints(global, overlay, &control::host_id(vtep))?
        .iter()
        .filter_map(|r| Remote::from_record(r).ok())
        .collect();
    program::sync(nl, &dev, &desired)
}
