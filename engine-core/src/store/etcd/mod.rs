//! The etcd store: netloom's global (cluster-wide) state on an etcd v3 cluster.
//!
//! It speaks etcd's JSON gateway (the gRPC API mapped onto HTTP/1.1 POSTs on the client port,
//! keys and values base64): synchronous like the [`StateStore`] contract, which is called from
//! plain threads, with no gRPC stack to build.
//!
//! Layout in etcd:
//! - `/netloom/<key>` — the value of a store key (its escaped form, see [`Key`]). A key's
//!   version is etcd's `mod_revision`: it grows with every write anywhere in the cluster, so it
//!   is never reused after a delete and re-create (no ABA).
//! - `/netloom/%locks/<scope>` — a held named lock, bound to its holder's lease. `%locks` is
//!   not an escaped segment [`Key::new`] can produce, so locks never show up in listings.
//!
//! Every write is one transaction (compare on `mod_revision` / `create_revision`, then put or
//! delete, else read the current version), so compare-and-swap is atomic cluster-wide.
//! Locks and leased keys live on leases that a thread renews every third of their TTL: when the
//! holder dies (kill -9, host gone) etcd removes them once the TTL passes.

mod http;
mod lease;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{
    Expect, Key, LeaseGuard, LockGuard, PutOutcome, Snapshot, StateStore, Versioned, Watcher,
};
use crate::error::{Error, Result};

/// Where netloom's keys live in etcd.
const ROOT: &str = "/netloom/";
/// Below ROOT: the named locks.
const LOCKS: &str = "%locks";
/// The client port's default.
const DEFAULT_PORT: u16 = 2379;

/// Lock keys live this long after their holder stops renewing them. Half of netloom's usual
/// 10 s lock wait, so a waiter outlasts a holder killed with -9; renewed every third of it, a
/// lock survives about 3 s without an answer from etcd (a leader election takes 1–2 s).
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(5);

/// The etcd store, opened from "etcd://HOST:PORT[,HOST:PORT…]".
#[derive(Clone)]
pub struct EtcdStore {
    client: Arc<Client>,
    lock_ttl: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.client.spec)
    }
}

impl EtcdStore {
    /// Parses `spec`; no connection is made until the first operation, so a daemon can start
    /// while etcd is down (its operations then fail with [`Error::Unavailable`]).
    pub fn open(spec: &str) -> Result<Self> {
        let endpoints = parse_spec(spec)?;
        Ok(EtcdStore {
            client: Arc::new(Client {
                spec: format!("etcd://{}", endpoints.join(",")),
                endpoints,
                preferred: AtomicUsize::new(0),
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(2),
            }),
            lock_ttl: DEFAULT_LOCK_TTL,
        })
    }

    /// How long a lock outlives a holder that stopped renewing it (rounded up to whole
    /// seconds, etcd's lease unit). Tests shorten it; the default is [`DEFAULT_LOCK_TTL`].
    pub fn with_lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Connect and request timeouts per endpoint (defaults 1 s and 2 s): an unreachable etcd
    /// fails an operation within about `connect × endpoints`.
    pub fn with_timeouts(self, connect: Duration, request: Duration) -> Self {
        let c = Client {
            spec: self.client.spec.clone(),
            endpoints: self.client.endpoints.clone(),
            preferred: AtomicUsize::new(0),
            // Zero would mean "no timeout" to nobody: sockets refuse it.
            connect_timeout: connect.max(Duration::from_millis(1)),
            request_timeout: request.max(Duration::from_millis(1)),
        };
        EtcdStore {
            client: Arc::new(c),
            lock_ttl: self.lock_ttl,
        }
    }

    /// The normalised spec, "etcd://HOST:PORT,…".
    pub fn spec(&self) -> &str {
        &self.client.spec
    }

    /// One cheap round trip: whether etcd answers right now.
    pub fn ping(&self) -> Result<()> {
        self.client
            .call(
                "/v3/kv/range",
                &json!({"key": b64(ROOT), "limit": 1, "count_only": true}),
                true,
            )
            .map(|_| ())
    }

    fn lock_key(scope: &str) -> String {
        format!("{ROOT}{LOCKS}/{}", Key::new([scope]).as_str())
    }

