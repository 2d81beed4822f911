//! What to answer: container names from the table (scoped to the asker's network), REFUSED for
//! askers outside every network, everything else forwarded. Local answers are built and
//! encoded here without awaiting anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::table::{NetTable, Table};

/// TTL of container answers: short, as containers come and go (aardvark uses 0, Docker 600).
pub const LOCAL_TTL: u32 = 5;
/// The largest UDP answer we send when the client advertises more (EDNS).
const MAX_UDP: usize = 1232;
/// Without EDNS, RFC 1035's limit.
const CLASSIC_UDP: usize = 512;

/// A parsed query and how to reply to it.
pub struct Asked {
    pub request: Message,
    /// Largest reply the client accepts over this transport (`None` for TCP).
    pub limit: Option<usize>,
}

/// The local decision.
pub enum Decision {
    /// A finished reply.
    Reply(Message),
    /// Forward `query` for the network `network` to `upstreams`.
    Forward {
        network: String,
        upstreams: Vec<std::net::SocketAddr>,
    },
}

/// Parses a query; unparseable datagrams are dropped (no id to answer to).
pub fn parse(bytes: &[u8], udp: bool) -> Option<Asked> {
    let request = Message::from_vec(bytes).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let limit = udp.then(|| match request.extensions() {
        Some(e) => (e.max_payload() as usize).clamp(CLASSIC_UDP, MAX_UDP),
        None => CLASSIC_UDP,
    });
    Some(Asked { request, limit })
}

/// The reply skeleton: id, opcode, RD copied; RA set; the question echoed; EDNS if asked.
pub fn reply_to(req: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(req.checking_disabled())
        .set_response_code(code)
        .add_queries(req.queries().iter().cloned());
    if req.extensions().is_some() {
        let mut e = Edns::new();
        e.set_max_payload(MAX_UDP as u16);
        m.set_edns(e);
    }
    m
}

/// Decides how to answer `req` from `src` arriving on `local`.
pub fn decide(
    table: &Table,
    rr: &AtomicUsize,
    req: &Message,
    src: IpAddr,
    local: IpAddr,
) -> Decision {
    if req.op_code() != OpCode::Query {
        return Decision::Reply(reply_to(req, ResponseCode::NotImp));
    }
    let Some(net) = table.net_for(src, local) else {
        return Decision::Reply(reply_to(req, ResponseCode::Refused));
    };
    let [q] = req.queries() else {
        return Decision::Reply(reply_to(req, ResponseCode::FormErr));
    };
    if q.query_class() != DNSClass::IN {
        return forward(net);
    }
    let qname = q.name().to_lowercase().to_ascii();
    let qname = qname.trim_end_matches('.');
    if q.query_type() == RecordType::PTR {
        if let Some(ip) = reverse_ip(qname) {
            if let Some(target) = net.ptr.get(&ip) {
                let mut m = local_reply(req);
                if let Ok(t) = Name::from_ascii(target) {
                    m.add_answer(Record::from_rdata(
                        q.name().clone(),
                        LOCAL_TTL,
                        RData::PTR(PTR(t)),
                    ));
                }
                return Decision::Reply(m);
            }
            // Addresses of this network are ours to know: no leak of the question upstream.
            if net.subnets.iter().any(|s| s.contains(ip)) {
                return Decision::Reply(negative(req, net, ResponseCode::NXDomain));
            }
        }
        return forward(net);
    }
    let (short, in_domain) = match qname.strip_suffix(net.domain.as_str()) {
        Some(rest) if rest.ends_with('.') => (&rest[..rest.len() - 1], true),
        Some("") => ("", true),
        _ => (qname, false),
    };
    // The full name first (names may contain dots), then the name with the domain stripped.
    let addrs = net
        .names
        .get(qname)
        .or_else(|| in_domain.then(|| net.names.get(short)).flatten());
    match addrs {
        Some(addrs) => {
            let mut m = local_reply(req);
            let want: Vec<IpAddr> = addrs
                .iter()
                .copied()
                .filter(|ip| match q.query_type() {
                    RecordType::A => ip.is_ipv4(),
                    RecordType::AAAA => ip.is_ipv6(),
                    RecordType::ANY => true,
                    _ => false,
                })
                .collect();
            if want.is_empty() {
                // NODATA: the name exists, not with this type.
                return Decision::Reply(negative(req, net, ResponseCode::NoError));
            }
            // Round robin: every answer starts one further along.
            let start = rr.fetch_add(1, Ordering::Relaxed) % want.len();
            for ip in want[start..].iter().chain(&want[..start]) {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                m.add_answer(Record::from_rdata(q.name().clone(), LOCAL_TTL, rdata));
            }
            Decision::Reply(m)
        }
        // Single labels are container names or nothing: never sent upstream (no leak of
        // other networks' names, no search-list walks hitting the host's resolver).
        None if in_domain || !qname.contains('.') => {
            Decision::Reply(negative(req, net, ResponseCode::NXDomain))
        }
        None => forward(net),
    }
}

