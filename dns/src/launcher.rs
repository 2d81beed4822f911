//! Starting the server on demand: the CNI plugin calls [`ensure_running`] after writing the
//! registry. Parallel plugins start one server between them (the `dns-server-start` lock), and
//! the plugin returns only once the server serves the new table — no polling loop.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::control;
use crate::error::{Error, Result};
use crate::registry::Registry;

/// The store lock that serialises starting (plugins) and stopping (the server) the server.
pub const START_LOCK: &str = "dns-server-start";
/// Held by a running server for its whole life: a second one refuses to start.
pub const ALIVE_LOCK: &str = "dns-server-alive";

const SERVER_BIN: &str = "netloom-dnsd";
const READY_WAIT: Duration = Duration::from_secs(15);

/// Where `netloom-dnsd` is: `NETLOOM_DNSD`, next to the running binary (the CNI plugin
/// directory, or target/<profile> in tests), /usr/local/bin, then `PATH`.
pub fn server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETLOOM_DNSD").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(d);
    }
    dirs.push(PathBuf::from("/usr/local/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(SERVER_BIN))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::NotRunning(format!(
                "{SERVER_BIN} not found next to this plugin, in /usr/local/bin or PATH (setup.sh installs it)"
            ))
        })
}

/// Tells a running server to reload; `Ok(false)` when none runs (nothing to tell).
pub fn notify(reg: &Registry) -> Result<bool> {
    match control::reload(&reg.control_socket()) {
        Ok(()) => Ok(true),
        Err(Error::NotRunning(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes the server serve the registry as it is now: reloads the running one, or starts one.
pub fn ensure_running(reg: &Registry) -> Result<()> {
    if notify(reg)? {
        return Ok(());
    }
    // Whoever holds the lock is starting a server, or a server is exiting: both are done when
    // we get it.
    let _lock = reg.store().lock(START_LOCK, Duration::from_secs(20))?;
    if notify(reg)? {
        return Ok(());
    }
    spawn(reg)
}

/// Starts a detached server (own session, stdio away from the caller's pipes, log file) and
/// waits for its `ready` line, which it prints after loading the registry and binding.
fn spawn(reg: &Registry) -> Result<()> {
    let bin = server_binary()?;
    let dir = reg.runtime_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(reg.log_file())
        .map_err(|e| Error::io(format!("open {}", reg.log_file().display()), e))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--state-dir")
        .arg(reg.state_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the server from the runtime's session
    // so it outlives the plugin and never gets the runtime's signals.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("start {}", bin.display()), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Server("no stdout pipe to the starting server".into()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let outcome = rx.recv_timeout(READY_WAIT);
    match outcome {
        Ok(Ok(line)) if line.trim() == "ready" => {
            // The server lives on; reaping it is init's job once this plugin exits.
            drop(child);
            Ok(())
        }
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(reg.log_file()).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            let why = match other {
                Err(_) => "no ready signal within 15 s".to_string(),
                Ok(Ok(l)) if l.is_empty() => "it exited before it was ready".to_string(),
                Ok(Ok(l)) => format!("unexpected output {l:?}"),
                Ok(Err(e)) => e.to_string(),
            };
            Err(Error::Server(format!(
                "could not start {}: {why}; log: {}",
                bin.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )))
        }
    }
}