    /// One attempt at the lock on `lease`; when somebody else holds it, who (their
    /// description) and the revision at which we saw it held.
    fn try_take(&self, key: &str, lease: i64) -> Result<std::result::Result<(), (String, u64)>> {
        let resp = self.client.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": b64(key), "value": b64(&holder()),
                                             "lease": lease.to_string()}}],
                "failure": [{"request_range": {"key": b64(key)}}],
            }),
            false,
        )?;
        if succeeded(&resp) {
            return Ok(Ok(()));
        }
        let holder = first_range_kv(&resp)
            .and_then(|kv| unb64(kv.get("value")).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "another process".into());
        Ok(Err((holder, revision(&resp))))
    }

    fn take_lock(&self, scope: &str, timeout: Duration) -> Result<Option<EtcdLock>> {
        let key = Self::lock_key(scope);
        // The lease is renewed from the start, so waiting longer than its TTL is fine.
        let keeper = lease::Keeper::grant(self.client.clone(), self.lock_ttl, None)?;
        let deadline = Instant::now() + timeout;
        loop {
            let (holder, seen_at) = match self.try_take(&key, keeper.id())? {
                Ok(()) => {
                    return Ok(Some(EtcdLock {
                        scope: scope.to_string(),
                        _keeper: keeper,
                    }))
                }
                Err(held) => held,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::debug!(scope, holder, "etcd lock is taken");
                if timeout.is_zero() {
                    return Ok(None);
                }
                return Err(Error::Busy(format!(
                    "lock {scope:?} in {} is held by {holder} (waited {} ms); try again",
                    self.client.spec,
                    timeout.as_millis()
                )));
            }
            // Sleep until the holder's key goes (released, or its lease expired): etcd tells
            // us, from the revision we saw it at, so a release in between is not missed.
            match watch::wait_deleted(&self.client, &key, seen_at + 1, left) {
                Ok(_) => {}
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    // A watch that cannot be made is no reason to fail the lock: poll.
                    tracing::debug!(scope, error = %e, "etcd lock wait falls back to polling");
                    std::thread::sleep(left.min(Duration::from_millis(50)));
                }
            }
        }
    }
}

impl StateStore for EtcdStore {
    fn get(&self, key: &Key) -> Result<Option<Versioned>> {
        let resp = self
            .client
            .call("/v3/kv/range", &json!({"key": b64(&etcd_key(key))}), true)?;
        match resp
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            None => Ok(None),
            Some(kv) => Ok(Some(self.client.versioned(kv)?)),
        }
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<PutOutcome> {
        if key.as_str().is_empty() {
            return Err(Error::InvalidConfig(
                "the empty key cannot hold a value".into(),
            ));
        }
        let k = etcd_key(key);
        let resp = self.client.call(
            "/v3/kv/txn",
            &json!({
                "compare": compare(&k, expect),
                "success": [{"request_put": {"key": b64(&k), "value": B64.encode(value)}}],
                "failure": [{"request_range": {"key": b64(&k)}}],
            }),
            false,
        )?;
        if succeeded(&resp) {
            Ok(PutOutcome::Written(revision(&resp)))
        } else {
            Ok(PutOutcome::Mismatch(
                first_range_kv(&resp).map(mod_revision),
            ))
        }
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<PutOutcome> {
        let k = etcd_key(key);
        let success = match expect {
            // Absent means there is nothing to delete.
            Expect::Absent => json!([]),
            _ => json!([{"request_delete_range": {"key": b64(&k), "prev_kv": true}}]),
        };
        let resp = self.client.call(
            "/v3/kv/txn",
            &json!({
                "compare": compare(&k, expect),
                "success": success,
                "failure": [{"request_range": {"key": b64(&k)}}],
            }),
            false,
        )?;
        if !succeeded(&resp) {
            return Ok(PutOutcome::Mismatch(
                first_range_kv(&resp).map(mod_revision),
            ));
        }
        // The version that was deleted, as FileStore reports it (0: nothing was there).
        let deleted = resp
            .get("responses")
            .and_then(|r| r.get(0))
            .and_then(|r| r.get("response_delete_range"))
            .and_then(|r| r.get("prev_kvs"))
            .and_then(|p| p.get(0))
            .map(mod_revision)
            .unwrap_or(0);
        Ok(PutOutcome::Written(deleted))
    }

    fn list(&self, prefix: &Key) -> Result<Vec<(Key, Versioned)>> {
        Ok(self.client.range_prefix(prefix)?.0)
    }

    fn lock(&self, scope: &str, timeout: Duration) -> Result<Box<dyn LockGuard>> {
        match self.take_lock(scope, timeout)? {
            Some(l) => Ok(Box::new(l)),
            // take_lock reports a timeout as Busy itself; a zero timeout lands here.
            None => Err(Error::Busy(format!(
                "lock {scope:?} in {} is held by another netloom operation; try again",
                self.client.spec
            ))),
        }
    }

    fn try_lock(&self, scope: &str) -> Result<Option<Box<dyn LockGuard>>> {
        Ok(self
            .take_lock(scope, Duration::ZERO)?
            .map(|l| Box::new(l) as Box<dyn LockGuard>))
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.client.endpoints.join(","))
    }

