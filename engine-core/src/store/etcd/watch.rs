//! Watches: one gateway stream per watcher, read by a thread that forwards events in order.

use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{b64, int, prefix_range, store_key, unb64, Client};
use crate::error::{Error, Result};
use crate::store::{Key, WatchEvent, Watcher};

/// Dead peers (a host gone without closing its sockets) are noticed by TCP keepalive after
/// about IDLE + INTERVAL × COUNT seconds; a stopped etcd closes the stream at once.
const KEEPALIVE_IDLE_S: u32 = 5;
const KEEPALIVE_INTERVAL_S: u32 = 2;
const KEEPALIVE_COUNT: u32 = 3;

pub(super) struct EtcdWatcher {
    rx: mpsc::Receiver<Result<WatchEvent>>,
    socket: TcpStream,
    thread: Option<JoinHandle<()>>,
    /// Why the watch broke, once it has: every later call says so again.
    broken: Option<String>,
    spec: String,
}

impl EtcdWatcher {
    /// Watches `prefix` from `start_revision` on (the snapshot's revision + 1, so no change
    /// falls between the snapshot and the first event).
    pub(super) fn start(client: Arc<Client>, prefix: &Key, start_revision: u64) -> Result<Self> {
        let (start, end) = prefix_range(prefix);
        let (status, body) = client.open(
            "/v3/watch",
            &json!({"create_request": {"key": b64(&start), "range_end": b64(&end),
                                       "start_revision": start_revision.to_string()}}),
        )?;
        let socket = body
            .socket()
            .try_clone()
            .map_err(|e| client.unreachable(format!("watch: {e}")))?;
        let mut messages = serde_json::Deserializer::from_reader(body).into_iter::<Value>();
        // The first message confirms the watch (or says why not) within the request timeout.
        let first = match messages.next() {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(client.unreachable(format!("watch: {e}"))),
            None => return Err(client.unreachable("watch: stream closed at once")),
        };
        if status != 200 || first.get("error").is_some() {
            return Err(client.grpc_error("/v3/watch", status, &first));
        }
        let created = first
            .get("result")
            .and_then(|r| r.get("created"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !created {
            return Err(Error::Internal(format!(
                "etcd store {}: watch not created: {first}",
                client.spec
            )));
        }
        // From now on the stream may stay quiet for hours: no read timeout, keepalive instead.
        set_keepalive(&socket);
        socket
            .set_read_timeout(None)
            .map_err(|e| client.unreachable(format!("watch: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let reader = Reader {
            client: client.clone(),
            prefix: prefix.clone(),
            tx,
        };
        let thread = std::thread::Builder::new()
            .name("etcd-watch".into())
            .spawn(move || reader.run(messages))
            .map_err(|e| Error::io("start the etcd watch thread", e))?;
        Ok(EtcdWatcher {
            rx,
            socket,
            thread: Some(thread),
            broken: None,
            spec: client.spec.clone(),
        })
    }
}

impl Watcher for EtcdWatcher {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        if let Some(why) = &self.broken {
            return Err(Error::Unavailable(why.clone()));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(ev)) => Ok(Some(ev)),
            Ok(Err(e)) => {
                self.broken = Some(e.to_string());
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                let why = format!("etcd store {} unreachable: watch ended", self.spec);
                self.broken = Some(why.clone());
                Err(Error::Unavailable(why))
            }
        }
    }
}

impl Drop for EtcdWatcher {
    fn drop(&mut self) {
        // Unblocks the reader, which then sees an error and exits.
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reader {
    client: Arc<Client>,
    prefix: Key,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

impl Reader {
    fn run(self, messages: impl Iterator<Item = serde_json::Result<Value>>) {
        for msg in messages {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    let _ = self
                        .tx
                        .send(Err(self.client.unreachable(format!("watch: {e}"))));
                    return;
                }
            };
            if msg.get("error").is_some() {
                // Whatever the cause, the watch is over: the caller re-lists and watches
                // again, which is what "unavailable" asks of it.
                let e = self.client.grpc_error("/v3/watch", 200, &msg);
                let e = if e.is_unavailable() {
                    e
                } else {
                    self.client.unreachable(format!("watch broke: {e}"))
                };
                let _ = self.tx.send(Err(e));
                return;
            }
            let Some(result) = msg.get("result") else {
                continue;
            };
            if result.get("canceled").and_then(Value::as_bool) == Some(true) {
                // Compacted past our revision, or etcd dropped the watch: the caller re-lists.
                let why = result
                    .get("cancel_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("canceled by etcd");
                let _ = self.tx.send(Err(Error::Unavailable(format!(
                    "etcd store {} watch canceled (compact revision {}): {why}",
                    self.client.spec,
                    int(result.get("compact_revision"))
                ))));
                return;
            }
            for ev in result
                .get("events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match self.event(ev) {
                    Ok(None) => {}
                    Ok(Some(ev)) => {
                        if self.tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(e));
                        return;
                    }
                }
            }
        }
        let _ = self
            .tx
            .send(Err(self.client.unreachable("watch stream closed by etcd")));
    }

    fn event(&self, ev: &Value) -> Result<Option<WatchEvent>> {
        let kv = ev.get("kv").unwrap_or(&Value::Null);
        let raw = unb64(kv.get("key")).map_err(|e| {
            Error::Internal(format!("etcd store {}: watched key: {e}", self.client.spec))
        })?;
        let Some(key) = store_key(&raw, &self.prefix) else {
            return Ok(None);
        };
        // PUT is the enum's zero, which the gateway leaves out.
        if ev.get("type").and_then(Value::as_str) == Some("DELETE") {
            return Ok(Some(WatchEvent::Delete(key)));
        }
        Ok(Some(WatchEvent::Put(key, self.client.versioned(kv)?)))
    }
}

fn set_keepalive(socket: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    // Best effort: without keepalive a vanished host is only noticed when etcd comes back.
    let _ = setsockopt(socket, sockopt::KeepAlive, &true);
    let _ = setsockopt(socket, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_S);
    let _ = setsockopt(socket, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_S);
    let _ = setsockopt(socket, sockopt::TcpKeepCount, &KEEPALIVE_COUNT);
}

/// Waits until the etcd key `raw_key` is deleted (at `from_revision` or later) or `timeout`
/// passes; true when it was deleted. Lock waiters use it instead of retrying their
/// transaction, which etcd would write to its log every time.
pub(super) fn wait_deleted(
    client: &Client,
    raw_key: &str,
    from_revision: u64,
    timeout: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let (status, body) = client.open(
        "/v3/watch",
        &json!({"create_request": {"key": b64(raw_key),
                                   "start_revision": from_revision.to_string(),
                                   "filters": ["NOPUT"]}}),
    )?;
    let socket = body
        .socket()
        .try_clone()
        .map_err(|e| client.unreachable(format!("watch: {e}")))?;
    let mut messages = serde_json::Deserializer::from_reader(body).into_iter::<Value>();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| client.unreachable(format!("watch: {e}")))?;
        let msg = match messages.next() {
            Some(Ok(m)) => m,
            Some(Err(e))
                if matches!(
                    e.io_error_kind(),
                    Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                ) =>
            {
                return Ok(false)
            }
            Some(Err(e)) => return Err(client.unreachable(format!("watch: {e}"))),
            None => return Err(client.unreachable("watch stream closed by etcd")),
        };
        if status != 200 || msg.get("error").is_some() {
            return Err(client.grpc_error("/v3/watch", status, &msg));
        }
        let Some(result) = msg.get("result") else {
            continue;
        };
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            return Err(Error::Internal(format!(
                "etcd store {}: watch on {raw_key} canceled: {result}",
                client.spec
            )));
        }
        let deleted = result
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|ev| ev.get("type").and_then(Value::as_str) == Some("DELETE"));
        if deleted {
            return Ok(true);
        }
    }
}
