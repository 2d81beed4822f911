//! Unit tests run anywhere; the `root_` ones need root and create their own network namespaces
//! (never touching the host's): `cargo test -p engine-core --features root-tests netlink`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnetwork::IpNetwork;

use super::*;
use crate::error::ErrorKind;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---- no root needed ----

#[test]
fn mac_parses_and_prints() {
    let m: MacAddr = "02:42:AC:11:00:02".parse().unwrap();
    assert_eq!(m.0, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    assert_eq!(m.to_string(), "02:42:ac:11:00:02");
    assert_eq!("02-42-ac-11-00-02".parse::<MacAddr>().unwrap(), m);
    for bad in [
        "",
        "02:42:ac:11:00",
        "02:42:ac:11:00:02:03",
        "2:42:ac:11:00:02",
        "zz:42:ac:11:00:02",
    ] {
        let e = bad.parse::<MacAddr>().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad}");
    }
    assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
}

#[test]
fn sysctl_keys_map_to_proc_paths() {
    let p = |k: &str| sysctl_path(k).unwrap().display().to_string();
    assert_eq!(p("net.ipv4.ip_forward"), "/proc/sys/net/ipv4/ip_forward");
    assert_eq!(
        p("net/ipv4/conf/eth0.100/forwarding"),
        "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
    );
    assert_eq!(
        p("/proc/sys/net/ipv6/conf/all/disable_ipv6"),
        "/proc/sys/net/ipv6/conf/all/disable_ipv6"
    );
    for bad in [
        "",
        "net..ipv4",
        "net/../../etc/passwd",
        "/etc/passwd",
        "net/ipv4/",
        ".net",
    ] {
        assert_eq!(
            sysctl_path(bad).unwrap_err().kind(),
            ErrorKind::InvalidConfig,
            "{bad}"
        );
    }
}

#[test]
fn extack_text_is_extracted() {
    // Capped NLMSG_ERROR payload: the echoed 16-byte request header, then NLMSGERR_ATTR_MSG.
    let mut payload = vec![0u8; 16];
    let text = b"Unknown device type\0";
    let len = 4 + text.len();
    payload.extend_from_slice(&(len as u16).to_ne_bytes());
    payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
    payload.extend_from_slice(text);
    payload.resize(16 + align4(len), 0);
    assert_eq!(
        extack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
        Some("Unknown device type")
    );
    assert_eq!(extack_message(NLM_F_CAPPED, &payload), None);
    // Uncapped: the whole request is echoed; its length comes from its header.
    let mut full = vec![0u8; 24];
    full[..4].copy_from_slice(&24u32.to_ne_bytes());
    full.extend_from_slice(&payload[16..]);
    assert_eq!(
        extack_message(NLM_F_ACK_TLVS, &full).as_deref(),
        Some("Unknown device type")
    );
    // Garbage never panics.
    assert_eq!(extack_message(NLM_F_ACK_TLVS, &[1, 2]), None);
    assert_eq!(
        extack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &[0; 20]),
        None
    );
}

#[test]
fn errors_keep_errno_and_context() {
    let e = Fail::Errno {
        errno: libc::EEXIST,
        extack: Some("already there".into()),
    }
    .into_error("create veth a/b".into());
    assert_eq!(e.kind(), ErrorKind::Kernel);
    assert_eq!(e.errno(), Some(libc::EEXIST));
    assert!(is_exists(&e) && !is_not_found(&e));
    let s = e.to_string();
    assert!(s.starts_with("create veth a/b: netlink: "), "{s}");
    assert!(s.contains("EEXIST") && s.contains("already there"), "{s}");
}

#[test]
fn route_spec_validates_families_and_clears_host_bits() {
    let e = RouteSpec::new(net("10.0.0.0/24"))
        .via(ip("fd00::1"))
        .message(false)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let m = RouteSpec::new(net("10.1.2.3/16")).message(false).unwrap();
    assert!(m.attributes.iter().any(|a| matches!(a,
        netlink_packet_route::route::RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet(a))
            if a.to_string() == "10.1.0.0")));
    let d = RouteSpec::default_via(ip("fd00::1"));
    assert!(d.destination.is_ipv6() && d.destination.prefix() == 0);
}

#[test]
fn netlink_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Netlink>();
}

