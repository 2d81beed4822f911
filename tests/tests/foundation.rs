//! Foundation integration tests: namespaces, the state store across processes, and the undo
//! journal surviving kill -9, all on the real kernel inside fake-host namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::journal::{self, CoreUndoer, Txn, UndoStep};
use engine_core::netns::Netns;
use engine_core::store::file::FileStore;
use engine_core::{Expect, Key, StateStore, StateStoreExt};
use tests::fakehost::run_in_any;
use tests::{names, run_main, Cap, FakeHost, Suite};

fn main() {
    let mut s = Suite::new();
    s.worker("cas-increment", worker_cas_increment)
        .worker("store-churn", worker_store_churn)
        .worker("journal-crash", worker_journal_crash);
    s.test(
        "netns::create_run_and_drop",
        &[Cap::Root],
        netns_create_run_and_drop,
    )
    .test(
        "netns::command_enters_the_namespace",
        &[Cap::Root],
        netns_command_enters,
    )
    .test(
        "harness::fake_hosts_are_isolated",
        &[Cap::Root, Cap::Bridge],
        fake_hosts_are_isolated,
    )
    .test(
        "store::cas_across_processes",
        &[],
        store_cas_across_processes,
    )
    .test("store::kill9_during_writes", &[], store_kill9_during_writes)
    .test(
        "journal::kill9_mid_operation_is_rolled_back",
        &[Cap::Root, Cap::Veth],
        journal_kill9_rolled_back,
    )
    .test(
        "engine::none_and_host_drivers",
        &[Cap::Root, Cap::Veth],
        none_and_host_drivers,
    );
    run_main(s)
}

fn ensure(cond: bool, msg: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg.into())
    }
}

// ---------------------------------------------------------------- netns

fn netns_create_run_and_drop() -> Result<(), String> {
    let name = names::unique("ns");
    let path = PathBuf::from("/run/netns").join(&name);
    {
        let ns = Netns::create_named(&name).map_err(|e| e.to_string())?;
        ensure(path.exists(), "bind mount missing")?;
        let host_ino = Netns::current()
            .map_err(|e| e.to_string())?
            .inode()
            .map_err(|e| e.to_string())?;
        let inside = ns
            .run(|| Netns::current().and_then(|n| n.inode()))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        ensure(
            inside == ns.inode().map_err(|e| e.to_string())?,
            "run() did not execute inside the namespace",
        )?;
        ensure(inside != host_ino, "new namespace has the host's inode")?;
        // The calling thread never moved.
        let after = Netns::current()
            .map_err(|e| e.to_string())?
            .inode()
            .map_err(|e| e.to_string())?;
        ensure(after == host_ino, "caller thread changed namespace")?;
        // Creating the same name again is a clear conflict.
        let again = Netns::create_named(&name)
            .err()
            .ok_or("duplicate netns name accepted")?;
        ensure(
            again.kind() == engine_core::ErrorKind::Conflict,
            format!("wrong kind: {again}"),
        )?;
    }
    ensure(!path.exists(), "namespace not removed on drop")?;
    let err = Netns::open(&path)
        .err()
        .ok_or("opened a removed namespace")?;
    ensure(
        err.kind() == engine_core::ErrorKind::NotFound,
        format!("wrong kind: {err}"),
    )
}