fn forward(net: &NetTable) -> Decision {
    Decision::Forward {
        network: net.name.clone(),
        upstreams: net.upstreams.clone(),
    }
}

fn local_reply(req: &Message) -> Message {
    let mut m = reply_to(req, ResponseCode::NoError);
    m.set_authoritative(true);
    m
}

/// NXDOMAIN or NODATA with the domain's SOA, so stub caches know how long to remember it.
fn negative(req: &Message, net: &NetTable, code: ResponseCode) -> Message {
    let mut m = reply_to(req, code);
    m.set_authoritative(true);
    if let Ok(zone) = Name::from_ascii(format!("{}.", net.domain)) {
        let mname =
            Name::from_ascii(format!("ns.{}.", net.domain)).unwrap_or_else(|_| zone.clone());
        let rname = Name::from_ascii(format!("hostmaster.{}.", net.domain))
            .unwrap_or_else(|_| zone.clone());
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, LOCAL_TTL);
        m.add_name_server(Record::from_rdata(zone, LOCAL_TTL, RData::SOA(soa)));
    }
    m
}

/// The client's reply built from an upstream answer.
pub fn from_upstream(req: &Message, up: &Message) -> Message {
    let mut m = reply_to(req, up.response_code());
    m.set_authentic_data(up.authentic_data());
    m.add_answers(up.answers().iter().cloned());
    m.add_name_servers(up.name_servers().iter().cloned());
    m.add_additionals(
        up.additionals()
            .iter()
            .filter(|r| r.record_type() != RecordType::OPT)
            .cloned(),
    );
    m
}

/// Encodes `m`, or — when it exceeds the client's UDP limit — an empty reply with TC set, so
/// the client asks again over TCP. Returns the bytes and whether it was truncated.
pub fn encode(m: &Message, limit: Option<usize>) -> Option<(Vec<u8>, bool)> {
    let bytes = m.to_vec().ok()?;
    match limit {
        Some(l) if bytes.len() > l => Some((m.truncate().to_vec().ok()?, true)),
        _ => Some((bytes, false)),
    }
}

