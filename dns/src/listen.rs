//! The sockets: UDP and TCP port 53 on one address (never the wildcard, so a host DNS server on
//! other addresses keeps its port), with IP_FREEBIND so a gateway address still in IPv6 DAD —
//! or not yet configured — does not fail the bind. Dropping a [`Listener`] closes its sockets.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::server::{Shared, Step};

/// An idle TCP client is dropped after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Receive loops per UDP socket: one per core of this machine size keeps both busy.
const UDP_LOOPS: usize = 2;

pub struct Listener {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    } else {
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

impl Listener {
    /// Binds `ip`:`port` for UDP and TCP and starts serving; must run inside the runtime.
    pub fn bind(ip: IpAddr, port: u16, shared: Arc<Shared>) -> io::Result<Listener> {
        let addr = SocketAddr::new(ip, port);
        let udp = socket(addr, Type::DGRAM, Protocol::UDP)?;
        // Bursts (benchmarks, many containers starting) should queue, not drop.
        let _ = udp.set_recv_buffer_size(4 << 20);
        udp.bind(&addr.into())?;
        let udp = Arc::new(UdpSocket::from_std(udp.into())?);
        let tcp = socket(addr, Type::STREAM, Protocol::TCP)?;
        tcp.set_reuse_address(true)?;
        tcp.bind(&addr.into())?;
        tcp.listen(1024)?;
        let tcp = TcpListener::from_std(tcp.into())?;
        let mut tasks = Vec::new();
        for _ in 0..UDP_LOOPS {
            tasks.push(tokio::spawn(serve_udp(udp.clone(), shared.clone(), ip)));
        }
        tasks.push(tokio::spawn(serve_tcp(tcp, shared, ip)));
        Ok(Listener { tasks })
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>, local: IpAddr) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier replies surface here; the socket is still fine.
                tracing::debug!(error = %e, "udp receive");
                continue;
            }
        };
        let start = Instant::now();
        Metrics::inc(&shared.metrics.queries_udp);
        match shared.step(&buf[..n], src.ip(), local, true) {
            Step::Done(Some(bytes)) => {
                let _ = sock.send_to(&bytes, src).await;
                shared.metrics.observe(start.elapsed());
            }
            Step::Done(None) => {}
            Step::Forward(p) => {
                let sock = sock.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Some(bytes) = shared.forward(p).await {
                        let _ = sock.send_to(&bytes, src).await;
                    }
                    shared.metrics.observe(start.elapsed());
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, local: IpAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, src)) => {
                tokio::spawn(serve_conn(stream, src, shared.clone(), local));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One TCP client: length-prefixed queries, answered in order, until it goes quiet.
async fn serve_conn(mut s: TcpStream, src: SocketAddr, shared: Arc<Shared>, local: IpAddr) {
    let _ = s.set_nodelay(true);
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return;
        };
        let mut buf = vec![0u8; len as usize];
        if tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf))
            .await
            .is_err()
        {
            return;
        }
        let start = Instant::now();
        Metrics::inc(&shared.metrics.queries_tcp);
        let reply = match shared.step(&buf, src.ip(), local, false) {
            Step::Done(r) => r,
            Step::Forward(p) => shared.forward(p).await,
        };
        let Some(reply) = reply else { return };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        if s.write_all(&out).await.is_err() {
            return;
        }
        shared.metrics.observe(start.elapsed());
    }
}