#[test]
fn link_ref_display() {
    assert_eq!(LinkRef::from("eth0").to_string(), "eth0");
    assert_eq!(LinkRef::from(7u32).to_string(), "ifindex 7");
}

// ---- root: each test gets its own namespaces ----

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

/// A fresh namespace, removed on drop, with a netlink client in it.
fn scratch() -> (crate::netns::Netns, Netlink) {
    let n = NEXT_NS.fetch_add(1, Ordering::SeqCst);
    let ns =
        crate::netns::Netns::create_named(&format!("nlt-{}-{}", std::process::id(), n)).unwrap();
    let nl = Netlink::in_netns(&ns).unwrap();
    (ns, nl)
}

macro_rules! root_test {
    ($(#[$m:meta])* fn $name:ident() $body:block) => {
        $(#[$m])*
        #[test]
        #[cfg_attr(not(feature = "root-tests"), ignore = "needs root: cargo test --features root-tests")]
        fn $name() $body
    };
}

root_test! {
    fn root_client_is_bound_to_its_namespace() {
        let (ns, nl) = scratch();
        // A fresh namespace has only lo, which proves the socket is not the host's.
        let links = nl.links().unwrap();
        assert_eq!(links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["lo"], "{links:?}");
        assert_eq!(nl.netns_path(), Some(ns.path()));
        // Same through connect() on a thread inside the namespace, and through the extension trait.
        let via_connect = ns.run(|| Netlink::connect().and_then(|c| c.links())).unwrap().unwrap();
        assert_eq!(via_connect.len(), 1);
        assert_eq!(ns.netlink().unwrap().links().unwrap().len(), 1);
    }
}

root_test! {
    fn root_refuses_to_block_inside_an_async_runtime() {
        let (_ns, nl) = scratch();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e = rt.block_on(async { nl.links() }).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
        // Dropping a client inside a runtime must not panic either.
        rt.block_on(async move { drop(nl) });
    }
}

root_test! {
    fn root_bridge_and_veth_with_peer_in_second_netns() {
        let (host_ns, host) = scratch();
        let (ctr_ns, ctr) = scratch();

        // Kernels without CONFIG_BRIDGE_VLAN_FILTERING (like this test host's) refuse the option.
        match host.create_bridge(&BridgeSpec::new("br-t0v").vlan_filtering(true)) {
            Ok(b) => assert_eq!(b.vlan_filtering, Some(true)),
            Err(e) => {
                assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
                assert!(e.to_string().contains("vlan_filtering on"), "{e}");
            }
        }
        let br = host.create_bridge(&BridgeSpec::new("br-t0").mtu(1400).vlan_filtering(false)).unwrap();
        assert_eq!(br.kind, Some(LinkKind::Bridge));
        assert_eq!(br.vlan_filtering, Some(false));
        assert_eq!(br.mtu, 1400);

        let veth = host.create_veth(&VethSpec::new("vh-t0", "eth0").peer_netns(&ctr_ns).mtu(1400)).unwrap();
        assert_eq!(veth.kind, Some(LinkKind::Veth));
        assert_eq!(veth.mtu, 1400);
        assert!(veth.link_netnsid.is_some(), "peer lives in another namespace: {veth:?}");
        assert!(host.link_by_name("eth0").unwrap().is_none(), "peer must not be in the host namespace");

        let peer = ctr.link_by_name("eth0").unwrap().expect("peer in the container namespace");
        assert_eq!(peer.kind, Some(LinkKind::Veth));
        assert_eq!(peer.mtu, 1400);
        assert_eq!(peer.peer_index(), Some(veth.index));
        assert_eq!(veth.peer_index(), Some(peer.index));

        host.set_master("vh-t0", "br-t0").unwrap();
        host.set_up(&br).unwrap();
        host.set_up("vh-t0").unwrap();
        ctr.set_up(peer.index).unwrap();
        host.set_hairpin("vh-t0", true).unwrap();

        let links = host.links().unwrap();
        let vh = links.iter().find(|l| l.name == "vh-t0").unwrap();
        assert_eq!(vh.master, Some(br.index));
        assert!(vh.admin_up);
        assert_eq!(vh.bridge_port.and_then(|p| p.hairpin), Some(true), "{vh:?}");
        assert!(links.iter().any(|l| l.name == "br-t0" && l.admin_up));
        // Both ends up: the carrier comes up too.
        assert_eq!(ctr.link_by_name("eth0").unwrap().unwrap().oper_state, OperState::Up);

        host.set_nomaster("vh-t0").unwrap();
        let vh = host.link_by_name("vh-t0").unwrap().unwrap();
        assert_eq!(vh.master, None);
        assert_eq!(vh.bridge_port, None);

        // Deleting one end removes the pair; deleting again is fine with the idempotent form.
        assert!(host.delete_link_if_exists("vh-t0").unwrap());
        assert!(!host.delete_link_if_exists("vh-t0").unwrap());
        assert!(ctr.link_by_name("eth0").unwrap().is_none());
        let e = host.delete_link("vh-t0").unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV));
        assert!(is_not_found(&e));
        assert!(e.to_string().contains("vh-t0") && e.to_string().contains(&*host_ns.path().to_string_lossy()), "{e}");
        assert!(host.delete_link_if_exists(br.index).unwrap());
    }
}

