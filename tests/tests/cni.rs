//! The CNI plugins run as a runtime runs them: subprocesses in a fake host, env + stdin, real
//! namespaces, veths, bridges and traffic.

use std::path::{Path, PathBuf};
use std::thread;

use serde_json::{json, Value};
use tests::cni::{count_values, merge, our_bin, run, Call};
use tests::fakehost::run_in_path;
use tests::{names, run_main, Cap, FakeHost, Suite};

const NET: &[Cap] = &[Cap::Root, Cap::Veth, Cap::Bridge];

fn main() {
    let mut s = Suite::new();
    s.test(
        "cni::add_check_del_every_version",
        NET,
        add_check_del_every_version,
    )
    .test(
        "cni::pod_to_pod_and_masquerade_to_outside",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables],
        pod_to_pod_and_outside,
    )
    .test("cni::dual_stack_ipv6", NET, dual_stack)
    .test(
        "cni::static_ip_and_mac_from_runtime",
        NET,
        static_ip_and_mac,
    )
    .test(
        "cni::del_without_netns_still_cleans_up",
        NET,
        del_without_netns,
    )
    .test(
        "cni::failed_add_leaves_nothing",
        NET,
        failed_add_leaves_nothing,
    )
    .test("cni::gc_removes_only_stale_attachments", NET, gc_stale)
    .test(
        "cni::parallel_50_add_del_no_duplicates_no_leaks",
        NET,
        parallel_50,
    )
    .test(
        "cni::version_status_and_protocol_errors",
        &[Cap::Root],
        version_status_errors,
    )
    .test("cni::loopback_plugin", &[Cap::Root], loopback)
    .test(
        "cni::portmap_chain_publishes_conflicts_and_unpublishes",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables],
        portmap_chain,
    )
    .test(
        "cni::netloom_ipam_under_reference_bridge",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::RefCni],
        ipam_under_reference_bridge,
    )
    .test(
        "cni::backend_key_selects_the_firewall",
        &[
            Cap::Root,
            Cap::Veth,
            Cap::Bridge,
            Cap::Iptables,
            Cap::Nftables,
        ],
        backend_key,
    )
    .test(
        "cni::bridge_mac_stays_when_ports_leave",
        NET,
        bridge_mac_stays,
    )
    .test(
        "cni::delegated_ipam_reference_static_plugin",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::RefCni],
        delegated_ipam_static,
    );
    s.test(
        "cni::macspoofchk_drops_forged_source_macs",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables],
        macspoofchk,
    )
    .test(
        "cni::macspoofchk_refused_by_the_iptables_backend",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Iptables],
        macspoofchk_iptables,
    )
    .test(
        "cni::bridge_vlan_config_errors_and_kernel_refusal",
        NET,
        bridge_vlan_errors,
    )
    // Bridge VLAN filtering needs 802.1Q support, which this machine's kernel lacks: these run
    // in the QEMU kernel lane (tests/kernel/lane.sh), where a missing capability is a failure.
    .test(
        "cni::kernel::bridge_vlan_isolates_vlans_on_one_bridge",
        lane_caps(&[Cap::Root, Cap::Veth, Cap::Bridge, Cap::BridgeVlan]),
        bridge_vlan_isolation,
    )
    .test(
        "cni::kernel::bridge_vlan_gateway_port_and_check",
        lane_caps(&[Cap::Root, Cap::Veth, Cap::Bridge, Cap::BridgeVlan]),
        bridge_vlan_gateway,
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

/// A fake host with the netloom-bridge configuration of one network.
struct Net {
    host: FakeHost,
    bridge: String,
    subnet: ipnetwork::Ipv4Network,
    conf: Value,
}

impl Net {
    fn new(tag: &str, version: &str, extra: Value) -> Result<Net, String> {
        let host = FakeHost::new(tag)?;
        let name = names::unique(tag);
        let bridge = "nlbr0".to_string();
        let subnet = names::subnet_v4();
        let mut conf = json!({
            "cniVersion": version,
            "name": name,
            "type": "netloom-bridge",
            "bridge": bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipam": {"type": "netloom-ipam", "ranges": [[{"subnet": subnet.to_string()}]], "dataDir": host.state_dir().join("cni")},
            "stateDir": host.state_dir(),
        });
        merge(&mut conf, extra);
        Ok(Net {
            host,
            bridge,
            subnet,
            conf,
        })
    }

    fn call(
        &self,
        command: &str,
        cid: &str,
        netns: Option<&Path>,
        ifname: &str,
    ) -> Result<tests::cni::Outcome, String> {
        let call = Call {
            command,
            container_id: cid,
            netns,
            ifname,
            args: "IgnoreUnknown=1;K8S_POD_NAME=p",
        };
        run(&self.host, &our_bin("netloom-bridge")?, &call, &self.conf)
    }

    /// Host veths attached to the bridge.
    fn ports(&self) -> Result<usize, String> {
        let out = self
            .host
            .sh_any(&["ip", "-o", "link", "show", "master", &self.bridge])?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }

    /// Links of this host whose kernel deletion was handed to a reaper and not done within 5 s.
    fn graveyard(&self) -> Result<Vec<String>, String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = self.host.sh(&["ip", "-o", "link", "show"])?;
            let left: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
                .filter(|n| n.starts_with("nlz") || n.starts_with("nl") && n.len() == 13)
                .collect();
            if left.is_empty() || std::time::Instant::now() > deadline {
                return Ok(left);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn leases(&self) -> usize {
        count_values(&self.host.state_dir().join("data/ipam/leases"))
    }

    fn gateway(&self) -> String {
        let base = u32::from(self.subnet.network());
        std::net::Ipv4Addr::from(base + 1).to_string()
    }
}

fn addrs_in(netns: &Path, ifname: &str) -> Result<String, String> {
    let out = run_in_path(netns, &["ip", "-o", "addr", "show", "dev", ifname])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ping(from: &Path, to: &str) -> Result<(), String> {
    run_in_path(from, &["ping", "-c", "1", "-W", "2", to])
        .map(|_| ())
        .map_err(|e| format!("ping {to}: {e}"))
}

fn add_check_del_every_version() -> Result<(), String> {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let mut net = Net::new("ver", version, json!({}))?;
        let c = net.host.container("c")?;
        let r = net.call("ADD", "ctr1", Some(&c), "eth0")?.ok()?;
        ensure(
            r["cniVersion"] == version,
            format!("{version}: result version {}", r["cniVersion"]),
        )?;
        let ip = &r["ips"][0];
        let addr = ip["address"]
            .as_str()
            .ok_or(format!("{version}: no address in {r}"))?;
        ensure(
            net.subnet.contains(
                addr.split('/')
                    .next()
                    .unwrap_or("")
                    .parse()
                    .map_err(|e| format!("{e}"))?,
            ),
            "address outside the subnet",
        )?;
        // Pre-1.0 results carry "version" per IP; 1.x results must not.
        ensure(
            (ip.get("version").is_some()) == version.starts_with("0."),
            format!("{version}: ips[].version wrong in {r}"),
        )?;
        ensure(
            r["ips"][0]["gateway"] == net.gateway(),
            format!("{version}: gateway {}", r["ips"][0]["gateway"]),
        )?;
        let ifaces = r["interfaces"].as_array().ok_or("no interfaces")?;
        ensure(
            ifaces.len() == 3 && ifaces[2]["sandbox"] == c.to_string_lossy().as_ref(),
            format!("interfaces: {r}"),
        )?;
        ensure(
            addrs_in(&c, "eth0")?.contains(addr),
            "address not configured in the container",
        )?;
        ensure(net.ports()? == 1, "host veth not on the bridge")?;
        // host-local's on-disk view: <dataDir>/<network>/<ip> = "<container id>\r\n<ifname>".
        let ip_only = addr.split('/').next().unwrap_or_default();
        let lease_file = net
            .host
            .state_dir()
            .join("cni")
            .join(net.conf["name"].as_str().unwrap_or_default())
            .join(ip_only);
        let body = std::fs::read_to_string(&lease_file)
            .map_err(|e| format!("{}: {e}", lease_file.display()))?;
        ensure(
            body == "ctr1\r\neth0",
            format!("host-local lease file says {body:?}"),
        )?;
        if version != "0.3.0" && version != "0.3.1" {
            let mut conf = net.conf.clone();
            conf["prevResult"] = r.clone();
            let check_call = Call {
                command: "CHECK",
                container_id: "ctr1",
                netns: Some(&c),
                ifname: "eth0",
                args: "",
            };
            run(&net.host, &our_bin("netloom-bridge")?, &check_call, &conf)?.ok()?;
            // Drift: take the veth off the bridge; CHECK must notice.
            let host_veth = ifaces[1]["name"].as_str().unwrap_or_default();
            net.host.sh(&["ip", "link", "set", host_veth, "nomaster"])?;
            let out = run(&net.host, &our_bin("netloom-bridge")?, &check_call, &conf)?;
            let msg = out.err_code(102)?;
            ensure(
                msg.contains("not attached to bridge"),
                format!("CHECK message: {msg}"),
            )?;
            net.host
                .sh(&["ip", "link", "set", host_veth, "master", &net.bridge])?;
            run(&net.host, &our_bin("netloom-bridge")?, &check_call, &conf)?.ok()?;
            // Drift inside the container: its address flushed.
            run_in_path(&c, &["ip", "addr", "flush", "dev", "eth0"])?;
            let msg =
                run(&net.host, &our_bin("netloom-bridge")?, &check_call, &conf)?.err_code(102)?;
            ensure(msg.contains("missing"), format!("CHECK message: {msg}"))?;
        }
        net.call("DEL", "ctr1", Some(&c), "eth0")?.ok()?;
        ensure(!lease_file.exists(), "host-local lease file left after DEL")?;
        ensure(net.ports()? == 0, "veth left after DEL")?;
        let left = net.graveyard()?;
        ensure(
            left.is_empty(),
            format!("veths not deleted after DEL: {left:?}"),
        )?;
        ensure(
            run_in_path(&c, &["ip", "link", "show", "eth0"]).is_err(),
            "eth0 left in the container",
        )?;
        ensure(net.leases() == 0, "lease left after DEL")?;
        // DEL again succeeds (runtimes repeat it).
        net.call("DEL", "ctr1", Some(&c), "eth0")?.ok()?;
        net.conf["cniVersion"] = json!(version);
    }
    Ok(())
}

fn pod_to_pod_and_outside() -> Result<(), String> {
    let mut net = Net::new("p2p", "1.0.0", json!({"ipMasq": true}))?;
    let a = net.host.container("a")?;
    let b = net.host.container("b")?;
    let ra = net.call("ADD", "pa", Some(&a), "eth0")?.ok()?;
    let rb = net.call("ADD", "pb", Some(&b), "eth0")?.ok()?;
    let ip = |r: &Value| {
        r["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    ping(&a, &ip(&rb))?;
    ping(&b, &ip(&ra))?;
    ping(&a, &net.gateway())?;
    // An "outside" host on another link of the fake host (198.18.7.1 ↔ 198.18.7.2).
    outside(&mut net.host, "198.18.7")?;
    // The outside host has no route back to the pod subnet: only masquerade (ipMasq, through
    // the firewall engine) makes this ping work.
    ping(&a, "198.18.7.2")?;
    let table = || -> Result<String, String> {
        let out = net.host.sh(&["nft", "list", "table", "inet", "netloom"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    ensure(
        table()?.contains("masquerade"),
        "no masquerade rule in table inet netloom",
    )?;
    net.call("DEL", "pa", Some(&a), "eth0")?.ok()?;
    net.call("DEL", "pb", Some(&b), "eth0")?.ok()?;
    ensure(
        net.ports()? == 0 && net.leases() == 0,
        "leftovers after DEL",
    )?;
    let rules = table()?;
    ensure(
        !rules.contains("ep=pa/") && !rules.contains("ep=pb/"),
        format!("the firewall still names a deleted container:\n{rules}"),
    )
}

fn dual_stack() -> Result<(), String> {
    let v6 = names::subnet_v6();
    let mut net = Net::new("v6", "1.0.0", json!({}))?;
    net.conf["ipam"]["ranges"] =
        json!([[{"subnet": net.subnet.to_string()}], [{"subnet": v6.to_string()}]]);
    let a = net.host.container("a")?;
    let b = net.host.container("b")?;
    let ra = net.call("ADD", "a6", Some(&a), "eth0")?.ok()?;
    net.call("ADD", "b6", Some(&b), "eth0")?.ok()?;
    let ips = ra["ips"].as_array().ok_or("no ips")?;
    ensure(
        ips.len() == 2,
        format!("want one v4 and one v6 address: {ra}"),
    )?;
    let a6 = ips
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|s| s.contains(':'))
        .ok_or("no v6")?;
    let a6 = a6.split('/').next().unwrap_or_default();
    run_in_path(&b, &["ping", "-6", "-c", "1", "-W", "2", a6])
        .map_err(|e| format!("v6 ping: {e}"))?;
    let routes = run_in_path(&a, &["ip", "-6", "route", "show", "default"])?;
    ensure(
        !routes.stdout.is_empty(),
        "no IPv6 default route in the container",
    )?;
    net.call("DEL", "a6", Some(&a), "eth0")?.ok()?;
    net.call("DEL", "b6", Some(&b), "eth0")?.ok()?;
    ensure(net.leases() == 0, "v6 leases left")
}

fn static_ip_and_mac() -> Result<(), String> {
    let mut net = Net::new(
        "static",
        "1.0.0",
        json!({"capabilities": {"ips": true, "mac": true}}),
    )?;
    let want = std::net::Ipv4Addr::from(u32::from(net.subnet.network()) + 77).to_string();
    net.conf["runtimeConfig"] = json!({"ips": [format!("{want}/24")], "mac": "02:42:ac:11:00:99"});
    let c = net.host.container("c")?;
    let r = net.call("ADD", "st", Some(&c), "eth0")?.ok()?;
    ensure(
        r["ips"][0]["address"] == format!("{want}/24"),
        format!("static ip not honoured: {r}"),
    )?;
    ensure(
        r["interfaces"][2]["mac"] == "02:42:ac:11:00:99",
        format!("mac not honoured: {r}"),
    )?;
    // The same address for another container is a conflict naming the holder.
    let c2 = net.host.container("c2")?;
    let msg = net.call("ADD", "st2", Some(&c2), "eth0")?.err_code(101)?;
    ensure(
        msg.contains("st/eth0"),
        format!("conflict does not name the holder: {msg}"),
    )?;
    ensure(net.ports()? == 1, "failed ADD left a veth")?;
    net.call("DEL", "st", Some(&c), "eth0")?.ok()?;
    Ok(())
}

fn del_without_netns() -> Result<(), String> {
    let net = Net::new("nons", "1.0.0", json!({}))?;
    let ns_name = names::unique("gone");
    let ns = engine_core::netns::Netns::create_named(&ns_name).map_err(|e| e.to_string())?;
    let path = ns.path().to_path_buf();
    net.call("ADD", "gone1", Some(&path), "eth0")?.ok()?;
    ensure(net.ports()? == 1 && net.leases() == 1, "ADD did not attach")?;
    drop(ns); // the runtime deleted the namespace before DEL
    net.call("DEL", "gone1", None, "eth0")?.ok()?;
    ensure(net.ports()? == 0, "host veth left after DEL without netns")?;
    ensure(net.leases() == 0, "lease left after DEL without netns")?;
    // And with a path to a namespace that no longer exists.
    net.call("DEL", "gone1", Some(&path), "eth0")?.ok()?;
    Ok(())
}

fn failed_add_leaves_nothing() -> Result<(), String> {
    // A /30 has two usable addresses; one is the gateway: the second ADD exhausts the pool.
    let mut net = Net::new("fail", "1.0.0", json!({}))?;
    let small = format!("{}/30", net.subnet.network());
    net.conf["ipam"]["ranges"] = json!([[{"subnet": small}]]);
    let a = net.host.container("a")?;
    let b = net.host.container("b")?;
    net.call("ADD", "fa", Some(&a), "eth0")?.ok()?;
    let before = net.host.sh(&["ip", "-o", "link"])?.stdout;
    let msg = net.call("ADD", "fb", Some(&b), "eth0")?.err_code(100)?;
    ensure(
        msg.contains("no free address"),
        format!("exhaustion message: {msg}"),
    )?;
    ensure(
        net.host.sh(&["ip", "-o", "link"])?.stdout == before,
        "failed ADD changed the host's links",
    )?;
    ensure(
        run_in_path(&b, &["ip", "link", "show", "eth0"]).is_err(),
        "failed ADD left eth0 in the container",
    )?;
    ensure(net.leases() == 1, "failed ADD left a lease")?;
    // A netns that does not exist: clear error, nothing left.
    let missing = PathBuf::from("/run/netns").join(names::unique("nosuch"));
    let out = net.call("ADD", "fc", Some(&missing), "eth0")?;
    ensure(out.code != 0, "ADD into a missing netns succeeded")?;
    ensure(
        net.leases() == 1 && net.ports()? == 1,
        "ADD into a missing netns left something",
    )?;
    // A bad MTU is refused before anything is made.
    let mut bad = net.conf.clone();
    bad["mtu"] = json!(20);
    let call = Call {
        command: "ADD",
        container_id: "fd",
        netns: Some(&b),
        ifname: "eth0",
        args: "",
    };
    run(&net.host, &our_bin("netloom-bridge")?, &call, &bad)?.err_code(7)?;
    // The runtime's DEL after each failed ADD succeeds.
    for cid in ["fb", "fc", "fd"] {
        net.call("DEL", cid, Some(&b), "eth0")?.ok()?;
    }
    net.call("DEL", "fa", Some(&a), "eth0")?.ok()?;
    ensure(net.leases() == 0 && net.ports()? == 0, "leftovers")?;
    let journal = count_values(&net.host.state_dir().join("data/journal"));
    ensure(journal == 0, format!("{journal} journal records left"))?;
    Ok(())
}

fn gc_stale() -> Result<(), String> {
    let mut net = Net::new("gc", "1.1.0", json!({}))?;
    let a = net.host.container("a")?;
    let b = net.host.container("b")?;
    net.call("ADD", "live", Some(&a), "eth0")?.ok()?;
    net.call("ADD", "stale", Some(&b), "eth0")?.ok()?;
    let mut conf = net.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "live", "ifname": "eth0"}]);
    let call = Call {
        command: "GC",
        ..Default::default()
    };
    run(&net.host, &our_bin("netloom-bridge")?, &call, &conf)?.ok()?;
    ensure(
        net.ports()? == 1,
        format!("want 1 port after GC, have {}", net.ports()?),
    )?;
    ensure(net.leases() == 1, "stale lease not collected")?;
    ensure(
        addrs_in(&a, "eth0")?.contains("inet "),
        "GC broke the live attachment",
    )?;
    net.call("DEL", "live", Some(&a), "eth0")?.ok()?;
    Ok(())
}

/// Runs `command` for containers `par<i>` in `nss` all at once, one process each.
fn run_parallel(
    net: &Net,
    bin: &Path,
    nss: &[PathBuf],
    command: &str,
) -> Vec<Result<Value, String>> {
    thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                s.spawn(move || {
                    let cid = format!("par{i}");
                    let call = Call {
                        command,
                        container_id: &cid,
                        netns: Some(ns),
                        ifname: "eth0",
                        args: "",
                    };
                    run(&net.host, bin, &call, &net.conf)?.ok()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    })
}

fn parallel_50() -> Result<(), String> {
    let mut net = Net::new("par", "1.0.0", json!({}))?;
    let nss: Vec<PathBuf> = (0..50)
        .map(|i| net.host.container(&format!("p{i}")))
        .collect::<Result<_, _>>()?;
    let bin = our_bin("netloom-bridge")?;
    let mut addrs = std::collections::BTreeSet::new();
    for r in run_parallel(&net, &bin, &nss, "ADD") {
        addrs.insert(
            r?["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    ensure(
        addrs.len() == 50,
        format!("50 parallel ADDs got {} distinct addresses", addrs.len()),
    )?;
    ensure(net.ports()? == 50, "not 50 ports on the bridge")?;
    for d in run_parallel(&net, &bin, &nss, "DEL") {
        d?;
    }
    ensure(net.ports()? == 0, "veths left after 50 DELs")?;
    let left = net.graveyard()?;
    ensure(left.is_empty(), format!("reapers did not delete {left:?}"))?;
    ensure(net.leases() == 0, "leases left after 50 DELs")?;
    Ok(())
}

fn version_status_errors() -> Result<(), String> {
    let host = FakeHost::new("verr")?;
    let bin = our_bin("netloom-bridge")?;
    let conf = json!({"cniVersion": "1.1.0", "name": "x", "type": "netloom-bridge",
        "ipam": {"type": "netloom-ipam", "subnet": "10.250.0.0/24", "dataDir": host.state_dir().join("cni")}, "stateDir": host.state_dir()});
    // VERSION echoes the asked version and lists all.
    let v = run(
        &host,
        &bin,
        &Call {
            command: "VERSION",
            ..Default::default()
        },
        &json!({"cniVersion": "0.4.0"}),
    )?
    .ok()?;
    ensure(v["cniVersion"] == "0.4.0", format!("VERSION: {v}"))?;
    for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        ensure(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == want)),
            format!("{want} missing in {v}"),
        )?;
    }
    run(
        &host,
        &bin,
        &Call {
            command: "STATUS",
            ..Default::default()
        },
        &conf,
    )?
    .ok()?;
    // Undecodable stdin → 6; unsupported version → 1; missing container id → 4.
    let mut cmd = host.command(&bin)?;
    let out = cmd
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c")
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/x")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let e: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("error reply not JSON: {e}"))?;
    ensure(
        e["code"] == 6 && !out.status.success(),
        format!("empty stdin: {e}"),
    )?;
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.2.0");
    let c = Call {
        command: "ADD",
        container_id: "c",
        netns: Some(Path::new("/run/netns/none")),
        ifname: "eth0",
        args: "",
    };
    run(&host, &bin, &c, &old)?.err_code(1)?;
    let c = Call {
        command: "ADD",
        container_id: "",
        netns: Some(Path::new("/run/netns/none")),
        ifname: "eth0",
        args: "",
    };
    run(&host, &bin, &c, &conf)?.err_code(4)?;
    let mut typo = conf.clone();
    typo["vlan"] = json!(5);
    let c = Call {
        command: "ADD",
        container_id: "c",
        netns: Some(Path::new("/run/netns/none")),
        ifname: "eth0",
        args: "",
    };
    run(&host, &bin, &c, &typo)?.err_code(2)?;
    Ok(())
}

fn loopback() -> Result<(), String> {
    let mut host = FakeHost::new("lo")?;
    let c = host.container("c")?;
    run_in_path(&c, &["ip", "link", "set", "lo", "down"])?;
    let bin = our_bin("netloom-loopback")?;
    let conf = json!({"cniVersion": "1.0.0", "name": "lo", "type": "netloom-loopback"});
    let r = run(
        &host,
        &bin,
        &Call {
            command: "ADD",
            container_id: "c",
            netns: Some(&c),
            ifname: "lo",
            args: "",
        },
        &conf,
    )?
    .ok()?;
    ensure(r["interfaces"][0]["name"] == "lo", format!("{r}"))?;
    let out = run_in_path(&c, &["ip", "-o", "link", "show", "lo"])?;
    ensure(
        String::from_utf8_lossy(&out.stdout).contains("UP"),
        "lo not up",
    )?;
    run(
        &host,
        &bin,
        &Call {
            command: "DEL",
            container_id: "c",
            netns: None,
            ifname: "lo",
            args: "",
        },
        &conf,
    )?
    .ok()?;
    Ok(())
}

/// netloom-ipam under the reference bridge plugin: the main plugin execs it from CNI_PATH.
fn ipam_under_reference_bridge() -> Result<(), String> {
    let mut host = FakeHost::new("refbr")?;
    let subnet = names::subnet_v4();
    let conf = json!({"cniVersion": "1.0.0", "name": names::unique("refbr"), "type": "bridge", "bridge": "refbr0",
        "isGateway": true, "ipam": {"type": "netloom-ipam", "ranges": [[{"subnet": subnet.to_string()}]], "dataDir": host.state_dir().join("cni")},
        "stateDir": host.state_dir()});
    let a = host.container("a")?;
    let bridge = PathBuf::from("/usr/lib/cni/bridge");
    let r = run(
        &host,
        &bridge,
        &Call {
            command: "ADD",
            container_id: "ra",
            netns: Some(&a),
            ifname: "eth0",
            args: "",
        },
        &conf,
    )?
    .ok()?;
    let addr = r["ips"][0]["address"]
        .as_str()
        .ok_or(format!("no address: {r}"))?;
    ensure(
        addrs_in(&a, "eth0")?.contains(addr),
        "reference bridge did not configure our address",
    )?;
    ensure(
        count_values(&host.state_dir().join("data/ipam/leases")) == 1,
        "no lease recorded",
    )?;
    run(
        &host,
        &bridge,
        &Call {
            command: "DEL",
            container_id: "ra",
            netns: Some(&a),
            ifname: "eth0",
            args: "",
        },
        &conf,
    )?
    .ok()?;
    ensure(
        count_values(&host.state_dir().join("data/ipam/leases")) == 0,
        "lease not released by DEL",
    )
}

/// The reference portmap plugin's `backend` key picks the firewall (nftables, iptables, auto)
/// for the whole chain; a bad value is a config error.
fn backend_key() -> Result<(), String> {
    let mut net = Net::new(
        "bk",
        "1.0.0",
        json!({"ipMasq": true, "backend": "iptables"}),
    )?;
    let a = net.host.container("a")?;
    let portmap = our_bin("netloom-portmap")?;
    let ra = net.call("ADD", "bka", Some(&a), "eth0")?.ok()?;
    let pm = |backend: &str| {
        json!({"cniVersion": "1.0.0", "name": net.conf["name"], "type": "netloom-portmap",
            "backend": backend, "stateDir": net.host.state_dir(),
            "runtimeConfig": {"portMappings": [{"hostPort": 18333, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": ra})
    };
    let call = Call {
        command: "ADD",
        container_id: "bka",
        netns: Some(&a),
        ifname: "eth0",
        args: "",
    };
    run(&net.host, &portmap, &call, &pm("iptables"))?.ok()?;
    let ipt =
        String::from_utf8_lossy(&net.host.sh(&["iptables-save", "-t", "nat"])?.stdout).into_owned();
    ensure(
        ipt.contains("NETLOOM-DNAT") && ipt.contains("18333"),
        format!("backend iptables did not publish through iptables:\n{ipt}"),
    )?;
    let nft =
        String::from_utf8_lossy(&net.host.sh_any(&["nft", "list", "ruleset"])?.stdout).into_owned();
    ensure(
        !nft.contains("table inet netloom"),
        format!("backend iptables also wrote nftables:\n{nft}"),
    )?;
    let bad = run(&net.host, &portmap, &call, &pm("pf"))?.err_code(7)?;
    ensure(bad.contains("backend"), format!("bad backend error: {bad}"))?;
    let del = Call {
        command: "DEL",
        ..call.clone()
    };
    run(&net.host, &portmap, &del, &pm("iptables"))?.ok()?;
    net.call("DEL", "bka", Some(&a), "eth0")?.ok()?;
    let ipt =
        String::from_utf8_lossy(&net.host.sh(&["iptables-save", "-t", "nat"])?.stdout).into_owned();
    ensure(
        !ipt.contains("18333"),
        format!("published port left in iptables:\n{ipt}"),
    )
}

/// The gateway's MAC must not follow the bridge's ports: the kernel would otherwise give the
/// bridge the lowest port MAC and change it when that container leaves, cutting the others off
/// their gateway until their ARP entries expire.
fn bridge_mac_stays() -> Result<(), String> {
    let mut net = Net::new("brmac", "1.0.0", json!({}))?;
    // /sys is the host's in a setns'd process: ask iproute2.
    let mac = |net: &Net| -> Result<String, String> {
        let out = net
            .host
            .sh(&["ip", "-o", "link", "show", "dev", &net.bridge])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
            .ok_or(format!("no MAC in {text}"))
    };
    let mut ctrs = Vec::new();
    for i in 0..3 {
        let c = net.host.container(&format!("c{i}"))?;
        net.call("ADD", &format!("mac{i}"), Some(&c), "eth0")?
            .ok()?;
        ctrs.push(c);
    }
    let before = mac(&net)?;
    for (i, c) in ctrs.iter().enumerate() {
        net.call("DEL", &format!("mac{i}"), Some(c), "eth0")?.ok()?;
        let now = mac(&net)?;
        ensure(
            now == before,
            format!("bridge MAC changed from {before} to {now} when port {i} left"),
        )?;
    }
    Ok(())
}

/// netloom-bridge under another IPAM plugin (the reference `static`, from CNI_PATH): that
/// plugin leases, netloom wires what it answered; CHECK, DEL and a missing plugin.
fn delegated_ipam_static() -> Result<(), String> {
    let ipam = |host_part: u32, net: &ipnetwork::Ipv4Network| {
        let base = u32::from(net.network());
        json!({"ipam": {
            "type": "static",
            "addresses": [{
                "address": format!("{}/{}", std::net::Ipv4Addr::from(base + host_part), net.prefix()),
                "gateway": std::net::Ipv4Addr::from(base + 1).to_string()
            }],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": [std::net::Ipv4Addr::from(base + 1).to_string()]}
        }})
    };
    let mut net = Net::new("dlg", "1.0.0", json!({}))?;
    let subnet = net.subnet;
    let base = u32::from(subnet.network());
    let addr = |h: u32| std::net::Ipv4Addr::from(base + h).to_string();
    let (a, b) = (net.host.container("a")?, net.host.container("b")?);
    merge(&mut net.conf, ipam(10, &subnet));
    let ra = net.call("ADD", "dla", Some(&a), "eth0")?.ok()?;
    ensure(
        ra["ips"][0]["address"] == format!("{}/{}", addr(10), subnet.prefix())
            && ra["ips"][0]["gateway"] == addr(1),
        format!("ADD did not report the static plugin's address: {ra}"),
    )?;
    ensure(
        ra["dns"]["nameservers"][0] == addr(1),
        format!("the IPAM plugin's DNS is not in the result: {ra}"),
    )?;
    ensure(
        addrs_in(&a, "eth0")?.contains(&format!("{}/", addr(10))),
        "eth0 does not carry the static address",
    )?;
    let routes = run_in_path(&a, &["ip", "route"])?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    ensure(
        routes.contains(&format!("default via {}", addr(1))),
        format!("no default route via the gateway: {routes}"),
    )?;
    let bridge_addrs = net
        .host
        .sh(&["ip", "-o", "addr", "show", "dev", &net.bridge])?;
    ensure(
        String::from_utf8_lossy(&bridge_addrs.stdout).contains(&format!("{}/", addr(1))),
        "the bridge has no gateway address",
    )?;
    let conf_a = net.conf.clone();
    merge(&mut net.conf, ipam(11, &subnet));
    net.call("ADD", "dlb", Some(&b), "eth0")?.ok()?;
    ping(&a, &addr(11))?;
    ping(&b, &addr(10))?;
    ensure(net.leases() == 0, "netloom leased addresses itself")?;
    // CHECK runs the plugin's CHECK too (static verifies the address in the container).
    let conf_b = std::mem::replace(&mut net.conf, conf_a.clone());
    let mut ca = conf_a.clone();
    merge(&mut ca, json!({"prevResult": ra}));
    net.conf = ca;
    net.call("CHECK", "dla", Some(&a), "eth0")?.ok()?;
    net.conf = conf_a;
    // A plugin that is not in CNI_PATH: a clear error, nothing made.
    let saved = net.conf.clone();
    merge(&mut net.conf, json!({"ipam": {"type": "no-such-ipam"}}));
    let c = net.host.container("c")?;
    let err = net.call("ADD", "dlc", Some(&c), "eth0")?.err_code(4)?;
    ensure(
        err.contains("no-such-ipam") && err.contains("CNI_PATH"),
        format!("missing IPAM plugin error: {err}"),
    )?;
    net.conf = saved;
    net.call("DEL", "dla", Some(&a), "eth0")?.ok()?;
    net.conf = conf_b;
    net.call("DEL", "dlb", Some(&b), "eth0")?.ok()?;
    ensure(net.ports()? == 0, "veths left on the bridge")?;
    ensure(net.graveyard()?.is_empty(), "links left for the reaper")?;
    let left = count_values(&net.host.state_dir().join("data/endpoints"));
    ensure(left == 0, format!("{left} endpoint records left"))
}

/// Connects to `addr` from inside `netns` and reads what the server says.
fn fetch(netns: &Path, addr: &str) -> Result<String, String> {
    use std::io::Read;
    let ns = engine_core::netns::Netns::open(netns).map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    ns.run(move || -> Result<String, String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(out)
    })
    .map_err(|e| e.to_string())?
}

/// A TCP server in `netns` that answers every connection with `greeting`, until the test ends.
fn serve(netns: &Path, port: u16, greeting: &'static str) -> Result<(), String> {
    use std::io::Write;
    let ns = engine_core::netns::Netns::open(netns).map_err(|e| e.to_string())?;
    // The socket stays in the namespace it was made in after the thread leaves.
    let listener = ns
        .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("bind {port}: {e}"))?;
    thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(greeting.as_bytes());
        }
    });
    Ok(())
}

/// netloom-bridge then netloom-portmap, chained as a runtime chains them.
fn portmap_chain() -> Result<(), String> {
    let mut net = Net::new("pm", "1.0.0", json!({"ipMasq": true}))?;
    let a = net.host.container("a")?;
    let b = net.host.container("b")?;
    // The outside client reaches the fake host on 198.18.9.1.
    let out = outside(&mut net.host, "198.18.9")?;
    let portmap = our_bin("netloom-portmap")?;
    let pm_conf = |prev: &Value, host_port: u16| {
        json!({"cniVersion": "1.0.0", "name": net.conf["name"], "type": "netloom-portmap",
            "capabilities": {"portMappings": true}, "stateDir": net.host.state_dir(),
            "runtimeConfig": {"portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}]},
            "prevResult": prev})
    };
    let ra = net.call("ADD", "pma", Some(&a), "eth0")?.ok()?;
    let call_a = Call {
        command: "ADD",
        container_id: "pma",
        netns: Some(&a),
        ifname: "eth0",
        args: "",
    };
    let out_a = run(&net.host, &portmap, &call_a, &pm_conf(&ra, 18080))?.ok()?;
    ensure(
        out_a == ra,
        "portmap must pass the prevResult through unchanged",
    )?;
    serve(&a, 8080, "hello from a")?;
    let got = fetch(&out, "198.18.9.1:18080")?;
    ensure(
        got == "hello from a",
        format!("published port answered {got:?}"),
    )?;
    // The same host port for another container: a conflict naming the holder, nothing changed.
    let rb = net.call("ADD", "pmb", Some(&b), "eth0")?.ok()?;
    let call_b = Call {
        command: "ADD",
        container_id: "pmb",
        netns: Some(&b),
        ifname: "eth0",
        args: "",
    };
    let msg = run(&net.host, &portmap, &call_b, &pm_conf(&rb, 18080))?.err_code(101)?;
    ensure(
        msg.contains("pma/eth0"),
        format!("conflict does not name the holder: {msg}"),
    )?;
    ensure(
        fetch(&out, "198.18.9.1:18080")? == "hello from a",
        "the holder stopped working after a conflict",
    )?;
    // CHECK, then DEL in reverse order: the port is gone.
    let check = Call {
        command: "CHECK",
        ..call_a.clone()
    };
    run(&net.host, &portmap, &check, &pm_conf(&ra, 18080))?.ok()?;
    let del_a = Call {
        command: "DEL",
        ..call_a.clone()
    };
    run(&net.host, &portmap, &del_a, &pm_conf(&ra, 18080))?.ok()?;
    ensure(
        fetch(&out, "198.18.9.1:18080").is_err(),
        "port still published after DEL",
    )?;
    run(&net.host, &portmap, &del_a, &pm_conf(&ra, 18080))?.ok()?;
    let del_b = Call {
        command: "DEL",
        ..call_b.clone()
    };
    run(&net.host, &portmap, &del_b, &pm_conf(&rb, 18080))?.ok()?;
    // A mapping ADD refused (port 70000) must not stop the chain's DEL.
    let bad = Call {
        command: "ADD",
        ..call_b.clone()
    };
    let mut bad_conf = pm_conf(&rb, 18081);
    bad_conf["runtimeConfig"]["portMappings"][0]["hostPort"] = json!(70000);
    run(&net.host, &portmap, &bad, &bad_conf)?.err_code(7)?;
    run(&net.host, &portmap, &del_b, &bad_conf)?.ok()?;
    // Someone flushes the whole ruleset (a firewalld reload): portmap's ADD, which trusts the
    // main plugin to have set the network up, finds the network's rules missing and puts them
    // back before its own entries.
    net.host.sh(&["nft", "flush", "ruleset"])?;
    let heal = Call {
        command: "ADD",
        ..call_b.clone()
    };
    run(&net.host, &portmap, &heal, &pm_conf(&rb, 18082))?.ok()?;
    serve(&b, 8080, "hello from b")?;
    let got = fetch(&out, "198.18.9.1:18082")?;
    ensure(
        got == "hello from b",
        format!("port published after a ruleset flush answered {got:?}"),
    )?;
    run(&net.host, &portmap, &del_b, &pm_conf(&rb, 18082))?.ok()?;
    // Flushed again: a plain ADD (no ports) restores the network's rules too. It skips
    // reading the ruleset back only while the ruleset's generation is the one at which the
    // rules were last seen, and a flush moves it.
    net.host.sh(&["nft", "flush", "ruleset"])?;
    let c = net.host.container("c")?;
    net.call("ADD", "pmc", Some(&c), "eth0")?.ok()?;
    let rules = netloom_table(&net.host)?;
    ensure(
        rules.contains(&format!(
            "masq-{}",
            net.conf["name"].as_str().unwrap_or_default()
        )),
        format!("a plain ADD after a flush did not restore the network's rules:\n{rules}"),
    )?;
    net.call("DEL", "pmc", Some(&c), "eth0")?.ok()?;
    net.call("DEL", "pma", Some(&a), "eth0")?.ok()?;
    net.call("DEL", "pmb", Some(&b), "eth0")?.ok()?;
    let rules = netloom_table(&net.host)?;
    ensure(
        !rules.contains("18080") && !rules.contains("18082"),
        format!("published port left in the firewall:\n{rules}"),
    )?;
    Ok(())
}

/// `nft list table inet netloom` in the fake host (empty when the table is gone).
fn netloom_table(host: &FakeHost) -> Result<String, String> {
    let out = host.sh(&["nft", "list", "table", "inet", "netloom"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An "outside" host: a namespace linked to the fake host by a veth, `<net>.1` on the fake
/// host's side (`uplink`) and `<net>.2` on its own, with no route to any container subnet.
fn outside(host: &mut FakeHost, net24: &str) -> Result<PathBuf, String> {
    let out = host.container("out")?;
    host.sh(&[
        "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "peer0",
    ])?;
    host.sh(&[
        "ip",
        "link",
        "set",
        "peer0",
        "netns",
        &out.to_string_lossy(),
    ])?;
    host.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{net24}.1/24"),
        "dev",
        "uplink",
    ])?;
    host.sh(&["ip", "link", "set", "uplink", "up"])?;
    run_in_path(
        &out,
        &[
            "ip",
            "addr",
            "add",
            &format!("{net24}.2/24"),
            "dev",
            "peer0",
        ],
    )?;
    run_in_path(&out, &["ip", "link", "set", "peer0", "up"])?;
    Ok(out)
}

// ------------------------------------------------------------------ macspoofchk and vlan

/// Whether this run is the QEMU kernel lane (tests/kernel/lane.sh sets NETLOOM_KERNEL_LANE=1).
fn in_lane() -> bool {
    std::env::var("NETLOOM_KERNEL_LANE").is_ok_and(|v| v == "1")
}

/// In the kernel lane every capability a lane test names must be there: only root is asked
/// for, so a missing one fails the test instead of skipping it.
fn lane_caps(caps: &'static [Cap]) -> &'static [Cap] {
    if in_lane() {
        &[Cap::Root]
    } else {
        caps
    }
}

fn first_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn no_ping(from: &Path, to: &str) -> Result<(), String> {
    match run_in_path(from, &["ping", "-c", "2", "-W", "1", to]) {
        Ok(_) => Err(format!("{to} answered but should not be reachable")),
        Err(_) => Ok(()),
    }
}

fn text(o: std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The host veth of a container: the bridge port whose peer is the container's eth0.
fn host_port(net: &Net, c: &Path) -> Result<String, String> {
    let out = text(run_in_path(c, &["ip", "-o", "link", "show", "eth0"])?);
    // "2: eth0@if17: ..." → the peer's ifindex in the host.
    let idx = out
        .split("@if")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .ok_or_else(|| format!("no peer index in {out:?}"))?
        .to_string();
    let links = text(net.host.sh(&["ip", "-o", "link", "show"])?);
    links
        .lines()
        .find(|l| l.starts_with(&format!("{idx}: ")))
        .and_then(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .ok_or_else(|| format!("no host link with index {idx}"))
}

fn spoof_table(net: &Net) -> Result<String, String> {
    Ok(text(
        net.host
            .sh_any(&["nft", "list", "table", "bridge", "netloom"])?,
    ))
}

/// The packets the spoof check rule dropped so far.
fn spoof_drops(net: &Net) -> Result<u64, String> {
    let t = text(
        net.host
            .sh(&["nft", "list", "chain", "bridge", "netloom", "spoofchk"])?,
    );
    t.split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no counter in the spoofchk chain:\n{t}"))
}

/// `macspoofchk: true`: a container that changes its MAC (a real forged source address on
/// every frame it sends) is cut off at the bridge, normal traffic passes, CHECK verifies the
/// entries, DEL and GC remove them; a network without it adds no hook at all.
fn macspoofchk() -> Result<(), String> {
    let mut net = Net::new("spoof", "1.1.0", json!({"macspoofchk": true}))?;
    // Control: a network without macspoofchk on the same host leaves no trace of it.
    let mut plain = net.conf.clone();
    plain["name"] = json!(names::unique("plain"));
    plain["bridge"] = json!("nlbr1");
    plain.as_object_mut().map(|o| o.remove("macspoofchk"));
    plain["ipam"]["ranges"] = json!([[{"subnet": names::subnet_v4().to_string()}]]);
    let p = net.host.container("p")?;
    let pcall = Call {
        command: "ADD",
        container_id: "plain",
        netns: Some(&p),
        ifname: "eth0",
        args: "",
    };
    run(&net.host, &our_bin("netloom-bridge")?, &pcall, &plain)?.ok()?;
    let t = spoof_table(&net)?;
    ensure(
        !t.contains("spoofchk"),
        format!("a network without macspoofchk added the spoof check:\n{t}"),
    )?;

    let a = net.host.container("a")?;
    let b = net.host.container("b")?;
    let ra = net.call("ADD", "sa", Some(&a), "eth0")?.ok()?;
    let rb = net.call("ADD", "sb", Some(&b), "eth0")?.ok()?;
    let (ipa, ipb) = (first_ip(&ra), first_ip(&rb));
    let (pa, pb) = (host_port(&net, &a)?, host_port(&net, &b)?);
    let mac_a = ra["interfaces"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["sandbox"].is_string()))
        .and_then(|i| i["mac"].as_str())
        .ok_or("no container interface in the ADD result")?
        .to_string();
    let t = spoof_table(&net)?;
    ensure(
        t.contains(&format!("\"{pa}\" . {mac_a}")) && t.contains(&format!("\"{pb}\" . ")),
        format!("spoof check elements missing for {pa} ({mac_a}) / {pb}:\n{t}"),
    )?;
    // Normal traffic passes.
    ping(&a, &ipb)?;
    ping(&b, &ipa)?;
    ping(&a, &net.gateway())?;
    net.call("CHECK", "sa", Some(&a), "eth0")?.ok()?;
    let before = spoof_drops(&net)?;

    // The container forges its source MAC: everything it sends now carries another address.
    let forged = "02:de:ad:be:ef:01";
    run_in_path(&a, &["ip", "link", "set", "eth0", "down"])?;
    run_in_path(&a, &["ip", "link", "set", "eth0", "address", forged])?;
    run_in_path(&a, &["ip", "link", "set", "eth0", "up"])?;
    run_in_path(&a, &["ip", "neigh", "flush", "dev", "eth0"])?;
    net.host.sh(&["ip", "neigh", "flush", "all"])?;
    no_ping(&a, &ipb)?;
    no_ping(&a, &net.gateway())?;
    let after = spoof_drops(&net)?;
    ensure(
        after > before,
        format!("the spoof check counted no drop ({before} → {after})"),
    )?;
    // The other container is unaffected by its neighbour's forgery.
    ping(&b, &net.gateway())?;
    // Its own address back: traffic flows again.
    run_in_path(&a, &["ip", "link", "set", "eth0", "address", &mac_a])?;
    run_in_path(&a, &["ip", "neigh", "flush", "dev", "eth0"])?;
    ping(&a, &ipb)?;

    // CHECK sees a spoof check entry removed behind its back.
    net.host.sh(&[
        "nft",
        "delete",
        "element",
        "bridge",
        "netloom",
        "spoofchk_macs",
        &format!("{{ \"{pa}\" . {mac_a} }}"),
    ])?;
    let msg = net.call("CHECK", "sa", Some(&a), "eth0")?.err_code(102)?;
    ensure(
        msg.contains("spoofchk_macs"),
        format!("CHECK did not name the missing spoof check entry: {msg}"),
    )?;
    net.call("CHECK", "sb", Some(&b), "eth0")?.ok()?;

    // DEL removes the container's entries, GC those of a stale one.
    net.call("DEL", "sa", Some(&a), "eth0")?.ok()?;
    let c = net.host.container("c")?;
    net.call("ADD", "sc", Some(&c), "eth0")?.ok()?;
    let pc = host_port(&net, &c)?;
    let mut conf = net.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "sb", "ifname": "eth0"}]);
    let gc = Call {
        command: "GC",
        ..Default::default()
    };
    run(&net.host, &our_bin("netloom-bridge")?, &gc, &conf)?.ok()?;
    let t = spoof_table(&net)?;
    ensure(
        !t.contains(&pa) && !t.contains(&pc) && t.contains(&pb),
        format!("after DEL of {pa} and GC of {pc}, only {pb} should be checked:\n{t}"),
    )?;
    net.call("DEL", "sb", Some(&b), "eth0")?.ok()?;
    let t = spoof_table(&net)?;
    ensure(
        !t.contains("ep=s"),
        format!("spoof check entries left after the last DEL:\n{t}"),
    )?;
    let del = Call {
        command: "DEL",
        ..pcall
    };
    run(&net.host, &our_bin("netloom-bridge")?, &del, &plain)?.ok()?;
    ensure(net.leases() == 0, "leases left")
}

/// The iptables backend has no layer-2 filtering: macspoofchk is refused, clearly, and the
/// failed ADD leaves nothing.
fn macspoofchk_iptables() -> Result<(), String> {
    let mut net = Net::new(
        "spoofipt",
        "1.0.0",
        json!({"macspoofchk": true, "backend": "iptables"}),
    )?;
    let a = net.host.container("a")?;
    let msg = net.call("ADD", "ia", Some(&a), "eth0")?.err_code(2)?;
    ensure(
        msg.contains("macspoofchk") && msg.contains("nftables"),
        format!("refusal does not say why: {msg}"),
    )?;
    ensure(
        net.ports()? == 0 && net.leases() == 0,
        "the refused ADD left a port or a lease",
    )?;
    ensure(
        run_in_path(&a, &["ip", "link", "show", "eth0"]).is_err(),
        "the refused ADD left eth0 in the container",
    )?;
    net.call("DEL", "ia", Some(&a), "eth0")?.ok()?;
    Ok(())
}

/// Bad VLAN settings are invalid configuration (7); on a kernel without bridge VLAN filtering
/// a VLAN is refused as unsupported (2) with the reason, leaving nothing behind.
fn bridge_vlan_errors() -> Result<(), String> {
    let mut net = Net::new("vlerr", "1.0.0", json!({}))?;
    let a = net.host.container("a")?;
    for (extra, want) in [
        (json!({"vlan": 4095}), "4094"),
        (json!({"vlan": -1}), "4094"),
        (json!({"vlan": 5, "vlanTrunk": [{"id": 7}]}), "together"),
        (json!({"vlanTrunk": [{"minID": 10}]}), "together"),
        (
            json!({"vlanTrunk": [{"minID": 20, "maxID": 10}]}),
            "greater",
        ),
        (json!({"vlanTrunk": [{"id": 0}]}), "out of range"),
    ] {
        let mut conf = net.conf.clone();
        merge(&mut conf, extra.clone());
        let call = Call {
            command: "ADD",
            container_id: "ve",
            netns: Some(&a),
            ifname: "eth0",
            args: "",
        };
        let msg = run(&net.host, &our_bin("netloom-bridge")?, &call, &conf)?.err_code(7)?;
        ensure(msg.contains(want), format!("{extra}: message {msg:?}"))?;
    }
    if tests::Caps::get().has(Cap::BridgeVlan) {
        // This kernel tags ports (the kernel lane tests the behaviour); the refusal below
        // cannot happen here.
        return Ok(());
    }
    net.conf["vlan"] = json!(10);
    let msg = net.call("ADD", "va", Some(&a), "eth0")?.err_code(2)?;
    ensure(
        msg.contains("VLAN filtering") && msg.contains("vlan"),
        format!("refusal does not say why: {msg}"),
    )?;
    ensure(
        net.host
            .sh_any(&["ip", "link", "show", &net.bridge])?
            .status
            .code()
            != Some(0),
        "the refused ADD left the bridge it created",
    )?;
    ensure(net.leases() == 0, "the refused ADD left a lease")?;
    net.call("DEL", "va", Some(&a), "eth0")?.ok()?;
    Ok(())
}

/// `bridge vlan show dev <port>` as text.
fn port_vlans(net: &Net, port: &str) -> Result<String, String> {
    Ok(text(net.host.sh(&["bridge", "vlan", "show", "dev", port])?))
}

/// Two networks on one bridge, VLANs 10 and 20, sharing a subnet (L2 only, addresses from
/// disjoint ranges): containers of the same VLAN talk, of different VLANs do not.
fn bridge_vlan_isolation() -> Result<(), String> {
    let mut host = FakeHost::new("vliso")?;
    let subnet = names::subnet_v4();
    let base = u32::from(subnet.network());
    let at = |n: u32| std::net::Ipv4Addr::from(base + n).to_string();
    let conf = |vlan: u16, lo: u32, hi: u32, host: &FakeHost| {
        json!({
            "cniVersion": "1.0.0", "name": names::unique(&format!("vl{vlan}")),
            "type": "netloom-bridge", "bridge": "nlbrv", "vlan": vlan,
            "ipam": {"type": "netloom-ipam", "ranges": [[{"subnet": subnet.to_string(),
                "rangeStart": at(lo), "rangeEnd": at(hi)}]],
                "dataDir": host.state_dir().join("cni")},
            "stateDir": host.state_dir(),
        })
    };
    let (c10, c20) = (conf(10, 10, 19, &host), conf(20, 20, 29, &host));
    let bin = our_bin("netloom-bridge")?;
    let a1 = host.container("a1")?;
    let a2 = host.container("a2")?;
    let b1 = host.container("b1")?;
    let call = |cmd: &'static str, cid: &'static str, ns: &PathBuf, conf: &Value| {
        let c = Call {
            command: cmd,
            container_id: cid,
            netns: Some(ns.as_path()),
            ifname: "eth0",
            args: "",
        };
        run(&host, &bin, &c, conf)
    };
    let r1 = call("ADD", "a1", &a1, &c10)?.ok()?;
    let r2 = call("ADD", "a2", &a2, &c10)?.ok()?;
    let r3 = call("ADD", "b1", &b1, &c20)?.ok()?;
    let (ip1, ip2, ip3) = (first_ip(&r1), first_ip(&r2), first_ip(&r3));
    let filtering = text(host.sh(&["ip", "-d", "link", "show", "nlbrv"])?);
    ensure(
        filtering.contains("vlan_filtering 1"),
        format!("vlan_filtering is not on:\n{filtering}"),
    )?;
    ping(&a1, &ip2)?;
    ping(&a2, &ip1)?;
    no_ping(&a1, &ip3)?;
    no_ping(&b1, &ip1)?;
    no_ping(&b1, &ip2)?;
    // Each port: its VLAN as PVID, untagged (the container never sees a tag).
    let ports = text(host.sh(&["bridge", "-d", "vlan", "show"])?);
    ensure(
        ports.contains("10 PVID Egress Untagged") && ports.contains("20 PVID Egress Untagged"),
        format!("ports lack their PVIDs:\n{ports}"),
    )?;
    call("CHECK", "a1", &a1, &c10)?.ok()?;
    for (cid, ns, conf) in [("a1", &a1, &c10), ("a2", &a2, &c10), ("b1", &b1, &c20)] {
        call("DEL", cid, ns, conf)?.ok()?;
    }
    let left = text(host.sh(&["ip", "-o", "link", "show", "master", "nlbrv"])?);
    ensure(left.trim().is_empty(), format!("ports left:\n{left}"))?;
    Ok(())
}

/// A VLAN network with a gateway: the gateway lives on `<bridge>.<vid>` (a veth whose bridge
/// end is an access port of the VLAN), the container reaches it and, masqueraded, the outside;
/// CHECK reports a port that lost its VLAN; `preserveDefaultVlan: false` takes VLAN 1 off.
fn bridge_vlan_gateway() -> Result<(), String> {
    let mut net = Net::new(
        "vlgw",
        "1.0.0",
        json!({"vlan": 30, "ipMasq": true, "preserveDefaultVlan": false}),
    )?;
    let a = net.host.container("a")?;
    let b = net.host.container("b")?;
    let ra = net.call("ADD", "ga", Some(&a), "eth0")?.ok()?;
    net.call("ADD", "gb", Some(&b), "eth0")?.ok()?;
    let gw_if = format!("{}.30", net.bridge);
    let addrs = text(net.host.sh(&["ip", "-o", "addr", "show", "dev", &gw_if])?);
    ensure(
        addrs.contains(&format!("inet {}/", net.gateway())),
        format!("gateway address not on {gw_if}:\n{addrs}"),
    )?;
    let br_addrs = text(
        net.host
            .sh(&["ip", "-o", "-4", "addr", "show", "dev", &net.bridge])?,
    );
    ensure(
        br_addrs.trim().is_empty(),
        format!("the bridge itself has an address:\n{br_addrs}"),
    )?;
    ping(&a, &net.gateway())?;
    ping(&b, &first_ip(&ra))?;
    outside(&mut net.host, "198.18.9")?;
    ping(&a, "198.18.9.2")?;
    let pa = host_port(&net, &a)?;
    let v = port_vlans(&net, &pa)?;
    ensure(
        v.contains("30 PVID Egress Untagged") && !v.contains(" 1 "),
        format!("port {pa} vlans (want 30 only, PVID untagged):\n{v}"),
    )?;
    net.call("CHECK", "ga", Some(&a), "eth0")?.ok()?;
    net.host
        .sh(&["bridge", "vlan", "del", "dev", &pa, "vid", "30"])?;
    let msg = net.call("CHECK", "ga", Some(&a), "eth0")?.err_code(102)?;
    ensure(
        msg.contains("vlan 30"),
        format!("CHECK did not report the lost VLAN: {msg}"),
    )?;
    no_ping(&a, &net.gateway())?;
    net.call("DEL", "ga", Some(&a), "eth0")?.ok()?;
    net.call("DEL", "gb", Some(&b), "eth0")?.ok()?;
    ensure(net.leases() == 0, "leases left")?;
    Ok(())
}
