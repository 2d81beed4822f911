//! A tiny authoritative server for the `test.` zone, for tests and benchmarks only
//! (`netloom-dnsd test-upstream --listen ADDR:PORT`): tests must never reach a real resolver,
//! so this stands in for the host's upstream on a test address.
//!
//! Zone: `ok.test.` and `*.ok.test.` A 198.18.50.1 (TTL 300); `big.test.` 100 A records
//! (too big for UDP: clients must use TCP); `count.test.` TXT = queries received so far (not
//! counting itself); any other `*.test.` name NXDOMAIN with an SOA (negative TTL 300);
//! anything else REFUSED. `--mute` receives and never answers: a dead upstream.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, LowerQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

use crate::answer::{self, Reply};
use crate::error::{Error, Result};

const TTL: u32 = 300;

fn reply(queries: &[LowerQuery], count: &AtomicU64) -> Reply {
    let [q] = queries else {
        return Reply::code(ResponseCode::FormErr);
    };
    let name = q.name().to_ascii();
    if name != "count.test." {
        count.fetch_add(1, Ordering::SeqCst);
    }
    if !name.ends_with(".test.") {
        return Reply::code(ResponseCode::Refused);
    }
    let mut m = Reply::code(ResponseCode::NoError);
    m.authoritative = true;
    let owner = q.original().name();
    let a = |ip: Ipv4Addr| Record::from_rdata(owner.clone(), TTL, RData::A(A(ip)));
    match (name.as_str(), q.query_type()) {
        ("count.test.", RecordType::TXT) => {
            let n = count.load(Ordering::SeqCst).to_string();
            m.answers.push(Record::from_rdata(
                owner.clone(),
                0,
                RData::TXT(TXT::new(vec![n])),
            ));
        }
        ("big.test.", RecordType::A) => {
            for i in 1..=100u8 {
                m.answers.push(a(Ipv4Addr::new(198, 18, 60, i)));
            }
        }
        (n, RecordType::A) if n == "ok.test." || n.ends_with(".ok.test.") => {
            m.answers.push(a(Ipv4Addr::new(198, 18, 50, 1)));
        }
        (n, _)
            if n == "ok.test."
                || n.ends_with(".ok.test.")
                || n == "big.test."
                || n == "count.test." =>
        {
            add_soa(&mut m);
        }
        _ => {
            m.code = ResponseCode::NXDomain;
            add_soa(&mut m);
        }
    }
    m
}

fn add_soa(m: &mut Reply) {
    let zone = Name::from_ascii("test.").unwrap_or_default();
    let ns = Name::from_ascii("ns.test.").unwrap_or_default();
    let rname = Name::from_ascii("hostmaster.test.").unwrap_or_default();
    let soa = SOA::new(ns, rname, 1, 3600, 600, 86_400, TTL);
    m.authority
        .push(Record::from_rdata(zone, TTL, RData::SOA(soa)));
}

/// The zone as a hickory-server request handler. Over UDP hickory-server's encoder stops at the
/// asker's EDNS size and sets TC, which is what sends `big.test.` over TCP.
struct TestZone {
    count: AtomicU64,
    mute: bool,
}

#[async_trait::async_trait]
impl RequestHandler for TestZone {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let m = reply(request.queries(), &self.count);
        let header = m.header(request.header());
        if self.mute {
            return Header::response_from_request(request.header()).into();
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if request.edns().is_some() {
            let mut e = Edns::new();
            e.set_max_payload(request.max_payload().min(answer::MAX_UDP as u16));
            builder.edns(e);
        }
        let message = builder.build(
            header,
            m.answers.iter(),
            m.authority.iter(),
            std::iter::empty(),
            m.additionals.iter(),
        );
        response
            .send_response(message)
            .await
            .unwrap_or(header.into())
    }
}

/// Serves until killed.
pub fn run(listen: SocketAddr, mute: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the runtime", e))?;
    rt.block_on(async move {
        let udp = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| Error::io(format!("bind udp {listen}"), e))?;
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("bind tcp {listen}"), e))?;
        let mut server = ServerFuture::new(TestZone {
            count: AtomicU64::new(0),
            mute,
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(30));
        println!("ready");
        server
            .block_until_done()
            .await
            .map_err(|e| Error::Server(e.to_string()))
    })
}