root_test! {
    fn root_link_changes_and_lookups() {
        let (_ns, nl) = scratch();
        let a = nl.create_veth(&VethSpec::new("va-t1", "vb-t1")).unwrap();
        assert!(!a.admin_up);
        // Same pair of names again: EEXIST, kind Kernel, the names in the message.
        let e = nl.create_veth(&VethSpec::new("va-t1", "vb-t1")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Kernel);
        assert!(is_exists(&e), "{e}");
        assert!(e.to_string().contains("create veth va-t1/vb-t1"), "{e}");

        nl.set_mtu("va-t1", 1300).unwrap();
        let mac: MacAddr = "02:00:00:aa:bb:cc".parse().unwrap();
        nl.set_mac(a.index, mac).unwrap();
        nl.set_promisc("va-t1", true).unwrap();
        let got = nl.link_by_index(a.index).unwrap().unwrap();
        assert_eq!((got.mtu, got.mac, got.promisc), (1300, Some(mac), true));
        nl.set_promisc("va-t1", false).unwrap();
        assert!(!nl.link_by_index(a.index).unwrap().unwrap().promisc);

        // Rename while down (older kernels refuse it while up).
        nl.set_up("va-t1").unwrap();
        nl.set_down("va-t1").unwrap();
        nl.rename("va-t1", "vc-t1").unwrap();
        assert!(nl.link_by_name("va-t1").unwrap().is_none());
        let c = nl.link_by_name("vc-t1").unwrap().unwrap();
        assert_eq!(c.index, a.index);

        // Absent links are None, not errors; invalid names are the caller's mistake.
        assert!(nl.link_by_name("nope-t1").unwrap().is_none());
        assert!(nl.link_by_index(999_999).unwrap().is_none());
        assert_eq!(nl.link_by_name("way-too-long-interface-name").unwrap_err().kind(), ErrorKind::InvalidConfig);
        let e = nl.set_up("nope-t1").unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV));
        assert!(e.to_string().contains("nope-t1"), "{e}");
        assert_eq!(nl.link_index("nope-t1").unwrap_err().errno(), Some(libc::ENODEV));

        // A bad MTU carries the kernel's own explanation.
        let e = nl.set_mtu("vc-t1", 70_000).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }
}

root_test! {
    fn root_addresses_v4_and_v6() {
        let (_ns, nl) = scratch();
        nl.create_veth(&VethSpec::new("va-t2", "vb-t2")).unwrap();
        nl.set_up("va-t2").unwrap();
        nl.set_up("vb-t2").unwrap();

        let v4 = net("10.99.1.2/24");
        let v6 = net("fd00:99::2/64");
        nl.add_address("va-t2", v4, AddrOptions::default()).unwrap();
        nl.add_address("va-t2", v6, AddrOptions { nodad: true, ..Default::default() }).unwrap();

        let addrs = nl.addresses_of("va-t2").unwrap();
        let a4 = addrs.iter().find(|a| a.address == v4).expect("v4 address listed");
        assert_eq!(a4.scope, Scope::Universe);
        assert!(a4.permanent);
        let a6 = addrs.iter().find(|a| a.address == v6).expect("v6 address listed");
        assert!(a6.nodad && !a6.tentative, "nodad address is usable at once: {a6:?}");
        // The other end has only its link-local address.
        assert!(nl.addresses_of("vb-t2").unwrap().iter().all(|a| a.address.ip() != v4.ip()));
        assert!(nl.addresses().unwrap().iter().any(|a| a.address == v4));

        // Twice: EEXIST; with replace: fine.
        assert!(is_exists(&nl.add_address("va-t2", v4, AddrOptions::default()).unwrap_err()));
        nl.add_address("va-t2", v4, AddrOptions { replace: true, ..Default::default() }).unwrap();

        assert!(nl.del_address("va-t2", v4).unwrap());
        assert!(!nl.del_address("va-t2", v4).unwrap());
        assert!(nl.del_address("va-t2", v6).unwrap());
        assert!(!nl.del_address("va-t2", v6).unwrap());
        assert!(!nl.del_address("gone-t2", v6).unwrap());
        assert!(nl.addresses_of("va-t2").unwrap().iter().all(|a| a.address != v4 && a.address != v6));
    }
}

