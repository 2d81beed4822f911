//! Sysctls through `/proc/sys`, never by running `sysctl`.
//!
//! Everything under `/proc/sys/net` belongs to a network namespace, and which one is decided
//! by the *thread* that opens the file, not by the process or by how `/proc` was reached:
//! verified on Linux 6.18 by writing `net.ipv4.ip_forward` from a thread that had setns'd into
//! a fresh namespace (the namespace saw 1, the host kept 0; `sysctl_in_netns_leaves_host_alone`
//! checks it). There is no `/proc/thread-self/sys`; plain `/proc/sys` already follows the
//! thread. (Not so `/proc/net`: `/proc/self/net` is the thread-group leader's namespace and only
//! `/proc/thread-self/net` the calling thread's.)
//!
//! So [`sysctl_set_in`] opens the file on a [`Netns::run`] thread inside the namespace. Keys in
//! other trees (`kernel.*`, `vm.*`) are global; the `_in` variants refuse them so a namespaced
//! caller cannot change the host by accident.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::netns::Netns;

const PROC_SYS: &str = "/proc/sys";

/// The file behind a sysctl key: dotted (`net.ipv4.ip_forward`), slashed (`net/ipv4/ip_forward`,
/// the only form that can name an interface with a dot, like `net/ipv4/conf/eth0.100/forwarding`)
/// or a full `/proc/sys/...` path.
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    let parts = key_parts(key)?;
    Ok(parts.iter().fold(PathBuf::from(PROC_SYS), |p, c| p.join(c)))
}

fn key_parts(key: &str) -> Result<Vec<&str>> {
    let bad = |why: &str| Error::InvalidConfig(format!("sysctl key {key:?} is invalid: {why}"));
    let rel = match key.strip_prefix('/') {
        Some(_) => key
            .strip_prefix("/proc/sys/")
            .ok_or_else(|| bad("an absolute key must start with /proc/sys/"))?,
        None => key,
    };
    let parts: Vec<&str> = if rel.contains('/') {
        rel.split('/').collect()
    } else {
        rel.split('.').collect()
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("it has an empty component"));
    }
    if parts
        .iter()
        .any(|p| *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(bad("components must not be '.' or '..'"));
    }
    Ok(parts)
}

fn read(path: &Path, key: &str) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim_end_matches('\n').to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(format!(
            "sysctl {key} does not exist ({} is missing)",
            path.display()
        ))),
        Err(e) => Err(Error::io(format!("read sysctl {key}"), e)),
    }
}

/// Reads a sysctl in the calling thread's namespace, without the trailing newline.
pub fn sysctl_get(key: &str) -> Result<String> {
    read(&sysctl_path(key)?, key)
}

/// Writes a sysctl in the calling thread's namespace; returns whether the value changed.
/// Nothing is written when the value is already right (compared field by field, as the kernel
/// prints multi-value sysctls with tabs), so a read-only `/proc/sys` that already has the wanted
/// value (common inside containers) is not an error.
pub fn sysctl_set(key: &str, value: &str) -> Result<bool> {
    let path = sysctl_path(key)?;
    let current = read(&path, key)?;
    if current.split_whitespace().eq(value.split_whitespace()) {
        return Ok(false);
    }
    fs::write(&path, value).map_err(|e| Error::io(format!("set sysctl {key} to {value:?}"), e))?;
    Ok(true)
}

/// Only `net.*` sysctls are per network namespace.
fn require_net(key: &str) -> Result<()> {
    match key_parts(key)?.first() {
        Some(&"net") => Ok(()),
        _ => Err(Error::InvalidConfig(format!(
            "sysctl {key} is not under net.*: it is not per network namespace, so setting it \"in\" a namespace would change the whole host"
        ))),
    }
}

/// [`sysctl_get`] inside `netns` (only `net.*` keys).
pub fn sysctl_get_in(netns: &Netns, key: &str) -> Result<String> {
    require_net(key)?;
    netns.run(|| sysctl_get(key))?
}

/// [`sysctl_set`] inside `netns` (only `net.*` keys); returns whether the value changed.
pub fn sysctl_set_in(netns: &Netns, key: &str, value: &str) -> Result<bool> {
    require_net(key)?;
    netns.run(|| sysctl_set(key, value))?
}
