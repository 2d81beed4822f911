//! The embedded state store: a directory, safe for many processes at once.
//!
//! Layout under the state directory:
//! - `data/<seg>/<seg>/…/%v` — the value of a key in a checksummed frame. A new key's file is
//!   written under a temporary name and renamed into place; a rewrite of up to a page
//!   overwrites the file in place (larger ones, and all with [`Sync::Durable`], are swapped in
//!   as before). Either way a reader or a killed writer sees the old value or the new one,
//!   never half: a reader that catches an in-place rewrite half done sees a frame that does
//!   not check out and reads again.
//!   `%v` cannot be an escaped segment (escapes are `%` + two hex digits), so a key can hold a
//!   value and have children at the same time.
//! - `locks/stripe-NN` — flock'd for the few microseconds of one compare-and-swap; keys hash onto
//!   64 stripes so unrelated writers do not wait for each other.
//! - `locks/scope-<name>` — the named locks handed out by [`StateStore::lock`].
//!
//! Versions are `max(previous + 1, now in ns)`: a key that is deleted and created again never
//! gets a version it had before, so a stale compare-and-swap cannot succeed (no ABA).
//! flock locks are dropped by the kernel when their holder dies, so kill -9 never wedges the store.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Expect, Key, LockGuard, PutOutcome, StateStore, Versioned};
use crate::error::{Error, Result};

const VALUE_FILE: &str = "%v";
/// Whole-file records of earlier releases (still read): `netloom-v1 <version>\n<value>`.
const MAGIC_V1: &[u8] = b"netloom-v1 ";
/// Framed records: `netloom-v2 <version> <length> <fnv64 of value>\n<value>`, possibly
/// followed by stale bytes of a longer earlier record. The frame lets a record be rewritten
/// in place: a reader that raced the rewrite sees a length or checksum that does not match,
/// and reads again.
const MAGIC_V2: &[u8] = b"netloom-v2 ";
/// The largest record rewritten in place rather than swapped in: one page written at offset
/// 0, which the kernel copies whole or not at all, so kill -9 cannot leave half of it.
const IN_PLACE_MAX: usize = 4096;
/// How often a reader re-reads a record that a writer is rewriting under it before calling it
/// corrupt (a rewrite takes microseconds; only damage survives this many).
const TORN_READ_ATTEMPTS: usize = 1000;
const STRIPES: u64 = 64;
/// Directories this close to `data/` stay when they empty: they are the collections
/// (`journal/<scope>`, `ipam/leases`, `endpoints/<network>`…) that the next operation writes
/// into again at once, and every mkdir/rmdir is a filesystem journal transaction (a create
/// and delete cycle cost an ADD/DEL pair ~12 of them). A network's own collections go with
/// its last key only below this depth, so what stays is one empty directory per network
/// name ever used.
const KEPT_LEVELS: usize = 2;

/// Whether writes wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Atomic replacement only: a killed process never leaves a torn or missing value, which is
    /// the failure netloom must survive (kill -9 at any point). After a power cut the last
    /// writes may be lost — as are the namespaces and links they described.
    Atomic,
    /// Also fdatasync each value before it replaces the old one (`NETLOOM_STORE_FSYNC=1`):
    /// survives power loss, at a few ms per write.
    Durable,
}

/// The embedded store rooted at a directory (by default /var/lib/netloom).
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    data: PathBuf,
    locks: PathBuf,
    sync: Sync,
}

