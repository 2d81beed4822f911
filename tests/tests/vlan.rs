//! macvlan and ipvlan, with real traffic: the CNI plugins run as a runtime runs them
//! (subprocesses in a fake host, env + stdin), and the drivers under the engine as netloomd
//! will call them (the link left in the host for the runtime to move).
//!
//! The parent is a veth in the fake host whose peer sits in an "upstream" namespace holding the
//! subnet's gateway, like a router on the wire. Tests that need ipvlan, 802.1Q VLANs or dummy
//! links are gated on those capabilities: this machine's kernel lacks them, so they run in the
//! QEMU kernel lane (tests/kernel/lane.sh, run by ./test.sh), where the same functions run
//! against Debian's kernel. There `NETLOOM_KERNEL_LANE=1` makes a missing capability a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine_core::engine::{AttachRequest, Engine, OverlapPolicy, SandboxSetup};
use engine_core::ipam::{Ipam, PoolRequest, RangeSpec};
use engine_core::model::{NetworkSpec, SubnetConfig};
use engine_core::sandbox::NetlinkSandboxes;
use engine_core::store::file::FileStore;
use engine_core::{AttachmentKey, Options, StateStore};
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use tests::cni::{count_values, merge, our_bin, run, Call, Outcome};
use tests::fakehost::{run_in_any, run_in_path};
use tests::{names, run_main, Cap, FakeHost, Suite};

const MACVLAN: &[Cap] = &[Cap::Root, Cap::Veth, Cap::Macvlan];
const IPVLAN: &[Cap] = &[Cap::Root, Cap::Veth, Cap::Ipvlan];
const VLAN_MACVLAN: &[Cap] = &[Cap::Root, Cap::Veth, Cap::Macvlan, Cap::Vlan];
const VLAN_IPVLAN: &[Cap] = &[Cap::Root, Cap::Veth, Cap::Ipvlan, Cap::Vlan];
const DUMMY: &[Cap] = &[Cap::Root, Cap::Macvlan, Cap::Dummy];

/// Whether this run is the QEMU kernel lane (tests/kernel/lane.sh sets NETLOOM_KERNEL_LANE=1).
fn in_lane() -> bool {
    std::env::var("NETLOOM_KERNEL_LANE").is_ok_and(|v| v == "1")
}

