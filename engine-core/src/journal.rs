//! The undo journal: what makes a multi-step operation safe against kill -9.
//!
//! Before an operation touches the kernel or the store, it writes *how to undo* that step into
//! its journal record in the state store. On success the record is deleted; on error the steps
//! are undone in reverse order; if the process dies in between, the record stays, and the next
//! operation on the same scope (a network) or the next daemon start finds it and undoes it.
//!
//! Liveness: while an operation runs, its process holds the store lock `journal/<id>`. A record
//! whose lock can be taken belongs to a dead process (the kernel drops flocks of dead
//! processes), so recovery never undoes the work of an operation that is still running.
//!
//! Undo steps are idempotent ("delete link X" when X is already gone is a success) because a
//! crash can happen after a step was recorded but before, or after, it was carried out.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{Expect, Key, LockGuard, PutOutcome, StateStore, StateStoreExt};

/// How to undo one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "snake_case")]
pub enum UndoStep {
    /// Delete a link (veth, bridge, macvlan…) in a namespace (None = the host's).
    DeleteLink {
        netns: Option<PathBuf>,
        name: String,
    },
    /// Remove an address from a link.
    DeleteAddress {
        netns: Option<PathBuf>,
        link: String,
        address: IpNetwork,
    },
    /// Put a state entry back as it was (`None` = delete it).
    RestoreKey { key: String, value: Option<Vec<u8>> },
    /// Release an IPAM lease.
    ReleaseAddress {
        pool_id: String,
        owner: String,
        address: Option<IpAddr>,
    },
    /// Anything a crate outside engine-core knows how to undo (firewall entries, …),
    /// dispatched by `kind`.
    Custom {
        kind: String,
        data: serde_json::Value,
    },
}

impl fmt::Display for UndoStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UndoStep::DeleteLink { netns, name } => write!(f, "delete link {name}{}", in_ns(netns)),
            UndoStep::DeleteAddress {
                netns,
                link,
                address,
            } => {
                write!(f, "delete address {address} from {link}{}", in_ns(netns))
            }
            UndoStep::RestoreKey { key, value: None } => write!(f, "delete state entry {key}"),
            UndoStep::RestoreKey {
                key,
                value: Some(_),
            } => write!(f, "restore state entry {key}"),
            UndoStep::ReleaseAddress { pool_id, owner, .. } => {
                write!(f, "release lease of {owner} in pool {pool_id}")
            }
            UndoStep::Custom { kind, .. } => write!(f, "undo {kind}"),
        }
    }
}

fn in_ns(ns: &Option<PathBuf>) -> String {
    ns.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// Carries out undo steps. engine-core's [`CoreUndoer`] handles links, addresses and state keys;
/// the engine wraps it to add IPAM and custom kinds.
pub trait Undoer: Send + Sync {
    fn undo(&self, step: &UndoStep) -> Result<()>;
}

/// A journal record as stored under `journal/<scope>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub scope: String,
    /// What the operation was ("cni add c1/eth0").
    pub operation: String,
    pub pid: u32,
    pub started_unix_ms: u64,
    /// In the order they were recorded; undone in reverse.
    pub steps: Vec<UndoStep>,
}

fn record_key(scope: &str, id: &str) -> Key {
    Key::new(["journal", scope, id])
}

fn lock_name(id: &str) -> String {
    format!("journal/{id}")
}

/// One running operation. Dropping it without [`Txn::commit`] rolls it back.
pub struct Txn {
    store: Arc<dyn StateStore>,
    undoer: Arc<dyn Undoer>,
    record: Record,
    version: u64,
    alive: Option<Box<dyn LockGuard>>,
    done: bool,
}

