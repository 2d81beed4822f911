//! netloomd as Docker uses it.
//!
//! `netloomd::*` start the real binary in a fake host and speak the plugin protocol to it over
//! its unix sockets, as dockerd does (shapes from shared/docker/protocol-trace.jsonl), playing
//! Docker's part in the kernel too (moving the link into a container namespace): restarts,
//! kill -9 between two steps of an operation, the admin API.
//!
//! `docker::*` run a private dockerd (tests::docker) next to netloomd in a fake host and drive it
//! with the docker CLI: networks with every option, traffic between containers and from the
//! host, published ports, --internal, isolation, connect/disconnect, static IPs, IPv6, bad
//! requests, kill -9 of netloomd and a dockerd restart. They run one at a time (one dockerd is
//! enough load for two cores) and each ends by checking nothing is left.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use engine_core::store::file::FileStore;
use engine_core::{Key, StateStore};
use serde_json::{json, Value};
use tests::docker::{http_get_in, post, post_ok, DockerEnv, Netloomd, IMAGE};
use tests::fakehost::run_in_path;
use tests::{names, run_main, Cap, FakeHost, Suite};

const NET: &[Cap] = &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables];
const DOCKER: &[Cap] = &[
    Cap::Root,
    Cap::Veth,
    Cap::Bridge,
    Cap::Nftables,
    Cap::Dockerd,
];

const DOCKER_MACVLAN: &[Cap] = &[
    Cap::Root,
    Cap::Veth,
    Cap::Bridge,
    Cap::Nftables,
    Cap::Macvlan,
    Cap::Dockerd,
];

/// One dockerd at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn main() {
    let mut s = Suite::new();
    s.test(
        "netloomd::sockets_admin_api_and_clean_stop",
        NET,
        sockets_admin_and_stop,
    )
    .test(
        "netloomd::kill9_mid_lifecycle_then_restart",
        NET,
        kill9_mid_lifecycle,
    )
    .test(
        "netloomd::crash_points_roll_back_on_restart",
        NET,
        crash_points,
    )
    .test(
        "netloomd::firewall_flush_is_repaired_within_a_second",
        NET,
        firewall_flush_repaired,
    )
    .test("docker::network_options_and_bad_requests", DOCKER, || {
        serial(network_options_and_bad_requests)
    })
    .test("docker::traffic_isolation_and_internal", DOCKER, || {
        serial(traffic_isolation_internal)
    })
    .test("docker::published_ports", DOCKER, || {
        serial(published_ports)
    })
    .test("docker::connect_disconnect_static_ip_ipv6", DOCKER, || {
        serial(connect_disconnect_static_ipv6)
    })
    .test("docker::netloomd_kill9_and_dockerd_restart", DOCKER, || {
        serial(restarts)
    })
    .test("docker::macvlan_on_a_veth_parent", DOCKER_MACVLAN, || {
        serial(macvlan_on_veth_parent)
    })
    .test("docker::managed_plugin_creates_networks", DOCKER, || {
        serial(managed_plugin)
    });
    run_main(s)
}

