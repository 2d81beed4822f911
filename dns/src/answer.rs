//! What to answer: container names from the table (scoped to the asker's network), REFUSED for
//! askers outside every network, everything else forwarded. Local answers are built here
//! without awaiting anything; [`Reply`] holds the sections, which the request handler hands to
//! hickory-server's encoder (the question is echoed from the request's own bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::message::emit_message_parts;
use hickory_proto::op::{Edns, Header, LowerQuery, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;

use crate::table::{NetTable, Table};

/// TTL of container answers: short, as containers come and go (aardvark uses 0, Docker 600).
pub const LOCAL_TTL: u32 = 5;
/// The largest UDP answer we send when the client advertises more (EDNS).
pub const MAX_UDP: usize = 1232;
/// Without EDNS, RFC 1035's limit.
pub const CLASSIC_UDP: usize = 512;
/// Header (12) plus an OPT record (11): what a reply adds besides question and records.
const FIXED: usize = 12 + 11;

/// The sections of a reply (the question comes from the request).
#[derive(Debug, Default)]
pub struct Reply {
    pub code: ResponseCode,
    pub authoritative: bool,
    pub authentic_data: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Reply {
    /// A reply with no records.
    pub fn code(code: ResponseCode) -> Reply {
        Reply {
            code,
            ..Reply::default()
        }
    }

    fn local() -> Reply {
        Reply {
            authoritative: true,
            ..Reply::default()
        }
    }

    /// The client's reply built from an upstream answer (its OPT stays behind: we add ours).
    pub fn from_upstream(mut up: Message) -> Reply {
        let mut additionals = up.take_additionals();
        additionals.retain(|r| r.record_type() != RecordType::OPT);
        Reply {
            code: up.response_code(),
            authoritative: false,
            authentic_data: up.authentic_data(),
            answers: up.take_answers(),
            authority: up.take_name_servers(),
            additionals,
        }
    }

    /// The reply header for `req`: id, opcode, RD and CD copied; RA set (we recurse for the
    /// asker through the upstreams).
    pub fn header(&self, req: &Header) -> Header {
        let mut h = Header::response_from_request(req);
        h.set_recursion_available(true)
            .set_authoritative(self.authoritative)
            .set_authentic_data(self.authentic_data)
            .set_response_code(self.code);
        h
    }

    fn records(&self) -> impl Iterator<Item = &Record> {
        self.answers
            .iter()
            .chain(&self.authority)
            .chain(&self.additionals)
    }
}

/// The local decision.
pub enum Decision {
    /// A finished reply.
    Reply(Reply),
    /// Forward the query for the network `network` to `upstreams`.
    Forward {
        network: String,
        upstreams: Vec<std::net::SocketAddr>,
    },
}

/// The largest UDP reply the client takes: its EDNS size within [512, 1232], else 512.
pub fn udp_limit(edns: Option<&Edns>) -> usize {
    match edns {
        Some(e) => (e.max_payload() as usize).clamp(CLASSIC_UDP, MAX_UDP),
        None => CLASSIC_UDP,
    }
}

/// The EDNS record of a reply to a client that sent one (RFC 6891: never to one that did not).
pub fn reply_edns(req: Option<&Edns>) -> Option<Edns> {
    req.map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(MAX_UDP as u16);
        e
    })
}

/// Whether `reply` to a question of `question_len` wire bytes fits in `limit` bytes. A cheap
/// upper bound settles it for container answers; only replies that may not fit (or whose
/// records have no cheap bound) are encoded to measure.
pub fn fits(header: &Header, queries: &[LowerQuery], reply: &Reply, limit: usize) -> bool {
    let question: usize = queries.iter().map(|q| q.name().len() + 1 + 4).sum();
    let bound = reply
        .records()
        .try_fold(FIXED + question, |acc, r| Some(acc + record_bound(r)?));
    if bound.is_some_and(|b| b <= limit) {
        return true;
    }
    let mut buf = Vec::with_capacity(limit);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_max_size(limit.min(u16::MAX as usize) as u16);
    let opt = Edns::new();
    emit_message_parts(
        header,
        &mut queries.iter().map(|q| q.original()),
        &mut reply.answers.iter(),
        &mut reply.authority.iter(),
        &mut reply.additionals.iter(),
        Some(&opt),
        &[],
        &mut enc,
    )
    .is_ok_and(|h| !h.truncated())
}

