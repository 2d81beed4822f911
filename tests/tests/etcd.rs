//! The etcd store against a real etcd (Debian's etcd-server), one private member per test.
//!
//! Compare-and-swap and listing run the same scenario on a FileStore and on etcd and require
//! the same answers. Behaviour across processes (locks, leased keys, cluster-wide IPAM) runs
//! this binary again as workers (`Suite::worker`), which the tests kill -9 where that is the
//! point.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::ipam::{AddressRequest, Ipam, PoolRequest, RangeSpec};
use engine_core::store::etcd::EtcdStore;
use engine_core::store::file::FileStore;
use engine_core::store::{open_global, LockGuard, WatchEvent};
use engine_core::{ErrorKind, Expect, Key, PutOutcome, StateStore, StateStoreExt, Versioned};
use ipam::{no_host_routes, StoreIpam};
use tests::etcd::Etcd;
use tests::{names, run_main, Cap, FakeHost, Suite};

const ETCD: &[Cap] = &[Cap::Etcd];

/// Worker parameters, passed in the environment.
const URL: &str = "NETLOOM_ETCD_TEST_URL";
const ARG: &str = "NETLOOM_ETCD_TEST_ARG";
/// Lease and lock TTL of the cross-process tests (etcd's unit is the second).
const TTL: Duration = Duration::from_secs(2);

fn main() {
    let mut s = Suite::new();
    s.test(
        "etcd::fixture_starts_stops_and_restarts",
        &[Cap::Root, Cap::Etcd, Cap::Bridge],
        fixture_starts_stops_and_restarts,
    )
    .test(
        "etcd::cas_semantics_match_file_store",
        ETCD,
        cas_semantics_match_file_store,
    )
    .test(
        "etcd::list_by_prefix_matches_file_store",
        ETCD,
        list_by_prefix_matches_file_store,
    )
    .test(
        "etcd::threads_racing_on_cas_lose_no_increment",
        ETCD,
        threads_racing_on_cas_lose_no_increment,
    )
    .test(
        "etcd::locks_exclude_across_processes",
        ETCD,
        locks_exclude_across_processes,
    )
    .test(
        "etcd::lock_of_killed_holder_frees_after_ttl",
        ETCD,
        lock_of_killed_holder_frees_after_ttl,
    )
    .test(
        "etcd::list_and_watch_has_no_gap",
        ETCD,
        list_and_watch_has_no_gap,
    )
    .test(
        "etcd::leased_key_goes_on_drop_and_after_holder_dies",
        ETCD,
        leased_key_goes_on_drop_and_after_holder_dies,
    )
    .test(
        "etcd::outage_fails_fast_naming_the_store_then_recovers",
        ETCD,
        outage_fails_fast_naming_the_store_then_recovers,
    )
    .test(
        "etcd::failover_to_the_next_endpoint",
        ETCD,
        failover_to_the_next_endpoint,
    )
    .test("etcd::ipam_is_cluster_wide", ETCD, ipam_is_cluster_wide)
    .test(
        "etcd::lock_serialises_unprotected_writes",
        ETCD,
        lock_serialises_unprotected_writes,
    )
    .test("etcd::operation_costs", ETCD, operation_costs)
    .test("etcd::open_global_spellings", &[], open_global_spellings)
    .worker("hold-lock", worker_hold_lock)
    .worker("hold-leased", worker_hold_leased)
    .worker("ipam-alloc", worker_ipam_alloc);
    run_main(s)
}

// ------------------------------------------------------------------ helpers