fn serial(f: fn() -> Result<(), String>) -> Result<(), String> {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    f()
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Keys netloom still has in a state directory, outside what may legitimately stay (locks are
/// not keys; nothing else should remain once every network is gone).
fn store_leftovers(state_dir: &Path) -> Result<Vec<String>, String> {
    let store = FileStore::open(state_dir).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for prefix in [
        "docker",
        "networks",
        "endpoints",
        "ipam",
        "journal",
        "drivers",
    ] {
        for (k, _) in store.list(&Key::new([prefix])).map_err(|e| e.to_string())? {
            out.push(k.to_string());
        }
    }
    Ok(out)
}

/// Links netloom made in the fake host (bridges nlbr-*, veth ends nl*/nc*), and its nft table.
fn kernel_leftovers(host: &FakeHost) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let links = host.sh(&["ip", "-o", "link", "show"])?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let name = line
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("");
        if name.starts_with("nl") || name.starts_with("nc") {
            out.push(format!("link {name}"));
        }
    }
    let tables = host.sh_any(&["nft", "list", "tables"])?;
    for line in String::from_utf8_lossy(&tables.stdout).lines() {
        if line.contains("netloom") {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

fn no_leftovers(host: &FakeHost, state_dir: &Path) -> Result<(), String> {
    // The reaper deletes detached veths in the background: give it a moment.
    let mut left = Vec::new();
    for _ in 0..50 {
        left = kernel_leftovers(host)?;
        left.extend(store_leftovers(state_dir)?);
        if left.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("left behind: {left:?}"))
}

// ------------------------------------------------------------------ netloomd alone

fn sockets_admin_and_stop() -> Result<(), String> {
    let host = FakeHost::new("nld")?;
    let dir = host.state_dir().to_path_buf();
    let plugins = dir.join("plugins");
    let mut d = Netloomd::start(&host, &dir.join("nl"), &plugins, None)?;
    for sock in [d.bridge_socket(), d.ipam_socket(), d.admin.clone()] {
        let meta = std::fs::metadata(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        ensure(mode == 0o600, || {
            format!("{} has mode {mode:o}, want 600", sock.display())
        })?;
    }
    let a = post_ok(&d.bridge_socket(), "/Plugin.Activate", &Value::Null)?;
    ensure(a == json!({"Implements": ["NetworkDriver"]}), || {
        format!("Activate: {a}")
    })?;
    let a = post_ok(&d.ipam_socket(), "/Plugin.Activate", &Value::Null)?;
    ensure(a == json!({"Implements": ["IpamDriver"]}), || {
        format!("Activate: {a}")
    })?;
    let (s, _) = post(&d.bridge_socket(), "/NetworkDriver.Nope", &json!({}))?;
    ensure(s == 404, || format!("unknown method answered {s}"))?;
    let (s, v) = tests::docker::http(
        &d.bridge_socket(),
        "POST",
        "/NetworkDriver.CreateNetwork",
        Some("{oops"),
    )?;
    ensure(s == 400 && v.contains("\"Err\""), || {
        format!("malformed JSON answered {s}: {v}")
    })?;
    let h = d.admin_json("/health")?;
    ensure(h["status"] == "ok" && h["firewall"] == "nftables", || {
        format!("health: {h}")
    })?;
    let (s, m) = d.admin_get("/metrics")?;
    ensure(
        s == 200
            && m.contains(
                "netloom_plugin_requests_total{method=\"Plugin.Activate\",code=\"200\"} 2",
            ),
        || format!("metrics: {m}"),
    )?;
    // A second daemon on the same state directory refuses to start, and says why.
    let mut twin = host.command(tests::cni::our_bin("netloomd")?)?;
    twin.arg("--state-dir")
        .arg(&d.state_dir)
        .arg("--plugin-dir")
        .arg(dir.join("plugins2"))
        .arg("--admin-socket")
        .arg(dir.join("admin2.sock"));
    let out = twin
        .output()
        .map_err(|e| format!("run a second netloomd: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        !out.status.success() && err.contains("another netloomd is running"),
        || format!("second netloomd: {} {err}", out.status),
    )?;
    // Clean stop: exit 0, sockets gone.
    let st = d.stop()?;
    ensure(st.success(), || format!("netloomd exited with {st}"))?;
    for sock in [d.bridge_socket(), d.ipam_socket(), d.admin.clone()] {
        ensure(!sock.exists(), || {
            format!("{} left after a clean stop", sock.display())
        })?;
    }
    Ok(())
}

/// Plays dockerd's part for one network and endpoint through the plugin protocol.
struct Driven {
    pool_id: String,
    nid: String,
    subnet: ipnetwork::Ipv4Network,
}

/// A Docker-style id: 64 hex digits, unique in this run.
fn hex_id() -> String {
    format!(
        "{:032x}{:032x}",
        u128::from(std::process::id()),
        u128::from(names::next())
    )
}

fn create_network(d: &Netloomd, subnet: ipnetwork::Ipv4Network) -> Result<Driven, String> {
    let ipam = d.ipam_socket();
    let pool = post_ok(
        &ipam,
        "/IpamDriver.RequestPool",
        &json!({"AddressSpace": "netloom-local", "Pool": subnet.to_string(), "SubPool": "", "Options": {}, "V6": false}),
    )?;
    let pool_id = pool["PoolID"].as_str().ok_or("no PoolID")?.to_string();
    let gw = post_ok(
        &ipam,
        "/IpamDriver.RequestAddress",
        &json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )?;
    let nid = hex_id();
    post_ok(
        &d.bridge_socket(),
        "/NetworkDriver.CreateNetwork",
        &json!({"NetworkID": nid, "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
                "IPv4Data": [{"AddressSpace": "netloom-local", "Pool": subnet.to_string(), "Gateway": gw["Address"]}], "IPv6Data": []}),
    )?;
    Ok(Driven {
        pool_id,
        nid,
        subnet,
    })
}

/// RequestAddress + CreateEndpoint + Join, then moves the link into `netns` and configures it
/// as dockerd would. Returns (endpoint id, address).
fn attach(d: &Netloomd, n: &Driven, netns: &Path) -> Result<(String, String), String> {
    let a = post_ok(
        &d.ipam_socket(),
        "/IpamDriver.RequestAddress",
        &json!({"PoolID": n.pool_id, "Address": "", "Options": null}),
    )?;
    let addr = a["Address"].as_str().ok_or("no Address")?.to_string();
    let eid = hex_id();
    post_ok(
        &d.bridge_socket(),
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": n.nid, "EndpointID": eid, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
    )?;
    let j = post_ok(
        &d.bridge_socket(),
        "/NetworkDriver.Join",
        &json!({"NetworkID": n.nid, "EndpointID": eid, "SandboxKey": netns.display().to_string(), "Options": {}}),
    )?;
    let src = j["InterfaceName"]["SrcName"].as_str().ok_or("no SrcName")?;
    let gw = j["Gateway"].as_str().ok_or("no Gateway")?;
    let name = netns
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    run_in_path(d.netns_path(), &["ip", "link", "set", src, "netns", &name])?;
    run_in_path(netns, &["ip", "link", "set", src, "name", "eth0"])?;
    run_in_path(netns, &["ip", "addr", "add", &addr, "dev", "eth0"])?;
    run_in_path(netns, &["ip", "link", "set", "eth0", "up"])?;
    run_in_path(netns, &["ip", "route", "add", "default", "via", gw])?;
    Ok((eid, addr))
}

fn ping(netns: &Path, to: &str) -> Result<(), String> {
    run_in_path(netns, &["ping", "-c", "1", "-W", "2", to]).map(|_| ())
}

fn detach(d: &Netloomd, n: &Driven, eid: &str, addr: &str) -> Result<(), String> {
    let s = d.bridge_socket();
    post_ok(
        &s,
        "/NetworkDriver.RevokeExternalConnectivity",
        &json!({"NetworkID": n.nid, "EndpointID": eid}),
    )?;
    post_ok(
        &s,
        "/NetworkDriver.Leave",
        &json!({"NetworkID": n.nid, "EndpointID": eid}),
    )?;
    post_ok(
        &s,
        "/NetworkDriver.DeleteEndpoint",
        &json!({"NetworkID": n.nid, "EndpointID": eid}),
    )?;
    let ip = addr.split('/').next().unwrap_or(addr);
    post_ok(
        &d.ipam_socket(),
        "/IpamDriver.ReleaseAddress",
        &json!({"PoolID": n.pool_id, "Address": ip}),
    )?;
    Ok(())
}

fn delete_network(d: &Netloomd, n: &Driven) -> Result<(), String> {
    let gw = n.subnet.nth(1).ok_or("subnet too small")?.to_string();
    post_ok(
        &d.ipam_socket(),
        "/IpamDriver.ReleaseAddress",
        &json!({"PoolID": n.pool_id, "Address": gw}),
    )?;
    post_ok(
        &d.ipam_socket(),
        "/IpamDriver.ReleasePool",
        &json!({"PoolID": n.pool_id}),
    )?;
    post_ok(
        &d.bridge_socket(),
        "/NetworkDriver.DeleteNetwork",
        &json!({"NetworkID": n.nid}),
    )?;
    Ok(())
}

fn kill9_mid_lifecycle() -> Result<(), String> {
    let mut host = FakeHost::new("k9")?;
    let dir = host.state_dir().join("nl");
    let plugins = host.state_dir().join("plugins");
    let c1 = host.container("c1")?;
    let c2 = host.container("c2")?;
    let mut d = Netloomd::start(&host, &dir, &plugins, None)?;
    let n = create_network(&d, names::subnet_v4())?;
    let (e1, a1) = attach(&d, &n, &c1)?;
    let gw = n.subnet.nth(1).ok_or("subnet")?.to_string();
    ping(&c1, &gw)?;
    post_ok(
        &d.bridge_socket(),
        "/NetworkDriver.ProgramExternalConnectivity",
        &json!({"NetworkID": n.nid, "EndpointID": e1, "Options": {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}]}}),
    )?;

    // kill -9 in the middle of the container's life: the kernel keeps working without us.
    d.kill9();
    ping(&c1, &gw)?;
    d.spawn(None)?;
    let nets = d.admin_json("/networks")?;
    ensure(
        nets.as_array().map(Vec::len) == Some(1) && nets[0]["endpoints"] == 1,
        || format!("networks after restart: {nets}"),
    )?;
    let eps = d.admin_json("/endpoints")?;
    ensure(
        eps[0]["endpoint_id"] == e1.as_str() && eps[0]["ports"][0]["host_port"] == 18080,
        || format!("endpoints after restart: {eps}"),
    )?;
    let rules = host.sh(&["nft", "list", "ruleset"])?;
    ensure(
        String::from_utf8_lossy(&rules.stdout).contains("18080"),
        || "published port lost over the restart".into(),
    )?;
    // New containers join; traffic flows between old and new.
    let (e2, a2) = attach(&d, &n, &c2)?;
    ping(&c2, a1.split('/').next().unwrap_or_default())?;
    detach(&d, &n, &e2, &a2)?;

    // What a reboot leaves: the store, but no bridge and no rules. The restart rebuilds both
    // before Docker asks for anything.
    d.kill9();
    let bridge = nets[0]["bridge"]
        .as_str()
        .ok_or("no bridge in /networks")?
        .to_string();
    host.sh(&["ip", "link", "del", &bridge])?;
    host.sh(&["nft", "flush", "ruleset"])?;
    d.spawn(None)?;
    let addrs = host.sh(&["ip", "-o", "addr", "show", "dev", &bridge])?;
    ensure(
        String::from_utf8_lossy(&addrs.stdout).contains(&format!("{gw}/")),
        || format!("bridge {bridge} or its gateway address not restored"),
    )?;
    let rules = String::from_utf8_lossy(&host.sh(&["nft", "list", "ruleset"])?.stdout).into_owned();
    ensure(
        rules.contains("table inet netloom") && rules.contains("18080"),
        || format!("rules not restored: {rules}"),
    )?;
    let (e2, a2) = attach(&d, &n, &c2)?;
    ping(&c2, &gw)?;
    // And everything can be removed.
    detach(&d, &n, &e1, &a1)?;
    detach(&d, &n, &e2, &a2)?;
    delete_network(&d, &n)?;
    no_leftovers(&host, &d.state_dir)
}

/// `nft flush ruleset` (what a firewalld reload or a careless script does) while netloomd
/// runs: the guard puts the network's rules and the published port back within a second,
/// counts it in /metrics, and a port revoked afterwards stays gone.
fn firewall_flush_repaired() -> Result<(), String> {
    let mut host = FakeHost::new("fwg")?;
    let dir = host.state_dir().join("nl");
    let plugins = host.state_dir().join("plugins");
    let c1 = host.container("c1")?;
    let d = Netloomd::start(&host, &dir, &plugins, None)?;
    let n = create_network(&d, names::subnet_v4())?;
    let (e1, a1) = attach(&d, &n, &c1)?;
    let publish = |port: u16| json!({"NetworkID": n.nid, "EndpointID": e1, "Options": {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": port, "HostPortEnd": port}]}});
    post_ok(
        &d.bridge_socket(),
        "/NetworkDriver.ProgramExternalConnectivity",
        &publish(18086),
    )?;
    let ruleset = |host: &FakeHost| -> Result<String, String> {
        Ok(String::from_utf8_lossy(&host.sh(&["nft", "list", "ruleset"])?.stdout).into_owned())
    };
    let before = ruleset(&host)?;
    ensure(
        before.contains("18086") && before.contains(&n.nid[..12]),
        || format!("port or network rules missing before the flush:\n{before}"),
    )?;
    host.sh(&["nft", "flush", "ruleset"])?;
    let flushed = std::time::Instant::now();
    let mut back = None;
    while flushed.elapsed() < Duration::from_secs(5) {
        let r = ruleset(&host)?;
        if r.contains("table inet netloom") && r.contains("18086") {
            back = Some(flushed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let took = back.ok_or("rules not restored within 5 s of `nft flush ruleset`")?;
    // The guard polls every 250 ms (about 0.3 s here); CI runs many tests at once on two
    // cores, so the bound leaves room for a loaded machine.
    eprintln!("firewall guard restored the rules {took:?} after the flush");
    ensure(took < Duration::from_secs(3), || {
        format!("rules restored only after {took:?}")
    })?;
    let (_, metrics) = d.admin_get("/metrics")?;
    let restores: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("netloom_firewall_restores_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    ensure(restores > 0, || {
        format!("no restore counted in /metrics:\n{metrics}")
    })?;
    // Revoking afterwards removes the port for good: the guard never brings it back.
    post_ok(
        &d.bridge_socket(),
        "/NetworkDriver.RevokeExternalConnectivity",
        &json!({"NetworkID": n.nid, "EndpointID": e1}),
    )?;
    std::thread::sleep(Duration::from_millis(800));
    ensure(!ruleset(&host)?.contains("18086"), || {
        "a revoked port came back".into()
    })?;
    detach(&d, &n, &e1, &a1)?;
    delete_network(&d, &n)?;
    std::thread::sleep(Duration::from_millis(600));
    ensure(!ruleset(&host)?.contains(&n.nid[..12]), || {
        "a deleted network's rules came back".into()
    })?;
    no_leftovers(&host, &d.state_dir)
}

fn crash_points() -> Result<(), String> {
    let mut host = FakeHost::new("crash")?;
    let dir = host.state_dir().join("nl");
    let plugins = host.state_dir().join("plugins");
    let c1 = host.container("c1")?;
    let subnet = names::subnet_v4();
    let mut d = Netloomd::start(&host, &dir, &plugins, Some("create-network:after-pools"))?;
    // CreateNetwork dies after the record and shadow pool, before the bridge exists: Docker
    // sees a broken connection.
    ensure(create_network(&d, subnet).is_err(), || {
        "CreateNetwork answered although netloomd was to die".into()
    })?;
    d.wait_dead(Duration::from_secs(5))?;
    d.spawn(Some("create-endpoint:after-attach"))?;
    let h = d.admin_json("/health")?;
    ensure(
        h["reconcile"]["networks_rolled_back"]
            .as_array()
            .map(Vec::len)
            == Some(1),
        || format!("health after restart: {h}"),
    )?;
    ensure(d.admin_json("/networks")? == json!([]), || {
        "a half-created network survived the restart".into()
    })?;
    // The same subnet is free again (the IPAM driver's pool from before is Docker's, released
    // by Docker's own rollback; here we release it as Docker would).
    let pools = post_ok(
        &d.ipam_socket(),
        "/IpamDriver.RequestPool",
        &json!({"AddressSpace": "netloom-local", "Pool": subnet.to_string(), "V6": false}),
    )?;
    post_ok(
        &d.ipam_socket(),
        "/IpamDriver.ReleasePool",
        &json!({"PoolID": pools["PoolID"]}),
    )?;
    post_ok(
        &d.ipam_socket(),
        "/IpamDriver.ReleasePool",
        &json!({"PoolID": pools["PoolID"]}),
    )?;
    let n = create_network(&d, subnet)?;
    // CreateEndpoint dies after the engine made the veth, before netloomd recorded it.
    ensure(attach(&d, &n, &c1).is_err(), || {
        "CreateEndpoint answered although netloomd was to die".into()
    })?;
    d.wait_dead(Duration::from_secs(5))?;
    d.spawn(None)?;
    let h = d.admin_json("/health")?;
    ensure(
        h["reconcile"]["endpoints_rolled_back"]
            .as_array()
            .map(Vec::len)
            == Some(1),
        || format!("health after restart: {h}"),
    )?;
    ensure(d.admin_json("/endpoints")? == json!([]), || {
        "a half-created endpoint survived".into()
    })?;
    let veths = host.sh(&["ip", "-o", "link", "show", "type", "veth"])?;
    let left = String::from_utf8_lossy(&veths.stdout)
        .lines()
        .filter(|l| l.contains(": nl") || l.contains(": nc"))
        .count();
    ensure(left == 0, || {
        format!(
            "the rolled-back endpoint's veth is still there: {}",
            String::from_utf8_lossy(&veths.stdout)
        )
    })?;
    // Docker's side of that failed CreateEndpoint released its address; now a new one works.
    let (e1, a1) = attach(&d, &n, &c1)?;
    ping(&c1, &n.subnet.nth(1).ok_or("subnet")?.to_string())?;
    detach(&d, &n, &e1, &a1)?;
    // Release the address the failed attempt leased (Docker does this on its rollback).
    for lease in 2..4u32 {
        let ip = n.subnet.nth(lease).ok_or("subnet")?.to_string();
        post_ok(
            &d.ipam_socket(),
            "/IpamDriver.ReleaseAddress",
            &json!({"PoolID": n.pool_id, "Address": ip}),
        )?;
    }
    delete_network(&d, &n)?;
    no_leftovers(&host, &d.state_dir)
}

// ------------------------------------------------------------------ with a real dockerd

fn finish(env: &DockerEnv) -> Result<(), String> {
    env.clean()?;
    no_leftovers(&env.host, &env.netloomd.state_dir)
}

fn network_options_and_bad_requests() -> Result<(), String> {
    let env = DockerEnv::start("dko")?;
    let (d, ipam) = (env.driver(), env.ipam_driver());
    let s1 = names::subnet_v4().to_string();
    let br = format!("nlbr-o{}", names::next());
    // Every bridge option, with netloom's IPAM: --subnet --ip-range --gateway --aux-address.
    let s1_net: ipnetwork::Ipv4Network = s1.parse().map_err(|e| format!("{e}"))?;
    let gw = s1_net.nth(254).ok_or("subnet")?.to_string();
    let aux = s1_net.nth(5).ok_or("subnet")?.to_string();
    let range = format!("{}/25", s1_net.nth(128).ok_or("subnet")?);
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--ipam-driver",
        &ipam,
        "--subnet",
        &s1,
        "--ip-range",
        &range,
        "--gateway",
        &gw,
        "--aux-address",
        &format!("r={aux}"),
        "-o",
        &format!("com.docker.network.bridge.name={br}"),
        "-o",
        "com.docker.network.bridge.enable_icc=true",
        "-o",
        "com.docker.network.bridge.enable_ip_masquerade=true",
        "-o",
        "com.docker.network.bridge.host_binding_ipv4=127.0.0.1",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "opts",
    ])?;
    let link = env.host.sh(&["ip", "-o", "link", "show", &br])?;
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    ensure(link.contains("mtu 1400"), || {
        format!("bridge {br} without mtu 1400: {link}")
    })?;
    let addrs = env.host.sh(&["ip", "-o", "addr", "show", "dev", &br])?;
    let prefix = s1_net.prefix();
    ensure(
        String::from_utf8_lossy(&addrs.stdout).contains(&format!("{gw}/{prefix}")),
        || format!("gateway {gw} not on {br}"),
    )?;
    // Dynamic addresses come from --ip-range; the aux address is never handed out.
    let c = env.docker(&[
        "run",
        "-d",
        "--name",
        "o1",
        "--network",
        "opts",
        IMAGE,
        "sleep",
        "300",
    ])?;
    let ip = env.ip_of("o1", "opts")?;
    ensure(
        ip.parse::<std::net::Ipv4Addr>()
            .map(|a| a.octets()[3] >= 128)
            .unwrap_or(false),
        || format!("{ip} is not from --ip-range {range}"),
    )?;
    let inside = env.exec("o1", &["ip", "-o", "link", "show", "eth0"])?;
    ensure(inside.contains("mtu 1400"), || {
        format!("container link without mtu 1400: {inside}")
    })?;
    let e = env.docker_fails(&[
        "run",
        "--rm",
        "--network",
        "opts",
        "--ip",
        &aux,
        IMAGE,
        "true",
    ])?;
    ensure(e.contains("reserved") || e.contains("in use"), || {
        format!("aux address given out: {e}")
    })?;
    env.docker(&["rm", "-f", &c])?;

    // Docker's own IPAM works too, and so does --internal.
    let s2 = names::subnet_v4().to_string();
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet",
        &s2,
        "--internal",
        "internal",
    ])?;

    // Bad requests: a clear error naming the problem, and nothing changes.
    let before = env.netloomd.admin_json("/networks")?;
    let s3 = names::subnet_v4().to_string();
    for (args, needle) in [
        (
            vec!["-o", "com.docker.network.bridge.enable_ip_masqurade=false"],
            "did you mean com.docker.network.bridge.enable_ip_masquerade",
        ),
        (
            vec!["-o", "com.docker.network.bridge.inhibit_ipv4=true"],
            "not supported",
        ),
        (vec!["-o", "com.docker.network.driver.mtu=jumbo"], "MTU"),
        (
            vec!["-o", "com.docker.network.bridge.gateway_mode_ipv4=routed"],
            "nat",
        ),
    ] {
        let mut a = vec![
            "network",
            "create",
            "-d",
            d.as_str(),
            "--subnet",
            s3.as_str(),
        ];
        a.extend(args);
        a.push("bad");
        let e = env.docker_fails(&a)?;
        ensure(e.contains(needle), || {
            format!("`docker {}` said: {e}", a.join(" "))
        })?;
    }
    // Overlapping another netloom network's subnet.
    let e = env.docker_fails(&[
        "network",
        "create",
        "-d",
        &d,
        "--ipam-driver",
        &ipam,
        "--subnet",
        &s1,
        "dup",
    ])?;
    ensure(e.contains("overlaps"), || format!("overlap: {e}"))?;
    let e = env.docker_fails(&["network", "create", "-d", &d, "--subnet", &s2, "dup2"])?;
    ensure(e.contains("overlap"), || {
        format!("overlap (default IPAM): {e}")
    })?;
    // An exhausted pool: a /30 holds the gateway and one container.
    let tiny = format!("{}/30", s3.split('/').next().unwrap_or_default());
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--ipam-driver",
        &ipam,
        "--subnet",
        &tiny,
        "tiny",
    ])?;
    env.docker(&[
        "run",
        "-d",
        "--name",
        "t1",
        "--network",
        "tiny",
        IMAGE,
        "sleep",
        "300",
    ])?;
    let e = env.docker_fails(&[
        "run",
        "-d",
        "--name",
        "t2",
        "--network",
        "tiny",
        IMAGE,
        "sleep",
        "300",
    ])?;
    ensure(e.contains("no free address"), || {
        format!("exhausted pool: {e}")
    })?;
    env.docker(&["rm", "-f", "t1", "t2"])
        .or_else(|_| env.docker(&["rm", "-f", "t1"]))?;
    env.docker(&["network", "rm", "tiny"])?;
    let after = env.netloomd.admin_json("/networks")?;
    ensure(before == after, || {
        format!("failed requests changed netloom's networks: {before} -> {after}")
    })?;
    // Malformed and unknown requests straight at the socket.
    let (s, v) = tests::docker::http(
        &env.netloomd.bridge_socket(),
        "POST",
        "/NetworkDriver.Join",
        Some("{\"NetworkID\":"),
    )?;
    ensure(s == 400 && v.contains("malformed"), || {
        format!("malformed: {s} {v}")
    })?;
    let (s, v) = post(
        &env.netloomd.bridge_socket(),
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": "0000", "EndpointID": "1111", "Interface": {"Address": "10.0.0.2/24"}}),
    )?;
    ensure(
        s == 400
            && v["Err"]
                .as_str()
                .unwrap_or("")
                .contains("not a netloom network"),
        || format!("unknown network: {s} {v}"),
    )?;

    env.docker(&["network", "rm", "opts", "internal"])?;
    let gone = env.host.sh_any(&["ip", "link", "show", &br])?;
    ensure(!gone.status.success(), || {
        format!("bridge {br} left after network rm")
    })?;
    finish(&env)
}

fn ping_ok(env: &DockerEnv, c: &str, to: &str) -> Result<(), String> {
    env.exec(c, &["ping", "-c", "1", "-W", "2", to]).map(|_| ())
}

fn ping_fails(env: &DockerEnv, c: &str, to: &str) -> Result<(), String> {
    // The container must be there and answer, so a failed ping means a blocked packet.
    env.exec(c, &["true"])?;
    ensure(
        !env.exec_status(c, &["ping", "-c", "1", "-W", "1", to]),
        || format!("{c} reached {to} but should not"),
    )
}

/// An "outside" namespace wired to the fake host: 198.18.<n>.2 behind 198.18.<n>.1.
fn outside(env: &mut DockerEnv) -> Result<(PathBuf, String, String), String> {
    let out = env.host.container("out")?;
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = names::next() % 250;
    let (host_ip, out_ip) = (format!("198.18.{n}.1"), format!("198.18.{n}.2"));
    env.host.sh(&[
        "ip", "link", "add", "vout", "type", "veth", "peer", "name", "vin", "netns", &name,
    ])?;
    env.host
        .sh(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", "vout"])?;
    env.host.sh(&["ip", "link", "set", "vout", "up"])?;
    run_in_path(
        &out,
        &["ip", "addr", "add", &format!("{out_ip}/24"), "dev", "vin"],
    )?;
    run_in_path(&out, &["ip", "link", "set", "vin", "up"])?;
    run_in_path(&out, &["ip", "route", "add", "default", "via", &host_ip])?;
    Ok((out, host_ip, out_ip))
}

fn traffic_isolation_internal() -> Result<(), String> {
    let mut env = DockerEnv::start("dkt")?;
    let (_out, _host_ip, out_ip) = outside(&mut env)?;
    let d = env.driver();
    let (s1, s2, s3) = (
        names::subnet_v4().to_string(),
        names::subnet_v4().to_string(),
        names::subnet_v4().to_string(),
    );
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--ipam-driver",
        &env.ipam_driver(),
        "--subnet",
        &s1,
        "n1",
    ])?;
    env.docker(&["network", "create", "-d", &d, "--subnet", &s2, "n2"])?;
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet",
        &s3,
        "--internal",
        "n3",
    ])?;
    for (c, n) in [("a1", "n1"), ("a2", "n1"), ("b1", "n2"), ("i1", "n3")] {
        env.docker(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            n,
            IMAGE,
            "sleep",
            "300",
        ])?;
    }
    let (a2, b1) = (env.ip_of("a2", "n1")?, env.ip_of("b1", "n2")?);
    // Two containers of one network talk; the network reaches outside (masqueraded).
    ping_ok(&env, "a1", &a2)?;
    ping_ok(&env, "a1", &out_ip)?;
    ping_ok(&env, "b1", &out_ip)?;
    // Two netloom networks are isolated from each other.
    ping_fails(&env, "a1", &b1)?;
    ping_fails(&env, "b1", &a2)?;
    // netlab enters a Docker container by name (through the Docker API) and sees its address.
    let netlab = tests::cni::our_bin("netlab")?;
    let out = std::process::Command::new(&netlab)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", env.dockerd.sock.display()),
        )
        .args(["exec", "a2", "--", "ip", "-o", "-4", "addr", "show"])
        .output()
        .map_err(|e| format!("run netlab: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure(
        out.status.success() && text.contains(&format!("{a2}/")),
        || {
            format!(
                "netlab exec a2 did not run inside the container ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        },
    )?;
    // --internal: no default route, no way out.
    let routes = env.exec("i1", &["ip", "route"])?;
    ensure(!routes.contains("default"), || {
        format!("internal container has a default route: {routes}")
    })?;
    ping_fails(&env, "i1", &out_ip)?;
    finish(&env)
}

/// GET / on `addr` from the fake host, retried for a moment (the server may still be starting).
fn get(host: &FakeHost, addr: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..40 {
        match http_get_in(host.netns().path(), addr) {
            Ok(b) => return Ok(b),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

fn published_ports() -> Result<(), String> {
    let mut env = DockerEnv::start("dkp")?;
    let (out, host_ip, _) = outside(&mut env)?;
    let d = env.driver();
    let s = names::subnet_v4().to_string();
    env.docker(&["network", "create", "-d", &d, "--subnet", &s, "pub"])?;
    // Single port on every address, a loopback-only port, a range, udp: one container.
    env.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "pub",
        "-p",
        "18081:80",
        "-p",
        "127.0.0.1:18082:80",
        "-p",
        "18090-18091:8090-8091",
        "-p",
        "15353:53/udp",
        IMAGE,
        "sh",
        "-c",
        "httpd -p 8090 -h /www; httpd -p 8091 -h /www; httpd -f -p 80 -h /www",
    ])?;
    let want = "hello from netloom";
    for addr in [
        "127.0.0.1:18082",
        "127.0.0.1:18081",
        "127.0.0.1:18090",
        "127.0.0.1:18091",
    ] {
        let body = get(&env.host, addr)?;
        ensure(body.contains(want), || {
            format!("{addr} from the host answered {body:?}")
        })?;
    }
    // From outside the host: the all-addresses port answers, the loopback-only one does not.
    let body = http_get_in(&out, &format!("{host_ip}:18081"))?;
    ensure(body.contains(want), || {
        format!("18081 from outside answered {body:?}")
    })?;
    ensure(
        http_get_in(&out, &format!("{host_ip}:18082")).is_err(),
        || "the 127.0.0.1-bound port answered from outside".into(),
    )?;
    let rules =
        String::from_utf8_lossy(&env.host.sh(&["nft", "list", "ruleset"])?.stdout).into_owned();
    ensure(rules.contains("15353"), || {
        "udp port 15353 not published".into()
    })?;
    // A port another container holds: a clear error, and the container does not start.
    let e = env.docker_fails(&[
        "run",
        "-d",
        "--name",
        "clash",
        "--network",
        "pub",
        "-p",
        "18081:80",
        IMAGE,
        "sleep",
        "300",
    ])?;
    ensure(e.contains("already published"), || {
        format!("port clash: {e}")
    })?;
    env.docker(&["rm", "-f", "clash"])?;
    // Removing the container unpublishes.
    env.docker(&["rm", "-f", "web"])?;
    ensure(
        http_get_in(env.host.netns().path(), "127.0.0.1:18081").is_err(),
        || "port still published after docker rm".into(),
    )?;
    finish(&env)
}

fn connect_disconnect_static_ipv6() -> Result<(), String> {
    let env = DockerEnv::start("dkc")?;
    let d = env.driver();
    let s1: ipnetwork::Ipv4Network = names::subnet_v4();
    let s2: ipnetwork::Ipv4Network = names::subnet_v4();
    let v6 = names::subnet_v6();
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--ipam-driver",
        &env.ipam_driver(),
        "--subnet",
        &s1.to_string(),
        "c1",
    ])?;
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet",
        &s2.to_string(),
        "--ipv6",
        "--subnet",
        &v6.to_string(),
        "c2",
    ])?;
    let ip1 = s1.nth(50).ok_or("subnet")?.to_string();
    // --ip on run, --ip on connect.
    env.docker(&[
        "run",
        "-d",
        "--name",
        "cx",
        "--network",
        "c1",
        "--ip",
        &ip1,
        IMAGE,
        "sleep",
        "300",
    ])?;
    ensure(env.ip_of("cx", "c1")? == ip1, || {
        "static --ip not used".into()
    })?;
    let e = env.docker_fails(&[
        "run",
        "--rm",
        "--network",
        "c1",
        "--ip",
        &ip1,
        IMAGE,
        "true",
    ])?;
    ensure(e.contains("in use"), || format!("duplicate --ip: {e}"))?;
    env.docker(&[
        "run",
        "-d",
        "--name",
        "cy",
        "--network",
        "c2",
        IMAGE,
        "sleep",
        "300",
    ])?;
    let y4 = env.ip_of("cy", "c2")?;
    let ip2 = s2.nth(60).ok_or("subnet")?.to_string();
    env.docker(&["network", "connect", "--ip", &ip2, "c2", "cx"])?;
    let addrs = env.exec("cx", &["ip", "-o", "addr"])?;
    ensure(addrs.contains(&ip1) && addrs.contains(&ip2), || {
        format!("connect: {addrs}")
    })?;
    ping_ok(&env, "cx", &y4)?;
    // IPv6 between x and y on the dual-stack network.
    let f = "{{(index .NetworkSettings.Networks \"c2\").GlobalIPv6Address}}";
    let y6 = env.docker(&["inspect", "-f", f, "cy"])?;
    ensure(y6.parse::<std::net::Ipv6Addr>().is_ok(), || {
        format!("y has no IPv6 address: {y6:?}")
    })?;
    let ok6 = (0..30).any(|_| {
        // Duplicate address detection keeps a new address unusable for a moment.
        let r = env.exec_status("cx", &["ping", "-6", "-c", "1", "-W", "1", &y6]);
        if !r {
            std::thread::sleep(Duration::from_millis(200));
        }
        r
    });
    ensure(ok6, || format!("x cannot ping {y6}"))?;
    let eps = env.netloomd.admin_json("/endpoints")?;
    ensure(eps.as_array().map(Vec::len) == Some(3), || {
        format!("endpoints: {eps}")
    })?;
    env.docker(&["network", "disconnect", "c2", "cx"])?;
    let addrs = env.exec("cx", &["ip", "-o", "addr"])?;
    ensure(!addrs.contains(&ip2), || {
        format!("still connected: {addrs}")
    })?;
    ensure(
        !env.exec_status("cx", &["ping", "-c", "1", "-W", "1", &y4]),
        || "disconnected container still reaches c2".into(),
    )?;
    let eps = env.netloomd.admin_json("/endpoints")?;
    ensure(eps.as_array().map(Vec::len) == Some(2), || {
        format!("endpoints after disconnect: {eps}")
    })?;
    // Reconnect works (the address was released).
    env.docker(&["network", "connect", "--ip", &ip2, "c2", "cx"])?;
    ping_ok(&env, "cx", &y4)?;
    finish(&env)
}

