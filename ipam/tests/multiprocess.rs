//! Many processes against one FileStore, as parallel CNI binaries would be.
//!
//! The test binary re-executes itself: with NETLOOM_IPAM_WORKER set, the `worker` test acts as
//! one worker process and every other test is filtered out by `--exact worker`. Without it,
//! `worker` returns at once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use engine_core::ipam::{AddressRequest, Ipam, PoolRequest, Release};
use engine_core::ErrorKind;
use ipam::{layout, no_host_routes, StoreIpam};
use ipnetwork::IpNetwork;

const WORKER: &str = "NETLOOM_IPAM_WORKER";
const DIR: &str = "NETLOOM_IPAM_DIR";
const OWNER: &str = "NETLOOM_IPAM_OWNER";
const GO: &str = "NETLOOM_IPAM_GO";

/// The /26 every allocation test uses: 62 usable addresses, .1 is the gateway.
fn pool26() -> PoolRequest {
    pool_req(
        Some("mp"),
        vec![range("10.77.0.0/26", None, None, Some("10.77.0.1"))],
    )
}

fn churn_pool() -> PoolRequest {
    pool_req(
        Some("churn"),
        vec![range("10.78.0.0/22", None, None, Some("10.78.0.1"))],
    )
}

#[test]
fn worker() {
    let Ok(mode) = std::env::var(WORKER) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let owner = std::env::var(OWNER).unwrap();
    // Forty processes queue for the pools lock on a loaded two-core machine: be patient.
    let ipam = StoreIpam::new(store_at(&dir), no_host_routes())
        .with_lock_timeout(Duration::from_secs(120));
    if let Ok(go) = std::env::var(GO) {
        wait_for(Path::new(&go));
    }
    match mode.as_str() {
        "alloc" => {
            let pool = ipam.request_pool(&pool26()).unwrap();
            match ipam.request_address(
                &pool.id,
                &AddressRequest {
                    owner,
                    address: None,
                },
            ) {
                Ok(l) => println!("RESULT ok {}", l.address.ip()),
                Err(e) => println!("RESULT err {:?} {e}", e.kind()),
            }
        }
        "default" => {
            let pool = ipam.request_pool(&PoolRequest::default()).unwrap();
            println!("RESULT ok {}", pool.ranges[0].subnet);
        }
        "churn" => churn(&ipam, &owner),
        other => panic!("unknown worker mode {other}"),
    }
}

/// Allocates for ever, keeping three leases and releasing older ones, alternating how.
fn churn(ipam: &StoreIpam, prefix: &str) {
    let pool = ipam.request_pool(&churn_pool()).unwrap();
    let mut held: Vec<(String, IpAddr)> = Vec::new();
    for n in 0u64.. {
        let owner = format!("{prefix}-{n}");
        let lease = ipam
            .request_address(
                &pool.id,
                &AddressRequest {
                    owner: owner.clone(),
                    address: None,
                },
            )
            .unwrap();
        held.push((owner, lease.address.ip()));
        if held.len() > 3 {
            let (old, ip) = held.remove(0);
            let which = if n % 2 == 0 {
                Release::Owner(old)
            } else {
                Release::Address(ip)
            };
            ipam.release_address(&pool.id, &which).unwrap();
        }
        if n % 7 == 0 {
            // Pool requests take the pools lock: get killed holding it now and then.
            ipam.request_pool(&churn_pool()).unwrap();
            ipam.release_pool(&pool.id).unwrap();
        }
    }
}