impl FileStore {
    /// Opens (creating if needed) the store at `root`. The directory is made mode 0700: the
    /// store describes the host's network and is root's business only.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let data = root.join("data");
        let locks = root.join("locks");
        for d in [&root, &data, &locks] {
            create_private_dir(d)?;
        }
        let durable = std::env::var("NETLOOM_STORE_FSYNC")
            .map(|v| v == "1" || v == "true")
            .unwrap_or(false);
        let sync = if durable { Sync::Durable } else { Sync::Atomic };
        Ok(FileStore {
            root,
            data,
            locks,
            sync,
        })
    }

    /// Chooses whether writes wait for the disk (see [`Sync`]).
    pub fn with_sync(mut self, sync: Sync) -> Self {
        self.sync = sync;
        self
    }

    /// Opens the store at `NETLOOM_STATE_DIR` or /var/lib/netloom.
    pub fn open_default() -> Result<Self> {
        Self::open(super::default_state_dir())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, key: &Key) -> PathBuf {
        let mut p = self.data.clone();
        if !key.as_str().is_empty() {
            p.push(key.as_str());
        }
        p
    }

    fn stripe_lock(&self, key: &Key) -> Result<FileLock> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.as_str().hash(&mut h);
        let path = self
            .locks
            .join(format!("stripe-{:02}", h.finish() % STRIPES));
        FileLock::acquire(&path, None, "")?
            .ok_or_else(|| Error::Internal("stripe lock not taken".into()))
    }

    fn read_at(&self, dir: &Path) -> Result<Option<Versioned>> {
        let path = dir.join(VALUE_FILE);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let mut buf = Vec::new();
        for attempt in 0..TORN_READ_ATTEMPTS {
            buf.clear();
            if attempt > 0 {
                // The same open file: an in-place rewrite keeps the inode.
                std::io::Seek::rewind(&mut f)
                    .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
                std::thread::yield_now();
            }
            f.read_to_end(&mut buf)
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            if buf.is_empty() {
                // Only a power cut between create and the data reaching the disk leaves an
                // empty value file (we never write one): the write did not happen.
                return Ok(None);
            }
            match decode(&buf) {
                Decoded::Value(v) => return Ok(Some(v)),
                Decoded::Torn => continue,
                Decoded::Corrupt => break,
            }
        }
        Err(Error::Internal(format!(
            "state file {} is corrupt",
            path.display()
        )))
    }

    /// Writes `value` as the key's new value; `replaces` says whether a value file is there
    /// now (the caller read it under the stripe lock).
    fn write_at(&self, dir: &Path, version: u64, value: &[u8], replaces: bool) -> Result<()> {
        // A concurrent delete may remove empty parent directories between our mkdir and our
        // create: retry a few times rather than fail a healthy write.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_write_at(dir, version, value, replaces) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => continue,
                Err(e) => return Err(Error::io(format!("write {}", dir.display()), e)),
                Ok(()) => return Ok(()),
            }
        }
    }

    fn try_write_at(
        &self,
        dir: &Path,
        version: u64,
        value: &[u8],
        replaces: bool,
    ) -> io::Result<()> {
        let buf = encode(version, value);
        if replaces && self.sync == Sync::Atomic && buf.len() <= IN_PLACE_MAX {
            match rewrite_in_place(&dir.join(VALUE_FILE), &buf) {
                // Gone meanwhile (a writer that ignores our stripe lock): create it anew.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                done => return done,
            }
        }
        if !replaces {
            fs::create_dir_all(dir)?;
        }
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), next_tmp_id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&buf)?;
            if self.sync == Sync::Durable {
                // Data before rename: after a power cut the key holds the old or the new
                // value, never an empty file.
                f.sync_data()?;
                return fs::rename(&tmp, dir.join(VALUE_FILE));
            }
            let target = dir.join(VALUE_FILE);
            if replaces {
                return replace_by_exchange(&tmp, &target);
            }
            fs::rename(&tmp, target)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the directories a deleted key leaves empty, up to but excluding the first
    /// [`KEPT_LEVELS`] levels below `data/`.
    fn remove_empty_parents(&self, mut dir: PathBuf) {
        while dir.starts_with(&self.data) {
            let depth = dir
                .strip_prefix(&self.data)
                .map(|rel| rel.components().count())
                .unwrap_or(0);
            if depth <= KEPT_LEVELS {
                break;
            }
            if fs::remove_dir(&dir).is_err() {
                break;
            }
            if !dir.pop() {
                break;
            }
        }
    }

    fn walk(&self, dir: &Path, key: &Key, out: &mut Vec<(Key, Versioned)>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(()),
            Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == VALUE_FILE {
                // Read through read_at: the file may be replaced or removed while we list.
                if let Some(v) = self.read_at(dir)? {
                    out.push((key.clone(), v));
                }
            } else if let Some(child) = Key::from_escaped(name) {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let child_key = if key.as_str().is_empty() {
                        child
                    } else {
                        Key::from_escaped(&format!("{}/{}", key.as_str(), child.as_str()))
                            .ok_or_else(|| Error::Internal(format!("bad key below {key}")))?
                    };
                    self.walk(&entry.path(), &child_key, out)?;
                }
            } else if name.starts_with(".tmp-") {
                remove_stale_tmp(&entry.path(), name);
            }
        }
        Ok(())
    }
}

