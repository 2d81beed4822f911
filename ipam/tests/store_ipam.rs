//! StoreIpam over a FileStore: pools, leases, conflicts, exhaustion, gc, default pools.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use common::*;
use engine_core::ipam::{AddressRequest, Ipam, Lease, PoolRequest, Release};
use engine_core::{ErrorKind, Expect};
use ipam::{layout, DefaultPool, DefaultPools, StoreIpam};

fn req(owner: &str) -> AddressRequest {
    AddressRequest {
        owner: owner.into(),
        address: None,
    }
}

fn static_req(owner: &str, a: &str) -> AddressRequest {
    AddressRequest {
        owner: owner.into(),
        address: Some(ip(a)),
    }
}

fn addr(l: &Lease) -> String {
    l.address.ip().to_string()
}

/// A /24 pool with gateway .1, id "net".
fn net24(ipam: &StoreIpam) {
    ipam.request_pool(&pool_req(
        Some("net"),
        vec![range("10.1.0.0/24", None, None, Some("10.1.0.1"))],
    ))
    .unwrap();
}

#[test]
fn identical_pool_requests_share_one_pool() {
    let (ipam, _d) = ipam("refs", &[]);
    let r = pool_req(
        None,
        vec![range("10.1.0.0/24", None, None, Some("10.1.0.1"))],
    );
    let p = ipam.request_pool(&r).unwrap();
    assert_eq!(p.id, "10.1.0.0/24");
    assert_eq!(p.refs, 1);
    // Start and end are stored filled in.
    assert_eq!(p.ranges[0].start, Some(ip("10.1.0.1")));
    assert_eq!(p.ranges[0].end, Some(ip("10.1.0.254")));
    // The same effective ranges written differently are the same request.
    let explicit = pool_req(
        None,
        vec![range(
            "10.1.0.0/24",
            Some("10.1.0.1"),
            Some("10.1.0.254"),
            Some("10.1.0.1"),
        )],
    );
    assert_eq!(ipam.request_pool(&explicit).unwrap().refs, 2);
    assert_eq!(ipam.list_pools().unwrap().len(), 1);
    let lease = ipam.request_address(&p.id, &req("a")).unwrap();
    ipam.release_pool(&p.id).unwrap();
    assert_eq!(ipam.get_pool(&p.id).unwrap().unwrap().refs, 1);
    assert_eq!(ipam.leases(&p.id).unwrap(), vec![lease]);
    ipam.release_pool(&p.id).unwrap();
    assert_eq!(ipam.get_pool(&p.id).unwrap(), None);
    assert_eq!(
        ipam.release_pool(&p.id).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(ipam.leases(&p.id).unwrap_err().kind(), ErrorKind::NotFound);
    // Leases went with the pool: a new pool with the same id starts afresh.
    let p = ipam.request_pool(&r).unwrap();
    assert_eq!(p.refs, 1);
    assert!(ipam.leases(&p.id).unwrap().is_empty());
    assert_eq!(
        addr(&ipam.request_address(&p.id, &req("b")).unwrap()),
        "10.1.0.2"
    );
}

#[test]
fn same_id_with_other_settings_is_a_conflict() {
    let (ipam, _d) = ipam("same-id", &[]);
    net24(&ipam);
    let mut other = pool_req(
        Some("net"),
        vec![range("10.1.0.0/24", None, None, Some("10.1.0.254"))],
    );
    let err = ipam.request_pool(&other).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        err.to_string()
            .starts_with("pool net already exists with different settings"),
        "{err}"
    );
    other.ranges[0].gateway = Some(ip("10.1.0.1"));
    other.reserved = vec![ip("10.1.0.9")];
    assert_eq!(
        ipam.request_pool(&other).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    other.reserved.clear();
    assert_eq!(ipam.request_pool(&other).unwrap().refs, 2);
}

#[test]
fn overlapping_subnets_name_the_other_pool() {
    let (ipam, _d) = ipam("overlap", &[]);
    ipam.request_pool(&pool_req(
        Some("web"),
        vec![range("10.1.0.0/16", None, None, None)],
    ))
    .unwrap();
    let err = ipam
        .request_pool(&pool_req(
            Some("db"),
            vec![range("10.1.0.0/24", None, None, None)],
        ))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        err.to_string(),
        "subnet 10.1.0.0/24 overlaps pool web (subnet 10.1.0.0/16)"
    );
    let err = ipam
        .request_pool(&pool_req(
            None,
            vec![range("10.1.0.0/16", None, None, None)],
        ))
        .unwrap_err();
    assert_eq!(err.to_string(), "subnet 10.1.0.0/16 overlaps pool web");
    // Neighbours and the other family are fine.
    ipam.request_pool(&pool_req(
        Some("db"),
        vec![range("10.2.0.0/24", None, None, None)],
    ))
    .unwrap();
    ipam.request_pool(&pool_req(
        Some("v6"),
        vec![range("fd00::/64", None, None, None)],
    ))
    .unwrap();
    assert_eq!(ipam.list_pools().unwrap().len(), 3);
}

