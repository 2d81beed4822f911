//! Deferred deletion of a container's macvlan/ipvlan interface.
//!
//! Deleting a link makes the kernel wait for an RCU grace period (`rcu_barrier` in
//! `netdev_run_todo`): 20-40 ms on these machines, most of a DEL. Nobody needs to wait for it:
//! what a DEL must guarantee is that the interface no longer holds its name or its addresses
//! when DEL returns, so the name can be reused and the addresses leased again. So `leave`
//! renames the interface to a tombstone (`nld…`), strips its addresses and hands the deletion
//! to a reaper. The reaper holds the container's namespace open while it deletes the
//! tombstone, so a runtime that removes the namespace right after DEL changes nothing: the
//! tombstone would die with it anyway.
//!
//! A macvlan's MAC stays with the tombstone until the reaper is done (changing it costs the
//! same grace period), and a parent refuses two macvlans with one MAC: a marker file
//! `/run/netloom/reaping/<mac>` lives as long as the reaper, and an ADD that wants that MAC
//! (the same attachment again, whose MAC is derived from it) waits for the marker to go.
//!
//! Kernels before 6.2 refuse to rename an interface that is up (`EBUSY`), and taking it down
//! costs the same grace period: there the deletion stays synchronous.
//!
//! The mode is per process: synchronous by default (a library must not fork behind its
//! caller's back); the CNI binaries ask for a forked reaper that finishes after they exit
//! (exiting right after DEL would end a thread); a daemon would use a thread. `NETLOOM_SYNC_DELETE=1`
//! forces synchronous deletion everywhere.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use engine_core::netlink::{DeferredDeletes, Link, MacAddr, Netlink};
use engine_core::netns::Netns;
use engine_core::{Error, Result};

use super::names;

/// Where the markers of running reapers live.
pub const MARKER_DIR: &str = "/run/netloom/reaping";
/// A marker older than this belongs to a reaper that died: ignored and removed.
const MARKER_STALE: Duration = Duration::from_secs(10);
/// How long an ADD waits for a reaper holding its MAC.
const MARKER_WAIT: Duration = Duration::from_secs(3);
/// Set to 1 to delete interfaces synchronously whatever the process asked for.
pub const SYNC_ENV: &str = "NETLOOM_SYNC_DELETE";

const SYNC: u8 = 0;
const PROCESS: u8 = 1;
const THREAD: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(SYNC);

/// How this process deletes container interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the call (the engine's sandbox step deletes it).
    Sync,
    /// A child forked to finish after this process exits ([`DeferredDeletes`]): for
    /// short-lived processes (the CNI plugins).
    Process,
    /// A background thread: for long-lived processes.
    Thread,
}

/// Chooses how this process deletes container interfaces.
pub fn set_mode(mode: Mode) {
    let m = match mode {
        Mode::Sync => SYNC,
        Mode::Process => PROCESS,
        Mode::Thread => THREAD,
    };
    MODE.store(m, Ordering::Relaxed);
}

/// The mode in force (the environment override included).
pub fn mode() -> Mode {
    if std::env::var(SYNC_ENV).is_ok_and(|v| v == "1" || v == "true") {
        return Mode::Sync;
    }
    match MODE.load(Ordering::Relaxed) {
        PROCESS => Mode::Process,
        THREAD => Mode::Thread,
        _ => Mode::Sync,
    }
}

/// Takes `link` out of service in the namespace `nl` is bound to and has it deleted in the
/// background. Returns false when it could not be deferred (the caller deletes it).
pub fn retire(ns: &Netns, nl: &Netlink, link: &Link, macvlan: bool) -> Result<bool> {
    let mode = mode();
    if mode == Mode::Sync {
        return Ok(false);
    }
    let tomb = names::tombstone(&link.name);
    match nl.rename(link.index, &tomb) {
        Ok(()) => {}
        // The kernel renames only interfaces that are down (before 6.2): no gain to be had.
        Err(e) if super::errno_is(&e, std::io::ErrorKind::ResourceBusy) => return Ok(false),
        Err(e) => return Err(e),
    }
    // From here on the tombstone is ours alone. Should stripping or handing it over fail, it is
    // deleted here after all, so nothing is left holding an address or a MAC.
    let mark = match (macvlan, link.mac) {
        (true, Some(mac)) => Some(marker(&mac)),
        _ => None,
    };
    let deferred = strip(nl, link.index).and_then(|()| hand_over(ns, &tomb, mark, mode));
    if let Err(e) = deferred {
        tracing::warn!(link = %tomb, error = %e, "deferred deletion impossible; deleting now");
        nl.delete_link_if_exists(link.index)?;
    }
    Ok(true)
}

/// Removes what a new endpoint may want at once: the addresses, which IPAM hands out again as
/// soon as DEL returns (IPv6 link-local ones are the interface's own).
fn strip(nl: &Netlink, index: u32) -> Result<()> {
    for a in nl.addresses_of(index)? {
        if !is_link_local(&a.address.ip()) {
            nl.del_address(index, a.address)?;
        }
    }
    Ok(())
}

/// The marker of a reaper that holds `mac`.
fn marker(mac: &MacAddr) -> PathBuf {
    PathBuf::from(MARKER_DIR).join(mac.to_string().replace(':', ""))
}

/// Called before a macvlan with `mac` is created: waits while a reaper still holds an interface
/// with that MAC (at most a few seconds; a stale marker is removed).
pub fn wait_for_mac(mac: &MacAddr) -> Result<()> {
    let path = marker(mac);
    let start = Instant::now();
    loop {
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(());
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        if age > MARKER_STALE {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        if start.elapsed() > MARKER_WAIT {
            return Err(Error::Busy(format!(
                "an interface with MAC {mac} is still being deleted (marker {}); try again",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn hand_over(ns: &Netns, tomb: &str, mark: Option<PathBuf>, mode: Mode) -> Result<()> {
    if let Some(m) = &mark {
        std::fs::create_dir_all(MARKER_DIR)
            .map_err(|e| Error::io(format!("create {MARKER_DIR}"), e))?;
        std::fs::write(m, tomb).map_err(|e| Error::io(format!("write {}", m.display()), e))?;
    }
    let r = match mode {
        Mode::Thread => {
            // Its own handle: the caller's may be closed, and the path unmounted, before the
            // thread runs.
            let ns = Netns::open(ns.path())?;
            let tomb = tomb.to_string();
            let mark = mark.clone();
            std::thread::spawn(move || {
                let r =
                    Netlink::in_netns(&ns).and_then(|nl| nl.delete_link_if_exists(tomb.as_str()));
                if let Err(e) = r {
                    tracing::warn!(link = %tomb, error = %e, "deferred deletion failed");
                }
                if let Some(m) = mark {
                    let _ = std::fs::remove_file(m);
                }
            });
            Ok(())
        }
        _ => spawn_process(ns, tomb, mark.as_deref()),
    };
    if r.is_err() {
        if let Some(m) = &mark {
            let _ = std::fs::remove_file(m);
        }
    }
    r
}

/// IPv6 link-local addresses (fe80::/10) are the interface's own, never leased.
fn is_link_local(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        std::net::IpAddr::V4(_) => false,
    }
}

fn spawn_process(ns: &Netns, tomb: &str, mark: Option<&std::path::Path>) -> Result<()> {
    let mut d = DeferredDeletes::new(Some(ns))?;
    d.delete_link(tomb)?;
    if let Some(m) = mark {
        d.then_remove(m)?;
    }
    if d.start() {
        Ok(())
    } else {
        Err(Error::Internal("could not fork the reaper".into()))
    }
}