    fn list_and_watch(&self, prefix: &Key) -> Result<(Snapshot, Box<dyn Watcher>)> {
        let (snapshot, revision) = self.client.range_prefix(prefix)?;
        let watcher = watch::EtcdWatcher::start(self.client.clone(), prefix, revision + 1)?;
        Ok((snapshot, Box::new(watcher)))
    }

    fn put_leased(&self, key: &Key, value: &[u8], ttl: Duration) -> Result<Box<dyn LeaseGuard>> {
        if key.as_str().is_empty() {
            return Err(Error::InvalidConfig(
                "the empty key cannot hold a value".into(),
            ));
        }
        let k = etcd_key(key);
        let keeper =
            lease::Keeper::grant(self.client.clone(), ttl, Some((k.clone(), value.to_vec())))?;
        // The keeper rewrites the key itself if its lease is ever lost; the first write is ours.
        if let Err(e) = self.client.put_on_lease(&k, value, keeper.id()) {
            drop(keeper);
            return Err(e);
        }
        Ok(Box::new(EtcdLeased {
            key: key.clone(),
            keeper,
        }))
    }
}

/// A held lock: its key lives on a lease this process renews; dropping it revokes the lease,
/// which deletes the key.
struct EtcdLock {
    scope: String,
    _keeper: lease::Keeper,
}

impl LockGuard for EtcdLock {
    fn scope(&self) -> &str {
        &self.scope
    }
}

/// A leased key: see [`StateStore::put_leased`].
struct EtcdLeased {
    key: Key,
    keeper: lease::Keeper,
}

impl LeaseGuard for EtcdLeased {
    fn key(&self) -> &Key {
        &self.key
    }

    fn alive(&self) -> bool {
        self.keeper.alive()
    }
}

/// The connection side: endpoints, failover, errors that name the store.
pub(super) struct Client {
    spec: String,
    endpoints: Vec<String>,
    /// The endpoint that answered last; tried first.
    preferred: AtomicUsize,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Client {
    /// The error for "no endpoint answered".
    fn unreachable(&self, detail: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("etcd store {} unreachable: {detail}", self.spec))
    }

