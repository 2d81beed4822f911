//! Leases: granted, renewed by a thread while their guard lives, revoked when it is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{int, Client};
use crate::error::{Error, Result};

/// A lease and the thread renewing it. Dropping it stops the renewals and revokes the lease,
/// which makes etcd delete every key bound to it.
pub(super) struct Keeper {
    id: i64,
    alive: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Grants a lease of `ttl` (whole seconds, at least one) and starts renewing it. With
    /// `rewrite`, a lease lost while etcd was out of reach is replaced as soon as etcd answers
    /// again, and the key is written anew on it (a host record comes back by itself).
    pub(super) fn grant(
        client: Arc<Client>,
        ttl: Duration,
        rewrite: Option<(String, Vec<u8>)>,
    ) -> Result<Keeper> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = secs.max(1);
        let id = grant(&client, secs)?;
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let renewer = Renewer {
            client: client.clone(),
            id,
            ttl: Duration::from_secs(secs),
            alive: alive.clone(),
            rewrite,
        };
        let thread = std::thread::Builder::new()
            .name(format!("etcd-lease-{id:x}"))
            .spawn(move || renewer.run(rx));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let _ = revoke(&client, id);
                return Err(Error::io("start the etcd lease renewal thread", e));
            }
        };
        Ok(Keeper {
            id,
            alive,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub(super) fn id(&self) -> i64 {
        self.id
    }

    pub(super) fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Closing the channel wakes the renewer, which revokes; joining makes "dropped" mean
        // "gone from etcd" (or etcd unreachable, when the TTL does it).
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Renewer {
    client: Arc<Client>,
    id: i64,
    ttl: Duration,
    alive: Arc<AtomicBool>,
    rewrite: Option<(String, Vec<u8>)>,
}

impl Renewer {
    fn run(mut self, stop: mpsc::Receiver<()>) {
        // A third of the TTL leaves two more tries before the lease runs out.
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        let mut renewed = Instant::now();
        // A message or a closed channel both mean "stop".
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
            match keepalive(&self.client, self.id) {
                Ok(true) => {
                    renewed = Instant::now();
                    self.alive.store(true, Ordering::Relaxed);
                }
                Ok(false) => {
                    // Expired while we could not reach etcd: its keys are gone.
                    if self.alive.swap(false, Ordering::Relaxed) {
                        tracing::warn!(lease = self.id, store = %self.client.spec,
                            "etcd lease expired while etcd was out of reach");
                    }
                    self.replace();
                }
                Err(e) => {
                    if renewed.elapsed() >= self.ttl && self.alive.swap(false, Ordering::Relaxed) {
                        tracing::warn!(lease = self.id, error = %e,
                            "etcd lease not renewed within its TTL");
                    }
                }
            }
        }
        if let Err(e) = revoke(&self.client, self.id) {
            // Nothing more to do: etcd drops the lease when its TTL passes.
            tracing::debug!(lease = self.id, error = %e, "etcd lease not revoked");
        }
    }

    /// A new lease and the key written again on it (leased keys only).
    fn replace(&mut self) {
        let Some((key, value)) = &self.rewrite else {
            return;
        };
        let Ok(id) = grant(&self.client, self.ttl.as_secs()) else {
            return;
        };
        match self.client.put_on_lease(key, value, id) {
            Ok(()) => {
                tracing::info!(key = %key, lease = id, "etcd: leased key written again");
                self.id = id;
                self.alive.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                let _ = revoke(&self.client, id);
            }
        }
    }
}

fn grant(client: &Client, secs: u64) -> Result<i64> {
    let resp = client.call("/v3/lease/grant", &json!({"TTL": secs.to_string()}), false)?;
    let id = int(resp.get("ID"));
    if id == 0 {
        return Err(Error::Internal(format!(
            "etcd store {}: lease grant answered without an ID: {resp}",
            client.spec
        )));
    }
    Ok(id)
}

/// One renewal; false when the lease no longer exists.
fn keepalive(client: &Client, id: i64) -> Result<bool> {
    let resp = client.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}), true)?;
    // The stream answers {"result": {..., "TTL": n}}; a lease that expired has no TTL.
    Ok(int(resp.get("result").and_then(|r| r.get("TTL"))) > 0)
}

fn revoke(client: &Client, id: i64) -> Result<()> {
    match client.call("/v3/lease/revoke", &json!({"ID": id.to_string()}), false) {
        Err(e) if e.kind() == crate::ErrorKind::NotFound => Ok(()),
        other => other.map(|_| ()),
    }
}
