//! The forwarding cache: upstream answers kept for their TTL, negative answers (NXDOMAIN and
//! NODATA) for the SOA's negative TTL (RFC 2308: min(SOA TTL, SOA minimum)). SERVFAIL is never
//! cached. Entries are per network, as networks may have different upstreams.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// At most this many entries; a full cache first drops what expired, then everything.
const MAX_ENTRIES: usize = 10_000;
/// No answer is kept longer than a day, whatever its TTL says.
const MAX_TTL: u32 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub network: String,
    /// Lower-case absolute name.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

struct Entry {
    msg: Message,
    stored: Instant,
    ttl: u32,
}

#[derive(Default)]
pub struct Cache {
    map: Mutex<HashMap<CacheKey, Entry>>,
}

/// How long `msg` may be cached, if at all.
pub fn cache_ttl(msg: &Message) -> Option<u32> {
    match msg.response_code() {
        ResponseCode::NoError if !msg.answers().is_empty() => {
            msg.answers().iter().map(|r| r.ttl()).min()
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            msg.name_servers().iter().find_map(|r| match r.data() {
                RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                _ => None,
            })
        }
        _ => None,
    }
    .filter(|t| *t > 0)
    .map(|t| t.min(MAX_TTL))
}

impl Cache {
    /// A copy of the cached answer with TTLs counted down, if one is fresh.
    pub fn get(&self, key: &CacheKey) -> Option<Message> {
        let mut map = self.map.lock().ok()?;
        let e = map.get(key)?;
        let age = e.stored.elapsed();
        if age >= Duration::from_secs(u64::from(e.ttl)) {
            map.remove(key);
            return None;
        }
        let age = age.as_secs() as u32;
        let mut msg = e.msg.clone();
        drop(map);
        countdown(&mut msg, age);
        Some(msg)
    }

    pub fn put(&self, key: CacheKey, msg: &Message) {
        let Some(ttl) = cache_ttl(msg) else { return };
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, e| now.duration_since(e.stored) < Duration::from_secs(u64::from(e.ttl)));
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(
            key,
            Entry {
                msg: msg.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

fn countdown(msg: &mut Message, age: u32) {
    for r in msg.answers_mut() {
        let t = r.ttl().saturating_sub(age);
        r.set_ttl(t);
    }
    for r in msg.name_servers_mut() {
        let t = r.ttl().saturating_sub(age);
        r.set_ttl(t);
    }
    for r in msg.additionals_mut() {
        if r.record_type() != RecordType::OPT {
            let t = r.ttl().saturating_sub(age);
            r.set_ttl(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("test.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
        )
    }

    #[test]
    fn ttls_positive_negative_and_never() {
        let mut m = Message::new();
        let name = Name::from_ascii("a.test.").unwrap();
        m.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A::new(10, 0, 0, 1)),
        ));
        m.add_answer(Record::from_rdata(name, 60, RData::A(A::new(10, 0, 0, 2))));
        assert_eq!(cache_ttl(&m), Some(60));
        let mut nx = Message::new();
        nx.set_response_code(ResponseCode::NXDomain);
        nx.add_name_server(soa(900, 120));
        assert_eq!(cache_ttl(&nx), Some(120), "min(SOA TTL, SOA minimum)");
        let mut bare = Message::new();
        bare.set_response_code(ResponseCode::NXDomain);
        assert_eq!(cache_ttl(&bare), None, "no SOA: not cached");
        let mut fail = Message::new();
        fail.set_response_code(ResponseCode::ServFail);
        fail.add_name_server(soa(900, 120));
        assert_eq!(cache_ttl(&fail), None);
    }

    #[test]
    fn hits_are_per_network() {
        let c = Cache::default();
        let key = |net: &str| CacheKey {
            network: net.into(),
            name: "a.test.".into(),
            qtype: 1,
            qclass: 1,
        };
        let mut m = Message::new();
        m.add_answer(Record::from_rdata(
            Name::from_ascii("a.test.").unwrap(),
            30,
            RData::A(A::new(10, 0, 0, 1)),
        ));
        c.put(key("n1"), &m);
        assert!(c
            .get(&key("n1"))
            .is_some_and(|h| h.answers()[0].ttl() <= 30));
        assert!(c.get(&key("n2")).is_none());
    }
}
