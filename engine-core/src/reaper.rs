//! Deleting links off the hot path.
//!
//! The kernel takes 10–30 ms to unregister a network device (it waits for an RCU grace period),
//! which would be most of a CNI DEL. A driver that no longer needs a link first cuts it off —
//! down, out of its bridge, renamed into the graveyard (`nlz…`) — which takes microseconds and
//! makes it harmless at once; the slow unregister is then left to a reaper. How the reaper runs
//! is the front door's choice: a forked child for the short-lived CNI binaries, a thread in
//! the daemon, or right away (the default, and what tests of the engine itself use).
//! Anything left in the graveyard (a reaper killed midway) is swept by GC and `netlab doctor`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::Result;
use crate::netlink::{DeferredDeletes, Netlink};
use crate::netns::Netns;

/// Name prefix of links waiting to be deleted.
pub const GRAVEYARD_PREFIX: &str = "nlz";

/// How deferred deletions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Delete before returning.
    Inline,
    /// A background thread of this process (long-running daemons).
    Thread,
    /// A child forked to finish after this process exits (short-lived CNI plugins).
    Process,
}

static STRATEGY: OnceLock<Strategy> = OnceLock::new();

/// Chooses the strategy for this process (first call wins).
pub fn set_strategy(s: Strategy) {
    let _ = STRATEGY.set(s);
}

fn strategy() -> Strategy {
    STRATEGY.get().copied().unwrap_or(Strategy::Inline)
}

/// Whether slow kernel clean-up may be left to detached processes that outlive this one
/// (short-lived CNI plugins); a long-running daemon keeps its sockets and pays nothing.
pub fn detached_cleanup() -> bool {
    strategy() == Strategy::Process
}

/// One deletion job: links by name in a namespace (None = the process's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub netns: Option<PathBuf>,
    pub links: Vec<String>,
}

/// A graveyard name for a link: `nlz` + 12 hex digits, unique enough that two reapers never
/// fight over one name.
pub fn graveyard_name() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0) as u64;
    let mix = nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ (nanos >> 17).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{GRAVEYARD_PREFIX}{:012x}", mix & 0xffff_ffff_ffff)
}

/// Whether a link name is in the graveyard.
pub fn is_graveyard(name: &str) -> bool {
    name.len() == 15
        && name.starts_with(GRAVEYARD_PREFIX)
        && name[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Deletes the job's links now; missing ones are fine.
pub fn run_job(job: &Job) -> Result<()> {
    let nl = match &job.netns {
        None => Netlink::connect()?,
        Some(p) => match Netns::open(p) {
            Ok(ns) => Netlink::in_netns(&ns)?,
            Err(e) if e.kind() == crate::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        },
    };
    for l in &job.links {
        nl.delete_link_if_exists(l.as_str())?;
    }
    Ok(())
}

/// Hands `job` to the reaper chosen with [`set_strategy`].
pub fn reap_later(job: Job) -> Result<()> {
    match strategy() {
        Strategy::Inline => run_job(&job),
        Strategy::Thread => {
            std::thread::spawn(move || {
                if let Err(e) = run_job(&job) {
                    tracing::warn!(error = %e, "reaper thread failed; GC will sweep the graveyard");
                }
            });
            Ok(())
        }
        Strategy::Process => spawn_process(&job).or_else(|e| {
            tracing::debug!(error = %e, "could not start a reaper process; deleting inline");
            run_job(&job)
        }),
    }
}

/// Leaves the deletion to a child forked to finish after this process exits.
fn spawn_process(job: &Job) -> Result<()> {
    let ns = match &job.netns {
        None => None,
        Some(p) => match Netns::open(p) {
            Ok(ns) => Some(ns),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        },
    };
    let mut d = DeferredDeletes::new(ns.as_ref())?;
    for l in &job.links {
        d.delete_link(l)?;
    }
    if d.start() {
        Ok(())
    } else {
        Err(crate::Error::Internal("could not fork the reaper".into()))
    }
}

/// Deletes every graveyard link in the namespace `nl` looks at (GC, doctor).
pub fn sweep(nl: &Netlink) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for l in nl.links()? {
        if is_graveyard(&l.name) && nl.delete_link_if_exists(l.index)? {
            removed.push(l.name);
        }
    }
    Ok(removed)
}

/// The namespace path a job should name for the operation's host.
pub fn host_of(host_netns: Option<&Path>) -> Option<PathBuf> {
    host_netns.map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graveyard_names_fit_and_are_recognised() {
        let n = graveyard_name();
        assert_eq!(n.len(), 15, "{n}");
        assert!(is_graveyard(&n));
        assert!(!is_graveyard("nl0123456789a"));
        assert!(!is_graveyard("nlzzzzzzzzzzzzz"));
    }
}