    /// An I/O error in words: a read timeout shows up as EAGAIN, which says nothing.
    fn io_text(&self, e: &std::io::Error) -> String {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {} ms", self.request_timeout.as_millis())
            }
            _ => e.to_string(),
        }
    }

    /// Connects to the first endpoint that accepts, starting with the one that worked last;
    /// returns the socket and the endpoint's index.
    fn connect(&self) -> Result<(std::net::TcpStream, usize)> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let ep = &self.endpoints[idx];
            match http::connect(ep, self.connect_timeout) {
                Ok(s) => {
                    if idx != start {
                        tracing::info!(store = %self.spec, endpoint = %ep, "etcd: failed over");
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok((s, idx));
                }
                Err(e) => errors.push(format!("{ep}: {e}")),
            }
        }
        Err(self.unreachable(errors.join("; ")))
    }

    /// Sends a POST on a connected socket; its answer is read as it comes.
    fn send(
        &self,
        stream: std::net::TcpStream,
        idx: usize,
        path: &str,
        body: &Value,
    ) -> Result<(u16, http::Body)> {
        let ep = &self.endpoints[idx];
        stream
            .set_read_timeout(Some(self.request_timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.request_timeout)))
            .map_err(|e| self.unreachable(format!("{ep}: {e}")))?;
        let bytes = body.to_string();
        http::post(stream, ep, path, bytes.as_bytes())
            .map_err(|e| self.unreachable(format!("{ep}{path}: {}", self.io_text(&e))))
    }

    /// Opens a POST whose answer is read as it comes (watch streams).
    fn open(&self, path: &str, body: &Value) -> Result<(u16, http::Body)> {
        let (stream, idx) = self.connect()?;
        self.send(stream, idx, path, body)
    }

    /// One unary call. Every call moves on to the next endpoint when a connection cannot be
    /// made (the request never left); `idempotent` ones also when the answer is lost.
    fn call(&self, path: &str, body: &Value, idempotent: bool) -> Result<Value> {
        let attempts = if idempotent { self.endpoints.len() } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            // connect() has tried every endpoint already when it fails: no point going round.
            let (stream, idx) = self.connect()?;
            let result = self
                .send(stream, idx, path, body)
                .and_then(|(status, answer)| self.answer(path, status, answer));
            match result {
                Err(e) if e.is_unavailable() && attempt < attempts => {
                    tracing::debug!(store = %self.spec, error = %e, "etcd: answer lost, trying the next endpoint");
                    self.preferred.store(idx + 1, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    /// A unary answer: JSON, or the error it carries.
    fn answer(&self, path: &str, status: u16, answer: http::Body) -> Result<Value> {
        let bytes = answer
            .read_all()
            .map_err(|e| self.unreachable(format!("{path}: {}", self.io_text(&e))))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Internal(format!(
                "etcd store {}: {path} answered {status} with something that is not JSON: {e}",
                self.spec
            ))
        })?;
        if status == 200 && v.get("error").is_none() {
            return Ok(v);
        }
        Err(self.grpc_error(path, status, &v))
    }

    /// Maps a gateway error onto our kinds: unary calls answer {"error", "message", "code"},
    /// streams {"error": {"grpc_code", "message", …}}; codes are gRPC's.
    fn grpc_error(&self, path: &str, status: u16, v: &Value) -> Error {
        let inner = v.get("error").filter(|e| e.is_object()).unwrap_or(v);
        let msg = inner
            .get("message")
            .or_else(|| inner.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string();
        let code = inner
            .get("code")
            .or_else(|| inner.get("grpc_code"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let text = format!("etcd store {}: {path}: {msg}", self.spec);
        match code {
            // Unavailable, DeadlineExceeded (no leader, lost quorum, shutting down).
            14 | 4 => self.unreachable(format!("{path}: {msg}")),
            3 | 9 | 11 => Error::InvalidConfig(text),
            5 => Error::NotFound(text),
            8 => Error::Exhausted(text),
            7 | 16 => Error::InvalidConfig(format!(
                "{text} (netloom does not authenticate to etcd; allow it or use an open cluster)"
            )),
            _ => Error::Internal(format!("{text} (HTTP {status}, gRPC code {code})")),
        }
    }

    /// Every key at or below `prefix`, sorted, and the revision of that snapshot.
    fn range_prefix(&self, prefix: &Key) -> Result<(Snapshot, u64)> {
        let (start, end) = prefix_range(prefix);
        let resp = self.call(
            "/v3/kv/range",
            &json!({"key": b64(&start), "range_end": b64(&end)}),
            true,
        )?;
        let mut out = Vec::new();
        for kv in resp
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let raw = unb64(kv.get("key"))
                .map_err(|e| self.corrupt(format!("a key in the answer: {e}")))?;
            if let Some(key) = store_key(&raw, prefix) {
                out.push((key, self.versioned(kv)?));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((out, revision(&resp)))
    }

    fn versioned(&self, kv: &Value) -> Result<Versioned> {
        Ok(Versioned {
            version: mod_revision(kv),
            value: unb64(kv.get("value"))
                .map_err(|e| self.corrupt(format!("a value in the answer: {e}")))?,
        })
    }

    fn corrupt(&self, what: String) -> Error {
        Error::Internal(format!("etcd store {}: {what}", self.spec))
    }

    /// Writes `key` bound to `lease` whatever was there.
    fn put_on_lease(&self, key: &str, value: &[u8], lease: i64) -> Result<()> {
        self.call(
            "/v3/kv/put",
            &json!({"key": b64(key), "value": B64.encode(value), "lease": lease.to_string()}),
            false,
        )
        .map(|_| ())
    }
}

/// "etcd://a:1,b:2" → ["a:1", "b:2"]; a missing port is etcd's 2379.
fn parse_spec(spec: &str) -> Result<Vec<String>> {
    let bad = |why: &str| {
        Error::InvalidConfig(format!(
            "etcd store {spec:?}: {why} (expected etcd://HOST:PORT[,HOST:PORT...])"
        ))
    };
    let rest = spec
        .trim()
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("not an etcd:// address"))?;
    let mut out = Vec::new();
    for ep in rest.split(',').map(str::trim) {
        if ep.is_empty() {
            return Err(bad("empty endpoint"));
        }
        if ep.contains(['/', '@', '?', '#']) || ep.contains(char::is_whitespace) {
            return Err(bad(&format!(
                "{ep:?} is not HOST:PORT (no paths, users or TLS options)"
            )));
        }
        // "[v6]:port", "[v6]", "host:port", "host"; a bare v6 address needs brackets.
        let (host, port) = if let Some(r) = ep.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| bad(&format!("{ep:?}: unclosed '['")))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(&format!("{ep:?}: junk after ']'")))?,
                ),
            };
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad(&format!("{h:?} is not an IPv6 address")))?;
            (format!("[{h}]"), port)
        } else {
            match ep.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h.to_string(), Some(p)),
                Some(_) => return Err(bad(&format!("{ep:?}: write IPv6 as [ADDR]:PORT"))),
                None => (ep.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad(&format!("{ep:?} has no host")));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port")))?,
        };
        out.push(format!("{host}:{port}"));
    }
    Ok(out)
}