root_test! {
    fn root_routes_including_default() {
        let (_ns, nl) = scratch();
        let a = nl.create_veth(&VethSpec::new("va-t3", "vb-t3")).unwrap();
        nl.set_up("vb-t3").unwrap();
        nl.set_up("va-t3").unwrap();
        nl.add_address("va-t3", net("10.98.1.2/24"), AddrOptions::default()).unwrap();
        nl.add_address("va-t3", net("fd00:98::2/64"), AddrOptions { nodad: true, ..Default::default() }).unwrap();

        let via = RouteSpec::new(net("10.97.0.0/16")).via(ip("10.98.1.1"));
        nl.add_route(&via).unwrap();
        assert!(is_exists(&nl.add_route(&via).unwrap_err()));
        let dflt4 = RouteSpec::default_via(ip("10.98.1.1")).dev(a.index).metric(100);
        nl.add_route(&dflt4).unwrap();
        let dflt6 = RouteSpec::default_via(ip("fd00:98::1")).dev(a.index);
        nl.add_route(&dflt6).unwrap();
        let onlink = RouteSpec::new(net("10.96.5.0/24")).dev(a.index);
        nl.add_route(&onlink).unwrap();
        nl.replace_route(&onlink.clone().metric(0)).unwrap();

        let routes = nl.routes().unwrap();
        let d4 = routes.iter().find(|r| r.is_default() && r.destination.is_ipv4()).expect("v4 default");
        assert_eq!((d4.gateway, d4.oif, d4.metric, d4.table), (Some(ip("10.98.1.1")), Some(a.index), Some(100), RT_TABLE_MAIN));
        let d6 = routes.iter().find(|r| r.is_default() && r.destination.is_ipv6()).expect("v6 default");
        assert_eq!(d6.gateway, Some(ip("fd00:98::1")));
        let r = routes.iter().find(|r| r.destination == net("10.97.0.0/16")).expect("gateway route");
        assert_eq!((r.gateway, r.kind, r.protocol), (Some(ip("10.98.1.1")), RouteKind::Unicast, 4));
        let r = routes.iter().find(|r| r.destination == net("10.96.5.0/24")).expect("link route");
        assert_eq!((r.gateway, r.scope), (None, Scope::Link));
        // The local table is not in routes(), but is in routes_in(None).
        assert!(routes.iter().all(|r| r.table == RT_TABLE_MAIN));
        assert!(nl.routes_in(None).unwrap().iter().any(|r| r.kind == RouteKind::Local));

        let hr = nl.host_routes().unwrap();
        for n in ["10.98.1.0/24", "10.97.0.0/16", "10.96.5.0/24", "fd00:98::/64"] {
            assert!(hr.contains(&net(n)), "{n} in {hr:?}");
        }
        assert!(hr.iter().all(|n| n.prefix() > 0), "no default routes in {hr:?}");

        assert!(nl.del_route(&via).unwrap());
        assert!(!nl.del_route(&via).unwrap());
        assert!(nl.del_route(&RouteSpec::default_via(ip("10.98.1.1"))).unwrap());
        assert!(nl.del_route(&dflt6).unwrap());
        assert!(!nl.routes().unwrap().iter().any(|r| r.is_default()));
    }
}