fn restarts() -> Result<(), String> {
    let mut env = DockerEnv::start("dkr")?;
    let d = env.driver();
    let s = names::subnet_v4().to_string();
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--ipam-driver",
        &env.ipam_driver(),
        "--subnet",
        &s,
        "r",
    ])?;
    for c in ["r1", "r2"] {
        // --init: the container's PID 1 then stops on SIGTERM, so the dockerd restart below
        // does not wait out Docker's 10 s stop timeout.
        let port = if c == "r1" { "18101:80" } else { "18102:80" };
        env.docker(&[
            "run",
            "-d",
            "--init",
            "--name",
            c,
            "--network",
            "r",
            "-p",
            port,
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])?;
    }
    let r2 = env.ip_of("r2", "r")?;
    // kill -9 netloomd: running containers keep their connectivity.
    env.netloomd.kill9();
    ping_ok(&env, "r1", &r2)?;
    env.netloomd.spawn(None)?;
    // New containers join, old ones still published, removal works.
    env.docker(&[
        "run",
        "-d",
        "--name",
        "r3",
        "--network",
        "r",
        IMAGE,
        "sleep",
        "300",
    ])?;
    ping_ok(&env, "r3", &r2)?;
    let body = get(&env.host, "127.0.0.1:18101")?;
    ensure(body.contains("hello"), || {
        format!("published port after a netloomd restart answered {body:?}")
    })?;
    env.docker(&["rm", "-f", "r3"])?;
    // dockerd restart (no live-restore): containers stop, Docker removes their endpoints; they
    // start again on new ones.
    env.dockerd.stop()?;
    env.dockerd.spawn()?;
    let eps = env.netloomd.admin_json("/endpoints")?;
    ensure(eps == json!([]), || {
        format!("endpoints of stopped containers remain after a dockerd restart: {eps}")
    })?;
    env.docker(&["start", "r1", "r2"])?;
    let r2 = env.ip_of("r2", "r")?;
    ping_ok(&env, "r1", &r2)?;

    // dockerd with --live-restore: its containers keep running, and keep talking, while it is
    // down; when it is back they are still attached and netloomd still has their endpoints.
    env.dockerd.stop()?;
    env.dockerd.live_restore = true;
    env.dockerd.spawn()?;
    env.docker(&["start", "r1", "r2"])?;
    let r2 = env.ip_of("r2", "r")?;
    let pid = env.docker(&["inspect", "-f", "{{.State.Pid}}", "r1"])?;
    let r1_netns = PathBuf::from(format!("/proc/{}/ns/net", pid.trim()));
    env.dockerd.stop()?;
    run_in_path(&r1_netns, &["ping", "-c", "1", "-W", "2", &r2])
        .map_err(|e| format!("with dockerd down under --live-restore: {e}"))?;
    env.dockerd.spawn()?;
    let running = env.docker(&["ps", "--format", "{{.Names}}"])?;
    ensure(running.contains("r1") && running.contains("r2"), || {
        format!("containers did not survive a live-restore restart: {running}")
    })?;
    ping_ok(&env, "r1", &r2)?;
    let eps = env.netloomd.admin_json("/endpoints")?;
    ensure(eps.as_array().map(Vec::len) == Some(2), || {
        format!("netloomd's endpoints after a live-restore restart: {eps}")
    })?;
    finish(&env)
}