fn etcd_key(key: &Key) -> String {
    format!("{ROOT}{}", key.as_str())
}

/// The etcd range holding `prefix` and everything below it. It also holds siblings that
/// extend the last segment with a byte below '0' ("web-2" for "web"): callers filter.
fn prefix_range(prefix: &Key) -> (String, String) {
    if prefix.as_str().is_empty() {
        // '0' is the byte after '/'.
        (ROOT.to_string(), "/netloom0".to_string())
    } else {
        let start = etcd_key(prefix);
        let end = format!("{start}0");
        (start, end)
    }
}

/// The store key of an etcd key, if it is a data key at or below `prefix`.
fn store_key(raw: &[u8], prefix: &Key) -> Option<Key> {
    let s = std::str::from_utf8(raw).ok()?.strip_prefix(ROOT)?;
    if s == LOCKS || s.starts_with(&format!("{LOCKS}/")) {
        return None;
    }
    Key::from_escaped(s).filter(|k| k.starts_with(prefix) && !k.as_str().is_empty())
}

/// The transaction compare for an expectation (none for Any).
fn compare(key: &str, expect: Expect) -> Value {
    match expect {
        Expect::Any => json!([]),
        Expect::Absent => json!([{"key": b64(key), "target": "CREATE", "result": "EQUAL",
                                  "create_revision": "0"}]),
        Expect::Version(v) => json!([{"key": b64(key), "target": "MOD", "result": "EQUAL",
                                      "mod_revision": v.to_string()}]),
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// A base64 field; absent means empty (the gateway leaves out empty values).
fn unb64(v: Option<&Value>) -> std::result::Result<Vec<u8>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|e| e.to_string()),
        Some(other) => Err(format!("expected base64, got {other}")),
    }
}

/// An int64 field: the gateway writes them as strings and leaves out zeros.
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn mod_revision(kv: &Value) -> u64 {
    int(kv.get("mod_revision")).max(0) as u64
}

fn revision(resp: &Value) -> u64 {
    int(resp.get("header").and_then(|h| h.get("revision"))).max(0) as u64
}

