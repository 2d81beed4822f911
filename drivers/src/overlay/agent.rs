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
//! - Departed hosts: when a host's lease expires the agents note when (`overlay/departed/<h>`,
//!   first writer wins). Once it has been gone for [`AgentConfig::purge_after`] (netloomd's
//!   `--purge-hosts-after`, default a day, as Docker's NetworkDB reaps dead nodes), one agent
//!   — the one whose compare-and-swap marks the record purged — removes its endpoint records
//!   and frees their addresses ([`control::purge_host`]). A host that comes back before that
//!   takes its records back untouched; its agent clears the note when it registers.
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

use engine_core::ipam::Ipam;
use engine_core::netlink::Netlink;
use engine_core::netns::Netns;
use engine_core::store::{LeaseGuard, WatchEvent};
use engine_core::{Expect, Key, PutOutcome, Result, StateStore, StateStoreExt, Versioned};

use super::control::{self, DepartedRecord, EndpointRecord, Entry, HostRecord};
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
    /// How long a host whose lease expired keeps its records before they are purged; None:
    /// never (an operator purges by hand).
    pub purge_after: Option<Duration>,
    /// The IPAM over the global store, to free a purged host's addresses; None: the leases
    /// stay.
    pub ipam: Option<Arc<dyn Ipam>>,
}

/// Docker's NetworkDB reaps the records of a node gone for this long; the same default here.
pub const DEFAULT_PURGE_AFTER: Duration = Duration::from_secs(24 * 3600);

impl AgentConfig {
    pub fn new(global: Arc<dyn StateStore>, vtep: IpAddr, port: u16) -> Self {
        AgentConfig {
            global,
            host_netns: None,
            vtep,
            port,
            lease_ttl: Duration::from_secs(10),
            resync_every: Duration::from_secs(30),
            purge_after: Some(DEFAULT_PURGE_AFTER),
            ipam: None,
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
    /// Hosts whose lease expired: their note and its version (for the purge's CAS).
    departed: BTreeMap<String, (DepartedRecord, u64)>,
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
            self.note_departed_hosts();
            let mut last_sync = Instant::now();
            let mut last_purge_check = Instant::now();
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
                if let Some(after) = self.cfg.purge_after {
                    // Often enough that a purge comes at most a quarter late.
                    let every =
                        (after / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
                    if last_purge_check.elapsed() >= every {
                        self.purge_departed(after);
                        last_purge_check = Instant::now();
                    }
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
        let guard =
            self.cfg
                .global
                .put_leased(&control::host_key(&self.me), &value, self.cfg.lease_ttl)?;
        // Back (or new at an address a departed host had): the note no longer applies.
        let key = control::departed_key(&self.me);
        if let Some((_, d)) = self.cfg.global.get_json::<DepartedRecord>(&key)? {
            if let Some(at) = d.purged {
                tracing::warn!(
                    host = %self.me,
                    purged_at = at,
                    "this host was gone past the purge delay: its overlay records were purged and its addresses freed; containers still running here are unknown to the other hosts, re-create them"
                );
            }
            self.cfg.global.delete(&key, Expect::Any)?;
        }
        Ok(guard)
    }

    fn load(&mut self, snapshot: Vec<(Key, Versioned)>) {
        self.model = Model::default();
        for (k, v) in snapshot {
            self.remember(&k, Some(&v));
        }
    }

    /// Updates the model; returns the endpoint record that was there before, if any.
    fn remember(&mut self, k: &Key, versioned: Option<&Versioned>) -> Option<EndpointRecord> {
        let value = versioned.map(|v| v.value.as_slice());
        match control::classify(k) {
            Entry::Departed(h) => {
                match versioned.map(|v| (serde_json::from_slice::<DepartedRecord>(&v.value), v)) {
                    Some((Ok(d), v)) => {
                        self.model.departed.insert(h, (d, v.version));
                    }
                    Some((Err(e), _)) => {
                        tracing::warn!(key = %k, error = %e, "ignoring an unreadable departed-host record")
                    }
                    None => {
                        self.model.departed.remove(&h);
                    }
                }
                None
            }
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
            WatchEvent::Put(k, v) => (k.clone(), Some(v.clone())),
            WatchEvent::Delete(k) => (k.clone(), None),
        };
        let before = self.remember(&key, value.as_ref());
        let result = match control::classify(&key) {
            Entry::Host(h) if h != self.me => {
                if value.is_none() {
                    if let Err(e) = control::mark_departed(self.cfg.global.as_ref(), &h) {
                        tracing::warn!(host = %h, error = %e, "could not note a departed host");
                    }
                }
                self.host_changed(&h, value.is_some())
            }
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

    /// Notes every host that has endpoint records but neither a live record nor a note: it
    /// left while no agent watched (or before notes existed).
    fn note_departed_hosts(&self) {
        let gone: BTreeSet<&String> = self
            .model
            .endpoints
            .keys()
            .map(|(_, h, _)| h)
            .filter(|h| {
                **h != self.me
                    && !self.model.hosts.contains(*h)
                    && !self.model.departed.contains_key(*h)
            })
            .collect();
        for h in gone {
            if let Err(e) = control::mark_departed(self.cfg.global.as_ref(), h) {
                tracing::warn!(host = %h, error = %e, "could not note a departed host");
            }
        }
    }

    /// Purges the records of hosts gone for longer than `after`. The agent whose
    /// compare-and-swap marks the note purged does the work; the others see the mark.
    fn purge_departed(&self, after: Duration) {
        let global = self.cfg.global.as_ref();
        // A note on a live host is stale (it came back between the expiry and the note):
        // left, it would date a later departure too early. A purged one is left to the host
        // itself, whose agent warns that its records are gone when it reads it.
        for (h, (d, version)) in &self.model.departed {
            if d.purged.is_none() && self.model.hosts.contains(h) && *h != self.me {
                let _ = global.delete(&control::departed_key(h), Expect::Version(*version));
            }
        }
        let now = control::now_secs();
        let due: Vec<(String, DepartedRecord, u64)> = self
            .model
            .departed
            .iter()
            .filter(|(h, (d, _))| {
                d.purged.is_none()
                    && **h != self.me
                    && !self.model.hosts.contains(*h)
                    && now.saturating_sub(d.since) >= after.as_secs()
            })
            .map(|(h, (d, v))| (h.clone(), d.clone(), *v))
            .collect();
        for (h, d, version) in due {
            let marked = DepartedRecord {
                since: d.since,
                purged: Some(now),
            };
            match global.put_json(
                &control::departed_key(&h),
                &marked,
                Expect::Version(version),
            ) {
                Ok(PutOutcome::Written(_)) => {}
                // Another agent got there first, or the host came back.
                Ok(PutOutcome::Mismatch(_)) => continue,
                Err(e) => {
                    tracing::warn!(host = %h, error = %e, "could not claim a departed host's purge");
                    continue;
                }
            }
            match control::purge_host(global, self.cfg.ipam.as_deref(), &h) {
                Ok(r) => tracing::info!(
                    host = %h,
                    gone_for_secs = now.saturating_sub(d.since),
                    endpoints = r.endpoints,
                    addresses = r.addresses,
                    "purged the overlay records of a host gone past the purge delay"
                ),
                Err(e) => {
                    tracing::warn!(host = %h, error = %e, "purging a departed host's records failed; retrying later");
                    // Un-claim, so the next check (here or elsewhere) tries again.
                    let _ = global.put_json(&control::departed_key(&h), &d, Expect::Any);
                }
            }
        }
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
