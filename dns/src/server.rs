//! netloom-dnsd: one server per state directory, for every DNS-enabled network in it.
//!
//! Life cycle: started by the first `netloom-dns` ADD (or by hand / a service manager), it
//! loads the registry, binds each network's gateway addresses, prints `ready` on stdout and
//! serves. `reload` on the control socket re-reads the registry: new addresses are bound
//! before the new table is swapped in, so no query is ever dropped, and addresses no network
//! needs are closed afterwards. With no network left it waits a grace period, then — holding
//! the start lock so no plugin can start a second server meanwhile — checks the registry once
//! more and exits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::{Error, Result};
use crate::forward::Forwarder;
use crate::launcher::{ALIVE_LOCK, START_LOCK};
use crate::listen::{Listener, Serving};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::table::Table;
use crate::upstreams;

/// Server settings (flags of `netloom-dnsd`).
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    /// 53, except for benchmarks and experiments beside another server.
    pub port: u16,
    /// How long the server lingers with no network before exiting.
    pub grace: Duration,
    /// The whole budget for one forwarded query (all upstreams raced within it).
    pub forward_timeout: Duration,
    /// Threads that serve queries (each with its own runtime and UDP socket per address).
    pub threads: usize,
}

/// What the query paths share.
pub struct Shared {
    pub table: ArcSwap<Table>,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    /// Where the next round-robin answer starts.
    pub rr: AtomicUsize,
}

impl Shared {
    fn new(forward_timeout: Duration) -> Self {
        let metrics = Arc::new(Metrics::default());
        Shared {
            table: ArcSwap::from_pointee(Table::default()),
            forwarder: Forwarder::new(forward_timeout, metrics.clone()),
            metrics,
            rr: AtomicUsize::new(0),
        }
    }
}

struct Server {
    reg: Registry,
    opts: Options,
    shared: Arc<Shared>,
    listeners: Mutex<HashMap<IpAddr, Listener>>,
    serving: Serving,
    reloading: tokio::sync::Mutex<()>,
    /// When the table became empty (exit after the grace period).
    idle_since: Mutex<Option<Instant>>,
    /// Wakes the main loop when `idle_since` changes (reloads run in control tasks).
    idle_changed: tokio::sync::Notify,
    exiting: AtomicBool,
}

impl Server {
    /// Re-reads the registry; errors name the addresses that could not be bound.
    async fn reload(&self) -> std::result::Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        Metrics::inc(&self.shared.metrics.reloads);
        let (nets, recs) = self.reg.snapshot().map_err(|e| e.to_string())?;
        let table = Table::build(nets, recs, &upstreams::host_upstreams());
        let want = table.listen_addrs();
        let empty = table.nets.is_empty();
        let mut errors = Vec::new();
        {
            let mut listeners = self
                .listeners
                .lock()
                .map_err(|_| "listener table poisoned")?;
            for ip in &want {
                if listeners.contains_key(ip) {
                    continue;
                }
                match Listener::bind(*ip, self.opts.port, self.shared.clone(), &self.serving) {
                    Ok(l) => {
                        tracing::info!(address = %ip, port = self.opts.port, "listening");
                        listeners.insert(*ip, l);
                    }
                    Err(e) => {
                        Metrics::inc(&self.shared.metrics.bind_errors);
                        tracing::error!(address = %ip, port = self.opts.port, error = %e, "cannot listen");
                        errors.push(format!(
                            "cannot listen on {}: {e}",
                            std::net::SocketAddr::new(*ip, self.opts.port)
                        ));
                    }
                }
            }
            // Swap only after the new sockets exist, close old ones only after the swap.
            self.shared.table.store(Arc::new(table));
            listeners.retain(|ip, _| {
                let keep = want.contains(ip);
                if !keep {
                    tracing::info!(address = %ip, "no network needs this address any more");
                }
                keep
            });
        }
        if let Ok(mut idle) = self.idle_since.lock() {
            *idle = match (empty, *idle) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(Instant::now()),
                (false, _) => None,
            };
        }
        self.idle_changed.notify_one();
        // A reload frees the old table and the registry snapshot: hand the freed pages back,
        // or a burst of ADDs (one reload each) leaves the heap at its high-water mark.
        // SAFETY: malloc_trim only releases free memory; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Called when the grace period ran out: exits (returns the held start lock) unless a
    /// network was registered meanwhile.
    async fn try_exit(&self) -> Option<Box<dyn engine_core::store::LockGuard>> {
        let store = self.reg.store().clone();
        let lock =
            tokio::task::spawn_blocking(move || store.lock(START_LOCK, Duration::from_secs(20)))
                .await
                .ok()?
                .ok()?;
        self.exiting.store(true, Ordering::SeqCst);
        match self.reg.snapshot() {
            Ok((nets, _)) if nets.is_empty() => Some(lock),
            _ => {
                self.exiting.store(false, Ordering::SeqCst);
                drop(lock);
                let _ = self.reload().await;
                None
            }
        }
    }

    async fn control(self: Arc<Self>, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return;
        }
        let cmd = line.trim();
        let reply = if cmd.starts_with("GET ") {
            // Drain the request headers so closing does not reset the client.
            let mut h = String::new();
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), rd.read_line(&mut h)).await
            {
                if n == 0 || h.trim().is_empty() {
                    break;
                }
                h.clear();
            }
            if cmd.starts_with("GET /metrics") {
                let body = self.shared.metrics.render();
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            }
        } else {
            match cmd {
                "reload" if self.exiting.load(Ordering::SeqCst) => "exiting\n".to_string(),
                "reload" => match self.reload().await {
                    Ok(()) => "ok\n".to_string(),
                    Err(e) => format!("error: {e}\n"),
                },
                "ping" => format!("ok {}\n", std::process::id()),
                "metrics" => self.shared.metrics.render(),
                other => format!("error: unknown command {other:?} (reload, ping, metrics)\n"),
            }
        };
        let _ = wr.write_all(reply.as_bytes()).await;
        let _ = wr.shutdown().await;
    }
}