impl StateStore for FileStore {
    fn get(&self, key: &Key) -> Result<Option<Versioned>> {
        self.read_at(&self.dir_of(key))
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<PutOutcome> {
        if key.as_str().is_empty() {
            return Err(Error::InvalidConfig(
                "the empty key cannot hold a value".into(),
            ));
        }
        let dir = self.dir_of(key);
        let _stripe = self.stripe_lock(key)?;
        let current = self.read_at(&dir)?.map(|v| v.version);
        if !matches_expectation(current, expect) {
            return Ok(PutOutcome::Mismatch(current));
        }
        let version = next_version(current);
        self.write_at(&dir, version, value, current.is_some())?;
        Ok(PutOutcome::Written(version))
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<PutOutcome> {
        let dir = self.dir_of(key);
        let _stripe = self.stripe_lock(key)?;
        let current = self.read_at(&dir)?.map(|v| v.version);
        if !matches_expectation(current, expect) {
            return Ok(PutOutcome::Mismatch(current));
        }
        match fs::remove_file(dir.join(VALUE_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("delete {key}"), e)),
        }
        self.remove_empty_parents(dir);
        Ok(PutOutcome::Written(current.unwrap_or(0)))
    }

    fn list(&self, prefix: &Key) -> Result<Vec<(Key, Versioned)>> {
        let mut out = Vec::new();
        self.walk(&self.dir_of(prefix), prefix, &mut out)?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn lock(&self, scope: &str, timeout: Duration) -> Result<Box<dyn LockGuard>> {
        let path = self
            .locks
            .join(format!("scope-{}", Key::new([scope]).as_str()));
        match FileLock::acquire(&path, Some(timeout), scope)? {
            Some(l) => Ok(Box::new(l)),
            None => Err(Error::Busy(format!(
                "lock {scope:?} is held by another netloom operation (waited {} ms); try again",
                timeout.as_millis()
            ))),
        }
    }

    fn try_lock(&self, scope: &str) -> Result<Option<Box<dyn LockGuard>>> {
        let path = self
            .locks
            .join(format!("scope-{}", Key::new([scope]).as_str()));
        Ok(FileLock::acquire(&path, Some(Duration::ZERO), scope)?
            .map(|l| Box::new(l) as Box<dyn LockGuard>))
    }

    fn describe(&self) -> String {
        format!("file:{}", self.root.display())
    }
}

fn matches_expectation(current: Option<u64>, expect: Expect) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current == Some(v),
    }
}

fn next_version(current: Option<u64>) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    now.max(current.unwrap_or(0) + 1)
}