fn store(e: &Etcd) -> Result<EtcdStore, String> {
    EtcdStore::open(&e.url())
        .map(|s| s.with_lock_ttl(TTL))
        .map_err(|e| e.to_string())
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A worker process (this binary again); killed and reaped on drop.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(name: &str, url: &str, arg: &str) -> Result<Worker, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .env("NETLOOM_TEST_WORKER", name)
            .env(URL, url)
            .env(ARG, arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn worker {name}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no worker stdout")?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            lines: rx,
        })
    }

    /// The next line the worker prints.
    fn line(&self, timeout: Duration) -> Result<String, String> {
        self.lines
            .recv_timeout(timeout)
            .map_err(|_| format!("worker said nothing within {timeout:?}"))
    }

    /// Closes its stdin (the "let go" signal) and waits for a clean exit.
    fn finish(mut self, timeout: Duration) -> Result<(), String> {
        self.stdin.take();
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(format!("worker failed: {st}")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return Err(format!("worker still running after {timeout:?}")),
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Blocks until stdin closes (the parent's "let go", or the parent died).
fn wait_for_stdin_close() {
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

fn worker_store() -> Result<EtcdStore, String> {
    let url = std::env::var(URL).map_err(|_| format!("{URL} not set"))?;
    EtcdStore::open(&url)
        .map(|s| s.with_lock_ttl(TTL))
        .map_err(|e| e.to_string())
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ------------------------------------------------------------------ workers

/// Takes the lock named by ARG, says HELD, keeps it until stdin closes.
fn worker_hold_lock() -> i32 {
    let run = || -> Result<(), String> {
        let s = worker_store()?;
        let scope = std::env::var(ARG).map_err(|e| e.to_string())?;
        let g = s
            .lock(&scope, Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        say("HELD");
        wait_for_stdin_close();
        drop(g);
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hold-lock worker: {e}");
            1
        }
    }
}

/// Writes the leased key ARG, says READY, keeps it until stdin closes.
fn worker_hold_leased() -> i32 {
    let run = || -> Result<(), String> {
        let s = worker_store()?;
        let key = Key::new(["hosts", &std::env::var(ARG).map_err(|e| e.to_string())?]);
        let g = s
            .put_leased(&key, b"host record", TTL)
            .map_err(|e| e.to_string())?;
        say("READY");
        wait_for_stdin_close();
        drop(g);
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hold-leased worker: {e}");
            1
        }
    }
}

fn pool26() -> PoolRequest {
    PoolRequest {
        id: Some("cluster".into()),
        ranges: vec![RangeSpec {
            subnet: "10.77.0.0/26".parse().expect("valid"),
            start: None,
            end: None,
            gateway: Some("10.77.0.1".parse().expect("valid")),
        }],
        ..Default::default()
    }
}

/// One "host": StoreIpam over the shared etcd; waits for GO on stdin, then allocates ARG
/// addresses as fast as it can, printing "ok IP" or "err KIND message" for each.
fn worker_ipam_alloc() -> i32 {
    let run = || -> Result<(), String> {
        let s: Arc<dyn StateStore> = Arc::new(worker_store()?);
        let n: u32 = std::env::var(ARG)
            .map_err(|e| e.to_string())?
            .parse()
            .map_err(|e| format!("{ARG}: {e}"))?;
        let ipam = StoreIpam::new(s, no_host_routes()).with_lock_timeout(Duration::from_secs(60));
        let pool = ipam.request_pool(&pool26()).map_err(|e| e.to_string())?;
        say("READY");
        let mut go = String::new();
        let _ = std::io::stdin().read_line(&mut go);
        for i in 0..n {
            let req = AddressRequest {
                owner: format!("pid{}-{i}", std::process::id()),
                address: None,
            };
            match ipam.request_address(&pool.id, &req) {
                Ok(l) => say(&format!("ok {}", l.address.ip())),
                Err(e) => say(&format!("err {:?} {e}", e.kind())),
            }
        }
        say("DONE");
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ipam worker: {e}");
            1
        }
    }
}

// ------------------------------------------------------------------ tests

/// The fixture itself: on loopback, inside a fake host on its address, stop and start again.
fn fixture_starts_stops_and_restarts() -> Result<(), String> {
    let mut e = Etcd::start(None)?;
    check(e.url().starts_with("etcd://127.0.0.1:"), || {
        format!("unexpected url {}", e.url())
    })?;
    let s = store(&e)?;
    s.put(&Key::new(["k"]), b"v", Expect::Absent)
        .map_err(|e| e.to_string())?;
    e.stop()?;
    e.start_again()?;
    // Same data after the restart.
    let got = s.get(&Key::new(["k"])).map_err(|e| e.to_string())?;
    check(got.map(|v| v.value) == Some(b"v".to_vec()), || {
        "the value did not survive a restart".into()
    })?;
    let host = FakeHost::new("etcdfx")?;
    host.sh(&["ip", "link", "add", "nlfx0", "type", "bridge"])?;
    host.sh(&["ip", "addr", "add", "10.251.0.1/24", "dev", "nlfx0"])?;
    host.sh(&["ip", "link", "set", "nlfx0", "up"])?;
    let mut inner = Etcd::start(Some(host.netns().path()))?;
    check(inner.url().starts_with("etcd://10.251.0.1:"), || {
        format!("unexpected url {}", inner.url())
    })?;
    inner.stop()?;
    inner.start_again()?;
    // IPv6, in the fake host: the fixture on a v6 address and the store's [ADDR]:PORT
    // spelling, with the client in that namespace too.
    host.sh(&[
        "ip",
        "addr",
        "add",
        "fd4e:6c00:ffff::1/128",
        "dev",
        "lo",
        "nodad",
    ])?;
    let v6 = Etcd::start_at(
        Some(host.netns().path()),
        "fd4e:6c00:ffff::1".parse().map_err(|_| "bad v6")?,
    )?;
    check(v6.url().starts_with("etcd://[fd4e:6c00:ffff::1]:"), || {
        format!("unexpected url {}", v6.url())
    })?;
    let s6 = store(&v6)?;
    host.netns()
        .run(|| -> Result<(), String> {
            s6.put(&Key::new(["k"]), b"6", Expect::Absent)
                .map_err(|e| e.to_string())?;
            check(
                s6.get(&Key::new(["k"]))
                    .map_err(|e| e.to_string())?
                    .is_some(),
                || "nothing read back over IPv6".into(),
            )
        })
        .map_err(|e| e.to_string())?
}

/// What a store answered, with versions reduced to "same as step N" so that FileStore's and
/// etcd's (different) numbers compare.
#[derive(Default)]
struct Trace {
    steps: Vec<String>,
    versions: Vec<u64>,
}

impl Trace {
    fn ver(&mut self, v: u64) -> String {
        if v == 0 {
            return "0".into();
        }
        match self.versions.iter().position(|x| *x == v) {
            Some(i) => format!("v{i}"),
            None => {
                self.versions.push(v);
                format!("v{}", self.versions.len() - 1)
            }
        }
    }

    fn outcome(&mut self, what: &str, o: PutOutcome) {
        let s = match o {
            PutOutcome::Written(v) => format!("written {}", self.ver(v)),
            PutOutcome::Mismatch(None) => "mismatch absent".to_string(),
            PutOutcome::Mismatch(Some(v)) => format!("mismatch {}", self.ver(v)),
        };
        self.steps.push(format!("{what}: {s}"));
    }

    fn got(&mut self, what: &str, v: Option<Versioned>) {
        let s = match v {
            None => "none".to_string(),
            Some(v) => format!(
                "{} {:?}",
                self.ver(v.version),
                String::from_utf8_lossy(&v.value)
            ),
        };
        self.steps.push(format!("{what}: {s}"));
    }
}

fn version_of(o: PutOutcome) -> u64 {
    match o {
        PutOutcome::Written(v) => v,
        PutOutcome::Mismatch(_) => 0,
    }
}

/// Creates, updates and deletes with every expectation; versions must only grow.
fn cas_scenario(s: &dyn StateStore, base: &Key) -> Result<Trace, String> {
    let e = |e: engine_core::Error| e.to_string();
    let k = base.join("networks").join("web");
    let mut t = Trace::default();
    t.got("get absent", s.get(&k).map_err(e)?);
    let o = s.put(&k, b"one", Expect::Absent).map_err(e)?;
    let v1 = version_of(o);
    t.outcome("create", o);
    t.outcome(
        "create again",
        s.put(&k, b"two", Expect::Absent).map_err(e)?,
    );
    t.outcome(
        "update stale",
        s.put(&k, b"two", Expect::Version(v1 + 999)).map_err(e)?,
    );
    let o = s.put(&k, b"two", Expect::Version(v1)).map_err(e)?;
    let v2 = version_of(o);
    t.outcome("update", o);
    check(v2 > v1, || {
        format!("{}: version {v2} after {v1}", s.describe())
    })?;
    t.got("get", s.get(&k).map_err(e)?);
    t.outcome("put any", s.put(&k, b"three", Expect::Any).map_err(e)?);
    let v3 = s.get(&k).map_err(e)?.map(|v| v.version).unwrap_or(0);
    t.outcome(
        "delete stale",
        s.delete(&k, Expect::Version(v1)).map_err(e)?,
    );
    t.outcome(
        "delete expecting absent",
        s.delete(&k, Expect::Absent).map_err(e)?,
    );
    t.outcome("delete", s.delete(&k, Expect::Version(v3)).map_err(e)?);
    t.got("get deleted", s.get(&k).map_err(e)?);
    t.outcome("delete again", s.delete(&k, Expect::Any).map_err(e)?);
    t.outcome(
        "delete absent expecting absent",
        s.delete(&k, Expect::Absent).map_err(e)?,
    );
    t.outcome(
        "delete absent expecting a version",
        s.delete(&k, Expect::Version(v3)).map_err(e)?,
    );
    t.outcome(
        "update absent",
        s.put(&k, b"x", Expect::Version(v3)).map_err(e)?,
    );
    let o = s.put(&k, b"four", Expect::Absent).map_err(e)?;
    let v4 = version_of(o);
    t.outcome("re-create", o);
    check(v4 > v3, || {
        format!("{}: a re-created key reused a version", s.describe())
    })?;
    // Binary and empty values round-trip.
    let bin = base.join("bin");
    s.put(&bin, &[0, 255, 10, 13], Expect::Any).map_err(e)?;
    t.got(
        "binary",
        s.get(&bin).map_err(e)?.map(|mut v| {
            v.value = format!("{:?}", v.value).into_bytes();
            v
        }),
    );
    let empty = base.join("empty");
    s.put(&empty, b"", Expect::Any).map_err(e)?;
    t.got("empty", s.get(&empty).map_err(e)?);
    match s.put(&Key::new::<[&str; 0], &str>([]), b"x", Expect::Any) {
        Err(err) => t.steps.push(format!("empty key: {:?}", err.kind())),
        Ok(_) => t.steps.push("empty key: accepted".into()),
    }
    Ok(t)
}

fn temp_file_store(tag: &str) -> Result<(FileStore, TempDir), String> {
    let dir = TempDir(std::env::temp_dir().join(names::unique(tag)));
    let s = FileStore::open(&dir.0).map_err(|e| e.to_string())?;
    Ok((s, dir))
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cas_semantics_match_file_store() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let etcd = store(&e)?;
    let (file, _d) = temp_file_store("etcdcas")?;
    let base = Key::new(["cas"]);
    let want = cas_scenario(&file, &base)?.steps;
    let got = cas_scenario(&etcd, &base)?.steps;
    check(want == got, || {
        format!(
            "FileStore answered\n  {}\netcd answered\n  {}",
            want.join("\n  "),
            got.join("\n  ")
        )
    })
}

/// Values and children side by side, siblings that share a prefix, CIDR and IPv6 segments.
fn list_scenario(s: &dyn StateStore) -> Result<Vec<String>, String> {
    let e = |e: engine_core::Error| e.to_string();
    for (segs, v) in [
        (vec!["networks", "web"], 1u32),
        (vec!["networks", "web", "endpoints", "a"], 2),
        (
            vec!["networks", "web", "endpoints", "b", "deep", "deeper"],
            3,
        ),
        (vec!["networks", "web2"], 4),
        (vec!["networks", "web-2"], 5),
        (vec!["networks", "web.2"], 6),
        (vec!["networks", "we"], 7),
        (vec!["ipam", "10.0.0.0/24", "fd00::5"], 8),
        (vec!["ipam", "10.0.0.0/24", "10.0.0.5"], 9),
    ] {
        s.put_json(&Key::new(&segs), &v, Expect::Any).map_err(e)?;
    }
    s.delete(
        &Key::new(["networks", "web", "endpoints", "a"]),
        Expect::Any,
    )
    .map_err(e)?;
    let mut out = Vec::new();
    for prefix in [
        Key::new(["networks"]),
        Key::new(["networks", "web"]),
        Key::new(["networks", "web", "endpoints"]),
        Key::new(["ipam", "10.0.0.0/24"]),
        Key::new(["nothing"]),
        Key::new::<[&str; 0], &str>([]),
    ] {
        let items: Vec<(Key, u64, u32)> = s.list_json(&prefix).map_err(e)?;
        let names: Vec<String> = items
            .iter()
            .map(|(k, _, v)| format!("{}={v}", k.segments().join("|")))
            .collect();
        out.push(format!("{prefix}: {}", names.join(" ")));
    }
    Ok(out)
}

fn list_by_prefix_matches_file_store() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let etcd = store(&e)?;
    // A lock held meanwhile must not show up in listings.
    let _g = etcd
        .lock("networks/web", Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let (file, _d) = temp_file_store("etcdlist")?;
    let want = list_scenario(&file)?;
    let got = list_scenario(&etcd)?;
    check(want == got, || {
        format!(
            "FileStore listed\n  {}\netcd listed\n  {}",
            want.join("\n  "),
            got.join("\n  ")
        )
    })?;
    // And the expected answer itself, so both being wrong the same way fails too.
    check(
        got[1] == "networks/web: networks|web=1 networks|web|endpoints|b|deep|deeper=3",
        || format!("networks/web listed {}", got[1]),
    )
}

fn threads_racing_on_cas_lose_no_increment() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let s = Arc::new(store(&e)?);
    let k = Key::new(["counter"]);
    s.put_json(&k, &0u64, Expect::Absent)
        .map_err(|e| e.to_string())?;
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            let k = k.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for _ in 0..20 {
                    loop {
                        let (v, n): (u64, u64) = s
                            .get_json(&k)
                            .map_err(|e| e.to_string())?
                            .ok_or("counter vanished")?;
                        if s.put_json(&k, &(n + 1), Expect::Version(v))
                            .map_err(|e| e.to_string())?
                            .is_written()
                        {
                            break;
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a racing thread panicked")??;
    }
    let (_, n): (u64, u64) = s
        .get_json(&k)
        .map_err(|e| e.to_string())?
        .ok_or("counter vanished")?;
    check(n == 120, || format!("counter is {n}, expected 120"))
}

fn locks_exclude_across_processes() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let s = store(&e)?;
    let w = Worker::spawn("hold-lock", &e.url(), "pools")?;
    check(w.line(Duration::from_secs(20))? == "HELD", || {
        "worker did not take the lock".into()
    })?;
    check(
        s.try_lock("pools").map_err(|e| e.to_string())?.is_none(),
        || "try_lock granted a lock another process holds".into(),
    )?;
    let t = Instant::now();
    let err = match s.lock("pools", Duration::from_millis(300)) {
        Err(err) => err,
        Ok(_) => return Err("lock granted while another process holds it".into()),
    };
    check(t.elapsed() >= Duration::from_millis(300), || {
        format!("gave up after {:?}", t.elapsed())
    })?;
    check(
        err.kind() == ErrorKind::Busy && !err.is_unavailable(),
        || format!("wrong error for a held lock: {err:?}"),
    )?;
    check(err.to_string().contains("pid "), || {
        format!("the error does not say who holds the lock: {err}")
    })?;
    // Other scopes are independent.
    let other = s.try_lock("other").map_err(|e| e.to_string())?;
    check(other.is_some(), || {
        "an unrelated lock was not granted".into()
    })?;
    // A waiter gets the lock as soon as the holder lets go.
    let waiter = {
        let s = s.clone();
        std::thread::spawn(move || -> Result<(Duration, Box<dyn LockGuard>), String> {
            let t = Instant::now();
            let g = s
                .lock("pools", Duration::from_secs(20))
                .map_err(|e| e.to_string())?;
            Ok((t.elapsed(), g))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let released = Instant::now();
    w.finish(Duration::from_secs(10))?;
    let (waited, g) = waiter.join().map_err(|_| "waiter panicked")??;
    check(g.scope() == "pools", || format!("scope {}", g.scope()))?;
    check(waited >= Duration::from_millis(250), || {
        format!("the waiter got the lock after {waited:?}, while it was held")
    })?;
    check(released.elapsed() < Duration::from_secs(2), || {
        format!("the waiter took {:?} after the release", released.elapsed())
    })?;
    // The same process cannot take a lock it already holds either.
    check(
        s.try_lock("pools").map_err(|e| e.to_string())?.is_none(),
        || "a second guard on a held lock".into(),
    )?;
    drop(g);
    check(
        s.try_lock("pools").map_err(|e| e.to_string())?.is_some(),
        || "lock not free after its guard was dropped".into(),
    )
}

fn lock_of_killed_holder_frees_after_ttl() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let s = store(&e)?;
    let mut w = Worker::spawn("hold-lock", &e.url(), "pools")?;
    check(w.line(Duration::from_secs(20))? == "HELD", || {
        "worker did not take the lock".into()
    })?;
    // Held well past its TTL while the holder lives: the renewals work.
    std::thread::sleep(TTL + Duration::from_millis(1500));
    check(
        s.try_lock("pools").map_err(|e| e.to_string())?.is_none(),
        || "the lock expired although its holder is alive".into(),
    )?;
    w.kill9();
    let killed = Instant::now();
    check(
        s.try_lock("pools").map_err(|e| e.to_string())?.is_none(),
        || "the lock of a killed holder went before its TTL".into(),
    )?;
    let g = s
        .lock("pools", Duration::from_secs(15))
        .map_err(|e| e.to_string())?;
    let after = killed.elapsed();
    check(after <= TTL + Duration::from_secs(3), || {
        format!("the dead holder's lock freed only after {after:?} (TTL {TTL:?})")
    })?;
    eprintln!("lock of a killed holder free after {after:?} (TTL {TTL:?})");
    drop(g);
    Ok(())
}

fn list_and_watch_has_no_gap() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let s = Arc::new(store(&e)?);
    let prefix = Key::new(["eps"]);
    // Something outside the prefix that shares its first letters must not be seen.
    let writer = {
        let s = s.clone();
        let prefix = prefix.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for i in 0..300u32 {
                let k = prefix.join(&format!("{}", i % 40));
                if i % 7 == 3 {
                    s.delete(&k, Expect::Any).map_err(|e| e.to_string())?;
                } else {
                    s.put(&k, i.to_string().as_bytes(), Expect::Any)
                        .map_err(|e| e.to_string())?;
                }
                s.put(&Key::new(["eps-other"]), b"x", Expect::Any)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    };
    // Snapshot in the middle of the writes.
    std::thread::sleep(Duration::from_millis(100));
    let (snapshot, mut w) = s.list_and_watch(&prefix).map_err(|e| e.to_string())?;
    let mut state: BTreeMap<Key, Versioned> = snapshot.into_iter().collect();
    let mid = state.len();
    writer.join().map_err(|_| "writer panicked")??;
    let want: BTreeMap<Key, Versioned> = s
        .list(&prefix)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let mut events = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while state != want {
        if Instant::now() > deadline {
            return Err(format!(
                "after {events} events the watched state differs from the store:\n{state:?}\n{want:?}"
            ));
        }
        match w
            .next(Duration::from_millis(500))
            .map_err(|e| e.to_string())?
        {
            Some(WatchEvent::Put(k, v)) => {
                check(k.starts_with(&prefix), || {
                    format!("event outside the prefix: {k}")
                })?;
                if let Some(old) = state.get(&k) {
                    check(v.version > old.version, || {
                        format!("{k}: version went back")
                    })?;
                }
                state.insert(k, v);
            }
            Some(WatchEvent::Delete(k)) => {
                check(k.starts_with(&prefix), || {
                    format!("event outside the prefix: {k}")
                })?;
                state.remove(&k);
            }
            None => {}
        }
        events += 1;
    }
    eprintln!(
        "snapshot had {mid} keys; {events} events brought it to the store's {} keys",
        want.len()
    );
    // Quiet now: no stray events, and a new change arrives quickly.
    check(
        w.next(Duration::from_millis(200))
            .map_err(|e| e.to_string())?
            .is_none(),
        || "an event with nothing changed".into(),
    )?;
    // Idle longer than the request timeout (2 s): the stream must not time out.
    std::thread::sleep(Duration::from_millis(2500));
    let t = Instant::now();
    s.put(&prefix.join("late"), b"1", Expect::Absent)
        .map_err(|e| e.to_string())?;
    match w.next(Duration::from_secs(5)).map_err(|e| e.to_string())? {
        Some(WatchEvent::Put(k, v)) if k == prefix.join("late") && v.value == b"1" => {}
        other => return Err(format!("expected the late put, got {other:?}")),
    }
    eprintln!("watch latency {:?}", t.elapsed());
    Ok(())
}

fn leased_key_goes_on_drop_and_after_holder_dies() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let s = store(&e)?;
    let get = |k: &Key| s.get(k).map_err(|e| e.to_string());
    // In process: present while held (past its TTL), gone the moment the guard drops.
    let k = Key::new(["hosts", "here"]);
    let g = s.put_leased(&k, b"me", TTL).map_err(|e| e.to_string())?;
    check(g.key() == &k && g.alive(), || {
        "fresh guard not alive".into()
    })?;
    std::thread::sleep(TTL + Duration::from_millis(1500));
    check(get(&k)?.map(|v| v.value) == Some(b"me".to_vec()), || {
        "leased key expired while its holder renews it".into()
    })?;
    check(g.alive(), || {
        "guard not alive while renewals succeed".into()
    })?;
    drop(g);
    check(get(&k)?.is_none(), || {
        "leased key still there after drop".into()
    })?;
    // In another process that is killed: gone within TTL + margin.
    let mut w = Worker::spawn("hold-leased", &e.url(), "there")?;
    check(w.line(Duration::from_secs(20))? == "READY", || {
        "worker did not write its key".into()
    })?;
    let k = Key::new(["hosts", "there"]);
    check(get(&k)?.is_some(), || "worker's leased key missing".into())?;
    w.kill9();
    let killed = Instant::now();
    check(get(&k)?.is_some(), || {
        "leased key went before its TTL".into()
    })?;
    let gone = wait_until(TTL + Duration::from_secs(5), || matches!(get(&k), Ok(None)));
    let after = killed.elapsed();
    check(gone && after <= TTL + Duration::from_secs(3), || {
        format!("leased key of a killed holder still there after {after:?} (TTL {TTL:?})")
    })?;
    eprintln!("leased key of a killed holder gone after {after:?} (TTL {TTL:?})");
    // A worker that lets go cleanly removes its key at once.
    let w = Worker::spawn("hold-leased", &e.url(), "clean")?;
    check(w.line(Duration::from_secs(20))? == "READY", || {
        "worker did not write its key".into()
    })?;
    w.finish(Duration::from_secs(10))?;
    check(get(&Key::new(["hosts", "clean"]))?.is_none(), || {
        "leased key still there after its holder exited cleanly".into()
    })
}

fn outage_fails_fast_naming_the_store_then_recovers() -> Result<(), String> {
    let mut e = Etcd::start(None)?;
    let s = store(&e)?;
    let k = Key::new(["nets", "a"]);
    s.put(&k, b"1", Expect::Absent).map_err(|e| e.to_string())?;
    let (_, mut w) = s
        .list_and_watch(&Key::new(["nets"]))
        .map_err(|e| e.to_string())?;
    let leased = s
        .put_leased(&Key::new(["hosts", "h1"]), b"h1", Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    e.stop()?;
    let named = format!("etcd store {} unreachable", e.url());
    let expect_down = |what: &str, r: Result<(), engine_core::Error>, t: Instant| {
        let took = t.elapsed();
        match r {
            Ok(()) => Err(format!("{what} succeeded with etcd stopped")),
            Err(err) if !err.is_unavailable() || err.kind() != ErrorKind::Busy => {
                Err(format!("{what}: wrong error {err:?}"))
            }
            Err(err) if !err.to_string().contains(&named) => {
                Err(format!("{what}: error does not name the store: {err}"))
            }
            Err(_) if took > Duration::from_secs(3) => Err(format!("{what} took {took:?}")),
            Err(_) => Ok(()),
        }
    };
    let t = Instant::now();
    expect_down("get", s.get(&k).map(|_| ()), t)?;
    let t = Instant::now();
    expect_down("put", s.put(&k, b"2", Expect::Any).map(|_| ()), t)?;
    let t = Instant::now();
    expect_down("list", s.list(&k).map(|_| ()), t)?;
    let t = Instant::now();
    expect_down("lock", s.lock("x", Duration::from_secs(1)).map(|_| ()), t)?;
    let t = Instant::now();
    expect_down("list_and_watch", s.list_and_watch(&k).map(|_| ()), t)?;
    // The open watch reports the break.
    let t = Instant::now();
    let broke = loop {
        match w.next(Duration::from_millis(200)) {
            Err(err) => break err,
            Ok(_) if t.elapsed() < Duration::from_secs(5) => {}
            Ok(ev) => return Err(format!("watch did not break with etcd stopped: {ev:?}")),
        }
    };
    check(broke.is_unavailable(), || {
        format!("watch broke with {broke:?}")
    })?;
    // The leased key's guard notices once renewals fail for longer than its TTL.
    check(
        wait_until(Duration::from_secs(5), || !leased.alive()),
        || "leased guard still alive with etcd down past its TTL".into(),
    )?;
    e.start_again()?;
    s.put(&k, b"3", Expect::Any)
        .map_err(|e| format!("after restart: {e}"))?;
    check(
        s.get(&k).map_err(|e| e.to_string())?.map(|v| v.value) == Some(b"3".to_vec()),
        || "value not written after restart".into(),
    )?;
    let (snap, mut w) = s
        .list_and_watch(&Key::new(["nets"]))
        .map_err(|e| e.to_string())?;
    check(snap.len() == 1, || {
        format!("snapshot after restart: {snap:?}")
    })?;
    s.delete(&k, Expect::Any).map_err(|e| e.to_string())?;
    check(
        matches!(w.next(Duration::from_secs(5)), Ok(Some(WatchEvent::Delete(ref d))) if *d == k),
        || "new watch missed a delete".into(),
    )?;
    // The leased key is back (renewed or written anew) and its guard alive again.
    check(
        wait_until(Duration::from_secs(8), || {
            leased.alive() && matches!(s.get(&Key::new(["hosts", "h1"])), Ok(Some(_)))
        }),
        || "leased key not restored after etcd came back".into(),
    )?;
    let g = s
        .lock("x", Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    drop(g);
    drop(leased);
    Ok(())
}

fn failover_to_the_next_endpoint() -> Result<(), String> {
    let e = Etcd::start(None)?;
    // A first endpoint where nothing listens: every call moves on to the live one.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?;
    let spec = format!("etcd://{dead},{}", e.endpoint());
    let s = EtcdStore::open(&spec).map_err(|e| e.to_string())?;
    let k = Key::new(["f"]);
    s.put(&k, b"1", Expect::Absent).map_err(|e| e.to_string())?;
    check(s.get(&k).map_err(|e| e.to_string())?.is_some(), || {
        "failover get".into()
    })?;
    let (_, mut w) = s.list_and_watch(&k).map_err(|e| e.to_string())?;
    s.delete(&k, Expect::Any).map_err(|e| e.to_string())?;
    check(
        matches!(
            w.next(Duration::from_secs(5)),
            Ok(Some(WatchEvent::Delete(_)))
        ),
        || "watch through failover missed a delete".into(),
    )?;
    check(
        s.describe() == format!("etcd:{dead},{}", e.endpoint()),
        || format!("describe() = {}", s.describe()),
    )
}

fn ipam_is_cluster_wide() -> Result<(), String> {
    const HOSTS: usize = 4;
    const EACH: usize = 16;
    let e = Etcd::start(None)?;
    let workers: Vec<Worker> = (0..HOSTS)
        .map(|_| Worker::spawn("ipam-alloc", &e.url(), &EACH.to_string()))
        .collect::<Result<_, _>>()?;
    for w in &workers {
        check(w.line(Duration::from_secs(30))? == "READY", || {
            "ipam worker not ready".into()
        })?;
    }
    let t = Instant::now();
    // Release them together.
    let mut workers = workers;
    for w in &mut workers {
        let stdin = w.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "GO").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
    }
    let mut granted: Vec<IpAddr> = Vec::new();
    let mut exhausted = 0;
    for w in &workers {
        loop {
            let line = w.line(Duration::from_secs(60))?;
            if line == "DONE" {
                break;
            } else if let Some(ip) = line.strip_prefix("ok ") {
                granted.push(ip.parse().map_err(|e| format!("{line}: {e}"))?);
            } else if line.starts_with("err Exhausted") {
                exhausted += 1;
            } else {
                return Err(format!("ipam worker: {line}"));
            }
        }
    }
    let took = t.elapsed();
    for w in workers {
        w.finish(Duration::from_secs(10))?;
    }
    let unique: BTreeSet<IpAddr> = granted.iter().copied().collect();
    check(unique.len() == granted.len(), || {
        format!("an address was handed out twice: {granted:?}")
    })?;
    // 10.77.0.0/26: 62 usable addresses, .1 is the gateway.
    check(
        granted.len() == 61 && exhausted == HOSTS * EACH - 61,
        || format!("{} granted, {exhausted} exhausted", granted.len()),
    )?;
    check(
        !unique.contains(&"10.77.0.1".parse::<IpAddr>().expect("ip")),
        || "the gateway was handed out".into(),
    )?;
    // The store agrees: one lease per granted address.
    let s: Arc<dyn StateStore> = Arc::new(store(&e)?);
    let ipam = StoreIpam::new(s, no_host_routes());
    let pool = ipam.request_pool(&pool26()).map_err(|e| e.to_string())?;
    let leases: BTreeSet<IpAddr> = ipam
        .leases(&pool.id)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|l| l.address.ip())
        .collect();
    check(leases == unique, || {
        "leases in etcd differ from what was granted".into()
    })?;
    eprintln!(
        "{HOSTS} processes allocated {} addresses from one /26 over etcd in {took:?}",
        granted.len()
    );
    Ok(())
}

/// open_global's spellings, no etcd needed: the errors must say what to write.
fn open_global_spellings() -> Result<(), String> {
    let s = open_global("etcd://127.0.0.1:2379,10.0.0.2").map_err(|e| e.to_string())?;
    check(s.describe() == "etcd:127.0.0.1:2379,10.0.0.2:2379", || {
        s.describe()
    })?;
    for bad in [
        "file:/var/lib/netloom",
        "consul://x:8500",
        "etcd://",
        "etcd://a:b",
    ] {
        match open_global(bad) {
            Ok(_) => return Err(format!("{bad:?} accepted")),
            Err(e)
                if e.kind() == ErrorKind::InvalidConfig
                    && e.to_string().contains("etcd://HOST:PORT") => {}
            Err(e) => return Err(format!("{bad:?}: unhelpful error {e:?}")),
        }
    }
    // The embedded store does not watch or lease, and says so.
    let (file, _d) = temp_file_store("etcdglob")?;
    let k = Key::new(["x"]);
    for err in [
        file.list_and_watch(&k).err(),
        file.put_leased(&k, b"", TTL).err(),
    ] {
        let err = err.ok_or("FileStore claimed to watch or lease")?;
        check(
            err.kind() == ErrorKind::Unsupported && err.to_string().contains("file:"),
            || format!("unexpected {err:?}"),
        )?;
    }
    Ok(())
}

/// What one operation costs on loopback (printed for the README; the bounds only catch a
/// pathological slowdown such as a connect timeout on every call).
fn operation_costs() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let s = store(&e)?;
    let n = 200u32;
    let err = |e: engine_core::Error| e.to_string();
    let t = Instant::now();
    for i in 0..n {
        s.put(&Key::new(["cost", &i.to_string()]), b"{}", Expect::Absent)
            .map_err(err)?;
    }
    let put = t.elapsed() / n;
    let t = Instant::now();
    for i in 0..n {
        s.get(&Key::new(["cost", &i.to_string()])).map_err(err)?;
    }
    let get = t.elapsed() / n;
    let t = Instant::now();
    let all = s.list(&Key::new(["cost"])).map_err(err)?;
    let list = t.elapsed();
    check(all.len() == n as usize, || format!("listed {}", all.len()))?;
    let t = Instant::now();
    for _ in 0..20 {
        drop(s.lock("cost", Duration::from_secs(5)).map_err(err)?);
    }
    let lock = t.elapsed() / 20;
    eprintln!(
        "etcd store on loopback: put (CAS create) {put:?}, get {get:?}, list of {n} keys {list:?}, lock+unlock {lock:?}"
    );
    check(
        put < Duration::from_millis(100) && get < Duration::from_millis(100),
        || format!("put {put:?} / get {get:?} per call"),
    )?;
    check(lock < Duration::from_millis(500), || {
        format!("lock+unlock {lock:?}")
    })
}

/// Six threads increment a counter with plain read-then-write (no CAS) under the lock: only
/// mutual exclusion keeps every increment. Waiters queue on the lock key's watch.
fn lock_serialises_unprotected_writes() -> Result<(), String> {
    let e = Etcd::start(None)?;
    let s = Arc::new(store(&e)?);
    let k = Key::new(["plain-counter"]);
    s.put_json(&k, &0u64, Expect::Absent)
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            let k = k.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for _ in 0..5 {
                    let g = s
                        .lock("counter", Duration::from_secs(30))
                        .map_err(|e| e.to_string())?;
                    let (_, n): (u64, u64) = s
                        .get_json(&k)
                        .map_err(|e| e.to_string())?
                        .ok_or("counter vanished")?;
                    // Widen the window a lost update would need.
                    std::thread::sleep(Duration::from_millis(2));
                    s.put_json(&k, &(n + 1), Expect::Any)
                        .map_err(|e| e.to_string())?;
                    drop(g);
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a locking thread panicked")??;
    }
    let took = t.elapsed();
    let (_, n): (u64, u64) = s
        .get_json(&k)
        .map_err(|e| e.to_string())?
        .ok_or("counter vanished")?;
    check(n == 30, || {
        format!("counter is {n}, expected 30: the lock let two in")
    })?;
    eprintln!("30 contended lock/increment/unlock rounds over 6 threads in {took:?}");
    Ok(())
}
