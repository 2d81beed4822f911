//! netloomd and a private dockerd for the Docker tests.
//!
//! - [`http`]: a tiny HTTP/1.1 client over a unix socket, to speak the plugin protocol to
//!   netloomd exactly as dockerd does (POST, JSON, no Content-Type).
//! - [`Netloomd`]: the daemon binary started inside a fake host with its own state, plugin and
//!   admin paths; killable with SIGKILL and restartable on the same state.
//! - [`Dockerd`]: a private dockerd (own --data-root, --exec-root, --pidfile, -H unix://…,
//!   --bridge=none, vfs storage, its own containerd namespaces) in the fake host, with a tiny
//!   busybox image imported offline.
//! - [`DockerEnv`]: fake host + netloomd + dockerd; dropping it removes containers and networks
//!   while both daemons still run, then stops them and removes everything.
//!
//! Legacy plugins are discovered by socket name in /run/docker/plugins whatever dockerd's own
//! directories are, so each environment uses a unique plugin prefix (`nlt<pid>-dk-<n>`): the
//! driver names never clash with another run or with an installed netloomd.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cni::our_bin;
use crate::{names, FakeHost};

/// Where dockerd finds legacy plugins (fixed in Docker).
pub const DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";

// ------------------------------------------------------------------ HTTP over unix sockets

/// One request; returns (status, body). `Connection: close`, so the body is read to EOF.
pub fn http(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s =
        UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    // What dockerd sends: an empty Host, its Accept, a length, no Content-Type.
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: \r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {}: {e}", sock.display()))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {}: {e}", sock.display()))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| {
        format!(
            "no HTTP answer from {} ({} bytes)",
            sock.display(),
            raw.len()
        )
    })?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("truncated chunk")?;
        let n = usize::from_str_radix(size.trim(), 16)
            .map_err(|e| format!("chunk size {size:?}: {e}"))?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("short chunk")?);
        s = rest.get(n + 2..).ok_or("short chunk")?;
    }
}

/// POSTs JSON, returns (status, decoded body).
pub fn post(sock: &Path, path: &str, body: &Value) -> Result<(u16, Value), String> {
    let (status, text) = http(sock, "POST", path, Some(&body.to_string()))?;
    let v = serde_json::from_str(&text)
        .map_err(|e| format!("{path}: answer is not JSON ({e}): {text}"))?;
    Ok((status, v))
}

/// POSTs and requires 200.
pub fn post_ok(sock: &Path, path: &str, body: &Value) -> Result<Value, String> {
    match post(sock, path, body)? {
        (200, v) => Ok(v),
        (s, v) => Err(format!("{path} {body} answered {s}: {v}")),
    }
}

/// An HTTP GET of `/` at `addr` ("127.0.0.1:18080") from inside the namespace at `netns`, by a
/// plain TCP client (Debian's static busybox wget crashes); returns the body.
pub fn http_get_in(netns: &Path, addr: &str) -> Result<String, String> {
    let ns = engine_core::netns::Netns::open(netns).map_err(|e| e.to_string())?;
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    ns.run(move || -> Result<String, String> {
        let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2))
            .map_err(|e| format!("connect {sa}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {sa}\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {sa}: {e}"))?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(out))
    })
    .map_err(|e| e.to_string())?
}

fn wait_until<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn kill(child: &mut Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, sig);
}

/// Waits for a child for at most `timeout`; None if it is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------ netloomd

/// A netloomd process inside a fake host.
pub struct Netloomd {
    pub prefix: String,
    pub plugin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub admin: PathBuf,
    pub log: PathBuf,
    netns: PathBuf,
    child: Option<Child>,
}