/// `docker network create -d netloom-macvlan -o parent=<veth>`: the headline use of the macvlan
/// driver through Docker. Two containers on the parent talk; private mode on a second network
/// keeps its containers apart; removing the networks leaves the parent as it was.
fn macvlan_on_veth_parent() -> Result<(), String> {
    let env = DockerEnv::start("dkm")?;
    let d = env.netloomd.driver_of("macvlan");
    let n = names::next();
    let (parent, peer) = (format!("pmv{n}"), format!("pmw{n}"));
    env.host.sh(&[
        "ip", "link", "add", &parent, "type", "veth", "peer", "name", &peer,
    ])?;
    env.host.sh(&["ip", "link", "set", &parent, "up"])?;
    env.host.sh(&["ip", "link", "set", &peer, "up"])?;
    let (s1, s2) = (
        names::subnet_v4().to_string(),
        names::subnet_v4().to_string(),
    );
    let parent_opt = format!("parent={parent}");
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "-o",
        &parent_opt,
        "--subnet",
        &s1,
        "lan",
    ])?;
    env.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "-o",
        &parent_opt,
        "-o",
        "macvlan_mode=private",
        "--subnet",
        &s2,
        "priv",
    ])?;
    for (c, net) in [("m1", "lan"), ("m2", "lan"), ("p1", "priv"), ("p2", "priv")] {
        env.docker(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            net,
            IMAGE,
            "sleep",
            "300",
        ])?;
    }
    // The container's interface is a macvlan on our parent, with the address Docker reports.
    let m2 = env.ip_of("m2", "lan")?;
    // Read with the host's iproute2 inside the container's netns (busybox's ip has no -d).
    let sandbox = env.docker(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "m1"])?;
    let links = run_in_path(
        Path::new(sandbox.trim()),
        &["ip", "-d", "link", "show", "eth0"],
    )?;
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    ensure(
        links.contains("macvlan") && links.contains("mode bridge"),
        || format!("m1's eth0 is not a bridge-mode macvlan: {links}"),
    )?;
    ping_ok(&env, "m1", &m2)?;
    ping_ok(&env, "m2", &env.ip_of("m1", "lan")?)?;
    // Private mode: macvlans on one parent never talk to each other.
    let p2 = env.ip_of("p2", "priv")?;
    ping_fails(&env, "p1", &p2)?;
    // A parent that is not there is a clear error and creates nothing.
    let err = env.docker_fails(&[
        "network",
        "create",
        "-d",
        &d,
        "-o",
        "parent=nosuchlink0",
        "--subnet",
        &names::subnet_v4().to_string(),
        "bad",
    ])?;
    ensure(err.contains("nosuchlink0"), || {
        format!("a missing parent's error does not name it: {err}")
    })?;
    finish(&env)?;
    // The parent is the user's: still there and up after the networks are gone.
    let state = env.host.sh(&["ip", "-o", "link", "show", &parent])?;
    let state = String::from_utf8_lossy(&state.stdout).into_owned();
    ensure(state.contains("UP"), || {
        format!("parent {parent} changed after the networks were removed: {state}")
    })?;
    env.host.sh(&["ip", "link", "del", &parent])?;
    Ok(())
}