fn main() {
    // In the kernel lane every capability the kernel-dependent tests name must be there: a
    // missing one is a broken lane, not a reason to skip.
    let lane = in_lane();
    let k = |caps: &'static [Cap]| -> &'static [Cap] {
        if lane {
            &[Cap::Root]
        } else {
            caps
        }
    };
    let mut s = Suite::new();
    s.test(
        "vlan::macvlan_bridge_mode_talks",
        MACVLAN,
        macvlan_bridge_mode_talks,
    )
    .test(
        "vlan::macvlan_private_mode_does_not",
        MACVLAN,
        macvlan_private_mode_does_not,
    )
    .test(
        "vlan::macvlan_vepa_and_passthru",
        MACVLAN,
        macvlan_vepa_and_passthru,
    )
    .test("vlan::macvlan_mtu_and_mac", MACVLAN, macvlan_mtu_and_mac)
    .test(
        "vlan::bad_parent_errors_leave_nothing",
        MACVLAN,
        bad_parent_errors_leave_nothing,
    )
    .test(
        "vlan::overlapping_subnets_on_one_parent",
        MACVLAN,
        overlapping_subnets_on_one_parent,
    )
    .test(
        "vlan::check_reports_parent_down",
        MACVLAN,
        check_reports_parent_down,
    )
    .test(
        "vlan::internal_network_on_a_netloom_parent",
        MACVLAN,
        internal_network,
    )
    .test("vlan::host_shim_host_to_container", MACVLAN, host_shim)
    .test(
        "vlan::macvlan_with_the_reference_static_ipam",
        &[Cap::Root, Cap::Veth, Cap::Macvlan, Cap::RefCni],
        macvlan_static_ipam,
    )
    .test(
        "vlan::del_without_netns_gc_status_version",
        MACVLAN,
        del_gc_status_version,
    )
    .test(
        "vlan::engine_runtime_moves_the_link",
        MACVLAN,
        engine_runtime_moves_the_link,
    )
    .test(
        "vlan::parallel_add_del_one_network",
        MACVLAN,
        parallel_add_del,
    )
    .test("vlan::link_in_container", MACVLAN, link_in_container)
    .test("vlan::dual_stack_with_host_shim", MACVLAN, dual_stack)
    .test(
        "vlan::kernel::ipvlan_l2_l3_l3s_between_two_netns",
        k(IPVLAN),
        ipvlan_modes,
    )
    .test(
        "vlan::kernel::ipvlan_private_flag_and_host_shim",
        k(IPVLAN),
        ipvlan_private_and_shim,
    )
    .test(
        "vlan::kernel::ipvlan_refused_beside_macvlan",
        k(IPVLAN),
        ipvlan_beside_macvlan,
    )
    .test(
        "vlan::kernel::vlan_subinterface_lifecycle",
        k(VLAN_MACVLAN),
        vlan_lifecycle,
    )
    .test(
        "vlan::kernel::macvlan_on_vlan_parent",
        k(VLAN_MACVLAN),
        macvlan_on_vlan_parent,
    )
    .test(
        "vlan::kernel::ipvlan_on_vlan_parent",
        k(VLAN_IPVLAN),
        ipvlan_on_vlan_parent,
    )
    .test(
        "vlan::kernel::dummy_internal_parent",
        k(DUMMY),
        dummy_internal_parent,
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

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fake host with a parent link `p0` whose wire ends in an "upstream" namespace holding the
/// subnet's gateway, plus one CNI configuration.
struct Lan {
    host: FakeHost,
    upstream: PathBuf,
    subnet: Ipv4Network,
    conf: Value,
    plugin: &'static str,
}

impl Lan {
    fn new(tag: &str, plugin: &'static str, extra: Value) -> Result<Lan, String> {
        let mut host = FakeHost::new(tag)?;
        let subnet = names::subnet_v4();
        let upstream = host.container("up")?;
        host.sh(&[
            "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
        ])?;
        host.sh(&[
            "ip",
            "link",
            "set",
            "p1",
            "netns",
            &upstream.to_string_lossy(),
        ])?;
        host.sh(&["ip", "link", "set", "p0", "up"])?;
        run_in_path(
            &upstream,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", nth(subnet, 1)),
                "dev",
                "p1",
            ],
        )?;
        run_in_path(&upstream, &["ip", "link", "set", "p1", "up"])?;
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": names::unique(tag),
            "type": plugin,
            "master": "p0",
            "ipam": {"type": "netloom-ipam", "ranges": [[{"subnet": subnet.to_string()}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": host.state_dir().join("cni")},
            "stateDir": host.state_dir(),
        });
        merge(&mut conf, extra);
        Ok(Lan {
            host,
            upstream,
            subnet,
            conf,
            plugin,
        })
    }

    fn call(&self, command: &str, cid: &str, netns: Option<&Path>) -> Result<Outcome, String> {
        self.call_with(&self.conf, command, cid, netns, "")
    }

    fn call_with(
        &self,
        conf: &Value,
        command: &str,
        cid: &str,
        netns: Option<&Path>,
        args: &str,
    ) -> Result<Outcome, String> {
        let call = Call {
            command,
            container_id: cid,
            netns,
            ifname: "eth0",
            args,
        };
        run(&self.host, &our_bin(self.plugin)?, &call, conf)
    }

    /// ADD and the container's address.
    fn add(&self, cid: &str, netns: &Path) -> Result<String, String> {
        let r = self.call("ADD", cid, Some(netns))?.ok()?;
        ip_of(&r)
    }

    fn gateway(&self) -> String {
        nth(self.subnet, 1)
    }

    /// Link names in the fake host, sorted: compared before and after a failure.
    fn links(&self) -> Result<Vec<String>, String> {
        link_names(&self.host.sh(&["ip", "-o", "link", "show"])?)
    }

    fn leases(&self) -> usize {
        count_values(&self.host.state_dir().join("data/ipam/leases"))
    }

    fn journal(&self) -> usize {
        count_values(&self.host.state_dir().join("data/journal"))
    }
}

fn link_names(o: &std::process::Output) -> Result<Vec<String>, String> {
    let mut v: Vec<String> = out_text(o)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    v.sort();
    Ok(v)
}

fn nth(subnet: Ipv4Network, n: u32) -> String {
    std::net::Ipv4Addr::from(u32::from(subnet.network()) + n).to_string()
}

fn ip_of(r: &Value) -> Result<String, String> {
    r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| format!("no address in {r}"))
}

fn ping(from: &Path, to: &str) -> Result<(), String> {
    run_in_path(from, &["ping", "-c", "1", "-W", "2", to])
        .map(|_| ())
        .map_err(|e| format!("ping {to}: {e}"))
}

/// A ping that must not get an answer (one try, short wait).
fn no_ping(from: &Path, to: &str) -> Result<(), String> {
    let ns = engine_core::netns::Netns::open(from).map_err(|e| e.to_string())?;
    let out = run_in_any(&ns, &["ping", "-c", "1", "-W", "1", to])?;
    ensure(
        !out.status.success(),
        format!("ping {to} from {} answered, and must not", from.display()),
    )
}

fn link_in(netns: &Path, name: &str) -> Result<Option<String>, String> {
    let ns = engine_core::netns::Netns::open(netns).map_err(|e| e.to_string())?;
    let out = run_in_any(&ns, &["ip", "-d", "-o", "link", "show", "dev", name])?;
    Ok(out.status.success().then(|| out_text(&out)))
}

// ------------------------------------------------------------------ macvlan on this kernel

fn macvlan_bridge_mode_talks() -> Result<(), String> {
    let mut lan = Lan::new("mvbr", "netloom-macvlan", json!({"mode": "bridge"}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let ra = lan.call("ADD", "ca", Some(&a))?.ok()?;
    let ia = ip_of(&ra)?;
    let ib = lan.add("cb", &b)?;
    ping(&a, &ib)?;
    ping(&b, &ia)?;
    ping(&a, &lan.gateway())?;
    let d = link_in(&a, "eth0")?.ok_or("no eth0 in container a")?;
    ensure(
        d.contains("macvlan mode bridge"),
        format!("not a bridge-mode macvlan: {d}"),
    )?;
    let routes = out_text(&run_in_path(&a, &["ip", "route", "show", "default"])?);
    ensure(
        routes.contains(&format!("via {}", lan.gateway())),
        format!("no default route via the gateway: {routes}"),
    )?;
    // CHECK passes; after DEL the interfaces, leases and journal are gone; DEL again is fine.
    let mut check_conf = lan.conf.clone();
    check_conf["prevResult"] = ra;
    lan.call_with(&check_conf, "CHECK", "ca", Some(&a), "")?
        .ok()?;
    for (cid, ns) in [("ca", &a), ("cb", &b)] {
        lan.call("DEL", cid, Some(ns))?.ok()?;
        ensure(
            link_in(ns, "eth0")?.is_none(),
            format!("eth0 left in {cid} after DEL"),
        )?;
        lan.call("DEL", cid, Some(ns))?.ok()?;
    }
    ensure(lan.leases() == 0, format!("{} leases left", lan.leases()))?;
    ensure(lan.journal() == 0, "journal records left")?;
    ensure(
        lan.links()? == vec!["lo".to_string(), "p0".to_string()],
        format!("host links: {:?}", lan.links()?),
    )
}

fn macvlan_private_mode_does_not() -> Result<(), String> {
    let mut lan = Lan::new("mvpriv", "netloom-macvlan", json!({"mode": "private"}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let ia = lan.add("ca", &a)?;
    let ib = lan.add("cb", &b)?;
    // Both reach the wire, not each other.
    ping(&a, &lan.gateway())?;
    ping(&b, &lan.gateway())?;
    no_ping(&a, &ib)?;
    no_ping(&b, &ia)?;
    let d = link_in(&a, "eth0")?.unwrap_or_default();
    ensure(
        d.contains("macvlan mode private"),
        format!("not a private macvlan: {d}"),
    )?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    lan.call("DEL", "cb", Some(&b))?.ok()?;
    ensure(lan.leases() == 0, "leases left")
}

fn macvlan_vepa_and_passthru() -> Result<(), String> {
    // VEPA sends sibling traffic to the switch; the upstream veth does not hairpin it back.
    let mut lan = Lan::new("mvvepa", "netloom-macvlan", json!({"mode": "vepa"}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    lan.add("ca", &a)?;
    let ib = lan.add("cb", &b)?;
    ping(&a, &lan.gateway())?;
    no_ping(&a, &ib)?;
    ensure(
        link_in(&a, "eth0")?
            .unwrap_or_default()
            .contains("macvlan mode vepa"),
        "not vepa",
    )?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    lan.call("DEL", "cb", Some(&b))?.ok()?;

    // passthru: one endpoint gets the parent; a second is refused clearly and leaves nothing.
    let mut lan = Lan::new("mvpass", "netloom-macvlan", json!({"mode": "passthru"}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    lan.add("ca", &a)?;
    ping(&a, &lan.gateway())?;
    let before = lan.links()?;
    let out = lan.call("ADD", "cb", Some(&b))?;
    let msg = out.err_code(101)?;
    ensure(
        msg.contains("passthru"),
        format!("second passthru ADD: {msg}"),
    )?;
    ensure(
        lan.links()? == before && link_in(&b, "eth0")?.is_none() && lan.leases() == 1,
        "failed ADD left something",
    )?;
    lan.call("DEL", "cb", Some(&b))?.ok()?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    ensure(
        lan.leases() == 0 && lan.journal() == 0,
        "leftovers after DEL",
    )
}

fn macvlan_mtu_and_mac() -> Result<(), String> {
    let mut lan = Lan::new(
        "mvmtu",
        "netloom-macvlan",
        json!({"mtu": 1400, "capabilities": {"mac": true}}),
    )?;
    let a = lan.host.container("a")?;
    let r = lan.call("ADD", "ca", Some(&a))?.ok()?;
    let d = link_in(&a, "eth0")?.unwrap_or_default();
    ensure(d.contains("mtu 1400"), format!("mtu not applied: {d}"))?;
    // Generated MACs are stable per attachment: DEL + ADD gives the same one back.
    let mac = r["interfaces"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure(
        d.contains(&mac),
        format!("result mac {mac} not on the link: {d}"),
    )?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    let r2 = lan.call("ADD", "ca", Some(&a))?.ok()?;
    ensure(
        r2["interfaces"][0]["mac"] == mac.as_str(),
        format!(
            "mac changed across DEL/ADD: {mac} then {}",
            r2["interfaces"][0]["mac"]
        ),
    )?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    // A MAC from the runtime, then from CNI_ARGS (which wins), then the "mac" key.
    let mut conf = lan.conf.clone();
    conf["runtimeConfig"] = json!({"mac": "02:00:00:aa:bb:01"});
    let r = lan.call_with(&conf, "ADD", "cm", Some(&a), "")?.ok()?;
    ensure(
        r["interfaces"][0]["mac"] == "02:00:00:aa:bb:01",
        format!("runtimeConfig mac: {r}"),
    )?;
    lan.call_with(&conf, "DEL", "cm", Some(&a), "")?.ok()?;
    let r = lan
        .call_with(
            &conf,
            "ADD",
            "cm",
            Some(&a),
            "IgnoreUnknown=1;MAC=02:00:00:aa:bb:02",
        )?
        .ok()?;
    ensure(
        r["interfaces"][0]["mac"] == "02:00:00:aa:bb:02",
        format!("CNI_ARGS mac: {r}"),
    )?;
    lan.call_with(&conf, "DEL", "cm", Some(&a), "")?.ok()?;
    let mut conf = lan.conf.clone();
    conf["mac"] = json!("02:00:00:aa:bb:03");
    let r = lan.call_with(&conf, "ADD", "cm", Some(&a), "")?.ok()?;
    ensure(
        r["interfaces"][0]["mac"] == "02:00:00:aa:bb:03",
        format!("mac key: {r}"),
    )?;
    lan.call_with(&conf, "DEL", "cm", Some(&a), "")?.ok()?;
    // An MTU above the parent's is refused before anything is made.
    let before = lan.links()?;
    let mut big = lan.conf.clone();
    big["mtu"] = json!(9000);
    big["name"] = json!(names::unique("mvbig"));
    big["ipam"]["ranges"] = json!([[{"subnet": names::subnet_v4().to_string()}]]);
    let msg = lan
        .call_with(&big, "ADD", "cb", Some(&a), "")?
        .err_code(7)?;
    ensure(
        msg.contains("larger than parent p0's 1500"),
        format!("mtu message: {msg}"),
    )?;
    ensure(
        lan.links()? == before && link_in(&a, "eth0")?.is_none() && lan.leases() == 0,
        "refused ADD left something",
    )?;
    lan.call_with(&big, "DEL", "cb", Some(&a), "")?.ok()?;
    lan.conf = Value::Null;
    Ok(())
}

/// After a refused ADD: the host's links as before, no eth0 in the container, no lease, no
/// journal; the runtime's DEL succeeds.
fn refused(lan: &Lan, conf: &Value, c: &Path, code: u64, want: &str) -> Result<(), String> {
    let before = lan.links()?;
    let out = lan.call_with(conf, "ADD", "bad", Some(c), "")?;
    let msg = out.err_code(code).map_err(|e| format!("{want}: {e}"))?;
    ensure(
        msg.contains(want),
        format!("message {msg:?} does not say {want:?}"),
    )?;
    ensure(
        lan.links()? == before,
        format!(
            "{want}: host links changed: {:?} -> {:?}",
            before,
            lan.links()?
        ),
    )?;
    ensure(
        link_in(c, "eth0")?.is_none(),
        format!("{want}: eth0 left in the container"),
    )?;
    ensure(
        lan.leases() == 0,
        format!("{want}: {} lease(s) left", lan.leases()),
    )?;
    ensure(lan.journal() == 0, format!("{want}: journal left"))?;
    lan.call_with(conf, "DEL", "bad", Some(c), "")?.ok()?;
    Ok(())
}

fn bad_parent_errors_leave_nothing() -> Result<(), String> {
    let mut lan = Lan::new("mvbad", "netloom-macvlan", json!({}))?;
    let c = lan.host.container("c")?;
    let with = |master: &str| {
        let mut conf = lan.conf.clone();
        conf["master"] = json!(master);
        conf["name"] = json!(names::unique("bad"));
        conf
    };
    refused(
        &lan,
        &with("nosuch0"),
        &c,
        104,
        "parent nosuch0 does not exist",
    )?;
    // Enslaved to a bridge.
    lan.host.sh(&[
        "ip", "link", "add", "p2", "type", "veth", "peer", "name", "p3",
    ])?;
    lan.host
        .sh(&["ip", "link", "add", "br9", "type", "bridge"])?;
    lan.host.sh(&["ip", "link", "set", "p2", "master", "br9"])?;
    lan.host.sh(&["ip", "link", "set", "p2", "up"])?;
    refused(&lan, &with("p2"), &c, 7, "p2 is enslaved to br9")?;
    // Down.
    lan.host.sh(&["ip", "link", "set", "p2", "nomaster"])?;
    lan.host.sh(&["ip", "link", "set", "p2", "down"])?;
    refused(&lan, &with("p2"), &c, 7, "p2 is down")?;
    // A VLAN of a base that does not exist (valid syntax, refused by the host).
    refused(
        &lan,
        &with("nosuch0.50"),
        &c,
        104,
        "base interface nosuch0 does not exist",
    )?;
    // Bad values are refused before the host is looked at.
    refused(
        &lan,
        &with("p0.5000"),
        &c,
        7,
        "VLAN id 5000 is out of range",
    )?;
    let mut conf = with("p0");
    conf["mode"] = json!("l2");
    refused(&lan, &conf, &c, 7, "macvlan mode \"l2\"")?;
    // The container already has the interface name: refused, and its interface is left alone.
    let taken = lan.host.container("taken")?;
    run_in_path(
        &taken,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    )?;
    let conf = with("p0");
    let msg = lan
        .call_with(&conf, "ADD", "tk", Some(&taken), "")?
        .err_code(101)?;
    ensure(
        msg.contains("interface eth0 already exists in"),
        format!("name clash: {msg}"),
    )?;
    let still = link_in(&taken, "eth0")?.unwrap_or_default();
    ensure(
        still.contains("veth"),
        format!("the container's own eth0 was touched: {still:?}"),
    )?;
    ensure(
        lan.leases() == 0 && lan.journal() == 0,
        "name-clash ADD left a lease or journal",
    )?;
    lan.call_with(&conf, "DEL", "tk", Some(&taken), "")?.ok()?;
    // A network whose parent goes down after creation: the next ADD fails clearly.
    let conf = with("p0");
    let ok = lan.host.container("ok")?;
    lan.call_with(&conf, "ADD", "good", Some(&ok), "")?.ok()?;
    lan.host.sh(&["ip", "link", "set", "p0", "down"])?;
    let before = lan.links()?;
    let msg = lan
        .call_with(&conf, "ADD", "bad", Some(&c), "")?
        .err_code(7)?;
    ensure(msg.contains("p0 is down"), format!("parent down: {msg}"))?;
    ensure(
        lan.links()? == before && link_in(&c, "eth0")?.is_none() && lan.leases() == 1,
        "parent-down ADD left something",
    )?;
    lan.host.sh(&["ip", "link", "set", "p0", "up"])?;
    lan.call_with(&conf, "DEL", "bad", Some(&c), "")?.ok()?;
    lan.call_with(&conf, "DEL", "good", Some(&ok), "")?.ok()?;
    ensure(lan.leases() == 0, "leases left")
}

fn overlapping_subnets_on_one_parent() -> Result<(), String> {
    let mut lan = Lan::new("mvovl", "netloom-macvlan", json!({}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    lan.add("ca", &a)?;
    // Another network on p0 with an overlapping subnet (a /25 inside the /24): refused, naming both.
    let mut other = lan.conf.clone();
    let other_name = names::unique("ovl2");
    other["name"] = json!(other_name);
    other["ipam"]["ranges"] = json!([[{"subnet": format!("{}/25", lan.subnet.network())}]]);
    let before = lan.links()?;
    let msg = lan
        .call_with(&other, "ADD", "cb", Some(&b), "")?
        .err_code(101)?;
    ensure(
        msg.contains("overlaps subnet") && msg.contains(lan.conf["name"].as_str().unwrap_or("?")),
        format!("overlap message: {msg}"),
    )?;
    ensure(
        lan.links()? == before && link_in(&b, "eth0")?.is_none() && lan.leases() == 1,
        "refused ADD left something",
    )?;
    lan.call_with(&other, "DEL", "cb", Some(&b), "")?.ok()?;
    // A disjoint subnet on the same parent works, and so does the overlapping one on another parent.
    let mut disjoint = other.clone();
    disjoint["ipam"]["ranges"] = json!([[{"subnet": names::subnet_v4().to_string()}]]);
    lan.call_with(&disjoint, "ADD", "cb", Some(&b), "")?.ok()?;
    lan.call_with(&disjoint, "DEL", "cb", Some(&b), "")?.ok()?;
    lan.host.sh(&[
        "ip", "link", "add", "q0", "type", "veth", "peer", "name", "q1",
    ])?;
    lan.host.sh(&["ip", "link", "set", "q0", "up"])?;
    let mut elsewhere = other.clone();
    elsewhere["master"] = json!("q0");
    elsewhere["name"] = json!(names::unique("ovl3"));
    lan.call_with(&elsewhere, "ADD", "cb", Some(&b), "")?.ok()?;
    lan.call_with(&elsewhere, "DEL", "cb", Some(&b), "")?.ok()?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    ensure(lan.leases() == 0 && lan.journal() == 0, "leftovers")
}

fn check_reports_parent_down() -> Result<(), String> {
    let mut lan = Lan::new("mvchk", "netloom-macvlan", json!({}))?;
    let a = lan.host.container("a")?;
    let r = lan.call("ADD", "ca", Some(&a))?.ok()?;
    let mut conf = lan.conf.clone();
    conf["prevResult"] = r;
    lan.call_with(&conf, "CHECK", "ca", Some(&a), "")?.ok()?;
    lan.host.sh(&["ip", "link", "set", "p0", "down"])?;
    let msg = lan
        .call_with(&conf, "CHECK", "ca", Some(&a), "")?
        .err_code(102)?;
    ensure(
        msg.contains("parent p0: down"),
        format!("CHECK message: {msg}"),
    )?;
    lan.host.sh(&["ip", "link", "set", "p0", "up"])?;
    lan.call_with(&conf, "CHECK", "ca", Some(&a), "")?.ok()?;
    // The container's interface changed under us: CHECK notices that too.
    run_in_path(&a, &["ip", "addr", "flush", "dev", "eth0"])?;
    let msg = lan
        .call_with(&conf, "CHECK", "ca", Some(&a), "")?
        .err_code(102)?;
    ensure(msg.contains("missing"), format!("CHECK message: {msg}"))?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    Ok(())
}

/// The kind of the netloom-made parent this kernel gets: dummy when it has it, else a bridge.
fn internal_parent_kind() -> &'static str {
    if tests::Caps::get().has(Cap::Dummy) {
        "dummy"
    } else {
        "bridge"
    }
}

fn internal_network() -> Result<(), String> {
    let mut lan = Lan::new("mvint", "netloom-macvlan", json!({"internal": true}))?;
    lan.conf.as_object_mut().map(|o| o.remove("master"));
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let ia = lan.add("ca", &a)?;
    let ib = lan.add("cb", &b)?;
    ping(&a, &ib)?;
    ping(&b, &ia)?;
    // The parent is netloom's, of the kind this kernel offers; nothing reaches the wire.
    let links = lan.links()?;
    let dm: Vec<&String> = links.iter().filter(|l| l.starts_with("dm-")).collect();
    ensure(
        dm.len() == 1,
        format!("want one dm- parent, have {links:?}"),
    )?;
    let d = out_text(
        &lan.host
            .sh(&["ip", "-d", "-o", "link", "show", "dev", dm[0]])?,
    );
    ensure(
        d.contains(&format!(" {} ", internal_parent_kind())),
        format!("parent is not a {}: {d}", internal_parent_kind()),
    )?;
    no_ping(&a, &lan.gateway())?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    ensure(
        lan.links()?.iter().any(|l| l.starts_with("dm-")),
        "parent removed while an endpoint remains",
    )?;
    lan.call("DEL", "cb", Some(&b))?.ok()?;
    ensure(
        !lan.links()?.iter().any(|l| l.starts_with("dm-")),
        "parent left after the last DEL",
    )?;
    ensure(lan.leases() == 0 && lan.journal() == 0, "leftovers")?;
    // "internal" and "master" together are refused.
    let mut both = lan.conf.clone();
    both["master"] = json!("p0");
    lan.call_with(&both, "ADD", "cx", Some(&a), "")?
        .err_code(7)?;
    Ok(())
}

fn host_shim() -> Result<(), String> {
    let mut lan = Lan::new("mvshim", "netloom-macvlan", json!({"hostShim": true}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let ra = lan.call("ADD", "ca", Some(&a))?.ok()?;
    let ia = ip_of(&ra)?;
    let ib = lan.add("cb", &b)?;
    let host = lan.host.netns().path().to_path_buf();
    // The host reaches both containers through the shim, and they reach the host.
    ping(&host, &ia)?;
    ping(&host, &ib)?;
    let links = lan.links()?;
    let shim = links
        .iter()
        .find(|l| l.starts_with("nlshim"))
        .ok_or(format!("no shim in {links:?}"))?
        .clone();
    let addr = out_text(
        &lan.host
            .sh(&["ip", "-o", "-4", "addr", "show", "dev", &shim])?,
    );
    let shim_ip = addr
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .ok_or(format!("shim has no address: {addr}"))?
        .to_string();
    ensure(
        addr.contains("/32"),
        format!("shim address is not a /32: {addr}"),
    )?;
    ensure(
        lan.subnet
            .contains(shim_ip.parse().map_err(|e| format!("{e}"))?),
        "shim address outside the subnet",
    )?;
    ping(&a, &shim_ip)?;
    let route = out_text(&lan.host.sh(&["ip", "route", "get", &ia])?);
    ensure(
        route.contains(&format!("dev {shim}")),
        format!("host route to {ia} not via the shim: {route}"),
    )?;
    // The shim's address is leased, so no container gets it.
    ensure(
        lan.leases() == 3,
        format!(
            "want 2 container leases + 1 shim lease, have {}",
            lan.leases()
        ),
    )?;
    // CHECK sees a missing host route.
    let mut conf = lan.conf.clone();
    conf["prevResult"] = ra;
    lan.host.sh(&["ip", "route", "del", &format!("{ia}/32")])?;
    let msg = lan
        .call_with(&conf, "CHECK", "ca", Some(&a), "")?
        .err_code(102)?;
    ensure(
        msg.contains(&format!("host route to {ia} missing")),
        format!("CHECK: {msg}"),
    )?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    let routes = out_text(&lan.host.sh(&["ip", "route", "show", "dev", &shim])?);
    ensure(
        !routes.contains(&ia),
        format!("route to a deleted container left: {routes}"),
    )?;
    ping(&host, &ib)?;
    lan.call("DEL", "cb", Some(&b))?.ok()?;
    ensure(
        !lan.links()?.iter().any(|l| l.starts_with("nlshim")),
        "shim left after the last DEL",
    )?;
    ensure(
        lan.leases() == 0,
        format!("{} leases left (shim lease not released?)", lan.leases()),
    )?;
    ensure(lan.journal() == 0, "journal left")
}

fn del_gc_status_version() -> Result<(), String> {
    let lan = Lan::new("mvgc", "netloom-macvlan", json!({"cniVersion": "1.1.0"}))?;
    // DEL after the runtime removed the namespace.
    let gone = engine_core::netns::Netns::create_named(&names::unique("gone"))
        .map_err(|e| e.to_string())?;
    let gone_path = gone.path().to_path_buf();
    lan.add("g1", &gone_path)?;
    drop(gone);
    lan.call("DEL", "g1", None)?.ok()?;
    lan.call("DEL", "g1", Some(&gone_path))?.ok()?;
    ensure(lan.leases() == 0, "lease left after DEL without netns")?;
    // GC keeps the live attachment, frees the stale one.
    let mut lan = lan;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let ia = lan.add("live", &a)?;
    lan.add("stale", &b)?;
    let mut conf = lan.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "live", "ifname": "eth0"}]);
    lan.call_with(&conf, "GC", "", None, "")?.ok()?;
    ensure(
        lan.leases() == 1,
        format!("want 1 lease after GC, have {}", lan.leases()),
    )?;
    ensure(
        link_in(&b, "eth0")?.is_none(),
        "GC did not detach the stale container",
    )?;
    no_ping(&b, &lan.gateway())?;
    ping(&a, &lan.gateway())?;
    ping(&lan.upstream, &ia)?;
    // STATUS: fine with the master there, code 50 when it is not.
    lan.call("STATUS", "", None)?.ok()?;
    let mut missing = lan.conf.clone();
    missing["master"] = json!("nosuch1");
    lan.call_with(&missing, "STATUS", "", None, "")?
        .err_code(50)?;
    // VERSION lists every version.
    let v = lan
        .call_with(&json!({"cniVersion": "1.1.0"}), "VERSION", "", None, "")?
        .ok()?;
    ensure(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.len() >= 5),
        format!("VERSION: {v}"),
    )?;
    lan.call("DEL", "live", Some(&a))?.ok()?;
    ensure(lan.leases() == 0, "leases left")
}

/// The drivers under the engine the way netloomd drives them: the link stays in the host for
/// the runtime to move (Docker's Join), and the driver knows nothing of who called it.
fn engine_runtime_moves_the_link() -> Result<(), String> {
    let mut host = FakeHost::new("mveng")?;
    host.sh(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ])?;
    host.sh(&["ip", "link", "set", "p0", "up"])?;
    host.sh(&["ip", "link", "set", "p1", "up"])?;
    let store: Arc<dyn StateStore> =
        Arc::new(FileStore::open(host.state_dir()).map_err(|e| e.to_string())?);
    let ipam = Arc::new(ipam::StoreIpam::new(
        store.clone(),
        Box::new(|| Ok(Vec::new())),
    ));
    let engine = Engine::new(
        store.clone(),
        ipam.clone(),
        drivers::registry(),
        None,
        Arc::new(NetlinkSandboxes),
        Some(host.netns().path().to_path_buf()),
    );
    let subnet = names::subnet_v4();
    let gw: std::net::IpAddr = nth(subnet, 1).parse().map_err(|e| format!("{e}"))?;
    let pool = ipam
        .request_pool(&PoolRequest {
            ranges: vec![RangeSpec {
                subnet: subnet.into(),
                start: None,
                end: None,
                gateway: Some(gw),
            }],
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let mut options = Options::new();
    options.insert("parent".into(), "p0".into());
    options.insert("macvlan_mode".into(), "bridge".into());
    let spec = NetworkSpec {
        name: "lan".into(),
        driver: "macvlan".into(),
        subnets: vec![SubnetConfig {
            subnet: subnet.into(),
            gateway: Some(gw),
            pool_id: pool.id.clone(),
        }],
        options,
        ..Default::default()
    };
    let id = "4c1f0e2d9a7b";
    let net = engine
        .ensure_network(id, &spec, OverlapPolicy::Reject)
        .map_err(|e| e.to_string())?;
    let mut addrs = Vec::new();
    for cid in ["e1", "e2"] {
        let key = AttachmentKey::new(cid, "eth0").map_err(|e| e.to_string())?;
        let a = engine
            .attach(&AttachRequest {
                network_id: net.id.clone(),
                key: key.clone(),
                sandbox: SandboxSetup::Runtime,
                static_addresses: Vec::new(),
                mac: None,
                ports: Vec::new(),
                extra_routes: Vec::new(),
                options: Options::new(),
            })
            .map_err(|e| e.to_string())?;
        // The link waits in the host; the runtime moves it, names it and configures it.
        let c = host.container(cid)?;
        let link = a.handoff.link.clone();
        ensure(
            link.starts_with("nlv") && !a.handoff.placed,
            format!("handoff: {:?}", a.handoff),
        )?;
        host.sh(&[
            "ip",
            "link",
            "set",
            &link,
            "netns",
            &c.to_string_lossy(),
            "name",
            "eth0",
        ])?;
        let addr = a.endpoint.addresses[0].to_string();
        run_in_path(&c, &["ip", "addr", "add", &addr, "dev", "eth0"])?;
        run_in_path(&c, &["ip", "link", "set", "eth0", "up"])?;
        let join = engine
            .join(
                &net.id,
                &key,
                &engine_core::Sandbox {
                    netns_path: c.clone(),
                },
            )
            .map_err(|e| e.to_string())?;
        ensure(join.gateway_v4 == Some(gw), format!("join: {join:?}"))?;
        ensure(
            join.routes
                .iter()
                .any(|r| r.destination.prefix() == 0 && r.gateway == Some(gw)),
            format!("no default route in {join:?}"),
        )?;
        addrs.push((key, c, a.endpoint.addresses[0].ip().to_string()));
    }
    ping(&addrs[0].1, &addrs[1].2)?;
    // Docker refuses overlapping networks on any parent; the driver refuses them on one parent
    // even when the engine lets them through.
    let mut other = spec.clone();
    other.name = "lan2".into();
    let e = engine
        .ensure_network("7d2e", &other, OverlapPolicy::Allow)
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_default();
    ensure(
        e.contains("overlaps subnet"),
        format!("overlap on one parent: {e:?}"),
    )?;
    for (key, c, _) in &addrs {
        engine
            .detach(
                &net.id,
                key,
                Some(&engine_core::Sandbox {
                    netns_path: c.clone(),
                }),
            )
            .map_err(|e| e.to_string())?;
    }
    engine.delete_network(&net.id).map_err(|e| e.to_string())?;
    ensure(
        !drivers::vlan::has_record(store.as_ref(), &net.id).map_err(|e| e.to_string())?,
        "network record left",
    )?;
    let links = link_names(&host.sh(&["ip", "-o", "link", "show"])?)?;
    ensure(
        links == vec!["lo", "p0", "p1"],
        format!("host links left: {links:?}"),
    )
}

/// 20 ADDs, then 20 DELs, all at once: distinct addresses, every container reachable, and the
/// last DEL (whichever it is) takes the network and its shim with it.
fn parallel_add_del() -> Result<(), String> {
    let mut lan = Lan::new("mvpar", "netloom-macvlan", json!({"hostShim": true}))?;
    let nss: Vec<PathBuf> = (0..20)
        .map(|i| lan.host.container(&format!("p{i}")))
        .collect::<Result<_, _>>()?;
    let lan = &lan;
    let adds: Vec<Result<String, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| s.spawn(move || lan.add(&format!("par{i}"), ns)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let ips: std::collections::BTreeSet<String> = adds.into_iter().collect::<Result<_, _>>()?;
    ensure(
        ips.len() == 20,
        format!("20 parallel ADDs got {} distinct addresses", ips.len()),
    )?;
    let host = lan.host.netns().path().to_path_buf();
    for ip in ips.iter().take(3) {
        ping(&host, ip)?;
    }
    let dels: Vec<Result<Value, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| s.spawn(move || lan.call("DEL", &format!("par{i}"), Some(ns))?.ok()))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    for d in dels {
        d?;
    }
    ensure(lan.leases() == 0, format!("{} leases left", lan.leases()))?;
    ensure(lan.journal() == 0, "journal left")?;
    ensure(
        !lan.links()?.iter().any(|l| l.starts_with("nlshim")),
        "shim left after the last DEL",
    )?;
    let nets = count_values(&lan.host.state_dir().join("data/networks"));
    ensure(
        nets == 0,
        format!("{nets} network record(s) left after the last DEL"),
    )
}

/// linkInContainer: the master is an interface inside the container (a VF or a veth handed to
/// it), and the macvlan is made there.
fn link_in_container() -> Result<(), String> {
    let mut lan = Lan::new(
        "mvlic",
        "netloom-macvlan",
        json!({"linkInContainer": true, "master": "m0"}),
    )?;
    let c = lan.host.container("c")?;
    // The container's own uplink m0, wired to the upstream namespace's m1 on the subnet.
    run_in_path(
        &c,
        &[
            "ip", "link", "add", "m0", "type", "veth", "peer", "name", "m1",
        ],
    )?;
    run_in_path(
        &c,
        &[
            "ip",
            "link",
            "set",
            "m1",
            "netns",
            &lan.upstream.to_string_lossy(),
        ],
    )?;
    run_in_path(&c, &["ip", "link", "set", "m0", "up"])?;
    let up = lan.upstream.clone();
    run_in_path(
        &up,
        &[
            "ip",
            "addr",
            "del",
            &format!("{}/24", lan.gateway()),
            "dev",
            "p1",
        ],
    )?;
    run_in_path(
        &up,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lan.gateway()),
            "dev",
            "m1",
        ],
    )?;
    run_in_path(&up, &["ip", "link", "set", "m1", "up"])?;
    let r = lan.call("ADD", "lc", Some(&c))?.ok()?;
    let d = link_in(&c, "eth0")?.ok_or("no eth0 in the container")?;
    ensure(
        d.contains("eth0@m0") && d.contains("macvlan"),
        format!("eth0 is not a macvlan on m0: {d}"),
    )?;
    ping(&c, &lan.gateway())?;
    let mut conf = lan.conf.clone();
    conf["prevResult"] = r;
    lan.call_with(&conf, "CHECK", "lc", Some(&c), "")?.ok()?;
    lan.call("DEL", "lc", Some(&c))?.ok()?;
    ensure(
        link_in(&c, "eth0")?.is_none() && link_in(&c, "m0")?.is_some(),
        "DEL removed the wrong link",
    )?;
    ensure(
        lan.links()? == vec!["lo".to_string(), "p0".to_string()],
        "linkInContainer touched the host",
    )?;
    ensure(lan.leases() == 0 && lan.journal() == 0, "leftovers")?;
    lan.conf = Value::Null;
    Ok(())
}

/// IPv4 and IPv6 on one macvlan network, the host shim carrying a /32 and a /128.
fn dual_stack() -> Result<(), String> {
    let v6 = names::subnet_v6();
    let mut lan = Lan::new("mv6", "netloom-macvlan", json!({"hostShim": true}))?;
    lan.conf["ipam"]["ranges"] =
        json!([[{"subnet": lan.subnet.to_string()}], [{"subnet": v6.to_string()}]]);
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let ra = lan.call("ADD", "a6", Some(&a))?.ok()?;
    lan.call("ADD", "b6", Some(&b))?.ok()?;
    let a6 = ra["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .filter_map(|i| i["address"].as_str())
                .find(|s| s.contains(':'))
        })
        .and_then(|s| s.split('/').next())
        .ok_or(format!("no IPv6 address in {ra}"))?
        .to_string();
    run_in_path(&b, &["ping", "-6", "-c", "1", "-W", "2", &a6])
        .map_err(|e| format!("v6 container to container: {e}"))?;
    let host = lan.host.netns().path().to_path_buf();
    run_in_path(&host, &["ping", "-6", "-c", "1", "-W", "2", &a6])
        .map_err(|e| format!("v6 host to container: {e}"))?;
    let shim = lan
        .links()?
        .into_iter()
        .find(|l| l.starts_with("nlshim"))
        .ok_or("no shim")?;
    let addrs = out_text(&lan.host.sh(&[
        "ip", "-o", "-6", "addr", "show", "dev", &shim, "scope", "global",
    ])?);
    ensure(addrs.contains("/128"), format!("shim has no /128: {addrs}"))?;
    lan.call("DEL", "a6", Some(&a))?.ok()?;
    lan.call("DEL", "b6", Some(&b))?.ok()?;
    ensure(
        lan.leases() == 0 && !lan.links()?.iter().any(|l| l.starts_with("nlshim")),
        "leftovers",
    )
}

// ------------------------------------------------------------------ the kernel lane

fn ipvlan_modes() -> Result<(), String> {
    for mode in ["l2", "l3", "l3s"] {
        let mut lan = Lan::new(
            &format!("iv{mode}"),
            "netloom-ipvlan",
            json!({"mode": mode}),
        )?;
        let a = lan.host.container("a")?;
        let b = lan.host.container("b")?;
        let ra = lan.call("ADD", "ca", Some(&a))?.ok()?;
        let ib = lan.add("cb", &b)?;
        let ia = ip_of(&ra)?;
        ping(&a, &ib).map_err(|e| format!("{mode}: {e}"))?;
        ping(&b, &ia).map_err(|e| format!("{mode}: {e}"))?;
        let d = link_in(&a, "eth0")?.unwrap_or_default();
        ensure(
            d.contains(&format!("ipvlan  mode {mode} bridge")),
            format!("{mode}: link is {d}"),
        )?;
        // All slaves share the parent's MAC.
        let p0 = out_text(&lan.host.sh(&["ip", "-o", "link", "show", "dev", "p0"])?);
        let mac = ra["interfaces"][0]["mac"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        ensure(
            p0.contains(&mac),
            format!("{mode}: result MAC {mac} is not the parent's: {p0}"),
        )?;
        if mode == "l2" {
            ping(&a, &lan.gateway())?;
        }
        let mut conf = lan.conf.clone();
        conf["prevResult"] = ra;
        lan.call_with(&conf, "CHECK", "ca", Some(&a), "")?
            .ok()
            .map_err(|e| format!("{mode}: CHECK: {e}"))?;
        lan.call("DEL", "ca", Some(&a))?.ok()?;
        lan.call("DEL", "cb", Some(&b))?.ok()?;
        ensure(
            link_in(&a, "eth0")?.is_none() && lan.leases() == 0 && lan.journal() == 0,
            format!("{mode}: leftovers"),
        )?;
        lan.conf = Value::Null;
    }
    // A MAC cannot be asked of ipvlan.
    let mut lan = Lan::new(
        "ivmac",
        "netloom-ipvlan",
        json!({"mac": "02:00:00:00:00:01"}),
    )?;
    let c = lan.host.container("c")?;
    lan.call("ADD", "cm", Some(&c))?.err_code(2)?;
    ensure(
        link_in(&c, "eth0")?.is_none() && lan.leases() == 0,
        "refused ADD left something",
    )?;
    Ok(())
}

fn ipvlan_private_and_shim() -> Result<(), String> {
    let mut lan = Lan::new(
        "ivpriv",
        "netloom-ipvlan",
        json!({"mode": "l2", "flag": "private"}),
    )?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    lan.add("ca", &a)?;
    let ib = lan.add("cb", &b)?;
    no_ping(&a, &ib)?;
    ping(&a, &lan.gateway())?;
    ensure(
        link_in(&a, "eth0")?
            .unwrap_or_default()
            .contains("l2 private"),
        "not private",
    )?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    lan.call("DEL", "cb", Some(&b))?.ok()?;
    // The host shim works for ipvlan too (an ipvlan shim in the host).
    let mut lan = Lan::new(
        "ivshim",
        "netloom-ipvlan",
        json!({"mode": "l2", "hostShim": true}),
    )?;
    let a = lan.host.container("a")?;
    let ia = lan.add("ca", &a)?;
    ping(lan.host.netns().path(), &ia)?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    ensure(
        !lan.links()?.iter().any(|l| l.starts_with("nlshim")) && lan.leases() == 0,
        "shim or lease left",
    )
}

fn ipvlan_beside_macvlan() -> Result<(), String> {
    let mut lan = Lan::new("ivmv", "netloom-macvlan", json!({}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    lan.add("ca", &a)?;
    let mut iv = lan.conf.clone();
    iv["type"] = json!("netloom-ipvlan");
    iv["name"] = json!(names::unique("ivmv2"));
    iv["ipam"]["ranges"] = json!([[{"subnet": names::subnet_v4().to_string()}]]);
    let call = Call {
        command: "ADD",
        container_id: "cb",
        netns: Some(&b),
        ifname: "eth0",
        args: "",
    };
    let before = lan.links()?;
    let out = run(&lan.host, &our_bin("netloom-ipvlan")?, &call, &iv)?;
    let msg = out.err_code(101)?;
    ensure(
        msg.contains("cannot be a macvlan and an ipvlan parent"),
        format!("message: {msg}"),
    )?;
    ensure(
        lan.links()? == before && link_in(&b, "eth0")?.is_none(),
        "refused ADD left something",
    )?;
    let call = Call {
        command: "DEL",
        ..call
    };
    run(&lan.host, &our_bin("netloom-ipvlan")?, &call, &iv)?.ok()?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    ensure(lan.leases() == 0, "leases left")
}

fn vlan_lifecycle() -> Result<(), String> {
    let mut lan = Lan::new("vlc", "netloom-macvlan", json!({"master": "p0.50"}))?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let vlan = |lan: &Lan, name: &str| -> Result<Option<String>, String> {
        link_in(lan.host.netns().path(), name)
    };
    ensure(
        vlan(&lan, "p0.50")?.is_none(),
        "p0.50 exists before the test",
    )?;
    lan.add("ca", &a)?;
    let d = vlan(&lan, "p0.50")?.ok_or("p0.50 not created")?;
    ensure(
        d.contains("vlan protocol 802.1Q id 50"),
        format!("p0.50 is {d}"),
    )?;
    // A second network on the same VLAN parent shares it.
    let mut second = lan.conf.clone();
    second["name"] = json!(names::unique("vlc2"));
    second["ipam"]["ranges"] = json!([[{"subnet": names::subnet_v4().to_string()}]]);
    lan.call_with(&second, "ADD", "cb", Some(&b), "")?.ok()?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    ensure(
        vlan(&lan, "p0.50")?.is_some(),
        "p0.50 deleted while another network needs it",
    )?;
    lan.call_with(&second, "DEL", "cb", Some(&b), "")?.ok()?;
    ensure(
        vlan(&lan, "p0.50")?.is_none(),
        "p0.50 left after the last network that needed it",
    )?;
    // A VLAN the user made is used and never deleted.
    lan.host.sh(&[
        "ip", "link", "add", "link", "p0", "name", "p0.60", "type", "vlan", "id", "60",
    ])?;
    lan.host.sh(&["ip", "link", "set", "p0.60", "up"])?;
    let mut user = lan.conf.clone();
    user["master"] = json!("p0.60");
    user["name"] = json!(names::unique("vlc3"));
    lan.call_with(&user, "ADD", "cc", Some(&a), "")?.ok()?;
    lan.call_with(&user, "DEL", "cc", Some(&a), "")?.ok()?;
    ensure(
        vlan(&lan, "p0.60")?.is_some(),
        "netloom deleted a VLAN it did not create",
    )?;
    // A link named like a VLAN but with another id is refused.
    lan.host.sh(&[
        "ip", "link", "add", "link", "p0", "name", "p0.70", "type", "vlan", "id", "71",
    ])?;
    lan.host.sh(&["ip", "link", "set", "p0.70", "up"])?;
    let mut wrong = lan.conf.clone();
    wrong["master"] = json!("p0.70");
    wrong["name"] = json!(names::unique("vlc4"));
    refused(&lan, &wrong, &a, 101, "exists with VLAN id 71, not 70")?;
    // A failed ADD that created the VLAN removes it again (MTU above the parent's: refused after
    // the sub-interface was made).
    let mut big = lan.conf.clone();
    big["master"] = json!("p0.80");
    big["mtu"] = json!(9000);
    big["name"] = json!(names::unique("vlc5"));
    refused(&lan, &big, &a, 7, "larger than parent p0.80")?;
    ensure(
        vlan(&lan, "p0.80")?.is_none(),
        "a failed ADD left the VLAN it created",
    )?;
    lan.conf = Value::Null;
    Ok(())
}

/// Two networks on VLAN parents of one wire, each with an upstream on its own VLAN.
fn on_vlan_parent(plugin: &'static str, vid: &str, extra: Value) -> Result<(), String> {
    let mut lan = Lan::new(
        &format!("onvl{vid}"),
        plugin,
        json!({"master": format!("p0.{vid}")}),
    )?;
    merge(&mut lan.conf, extra);
    // The upstream answers on the same VLAN: move its address onto a tagged sub-interface.
    let up = lan.upstream.clone();
    let gw = format!("{}/24", lan.gateway());
    run_in_path(&up, &["ip", "addr", "del", &gw, "dev", "p1"])?;
    run_in_path(
        &up,
        &[
            "ip", "link", "add", "link", "p1", "name", "p1.v", "type", "vlan", "id", vid,
        ],
    )?;
    run_in_path(&up, &["ip", "addr", "add", &gw, "dev", "p1.v"])?;
    run_in_path(&up, &["ip", "link", "set", "p1.v", "up"])?;
    let a = lan.host.container("a")?;
    let b = lan.host.container("b")?;
    let ia = lan.add("ca", &a)?;
    let ib = lan.add("cb", &b)?;
    ping(&a, &ib)?;
    ping(&b, &ia)?;
    // Through the tag to the upstream: proves the frames carry VLAN id `vid`.
    ping(&a, &lan.gateway())?;
    lan.call("DEL", "ca", Some(&a))?.ok()?;
    lan.call("DEL", "cb", Some(&b))?.ok()?;
    ensure(
        link_in(lan.host.netns().path(), &format!("p0.{vid}"))?.is_none(),
        "VLAN parent left",
    )?;
    ensure(lan.leases() == 0 && lan.journal() == 0, "leftovers")
}

fn macvlan_on_vlan_parent() -> Result<(), String> {
    on_vlan_parent("netloom-macvlan", "100", json!({}))
}

fn ipvlan_on_vlan_parent() -> Result<(), String> {
    on_vlan_parent("netloom-ipvlan", "200", json!({"mode": "l2"}))
}

fn dummy_internal_parent() -> Result<(), String> {
    // On a kernel with dummy links, the netloom-made parent is a real dummy, and an ipvlan
    // network can use one as well when the kernel has ipvlan.
    ensure(
        internal_parent_kind() == "dummy",
        "the kernel has dummy links, but the probe says no",
    )?;
    internal_network()?;
    // The harness's ipvlan probe shares its parent with the macvlan probe (EBUSY), so in the
    // lane, where ipvlan is known to be there, the lane's word is taken.
    if in_lane() || tests::Caps::get().has(Cap::Ipvlan) {
        let mut lan = Lan::new(
            "ivint",
            "netloom-ipvlan",
            json!({"internal": true, "mode": "l3"}),
        )?;
        lan.conf.as_object_mut().map(|o| o.remove("master"));
        let a = lan.host.container("a")?;
        let b = lan.host.container("b")?;
        let ia = lan.add("ca", &a)?;
        lan.add("cb", &b)?;
        ping(&b, &ia)?;
        lan.call("DEL", "ca", Some(&a))?.ok()?;
        lan.call("DEL", "cb", Some(&b))?.ok()?;
        ensure(
            !lan.links()?.iter().any(|l| l.starts_with("dm-")),
            "dummy parent left",
        )?;
    }
    Ok(())
}

/// netloom-macvlan under another IPAM plugin (the reference `static` from CNI_PATH): it leases,
/// netloom wires; the containers and the upstream talk; CHECK and DEL go through the plugin
/// too; a host shim without an address of its own is refused.
fn macvlan_static_ipam() -> Result<(), String> {
    let mut lan = Lan::new("mvst", "netloom-macvlan", json!({"mode": "bridge"}))?;
    let (a, b) = (lan.host.container("a")?, lan.host.container("b")?);
    let static_conf = |lan: &Lan, host_part: u32| {
        let mut c = lan.conf.clone();
        c["ipam"] = json!({"type": "static",
            "addresses": [{"address": format!("{}/{}", nth(lan.subnet, host_part), lan.subnet.prefix()),
                           "gateway": nth(lan.subnet, 1)}],
            "routes": [{"dst": "0.0.0.0/0"}]});
        c
    };
    let (ca, cb) = (static_conf(&lan, 20), static_conf(&lan, 21));
    let ra = lan.call_with(&ca, "ADD", "sa", Some(&a), "")?.ok()?;
    ensure(
        ip_of(&ra)? == nth(lan.subnet, 20),
        format!("ADD did not report the static address: {ra}"),
    )?;
    lan.call_with(&cb, "ADD", "sb", Some(&b), "")?.ok()?;
    ping(&a, &nth(lan.subnet, 21))?;
    ping(&b, &lan.gateway())?;
    let routes = out_text(&run_in_path(&a, &["ip", "route", "show", "default"])?);
    ensure(
        routes.contains(&format!("via {}", lan.gateway())),
        format!("no default route via the static plugin's gateway: {routes}"),
    )?;
    ensure(lan.leases() == 0, "netloom leased addresses itself")?;
    let mut check = ca.clone();
    check["prevResult"] = ra;
    lan.call_with(&check, "CHECK", "sa", Some(&a), "")?.ok()?;
    let mut shim = ca.clone();
    shim["hostShim"] = json!(true);
    let c = lan.host.container("c")?;
    let err = lan
        .call_with(&shim, "ADD", "sc", Some(&c), "")?
        .err_code(7)?;
    ensure(
        err.contains("hostShimAddress"),
        format!("host shim with a delegated IPAM: {err}"),
    )?;
    lan.call_with(&ca, "DEL", "sa", Some(&a), "")?.ok()?;
    lan.call_with(&cb, "DEL", "sb", Some(&b), "")?.ok()?;
    for ns in [&a, &b] {
        ensure(link_in(ns, "eth0")?.is_none(), "eth0 left after DEL")?;
    }
    ensure(lan.journal() == 0, "journal entries left")
}
