//! Firewall integration tests: real traffic through netloom's nftables (and iptables) rules,
//! each test inside its own fake host with container and "outside" namespaces beside it.
//!
//! Topology built with iproute2 (the harness does not trust the product to build it):
//!
//! ```text
//!  outside netns ── vout ──(10.a.b.1/.3, fd..::1/::3)── fake host ── bridge nlb* ── containers
//!    10.a.b.2                                            (product runs here)
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use engine_core::firewall::{
    EndpointRules, Firewaller, IptablesFirewall, NetworkRules, NftFirewall,
};
use engine_core::netns::Netns;
use engine_core::{ErrorKind, PortMapping, Proto};
use ipnetwork::{IpNetwork, Ipv4Network};
use tests::fakehost::{run_in_any, run_in_path};
use tests::{names, run_main, Cap, FakeHost, Suite};

const NFT: &[Cap] = &[Cap::Root, Cap::Nftables, Cap::Veth, Cap::Bridge];
const IPT: &[Cap] = &[Cap::Root, Cap::Iptables, Cap::Veth, Cap::Bridge];
const NFT_IPT: &[Cap] = &[
    Cap::Root,
    Cap::Nftables,
    Cap::Iptables,
    Cap::Veth,
    Cap::Bridge,
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Nft,
    Ipt,
}

type TestFn = fn(Backend) -> Result<(), String>;

fn main() {
    let mut s = Suite::new();
    let behavioural: &[(&str, TestFn)] = &[
        ("published_tcp_and_udp_from_outside", published_tcp_and_udp),
        ("published_port_range", published_range),
        ("host_ip_binding_v4_and_v6", host_ip_binding),
        ("hairpin", hairpin),
        (
            "localhost_publish_reachable_from_host_only",
            localhost_publish,
        ),
        ("masquerade_seen_as_host_address", masquerade_seen_as_host),
        ("isolation_between_networks", isolation_between_networks),
        ("internal_network_has_no_outside_access", internal_network),
        ("icc_off_blocks_containers", icc_off),
        ("reconcile_after_flush", reconcile_after_flush),
        (
            "conflict_names_holder_and_changes_nothing",
            conflict_changes_nothing,
        ),
        ("removing_networks_leaves_nothing", teardown_leaves_nothing),
        ("concurrent_publishers_one_winner", concurrent_publishers),
    ];
    for (name, f) in behavioural {
        let f = *f;
        s.test(&format!("nft::{name}"), NFT, move || f(Backend::Nft));
        s.test(&format!("iptables::{name}"), IPT, move || f(Backend::Ipt));
    }
    s.test("nft::coexists_with_docker_forward_drop", NFT_IPT, || {
        docker_forward_drop(Backend::Nft)
    });
    s.test("iptables::coexists_with_docker_forward_drop", IPT, || {
        docker_forward_drop(Backend::Ipt)
    });
    run_main(s)
}

fn ensure(cond: bool, msg: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg.into())
    }
}

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------- topology

/// A fake host with an outside namespace on a veth, and the firewall under test.
struct Lab {
    host: FakeHost,
    fw: Box<dyn Firewaller>,
    backend: Backend,
    outside: PathBuf,
    /// The fake host's addresses on the outside link (.1 primary, .3 secondary).
    host_v4: Ipv4Addr,
    host_v4_b: Ipv4Addr,
    host_v6: IpAddr,
    host_v6_b: IpAddr,
    outside_v4: Ipv4Addr,
    nets: u32,
}

/// A container attached to a bridge network.
struct Ctr {
    path: PathBuf,
    v4: Ipv4Addr,
    v6: Option<IpAddr>,
    owner: String,
}