/// Runs the server until it is idle past the grace period or gets SIGTERM/SIGINT. This thread
/// runs the control socket and reloads; queries are served on [`Serving`] threads.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the runtime", e))?;
    rt.block_on(serve(opts))
}

async fn serve(opts: Options) -> Result<()> {
    let reg = Registry::open(&opts.state_dir)?;
    // A server that is just exiting still holds this for a moment: wait a little for it.
    let store = reg.store().clone();
    let alive = tokio::task::spawn_blocking(move || store.lock(ALIVE_LOCK, Duration::from_secs(5)))
        .await
        .map_err(|e| Error::Server(e.to_string()))?
        .map_err(|_| {
            Error::Server(format!(
                "another netloom-dnsd already serves {}",
                opts.state_dir.display()
            ))
        })?;
    let dir = reg.runtime_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let sock = reg.control_socket();
    // We hold the alive lock: any socket file is a dead server's.
    let _ = std::fs::remove_file(&sock);
    let ctl =
        UnixListener::bind(&sock).map_err(|e| Error::io(format!("bind {}", sock.display()), e))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod {}", sock.display()), e))?;
    let serving =
        Serving::start(opts.threads).map_err(|e| Error::io("start the serving threads", e))?;
    let server = Arc::new(Server {
        reg: reg.clone(),
        serving,
        shared: Arc::new(Shared::new(opts.forward_timeout)),
        opts: opts.clone(),
        listeners: Mutex::new(HashMap::new()),
        reloading: tokio::sync::Mutex::new(()),
        idle_since: Mutex::new(None),
        idle_changed: tokio::sync::Notify::new(),
        exiting: AtomicBool::new(false),
    });
    if let Err(e) = server.reload().await {
        // Serve the addresses that did bind; the plugin's next reload reports the rest.
        tracing::error!(error = %e, "initial load");
    }
    let _ = std::fs::write(reg.pid_file(), format!("{}\n", std::process::id()));
    announce_ready();
    tracing::info!(state_dir = %opts.state_dir.display(), pid = std::process::id(), "serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::io("SIGINT handler", e))?;
    let exit_lock = loop {
        let idle = server.idle_since.lock().ok().and_then(|g| *g);
        let wake = match idle {
            Some(t) => tokio::time::Instant::from_std(t + opts.grace),
            None => tokio::time::Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            conn = ctl.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::spawn(server.clone().control(stream));
                }
            }
            _ = server.idle_changed.notified() => {}
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = tokio::time::sleep_until(wake), if idle.is_some() => {
                if let Some(lock) = server.try_exit().await {
                    tracing::info!("no network needs DNS any more: exiting");
                    break Some(lock);
                }
            }
        }
    };
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(reg.pid_file());
    // Alive first: a plugin waiting for the start lock must find this server gone.
    drop(alive);
    drop(exit_lock);
    Ok(())
}

/// Tells the starter we serve: `ready` on stdout, then stdout goes to /dev/null so the
/// starter's pipe closes.
fn announce_ready() {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = out.write_all(b"ready\n");
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 replaces stdout with /dev/null; both fds are valid.
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        }
    }
}