/// Puts `tmp` in place of the existing `target` by swapping the two names, then removes the
/// old value (now under `tmp`).
///
/// Why not a plain rename: ext4 (with its default `auto_da_alloc`) starts writeback of the new
/// file's data whenever a rename replaces an existing file, and unlinking or replacing that
/// file again soon after then waits for the disk. Records that are rewritten several times per
/// operation (journal steps, the allocation hint) paid 0.3–4 ms each for it on this project's
/// VMs; the exchange costs ~40 µs. The exchange is as atomic as the rename for readers and for
/// a killed writer (a leftover `.tmp-<pid>-…` holding the old value is cleaned up by `walk`).
/// Only a power cut differs: the new value may be lost as an empty file, which reads as absent —
/// the promise of [`Sync::Atomic`]; [`Sync::Durable`] keeps the fsync and the plain rename.
fn replace_by_exchange(tmp: &Path, target: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(
        AT_FDCWD,
        tmp,
        AT_FDCWD,
        target,
        RenameFlags::RENAME_EXCHANGE,
    ) {
        // The new value is in place: a failed unlink only leaves a stale temporary file,
        // which `walk` removes once this process is gone.
        Ok(()) => {
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        // Filesystems without the exchange (EINVAL), or the target deleted by a writer that
        // ignores our stripe lock (ENOENT): the plain rename is always correct.
        Err(_) => fs::rename(tmp, target),
    }
}

fn next_tmp_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Overwrites a record in place, keeping its inode.
///
/// Why: every new file costs an inode, and ext4 without a journal (this project's VMs) skips
/// each inode freed in the last minutes when it allocates one, so a store that replaced a
/// file per rewrite slowed every create on the filesystem the busier it was (0.65 ms per file
/// measured in a benchmark's state directory). Journal steps and allocation hints are
/// rewritten several times per operation. Safe for lockless readers through the frame (see
/// [`MAGIC_V2`]) and for a killed writer through the size limit ([`IN_PLACE_MAX`]).
fn rewrite_in_place(path: &Path, record: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(record, 0)
}

/// 64-bit FNV-1a: a fixed, dependency-free checksum that tells a torn read from a record.
fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode(version: u64, value: &[u8]) -> Vec<u8> {
    let header = format!("{version} {} {:016x}\n", value.len(), fnv64(value));
    let mut buf = Vec::with_capacity(MAGIC_V2.len() + header.len() + value.len());
    buf.extend_from_slice(MAGIC_V2);
    buf.extend_from_slice(header.as_bytes());
    buf.extend_from_slice(value);
    buf
}

/// What a read found.
enum Decoded {
    Value(Versioned),
    /// A framed record that does not check out: a rewrite is under way, read again.
    Torn,
    Corrupt,
}

fn decode(buf: &[u8]) -> Decoded {
    if let Some(rest) = buf.strip_prefix(MAGIC_V2) {
        return decode_v2(rest).map_or(Decoded::Torn, Decoded::Value);
    }
    let v1 = || {
        let rest = buf.strip_prefix(MAGIC_V1)?;
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let version = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
        Some(Versioned {
            version,
            value: rest[nl + 1..].to_vec(),
        })
    };
    v1().map_or(Decoded::Corrupt, Decoded::Value)
}

fn decode_v2(rest: &[u8]) -> Option<Versioned> {
    let nl = rest.iter().take(64).position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&rest[..nl]).ok()?;
    let mut fields = header.split(' ');
    let version: u64 = fields.next()?.parse().ok()?;
    let len: usize = fields.next()?.parse().ok()?;
    let sum = u64::from_str_radix(fields.next()?, 16).ok()?;
    let value = rest.get(nl + 1..nl + 1 + len)?;
    (fields.next().is_none() && fnv64(value) == sum).then(|| Versioned {
        version,
        value: value.to_vec(),
    })
}

/// A temporary file left by a writer that died before its rename: removed once its writer is
/// gone (the pid is in its name).
fn remove_stale_tmp(path: &Path, name: &str) {
    let pid: Option<i32> = name
        .strip_prefix(".tmp-")
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse().ok());
    if let Some(pid) = pid {
        if pid != std::process::id() as i32 && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(path);
        }
    }
}

fn create_private_dir(d: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(d) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io(
            format!("create state directory {}", d.display()),
            e,
        )),
    }
}

/// An flock on a lock file, released on drop (and by the kernel if the process dies).
#[derive(Debug)]
struct FileLock {
    file: File,
    scope: String,
    path: PathBuf,
}