fn sh(host: &FakeHost, argv: &[&str]) -> Result<String, String> {
    host.sh(argv)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn in_path(p: &Path, argv: &[&str]) -> Result<(), String> {
    run_in_path(p, argv).map(|_| ())
}

impl Lab {
    fn new(tag: &str, backend: Backend) -> Result<Lab, String> {
        let mut host = FakeHost::new(tag)?;
        let outside = host.container("out")?;
        let oname = ns_name(&outside)?;
        let sub = names::subnet_v4();
        let o = sub.network().octets();
        let host_v4 = Ipv4Addr::new(o[0], o[1], o[2], 1);
        let outside_v4 = Ipv4Addr::new(o[0], o[1], o[2], 2);
        let host_v4_b = Ipv4Addr::new(o[0], o[1], o[2], 3);
        let v6 = names::subnet_v6();
        let host_v6: IpAddr = format!("{}1", v6.network()).parse().map_err(e2s)?;
        let outside_v6: IpAddr = format!("{}2", v6.network()).parse().map_err(e2s)?;
        let host_v6_b: IpAddr = format!("{}3", v6.network()).parse().map_err(e2s)?;
        host.sh(&[
            "ip", "link", "add", "vout", "type", "veth", "peer", "name", "eth0", "netns", &oname,
        ])?;
        host.sh(&["ip", "addr", "add", &format!("{host_v4}/24"), "dev", "vout"])?;
        host.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_v4_b}/24"),
            "dev",
            "vout",
        ])?;
        host.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{host_v6}/64"),
            "dev",
            "vout",
            "nodad",
        ])?;
        host.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{host_v6_b}/64"),
            "dev",
            "vout",
            "nodad",
        ])?;
        host.sh(&["ip", "link", "set", "vout", "up"])?;
        in_path(
            &outside,
            &[
                "ip",
                "addr",
                "add",
                &format!("{outside_v4}/24"),
                "dev",
                "eth0",
            ],
        )?;
        in_path(
            &outside,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{outside_v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        in_path(&outside, &["ip", "link", "set", "eth0", "up"])?;
        for k in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            host.sh(&["sysctl", "-qw", k])?;
        }
        let ns = Netns::open(host.netns().path()).map_err(e2s)?;
        let fw: Box<dyn Firewaller> = match backend {
            Backend::Nft => Box::new(NftFirewall::in_netns(ns).map_err(e2s)?),
            Backend::Ipt => Box::new(IptablesFirewall::in_netns(ns).map_err(e2s)?),
        };
        Ok(Lab {
            host,
            fw,
            backend,
            outside,
            host_v4,
            host_v4_b,
            host_v6,
            host_v6_b,
            outside_v4,
            nets: 0,
        })
    }

    /// Creates a bridge with a /24 (and a /64) and returns the network's firewall description.
    fn network(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut NetworkRules),
    ) -> Result<NetworkRules, String> {
        self.nets += 1;
        let br = format!("nlb{}", self.nets);
        let sub = names::subnet_v4();
        let v6 = names::subnet_v6();
        let o = sub.network().octets();
        let gw = Ipv4Addr::new(o[0], o[1], o[2], 1);
        self.host
            .sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        self.host
            .sh(&["ip", "addr", "add", &format!("{gw}/24"), "dev", &br])?;
        self.host.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}1/64", v6.network()),
            "dev",
            &br,
            "nodad",
        ])?;
        self.host.sh(&["ip", "link", "set", &br, "up"])?;
        let mut n = NetworkRules {
            network_id: id.to_string(),
            interface: br,
            subnets: vec![IpNetwork::V4(sub), IpNetwork::V6(v6)],
            masquerade: true,
            icc: true,
            internal: false,
            isolate: true,
            open_inbound: false,
        };
        f(&mut n);
        self.fw
            .setup_network(&n)
            .map_err(|e| format!("setup_network {id}: {e}"))?;
        Ok(n)
    }

    /// Creates a container namespace on `net` with the given host number (.n / ::n).
    fn container(&mut self, net: &NetworkRules, tag: &str, n: u8) -> Result<Ctr, String> {
        let path = self.host.container(tag)?;
        let name = ns_name(&path)?;
        let (sub, v6) = subnets(net)?;
        let o = sub.network().octets();
        let v4 = Ipv4Addr::new(o[0], o[1], o[2], n);
        let gw = Ipv4Addr::new(o[0], o[1], o[2], 1);
        let v6addr: IpAddr = format!("{}{n:x}", v6.network()).parse().map_err(e2s)?;
        let v6gw = format!("{}1", v6.network());
        let hv = format!("v{tag}");
        self.host.sh(&[
            "ip", "link", "add", &hv, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])?;
        self.host
            .sh(&["ip", "link", "set", &hv, "master", &net.interface, "up"])?;
        // What netloom's bridge driver does, like Docker without userland proxy: with
        // br_netfilter loaded, a DNATed frame back to the port it came from is bridged, which
        // the bridge only allows on hairpin ports.
        self.host.sh(&[
            "ip",
            "link",
            "set",
            &hv,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        in_path(
            &path,
            &["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"],
        )?;
        in_path(
            &path,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6addr}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        in_path(&path, &["ip", "link", "set", "eth0", "up"])?;
        in_path(
            &path,
            &["ip", "route", "add", "default", "via", &gw.to_string()],
        )?;
        in_path(
            &path,
            &["ip", "-6", "route", "add", "default", "via", &v6gw],
        )?;
        Ok(Ctr {
            path,
            v4,
            v6: Some(v6addr),
            owner: format!("{tag}/eth0"),
        })
    }

    /// A new firewall instance on the same host, as a separate CNI invocation would make: it
    /// knows nothing of what the first one did.
    fn fresh(&self) -> Result<Box<dyn Firewaller>, String> {
        let ns = Netns::open(self.host.netns().path()).map_err(e2s)?;
        Ok(match self.backend {
            Backend::Nft => Box::new(NftFirewall::in_netns(ns).map_err(e2s)?),
            Backend::Ipt => Box::new(IptablesFirewall::in_netns(ns).map_err(e2s)?),
        })
    }

    fn publish(
        &self,
        net: &NetworkRules,
        c: &Ctr,
        ports: Vec<PortMapping>,
    ) -> Result<EndpointRules, String> {
        let ep = endpoint(net, c, ports);
        self.fw
            .add_endpoint(net, &ep)
            .map_err(|e| format!("add_endpoint {}: {e}", c.owner))?;
        Ok(ep)
    }

    fn ruleset(&self) -> Result<String, String> {
        match self.backend {
            Backend::Nft => sh(&self.host, &["nft", "list", "ruleset"]),
            Backend::Ipt => {
                let mut s = sh(&self.host, &["iptables-save"])?;
                s.push_str(&sh(&self.host, &["ip6tables-save"])?);
                // Rules and user chains only: counters change with traffic, and iptables-nft
                // leaves the (empty) built-in tables behind once anything used them.
                Ok(s.lines()
                    .filter(|l| l.starts_with("-A") || (l.starts_with(':') && l.contains(" - ")))
                    .map(strip_counters)
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        }
    }
}

fn strip_counters(l: &str) -> String {
    // ":CHAIN POLICY [p:b]" → ":CHAIN POLICY"
    match l.find(" [") {
        Some(i) if l.starts_with(':') => l[..i].to_string(),
        _ => l.to_string(),
    }
}

fn endpoint(net: &NetworkRules, c: &Ctr, ports: Vec<PortMapping>) -> EndpointRules {
    let mut addresses = vec![IpAddr::V4(c.v4)];
    addresses.extend(c.v6);
    EndpointRules {
        network_id: net.network_id.clone(),
        owner: c.owner.clone(),
        addresses,
        ports,
    }
}

fn subnets(net: &NetworkRules) -> Result<(Ipv4Network, ipnetwork::Ipv6Network), String> {
    let v4 = net.subnets.iter().find_map(|s| match s {
        IpNetwork::V4(v) => Some(*v),
        _ => None,
    });
    let v6 = net.subnets.iter().find_map(|s| match s {
        IpNetwork::V6(v) => Some(*v),
        _ => None,
    });
    Ok((v4.ok_or("no v4 subnet")?, v6.ok_or("no v6 subnet")?))
}

fn ns_name(p: &Path) -> Result<String, String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} has no name", p.display()))
}

fn tcp(h: u16, c: u16) -> PortMapping {
    PortMapping {
        proto: Proto::Tcp,
        host_ip: None,
        host_port: h,
        host_port_end: h,
        container_port: c,
    }
}

// ---------------------------------------------------------------- traffic

/// A TCP and UDP echo service inside a namespace: answers "<tag> peer=<address>" so clients
/// learn how the server saw them (for the masquerade test). Stops on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(ns_path: &Path, tag: &str, port: u16) -> Result<Server, String> {
        Self::start_on(ns_path, tag, &[port])
    }

    fn start_on(ns_path: &Path, tag: &str, ports: &[u16]) -> Result<Server, String> {
        let ns = Netns::open(ns_path).map_err(e2s)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            // Sockets stay in the namespace they were created in: bind there, serve anywhere.
            let (tl, ul) = ns
                .run(move || -> std::io::Result<(TcpListener, UdpSocket)> {
                    let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
                    let t = TcpListener::bind(any)?;
                    let u = UdpSocket::bind(any)?;
                    Ok((t, u))
                })
                .map_err(e2s)?
                .map_err(|e| format!("bind port {port}: {e}"))?;
            tl.set_nonblocking(true).map_err(e2s)?;
            ul.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(e2s)?;
            let (s1, s2) = (stop.clone(), stop.clone());
            let (t1, t2) = (tag.to_string(), tag.to_string());
            threads.push(std::thread::spawn(move || {
                while !s1.load(Ordering::Relaxed) {
                    match tl.accept() {
                        Ok((mut c, peer)) => {
                            let _ = c.set_nonblocking(false);
                            let _ =
                                c.write_all(format!("{t1} peer={}", canon(peer.ip())).as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !s2.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = ul.recv_from(&mut buf) {
                        let _ =
                            ul.send_to(format!("{t2} peer={}", canon(peer.ip())).as_bytes(), peer);
                    }
                }
            }));
        }
        Ok(Server { stop, threads })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) printed as IPv4.
fn canon(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

const TIMEOUT: Duration = Duration::from_millis(3000);

/// Connects from inside `ns_path` and returns the server's answer, or Err when unreachable.
fn tcp_get(ns_path: &Path, dst: SocketAddr) -> Result<String, String> {
    let ns = Netns::open(ns_path).map_err(e2s)?;
    ns.run(move || -> Result<String, String> {
        let mut s =
            TcpStream::connect_timeout(&dst, TIMEOUT).map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(e2s)?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {dst}: {e}"))?;
        Ok(out)
    })
    .map_err(e2s)?
}

fn udp_get(ns_path: &Path, dst: SocketAddr) -> Result<String, String> {
    let ns = Netns::open(ns_path).map_err(e2s)?;
    ns.run(move || -> Result<String, String> {
        let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .map_err(e2s)?;
        let s = UdpSocket::bind(bind).map_err(e2s)?;
        s.set_read_timeout(Some(Duration::from_millis(400)))
            .map_err(e2s)?;
        let mut buf = [0u8; 128];
        // UDP may lose the first datagram while neighbours resolve: try a few times.
        for _ in 0..4 {
            s.send_to(b"ping", dst)
                .map_err(|e| format!("send to {dst}: {e}"))?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(format!("no UDP answer from {dst}"))
    })
    .map_err(e2s)?
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn expect_tcp(ns: &Path, dst: SocketAddr, want_tag: &str) -> Result<String, String> {
    let got = tcp_get(ns, dst).map_err(|e| format!("expected {dst} to answer: {e}"))?;
    ensure(
        got.starts_with(want_tag),
        format!("{dst} answered {got:?}, expected {want_tag}"),
    )?;
    Ok(got)
}

fn expect_no_tcp(ns: &Path, dst: SocketAddr) -> Result<(), String> {
    match tcp_get(ns, dst) {
        Ok(got) => Err(format!("{dst} answered {got:?} but must be unreachable")),
        Err(_) => Ok(()),
    }
}

// ---------------------------------------------------------------- behavioural tests

fn published_tcp_and_udp(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwpub", b)?;
    let net = lab.network("pub", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let _srv = Server::start(&c1.path, "c1", 80)?;
    let udp = PortMapping {
        proto: Proto::Udp,
        host_ip: None,
        host_port: 5353,
        host_port_end: 5353,
        container_port: 80,
    };
    lab.publish(&net, &c1, vec![tcp(8080, 80), udp])?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), "c1")?;
    let u = udp_get(&lab.outside, sa(lab.host_v4, 5353))?;
    ensure(u.starts_with("c1"), format!("UDP answer {u:?}"))?;
    // IPv6 too: no host address given means every address of both families.
    expect_tcp(&lab.outside, sa(lab.host_v6, 8080), "c1")?;
    // Unpublished ports of the container are not reachable by routing to it directly.
    in_path(
        &lab.outside,
        &[
            "ip",
            "route",
            "add",
            &subnets(&net)?.0.to_string(),
            "via",
            &lab.host_v4.to_string(),
        ],
    )?;
    expect_no_tcp(&lab.outside, sa(c1.v4, 80))?;
    Ok(())
}

fn published_range(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwrange", b)?;
    let net = lab.network("rng", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let _srv = Server::start_on(&c1.path, "c1", &[9000, 9005, 9010])?;
    let range = PortMapping::new(Proto::Tcp, None, (9000, 9010), 9000).map_err(e2s)?;
    lab.publish(&net, &c1, vec![range])?;
    for p in [9000, 9005, 9010] {
        expect_tcp(&lab.outside, sa(lab.host_v4, p), "c1")?;
    }
    if b == Backend::Nft {
        // ONE element for the whole range.
        let m = sh(
            &lab.host,
            &["nft", "list", "map", "inet", "netloom", "dnat4_range"],
        )?;
        ensure(
            m.contains("9000-9010"),
            format!("range is not one interval element:\n{m}"),
        )?;
    }
    Ok(())
}

fn host_ip_binding(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwbind", b)?;
    let net = lab.network("bind", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let _srv = Server::start(&c1.path, "c1", 80)?;
    let mut m4 = tcp(8080, 80);
    m4.host_ip = Some(IpAddr::V4(lab.host_v4_b));
    let mut m6 = tcp(8081, 80);
    m6.host_ip = Some(lab.host_v6_b);
    lab.publish(&net, &c1, vec![m4, m6])?;
    expect_tcp(&lab.outside, sa(lab.host_v4_b, 8080), "c1")?;
    expect_no_tcp(&lab.outside, sa(lab.host_v4, 8080))?;
    expect_tcp(&lab.outside, sa(lab.host_v6_b, 8081), "c1")?;
    expect_no_tcp(&lab.outside, sa(lab.host_v6, 8081))?;
    // A v4-bound mapping is not published on v6 either.
    expect_no_tcp(&lab.outside, sa(lab.host_v6_b, 8080))
}

fn hairpin(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwhair", b)?;
    let net = lab.network("hair", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let c2 = lab.container(&net, "c2", 3)?;
    let _srv = Server::start(&c1.path, "c1", 80)?;
    lab.publish(&net, &c1, vec![tcp(8080, 80)])?;
    // c1 reaches its own published port through the host's address, and so does c2.
    expect_tcp(&c1.path, sa(lab.host_v4, 8080), "c1")?;
    expect_tcp(&c2.path, sa(lab.host_v4, 8080), "c1")?;
    Ok(())
}

fn localhost_publish(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwlo", b)?;
    let net = lab.network("lo", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let _srv = Server::start(&c1.path, "c1", 80)?;
    let mut m = tcp(8080, 80);
    m.host_ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    lab.publish(&net, &c1, vec![m])?;
    // From the host itself.
    expect_tcp(lab.host.netns().path(), sa(Ipv4Addr::LOCALHOST, 8080), "c1")?;
    // Not on the host's other addresses.
    expect_no_tcp(&lab.outside, sa(lab.host_v4, 8080))?;
    // moby#45610: a LAN neighbour routing 127.0.0.1 to the host must not get through. Make the
    // outside namespace send 127.0.0.1 out of its veth towards the host.
    let o = &lab.outside;
    in_path(o, &["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"])?;
    in_path(
        o,
        &[
            "ip",
            "rule",
            "add",
            "pref",
            "10",
            "to",
            "127.0.0.1",
            "lookup",
            "100",
        ],
    )?;
    in_path(o, &["ip", "rule", "del", "pref", "0"])?;
    in_path(o, &["ip", "rule", "add", "pref", "20", "lookup", "local"])?;
    in_path(
        o,
        &[
            "ip",
            "route",
            "add",
            "127.0.0.1/32",
            "via",
            &lab.host_v4.to_string(),
            "dev",
            "eth0",
            "table",
            "100",
        ],
    )?;
    // The fake host must accept 127/8 from that veth for the attack to be possible at all.
    lab.host
        .sh(&["sysctl", "-qw", "net.ipv4.conf.vout.route_localnet=1"])?;
    expect_no_tcp(o, sa(Ipv4Addr::LOCALHOST, 8080))?;
    if b == Backend::Nft {
        // Control: without netloom's guard the attack works, so the check above means something.
        let h = rule_handle(&lab.host, "guard", "guard-localhost-v4")?;
        lab.host.sh(&[
            "nft", "delete", "rule", "inet", "netloom", "guard", "handle", &h,
        ])?;
        expect_tcp(o, sa(Ipv4Addr::LOCALHOST, 8080), "c1")
            .map_err(|e| format!("attack control failed: {e}"))?;
        let drift = lab.fw.check(&net, &[]).map_err(e2s)?;
        ensure(
            drift.iter().any(|d| d.subject.contains("guard")),
            format!("check missed the guard rule: {drift:?}"),
        )?;
        lab.fw
            .reapply(std::slice::from_ref(&net), &[])
            .map_err(e2s)?;
        expect_no_tcp(o, sa(Ipv4Addr::LOCALHOST, 8080))?;
    }
    Ok(())
}

/// The handle of the rule with `comment` in netloom's chain.
fn rule_handle(host: &FakeHost, chain: &str, comment: &str) -> Result<String, String> {
    let out = sh(
        host,
        &["nft", "-a", "list", "chain", "inet", "netloom", chain],
    )?;
    out.lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .ok_or_else(|| format!("no rule {comment:?} in chain {chain}:\n{out}"))
}

fn masquerade_seen_as_host(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwmasq", b)?;
    let net = lab.network("masq", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let _srv = Server::start(&lab.outside, "outside", 7000)?;
    let got = expect_tcp(&c1.path, sa(lab.outside_v4, 7000), "outside")?;
    ensure(
        got == format!("outside peer={}", lab.host_v4),
        format!(
            "outside saw {got:?}, expected the host address {}",
            lab.host_v4
        ),
    )?;
    let u = udp_get(&c1.path, sa(lab.outside_v4, 7000))?;
    ensure(
        u == format!("outside peer={}", lab.host_v4),
        format!("UDP: outside saw {u:?}"),
    )
}

fn isolation_between_networks(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwiso", b)?;
    let na = lab.network("neta", |_| {})?;
    let nb = lab.network("netb", |_| {})?;
    let a1 = lab.container(&na, "a1", 2)?;
    let a2 = lab.container(&na, "a2", 3)?;
    let b1 = lab.container(&nb, "b1", 2)?;
    let _sa = Server::start(&a1.path, "a1", 80)?;
    let _sb = Server::start(&b1.path, "b1", 80)?;
    let _so = Server::start(&lab.outside, "outside", 80)?;
    expect_tcp(&a2.path, sa(a1.v4, 80), "a1")?;
    expect_no_tcp(&a2.path, sa(b1.v4, 80))?;
    expect_no_tcp(&b1.path, sa(a1.v4, 80))?;
    // Both still reach the outside world.
    expect_tcp(&a1.path, sa(lab.outside_v4, 80), "outside")?;
    expect_tcp(&b1.path, sa(lab.outside_v4, 80), "outside")?;
    Ok(())
}

fn internal_network(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwint", b)?;
    let ni = lab.network("inner", |n| {
        n.internal = true;
        n.masquerade = false;
    })?;
    let c1 = lab.container(&ni, "c1", 2)?;
    let c2 = lab.container(&ni, "c2", 3)?;
    let _so = Server::start(&lab.outside, "outside", 80)?;
    let _s1 = Server::start(&c1.path, "c1", 80)?;
    expect_no_tcp(&c1.path, sa(lab.outside_v4, 80))?;
    ensure(
        udp_get(&c1.path, sa(lab.outside_v4, 80)).is_err(),
        "UDP left an internal network",
    )?;
    // Inside the network, containers still talk.
    expect_tcp(&c2.path, sa(c1.v4, 80), "c1")?;
    // And the outside cannot come in by routing to the subnet.
    in_path(
        &lab.outside,
        &[
            "ip",
            "route",
            "add",
            &subnets(&ni)?.0.to_string(),
            "via",
            &lab.host_v4.to_string(),
        ],
    )?;
    expect_no_tcp(&lab.outside, sa(c1.v4, 80))
}

fn icc_off(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwicc", b)?;
    let net = lab.network("noicc", |n| n.icc = false)?;
    let c1 = lab.container(&net, "c1", 2)?;
    let c2 = lab.container(&net, "c2", 3)?;
    let _s1 = Server::start(&c1.path, "c1", 80)?;
    let _so = Server::start(&lab.outside, "outside", 80)?;
    expect_no_tcp(&c2.path, sa(c1.v4, 80))?;
    expect_tcp(&c2.path, sa(lab.outside_v4, 80), "outside")?;
    // Setting the network up again with ICC on changes it in place.
    let mut on = net.clone();
    on.icc = true;
    lab.fw.setup_network(&on).map_err(e2s)?;
    expect_tcp(&c2.path, sa(c1.v4, 80), "c1")?;
    let drift = lab.fw.check(&on, &[]).map_err(e2s)?;
    ensure(
        drift.is_empty(),
        format!("drift after switching ICC on: {drift:?}"),
    )
}

/// Several fresh instances (as concurrent CNI calls) publish the same host port at once:
/// exactly one wins, the others get a conflict naming it, and the winner's port works.
fn concurrent_publishers(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwrace", b)?;
    let net = lab.network("race", |_| {})?;
    let mut ctrs = Vec::new();
    for i in 0..4u8 {
        ctrs.push(lab.container(&net, &format!("r{i}"), 2 + i)?);
    }
    let servers: Vec<Server> = ctrs
        .iter()
        .map(|c| Server::start(&c.path, &c.owner[..2], 80))
        .collect::<Result<_, _>>()?;
    let fws: Vec<Box<dyn Firewaller>> = (0..ctrs.len())
        .map(|_| lab.fresh())
        .collect::<Result<_, _>>()?;
    let barrier = std::sync::Barrier::new(ctrs.len());
    let results: Vec<Result<(), engine_core::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = ctrs
            .iter()
            .zip(&fws)
            .map(|(c, fw)| {
                let ep = endpoint(&net, c, vec![tcp(8080, 80)]);
                let (net, barrier) = (&net, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    fw.add_endpoint(net, &ep)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(engine_core::Error::Internal("panic".into())))
            })
            .collect()
    });
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    ensure(
        winners.len() == 1,
        format!("{} publishers won: {results:?}", winners.len()),
    )?;
    let w = &ctrs[winners[0]];
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        ensure(
            r.kind() == ErrorKind::Conflict && r.to_string().contains(&w.owner),
            format!("loser got {r}, expected a conflict naming {}", w.owner),
        )?;
    }
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), &w.owner[..2])?;
    drop(servers);
    Ok(())
}

fn reconcile_after_flush(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwrec", b)?;
    let net = lab.network("rec", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let _srv = Server::start(&c1.path, "c1", 80)?;
    let ep = lab.publish(&net, &c1, vec![tcp(8080, 80)])?;
    let eps = std::slice::from_ref(&ep);
    let clean = lab.fw.check(&net, eps).map_err(e2s)?;
    ensure(
        clean.is_empty(),
        format!("check right after setup reports drift: {clean:?}"),
    )?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), "c1")?;
    let before = lab.ruleset()?;
    match b {
        Backend::Nft => sh(&lab.host, &["nft", "flush", "ruleset"]).map(|_| ())?,
        Backend::Ipt => {
            for t in ["nat", "filter", "raw"] {
                lab.host.sh(&["iptables", "-t", t, "-F"])?;
                lab.host.sh(&["ip6tables", "-t", t, "-F"])?;
            }
        }
    }
    expect_no_tcp(&lab.outside, sa(lab.host_v4, 8080))?;
    let drift = lab.fw.check(&net, eps).map_err(e2s)?;
    ensure(!drift.is_empty(), "check found no drift after a flush")?;
    let t0 = std::time::Instant::now();
    let fixed = lab
        .fw
        .reapply(std::slice::from_ref(&net), eps)
        .map_err(e2s)?;
    let took = t0.elapsed();
    ensure(!fixed.is_empty(), "reapply reported nothing restored")?;
    ensure(
        took < Duration::from_secs(1),
        format!("reapply took {took:?}"),
    )?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), "c1")?;
    let after = lab.fw.check(&net, eps).map_err(e2s)?;
    ensure(
        after.is_empty(),
        format!("drift left after reapply: {after:?}"),
    )?;
    if b == Backend::Nft {
        let now = lab.ruleset()?;
        ensure(
            now == before,
            format!("ruleset after reapply differs:\n--- before\n{before}\n--- after\n{now}"),
        )?;
    }
    // A second reapply has nothing to do.
    let again = lab
        .fw
        .reapply(std::slice::from_ref(&net), eps)
        .map_err(e2s)?;
    ensure(
        again.is_empty(),
        format!("second reapply restored {again:?}"),
    )
}

fn conflict_changes_nothing(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwconf", b)?;
    let net = lab.network("conf", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let c2 = lab.container(&net, "c2", 3)?;
    let _s1 = Server::start(&c1.path, "c1", 80)?;
    let _s2 = Server::start(&c2.path, "c2", 80)?;
    lab.publish(&net, &c1, vec![tcp(8080, 80)])?;
    let before = lab.ruleset()?;
    // c2 asks for a free port and a taken one: nothing of it may be applied.
    let err = lab
        .fw
        .add_endpoint(
            &net,
            &endpoint(&net, &c2, vec![tcp(8090, 80), tcp(8080, 80)]),
        )
        .err()
        .ok_or("publishing a taken port succeeded")?;
    ensure(
        err.kind() == ErrorKind::Conflict,
        format!("wrong error kind: {err}"),
    )?;
    ensure(
        err.to_string().contains("c1/eth0"),
        format!("error does not name the holder: {err}"),
    )?;
    ensure(
        lab.ruleset()? == before,
        "the failed publish changed the ruleset",
    )?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), "c1")?;
    expect_no_tcp(&lab.outside, sa(lab.host_v4, 8090))?;
    // A specific address overlapping the "every address" mapping conflicts too.
    let mut bound = tcp(8080, 80);
    bound.host_ip = Some(IpAddr::V4(lab.host_v4_b));
    let err = lab
        .fw
        .add_endpoint(&net, &endpoint(&net, &c2, vec![bound.clone()]))
        .err()
        .ok_or("overlapping bound publish succeeded")?;
    ensure(
        err.kind() == ErrorKind::Conflict,
        format!("wrong error kind: {err}"),
    )?;
    // The same from fresh instances (a new process each: the nftables backend then decides
    // with a few element lookups instead of reading every published port).
    for ports in [vec![tcp(8080, 81)], vec![bound]] {
        let fresh = lab.fresh()?;
        let err = fresh
            .add_endpoint(&net, &endpoint(&net, &c2, ports))
            .err()
            .ok_or("a fresh instance missed the conflict")?;
        ensure(
            err.kind() == ErrorKind::Conflict && err.to_string().contains("c1/eth0"),
            format!("fresh instance: {err}"),
        )?;
    }
    // c1 also publishes 9443 on one address; "every address" 9443 from a fresh instance must
    // see it (through the port marker).
    let mut b9443 = tcp(9443, 80);
    b9443.host_ip = Some(IpAddr::V4(lab.host_v4_b));
    lab.publish(&net, &c1, vec![tcp(8080, 80), b9443])?;
    let err = lab
        .fresh()?
        .add_endpoint(&net, &endpoint(&net, &c2, vec![tcp(9443, 80)]))
        .err()
        .ok_or("fresh instance missed a bound port")?;
    ensure(
        err.kind() == ErrorKind::Conflict,
        format!("wrong error kind: {err}"),
    )?;
    // Once c1 drops it, the port is free again for everyone (a stale marker is cleaned).
    lab.publish(&net, &c1, vec![tcp(8080, 80)])?;
    lab.fresh()?
        .add_endpoint(&net, &endpoint(&net, &c2, vec![tcp(9443, 80)]))
        .map_err(|e| format!("9443 still held: {e}"))?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 9443), "c2")?;
    lab.fresh()?
        .del_endpoint(&net, &endpoint(&net, &c2, vec![]))
        .map_err(e2s)?;
    // Ranges overlapping a single port conflict.
    let range = PortMapping::new(Proto::Tcp, None, (8070, 8085), 8070).map_err(e2s)?;
    ensure(
        lab.fw
            .add_endpoint(&net, &endpoint(&net, &c2, vec![range]))
            .is_err(),
        "overlapping range accepted",
    )?;
    // The other protocol is free.
    let udp = PortMapping {
        proto: Proto::Udp,
        host_ip: None,
        host_port: 8080,
        host_port_end: 8080,
        container_port: 80,
    };
    lab.publish(&net, &c2, vec![udp])?;
    ensure(
        udp_get(&lab.outside, sa(lab.host_v4, 8080))?.starts_with("c2"),
        "udp/8080 does not reach c2",
    )?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), "c1")?;
    // Publishing again is idempotent.
    lab.publish(&net, &c1, vec![tcp(8080, 80)])?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), "c1")?;
    Ok(())
}

