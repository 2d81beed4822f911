//! Network namespaces: the only module that switches namespaces.
//!
//! setns(2) changes the namespace of the calling *thread*. Doing that on a thread that is
//! reused later (a tokio worker, a thread-pool thread) leaks the namespace into unrelated work,
//! so every switch here happens on a fresh thread that exits afterwards (the CNI `ns.Do` rule).
//! Netlink sockets opened inside stay bound to that namespace after the thread is gone, so
//! callers can keep using them from anywhere.
//!
//! clippy's `disallowed-methods` (clippy.toml) rejects setns/unshare everywhere else.

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};

/// Where named namespaces are bind-mounted, as iproute2 does.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open network namespace. Named ones created by [`Netns::create_named`] are removed on drop.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    /// Set when we created the bind mount and must remove it.
    owned_mount: Option<PathBuf>,
}

impl Netns {
    /// Opens a namespace by path (`/run/netns/x`, `/proc/123/ns/net`, Docker's SandboxKey).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| {
            let context = format!("open network namespace {}", path.display());
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("{context}: it does not exist"))
            } else {
                Error::io(context, e)
            }
        })?;
        let ns = Netns {
            file,
            path: path.to_path_buf(),
            owned_mount: None,
        };
        ns.ensure_is_netns()?;
        Ok(ns)
    }

    /// Opens `/run/netns/<name>`.
    pub fn open_name(name: &str) -> Result<Self> {
        crate::model::validate_network_name(name).map_err(|_| {
            Error::InvalidConfig(format!("netns name {name:?} is not a valid name"))
        })?;
        Self::open(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// Opens the namespace of a process.
    pub fn open_pid(pid: u32) -> Result<Self> {
        Self::open(format!("/proc/{pid}/ns/net"))
    }

    /// The namespace the calling thread is in.
    pub fn current() -> Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// Creates a new namespace and bind-mounts it at `/run/netns/<name>` (like `ip netns add`).
    /// The mount and the file are removed when the returned value is dropped.
    pub fn create_named(name: &str) -> Result<Self> {
        Self::create_at(Path::new(NETNS_RUN_DIR), name)
    }

    /// Like [`Netns::create_named`] under another directory.
    pub fn create_at(dir: &Path, name: &str) -> Result<Self> {
        crate::model::validate_network_name(name).map_err(|_| {
            Error::InvalidConfig(format!("netns name {name:?} is not a valid name"))
        })?;
        ensure_shared_run_dir(dir)?;
        let target = dir.join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Conflict(format!(
                    "network namespace {} already exists",
                    target.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("create {}", target.display()), e)),
        }
        let t = target.clone();
        // unshare on a throwaway thread: the new namespace is only ever that thread's, and the
        // bind mount keeps it alive after the thread exits.
        let made = std::thread::spawn(move || -> Result<()> {
            #[allow(clippy::disallowed_methods)]
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::kernel("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &t,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::kernel(format!("bind-mount namespace on {}", t.display()), e))
        })
        .join()
        .map_err(|_| Error::Internal("namespace creation thread panicked".into()))
        .and_then(|r| r);
        if let Err(e) = made {
            let _ = fs::remove_file(&target);
            return Err(e);
        }
        let mut ns = Self::open(&target).inspect_err(|_| {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
            let _ = fs::remove_file(&target);
        })?;
        ns.owned_mount = Some(target);
        Ok(ns)
    }

    /// Keeps the namespace mounted after this value is dropped (hand-over to whoever deletes it).
    pub fn persist(mut self) -> Self {
        self.owned_mount = None;
        self
    }

    /// Removes a named namespace's bind mount and file (like `ip netns del`). Missing is fine.
    pub fn remove_named(dir: &Path, name: &str) -> Result<()> {
        remove_mount(&dir.join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode: the identity used to compare and deduplicate namespaces.
    pub fn inode(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.ino())
            .map_err(|e| Error::io(format!("stat {}", self.path.display()), e))
    }

    /// Whether the calling thread is in this namespace, by one stat of its own namespace link
    /// (`false` when either cannot be read: the caller then takes the safe path).
    fn is_calling_threads(&self) -> bool {
        match (
            self.file.metadata(),
            std::fs::metadata("/proc/thread-self/ns/net"),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }

    /// Whether this is the namespace the calling thread is in.
    pub fn is_current(&self) -> Result<bool> {
        Ok(self.inode()? == Netns::current()?.inode()?)
    }

    /// Runs `f` inside the namespace on a fresh thread that exits afterwards, and returns its
    /// result. Safe to call from any thread (including a tokio worker): the caller's own thread
    /// never changes namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        // Already there (the host's namespace, seen from a CNI plugin): a thread would only
        // cost its start and a scheduling round (0.1–2 ms on a busy 2-core machine).
        if self.is_calling_threads() {
            return Ok(f());
        }
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                enter(fd, &self.path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| {
                Error::Internal(format!(
                    "code running in namespace {} panicked",
                    self.path.display()
                ))
            })?
        })
    }

    /// Makes `cmd` start inside this namespace (only the network namespace: the child keeps the
    /// caller's mounts, like `nsenter --net`). The switch happens in the child between fork and exec.
    pub fn command(&self, cmd: &mut Command) -> Result<()> {
        let fd = self
            .file
            .try_clone()
            .map_err(|e| Error::io(format!("duplicate handle of {}", self.path.display()), e))?;
        // SAFETY: the closure only calls setns(2), which is async-signal-safe, and owns its fd.
        unsafe {
            #[allow(clippy::disallowed_methods)]
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    fn ensure_is_netns(&self) -> Result<()> {
        // NS_GET_NSTYPE tells a netns handle from any other file a caller might pass.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: ioctl on an fd we own; the request takes no argument.
        let t = unsafe { libc::ioctl(self.file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if t == libc::CLONE_NEWNET {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "{} is not a network namespace",
                self.path.display()
            )))
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(p) = self.owned_mount.take() {
            if let Err(e) = remove_mount(&p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove network namespace");
            }
        }
    }
}

fn enter(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    #[allow(clippy::disallowed_methods)]
    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::kernel(format!("enter network namespace {}", path.display()), e))
}

fn remove_mount(p: &Path) -> Result<()> {
    match umount2(p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(Error::kernel(format!("unmount {}", p.display()), e)),
    }
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", p.display()), e)),
    }
}

/// Makes `dir` a shared mount point, as iproute2 does, so namespace mounts made in it propagate
/// to other mount namespaces (containers, `ip netns exec`).
fn ensure_shared_run_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::kernel(format!("bind-mount {}", dir.display()), e))?;
            mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
                .map_err(|e| Error::kernel(format!("make {} shared", dir.display()), e))
        }
        Err(e) => Err(Error::kernel(format!("make {} shared", dir.display()), e)),
    }
}

/// Whether the process may create namespaces (root with CAP_SYS_ADMIN in practice).
pub fn can_create() -> bool {
    nix::unistd::geteuid().is_root()
}