impl Txn {
    /// Starts an operation on `scope` (usually `network/<id>`). Nothing is written yet: the
    /// record (and the liveness lock that guards it) appear with the first [`Txn::record`], so
    /// an operation that turns out to change nothing (a Docker Join on a bridge) costs the
    /// store nothing — with no step recorded there is nothing a crash could leave to undo.
    pub fn begin(
        store: Arc<dyn StateStore>,
        undoer: Arc<dyn Undoer>,
        scope: &str,
        operation: impl Into<String>,
    ) -> Result<Txn> {
        let record = Record {
            id: new_id(),
            scope: scope.to_string(),
            operation: operation.into(),
            pid: std::process::id(),
            started_unix_ms: now_ms(),
            steps: Vec::new(),
        };
        Ok(Txn {
            store,
            undoer,
            record,
            version: 0,
            alive: None,
            done: false,
        })
    }

    /// Whether the record is in the store (the first step was recorded).
    fn written(&self) -> bool {
        self.alive.is_some()
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Records how to undo the step the caller is *about to* take. Call before acting.
    pub fn record(&mut self, step: UndoStep) -> Result<()> {
        let expect = if self.written() {
            Expect::Version(self.version)
        } else {
            // The lock before the record: recovery must never see a record of a running
            // operation without its lock held.
            let id = &self.record.id;
            let alive = self
                .store
                .try_lock(&lock_name(id))?
                .ok_or_else(|| Error::Internal(format!("journal id {id} is already in use")))?;
            self.alive = Some(alive);
            Expect::Absent
        };
        self.record.steps.push(step);
        let key = record_key(&self.record.scope, &self.record.id);
        match self.store.put_json(&key, &self.record, expect)? {
            PutOutcome::Written(v) => {
                self.version = v;
                Ok(())
            }
            PutOutcome::Mismatch(found) => {
                self.record.steps.pop();
                Err(Error::Internal(format!(
                    "journal record {} changed under a running operation (found version {found:?})",
                    self.record.id
                )))
            }
        }
    }

    /// The steps recorded so far.
    pub fn steps(&self) -> &[UndoStep] {
        &self.record.steps
    }

    /// The operation succeeded: forget how to undo it.
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        if !self.written() {
            return Ok(());
        }
        self.store.delete(
            &record_key(&self.record.scope, &self.record.id),
            Expect::Any,
        )?;
        self.forget_lock();
        Ok(())
    }

    /// Once the record is gone its liveness lock has nothing left to guard: remove it so
    /// one-shot lock files do not pile up in the store.
    fn forget_lock(&mut self) {
        if let Some(l) = self.alive.take() {
            l.release_and_forget();
        }
    }

    /// The operation failed: undo every step, newest first. Undo errors are collected, not
    /// stopped at, so one stuck step does not keep the others in place.
    pub fn rollback(mut self) -> Result<()> {
        self.done = true;
        if !self.written() {
            return Ok(());
        }
        let errors = undo_all(self.undoer.as_ref(), &self.record.steps);
        finish(self.store.as_ref(), &self.record, errors)?;
        self.forget_lock();
        Ok(())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if !self.done && self.written() {
            // An early return or a panic between begin and commit: undo now rather than leave
            // the work to the next operation's recovery.
            let errors = undo_all(self.undoer.as_ref(), &self.record.steps);
            match finish(self.store.as_ref(), &self.record, errors) {
                Ok(()) => self.forget_lock(),
                Err(e) => {
                    tracing::warn!(journal = %self.record.id, error = %e, "rollback on drop incomplete")
                }
            }
        }
    }
}

fn undo_all(undoer: &dyn Undoer, steps: &[UndoStep]) -> Vec<(UndoStep, Error)> {
    let mut errors = Vec::new();
    for step in steps.iter().rev() {
        if let Err(e) = undoer.undo(step) {
            tracing::warn!(%step, error = %e, "undo step failed");
            errors.push((step.clone(), e));
        }
    }
    errors
}