/// An upper bound of one record's wire size (no name compression assumed), for the types we
/// answer ourselves.
fn record_bound(r: &Record) -> Option<usize> {
    let name = |n: &Name| n.len() + 1;
    let rdata = match r.data() {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::PTR(p) => name(&p.0),
        RData::CNAME(c) => name(&c.0),
        RData::SOA(s) => name(s.mname()) + name(s.rname()) + 20,
        _ => return None,
    };
    Some(name(r.name()) + 10 + rdata)
}

/// Decides how to answer the `queries` of a request with `op` from `src` arriving on `local`.
pub fn decide(
    table: &Table,
    rr: &AtomicUsize,
    op: OpCode,
    queries: &[LowerQuery],
    src: IpAddr,
    local: IpAddr,
) -> Decision {
    if op != OpCode::Query {
        return Decision::Reply(Reply::code(ResponseCode::NotImp));
    }
    let Some(net) = table.net_for(src, local) else {
        return Decision::Reply(Reply::code(ResponseCode::Refused));
    };
    let [q] = queries else {
        return Decision::Reply(Reply::code(ResponseCode::FormErr));
    };
    if q.query_class() != DNSClass::IN {
        return forward(net);
    }
    // Answers carry the name as the client spelled it (0x20-randomizing resolvers check).
    let asked = q.original().name();
    let qname = q.name().to_ascii();
    let qname = qname.trim_end_matches('.');
    if q.query_type() == RecordType::PTR {
        if let Some(ip) = reverse_ip(qname) {
            if let Some(target) = net.ptr.get(&ip) {
                let mut m = Reply::local();
                if let Ok(t) = Name::from_ascii(target) {
                    m.answers.push(Record::from_rdata(
                        asked.clone(),
                        LOCAL_TTL,
                        RData::PTR(PTR(t)),
                    ));
                }
                return Decision::Reply(m);
            }
            // Addresses of this network are ours to know: no leak of the question upstream.
            if net.subnets.iter().any(|s| s.contains(ip)) {
                return Decision::Reply(negative(net, ResponseCode::NXDomain));
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
            let want = |ip: &&IpAddr| match q.query_type() {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                RecordType::ANY => true,
                _ => false,
            };
            let count = addrs.iter().filter(want).count();
            if count == 0 {
                // NODATA: the name exists, not with this type.
                return Decision::Reply(negative(net, ResponseCode::NoError));
            }
            let mut m = Reply::local();
            m.answers.reserve(count);
            // Round robin: every answer starts one further along.
            let start = rr.fetch_add(1, Ordering::Relaxed) % count;
            let matching = addrs.iter().filter(want);
            for ip in matching.clone().skip(start).chain(matching.take(start)) {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                m.answers
                    .push(Record::from_rdata(asked.clone(), LOCAL_TTL, rdata));
            }
            Decision::Reply(m)
        }
        // Single labels are container names or nothing: never sent upstream (no leak of
        // other networks' names, no search-list walks hitting the host's resolver).
        None if in_domain || !qname.contains('.') => {
            Decision::Reply(negative(net, ResponseCode::NXDomain))
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

/// NXDOMAIN or NODATA with the domain's SOA, so stub caches know how long to remember it.
fn negative(net: &NetTable, code: ResponseCode) -> Reply {
    let mut m = Reply::local();
    m.code = code;
    if let Ok(zone) = Name::from_ascii(format!("{}.", net.domain)) {
        let mname =
            Name::from_ascii(format!("ns.{}.", net.domain)).unwrap_or_else(|_| zone.clone());
        let rname = Name::from_ascii(format!("hostmaster.{}.", net.domain))
            .unwrap_or_else(|_| zone.clone());
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, LOCAL_TTL);
        m.authority
            .push(Record::from_rdata(zone, LOCAL_TTL, RData::SOA(soa)));
    }
    m
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{NetworkEntry, RecordEntry};
    use hickory_proto::op::Query;

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

    fn lq(name: &str, ty: RecordType) -> LowerQuery {
        LowerQuery::query(Query::query(Name::from_ascii(name).unwrap(), ty))
    }

    fn ask(t: &Table, rr: &AtomicUsize, name: &str, ty: RecordType, src: &str) -> Decision {
        decide(
            t,
            rr,
            OpCode::Query,
            &[lq(name, ty)],
            src.parse().unwrap(),
            "10.1.0.1".parse().unwrap(),
        )
    }

    fn reply(d: Decision) -> Reply {
        match d {
            Decision::Reply(m) => m,
            Decision::Forward { network, .. } => panic!("forwarded for {network}"),
        }
    }

    #[test]
    fn scoped_names_rotation_and_negatives() {
        let (t, rr) = (table(), AtomicUsize::new(0));
        let m = reply(ask(&t, &rr, "WEB.dns.netloom.", RecordType::A, "10.1.0.9"));
        assert_eq!(m.answers.len(), 1);
        assert!(m.authoritative);
        // The client's spelling is kept in the answer.
        assert_eq!(m.answers[0].name().to_ascii(), "WEB.dns.netloom.");
        let first = reply(ask(&t, &rr, "www.", RecordType::A, "10.1.0.9"));
        let second = reply(ask(&t, &rr, "www.", RecordType::A, "10.1.0.9"));
        assert_eq!(first.answers.len(), 2);
        assert_ne!(first.answers[0].data(), second.answers[0].data());
        // Another network's name: NXDOMAIN with the SOA for negative caching.
        let m = reply(ask(&t, &rr, "other.", RecordType::A, "10.1.0.9"));
        assert_eq!(m.code, ResponseCode::NXDomain);
        assert_eq!(m.authority.len(), 1);
        // Known name, no such type: NODATA.
        let m = reply(ask(&t, &rr, "web.", RecordType::AAAA, "10.1.0.9"));
        assert_eq!(m.code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // Outsiders are refused, even for names that would be forwarded.
        let m = reply(ask(&t, &rr, "example.org.", RecordType::A, "192.168.7.7"));
        assert_eq!(m.code, ResponseCode::Refused);
        // Not a query, or not one question.
        let m = reply(decide(
            &t,
            &rr,
            OpCode::Update,
            &[lq("web.", RecordType::A)],
            "10.1.0.9".parse().unwrap(),
            "10.1.0.1".parse().unwrap(),
        ));
        assert_eq!(m.code, ResponseCode::NotImp);
        let two = [lq("web.", RecordType::A), lq("www.", RecordType::A)];
        let m = reply(decide(
            &t,
            &rr,
            OpCode::Query,
            &two,
            "10.1.0.9".parse().unwrap(),
            "10.1.0.1".parse().unwrap(),
        ));
        assert_eq!(m.code, ResponseCode::FormErr);
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
        assert_eq!(m.answers[0].data().to_string(), "web2.dns.netloom.");
        // An unknown address of the asker's own subnet is ours to deny; others go upstream.
        let m = reply(ask(
            &t,
            &rr,
            "77.0.1.10.in-addr.arpa.",
            RecordType::PTR,
            "10.1.0.9",
        ));
        assert_eq!(m.code, ResponseCode::NXDomain);
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
    fn size_limits() {
        let q = [lq("big.", RecordType::A)];
        let header = Header::new();
        let mut m = Reply::local();
        for i in 0..20u8 {
            m.answers.push(Record::from_rdata(
                Name::from_ascii("big.").unwrap(),
                5,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        assert!(fits(&header, &q, &m, CLASSIC_UDP), "the cheap bound");
        for i in 20..100u8 {
            m.answers.push(Record::from_rdata(
                Name::from_ascii("big.").unwrap(),
                5,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        // 100 * 16 bytes: over 512 and over 1232, within what TCP takes.
        assert!(!fits(&header, &q, &m, CLASSIC_UDP));
        assert!(!fits(&header, &q, &m, MAX_UDP));
        assert!(fits(&header, &q, &m, u16::MAX as usize));
        // Records without a cheap bound are measured exactly.
        let mut txt = Reply::local();
        txt.answers.push(Record::from_rdata(
            Name::from_ascii("big.").unwrap(),
            5,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["x".repeat(200)])),
        ));
        assert!(fits(&header, &q, &txt, CLASSIC_UDP));
        txt.answers[0] = Record::from_rdata(
            Name::from_ascii("big.").unwrap(),
            5,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["x".repeat(200); 3])),
        );
        assert!(!fits(&header, &q, &txt, CLASSIC_UDP));
        assert_eq!(udp_limit(None), CLASSIC_UDP);
        let mut e = Edns::new();
        e.set_max_payload(4096);
        assert_eq!(udp_limit(Some(&e)), MAX_UDP);
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