root_test! {
    fn root_neighbours_and_vxlan_fdb() {
        let (_ns, nl) = scratch();
        nl.create_veth(&VethSpec::new("va-t4", "vb-t4")).unwrap();
        nl.set_up("va-t4").unwrap();
        let mac: MacAddr = "02:00:00:00:00:44".parse().unwrap();
        nl.add_neighbour("va-t4", ip("10.95.0.9"), mac).unwrap();
        // Replacing semantics: adding again is not an error.
        nl.add_neighbour("va-t4", ip("10.95.0.9"), mac).unwrap();
        nl.add_neighbour("va-t4", ip("fd00:95::9"), mac).unwrap();
        let ns = nl.neighbours_of("va-t4").unwrap();
        let n = ns.iter().find(|n| n.ip == ip("10.95.0.9")).expect("v4 neighbour");
        assert_eq!((n.mac, n.state), (Some(mac), NeighbourState::Permanent));
        assert!(ns.iter().any(|n| n.ip == ip("fd00:95::9")));
        assert!(nl.neighbours().unwrap().len() >= 2);
        assert!(nl.del_neighbour("va-t4", ip("10.95.0.9")).unwrap());
        assert!(!nl.del_neighbour("va-t4", ip("10.95.0.9")).unwrap());

        nl.add_address("va-t4", net("192.0.2.1/24"), AddrOptions::default()).unwrap();
        let vx = nl
            .create_vxlan(&VxlanSpec::new("vx-t4", 4242).local(ip("192.0.2.1")).parent(nl.link_index("va-t4").unwrap()).mtu(1450))
            .unwrap();
        assert_eq!((vx.kind.clone(), vx.mtu), (Some(LinkKind::Vxlan), 1450));
        nl.set_up(&vx).unwrap();
        nl.add_fdb(&vx, MacAddr::ZERO, Some(ip("192.0.2.10")), FdbAdd::Append).unwrap();
        nl.add_fdb(&vx, MacAddr::ZERO, Some(ip("192.0.2.11")), FdbAdd::Append).unwrap();
        nl.add_fdb(&vx, mac, Some(ip("192.0.2.10")), FdbAdd::Replace).unwrap();
        let fdb = nl.fdb_entries(&vx).unwrap();
        let flood: Vec<_> = fdb.iter().filter(|e| e.mac == MacAddr::ZERO).filter_map(|e| e.remote).collect();
        assert!(flood.contains(&ip("192.0.2.10")) && flood.contains(&ip("192.0.2.11")), "{fdb:?}");
        assert!(fdb.iter().any(|e| e.mac == mac && e.remote == Some(ip("192.0.2.10")) && e.permanent), "{fdb:?}");
        assert!(nl.del_fdb(&vx, MacAddr::ZERO, Some(ip("192.0.2.11"))).unwrap());
        let flood: Vec<_> = nl.fdb_entries(&vx).unwrap().into_iter().filter(|e| e.mac == MacAddr::ZERO).collect();
        assert_eq!(flood.iter().filter_map(|e| e.remote).collect::<Vec<_>>(), [ip("192.0.2.10")], "{flood:?}");
        // Without a remote the whole MAC goes; then it is missing, which is success.
        assert!(nl.del_fdb(&vx, MacAddr::ZERO, None).unwrap());
        assert!(!nl.del_fdb(&vx, MacAddr::ZERO, None).unwrap());
        assert!(nl.fdb_entries(&vx).unwrap().iter().all(|e| e.mac != MacAddr::ZERO));
        nl.add_neighbour(&vx, ip("10.94.0.2"), mac).unwrap();
        assert!(nl.neighbours_of(&vx).unwrap().iter().any(|n| n.ip == ip("10.94.0.2")));
    }
}