#[test]
fn invalid_pools_are_refused_and_not_stored() {
    let (ipam, _d) = ipam("invalid", &[]);
    let cases = [
        (
            range("10.1.0.0/24", Some("10.1.0.50"), Some("10.1.0.10"), None),
            "after range end",
        ),
        (
            range("10.1.0.0/24", Some("10.1.1.5"), None, None),
            "range start 10.1.1.5 is outside subnet 10.1.0.0/24",
        ),
        (
            range("10.1.0.0/24", None, None, Some("10.2.0.1")),
            "gateway 10.2.0.1 is outside subnet",
        ),
        (range("10.1.0.7/24", None, None, None), "host bits"),
        (range("10.1.0.0/32", None, None, None), "too small"),
    ];
    for (r, msg) in cases {
        let err = ipam.request_pool(&pool_req(None, vec![r])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        assert!(err.to_string().contains(msg), "{err} / {msg}");
    }
    let mut r = pool_req(None, vec![range("10.1.0.0/24", None, None, None)]);
    r.reserved = vec![ip("10.3.0.1")];
    assert_eq!(
        ipam.request_pool(&r).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        ipam.request_pool(&pool_req(Some(""), r.ranges.clone()))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
    assert!(ipam.list_pools().unwrap().is_empty());
}

#[test]
fn allocation_is_idempotent_and_skips_the_gateway() {
    let (ipam, _d) = ipam("idem", &[]);
    net24(&ipam);
    let a = ipam.request_address("net", &req("cid1/eth0")).unwrap();
    assert_eq!(a.address.to_string(), "10.1.0.2/24");
    assert_eq!(a.gateway, Some(ip("10.1.0.1")));
    assert_eq!(a.pool_id, "net");
    assert_eq!(a.owner, "cid1/eth0");
    assert_eq!(ipam.request_address("net", &req("cid1/eth0")).unwrap(), a);
    // Asking statically for what one already holds is the same request.
    assert_eq!(
        ipam.request_address("net", &static_req("cid1/eth0", "10.1.0.2"))
            .unwrap(),
        a
    );
    let b = ipam.request_address("net", &req("cid1/eth1")).unwrap();
    assert_eq!(addr(&b), "10.1.0.3");
    assert_eq!(ipam.leases("net").unwrap(), vec![a, b]);
    assert_eq!(
        ipam.request_address("nope", &req("x")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        ipam.request_address("net", &req("")).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
}

#[test]
fn released_addresses_are_not_reused_at_once_and_the_search_wraps() {
    let (ipam, _d) = ipam("reuse", &[]);
    ipam.request_pool(&pool_req(
        Some("p"),
        vec![range("10.1.0.0/29", None, None, Some("10.1.0.1"))],
    ))
    .unwrap();
    let a = ipam.request_address("p", &req("a")).unwrap();
    assert_eq!(addr(&a), "10.1.0.2");
    assert_eq!(
        addr(&ipam.request_address("p", &req("b")).unwrap()),
        "10.1.0.3"
    );
    ipam.release_address("p", &Release::Owner("a".into()))
        .unwrap();
    assert_eq!(
        addr(&ipam.request_address("p", &req("c")).unwrap()),
        "10.1.0.4"
    );
    assert_eq!(
        addr(&ipam.request_address("p", &req("d")).unwrap()),
        "10.1.0.5"
    );
    assert_eq!(
        addr(&ipam.request_address("p", &req("e")).unwrap()),
        "10.1.0.6"
    );
    // Past the end (10.1.0.7 is the broadcast) the search wraps to the freed 10.1.0.2.
    assert_eq!(
        addr(&ipam.request_address("p", &req("f")).unwrap()),
        "10.1.0.2"
    );
    let err = ipam.request_address("p", &req("g")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert_eq!(err.to_string(), "pool p has no free address (5 in use)");
    ipam.release_address("p", &Release::Address(ip("10.1.0.4")))
        .unwrap();
    assert_eq!(
        addr(&ipam.request_address("p", &req("g")).unwrap()),
        "10.1.0.4"
    );
}

#[test]
fn exhaustion_leaves_nothing_behind() {
    let (ipam, _d) = ipam("exhaust", &[]);
    let p = ipam
        .request_pool(&pool_req(
            None,
            vec![range("10.1.0.0/26", None, None, Some("10.1.0.1"))],
        ))
        .unwrap();
    let mut seen = BTreeSet::new();
    for i in 0..61 {
        let l = ipam.request_address(&p.id, &req(&format!("c{i}"))).unwrap();
        assert!(seen.insert(l.address.ip()));
    }
    let err = ipam.request_address(&p.id, &req("late")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert_eq!(
        err.to_string(),
        "pool 10.1.0.0/26 has no free address (61 in use)"
    );
    assert!(ipam
        .store()
        .get(&layout::owner(&p.id, "late"))
        .unwrap()
        .is_none());
    assert!(
        !seen.contains(&ip("10.1.0.1"))
            && !seen.contains(&ip("10.1.0.0"))
            && !seen.contains(&ip("10.1.0.63"))
    );
}

#[test]
fn static_requests() {
    let (ipam, _d) = ipam("static", &[]);
    let mut r = pool_req(
        Some("s"),
        vec![range(
            "10.1.0.0/24",
            Some("10.1.0.100"),
            Some("10.1.0.200"),
            Some("10.1.0.1"),
        )],
    );
    r.reserved = vec![ip("10.1.0.150")];
    ipam.request_pool(&r).unwrap();
    let x = ipam
        .request_address("s", &static_req("x", "10.1.0.120"))
        .unwrap();
    assert_eq!(x.address.to_string(), "10.1.0.120/24");
    // Outside start..end but inside the subnet, like Docker's --ip.
    assert_eq!(
        addr(
            &ipam
                .request_address("s", &static_req("w", "10.1.0.20"))
                .unwrap()
        ),
        "10.1.0.20"
    );

    let err = ipam
        .request_address("s", &static_req("y", "10.1.0.120"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        err.to_string(),
        "address 10.1.0.120 is already leased to x in pool s"
    );
    // Nothing half-allocated for y.
    assert!(ipam
        .store()
        .get(&layout::owner("s", "y"))
        .unwrap()
        .is_none());

    let conflict = [
        ("10.1.0.1", "is the gateway of pool s"),
        ("10.1.0.150", "is reserved in pool s"),
    ];
    for (a, msg) in conflict {
        let err = ipam.request_address("s", &static_req("y", a)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{a}");
        assert!(err.to_string().contains(msg), "{err}");
    }
    let invalid = [
        ("10.1.0.0", "network address"),
        ("10.1.0.255", "broadcast address"),
        ("10.2.0.5", "is not in pool s (10.1.0.0/24)"),
        ("fd00::5", "is not in pool s"),
    ];
    for (a, msg) in invalid {
        let err = ipam.request_address("s", &static_req("y", a)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{a}");
        assert!(err.to_string().contains(msg), "{err}");
    }
    let err = ipam
        .request_address("s", &static_req("x", "10.1.0.121"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        err.to_string().contains("x already holds 10.1.0.120"),
        "{err}"
    );
    // Dynamic allocation skips the static lease.
    ipam.request_address("s", &static_req("z", "10.1.0.100"))
        .unwrap();
    assert_eq!(
        addr(&ipam.request_address("s", &req("d1")).unwrap()),
        "10.1.0.101"
    );
    assert!(ipam
        .store()
        .get(&layout::owner("s", "y"))
        .unwrap()
        .is_none());
}

#[test]
fn release_is_idempotent() {
    let (ipam, _d) = ipam("release", &[]);
    net24(&ipam);
    let a = ipam.request_address("net", &req("a")).unwrap();
    ipam.request_address("net", &req("b")).unwrap();
    ipam.release_address("net", &Release::Owner("a".into()))
        .unwrap();
    ipam.release_address("net", &Release::Owner("a".into()))
        .unwrap();
    ipam.release_address("net", &Release::Owner("never".into()))
        .unwrap();
    ipam.release_address("net", &Release::Address(a.address.ip()))
        .unwrap();
    ipam.release_address("missing-pool", &Release::Owner("a".into()))
        .unwrap();
    ipam.release_address("net", &Release::Address(ip("10.1.0.3")))
        .unwrap();
    assert!(ipam.leases("net").unwrap().is_empty());
    // Both the lease and the owner index are gone.
    assert!(ipam
        .store()
        .list(&layout::owners("net"))
        .unwrap()
        .is_empty());
    assert!(ipam
        .store()
        .list(&layout::leases("net"))
        .unwrap()
        .is_empty());
}

#[test]
fn gc_frees_everything_not_live() {
    let (ipam, _d) = ipam("gc", &[]);
    net24(&ipam);
    for o in ["a", "b", "c"] {
        ipam.request_address("net", &req(o)).unwrap();
    }
    // An index entry left by a request that died before writing its lease.
    ipam.store()
        .put(&layout::owner("net", "dead"), b"10.1.0.77", Expect::Absent)
        .unwrap();
    let freed = ipam.gc("net", &["b".to_string()]).unwrap();
    let owners: Vec<&str> = freed.iter().map(|l| l.owner.as_str()).collect();
    assert_eq!(owners, vec!["a", "c"]);
    assert_eq!(freed[0].address.to_string(), "10.1.0.2/24");
    let left = ipam.leases("net").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].owner, "b");
    let index: Vec<String> = ipam
        .store()
        .list(&layout::owners("net"))
        .unwrap()
        .into_iter()
        .filter_map(|(k, _)| k.last())
        .collect();
    assert_eq!(index, vec!["b"]);
    assert!(ipam.gc("net", &["b".to_string()]).unwrap().is_empty());
    assert!(ipam.gc("no-such-pool", &[]).unwrap().is_empty());
}

#[test]
fn crash_leftovers_are_repaired() {
    let (ipam, _d) = ipam("repair", &[]);
    net24(&ipam);
    let store = ipam.store().clone();
    // Died between the index write and the lease write: the next request completes it.
    store
        .put(&layout::owner("net", "a"), b"10.1.0.40", Expect::Absent)
        .unwrap();
    assert_eq!(
        addr(&ipam.request_address("net", &req("a")).unwrap()),
        "10.1.0.40"
    );
    // A stale index entry naming someone else's address is replaced.
    store
        .put(&layout::owner("net", "b"), b"10.1.0.40", Expect::Absent)
        .unwrap();
    let b = ipam.request_address("net", &req("b")).unwrap();
    assert_ne!(addr(&b), "10.1.0.40");
    assert_eq!(
        store
            .get(&layout::owner("net", "b"))
            .unwrap()
            .unwrap()
            .value,
        addr(&b).as_bytes()
    );
    // Garbage in the index is treated as stale.
    store
        .put(&layout::owner("net", "c"), b"not an ip", Expect::Absent)
        .unwrap();
    ipam.request_address("net", &req("c")).unwrap();
    // Data left by a pool deletion that died half-way does not leak into a new pool.
    store
        .put(
            &layout::lease("gone", ip("10.9.0.2")),
            b"ghost",
            Expect::Absent,
        )
        .unwrap();
    store
        .put(&layout::owner("gone", "ghost"), b"10.9.0.2", Expect::Absent)
        .unwrap();
    ipam.request_pool(&pool_req(
        Some("gone"),
        vec![range("10.9.0.0/24", None, None, None)],
    ))
    .unwrap();
    assert!(ipam.leases("gone").unwrap().is_empty());
    assert!(store.list(&layout::owners("gone")).unwrap().is_empty());
    assert_eq!(
        addr(&ipam.request_address("gone", &req("new")).unwrap()),
        "10.9.0.1"
    );
    // A lease without an index entry is still released by owner.
    store
        .put(
            &layout::lease("net", ip("10.1.0.99")),
            b"orphan",
            Expect::Absent,
        )
        .unwrap();
    ipam.release_address("net", &Release::Owner("orphan".into()))
        .unwrap();
    assert!(store
        .get(&layout::lease("net", ip("10.1.0.99")))
        .unwrap()
        .is_none());
}

#[test]
fn several_ranges_per_pool() {
    let (ipam, _d) = ipam("ranges", &[]);
    ipam.request_pool(&pool_req(
        Some("multi"),
        vec![
            range(
                "10.1.0.0/24",
                Some("10.1.0.10"),
                Some("10.1.0.11"),
                Some("10.1.0.1"),
            ),
            range(
                "10.2.0.0/16",
                Some("10.2.0.5"),
                Some("10.2.0.5"),
                Some("10.2.0.1"),
            ),
        ],
    ))
    .unwrap();
    let got: Vec<(String, Option<IpAddr>)> = ["a", "b", "c"]
        .iter()
        .map(|o| {
            let l = ipam.request_address("multi", &req(o)).unwrap();
            (l.address.to_string(), l.gateway)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("10.1.0.10/24".to_string(), Some(ip("10.1.0.1"))),
            ("10.1.0.11/24".to_string(), Some(ip("10.1.0.1"))),
            ("10.2.0.5/16".to_string(), Some(ip("10.2.0.1"))),
        ]
    );
    let err = ipam.request_address("multi", &req("d")).unwrap_err();
    assert_eq!(err.to_string(), "pool multi has no free address (3 in use)");
}

#[test]
fn ipv6_pools() {
    let (ipam, _d) = ipam("v6", &[]);
    let p = ipam
        .request_pool(&pool_req(
            None,
            vec![range("fd00:1::/64", None, None, Some("fd00:1::1"))],
        ))
        .unwrap();
    assert_eq!(p.ranges[0].end, Some(ip("fd00:1::ffff:ffff:ffff:ffff")));
    let a = ipam.request_address(&p.id, &req("a")).unwrap();
    assert_eq!(a.address.to_string(), "fd00:1::2/64");
    assert_eq!(a.gateway, Some(ip("fd00:1::1")));
    let s = ipam
        .request_address(&p.id, &static_req("s", "fd00:1::ffff:ffff:ffff:ffff"))
        .unwrap();
    assert_eq!(s.address.prefix(), 64);
    // The last address of an IPv6 subnet is usable (no broadcast); the network address is not.
    let err = ipam
        .request_address(&p.id, &static_req("n", "fd00:1::"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert_eq!(
        addr(&ipam.request_address(&p.id, &req("b")).unwrap()),
        "fd00:1::3"
    );
}

#[test]
fn default_pools_skip_host_routes_and_existing_pools() {
    let (ipam, _d) = ipam(
        "defaults",
        &[
            "0.0.0.0/0",
            "172.17.0.0/16",
            "10.0.0.0/8",
            "::/0",
            "fd6e:6574:6c6f::/64",
        ],
    );
    ipam.request_pool(&pool_req(
        Some("user"),
        vec![range("172.19.3.0/24", None, None, None)],
    ))
    .unwrap();
    let first = ipam.request_pool(&PoolRequest::default()).unwrap();
    assert_eq!(first.id, "172.18.0.0/16");
    assert_eq!(first.ranges[0].gateway, Some(ip("172.18.0.1")));
    // Every request without id or subnet is a new network, as with Docker.
    let second = ipam.request_pool(&PoolRequest::default()).unwrap();
    assert_eq!(second.id, "172.20.0.0/16");
    assert_eq!(
        addr(&ipam.request_address(&first.id, &req("a")).unwrap()),
        "172.18.0.2"
    );
    // With an id, the identical request is the same pool.
    let named = PoolRequest {
        id: Some("web/0".into()),
        ..Default::default()
    };
    let w = ipam.request_pool(&named).unwrap();
    assert_eq!(w.ranges[0].subnet.to_string(), "172.21.0.0/16");
    assert_eq!(ipam.request_pool(&named).unwrap().refs, 2);
    let named_v6 = PoolRequest {
        id: Some("web/0".into()),
        v6: true,
        ..Default::default()
    };
    assert_eq!(
        ipam.request_pool(&named_v6).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    // An explicit subnet may not take what a default pool got.
    let err = ipam
        .request_pool(&pool_req(
            None,
            vec![range("172.21.5.0/24", None, None, None)],
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "subnet 172.21.5.0/24 overlaps pool web/0 (subnet 172.21.0.0/16)"
    );
    let v6 = ipam
        .request_pool(&PoolRequest {
            v6: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(v6.id, "fd6e:6574:6c6f:1::/64");
    assert_eq!(
        addr(&ipam.request_address(&v6.id, &req("a")).unwrap()),
        "fd6e:6574:6c6f:1::2"
    );
    // Releasing a default pool frees its subnet for the next request.
    ipam.release_pool(&first.id).unwrap();
    assert_eq!(
        ipam.request_pool(&PoolRequest::default()).unwrap().id,
        "172.18.0.0/16"
    );
}

#[test]
fn configured_default_pools_and_their_exhaustion() {
    let d = TempDir::new("custom-defaults");
    let pools = DefaultPools::new(vec![DefaultPool {
        base: "10.200.0.0/23".parse().unwrap(),
        size: 24,
    }])
    .unwrap();
    let ipam = StoreIpam::new(store_at(&d.0), routes(&["10.200.1.0/25"])).with_default_pools(pools);
    assert_eq!(
        ipam.request_pool(&PoolRequest::default()).unwrap().id,
        "10.200.0.0/24"
    );
    let err = ipam.request_pool(&PoolRequest::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert!(
        err.to_string().starts_with("no free default IPv4 subnet"),
        "{err}"
    );
    assert!(err.to_string().contains("10.200.0.0/23 as /24"), "{err}");
    let err = ipam
        .request_pool(&PoolRequest {
            v6: true,
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("none configured"), "{err}");
    // A failing route provider fails the request, with what we were doing.
    let failing = StoreIpam::new(
        store_at(&d.0),
        Box::new(|| Err(engine_core::Error::Internal("netlink down".into()))),
    );
    let err = failing.request_pool(&PoolRequest::default()).unwrap_err();
    assert!(
        err.to_string().contains("list the host's routes")
            && err.to_string().contains("netlink down"),
        "{err}"
    );
}

#[test]
fn threads_never_share_an_address() {
    let (ipam, _d) = ipam("threads", &[]);
    net24(&ipam);
    let ipam = Arc::new(ipam);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let ipam = ipam.clone();
            std::thread::spawn(move || {
                (0..12)
                    .map(|i| {
                        ipam.request_address("net", &req(&format!("t{t}-{i}")))
                            .unwrap()
                            .address
                            .ip()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: BTreeSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(all.len(), 96);
    assert_eq!(distinct.len(), 96);
    assert_eq!(ipam.leases("net").unwrap().len(), 96);
}

#[test]
fn concurrent_requests_for_one_owner_end_with_one_lease() {
    let (ipam, _d) = ipam("same-owner", &[]);
    net24(&ipam);
    let ipam = Arc::new(ipam);
    for round in 0..10 {
        let owner = format!("dup{round}");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ipam = ipam.clone();
                let owner = owner.clone();
                std::thread::spawn(move || {
                    ipam.request_address("net", &req(&owner))
                        .unwrap()
                        .address
                        .ip()
                })
            })
            .collect();
        let got: BTreeSet<IpAddr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let held: Vec<Lease> = ipam
            .leases("net")
            .unwrap()
            .into_iter()
            .filter(|l| l.owner == owner)
            .collect();
        assert_eq!(held.len(), 1, "{owner} holds {held:?}");
        assert!(got.contains(&held[0].address.ip()));
    }
}

/// Counts store operations, to keep the CNI ADD path short.
struct Counting {
    inner: Arc<dyn engine_core::StateStore>,
    gets: AtomicUsize,
    puts: AtomicUsize,
    lists: AtomicUsize,
}

impl Counting {
    fn take(&self) -> (usize, usize, usize) {
        (
            self.gets.swap(0, SeqCst),
            self.puts.swap(0, SeqCst),
            self.lists.swap(0, SeqCst),
        )
    }
}

impl engine_core::StateStore for Counting {
    fn get(&self, key: &engine_core::Key) -> engine_core::Result<Option<engine_core::Versioned>> {
        self.gets.fetch_add(1, SeqCst);
        self.inner.get(key)
    }
    fn put(
        &self,
        key: &engine_core::Key,
        value: &[u8],
        expect: Expect,
    ) -> engine_core::Result<engine_core::PutOutcome> {
        self.puts.fetch_add(1, SeqCst);
        self.inner.put(key, value, expect)
    }
    fn delete(
        &self,
        key: &engine_core::Key,
        expect: Expect,
    ) -> engine_core::Result<engine_core::PutOutcome> {
        self.puts.fetch_add(1, SeqCst);
        self.inner.delete(key, expect)
    }
    fn list(
        &self,
        prefix: &engine_core::Key,
    ) -> engine_core::Result<Vec<(engine_core::Key, engine_core::Versioned)>> {
        self.lists.fetch_add(1, SeqCst);
        self.inner.list(prefix)
    }
    fn lock(
        &self,
        scope: &str,
        timeout: std::time::Duration,
    ) -> engine_core::Result<Box<dyn engine_core::store::LockGuard>> {
        self.inner.lock(scope, timeout)
    }
    fn try_lock(
        &self,
        scope: &str,
    ) -> engine_core::Result<Option<Box<dyn engine_core::store::LockGuard>>> {
        self.inner.try_lock(scope)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[test]
fn an_allocation_costs_few_store_operations() {
    let d = TempDir::new("ops");
    let counting = Arc::new(Counting {
        inner: store_at(&d.0),
        gets: AtomicUsize::new(0),
        puts: AtomicUsize::new(0),
        lists: AtomicUsize::new(0),
    });
    let ipam = StoreIpam::new(counting.clone(), ipam::no_host_routes());
    net24(&ipam);
    for i in 0..20 {
        ipam.request_address("net", &req(&format!("warm{i}")))
            .unwrap();
    }
    counting.take();
    // pool, index, last hint, pool re-check / index, lease, index confirmation, last hint.
    ipam.request_address("net", &req("fresh")).unwrap();
    assert_eq!(counting.take(), (4, 4, 0));
    // Idempotent repeat: pool, index, lease.
    ipam.request_address("net", &req("fresh")).unwrap();
    assert_eq!(counting.take(), (3, 0, 0));
    // DEL: index, lease, then lease and index deletes (re-reading the index once).
    ipam.release_address("net", &Release::Owner("fresh".into()))
        .unwrap();
    let (gets, writes, lists) = counting.take();
    assert_eq!((writes, lists), (2, 0));
    assert!(gets <= 3, "{gets} reads");
}