impl FileLock {
    /// `timeout` None waits forever (stripe locks are held for microseconds); `Some(ZERO)` tries
    /// once. Returns None on timeout.
    fn acquire(path: &Path, timeout: Option<Duration>, scope: &str) -> Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("open lock {}", path.display()), e))?;
        let fd = file.as_raw_fd();
        let Some(timeout) = timeout else {
            loop {
                // SAFETY: fd is a valid open descriptor owned by `file`.
                let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
                if rc == 0 {
                    return Ok(Some(FileLock {
                        file,
                        scope: scope.to_string(),
                        path: path.to_path_buf(),
                    }));
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::io(format!("lock {}", path.display()), err));
                }
            }
        };
        // Poll with a growing back-off: flock has no timed wait, and blocking in a signal-interrupted
        // flock would need a timer signal in every process that links us.
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            // SAFETY: as above.
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Some(FileLock {
                    file,
                    scope: scope.to_string(),
                    path: path.to_path_buf(),
                }));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                && err.kind() != io::ErrorKind::Interrupted
            {
                return Err(Error::io(format!("lock {}", path.display()), err));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

impl LockGuard for FileLock {
    fn scope(&self) -> &str {
        &self.scope
    }

    fn release_and_forget(self: Box<Self>) {
        // Unlink while still holding the lock: whoever opens the path afterwards gets a new
        // file and a free lock, which is right once the scope's work is over.
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the fd releases the flock; unlock explicitly anyway so a dup'ed fd held by a
        // child process cannot keep it.
        // SAFETY: the fd is still open here.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StateStoreExt;

    fn tmp_store() -> (FileStore, TempDir) {
        let d = TempDir::new();
        (FileStore::open(d.0.clone()).expect("open"), d)
    }

    pub(crate) struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "netloom-store-test-{}-{}",
                std::process::id(),
                next_tmp_id()
            ));
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn rewrites_leave_one_file_and_deletes_keep_only_collections() {
        let (s, d) = tmp_store();
        let k = Key::new(["journal", "network/web", "op-1"]);
        for i in 0..5u8 {
            s.put(&k, &[b'a' + i], Expect::Any).unwrap();
        }
        assert_eq!(s.get(&k).unwrap().unwrap().value, b"e");
        // The exchange left no temporary file holding an old value.
        let dir = d.0.join("data").join(k.as_str());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(VALUE_FILE)]);
        assert!(s.delete(&k, Expect::Any).unwrap().is_written());
        // The operation's own directory goes; the collection it lived in stays for the next.
        assert!(!dir.exists());
        assert!(dir.parent().unwrap().is_dir());
        assert_eq!(s.list(&Key::new(["journal"])).unwrap(), vec![]);
    }

    #[test]
    fn cas_create_update_delete() {
        let (s, _d) = tmp_store();
        let k = Key::new(["networks", "web"]);
        assert_eq!(s.get(&k).unwrap(), None);
        let PutOutcome::Written(v1) = s.put(&k, b"one", Expect::Absent).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.put(&k, b"two", Expect::Absent).unwrap(),
            PutOutcome::Mismatch(Some(v1))
        );
        assert_eq!(
            s.put(&k, b"two", Expect::Version(v1 + 999)).unwrap(),
            PutOutcome::Mismatch(Some(v1))
        );
        let PutOutcome::Written(v2) = s.put(&k, b"two", Expect::Version(v1)).unwrap() else {
            panic!()
        };
        assert!(v2 > v1);
        assert_eq!(s.get(&k).unwrap().unwrap().value, b"two");
        assert_eq!(
            s.delete(&k, Expect::Version(v1)).unwrap(),
            PutOutcome::Mismatch(Some(v2))
        );
        assert!(s.delete(&k, Expect::Version(v2)).unwrap().is_written());
        assert_eq!(s.get(&k).unwrap(), None);
        // Deleting again is fine, and a re-created key never reuses an old version.
        assert!(s.delete(&k, Expect::Any).unwrap().is_written());
        let PutOutcome::Written(v3) = s.put(&k, b"three", Expect::Absent).unwrap() else {
            panic!()
        };
        assert!(v3 > v2);
    }

    #[test]
    fn value_and_children_coexist_and_list_by_prefix() {
        let (s, _d) = tmp_store();
        s.put_json(&Key::new(["networks", "web"]), &1u32, Expect::Any)
            .unwrap();
        s.put_json(
            &Key::new(["networks", "web", "endpoints", "a"]),
            &2u32,
            Expect::Any,
        )
        .unwrap();
        s.put_json(&Key::new(["networks", "web2"]), &3u32, Expect::Any)
            .unwrap();
        s.put_json(&Key::new(["ipam", "10.0.0.0/24"]), &4u32, Expect::Any)
            .unwrap();
        let all: Vec<(Key, u64, u32)> = s.list_json(&Key::new(["networks"])).unwrap();
        let names: Vec<String> = all.iter().map(|(k, _, _)| k.to_string()).collect();
        assert_eq!(
            names,
            vec!["networks/web", "networks/web/endpoints/a", "networks/web2"]
        );
        let web: Vec<(Key, u64, u32)> = s.list_json(&Key::new(["networks", "web"])).unwrap();
        assert_eq!(web.len(), 2);
        let ipam: Vec<(Key, u64, u32)> = s.list_json(&Key::new(["ipam"])).unwrap();
        assert_eq!(ipam[0].0.last().as_deref(), Some("10.0.0.0/24"));
        // Deleting a child leaves the parent's value alone.
        s.delete(
            &Key::new(["networks", "web", "endpoints", "a"]),
            Expect::Any,
        )
        .unwrap();
        assert!(s.get(&Key::new(["networks", "web"])).unwrap().is_some());
    }

    #[test]
    fn named_lock_times_out_while_held() {
        let (s, _d) = tmp_store();
        let g = s.lock("network/web", Duration::from_millis(100)).unwrap();
        assert_eq!(g.scope(), "network/web");
        let t = Instant::now();
        let err = match s.lock("network/web", Duration::from_millis(50)) {
            Err(e) => e,
            Ok(_) => panic!("second lock must not be granted"),
        };
        assert_eq!(err.kind(), crate::ErrorKind::Busy);
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(s.try_lock("network/web").unwrap().is_none());
        assert!(s.try_lock("network/other").unwrap().is_some());
        drop(g);
        assert!(s.try_lock("network/web").unwrap().is_some());
    }

    #[test]
    fn threads_racing_on_cas_lose_no_increment() {
        let (s, _d) = tmp_store();
        let s = std::sync::Arc::new(s);
        let k = Key::new(["counter"]);
        s.put_json(&k, &0u64, Expect::Absent).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                let k = k.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        loop {
                            let (v, n): (u64, u64) = s.get_json(&k).unwrap().unwrap();
                            if s.put_json(&k, &(n + 1), Expect::Version(v))
                                .unwrap()
                                .is_written()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let (_, n): (u64, u64) = s.get_json(&k).unwrap().unwrap();
        assert_eq!(n, 200);
    }

    #[test]
    fn rewrites_keep_the_inode_and_any_length() {
        use std::os::unix::fs::MetadataExt;
        let (s, d) = tmp_store();
        let k = Key::new(["ipam", "last", "pool"]);
        s.put(&k, &[b'x'; 300], Expect::Any).unwrap();
        let file = d.0.join("data").join(k.as_str()).join(VALUE_FILE);
        let ino = fs::metadata(&file).unwrap().ino();
        for len in [10usize, 2000, 1, 0, 3999] {
            s.put(&k, &vec![b'y'; len], Expect::Any).unwrap();
            assert_eq!(s.get(&k).unwrap().unwrap().value, vec![b'y'; len]);
        }
        assert_eq!(
            fs::metadata(&file).unwrap().ino(),
            ino,
            "rewritten in place"
        );
        // Beyond a page the value is swapped in (a new inode), and reads back whole.
        s.put(&k, &[b'z'; 5000], Expect::Any).unwrap();
        assert_eq!(s.get(&k).unwrap().unwrap().value, vec![b'z'; 5000]);
        assert_ne!(fs::metadata(&file).unwrap().ino(), ino);
    }

    #[test]
    fn readers_never_see_half_an_in_place_rewrite() {
        let (s, _d) = tmp_store();
        let s = std::sync::Arc::new(s);
        let k = Key::new(["journal", "race"]);
        s.put(&k, b"a", Expect::Any).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (s, k, stop) = (s.clone(), k.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let v = s.get(&k).unwrap().unwrap().value;
                        let c = v[0];
                        assert!(
                            v.iter().all(|&b| b == c) && (v.len() == 1 || v.len() == 3900),
                            "torn value: {} bytes starting {:?}",
                            v.len(),
                            c as char
                        );
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 0..3000u32 {
            let v = if i % 2 == 0 {
                vec![b'b'; 3900]
            } else {
                vec![b'c'; 1]
            };
            s.put(&k, &v, Expect::Any).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }

    #[test]
    fn records_of_earlier_releases_still_read() {
        let (s, d) = tmp_store();
        let k = Key::new(["networks", "old"]);
        let dir = d.0.join("data").join(k.as_str());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(VALUE_FILE), b"netloom-v1 42\n{\"a\":1}").unwrap();
        let v = s.get(&k).unwrap().unwrap();
        assert_eq!((v.version, v.value.as_slice()), (42, &b"{\"a\":1}"[..]));
        // The first rewrite of an old record moves it to the framed format.
        s.put(&k, b"new", Expect::Version(42)).unwrap();
        assert_eq!(s.get(&k).unwrap().unwrap().value, b"new");
    }

    #[test]
    fn corrupt_file_is_reported_not_ignored() {
        let (s, d) = tmp_store();
        let k = Key::new(["x"]);
        s.put(&k, b"ok", Expect::Any).unwrap();
        fs::write(d.0.join("data/x/%v"), b"garbage").unwrap();
        let err = s.get(&k).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Internal);
        assert!(err.to_string().contains("corrupt"));
    }
}