/// A managed (v2) plugin, as daemon/plugin/build.sh makes it, removed on drop.
struct ManagedPlugin<'a> {
    env: &'a DockerEnv,
    name: String,
}

impl Drop for ManagedPlugin<'_> {
    fn drop(&mut self) {
        let _ = self
            .env
            .dockerd
            .docker(&["plugin", "disable", "-f", &self.name]);
        let _ = self.env.dockerd.docker(&["plugin", "rm", "-f", &self.name]);
    }
}

/// netloomd as a Docker managed plugin (daemon/plugin/build.sh): Docker runs it with /proc/sys
/// read-only, so everything it sets on the host (route_localnet for 127.0.0.1 publishing) must
/// go through netlink. Two containers talk and a port published on 127.0.0.1 answers.
fn managed_plugin() -> Result<(), String> {
    let env = DockerEnv::start("dkp")?;
    let bin = tests::cni::our_bin("netloomd")?;
    let name = format!("nlt{}/netloom:test", names::next());
    let state = env.host.state_dir().join("plugin-state");
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/plugin/build.sh");
    let docker = format!(
        "{} -H unix://{}",
        tests::docker::docker_cli().display(),
        env.dockerd.sock.display()
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&name)
        .env("DOCKER", &docker)
        .env("NETLOOMD_BIN", &bin)
        .env("ENABLE", "0")
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    let plugin = ManagedPlugin {
        env: &env,
        name: name.clone(),
    };
    ensure(out.status.success(), || {
        format!(
            "build.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    // The test's own state directory and its dockerd's netns directory instead of the host's.
    let netns_dir = env.dockerd.root.join("exec/netns");
    std::fs::create_dir_all(&netns_dir).map_err(|e| e.to_string())?;
    env.docker(&[
        "plugin",
        "set",
        &name,
        &format!("state.source={}", state.display()),
        &format!("netns.source={}", netns_dir.display()),
    ])?;
    env.docker(&["plugin", "enable", &name])?;
    let subnet = names::subnet_v4().to_string();
    env.docker(&[
        "network",
        "create",
        "-d",
        &name,
        "--ipam-driver",
        &name,
        "--subnet",
        &subnet,
        "mp",
    ])?;
    env.docker(&[
        "run",
        "-d",
        "--name",
        "w1",
        "--network",
        "mp",
        "-p",
        "127.0.0.1:18085:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])?;
    env.docker(&[
        "run",
        "-d",
        "--name",
        "w2",
        "--network",
        "mp",
        IMAGE,
        "sleep",
        "300",
    ])?;
    ping_ok(&env, "w2", &env.ip_of("w1", "mp")?)?;
    let body = get(&env.host, "127.0.0.1:18085")?;
    ensure(body.contains("hello from netloom"), || {
        format!("127.0.0.1:18085 through the managed plugin answered {body:?}")
    })?;
    env.docker(&["rm", "-f", "w1", "w2"])?;
    env.docker(&["network", "rm", "mp"])?;
    drop(plugin);
    no_leftovers(&env.host, &state)
}