/// The address a reverse name stands for ("4.3.2.1.in-addr.arpa" → 1.2.3.4).
pub fn reverse_ip(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = rest
            .split('.')
            .map(|p| p.parse::<u8>().ok())
            .collect::<Option<_>>()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(
            octets[0], octets[1], octets[2], octets[3],
        )));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|p| {
            (p.len() == 1)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles
        .iter()
        .rev()
        .collect::<Vec<_>>()
        .chunks(2)
        .enumerate()
    {
        bytes[i] = (pair[0] << 4) | pair[1];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// Re-exported for the listeners: the query of a request, if exactly one.
pub fn single_query(m: &Message) -> Option<&Query> {
    match m.queries() {
        [q] => Some(q),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{NetworkEntry, RecordEntry};

    fn table() -> Table {
        let net = |name: &str, subnet: &str, gw: &str| NetworkEntry {
            name: name.into(),
            subnets: vec![subnet.parse().unwrap()],
            gateways: vec![gw.parse().unwrap()],
            domain: "dns.netloom".into(),
            upstreams: vec!["10.9.9.9:53".parse().unwrap()],
        };
        let rec = |net: &str, id: &str, names: &[&str], ip: &str| RecordEntry {
            network: net.into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            ips: vec![ip.parse().unwrap()],
        };
        Table::build(
            vec![
                net("a", "10.1.0.0/24", "10.1.0.1"),
                net("b", "10.2.0.0/24", "10.2.0.1"),
            ],
            vec![
                rec("a", "c1", &["web", "www"], "10.1.0.2"),
                rec("a", "c2", &["web2", "www"], "10.1.0.3"),
                rec("b", "c3", &["other"], "10.2.0.2"),
            ],
            &[],
        )
    }

    fn ask(t: &Table, rr: &AtomicUsize, name: &str, ty: RecordType, src: &str) -> Decision {
        let mut m = Message::new();
        m.set_id(7)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        decide(t, rr, &m, src.parse().unwrap(), "10.1.0.1".parse().unwrap())
    }

    fn reply(d: Decision) -> Message {
        match d {
            Decision::Reply(m) => m,
            Decision::Forward { network, .. } => panic!("forwarded for {network}"),
        }
    }

    #[test]
    fn scoped_names_rotation_and_negatives() {
        let (t, rr) = (table(), AtomicUsize::new(0));
        let m = reply(ask(&t, &rr, "WEB.dns.netloom.", RecordType::A, "10.1.0.9"));
        assert_eq!(m.answers().len(), 1);
        assert!(m.authoritative());
        let first = reply(ask(&t, &rr, "www.", RecordType::A, "10.1.0.9"));
        let second = reply(ask(&t, &rr, "www.", RecordType::A, "10.1.0.9"));
        assert_eq!(first.answers().len(), 2);
        assert_ne!(first.answers()[0].data(), second.answers()[0].data());
        // Another network's name: NXDOMAIN with the SOA for negative caching.
        let m = reply(ask(&t, &rr, "other.", RecordType::A, "10.1.0.9"));
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(m.name_servers().len(), 1);
        // Known name, no such type: NODATA.
        let m = reply(ask(&t, &rr, "web.", RecordType::AAAA, "10.1.0.9"));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        // Outsiders are refused, even for names that would be forwarded.
        let m = reply(ask(&t, &rr, "example.org.", RecordType::A, "192.168.7.7"));
        assert_eq!(m.response_code(), ResponseCode::Refused);
    }

    #[test]
    fn ptr_and_forwarding() {
        let (t, rr) = (table(), AtomicUsize::new(0));
        let m = reply(ask(
            &t,
            &rr,
            "3.0.1.10.in-addr.arpa.",
            RecordType::PTR,
            "10.1.0.9",
        ));
        assert_eq!(m.answers()[0].data().to_string(), "web2.dns.netloom.");
        // An unknown address of the asker's own subnet is ours to deny; others go upstream.
        let m = reply(ask(
            &t,
            &rr,
            "77.0.1.10.in-addr.arpa.",
            RecordType::PTR,
            "10.1.0.9",
        ));
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(matches!(
            ask(
                &t,
                &rr,
                "8.8.8.8.in-addr.arpa.",
                RecordType::PTR,
                "10.1.0.9"
            ),
            Decision::Forward { .. }
        ));
        match ask(&t, &rr, "example.org.", RecordType::A, "10.2.0.5") {
            Decision::Forward { network, upstreams } => {
                assert_eq!(network, "b");
                assert_eq!(upstreams, vec!["10.9.9.9:53".parse().unwrap()]);
            }
            Decision::Reply(m) => panic!("answered {m:?}"),
        }
    }

    #[test]
    fn oversized_udp_answers_are_truncated() {
        let mut m = Message::new();
        m.add_query(Query::query(
            Name::from_ascii("big.").unwrap(),
            RecordType::A,
        ));
        for i in 0..100u8 {
            m.add_answer(Record::from_rdata(
                Name::from_ascii("big.").unwrap(),
                5,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        let (small, tc) = encode(&m, Some(CLASSIC_UDP)).unwrap();
        assert!(tc && small.len() <= CLASSIC_UDP);
        assert!(Message::from_vec(&small).unwrap().truncated());
        let (full, tc) = encode(&m, None).unwrap();
        assert!(!tc && Message::from_vec(&full).unwrap().answers().len() == 100);
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_ip("4.3.2.10.in-addr.arpa"),
            Some("10.2.3.4".parse().unwrap())
        );
        let v6: IpAddr = "fd4e:6c00::1".parse().unwrap();
        let IpAddr::V6(a) = v6 else { unreachable!() };
        let name: Vec<String> = a
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [format!("{:x}", b & 0xf), format!("{:x}", b >> 4)])
            .collect();
        assert_eq!(
            reverse_ip(&format!("{}.ip6.arpa", name.join("."))),
            Some(v6)
        );
        assert_eq!(reverse_ip("1.2.3.in-addr.arpa"), None);
    }
}
