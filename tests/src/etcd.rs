//! A private etcd for the multi-host tests: Debian's `etcd` (package etcd-server) with its own
//! data directory under the run prefix, on free ports, in the test's own namespace or on
//! 127.0.0.1. Stoppable and restartable on the same data (outage tests); dropping it kills it
//! and removes its directory.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine_core::netns::Netns;

use crate::names;

/// One single-member etcd cluster.
pub struct Etcd {
    name: String,
    dir: PathBuf,
    log: PathBuf,
    netns: Option<PathBuf>,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits until it is healthy. Without `netns` it listens on 127.0.0.1 of
    /// the test process's namespace; with one, inside that namespace on its first global
    /// address (IPv4 preferred, 127.0.0.1 when it has none).
    pub fn start(netns: Option<&Path>) -> Result<Etcd, String> {
        let ip = match netns {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(p) => first_global_addr(p)?.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        Self::start_at(netns, ip)
    }

    /// Starts etcd listening on `ip` (which must exist in `netns`, or in the test's namespace).
    pub fn start_at(netns: Option<&Path>, ip: IpAddr) -> Result<Etcd, String> {
        static REAPED: std::sync::Once = std::sync::Once::new();
        REAPED.call_once(reap_stale);
        let name = names::unique("etcd");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut etcd = Etcd {
            log: dir.join("etcd.log"),
            name,
            dir,
            netns: netns.map(Path::to_path_buf),
            ip,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        // Ports are picked free just before the start; another process may grab one in
        // between, so a failed start is retried on new ports.
        let mut last = String::new();
        for _ in 0..3 {
            etcd.client_port = etcd.free_port(ip)?;
            etcd.peer_port = etcd.free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
            match etcd.start_again() {
                Ok(()) => return Ok(etcd),
                Err(e) => {
                    last = e;
                    // A half-made member directory would make the next start rejoin it.
                    let _ = std::fs::remove_dir_all(etcd.dir.join("data"));
                }
            }
        }
        Err(last)
    }

    /// The spelling netloom takes: "etcd://IP:PORT".
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// "IP:PORT" ("[v6]:PORT").
    pub fn endpoint(&self) -> String {
        SocketAddr::new(self.ip, self.client_port).to_string()
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Starts the process (again) on the same data and ports; waits until healthy.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.running() {
            return Err("etcd is already running".into());
        }
        self.child = None;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let client = format!("http://{}", self.endpoint());
        let mut listen = client.clone();
        if !self.ip.is_loopback() {
            // Also on loopback, so a process of the same namespace can use 127.0.0.1.
            listen.push_str(&format!(",http://127.0.0.1:{}", self.client_port));
        }
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&listen)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .arg("--initial-cluster-state")
            .arg("new")
            // A single member elects itself; short timers make that (and restarts) quick.
            .args(["--heartbeat-interval", "50", "--election-timeout", "300"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Settings from the environment would override ours.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        if let Some(p) = &self.netns {
            Netns::open(p)
                .and_then(|ns| ns.command(&mut cmd))
                .map_err(|e| e.to_string())?;
        }
        let child = cmd.spawn().map_err(|e| format!("start etcd: {e}"))?;
        // For reap_stale, should this test process die without dropping us.
        let _ = std::fs::write(self.dir.join(PID_FILE), child.id().to_string());
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    /// SIGTERM and wait (SIGKILL after 10 s): etcd is down until [`Etcd::start_again`].
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        signal(&c, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err("etcd ignored SIGTERM for 10 s".into());
                }
            }
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The end of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::new(self.ip, self.client_port);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "etcd exited ({st}) while starting:\n{}",
                        self.log_tail()
                    ));
                }
            }
            let health = self.in_ns(move || health(addr))?;
            if health {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(format!(
                    "etcd not healthy after {timeout:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn free_port(&self, ip: IpAddr) -> Result<u16, String> {
        // A fresh IPv6 address is unusable while duplicate address detection runs (about a
        // second; `nodad` skips it): wait for it rather than fail.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.in_ns(move || {
                TcpListener::bind(SocketAddr::new(ip, 0))
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
            })?;
            match r {
                Ok(port) => return Ok(port),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrNotAvailable
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(format!("find a free port on {ip}: {e}")),
            }
        }
    }

    /// Runs `f` in etcd's namespace (on a scratch thread) or here.
    fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        match &self.netns {
            None => Ok(f()),
            Some(p) => Netns::open(p)
                .and_then(|ns| ns.run(f))
                .map_err(|e| e.to_string()),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PID_FILE: &str = "etcd.pid";

/// Kills the etcd members of earlier test processes that died without cleaning up (killed by a
/// CI timeout, say) and removes their directories: `nlt<pid>-etcd-<n>` whose test process is
/// gone. A pid is only killed if its command line still names that directory.
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("nlt")
            .and_then(|r| r.split_once("-etcd-"))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = e.path();
        if let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn signal(c: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
}

/// GET /health → {"health":"true"} once the member has a leader.
fn health(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") && out.contains("\"health\":\"true\"")
}

/// The first global address in the namespace at `path` (IPv4 first), read with `ip`.
fn first_global_addr(path: &Path) -> Result<Option<IpAddr>, String> {
    let out = crate::fakehost::run_in_path(path, &["ip", "-o", "addr", "show", "scope", "global"])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addrs: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet" || *t == "inet6")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect();
    Ok(addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied())
}