fn wait_for(go: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !go.exists() {
        assert!(Instant::now() < deadline, "never told to start");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn spawn(mode: &str, dir: &Path, owner: &str, go: Option<&Path>, capture: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(WORKER, mode)
        .env(DIR, dir)
        .env(OWNER, owner)
        .stdin(Stdio::null())
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    if let Some(go) = go {
        cmd.env(GO, go);
    }
    cmd.spawn().unwrap()
}

/// Waits for a worker and returns what follows "RESULT " on its output.
fn result_of(mut child: Child) -> String {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "worker failed: {status}\n{out}\n{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("worker printed no result:\n{out}\n{err}"))
        .to_string()
}

/// Starts `n` workers, lets them go at the same moment, and collects their results.
fn run_together(mode: &str, dir: &Path, n: usize) -> (Vec<String>, Duration) {
    let go = dir.join("go");
    let children: Vec<Child> = (0..n)
        .map(|i| spawn(mode, dir, &format!("ctr{i}/eth0"), Some(&go), true))
        .collect();
    // Give every process time to reach its wait loop, so the requests really overlap.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    std::fs::write(&go, b"").unwrap();
    let results = children.into_iter().map(result_of).collect();
    (results, t.elapsed())
}

#[test]
fn forty_processes_forty_addresses_then_exhaustion() {
    let d = TempDir::new("mp-alloc");
    let store_dir = d.0.join("state");
    let (results, took) = run_together("alloc", &store_dir, 40);
    let mut got = BTreeSet::new();
    for r in &results {
        let a: IpAddr = r
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("worker failed: {r}"))
            .parse()
            .unwrap();
        assert!(got.insert(a), "{a} handed out twice");
    }
    assert_eq!(got.len(), 40);
    eprintln!("40 parallel processes (pool creation + allocation) took {took:?}");

    let ipam = StoreIpam::new(store_at(&store_dir), no_host_routes());
    // Forty identical pool requests raced: one pool, forty references.
    assert_eq!(ipam.get_pool("mp").unwrap().unwrap().refs, 40);
    for i in 0..21 {
        let l = ipam
            .request_address(
                "mp",
                &AddressRequest {
                    owner: format!("late{i}"),
                    address: None,
                },
            )
            .unwrap();
        assert!(got.insert(l.address.ip()), "{} handed out twice", l.address);
    }
    let err = ipam
        .request_address(
            "mp",
            &AddressRequest {
                owner: "one-too-many".into(),
                address: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert_eq!(err.to_string(), "pool mp has no free address (61 in use)");
    for bad in ["10.77.0.0", "10.77.0.1", "10.77.0.63"] {
        assert!(!got.contains(&ip(bad)), "{bad} was handed out");
    }
    assert_eq!(ipam.leases("mp").unwrap().len(), 61);
}

#[test]
fn parallel_default_pools_never_overlap() {
    let d = TempDir::new("mp-default");
    let store_dir = d.0.join("state");
    let (results, _) = run_together("default", &store_dir, 8);
    let subnets: Vec<IpNetwork> = results
        .iter()
        .map(|r| {
            r.strip_prefix("ok ")
                .unwrap_or_else(|| panic!("{r}"))
                .parse()
                .unwrap()
        })
        .collect();
    let distinct: BTreeSet<String> = subnets.iter().map(ToString::to_string).collect();
    assert_eq!(distinct.len(), 8, "{subnets:?}");
    for (i, a) in subnets.iter().enumerate() {
        for b in &subnets[i + 1..] {
            assert!(
                !a.contains(b.network()) && !b.contains(a.network()),
                "{a} overlaps {b}"
            );
        }
    }
}

/// A tiny xorshift: random kill moments without a dependency; the seed is printed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_minus_nine_leaves_a_consistent_store() {
    let d = TempDir::new("mp-kill");
    let store_dir = d.0.join("state");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 test seed {seed}");
    let mut rng = Rng(seed);
    let ipam = StoreIpam::new(store_at(&store_dir), no_host_routes());
    ipam.request_pool(&churn_pool()).unwrap();
    let mut kills = 0;
    for round in 0..5 {
        let mut children: Vec<Child> = (0..6)
            .map(|w| spawn("churn", &store_dir, &format!("r{round}w{w}"), None, false))
            .collect();
        // Kill only once this round's workers are busy allocating, however slow start-up is.
        let round_prefix = format!("r{round}w");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ipam
            .leases("churn")
            .unwrap()
            .iter()
            .any(|l| l.owner.starts_with(&round_prefix))
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: no worker allocated anything"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        while !children.is_empty() {
            std::thread::sleep(Duration::from_millis(rng.below(60)));
            let mut child = children.remove(rng.below(children.len() as u64) as usize);
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("worker ended on its own ({status}) instead of being killed:\n{err}");
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
        }
    }
    eprintln!("killed {kills} workers");

    let store = ipam.store().clone();
    let leases = ipam.leases("churn").unwrap();
    assert!(
        !leases.is_empty(),
        "the workers allocated nothing before being killed"
    );
    let mut by_owner: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for l in &leases {
        by_owner.entry(&l.owner).or_default().push(l.address.ip());
        assert_ne!(l.address.ip(), ip("10.78.0.1"), "the gateway was leased");
    }
    for (owner, ips) in &by_owner {
        assert_eq!(ips.len(), 1, "{owner} holds {ips:?}");
        // The index is written before the lease and removed after it: every lease has one.
        let index = store.get(&layout::owner("churn", owner)).unwrap();
        assert_eq!(
            index.map(|v| v.value),
            Some(ips[0].to_string().into_bytes()),
            "index of {owner}"
        );
    }
    // Lease keys are unique per address by construction; check the listing agrees.
    let distinct: BTreeSet<IpAddr> = leases.iter().map(|l| l.address.ip()).collect();
    assert_eq!(distinct.len(), leases.len());

    let index_entries = store.list(&layout::owners("churn")).unwrap().len();
    eprintln!(
        "after the kills: {} leases, {} index entries without a lease",
        leases.len(),
        index_entries - leases.len()
    );
    let freed = ipam.gc("churn", &[]).unwrap();
    assert_eq!(freed.len(), leases.len());
    assert!(ipam.leases("churn").unwrap().is_empty());
    assert!(
        store.list(&layout::owners("churn")).unwrap().is_empty(),
        "gc left index entries"
    );
    let mut again = BTreeSet::new();
    for i in 0..20 {
        let l = ipam
            .request_address(
                "churn",
                &AddressRequest {
                    owner: format!("after{i}"),
                    address: None,
                },
            )
            .unwrap();
        assert!(again.insert(l.address.ip()));
    }
    // The pools lock was not left held by a killed worker.
    ipam.request_pool(&churn_pool()).unwrap();
}