root_test! {
    fn root_macvlan_on_veth_parent_moved_into_another_netns() {
        let (_host_ns, host) = scratch();
        let (ctr_ns, ctr) = scratch();
        let parent = host.create_veth(&VethSpec::new("vp-t5", "vq-t5")).unwrap();
        let mv = host.create_macvlan(&MacvlanSpec::new("mvtmp-t5", parent.index, MacvlanMode::Bridge).mtu(1400)).unwrap();
        assert_eq!(mv.kind, Some(LinkKind::Macvlan));
        assert_eq!(mv.link_index, Some(parent.index));
        assert_eq!(mv.mtu, 1400);

        host.move_to_netns("mvtmp-t5", &ctr_ns, Some("eth1")).unwrap();
        assert!(host.link_by_name("mvtmp-t5").unwrap().is_none());
        let moved = ctr.link_by_name("eth1").unwrap().expect("macvlan in the container namespace as eth1");
        assert_eq!(moved.kind, Some(LinkKind::Macvlan));
        assert!(moved.link_netnsid.is_some(), "its parent is in the other namespace: {moved:?}");
        ctr.set_up("eth1").unwrap();
        ctr.add_address("eth1", net("10.93.0.5/24"), AddrOptions::default()).unwrap();
        // Deleting the parent takes the macvlan with it, even across namespaces.
        host.delete_link("vp-t5").unwrap();
        assert!(ctr.link_by_name("eth1").unwrap().is_none());
    }
}

root_test! {
    fn root_sysctl_in_netns_leaves_host_alone() {
        let (ns, _nl) = scratch();
        let key = "net.ipv4.ip_forward";
        let host_before = sysctl_get(key).unwrap();
        // A new namespace copies the host's IPv4 settings (devconf_inherit_init_net=0, the
        // default), so flip whatever it started with: the host must keep its own value.
        let flipped = if sysctl_get_in(&ns, key).unwrap() == "1" { "0" } else { "1" };
        assert!(sysctl_set_in(&ns, key, flipped).unwrap());
        assert!(!sysctl_set_in(&ns, key, flipped).unwrap(), "unchanged value is not rewritten");
        assert_eq!(sysctl_get_in(&ns, key).unwrap(), flipped);
        assert_eq!(ns.sysctl_get("/proc/sys/net/ipv4/ip_forward").unwrap(), flipped);
        assert_eq!(sysctl_get(key).unwrap(), host_before, "the host's value must not change");

        // Path form, for names with dots; multi-value sysctls compare by field.
        assert!(ns.sysctl_set("net/ipv4/conf/lo/rp_filter", "2").unwrap());
        assert_eq!(ns.sysctl_get("net.ipv4.conf.lo.rp_filter").unwrap(), "2");
        let range = ns.sysctl_get("net.ipv4.ip_local_port_range").unwrap();
        assert!(!ns.sysctl_set("net.ipv4.ip_local_port_range", &range.replace('\t', " ")).unwrap());

        assert_eq!(sysctl_set_in(&ns, "kernel.hostname", "x").unwrap_err().kind(), ErrorKind::InvalidConfig);
        assert_eq!(sysctl_get_in(&ns, "net.ipv4.no_such_thing").unwrap_err().kind(), ErrorKind::NotFound);
    }
}

root_test! {
    fn root_one_client_shared_by_threads() {
        let (_ns, nl) = scratch();
        std::thread::scope(|s| {
            for t in 0..4 {
                let nl = &nl;
                s.spawn(move || {
                    let name = format!("vs{t}-t6");
                    nl.create_veth(&VethSpec::new(name.clone(), format!("vt{t}-t6"))).unwrap();
                    for _ in 0..20 {
                        assert!(nl.links().unwrap().iter().any(|l| l.name == name));
                    }
                });
            }
        });
        assert_eq!(nl.links().unwrap().len(), 1 + 8);
    }
}

root_test! {
    fn root_route_localnet_through_netlink_changes_nothing_else() {
        let (ns, nl) = scratch();
        nl.set_up("lo").unwrap();
        ns.sysctl_set("net/ipv4/conf/lo/rp_filter", "2").unwrap();
        let before_fwd = ns.sysctl_get("net.ipv4.conf.lo.forwarding").unwrap();
        assert_eq!(ns.sysctl_get("net.ipv4.conf.lo.route_localnet").unwrap(), "0");
        nl.enable_route_localnet("lo").unwrap();
        assert_eq!(ns.sysctl_get("net.ipv4.conf.lo.route_localnet").unwrap(), "1");
        // Only the field asked for: the request carries no zeros for the others.
        assert_eq!(ns.sysctl_get("net.ipv4.conf.lo.rp_filter").unwrap(), "2");
        assert_eq!(ns.sysctl_get("net.ipv4.conf.lo.forwarding").unwrap(), before_fwd);
        let err = nl.enable_route_localnet("nosuchlink9").unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    }
}
