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
use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::answer;
use crate::error::{Error, Result};

const TTL: u32 = 300;

fn reply(req: &Message, count: &AtomicU64) -> Message {
    let Some(q) = answer::single_query(req) else {
        return answer::reply_to(req, ResponseCode::FormErr);
    };
    let name = q.name().to_lowercase().to_ascii();
    if name != "count.test." {
        count.fetch_add(1, Ordering::SeqCst);
    }
    if !name.ends_with(".test.") {
        return answer::reply_to(req, ResponseCode::Refused);
    }
    let mut m = answer::reply_to(req, ResponseCode::NoError);
    m.set_authoritative(true);
    let a = |ip: Ipv4Addr| Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip)));
    match (name.as_str(), q.query_type()) {
        ("count.test.", RecordType::TXT) => {
            let n = count.load(Ordering::SeqCst).to_string();
            m.add_answer(Record::from_rdata(
                q.name().clone(),
                0,
                RData::TXT(TXT::new(vec![n])),
            ));
        }
        ("big.test.", RecordType::A) => {
            for i in 1..=100u8 {
                m.add_answer(a(Ipv4Addr::new(198, 18, 60, i)));
            }
        }
        (n, RecordType::A) if n == "ok.test." || n.ends_with(".ok.test.") => {
            m.add_answer(a(Ipv4Addr::new(198, 18, 50, 1)));
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
            m.set_response_code(ResponseCode::NXDomain);
            add_soa(&mut m);
        }
    }
    m
}

fn add_soa(m: &mut Message) {
    let zone = Name::from_ascii("test.").unwrap_or_default();
    let ns = Name::from_ascii("ns.test.").unwrap_or_default();
    let rname = Name::from_ascii("hostmaster.test.").unwrap_or_default();
    let soa = SOA::new(ns, rname, 1, 3600, 600, 86_400, TTL);
    m.add_name_server(Record::from_rdata(zone, TTL, RData::SOA(soa)));
}

/// Serves until killed.
pub fn run(listen: SocketAddr, mute: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the runtime", e))?;
    rt.block_on(async move {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| Error::io(format!("bind udp {listen}"), e))?;
        let tcp = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("bind tcp {listen}"), e))?;
        let count = Arc::new(AtomicU64::new(0));
        println!("ready");
        let c2 = count.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let count = c2.clone();
                tokio::spawn(async move {
                    while let Ok(len) = s.read_u16().await {
                        let mut buf = vec![0u8; len as usize];
                        if s.read_exact(&mut buf).await.is_err() || mute {
                            continue;
                        }
                        let Some(asked) = answer::parse(&buf, false) else {
                            return;
                        };
                        let Some((out, _)) = answer::encode(&reply(&asked.request, &count), None)
                        else {
                            return;
                        };
                        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&out);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, src)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            if mute {
                continue;
            }
            let Some(asked) = answer::parse(&buf[..n], true) else {
                continue;
            };
            if let Some((out, _)) = answer::encode(&reply(&asked.request, &count), asked.limit) {
                let _ = udp.send_to(&out, src).await;
            }
        }
    })
}