/// Deletes the record when every step was undone; otherwise keeps only the failed steps so a
/// later recovery can try again.
fn finish(store: &dyn StateStore, record: &Record, errors: Vec<(UndoStep, Error)>) -> Result<()> {
    let key = record_key(&record.scope, &record.id);
    if errors.is_empty() {
        store.delete(&key, Expect::Any)?;
        return Ok(());
    }
    let mut left = record.clone();
    // Keep the original order (undo runs newest first, errors were collected in that order).
    left.steps = errors.iter().rev().map(|(s, _)| s.clone()).collect();
    store.put_json(&key, &left, Expect::Any)?;
    let msgs: Vec<String> = errors.iter().map(|(s, e)| format!("{s}: {e}")).collect();
    Err(Error::Internal(format!(
        "rollback of {} left {} step(s) for the next recovery: {}",
        record.operation,
        errors.len(),
        msgs.join("; ")
    )))
}

/// What a recovery pass did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Records of dead operations that were fully undone.
    pub rolled_back: Vec<Record>,
    /// Records whose undo failed in part; they stay for the next pass.
    pub failed: Vec<(Record, Error)>,
}

/// Undoes the journals left in `scope` by operations whose process died. Call it under the
/// scope's lock at the start of each operation on that scope, and for every scope at daemon start.
pub fn recover(store: &dyn StateStore, undoer: &dyn Undoer, scope: &str) -> Result<Recovery> {
    recover_prefix(store, undoer, &Key::new(["journal", scope]))
}

/// Recovery over every scope (daemon start, `netlab doctor --fix`).
pub fn recover_all(store: &dyn StateStore, undoer: &dyn Undoer) -> Result<Recovery> {
    recover_prefix(store, undoer, &Key::new(["journal"]))
}