impl Netloomd {
    /// Starts netloomd in `host` with state under `dir` and sockets in `plugin_dir`; waits until
    /// it has reconciled and answers. `fault` arms a NETLOOMD_FAULT crash point.
    pub fn start(
        host: &FakeHost,
        dir: &Path,
        plugin_dir: &Path,
        fault: Option<&str>,
    ) -> Result<Netloomd, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut d = Netloomd {
            prefix: names::unique("dk"),
            plugin_dir: plugin_dir.to_path_buf(),
            state_dir: dir.join("state"),
            admin: dir.join("admin.sock"),
            log: dir.join("netloomd.log"),
            netns: host.netns().path().to_path_buf(),
            child: None,
        };
        d.spawn(fault)?;
        Ok(d)
    }

    /// Starts the process (again) on the same state and sockets.
    pub fn spawn(&mut self, fault: Option<&str>) -> Result<(), String> {
        if self.child.is_some() {
            return Err("netloomd is already running".into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let ns = engine_core::netns::Netns::open(&self.netns).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(our_bin("netloomd")?);
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--plugin-dir")
            .arg(&self.plugin_dir)
            .arg("--admin-socket")
            .arg(&self.admin)
            .arg("--plugin-prefix")
            .arg(&self.prefix)
            .args(["--log-level", "debug", "--firewall", "auto"])
            .env_remove("NETLOOMD_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(f) = fault {
            cmd.env("NETLOOMD_FAULT", f);
        }
        ns.command(&mut cmd).map_err(|e| e.to_string())?;
        let child = cmd.spawn().map_err(|e| format!("start netloomd: {e}"))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20))
    }

    /// Waits until /health says ok.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let admin = self.admin.clone();
        let mut exited = None;
        let ready = wait_until(timeout, || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    exited = Some(st);
                    return true;
                }
            }
            matches!(http(&admin, "GET", "/health", None), Ok((200, b)) if b.contains("\"status\":\"ok\""))
        });
        if let Some(st) = exited {
            self.child = None;
            return Err(format!(
                "netloomd exited ({st}) while starting:\n{}",
                self.log_tail()
            ));
        }
        if !ready {
            return Err(format!(
                "netloomd not ready after {timeout:?}:\n{}",
                self.log_tail()
            ));
        }
        Ok(())
    }

    /// The fake host it runs in.
    pub fn netns_path(&self) -> &Path {
        &self.netns
    }

    pub fn driver(&self) -> String {
        self.driver_of("bridge")
    }

    /// The Docker driver name netloomd registered for one of its drivers ("macvlan", …).
    pub fn driver_of(&self, kind: &str) -> String {
        format!("{}-{kind}", self.prefix)
    }

    pub fn ipam_driver(&self) -> String {
        format!("{}-ipam", self.prefix)
    }

    pub fn bridge_socket(&self) -> PathBuf {
        self.plugin_dir.join(format!("{}.sock", self.driver()))
    }

    pub fn ipam_socket(&self) -> PathBuf {
        self.plugin_dir.join(format!("{}.sock", self.ipam_driver()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits for a process that is expected to die (an armed fault point).
    pub fn wait_dead(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let c = self.child.as_mut().ok_or("netloomd is not running")?;
        let st = wait_timeout(c, timeout)
            .ok_or_else(|| format!("netloomd still alive after {timeout:?}"))?;
        self.child = None;
        Ok(st)
    }

    /// kill -9, as an OOM killer or an admin would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the clean stop.
    pub fn stop(&mut self) -> Result<ExitStatus, String> {
        let mut c = self.child.take().ok_or("netloomd is not running")?;
        kill(&mut c, nix::sys::signal::Signal::SIGTERM);
        match wait_timeout(&mut c, Duration::from_secs(15)) {
            Some(st) => Ok(st),
            None => {
                kill(&mut c, nix::sys::signal::Signal::SIGKILL);
                let _ = c.wait();
                Err("netloomd ignored SIGTERM for 15 s".into())
            }
        }
    }

    /// GET on the admin API.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        http(&self.admin, "GET", path, None)
    }

    /// GET on the admin API, decoded, requiring 200.
    pub fn admin_json(&self, path: &str) -> Result<Value, String> {
        match self.admin_get(path)? {
            (200, b) => serde_json::from_str(&b).map_err(|e| format!("{path}: {e}: {b}")),
            (s, b) => Err(format!("GET {path} answered {s}: {b}")),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Netloomd {
    fn drop(&mut self) {
        if self.child.is_some() && self.stop().is_err() {
            self.kill9();
        }
        // A killed netloomd leaves its socket files (one per driver it serves); they carry this
        // run's prefix, so remove them.
        let mine = format!("{}-", self.prefix);
        if let Ok(dir) = std::fs::read_dir(&self.plugin_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&mine) && name.ends_with(".sock") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_file(&self.admin);
    }
}

// ------------------------------------------------------------------ dockerd

/// The docker CLI that matches Debian's dockerd (a newer one may be first on PATH).
pub fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

/// The test image: busybox-static and its applets, imported offline.
pub const IMAGE: &str = "nlt-busybox:1";

/// A private dockerd in a fake host.
pub struct Dockerd {
    pub root: PathBuf,
    pub sock: PathBuf,
    /// Start with `--live-restore` (containers outlive a dockerd stop); takes effect at the
    /// next [`Dockerd::spawn`].
    pub live_restore: bool,
    namespace: String,
    netns: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// The dockerd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(host: &FakeHost, root: &Path) -> Result<Dockerd, String> {
        std::fs::create_dir_all(root).map_err(|e| format!("create {}: {e}", root.display()))?;
        let mut d = Dockerd {
            root: root.to_path_buf(),
            sock: root.join("docker.sock"),
            live_restore: false,
            namespace: names::unique("ctrd"),
            netns: host.netns().path().to_path_buf(),
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    /// Starts dockerd (again) on the same directories.
    pub fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let ns = engine_core::netns::Netns::open(&self.netns).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            // No docker0: the default bridge is not under test. Docker's iptables rules stay
            // on (in the fake host): netloom must coexist with its FORWARD DROP policy.
            .args(["--bridge=none", "--storage-driver=vfs", "--log-level=info"])
            .args(self.live_restore.then_some("--live-restore"))
            .arg("--containerd-namespace")
            .arg(&self.namespace)
            .arg("--containerd-plugins-namespace")
            .arg(format!("{}-plugins", self.namespace))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        ns.command(&mut cmd).map_err(|e| e.to_string())?;
        self.child = Some(cmd.spawn().map_err(|e| format!("start dockerd: {e}"))?);
        let ok = wait_until(Duration::from_secs(40), || {
            self.docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
        });
        if !ok {
            return Err(format!("dockerd did not come up:\n{}", self.log_tail()));
        }
        Ok(())
    }

    /// Runs the docker CLI against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(docker_cli());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.root.join("cli"))
            .stdin(Stdio::null());
        cmd.output().unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("run docker: {e}").into_bytes(),
        })
    }

    /// Runs docker and requires success; returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.docker(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "docker {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs docker and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String, String> {
        let out = self.docker(args);
        if out.status.success() {
            Err(format!(
                "docker {} succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        } else {
            Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Builds the busybox rootfs (every applet a symlink) and imports it as [`IMAGE`].
    pub fn import_busybox(&self) -> Result<(), String> {
        let tar = crate::image::busybox_rootfs_tar(&self.root)?;
        let tar_s = tar.to_string_lossy().into_owned();
        self.ok(&[
            "import",
            "--change",
            "ENV PATH=/bin",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar_s,
            IMAGE,
        ])?;
        let _ = std::fs::remove_file(&tar);
        Ok(())
    }

    /// SIGTERM and wait (dockerd stops its containers and its containerd).
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        kill(&mut c, nix::sys::signal::Signal::SIGTERM);
        if wait_timeout(&mut c, Duration::from_secs(30)).is_none() {
            kill(&mut c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
            return Err("dockerd ignored SIGTERM for 30 s".into());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("module=grpc"))
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Processes our dockerd started that outlived it (containerd, shims): found by the
    /// containerd namespace or directories only they carry on their command line.
    fn stragglers(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let root = self.root.to_string_lossy().into_owned();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&root)
                || cmdline.contains(&format!("-namespace {} ", self.namespace))
            {
                out.push(pid);
            }
        }
        out
    }

    /// Unmounts whatever is still mounted below our root (lazily), deepest first.
    fn unmount_all(&self) {
        let root = self.root.to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.stop();
        for pid in self.stragglers() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.unmount_all();
    }
}

// ------------------------------------------------------------------ the environment

/// A fake host with netloomd and a private dockerd that uses it.
pub struct DockerEnv {
    // Drop order matters: dockerd, then netloomd, then the host (its netns and directory).
    pub dockerd: Dockerd,
    pub netloomd: Netloomd,
    pub host: FakeHost,
}

impl DockerEnv {
    pub fn start(tag: &str) -> Result<DockerEnv, String> {
        let host = FakeHost::new(tag)?;
        let root = host.state_dir().to_path_buf();
        let netloomd = Netloomd::start(
            &host,
            &root.join("netloom"),
            Path::new(DOCKER_PLUGIN_DIR),
            None,
        )?;
        let dockerd = Dockerd::start(&host, &root.join("docker"))?;
        dockerd.import_busybox()?;
        Ok(DockerEnv {
            dockerd,
            netloomd,
            host,
        })
    }

    pub fn driver(&self) -> String {
        self.netloomd.driver()
    }

    pub fn ipam_driver(&self) -> String {
        self.netloomd.ipam_driver()
    }

    /// docker, requiring success.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        self.dockerd.ok(args)
    }

    /// docker, requiring failure.
    pub fn docker_fails(&self, args: &[&str]) -> Result<String, String> {
        self.dockerd.fails(args)
    }

    /// Runs a command in a running container.
    pub fn exec(&self, container: &str, argv: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", container];
        args.extend_from_slice(argv);
        self.dockerd.ok(&args)
    }

    /// Runs a command in a container; Ok(true) if it exited 0.
    pub fn exec_status(&self, container: &str, argv: &[&str]) -> bool {
        let mut args = vec!["exec", container];
        args.extend_from_slice(argv);
        self.dockerd.docker(&args).status.success()
    }

    /// Removes every container, then every network of our drivers; then checks that netloomd
    /// has nothing left. Run at the end of each test, and on drop.
    pub fn clean(&self) -> Result<(), String> {
        let ids = self.dockerd.ok(&["ps", "-aq"])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            self.dockerd.ok(&args)?;
        }
        for d in [self.driver(), self.netloomd.driver_of("macvlan")] {
            let nets =
                self.dockerd
                    .ok(&["network", "ls", "-q", "--filter", &format!("driver={d}")])?;
            for n in nets.split_whitespace() {
                self.dockerd.ok(&["network", "rm", n])?;
            }
        }
        let nets = self.netloomd.admin_json("/networks")?;
        if nets.as_array().is_some_and(|a| !a.is_empty()) {
            return Err(format!(
                "netloomd still has networks after docker removed them all: {nets}"
            ));
        }
        Ok(())
    }

    /// Container address on a network, from `docker inspect`.
    pub fn ip_of(&self, container: &str, network: &str) -> Result<String, String> {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        self.docker(&["inspect", "-f", &f, container])
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        if self.netloomd.running() {
            if let Err(e) = self.clean() {
                eprintln!("docker env cleanup: {e}");
            }
        }
    }
}