fn netns_command_enters() -> Result<(), String> {
    let host = FakeHost::new("cmd")?;
    host.sh(&["ip", "link", "add", "probe0", "type", "bridge"])?;
    let out = host.sh(&["ip", "-o", "link", "show"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        text.contains("probe0"),
        "link created in the fake host is not visible there",
    )?;
    // ... and not in the real host.
    let root = Command::new("ip")
        .args(["-o", "link", "show", "probe0"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(
        !root.status.success(),
        "link leaked into the root namespace",
    )
}

fn fake_hosts_are_isolated() -> Result<(), String> {
    // Two hosts use the same bridge name and subnet at once: each sees only its own.
    let a = FakeHost::new("isoa")?;
    let b = FakeHost::new("isob")?;
    for h in [&a, &b] {
        h.sh(&["ip", "link", "add", "br0", "type", "bridge"])?;
        h.sh(&["ip", "addr", "add", "10.99.0.1/24", "dev", "br0"])?;
    }
    let out = a.sh(&["ip", "-o", "addr", "show", "dev", "br0"])?;
    ensure(
        String::from_utf8_lossy(&out.stdout)
            .matches("10.99.0.1")
            .count()
            == 1,
        "unexpected addresses on br0",
    )
}

// ---------------------------------------------------------------- store across processes

fn spawn_worker(name: &str, env: &[(&str, &str)]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.env("NETLOOM_TEST_WORKER", name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().map_err(|e| format!("spawn worker {name}: {e}"))
}

struct TempState(PathBuf);
impl TempState {
    fn new(tag: &str) -> Self {
        TempState(std::env::temp_dir().join(names::unique(tag)))
    }
}
impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_store(dir: &Path) -> Result<FileStore, String> {
    FileStore::open(dir).map_err(|e| e.to_string())
}

fn worker_cas_increment() -> i32 {
    let Ok(dir) = std::env::var("STATE") else {
        return 2;
    };
    let Ok(store) = FileStore::open(dir) else {
        return 3;
    };
    let key = Key::new(["counter"]);
    for _ in 0..50 {
        loop {
            let Ok(Some((v, n))) = store.get_json::<u64>(&key) else {
                return 4;
            };
            match store.put_json(&key, &(n + 1), Expect::Version(v)) {
                Ok(o) if o.is_written() => break,
                Ok(_) => continue,
                Err(_) => return 5,
            }
        }
    }
    0
}

fn store_cas_across_processes() -> Result<(), String> {
    let dir = TempState::new("cas");
    let store = open_store(&dir.0)?;
    store
        .put_json(&Key::new(["counter"]), &0u64, Expect::Absent)
        .map_err(|e| e.to_string())?;
    let d = dir.0.to_string_lossy().into_owned();
    let children: Vec<Child> = (0..8)
        .map(|_| spawn_worker("cas-increment", &[("STATE", &d)]))
        .collect::<Result<_, _>>()?;
    for mut c in children {
        let st = c.wait().map_err(|e| e.to_string())?;
        ensure(st.success(), format!("worker failed: {st}"))?;
    }
    let (_, n) = store
        .get_json::<u64>(&Key::new(["counter"]))
        .map_err(|e| e.to_string())?
        .ok_or("counter gone")?;
    ensure(
        n == 400,
        format!("8 processes x 50 CAS increments gave {n}, want 400"),
    )
}

fn worker_store_churn() -> i32 {
    let Ok(dir) = std::env::var("STATE") else {
        return 2;
    };
    let Ok(store) = FileStore::open(dir) else {
        return 3;
    };
    let me = std::process::id();
    let mut i: u64 = 0;
    loop {
        // A value big enough that a torn write would be visible.
        let value = vec![(i % 251) as u8; 4096 + (i as usize % 4096)];
        let key = Key::new(["churn", &format!("k{}", i % 16)]);
        if store.put(&key, &value, Expect::Any).is_err() {
            return 4;
        }
        if i % 3 == 0
            && store
                .delete(
                    &Key::new(["churn", &format!("k{}", (i + 7) % 16)]),
                    Expect::Any,
                )
                .is_err()
        {
            return 5;
        }
        let _guard = store.lock("churn-lock", Duration::from_secs(5));
        i += 1;
        if i == 10 {
            let _ = std::fs::write(
                format!("{}/ready-{me}", std::env::var("STATE").unwrap_or_default()),
                b"",
            );
        }
    }
}

fn store_kill9_during_writes() -> Result<(), String> {
    let dir = TempState::new("churn");
    let store = open_store(&dir.0)?;
    let d = dir.0.to_string_lossy().into_owned();
    for round in 0..5 {
        let mut children: Vec<Child> = (0..4)
            .map(|_| spawn_worker("store-churn", &[("STATE", &d)]))
            .collect::<Result<_, _>>()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        for c in &children {
            let ready = dir.0.join(format!("ready-{}", c.id()));
            while !ready.exists() {
                ensure(Instant::now() < deadline, "churn worker never got going")?;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        std::thread::sleep(Duration::from_millis(20 + round * 7));
        for c in &mut children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
        // Every value is whole, the named lock is free again, and the store still takes writes.
        for (k, v) in store
            .list(&Key::new(["churn"]))
            .map_err(|e| format!("after kill -9: {e}"))?
        {
            let first = v
                .value
                .first()
                .copied()
                .ok_or(format!("{k}: empty value"))?;
            ensure(
                v.value.len() >= 4096 && v.value.iter().all(|b| *b == first),
                format!("{k}: torn value"),
            )?;
        }
        let lock = store.try_lock("churn-lock").map_err(|e| e.to_string())?;
        ensure(lock.is_some(), "a killed process's lock was not released")?;
        store
            .put(&Key::new(["after-churn"]), b"x", Expect::Any)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---------------------------------------------------------------- journal crash recovery

/// Starts an operation that creates a veth pair in the fake host, journaling first, then
/// signals readiness and hangs: the test kills it with SIGKILL at that point.
fn worker_journal_crash() -> i32 {
    let (Ok(dir), Ok(ns_path)) = (std::env::var("STATE"), std::env::var("HOSTNS")) else {
        return 2;
    };
    let Ok(store) = FileStore::open(&dir) else {
        return 3;
    };
    let store: Arc<dyn StateStore> = Arc::new(store);
    let undoer = Arc::new(CoreUndoer::new(store.clone(), None));
    let Ok(mut txn) = Txn::begin(
        store.clone(),
        undoer,
        "network/crashnet",
        "test add c1/eth0",
    ) else {
        return 4;
    };
    let ns = PathBuf::from(&ns_path);
    if txn
        .record(UndoStep::DeleteLink {
            netns: Some(ns.clone()),
            name: "vcrash0".into(),
        })
        .is_err()
    {
        return 5;
    }
    let Ok(host) = Netns::open(&ns) else { return 6 };
    let out = run_in_any(
        &host,
        &[
            "ip", "link", "add", "vcrash0", "type", "veth", "peer", "name", "vcrash1",
        ],
    );
    if !matches!(out, Ok(ref o) if o.status.success()) {
        return 7;
    }
    let key = Key::new(["networks", "crashnet", "endpoints", "c1"]);
    if txn
        .record(UndoStep::RestoreKey {
            key: key.to_string(),
            value: None,
        })
        .is_err()
    {
        return 8;
    }
    if store.put(&key, b"{}", Expect::Any).is_err() {
        return 9;
    }
    let _ = std::fs::write(format!("{dir}/ready"), b"");
    // Hang with the operation half-done; the parent kills us here.
    std::thread::sleep(Duration::from_secs(60));
    std::mem::forget(txn);
    10
}

fn journal_kill9_rolled_back() -> Result<(), String> {
    let host = FakeHost::new("jrnl")?;
    let dir = TempState::new("jrnl");
    let store: Arc<dyn StateStore> = Arc::new(open_store(&dir.0)?);
    let d = dir.0.to_string_lossy().into_owned();
    let ns = host.netns().path().to_string_lossy().into_owned();
    let mut child = spawn_worker("journal-crash", &[("STATE", &d), ("HOSTNS", &ns)])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.0.join("ready").exists() {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("worker exited early: {st}"));
        }
        ensure(
            Instant::now() < deadline,
            "worker never reached the crash point",
        )?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let undoer = CoreUndoer::new(store.clone(), None);
    // While the operation's process lives, recovery must leave it alone.
    let r =
        journal::recover(store.as_ref(), &undoer, "network/crashnet").map_err(|e| e.to_string())?;
    ensure(r.rolled_back.is_empty(), "recovery undid a live operation")?;
    ensure(
        host.sh(&["ip", "link", "show", "vcrash0"]).is_ok(),
        "veth missing before the crash",
    )?;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| e.to_string())?;
    let _ = child.wait();

    let r =
        journal::recover(store.as_ref(), &undoer, "network/crashnet").map_err(|e| e.to_string())?;
    ensure(
        r.failed.is_empty(),
        format!(
            "recovery failed: {:?}",
            r.failed
                .iter()
                .map(|(_, e)| e.to_string())
                .collect::<Vec<_>>()
        ),
    )?;
    ensure(
        r.rolled_back.len() == 1,
        format!("rolled back {} records, want 1", r.rolled_back.len()),
    )?;
    ensure(
        host.sh(&["ip", "link", "show", "vcrash0"]).is_err(),
        "veth of the crashed operation still exists",
    )?;
    let ep = store
        .get(&Key::new(["networks", "crashnet", "endpoints", "c1"]))
        .map_err(|e| e.to_string())?;
    ensure(
        ep.is_none(),
        "state entry of the crashed operation still exists",
    )?;
    ensure(
        store
            .list(&Key::new(["journal"]))
            .map_err(|e| e.to_string())?
            .is_empty(),
        "journal not cleared",
    )
}

// ---------------------------------------------------------------- none and host drivers

/// The two drivers without links, through the engine: `none` leaves a sandbox with only its
/// loopback (up) and never touches an interface of another network with the same name; `host`
/// accepts only the host's own namespace; both refuse subnets.
fn none_and_host_drivers() -> Result<(), String> {
    use engine_core::engine::{AttachRequest, Engine, OverlapPolicy, SandboxSetup};
    use engine_core::model::{NetworkSpec, Sandbox};
    use engine_core::sandbox::NetlinkSandboxes;
    use engine_core::{AttachmentKey, Options};

    let mut host = FakeHost::new("local")?;
    let store: Arc<dyn StateStore> =
        Arc::new(FileStore::open(host.state_dir()).map_err(|e| e.to_string())?);
    let ipam = Arc::new(ipam::StoreIpam::new(
        store.clone(),
        Box::new(|| Ok(Vec::new())),
    ));
    let engine = Engine::new(
        store,
        ipam,
        drivers::registry(),
        None,
        Arc::new(NetlinkSandboxes),
        Some(host.netns().path().to_path_buf()),
    );
    let spec = |driver: &str| NetworkSpec {
        name: format!("{driver}net"),
        driver: driver.into(),
        ..Default::default()
    };
    let attach = |net: &str, cid: &str, netns: &Path| AttachRequest {
        network_id: net.into(),
        key: AttachmentKey::new(cid, "eth0").expect("valid key"),
        sandbox: SandboxSetup::Configure(Sandbox {
            netns_path: netns.to_path_buf(),
        }),
        static_addresses: Vec::new(),
        mac: None,
        ports: Vec::new(),
        extra_routes: Vec::new(),
        options: Options::new(),
    };
    let links = |ns: &Path| -> Result<String, String> {
        let out = tests::fakehost::run_in_path(ns, &["ip", "-o", "link", "show"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // none: loopback up, nothing else; DEL keeps a same-named interface of someone else.
    let none = engine
        .ensure_network("nonenet", &spec("none"), OverlapPolicy::Reject)
        .map_err(|e| e.to_string())?;
    let c = host.container("c")?;
    let a = engine
        .attach(&attach(&none.id, "ctr-none", &c))
        .map_err(|e| e.to_string())?;
    ensure(a.endpoint.addresses.is_empty(), "none gave an address")?;
    let l = links(&c)?;
    ensure(
        l.lines().count() == 1 && l.contains("lo:") && l.contains("UP"),
        format!("a none sandbox should hold only lo, up: {l}"),
    )?;
    let key = AttachmentKey::new("ctr-none", "eth0").map_err(|e| e.to_string())?;
    ensure(
        engine
            .check(&none.id, &key)
            .map_err(|e| e.to_string())?
            .is_empty(),
        "CHECK of a healthy none endpoint found drift",
    )?;
    tests::fakehost::run_in_path(&c, &["ip", "link", "set", "lo", "down"])?;
    let drift = engine.check(&none.id, &key).map_err(|e| e.to_string())?;
    ensure(drift.len() == 1, format!("CHECK missed lo down: {drift:?}"))?;
    // Someone else's eth0 in the same sandbox survives the none endpoint's detach.
    tests::fakehost::run_in_path(
        &c,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth9",
        ],
    )?;
    engine
        .detach(&none.id, &key, None)
        .map_err(|e| e.to_string())?;
    ensure(
        links(&c)?.contains("eth0"),
        "detaching a none endpoint removed another network's eth0",
    )?;
    ensure(
        engine
            .get_endpoint(&none.id, &key)
            .map_err(|e| e.to_string())?
            .is_none(),
        "none endpoint record left",
    )?;

    // host: the host's own namespace only.
    let hostnet = engine
        .ensure_network("hostnet", &spec("host"), OverlapPolicy::Reject)
        .map_err(|e| e.to_string())?;
    engine
        .attach(&attach(&hostnet.id, "ctr-host", host.netns().path()))
        .map_err(|e| e.to_string())?;
    let other = host.container("other")?;
    let err = engine
        .attach(&attach(&hostnet.id, "ctr-other", &other))
        .err()
        .ok_or("the host driver accepted a namespace that is not the host's")?;
    ensure(
        err.to_string().contains("share the host"),
        format!("host driver error: {err}"),
    )?;
    let other_key = AttachmentKey::new("ctr-other", "eth0").map_err(|e| e.to_string())?;
    ensure(
        engine
            .get_endpoint(&hostnet.id, &other_key)
            .map_err(|e| e.to_string())?
            .is_none(),
        "a refused host attach left a record",
    )?;
    let host_key = AttachmentKey::new("ctr-host", "eth0").map_err(|e| e.to_string())?;
    engine
        .detach(&hostnet.id, &host_key, None)
        .map_err(|e| e.to_string())?;

    // Both refuse subnets, with the reason.
    let mut with_subnet = spec("none");
    with_subnet.subnets.push(engine_core::model::SubnetConfig {
        subnet: "10.9.9.0/24".parse().map_err(|e| format!("{e}"))?,
        gateway: None,
        pool_id: String::new(),
    });
    let err = engine
        .ensure_network("badnone", &with_subnet, OverlapPolicy::Reject)
        .err()
        .ok_or("none accepted a subnet")?;
    ensure(
        err.to_string().contains("no subnet"),
        format!("none driver subnet error: {err}"),
    )?;
    engine.delete_network(&none.id).map_err(|e| e.to_string())?;
    engine
        .delete_network(&hostnet.id)
        .map_err(|e| e.to_string())?;
    Ok(())
}
