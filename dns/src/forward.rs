//! Forwarding to upstream resolvers: every upstream is asked at once and the first good answer
//! wins (a dead upstream costs nothing while another answers), under one short deadline after
//! which the asker gets SERVFAIL. Good answers — including NXDOMAIN — go through the cache.
//! UDP first; an upstream answer with TC set is asked again over TCP.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select_ok, BoxFuture, FutureExt};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::cache::{Cache, CacheKey};
use crate::metrics::Metrics;

/// The EDNS payload size we advertise upstream (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

pub struct Forwarder {
    pub cache: Cache,
    timeout: Duration,
    metrics: Arc<Metrics>,
    seq: AtomicU64,
    ids: std::hash::RandomState,
}

impl Forwarder {
    pub fn new(timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Forwarder {
            cache: Cache::default(),
            timeout,
            metrics,
            seq: AtomicU64::new(0),
            ids: std::hash::RandomState::new(),
        }
    }

    /// An unpredictable query id (off-path spoofing needs id and port).
    fn next_id(&self) -> u16 {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.ids.hash_one(n) as u16
    }

    /// The cached answer for `query` on `network`, if fresh.
    pub fn cached(&self, network: &str, query: &Query) -> Option<Message> {
        self.cache.get(&key(network, query))
    }

    /// Asks all `upstreams` for `query`; `None` when none gave a usable answer in time.
    pub async fn resolve(
        &self,
        network: &str,
        query: &Query,
        upstreams: &[SocketAddr],
    ) -> Option<Message> {
        if upstreams.is_empty() {
            return None;
        }
        Metrics::inc(&self.metrics.forwarded);
        let id = self.next_id();
        let mut msg = Message::new();
        msg.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        msg.set_edns(edns);
        let wire = Arc::new(msg.to_vec().ok()?);
        let attempts: Vec<BoxFuture<'_, Result<Message, ()>>> = upstreams
            .iter()
            .map(|up| {
                let wire = wire.clone();
                let up = *up;
                async move {
                    match ask(up, &wire, id, query).await {
                        Ok(m) => Ok(m),
                        Err(why) => {
                            Metrics::inc(&self.metrics.upstream_errors);
                            tracing::debug!(upstream = %up, name = %query.name(), %why, "upstream failed");
                            Err(())
                        }
                    }
                }
                .boxed()
            })
            .collect();
        match tokio::time::timeout(self.timeout, select_ok(attempts)).await {
            Ok(Ok((answer, _rest))) => {
                self.cache.put(key(network, query), &answer);
                Some(answer)
            }
            Ok(Err(())) => {
                tracing::warn!(name = %query.name(), "every upstream failed");
                None
            }
            Err(_) => {
                tracing::warn!(name = %query.name(), timeout_ms = self.timeout.as_millis() as u64, "no upstream answered in time");
                None
            }
        }
    }
}

fn key(network: &str, q: &Query) -> CacheKey {
    CacheKey {
        network: network.to_string(),
        name: q.name().to_lowercase().to_ascii(),
        qtype: u16::from(q.query_type()),
        qclass: u16::from(q.query_class()),
    }
}

/// One upstream over UDP (then TCP if truncated). Only NOERROR and NXDOMAIN count as answers:
/// SERVFAIL and REFUSED leave the race to the other upstreams.
async fn ask(up: SocketAddr, wire: &[u8], id: u16, query: &Query) -> Result<Message, String> {
    let local: SocketAddr = if up.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    // Connected: only the upstream's datagrams arrive, and ICMP unreachable fails fast.
    sock.connect(up).await.map_err(|e| e.to_string())?;
    sock.send(wire).await.map_err(|e| e.to_string())?;
    // We advertise 1232 bytes (EDNS): 4096 holds any answer that honours it. Not 64 KB: up to
    // one buffer per query in flight, and a burst of cache misses would leave the heap large.
    let mut buf = vec![0u8; 4096];
    let msg = loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if matches_query(&m, id, query) {
                break m;
            }
        }
    };
    let msg = if msg.truncated() {
        ask_tcp(up, wire, id, query).await?
    } else {
        msg
    };
    match msg.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(msg),
        other => Err(format!("answered {other}")),
    }
}

async fn ask_tcp(up: SocketAddr, wire: &[u8], id: u16, query: &Query) -> Result<Message, String> {
    let mut s = TcpStream::connect(up).await.map_err(|e| e.to_string())?;
    let len = u16::try_from(wire.len()).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(wire.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(wire);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let n = s.read_u16().await.map_err(|e| e.to_string())? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
    if !matches_query(&m, id, query) {
        return Err("TCP answer does not match the query".into());
    }
    Ok(m)
}

fn matches_query(m: &Message, id: u16, q: &Query) -> bool {
    m.id() == id
        && m.message_type() == MessageType::Response
        && m.queries().len() == 1
        && m.queries()[0].query_type() == q.query_type()
        && m.queries()[0].query_class() == q.query_class()
        && m.queries()[0].name() == q.name()
}
