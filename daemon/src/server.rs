//! Unix sockets: created mode 0600 (whoever can write to a plugin socket can reconfigure the
//! host's network), stale ones replaced, live ones never stolen; served until shutdown and
//! removed after.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use axum::Router;
use nix::sys::stat::{umask, Mode};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// Binds a listening socket at `path` with mode 0600, creating its directory (0755) if needed.
/// A socket file nobody answers on is a leftover and is replaced; one that answers belongs to a
/// running process and is an error.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use by another process (is another netloomd running?)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    // The socket is born 0600: no window in which another user could connect. The umask is
    // process-wide, but nothing else creates files while the daemon starts.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    umask(old);
    let std_listener = bound.with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    std_listener
        .set_nonblocking(true)
        .context("set the socket non-blocking")?;
    UnixListener::from_std(std_listener).context("register the socket with the runtime")
}

/// One served socket.
pub struct Served {
    pub path: PathBuf,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `router` on `listener` until `stop` turns true.
pub fn serve(
    path: PathBuf,
    listener: UnixListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> Served {
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    Served { path, task }
}

/// Removes a socket file we created (shutdown).
pub fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_are_private_and_never_stolen() {
        let dir = std::env::temp_dir().join(format!("netloomd-sock-test-{}", std::process::id()));
        let path = dir.join("sub").join("p.sock");
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused.
        assert!(bind(&path).unwrap_err().to_string().contains("in use"));
        drop(l);
        // Stale: replaced.
        let l2 = bind(&path).unwrap();
        drop(l2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