fn recover_prefix(store: &dyn StateStore, undoer: &dyn Undoer, prefix: &Key) -> Result<Recovery> {
    let mut out = Recovery::default();
    for (key, _version, record) in store.list_json::<Record>(prefix)? {
        // Still running somewhere (this process or another): not ours to touch.
        let Some(guard) = store.try_lock(&lock_name(&record.id))? else {
            continue;
        };
        // The owner may have committed (deleting the record, then releasing the lock) between
        // our listing and our lock: only a record that is still there once we hold its lock
        // belongs to a dead process. Re-read it, too: its steps may have grown since the list.
        let Some((_, record)) = store.get_json::<Record>(&key)? else {
            guard.release_and_forget();
            continue;
        };
        tracing::info!(journal = %record.id, operation = %record.operation, pid = record.pid,
            steps = record.steps.len(), "rolling back an operation whose process died");
        let errors = undo_all(undoer, &record.steps);
        match finish(store, &record, errors) {
            Ok(()) => {
                guard.release_and_forget();
                out.rolled_back.push(record);
            }
            Err(e) => out.failed.push((record, e)),
        }
    }
    Ok(out)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Undoes the step kinds engine-core itself knows: links, addresses and state entries. Steps it
/// does not know are handed to `next` (IPAM, firewall, drivers), or reported as unsupported.
pub struct CoreUndoer {
    store: Arc<dyn StateStore>,
    next: Option<Arc<dyn Undoer>>,
}

impl CoreUndoer {
    pub fn new(store: Arc<dyn StateStore>, next: Option<Arc<dyn Undoer>>) -> Self {
        CoreUndoer { store, next }
    }
}

impl Undoer for CoreUndoer {
    fn undo(&self, step: &UndoStep) -> Result<()> {
        match step {
            UndoStep::DeleteLink { netns, name } => {
                kernel_undo::delete_link(netns.as_deref(), name)
            }
            UndoStep::DeleteAddress {
                netns,
                link,
                address,
            } => kernel_undo::delete_address(netns.as_deref(), link, *address),
            UndoStep::RestoreKey { key, value } => {
                let key = Key::from_escaped(key).ok_or_else(|| {
                    Error::Internal(format!("journal names an invalid key {key:?}"))
                })?;
                match value {
                    None => self.store.delete(&key, Expect::Any).map(|_| ()),
                    Some(v) => self.store.put(&key, v, Expect::Any).map(|_| ()),
                }
            }
            other => match &self.next {
                Some(next) => next.undo(other),
                None => Err(Error::Unsupported(format!(
                    "no undoer registered for step: {other}"
                ))),
            },
        }
    }
}

/// The kernel side of undo, over the netlink module.
mod kernel_undo {
    use std::path::Path;

    use ipnetwork::IpNetwork;

    use crate::error::{ErrorKind, Result};
    use crate::netlink::Netlink;
    use crate::netns::Netns;

    /// A netlink client in `netns` (None = ours), or None when the namespace is gone — and with
    /// it everything that was in it, so there is nothing left to undo.
    fn client(netns: Option<&Path>) -> Result<Option<Netlink>> {
        match netns {
            None => Netlink::connect().map(Some),
            Some(p) => match Netns::open(p) {
                Ok(ns) => Netlink::in_netns(&ns).map(Some),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    pub fn delete_link(netns: Option<&Path>, name: &str) -> Result<()> {
        if let Some(nl) = client(netns)? {
            nl.delete_link_if_exists(name)?;
        }
        Ok(())
    }

    pub fn delete_address(netns: Option<&Path>, link: &str, address: IpNetwork) -> Result<()> {
        if let Some(nl) = client(netns)? {
            if nl.link_by_name(link)?.is_some() {
                nl.del_address(link, address)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);
    impl Undoer for Recording {
        fn undo(&self, step: &UndoStep) -> Result<()> {
            if let UndoStep::Custom { kind, .. } = step {
                if kind == "fail" {
                    return Err(Error::Internal("refused".into()));
                }
            }
            self.0.lock().unwrap().push(step.to_string());
            Ok(())
        }
    }

    fn store() -> (Arc<dyn StateStore>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("netloom-journal-test-{}", new_id()));
        (Arc::new(FileStore::open(&dir).unwrap()), dir)
    }

    fn custom(kind: &str) -> UndoStep {
        UndoStep::Custom {
            kind: kind.into(),
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn commit_forgets_and_rollback_undoes_in_reverse() {
        let (s, dir) = store();
        let u = Arc::new(Recording::default());
        let mut t = Txn::begin(s.clone(), u.clone(), "network/a", "op1").unwrap();
        t.record(custom("one")).unwrap();
        t.commit().unwrap();
        assert!(s.list(&Key::new(["journal"])).unwrap().is_empty());
        assert!(u.0.lock().unwrap().is_empty());

        let mut t = Txn::begin(s.clone(), u.clone(), "network/a", "op2").unwrap();
        t.record(custom("one")).unwrap();
        t.record(custom("two")).unwrap();
        t.rollback().unwrap();
        assert_eq!(*u.0.lock().unwrap(), vec!["undo two", "undo one"]);
        assert!(s.list(&Key::new(["journal"])).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finished_operations_leave_no_lock_files() {
        let (s, dir) = store();
        let u = Arc::new(Recording::default());
        for _ in 0..5 {
            let mut t = Txn::begin(s.clone(), u.clone(), "network/l", "op").unwrap();
            t.record(custom("x")).unwrap();
            t.commit().unwrap();
        }
        let t = Txn::begin(s.clone(), u.clone(), "network/l", "op").unwrap();
        t.rollback().unwrap();
        let locks = std::fs::read_dir(dir.join("locks")).unwrap().flatten();
        let journal_locks: Vec<String> = locks
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("journal"))
            .collect();
        assert!(journal_locks.is_empty(), "{journal_locks:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn operations_without_steps_touch_no_store() {
        let (s, dir) = store();
        let u = Arc::new(Recording::default());
        let t = Txn::begin(s.clone(), u.clone(), "network/e", "join").unwrap();
        assert!(s.list(&Key::new(["journal"])).unwrap().is_empty());
        t.commit().unwrap();
        drop(Txn::begin(s.clone(), u.clone(), "network/e", "failed early").unwrap());
        Txn::begin(s.clone(), u.clone(), "network/e", "rolled back")
            .unwrap()
            .rollback()
            .unwrap();
        assert!(u.0.lock().unwrap().is_empty());
        assert!(s.list(&Key::new(["journal"])).unwrap().is_empty());
        let locks: Vec<_> = std::fs::read_dir(dir.join("locks"))
            .unwrap()
            .flatten()
            .collect();
        assert!(locks.is_empty(), "{locks:?}");
        // The first step writes the record, under a held lock, and recovery leaves it alone.
        let mut t = Txn::begin(s.clone(), u.clone(), "network/e", "attach").unwrap();
        t.record(custom("x")).unwrap();
        assert_eq!(s.list(&Key::new(["journal"])).unwrap().len(), 1);
        let r = recover(s.as_ref(), u.as_ref(), "network/e").unwrap();
        assert!(r.rolled_back.is_empty());
        t.commit().unwrap();
        assert!(s.list(&Key::new(["journal"])).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn drop_without_commit_rolls_back() {
        let (s, dir) = store();
        let u = Arc::new(Recording::default());
        {
            let mut t = Txn::begin(s.clone(), u.clone(), "network/b", "op").unwrap();
            t.record(custom("x")).unwrap();
        }
        assert_eq!(*u.0.lock().unwrap(), vec!["undo x"]);
        assert!(s.list(&Key::new(["journal"])).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn recovery_skips_live_operations_and_undoes_dead_ones() {
        let (s, dir) = store();
        let u = Arc::new(Recording::default());
        let mut live = Txn::begin(s.clone(), u.clone(), "network/c", "live").unwrap();
        live.record(custom("live-step")).unwrap();
        // A record from a process that died: no one holds its lock.
        let dead = Record {
            id: "dead-1".into(),
            scope: "network/c".into(),
            operation: "dead".into(),
            pid: 999_999,
            started_unix_ms: 0,
            steps: vec![custom("a"), custom("b")],
        };
        s.put_json(&record_key("network/c", "dead-1"), &dead, Expect::Absent)
            .unwrap();
        let r = recover(s.as_ref(), u.as_ref(), "network/c").unwrap();
        assert_eq!(r.rolled_back.len(), 1);
        assert_eq!(*u.0.lock().unwrap(), vec!["undo b", "undo a"]);
        // The live one is untouched and can still commit.
        assert_eq!(s.list(&Key::new(["journal"])).unwrap().len(), 1);
        live.commit().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_undo_steps_stay_for_the_next_recovery() {
        let (s, dir) = store();
        let u = Arc::new(Recording::default());
        let mut t = Txn::begin(s.clone(), u.clone(), "network/d", "op").unwrap();
        t.record(custom("ok1")).unwrap();
        t.record(custom("fail")).unwrap();
        t.record(custom("ok2")).unwrap();
        let err = t.rollback().unwrap_err();
        assert!(err.to_string().contains("left 1 step"));
        let left: Vec<(Key, u64, Record)> = s.list_json(&Key::new(["journal"])).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].2.steps, vec![custom("fail")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn restore_key_puts_back_or_deletes() {
        let (s, dir) = store();
        let core = CoreUndoer::new(s.clone(), None);
        let k = Key::new(["networks", "n1"]);
        s.put(&k, b"new", Expect::Any).unwrap();
        core.undo(&UndoStep::RestoreKey {
            key: k.to_string(),
            value: Some(b"old".to_vec()),
        })
        .unwrap();
        assert_eq!(s.get(&k).unwrap().unwrap().value, b"old");
        core.undo(&UndoStep::RestoreKey {
            key: k.to_string(),
            value: None,
        })
        .unwrap();
        assert!(s.get(&k).unwrap().is_none());
        let err = core.undo(&custom("x")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
