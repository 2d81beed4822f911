//! The sockets: UDP and TCP port 53 on one address (never the wildcard, so a host DNS server on
//! other addresses keeps its port), with IP_FREEBIND so a gateway address still in IPv6 DAD —
//! or not yet configured — does not fail the bind. Dropping a [`Listener`] closes its sockets.
//!
//! UDP is served by plain threads doing blocking receive/answer/send: local names are answered
//! without touching the async runtime (no readiness polling, no task wake-ups), which is where
//! most of the queries per second come from. Forwarded queries are handed to the runtime.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::server::{Shared, Step};

/// An idle TCP client is dropped after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Receive threads per UDP socket: one per core of this machine size keeps both busy.
const UDP_THREADS: usize = 2;
/// UDP threads re-check whether their listener is gone at least this often.
const UDP_WAKE: Duration = Duration::from_millis(500);

pub struct Listener {
    tasks: Vec<JoinHandle<()>>,
    udp: Arc<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the threads blocked in recvfrom (Linux wakes readers of a shut-down UDP
        // socket even though it reports ENOTCONN); they drop their handles and the socket
        // closes. UDP_WAKE is the fallback.
        let _ = socket2::SockRef::from(&*self.udp).shutdown(std::net::Shutdown::Read);
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
        let udp: Arc<std::net::UdpSocket> = Arc::new(udp.into());
        udp.set_nonblocking(false)?;
        udp.set_read_timeout(Some(UDP_WAKE))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tcp = socket(addr, Type::STREAM, Protocol::TCP)?;
        tcp.set_reuse_address(true)?;
        tcp.bind(&addr.into())?;
        tcp.listen(1024)?;
        let tcp = TcpListener::from_std(tcp.into())?;
        let rt = tokio::runtime::Handle::current();
        for i in 0..UDP_THREADS {
            let (udp, shared, stop, rt) = (udp.clone(), shared.clone(), stop.clone(), rt.clone());
            std::thread::Builder::new()
                .name(format!("udp-{ip}-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || serve_udp(udp, shared, ip, rt, stop))?;
        }
        let tasks = vec![tokio::spawn(serve_tcp(tcp, shared, ip))];
        Ok(Listener { tasks, udp, stop })
    }
}

fn serve_udp(
    sock: Arc<std::net::UdpSocket>,
    shared: Arc<Shared>,
    local: IpAddr,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let got = sock.recv_from(&mut buf);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (n, src) = match got {
            Ok(x) => x,
            // Timeouts (the stop check) and ICMP errors from earlier replies.
            Err(_) => continue,
        };
        let start = Instant::now();
        Metrics::inc(&shared.metrics.queries_udp);
        match shared.step(&buf[..n], src.ip(), local, true) {
            Step::Done(Some(bytes)) => {
                let _ = sock.send_to(&bytes, src);
                shared.metrics.observe(start.elapsed());
            }
            Step::Done(None) => {}
            Step::Forward(p) => {
                let sock = sock.clone();
                let shared = shared.clone();
                rt.spawn(async move {
                    if let Some(bytes) = shared.forward(p).await {
                        // A datagram send does not block unless the send buffer is full.
                        let _ = sock.send_to(&bytes, src);
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
