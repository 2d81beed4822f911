//! A private "fake host" network namespace per test, with container namespaces beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use engine_core::netns::Netns;

use crate::names;

/// A test's host: the product runs inside it as if it were the machine's root namespace, so
/// bridges, nft tables and sysctls never touch the real host and fixed names are parallel-safe.
/// Dropping it removes its container namespaces, itself and its state directory.
pub struct FakeHost {
    pub name: String,
    ns: Netns,
    containers: Vec<Netns>,
    state_dir: PathBuf,
}

impl FakeHost {
    /// A new fake host with loopback up and a private state directory.
    pub fn new(tag: &str) -> Result<FakeHost, String> {
        let name = names::unique(tag);
        let ns = Netns::create_named(&name).map_err(|e| format!("create fake host {name}: {e}"))?;
        let state_dir = std::env::temp_dir().join(format!("{name}-state"));
        let host = FakeHost {
            name,
            ns,
            containers: Vec::new(),
            state_dir,
        };
        host.sh(&["ip", "link", "set", "lo", "up"])?;
        Ok(host)
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// A state directory for the product under test (removed on drop).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Creates a container namespace (loopback up) and returns its path.
    pub fn container(&mut self, tag: &str) -> Result<PathBuf, String> {
        let name = format!("{}-{tag}", self.name);
        let ns = Netns::create_named(&name)
            .map_err(|e| format!("create container netns {name}: {e}"))?;
        run_in(&ns, &["ip", "link", "set", "lo", "up"])?;
        let path = ns.path().to_path_buf();
        self.containers.push(ns);
        Ok(path)
    }

    /// Runs a command inside the fake host and returns its output; a non-zero exit is an error
    /// carrying stderr.
    pub fn sh(&self, argv: &[&str]) -> Result<Output, String> {
        run_in(&self.ns, argv)
    }

    /// Like [`FakeHost::sh`] but returns the output whatever the exit status.
    pub fn sh_any(&self, argv: &[&str]) -> Result<Output, String> {
        run_in_any(&self.ns, argv)
    }

    /// A command prepared to start inside the fake host (for the product's binaries).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, String> {
        let mut cmd = Command::new(program);
        self.ns.command(&mut cmd).map_err(|e| e.to_string())?;
        Ok(cmd)
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        // Containers first: their veth peers live in the host and go with them.
        while let Some(c) = self.containers.pop() {
            drop(c);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Runs `argv` inside `ns`; non-zero exit → Err with the command and its stderr.
pub fn run_in(ns: &Netns, argv: &[&str]) -> Result<Output, String> {
    let out = run_in_any(ns, argv)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{}` in {} failed ({}): {}",
            argv.join(" "),
            ns.path().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `argv` inside `ns` and returns the output whatever the status.
pub fn run_in_any(ns: &Netns, argv: &[&str]) -> Result<Output, String> {
    let (bin, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    ns.command(&mut cmd).map_err(|e| e.to_string())?;
    cmd.output().map_err(|e| format!("run {bin}: {e}"))
}

/// Runs `argv` inside the namespace at `path`.
pub fn run_in_path(path: &Path, argv: &[&str]) -> Result<Output, String> {
    let ns = Netns::open(path).map_err(|e| e.to_string())?;
    run_in(&ns, argv)
}
