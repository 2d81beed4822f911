//! The sockets: UDP and TCP port 53 on one address (never the wildcard, so a host DNS server on
//! other addresses keeps its port), with IP_FREEBIND so a gateway address still in IPv6 DAD —
//! or not yet configured — does not fail the bind. Dropping a [`Listener`] closes its sockets.
//!
//! Serving is hickory-server's [`ServerFuture`]: one per serving runtime and address, with the
//! [`Front`] request handler. Each serving runtime (one thread each, see [`Serving`]) gets its
//! own UDP socket — a SO_REUSEPORT group, so the kernel spreads askers over the threads and
//! no datagram wakes two of them — and its own handle on the one TCP listener.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::ServerFuture;
use socket2::{Domain, Protocol, Socket, Type};

use crate::handler::Front;
use crate::server::Shared;

/// An idle TCP client is dropped after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Each serving thread's stack: the request path is shallow.
const STACK: usize = 512 * 1024;

/// The runtimes that serve queries: one current-thread runtime per thread, so a query is
/// received, answered and sent on one thread with no cross-thread wake-ups.
pub struct Serving {
    handles: Vec<tokio::runtime::Handle>,
}

impl Serving {
    /// Starts `threads` serving threads (they live as long as the process).
    pub fn start(threads: usize) -> io::Result<Serving> {
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("dns-serve-{i}"))
                .stack_size(STACK)
                .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        }
        Ok(Serving { handles })
    }
}

/// One address's servers; dropping it stops them and closes the sockets.
pub struct Listener {
    servers: Vec<ServerFuture<Front>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Cancelling ends the receive and accept loops; dropping the ServerFuture right after
        // aborts its tasks (JoinSet), which closes the sockets.
        for s in &self.servers {
            s.shutdown_token().cancel();
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
    /// Binds `ip`:`port` for UDP and TCP and starts serving on every serving runtime.
    pub fn bind(
        ip: IpAddr,
        port: u16,
        shared: Arc<Shared>,
        serving: &Serving,
    ) -> io::Result<Listener> {
        let addr = SocketAddr::new(ip, port);
        // Everything is bound before anything serves: a failure leaves nothing behind.
        let tcp = socket(addr, Type::STREAM, Protocol::TCP)?;
        tcp.set_reuse_address(true)?;
        tcp.bind(&addr.into())?;
        tcp.listen(1024)?;
        let tcp: std::net::TcpListener = tcp.into();
        let group = serving.handles.len() > 1;
        let mut udps = Vec::new();
        for _ in &serving.handles {
            let udp = socket(addr, Type::DGRAM, Protocol::UDP)?;
            if group {
                udp.set_reuse_port(true)?;
            }
            // Bursts (benchmarks, many containers starting) should queue, not drop.
            let _ = udp.set_recv_buffer_size(4 << 20);
            udp.bind(&addr.into())?;
            udps.push(std::net::UdpSocket::from(udp));
        }
        let mut servers = Vec::new();
        for (handle, udp) in serving.handles.iter().zip(udps) {
            // Registers the sockets with this runtime's reactor and spawns the loops on it.
            let _in = handle.enter();
            let mut server = ServerFuture::new(Front::new(shared.clone(), ip));
            server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
            server.register_listener(
                tokio::net::TcpListener::from_std(tcp.try_clone()?)?,
                TCP_IDLE,
            );
            servers.push(server);
        }
        Ok(Listener { servers })
    }
}
