//! The state store contract and the embedded default.
//!
//! The contract is key/value with per-key versions (compare-and-swap), prefix listing and named
//! locks with timeouts: the shape etcd offers, so an etcd store can implement it as is. Nothing
//! here knows about files; [`file::FileStore`] is the embedded implementation.
//!
//! Host-local state (bridge networks, journals, firewall records) always lives in the host's
//! embedded store. A *global* store, shared by every host of a cluster, is opened beside it with
//! [`open_global`] for global-scope things only (overlay networks, their endpoints and address
//! pools, VNIs, host records): the local/global split libnetwork makes. Only the global store
//! needs [`StateStore::list_and_watch`] and [`StateStore::put_leased`].

pub mod etcd;
pub mod file;
mod key;

use std::sync::Arc;
use std::time::Duration;

pub use key::Key;

use crate::error::{Error, Result};

/// A stored value and the version it was read at. Versions start at 1 and grow with every write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    pub value: Vec<u8>,
}

/// What a write expects to find, checked atomically with the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key must exist at exactly this version.
    Version(u64),
}

/// The result of a write: the new version, or the version found when the expectation failed
/// (`None` when the key was absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written(u64),
    Mismatch(Option<u64>),
}

impl PutOutcome {
    pub fn is_written(&self) -> bool {
        matches!(self, PutOutcome::Written(_))
    }
}

/// A held lock; dropping it releases it. Locks are released by the kernel too when the holder
/// dies, so a crashed process never leaves a lock behind.
pub trait LockGuard: Send {
    /// The scope this lock was taken on.
    fn scope(&self) -> &str;

    /// Releases the lock and forgets the scope, for one-shot scopes (a journal's liveness
    /// lock) that would otherwise pile up. Only for scopes taken with `try_lock`: a waiter on
    /// a removed scope would hold a lock nobody else can see.
    fn release_and_forget(self: Box<Self>) {}
}

/// Every key below a prefix with its value, sorted: what [`StateStore::list`] returns.
pub type Snapshot = Vec<(Key, Versioned)>;

/// A change below a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Key, Versioned),
    Delete(Key),
}

/// Changes after a snapshot, in order, with no gap between the snapshot and the first event.
pub trait Watcher: Send {
    /// The next change, or Ok(None) when `timeout` passes with none. An Err means the watch
    /// broke (store unreachable); the caller re-lists with list_and_watch when it comes back.
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>>;
}

/// A key kept alive by its holder; it disappears `ttl` after the holder stops renewing
/// (process died, host gone). Dropping the guard deletes the key at once (revoke).
pub trait LeaseGuard: Send {
    fn key(&self) -> &Key;
    /// Whether renewals are still succeeding (false after the store was unreachable past ttl).
    fn alive(&self) -> bool;
}

/// netloom's state: networks, endpoints, IPAM leases, firewall records and undo journals.
///
/// Implementations must be safe across processes: the CNI binaries run in parallel beside
/// netloomd with no coordinator.
pub trait StateStore: Send + Sync {
    fn get(&self, key: &Key) -> Result<Option<Versioned>>;

    /// Writes `value` at `key` if `expect` holds.
    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<PutOutcome>;

    /// Deletes `key` if `expect` holds; deleting an absent key with `Expect::Any` is a success.
    fn delete(&self, key: &Key, expect: Expect) -> Result<PutOutcome>;

    /// Every key below `prefix` (at any depth), sorted, with its value.
    fn list(&self, prefix: &Key) -> Result<Vec<(Key, Versioned)>>;

    /// Takes the named lock, waiting at most `timeout`; a timeout is an `ErrorKind::Busy` error.
    fn lock(&self, scope: &str, timeout: Duration) -> Result<Box<dyn LockGuard>>;

    /// Takes the named lock only if nobody holds it.
    fn try_lock(&self, scope: &str) -> Result<Option<Box<dyn LockGuard>>>;

    /// A short description for logs and `netlab doctor` ("file:/var/lib/netloom").
    fn describe(&self) -> String;

    /// Every key below `prefix` (as [`StateStore::list`]) and a watcher that yields every change
    /// made after that snapshot, with no gap. Only stores shared between hosts offer it.
    fn list_and_watch(&self, prefix: &Key) -> Result<(Snapshot, Box<dyn Watcher>)> {
        Err(Error::Unsupported(format!(
            "watching {prefix} is not supported by the store {}",
            self.describe()
        )))
    }

    /// Writes `key` (whatever is there) bound to a lease of `ttl` that the returned guard keeps
    /// renewing. Only stores shared between hosts offer it.
    fn put_leased(&self, key: &Key, value: &[u8], ttl: Duration) -> Result<Box<dyn LeaseGuard>> {
        let _ = (value, ttl);
        Err(Error::Unsupported(format!(
            "leased key {key} is not supported by the store {}",
            self.describe()
        )))
    }
}

/// Opens the global (cluster-wide) store named by `spec`: "etcd://HOST:PORT[,HOST:PORT…]".
/// The caller keeps its embedded [`file::FileStore`] for host-local state.
pub fn open_global(spec: &str) -> Result<Arc<dyn StateStore>> {
    let spec = spec.trim();
    if spec.starts_with("etcd://") {
        Ok(Arc::new(etcd::EtcdStore::open(spec)?))
    } else {
        Err(Error::InvalidConfig(format!(
            "global store {spec:?} is not supported: use etcd://HOST:PORT[,HOST:PORT...]"
        )))
    }
}

/// JSON helpers over the byte-level contract.
pub trait StateStoreExt: StateStore {
    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &Key) -> Result<Option<(u64, T)>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => {
                let t = serde_json::from_slice(&v.value).map_err(|e| {
                    crate::Error::json(format!("state entry {key} is not valid"), e)
                })?;
                Ok(Some((v.version, t)))
            }
        }
    }

    fn put_json<T: serde::Serialize>(
        &self,
        key: &Key,
        value: &T,
        expect: Expect,
    ) -> Result<PutOutcome> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| crate::Error::json(format!("encode state entry {key}"), e))?;
        self.put(key, &bytes, expect)
    }

    fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &Key,
    ) -> Result<Vec<(Key, u64, T)>> {
        self.list(prefix)?
            .into_iter()
            .map(|(k, v)| {
                let t = serde_json::from_slice(&v.value)
                    .map_err(|e| crate::Error::json(format!("state entry {k} is not valid"), e))?;
                Ok((k, v.version, t))
            })
            .collect()
    }
}

impl<S: StateStore + ?Sized> StateStoreExt for S {}

/// The default state directory, overridable with `NETLOOM_STATE_DIR`.
pub fn default_state_dir() -> std::path::PathBuf {
    std::env::var_os("NETLOOM_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| "/var/lib/netloom".into())
}