fn teardown_leaves_nothing(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwdown", b)?;
    let before = lab.ruleset()?;
    let n1 = lab.network("one", |_| {})?;
    let n2 = lab.network("two", |n| n.icc = false)?;
    let c1 = lab.container(&n1, "c1", 2)?;
    let c2 = lab.container(&n2, "c2", 2)?;
    let _s1 = Server::start(&c1.path, "c1", 80)?;
    let _s2 = Server::start(&c2.path, "c2", 80)?;
    let e1 = lab.publish(&n1, &c1, vec![tcp(8080, 80)])?;
    lab.publish(
        &n2,
        &c2,
        vec![
            tcp(8081, 80),
            PortMapping::new(Proto::Udp, None, (6000, 6100), 6000).map_err(e2s)?,
        ],
    )?;
    let programmed = lab.ruleset()?;
    ensure(programmed != before, "nothing was programmed")?;
    if b == Backend::Nft {
        // `nft list` must show interface-name keys as names (the set's key byte order is
        // recorded for nft), or an engineer reading the ruleset sees "" for every bridge.
        for br in [&n1.interface, &n2.interface] {
            ensure(
                programmed.contains(&format!("\"{br}\" comment \"net=")),
                format!("nft list does not name bridge {br}:\n{programmed}"),
            )?;
        }
    }
    // Removing one endpoint and one network leaves the other working.
    lab.fw.del_endpoint(&n1, &e1).map_err(e2s)?;
    lab.fw
        .del_endpoint(&n1, &e1)
        .map_err(|e| format!("second del_endpoint is not idempotent: {e}"))?;
    expect_no_tcp(&lab.outside, sa(lab.host_v4, 8080))?;
    lab.fw.teardown_network("one").map_err(e2s)?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8081), "c2")?;
    lab.fw.teardown_network("two").map_err(e2s)?;
    lab.fw
        .teardown_network("two")
        .map_err(|e| format!("second teardown is not idempotent: {e}"))?;
    let after = lab.ruleset()?;
    ensure(
        after == before,
        format!("rules left behind:\n--- before\n{before}\n--- after\n{after}"),
    )?;
    if b == Backend::Nft {
        let tables = sh(&lab.host, &["nft", "list", "tables"])?;
        ensure(
            !tables.contains("netloom"),
            format!("netloom tables left: {tables}"),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------- coexistence

/// dockerd's iptables layout (FORWARD policy DROP, DOCKER-USER, DOCKER-FORWARD) in the fake
/// host: netloom traffic must flow, and Docker's rules must stay as they were.
fn docker_forward_drop(b: Backend) -> Result<(), String> {
    let mut lab = Lab::new("fwdock", b)?;
    for cmd in [
        "iptables -N DOCKER-USER",
        "iptables -N DOCKER-FORWARD",
        "iptables -A DOCKER-USER -j RETURN",
        "iptables -A FORWARD -j DOCKER-USER",
        "iptables -A FORWARD -j DOCKER-FORWARD",
        "iptables -A DOCKER-FORWARD -i docker0 -j ACCEPT",
        "iptables -P FORWARD DROP",
        "ip6tables -P FORWARD DROP",
    ] {
        let argv: Vec<&str> = cmd.split(' ').collect();
        lab.host.sh(&argv)?;
    }
    let docker_rules = |host: &FakeHost| -> Result<String, String> {
        let mut s = sh(host, &["iptables", "-S"])?;
        s.push_str(&sh(host, &["ip6tables", "-S"])?);
        Ok(s.lines()
            .filter(|l| !l.to_lowercase().contains("netloom"))
            .collect::<Vec<_>>()
            .join("\n"))
    };
    let before = docker_rules(&lab.host)?;
    let before_full = sh(&lab.host, &["iptables", "-S"])?;
    let net = lab.network("dock", |_| {})?;
    let c1 = lab.container(&net, "c1", 2)?;
    let _s1 = Server::start(&c1.path, "c1", 80)?;
    let _so = Server::start(&lab.outside, "outside", 80)?;
    lab.publish(&net, &c1, vec![tcp(8080, 80)])?;
    expect_tcp(&lab.outside, sa(lab.host_v4, 8080), "c1")?;
    expect_tcp(&lab.outside, sa(lab.host_v6, 8080), "c1")?;
    expect_tcp(&c1.path, sa(lab.outside_v4, 80), "outside")?;
    let during = sh(&lab.host, &["iptables", "-S", "FORWARD"])?;
    ensure(
        during.contains("netloom"),
        format!("no tagged netloom rule in FORWARD:\n{during}"),
    )?;
    // Docker's rules are untouched and still come first.
    ensure(docker_rules(&lab.host)? == before, "Docker's rules changed")?;
    let first_ours = during
        .lines()
        .position(|l| l.contains("netloom"))
        .unwrap_or(0);
    let last_docker = during
        .lines()
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| l.contains("DOCKER"))
        .unwrap_or(0);
    ensure(
        last_docker < first_ours,
        format!("netloom's rules went before Docker's:\n{during}"),
    )?;
    lab.fw.teardown_network("dock").map_err(e2s)?;
    let after = sh(&lab.host, &["iptables", "-S"])?;
    ensure(
        after == before_full,
        format!("iptables differs after teardown:\n--- before\n{before_full}\n--- after\n{after}"),
    )?;
    // The fake host's own nft view shows no netloom table either.
    let tables = run_in_any(lab.host.netns(), &["nft", "list", "tables"]).map_err(e2s)?;
    ensure(
        !String::from_utf8_lossy(&tables.stdout).contains("netloom"),
        "netloom table left",
    )
}