fn succeeded(resp: &Value) -> bool {
    resp.get("succeeded")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The first kv of a failed transaction's range.
fn first_range_kv(resp: &Value) -> Option<&Value> {
    resp.get("responses")?
        .get(0)?
        .get("response_range")?
        .get("kvs")?
        .get(0)
}

/// Who holds a lock, for "is held by …" messages.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("pid {} on {}", std::process::id(), host.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        assert_eq!(
            parse_spec("etcd://127.0.0.1:2379").unwrap(),
            vec!["127.0.0.1:2379"]
        );
        assert_eq!(
            parse_spec(" etcd://10.0.0.1, 10.0.0.2:2380,[fd00::1]:1,[fd00::2] ").unwrap(),
            vec![
                "10.0.0.1:2379",
                "10.0.0.2:2380",
                "[fd00::1]:1",
                "[fd00::2]:2379"
            ]
        );
        for bad in [
            "http://127.0.0.1:2379",
            "etcd://",
            "etcd://a:1,",
            "etcd://a:0",
            "etcd://a:x",
            "etcd://fd00::1",
            "etcd://[fd00::1",
            "etcd://a:1/path",
            "etcd://user@a:1",
            "etcd://[zz]:1",
        ] {
            let e = parse_spec(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidConfig, "{bad}");
            assert!(e.to_string().contains("etcd://HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn keys_map_under_root_and_locks_stay_hidden() {
        let k = Key::new(["ipam", "pools", "10.0.0.0/24"]);
        assert_eq!(etcd_key(&k), "/netloom/ipam/pools/10.0.0.0%2F24");
        let all = Key::new::<[&str; 0], &str>([]);
        assert_eq!(store_key(etcd_key(&k).as_bytes(), &all), Some(k.clone()));
        assert_eq!(store_key(b"/netloom/%locks/x", &all), None);
        assert_eq!(store_key(b"/other/x", &all), None);
        // The range over-reads siblings; store_key drops them.
        let web = Key::new(["networks", "web"]);
        assert_eq!(store_key(b"/netloom/networks/web-2", &web), None);
        assert!(store_key(b"/netloom/networks/web/ep", &web).is_some());
        let (start, end) = prefix_range(&web);
        assert!(
            start.as_str() < "/netloom/networks/web/ep"
                && "/netloom/networks/web/ep" < end.as_str()
        );
    }

    /// A server that answers every connection with `answer` (None: hangs up at once), for
    /// `n` connections.
    fn fake(answer: Option<&'static str>, n: usize) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..n {
                let Ok((mut c, _)) = l.accept() else { return };
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                if let Some(body) = answer {
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            }
        });
        addr
    }

    #[test]
    fn lost_answers_move_reads_on_but_not_writes() {
        let ok = r#"{"header":{"revision":"7"},"kvs":[{"key":"L25ldGxvb20veA==","mod_revision":"7","value":"eQ=="}]}"#;
        let hangs_up = fake(None, 2);
        let answers = fake(Some(ok), 2);
        let s = EtcdStore::open(&format!("etcd://{hangs_up},{answers}")).unwrap();
        // The read went to the first endpoint, lost its answer, and asked the second.
        let v = s.get(&Key::new(["x"])).unwrap().unwrap();
        assert_eq!((v.version, v.value), (7, b"y".to_vec()));
        // A write is not sent twice: back on the first endpoint, it reports the outage.
        s.client.preferred.store(0, Ordering::Relaxed);
        let e = s.put(&Key::new(["x"]), b"z", Expect::Any).unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains(&hangs_up.to_string()), "{e}");
    }

    #[test]
    fn silent_server_times_out_with_words() {
        // Connections queue in the backlog but nobody ever answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = EtcdStore::open(&format!("etcd://{addr}"))
            .unwrap()
            .with_timeouts(Duration::from_secs(1), Duration::from_millis(300));
        let t = Instant::now();
        let e = s.get(&Key::new(["x"])).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(e.is_unavailable());
        assert!(e.to_string().contains("no answer within 300 ms"), "{e}");
        let e = s.list_and_watch(&Key::new(["x"])).err().unwrap();
        assert!(e.is_unavailable(), "{e}");
    }

    #[test]
    fn unreachable_store_fails_fast_and_names_itself() {
        // A port nobody listens on: connection refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let s = EtcdStore::open(&format!("etcd://127.0.0.1:{port}")).unwrap();
        let t = Instant::now();
        let e = s.get(&Key::new(["x"])).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(e.is_unavailable());
        assert_eq!(e.kind(), crate::ErrorKind::Busy);
        assert!(
            e.to_string()
                .starts_with(&format!("etcd store etcd://127.0.0.1:{port} unreachable:")),
            "{e}"
        );
        assert_eq!(s.describe(), format!("etcd:127.0.0.1:{port}"));
    }
}
