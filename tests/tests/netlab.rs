//! netlab integration tests: the real CLI on real namespaces built inside a fake host.
//!
//! The CLI runs as a subprocess started inside the fake host, so it sees that namespace as
//! "the host". The subprocess is this test binary itself in worker mode running
//! `netlab::cli::main_with` (the same code as the `netlab` binary, which `cargo test` of this
//! package does not build). /run/netns and /proc are global, so the tests only assert on the
//! namespaces and links they made.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use engine_core::netns::Netns;
use engine_core::store::file::FileStore;
use engine_core::{Expect, Key, StateStore};
use serde_json::Value;
use tests::fakehost::run_in;
use tests::{names, run_main, Cap, FakeHost, Suite};

fn main() {
    let mut s = Suite::new();
    s.worker("netlab", worker_netlab);
    let topo = [Cap::Root, Cap::Veth, Cap::Bridge];
    s.test(
        "netlab::ls_json_shows_known_topology",
        &topo,
        ls_json_shows_known_topology,
    )
    .test(
        "netlab::ls_text_fits_100_columns",
        &topo,
        ls_text_fits_100_columns,
    )
    .test(
        "netlab::unknown_target_exits_2_with_suggestions",
        &topo,
        unknown_target_exits_2,
    )
    .test(
        "netlab::exec_runs_inside_the_netns",
        &topo,
        exec_runs_inside_the_netns,
    )
    .test("netlab::topo_text_dot_json", &topo, topo_text_dot_json)
    .test(
        "netlab::doctor_finds_forward_drop_rp_filter_leaked_veth",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables],
        doctor_finds_problems,
    )
    .test(
        "netlab::doctor_finds_stale_ipam_lease",
        &topo,
        doctor_finds_stale_lease,
    )
    .test(
        "netlab::capture_writes_a_pcap_of_real_traffic",
        &topo,
        capture_writes_pcap,
    )
    .test(
        "netlab::completions_and_man_page",
        &[],
        completions_and_man_page,
    )
    .test(
        "netlab::probe_success_reports_latency",
        &topo,
        probe_success_reports_latency,
    )
    .test(
        "netlab::probe_explains_no_route_and_neighbour_failure",
        &topo,
        probe_explains_no_route_and_neighbour,
    )
    .test(
        "netlab::probe_names_the_nft_drop_rule",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables],
        probe_names_the_nft_drop_rule,
    )
    .test(
        "netlab::probe_explains_rp_filter",
        &topo,
        probe_explains_rp_filter,
    )
    .test(
        "netlab::probe_finds_the_path_mtu",
        &topo,
        probe_finds_the_path_mtu,
    )
    .test(
        "netlab::trace_through_bridges_with_nat_and_missing_masquerade",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables],
        trace_with_nat,
    )
    .test(
        "netlab::lab_up_down_idempotent_leaves_nothing",
        &topo,
        lab_up_down,
    )
    .test(
        "netlab::capture_filter_keeps_only_matching_packets",
        &topo,
        capture_filter,
    )
    .test(
        "netlab::doctor_finds_vxlan_offload_overlay_mtu_route_conflict_missing_nat",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Vxlan, Cap::Nftables],
        doctor_overlay_checks,
    )
    .test(
        "netlab::doctor_finds_a_published_port_without_nat",
        &[Cap::Root, Cap::Veth, Cap::Bridge, Cap::Nftables],
        doctor_published_port,
    )
    .test(
        "netlab::topo_dot_renders_with_graphviz",
        &topo,
        topo_dot_renders,
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

/// Arguments travel to the worker in one variable, separated by the ASCII unit separator.
const ARGS_VAR: &str = "NETLAB_TEST_ARGS";

fn worker_netlab() -> i32 {
    let args = std::env::var(ARGS_VAR).unwrap_or_default();
    let argv = std::iter::once("netlab").chain(args.split('\u{1f}').filter(|a| !a.is_empty()));
    netlab::cli::main_with(argv)
}

/// Runs `netlab ARGS` inside `host` (the fake host's namespace is netlab's "host").
fn netlab_in(host: &FakeHost, args: &[&str], env: &[(&str, &str)]) -> Result<Output, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = host.command(exe)?;
    cmd.env("NETLOOM_TEST_WORKER", "netlab")
        .env(ARGS_VAR, args.join("\u{1f}"))
        // Never pick up the machine's own netloom state or Docker.
        .env("NETLOOM_STATE_DIR", host.state_dir())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .map_err(|e| format!("run netlab {}: {e}", args.join(" ")))
}

fn json_of(out: &Output, what: &str) -> Result<Value, String> {
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{what}: not JSON ({e}); status {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ok_json(host: &FakeHost, args: &[&str]) -> Result<Value, String> {
    let out = netlab_in(host, args, &[])?;
    ensure(
        out.status.success(),
        format!(
            "netlab {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    json_of(&out, &args.join(" "))
}

/// A fake host with bridge br0 (.1/24) and two containers, each with eth0 (.2, .3) on a veth
/// whose host end (veth-a, veth-b) is a port of br0; container a has a default route via .1.
struct Topo {
    host: FakeHost,
    a: String,
    b: String,
    net: ipnetwork::Ipv4Network,
}

impl Topo {
    fn ip(&self, n: u8) -> String {
        let o = self.net.ip().octets();
        format!("{}.{}.{}.{n}", o[0], o[1], o[2])
    }
}

fn topo(tag: &str) -> Result<Topo, String> {
    let mut host = FakeHost::new(tag)?;
    let net = names::subnet_v4();
    let name = |p: std::path::PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let a = name(host.container("a")?).ok_or("container a has no name")?;
    let b = name(host.container("b")?).ok_or("container b has no name")?;
    let t = Topo { host, a, b, net };
    let h = &t.host;
    h.sh(&["ip", "link", "add", "br0", "type", "bridge"])?;
    h.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", t.ip(1)),
        "dev",
        "br0",
    ])?;
    h.sh(&["ip", "link", "set", "br0", "up"])?;
    for (c, end, ip) in [(&t.a, "veth-a", t.ip(2)), (&t.b, "veth-b", t.ip(3))] {
        h.sh(&[
            "ip", "link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", c,
        ])?;
        h.sh(&["ip", "link", "set", end, "master", "br0", "up"])?;
        let ns = Netns::open_name(c).map_err(|e| e.to_string())?;
        run_in(
            &ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        run_in(&ns, &["ip", "link", "set", "eth0", "up"])?;
    }
    let ns_a = Netns::open_name(&t.a).map_err(|e| e.to_string())?;
    run_in(&ns_a, &["ip", "route", "add", "default", "via", &t.ip(1)])?;
    Ok(t)
}

fn namespace<'a>(ls: &'a Value, label: &str) -> Result<&'a Value, String> {
    ls["namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["label"] == label))
        .ok_or_else(|| format!("namespace {label} missing from netlab ls"))
}

fn iface<'a>(ns: &'a Value, name: &str) -> Result<&'a Value, String> {
    ns["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .ok_or_else(|| format!("interface {name} missing in {}", ns["label"]))
}

fn ls_json_shows_known_topology() -> Result<(), String> {
    let t = topo("lsj")?;
    let ls = ok_json(&t.host, &["ls", "--json", "--no-processes"])?;
    let host = namespace(&ls, "host")?;
    ensure(host["host"] == true, "host entry not marked as host")?;
    let br = iface(host, "br0")?;
    ensure(br["kind"] == "bridge", format!("br0 kind: {}", br["kind"]))?;
    ensure(
        br["addresses"][0] == format!("{}/24", t.ip(1)),
        format!("br0 addresses: {}", br["addresses"]),
    )?;
    let va = iface(host, "veth-a")?;
    ensure(
        va["master"] == "br0",
        format!("veth-a master: {}", va["master"]),
    )?;
    ensure(
        va["peer"]["netns"] == t.a.as_str(),
        format!("veth-a peer: {}", va["peer"]),
    )?;
    ensure(
        va["peer"]["ifname"] == "eth0",
        format!("veth-a peer: {}", va["peer"]),
    )?;
    let a = namespace(&ls, &t.a)?;
    ensure(
        a["nsid"].is_i64(),
        "container without a namespace id from the host",
    )?;
    let eth0 = iface(a, "eth0")?;
    ensure(
        eth0["addresses"]
            .as_array()
            .is_some_and(|x| x.iter().any(|v| *v == format!("{}/24", t.ip(2)))),
        format!("a:eth0 addresses: {}", eth0["addresses"]),
    )?;
    ensure(
        eth0["peer"]["netns"] == "host" && eth0["peer"]["ifname"] == "veth-a",
        format!("{}", eth0["peer"]),
    )?;
    ensure(
        eth0["peer"]["master"] == "br0",
        "a:eth0's host end is not shown on br0",
    )?;
    let def = &a["default_routes"][0];
    ensure(
        def["gateway"] == t.ip(1).as_str() && def["dev"] == "eth0",
        format!("a default route: {def}"),
    )?;
    let b = namespace(&ls, &t.b)?;
    ensure(
        b["default_routes"].as_array().is_some_and(|r| r.is_empty()),
        "b has no default route",
    )?;
    Ok(())
}

fn ls_text_fits_100_columns() -> Result<(), String> {
    let t = topo("lst")?;
    let out = netlab_in(&t.host, &["ls"], &[])?;
    ensure(
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines() {
        ensure(
            l.chars().count() <= 100,
            format!("line wider than 100 columns: {l}"),
        )?;
    }
    let want = format!("<-> {}:eth0", t.a);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("veth-a"))
        .ok_or("no veth-a line")?;
    ensure(
        line.contains(&want) && line.contains("master br0"),
        format!("veth-a line: {line}"),
    )?;
    ensure(
        text.contains(&format!("default via {} dev eth0", t.ip(1))),
        "no default route line",
    )
}

fn unknown_target_exits_2() -> Result<(), String> {
    let t = topo("unk")?;
    // One character off a real name: exit 2, and the real name suggested.
    let typo = format!("{}x", t.a);
    let out = netlab_in(&t.host, &["exec", &typo, "--", "true"], &[])?;
    ensure(
        out.status.code() == Some(2),
        format!("exit status {}", out.status),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        err.contains(&typo) && err.contains("did you mean") && err.contains(&t.a),
        format!("stderr: {err}"),
    )?;
    Ok(())
}

fn exec_runs_inside_the_netns() -> Result<(), String> {
    let t = topo("exec")?;
    let out = netlab_in(
        &t.host,
        &[
            "exec", &t.b, "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0",
        ],
        &[],
    )?;
    ensure(
        out.status.success(),
        format!("exec failed: {}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        text.contains(&format!("{}/24", t.ip(3))),
        format!("ip addr in b: {text}"),
    )?;
    // By path too, and the command's exit status comes back.
    let path = format!("/run/netns/{}", t.a);
    let out = netlab_in(&t.host, &["exec", &path, "--", "sh", "-c", "exit 7"], &[])?;
    ensure(
        out.status.code() == Some(7),
        format!("exit status {}", out.status),
    )?;
    // "host" is the namespace netlab runs in: the fake host, where br0 exists.
    let out = netlab_in(
        &t.host,
        &["exec", "host", "--", "ip", "link", "show", "br0"],
        &[],
    )?;
    ensure(out.status.success(), "br0 not visible through `exec host`")
}

fn topo_text_dot_json() -> Result<(), String> {
    let t = topo("topo")?;
    let j = ok_json(&t.host, &["topo", "--format", "json", "--no-processes"])?;
    let edges = j["edges"].as_array().ok_or("no edges")?;
    let veth = edges.iter().any(|e| {
        e["kind"] == "veth"
            && [&e["a"], &e["b"]]
                .iter()
                .any(|x| x["netns"] == "host" && x["ifname"] == "veth-a")
            && [&e["a"], &e["b"]]
                .iter()
                .any(|x| x["netns"] == t.a.as_str() && x["ifname"] == "eth0")
    });
    ensure(
        veth,
        format!("no veth edge host:veth-a <-> {}:eth0 in {edges:?}", t.a),
    )?;
    let port = edges.iter().any(|e| {
        e["kind"] == "master" && e["port"]["ifname"] == "veth-b" && e["bridge"]["ifname"] == "br0"
    });
    ensure(port, "no bridge port edge veth-b -> br0")?;
    let dot = netlab_in(&t.host, &["topo", "--format", "dot", "--no-processes"], &[])?;
    let dot = String::from_utf8_lossy(&dot.stdout);
    ensure(
        dot.starts_with("graph netlab {") && dot.trim_end().ends_with('}'),
        "DOT is not a graph",
    )?;
    ensure(
        dot.contains(&format!("\"host:veth-a\" -- \"{}:eth0\"", t.a))
            || dot.contains(&format!("\"{}:eth0\" -- \"host:veth-a\"", t.a)),
        "veth edge missing from DOT",
    )?;
    let text = netlab_in(&t.host, &["topo", "--no-processes"], &[])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure(
        text.contains("bridge br0")
            && text.contains(&format!("veth veth-a mtu 1500 <-> {}:eth0", t.a)),
        format!("topo text:\n{text}"),
    )
}

fn check<'a>(report: &'a Value, id: &str) -> Result<&'a Value, String> {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == id))
        .ok_or_else(|| format!("check {id} missing"))
}

fn doctor_finds_problems() -> Result<(), String> {
    let t = topo("doc")?;
    let h = &t.host;
    // Docker's FORWARD DROP, without an accept for br0.
    h.sh(&["nft", "add", "table", "inet", "nltdoc"])?;
    h.sh(&[
        "nft",
        "add chain inet nltdoc FORWARD { type filter hook forward priority 0; policy drop; }",
    ])?;
    // Strict reverse-path filtering everywhere.
    h.sh(&["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1"])?;
    // Forwarding off: a new namespace copies the machine's value, which dockerd turns on.
    h.sh(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
    // A veth whose peer namespace nobody can name: the namespace is kept alive only by the
    // handle this test holds, its /run/netns entry is gone.
    let ghost_name = names::unique("ghost");
    let ghost = Netns::create_named(&ghost_name).map_err(|e| e.to_string())?;
    h.sh(&[
        "ip",
        "link",
        "add",
        "leak0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &ghost_name,
    ])?;
    Netns::remove_named(std::path::Path::new("/run/netns"), &ghost_name)
        .map_err(|e| e.to_string())?;
    let out = netlab_in(h, &["doctor", "--json", "--no-processes"], &[])?;
    ensure(
        out.status.code() == Some(3),
        format!("doctor exit status {} (want 3: a check fails)", out.status),
    )?;
    let r = json_of(&out, "doctor")?;
    ensure(r["verdict"] == "fail", format!("verdict {}", r["verdict"]))?;
    let fwd = check(&r, "forward_policy")?;
    ensure(fwd["verdict"] == "fail", format!("forward_policy: {fwd}"))?;
    ensure(
        fwd["findings"]
            .to_string()
            .contains("table inet nltdoc chain FORWARD"),
        format!("chain not named: {fwd}"),
    )?;
    ensure(
        fwd["summary"].to_string().contains("br0") && fwd["fix"].is_string(),
        format!("{fwd}"),
    )?;
    let rp = check(&r, "rp_filter")?;
    ensure(
        rp["verdict"] == "warn" && rp["findings"].to_string().contains("br0"),
        format!("rp_filter: {rp}"),
    )?;
    let leak = check(&r, "leaked_veths")?;
    ensure(
        leak["verdict"] == "warn" && leak["findings"].to_string().contains("leak0"),
        format!("leaked_veths: {leak}"),
    )?;
    ensure(
        leak["fix"].to_string().contains("ip link del leak0"),
        format!("leaked_veths fix: {leak}"),
    )?;
    let fw = check(&r, "ip_forward")?;
    ensure(
        fw["verdict"] == "fail",
        format!("ip_forward is 0 in the fake host: {fw}"),
    )?;
    // An accept rule for the bridge clears the forward check.
    h.sh(&["nft", "add rule inet nltdoc FORWARD iifname \"br0\" accept"])?;
    let r = json_of(
        &netlab_in(h, &["doctor", "--json", "--no-processes"], &[])?,
        "doctor",
    )?;
    ensure(
        check(&r, "forward_policy")?["verdict"] == "ok",
        "accept rule for br0 not recognised",
    )?;
    // Human output: one line per check, within 100 columns.
    let text = netlab_in(h, &["doctor", "--no-processes"], &[])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure(
        text.lines().all(|l| l.chars().count() <= 100),
        "doctor line wider than 100 columns",
    )?;
    ensure(
        text.contains("WARN  leaked_veths"),
        format!("doctor text:\n{text}"),
    )?;
    drop(ghost);
    Ok(())
}

fn doctor_finds_stale_lease() -> Result<(), String> {
    let t = topo("lease")?;
    let store = FileStore::open(t.host.state_dir()).map_err(|e| e.to_string())?;
    let key = Key::new(["ipam", "leases", "pool1", &t.ip(9)]);
    store
        .put(&key, b"deadbeef/eth0", Expect::Any)
        .map_err(|e| e.to_string())?;
    let r = json_of(
        &netlab_in(&t.host, &["doctor", "--json", "--no-processes"], &[])?,
        "doctor",
    )?;
    let c = check(&r, "ipam_leases")?;
    ensure(c["verdict"] == "warn", format!("ipam_leases: {c}"))?;
    ensure(
        c["findings"].to_string().contains("deadbeef/eth0"),
        format!("owner not named: {c}"),
    )
}

fn completions_and_man_page() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let run = |args: &str| -> Result<String, String> {
        let out = Command::new(&exe)
            .env("NETLOOM_TEST_WORKER", "netlab")
            .env(ARGS_VAR, args)
            .output()
            .map_err(|e| e.to_string())?;
        ensure(
            out.status.success(),
            format!("netlab {args}: {}", out.status),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let bash = run("completions\u{1f}bash")?;
    ensure(
        bash.contains("netlab") && bash.contains("doctor"),
        "bash completions lack subcommands",
    )?;
    let man = run("man")?;
    ensure(man.contains(".TH netlab"), "man page lacks a .TH header")
}

fn capture_writes_pcap() -> Result<(), String> {
    let t = topo("cap")?;
    let pcap = t.host.state_dir().with_extension("pcap");
    let _cleanup = RemoveOnDrop(pcap.clone());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args = [
        "capture",
        &t.b,
        "-i",
        "eth0",
        "-c",
        "3",
        "--timeout",
        "10",
        // IPv6 multicast listener reports of the freshly raised eth0 would race the UDP.
        "--filter",
        "not ip6",
        "-w",
    ];
    let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    argv.push(pcap.display().to_string());
    let mut cmd = t.host.command(exe)?;
    cmd.env("NETLOOM_TEST_WORKER", "netlab")
        .env(ARGS_VAR, argv.join("\u{1f}"))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start netlab capture: {e}"))?;
    // The socket is open once netlab says it is capturing: traffic before that would be lost.
    let mut err = BufReader::new(child.stderr.take().ok_or("no stderr")?);
    let mut line = String::new();
    err.read_line(&mut line).map_err(|e| e.to_string())?;
    ensure(
        line.contains("capturing in"),
        format!("netlab capture said: {line}"),
    )?;
    let ns_a = Netns::open_name(&t.a).map_err(|e| e.to_string())?;
    let send = format!("echo netlab > /dev/udp/{}/9999", t.ip(3));
    run_in(&ns_a, &["bash", "-c", &send])?;
    let status = child.wait().map_err(|e| e.to_string())?;
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    ensure(
        status.success(),
        format!("netlab capture: {status}: {rest}"),
    )?;
    let bytes = std::fs::read(&pcap).map_err(|e| format!("read {}: {e}", pcap.display()))?;
    let (link, frames) = netlab::capture::read_pcap(&bytes).ok_or("not a pcap file")?;
    ensure(link == 1, format!("link type {link}, want Ethernet"))?;
    ensure(
        frames.len() == 3,
        format!("{} frames, want 3 (-c 3)", frames.len()),
    )?;
    let summaries: Vec<String> = frames
        .iter()
        .map(|f| netlab::capture::summarize(f))
        .collect();
    let want = format!("{}.9999: UDP", t.ip(3));
    ensure(
        summaries.iter().any(|s| s.contains(&want)),
        format!("no UDP datagram to b in {summaries:?}"),
    )?;
    ensure(
        summaries.iter().any(|s| s.starts_with("ARP who-has")),
        format!("no ARP in {summaries:?}"),
    )
}

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ------------------------------------------------------------------ probe, trace, lab, filter

fn run_netlab(host: &FakeHost, args: &[&str]) -> Result<(Output, String), String> {
    let out = netlab_in(host, args, &[])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out, text))
}

fn causes(r: &Value) -> Vec<(String, String, String)> {
    r["causes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["kind"].as_str().unwrap_or_default().to_string(),
                        c["netns"].as_str().unwrap_or_default().to_string(),
                        c["detail"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn probe_success_reports_latency() -> Result<(), String> {
    let t = topo("prok")?;
    let (out, _) = run_netlab(
        &t.host,
        &["probe", &t.a, &t.b, "--json", "--no-processes", "-c", "3"],
    )?;
    let r = json_of(&out, "probe")?;
    ensure(out.status.success(), format!("probe a → b failed: {r}"))?;
    ensure(
        r["ok"] == true && r["received"] == 3 && r["dst"] == t.ip(3).as_str(),
        format!("probe: {r}"),
    )?;
    ensure(r["dst_netns"] == t.b.as_str(), format!("dst netns: {r}"))?;
    let rtts: Vec<f64> = r["rtt_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    ensure(
        rtts.len() == 3 && rtts.iter().all(|x| *x > 0.0 && *x < 1000.0),
        format!("round-trip times {rtts:?}"),
    )?;
    // Human output names the latency; a TCP probe to a closed port says so.
    let (out, text) = run_netlab(&t.host, &["probe", &t.a, &t.ip(3), "--no-processes"])?;
    ensure(
        out.status.success() && text.contains("rtt min/avg/max"),
        format!("probe text:\n{text}"),
    )?;
    // UDP and DNS: an echo responder in b answers (a DNS probe only needs its id back).
    let ns_b = Netns::open_name(&t.b).map_err(|e| e.to_string())?;
    let sock = ns_b
        .run(|| std::net::UdpSocket::bind("0.0.0.0:5353"))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("bind the echo responder in b: {e}"))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Ok((len, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..len], from);
            n += 1;
            if n == 4 {
                break;
            }
        }
        n
    });
    for proto in ["udp", "dns"] {
        let (out, text) = run_netlab(
            &t.host,
            &[
                "probe",
                &t.a,
                &t.b,
                "--proto",
                proto,
                "--port",
                "5353",
                "-c",
                "2",
                "--json",
                "--no-processes",
            ],
        )?;
        let r = json_of(&out, proto)?;
        ensure(
            out.status.success() && r["received"] == 2,
            format!("{proto} probe to the echo responder: {text}"),
        )?;
    }
    ensure(
        echo.join().map_err(|_| "echo thread panicked")? == 4,
        "the responder did not see 4 probes",
    )?;
    let (out, _) = run_netlab(
        &t.host,
        &[
            "probe",
            &t.a,
            &t.b,
            "--proto",
            "tcp",
            "--port",
            "9",
            "-c",
            "1",
            "--json",
            "--no-processes",
        ],
    )?;
    let r = json_of(&out, "probe tcp")?;
    ensure(
        out.status.code() == Some(1) && r["outcome"] == "connection refused",
        format!("tcp probe to a closed port: {r}"),
    )?;
    ensure(
        causes(&r).iter().any(|c| c.0 == "port_closed"),
        format!("no port_closed cause: {r}"),
    )
}

fn probe_explains_no_route_and_neighbour() -> Result<(), String> {
    let t = topo("prnr")?;
    // b has no default route: an address outside its subnet is unroutable from there.
    let outside = names::subnet_v4().ip().to_string();
    let (out, text) = run_netlab(
        &t.host,
        &[
            "probe",
            &t.b,
            &outside,
            "-c",
            "1",
            "--json",
            "--no-processes",
        ],
    )?;
    ensure(
        out.status.code() == Some(1),
        format!("exit {}: {text}", out.status),
    )?;
    let r = json_of(&out, "probe no route")?;
    ensure(
        causes(&r)
            .iter()
            .any(|c| c.0 == "no_route" && c.1 == t.b && c.2.contains(&outside)),
        format!("no_route in {} not found: {r}", t.b),
    )?;
    // An address on the bridge's subnet that nobody has: ARP goes unanswered.
    let absent = t.ip(77);
    let (out, text) = run_netlab(
        &t.host,
        &[
            "probe",
            &t.a,
            &absent,
            "-c",
            "1",
            "--timeout",
            "1",
            "--no-processes",
        ],
    )?;
    ensure(
        out.status.code() == Some(1),
        format!("exit {}: {text}", out.status),
    )?;
    ensure(
        text.contains("neighbour") && text.contains(&format!("ARP who-has for {absent}")),
        format!("neighbour failure not explained:\n{text}"),
    )?;
    ensure(
        text.lines().all(|l| l.chars().count() <= 100),
        format!("probe line wider than 100 columns:\n{text}"),
    )
}

/// The topology plus a second bridge br1 (its own subnet) in the host with container c on it;
/// the host forwards. c gets a default route back via br1 when `c_routes_back`.
struct Routed {
    t: Topo,
    c: String,
    net2: ipnetwork::Ipv4Network,
}

impl Routed {
    fn ip2(&self, n: u8) -> String {
        let o = self.net2.ip().octets();
        format!("{}.{}.{}.{n}", o[0], o[1], o[2])
    }
}

fn routed(tag: &str, c_routes_back: bool, c_mtu: Option<u32>) -> Result<Routed, String> {
    let mut t = topo(tag)?;
    let net2 = names::subnet_v4();
    let c = t
        .host
        .container("c")?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("container c has no name")?;
    let r = Routed { t, c, net2 };
    let h = &r.t.host;
    h.sh(&["ip", "link", "add", "br1", "type", "bridge"])?;
    h.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", r.ip2(1)),
        "dev",
        "br1",
    ])?;
    h.sh(&["ip", "link", "set", "br1", "up"])?;
    h.sh(&[
        "ip", "link", "add", "veth-c", "type", "veth", "peer", "name", "eth0", "netns", &r.c,
    ])?;
    h.sh(&["ip", "link", "set", "veth-c", "master", "br1", "up"])?;
    let ns_c = Netns::open_name(&r.c).map_err(|e| e.to_string())?;
    if let Some(m) = c_mtu {
        let m = m.to_string();
        h.sh(&["ip", "link", "set", "veth-c", "mtu", &m])?;
        run_in(&ns_c, &["ip", "link", "set", "eth0", "mtu", &m])?;
    }
    run_in(
        &ns_c,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/24", r.ip2(2)),
            "dev",
            "eth0",
        ],
    )?;
    run_in(&ns_c, &["ip", "link", "set", "eth0", "up"])?;
    if c_routes_back {
        run_in(&ns_c, &["ip", "route", "add", "default", "via", &r.ip2(1)])?;
    }
    h.sh(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    Ok(r)
}

fn probe_names_the_nft_drop_rule() -> Result<(), String> {
    let r = routed("prfw", true, None)?;
    let h = &r.t.host;
    let ok = run_netlab(h, &["probe", &r.t.a, &r.c, "-c", "1", "--no-processes"])?;
    ensure(
        ok.0.status.success(),
        format!("routed probe failed:\n{}", ok.1),
    )?;
    h.sh(&["nft", "add", "table", "inet", "nltprobe"])?;
    h.sh(&[
        "nft",
        "add chain inet nltprobe fw { type filter hook forward priority 0; policy accept; }",
    ])?;
    h.sh(&[
        "nft",
        &format!(
            "add rule inet nltprobe fw ip daddr {} counter drop",
            r.ip2(2)
        ),
    ])?;
    let (out, text) = run_netlab(
        h,
        &["probe", &r.t.a, &r.c, "-c", "1", "--json", "--no-processes"],
    )?;
    ensure(
        out.status.code() == Some(1),
        format!("exit {}: {text}", out.status),
    )?;
    let rep = json_of(&out, "probe")?;
    let fw: Vec<_> = causes(&rep)
        .into_iter()
        .filter(|c| c.0 == "firewall")
        .collect();
    ensure(
        fw.iter().any(|c| {
            c.1 == "host"
                && c.2.contains("counter grew")
                && c.2.contains("table inet nltprobe chain fw handle")
                && c.2.contains(&format!("ip daddr {} drop", r.ip2(2)))
        }),
        format!("drop rule not named: {rep}"),
    )?;
    // Without a counter the rule is still named, from the matcher.
    h.sh(&["nft", "flush", "chain", "inet", "nltprobe", "fw"])?;
    h.sh(&[
        "nft",
        &format!("add rule inet nltprobe fw ip daddr {} drop", r.ip2(2)),
    ])?;
    let (out, text) = run_netlab(h, &["probe", &r.t.a, &r.c, "-c", "1", "--no-processes"])?;
    ensure(
        out.status.code() == Some(1)
            && text.contains("firewall")
            && text.contains("chain fw handle"),
        format!("rule without counter not named:\n{text}"),
    )
}

fn probe_explains_rp_filter() -> Result<(), String> {
    let r = routed("prrp", true, None)?;
    let h = &r.t.host;
    // The host believes a lives behind br1, so a's packets arriving on br0 fail the strict
    // reverse-path check.
    h.sh(&[
        "ip",
        "route",
        "add",
        &format!("{}/32", r.t.ip(2)),
        "dev",
        "br1",
    ])?;
    h.sh(&["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1"])?;
    let (out, text) = run_netlab(
        h,
        &["probe", &r.t.a, &r.c, "-c", "1", "--json", "--no-processes"],
    )?;
    ensure(
        out.status.code() == Some(1),
        format!("exit {}: {text}", out.status),
    )?;
    let rep = json_of(&out, "probe")?;
    ensure(
        causes(&rep).iter().any(|c| {
            c.0 == "rp_filter" && c.1 == "host" && c.2.contains("br0") && c.2.contains("all=1")
        }),
        format!("rp_filter not explained: {rep}"),
    )
}

fn probe_finds_the_path_mtu() -> Result<(), String> {
    // br1 takes its only port's MTU (1280): the host sends "fragmentation needed".
    let r = routed("prmtu", true, Some(1280))?;
    let h = &r.t.host;
    let (out, text) = run_netlab(
        h,
        &[
            "probe",
            &r.t.a,
            &r.c,
            "--size",
            "1400",
            "-c",
            "1",
            "--json",
            "--no-processes",
        ],
    )?;
    ensure(
        out.status.code() == Some(1),
        format!("exit {}: {text}", out.status),
    )?;
    let rep = json_of(&out, "probe --size")?;
    ensure(rep["path_mtu"] == 1280, format!("path MTU: {rep}"))?;
    ensure(
        causes(&rep)
            .iter()
            .any(|c| c.0 == "mtu" && c.2.contains("1280")),
        format!("no mtu cause: {rep}"),
    )?;
    // A size that fits passes.
    let (out, text) = run_netlab(
        h,
        &[
            "probe",
            &r.t.a,
            &r.c,
            "--size",
            "1280",
            "-c",
            "1",
            "--no-processes",
        ],
    )?;
    ensure(out.status.success(), format!("--size 1280 failed:\n{text}"))
}

fn trace_with_nat() -> Result<(), String> {
    // c has no route back: without masquerade the reply cannot come back.
    let r = routed("trnat", false, None)?;
    let h = &r.t.host;
    let (out, text) = run_netlab(
        h,
        &["probe", &r.t.a, &r.c, "-c", "1", "--json", "--no-processes"],
    )?;
    ensure(
        out.status.code() == Some(1),
        format!("exit {}: {text}", out.status),
    )?;
    let rep = json_of(&out, "probe without masquerade")?;
    ensure(
        causes(&rep)
            .iter()
            .any(|c| c.0 == "masquerade" && c.1 == "host" && c.2.contains("br1")),
        format!("missing masquerade not found: {rep}"),
    )?;
    h.sh(&["nft", "add", "table", "ip", "nltnat"])?;
    h.sh(&[
        "nft",
        "add chain ip nltnat post { type nat hook postrouting priority 100; }",
    ])?;
    h.sh(&[
        "nft",
        &format!(
            "add rule ip nltnat post ip saddr {} oifname \"br1\" masquerade",
            r.t.net
        ),
    ])?;
    h.sh(&[
        "nft",
        "add chain ip nltnat pre { type nat hook prerouting priority -100; }",
    ])?;
    h.sh(&[
        "nft",
        &format!(
            "add rule ip nltnat pre ip daddr {} tcp dport 8080 dnat to {}:80",
            r.t.ip(1),
            r.ip2(2)
        ),
    ])?;
    let (out, text) = run_netlab(h, &["probe", &r.t.a, &r.c, "-c", "1", "--no-processes"])?;
    ensure(
        out.status.success(),
        format!("probe with masquerade:\n{text}"),
    )?;
    let tr = ok_json(h, &["trace", &r.t.a, &r.c, "--json", "--no-processes"])?;
    let hops = tr["hops"].as_array().ok_or("no hops")?;
    ensure(
        tr["reached"] == true && hops.len() == 3,
        format!("trace a → c: {tr}"),
    )?;
    let (h0, h1, h2) = (&hops[0], &hops[1], &hops[2]);
    ensure(
        h0["netns"] == r.t.a.as_str()
            && h0["action"] == "send"
            && h0["route"] == format!("default via {} dev eth0", r.t.ip(1)),
        format!("hop 1: {h0}"),
    )?;
    ensure(
        h0["link"].to_string().contains("is a port of bridge br0"),
        format!("hop 1 link: {h0}"),
    )?;
    ensure(
        h1["netns"] == "host"
            && h1["action"] == "forward"
            && h1["iif"] == "br0"
            && h1["oif"] == "br1"
            && h1["nat"].to_string().contains("masquerade")
            && h1["nat"].to_string().contains(&r.ip2(1)),
        format!("hop 2: {h1}"),
    )?;
    ensure(
        h1["link"]
            .to_string()
            .contains("bridge host:br1 → port veth-c"),
        format!("hop 2 link: {h1}"),
    )?;
    ensure(
        h2["netns"] == r.c.as_str() && h2["action"] == "deliver" && h2["src"] == r.ip2(1).as_str(),
        format!("hop 3 (source masqueraded): {h2}"),
    )?;
    // DNAT: the bridge address's port 8080 leads to c:80.
    let tr = ok_json(
        h,
        &[
            "trace",
            &r.t.a,
            &r.t.ip(1),
            "--proto",
            "tcp",
            "--port",
            "8080",
            "--json",
            "--no-processes",
        ],
    )?;
    let hops = tr["hops"].as_array().ok_or("no hops")?;
    ensure(
        tr["reached"] == true
            && hops.iter().any(|x| x["nat"].to_string().contains("dnat"))
            && hops.last().map(|x| x["netns"] == r.c.as_str()) == Some(true),
        format!("dnat trace: {tr}"),
    )?;
    let (_, text) = run_netlab(h, &["trace", &r.t.a, &r.c, "--no-processes"])?;
    ensure(
        text.contains("reached") && text.lines().all(|l| l.chars().count() <= 100),
        format!("trace text:\n{text}"),
    )
}

/// Removes a lab's namespaces if a test fails before `lab down`.
struct LabGuard(Vec<String>);
impl Drop for LabGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Netns::remove_named(std::path::Path::new("/run/netns"), n);
        }
    }
}

fn lab_file(name: &str) -> String {
    format!("{}/../netlab/labs/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn lab_up_down() -> Result<(), String> {
    let host = FakeHost::new("lab")?;
    let name = names::unique("lab");
    let _guard = LabGuard(
        ["a", "b", "left", "r", "right"]
            .iter()
            .map(|n| format!("{name}-{n}"))
            .collect(),
    );
    let file = lab_file("bridge.toml");
    let up = ok_json(&host, &["lab", "up", &file, "--name", &name, "--json"])?;
    ensure(
        up["created"].as_array().map(Vec::len) == Some(5),
        format!("lab up: {up}"),
    )?;
    let again = ok_json(&host, &["lab", "up", &file, "--name", &name, "--json"])?;
    ensure(
        again["created"].as_array().map(Vec::len) == Some(0)
            && again["already"].as_array().map(Vec::len) == Some(5),
        format!("second lab up is not a no-op: {again}"),
    )?;
    let ls = ok_json(&host, &["lab", "ls", "--json"])?;
    ensure(
        ls.as_array().is_some_and(|a| {
            a.iter()
                .any(|l| l["name"] == name.as_str() && l["missing"] == serde_json::json!([]))
        }),
        format!("lab ls: {ls}"),
    )?;
    let (_, text) = run_netlab(&host, &["lab", "ls"])?;
    ensure(
        text.contains(&format!("{name}  2 namespaces, 3 host links"))
            && text.contains("links: host:labbr0 host:lab-a host:lab-b"),
        format!("lab ls text:\n{text}"),
    )?;
    // A namespace deleted by hand: `lab ls` says so, and `up` rebuilds it and its veth pair.
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    Netns::remove_named(std::path::Path::new("/run/netns"), &a).map_err(|e| e.to_string())?;
    let ls = ok_json(&host, &["lab", "ls", "--json"])?;
    ensure(
        ls.to_string().contains(&format!("netns {a}")),
        format!("lab ls does not report {a} missing: {ls}"),
    )?;
    let again = ok_json(&host, &["lab", "up", &file, "--name", &name, "--json"])?;
    ensure(
        again["created"].to_string().contains(&format!("netns {a}"))
            && again["created"].to_string().contains("lab-a"),
        format!("lab up after a deleted namespace: {again}"),
    )?;
    // The lab works: a reaches b through the host's bridge.
    let (out, text) = run_netlab(&host, &["probe", &a, &b, "-c", "1", "--no-processes"])?;
    ensure(
        out.status.success(),
        format!("probe inside the lab:\n{text}"),
    )?;
    // Something that is not the lab's blocks `up` of another lab using the same names.
    let other = format!("{name}x");
    let (out, text) = run_netlab(&host, &["lab", "up", &file, "--name", &other])?;
    ensure(
        out.status.code() == Some(2) && text.contains("not lab"),
        format!("adopting a foreign bridge: {} {text}", out.status),
    )?;
    ensure(
        !std::path::Path::new("/run/netns")
            .join(format!("{other}-a"))
            .exists(),
        "failed lab up left a namespace behind",
    )?;
    let down = ok_json(&host, &["lab", "down", &file, "--name", &name, "--json"])?;
    ensure(
        down["removed"].as_array().map(Vec::len) == Some(5),
        format!("lab down: {down}"),
    )?;
    for n in [&a, &b] {
        ensure(
            !std::path::Path::new("/run/netns").join(n).exists(),
            format!("{n} left behind"),
        )?;
    }
    let links = host.sh(&["ip", "-o", "link"])?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure(
        !links.contains("labbr0") && !links.contains("lab-a") && !links.contains("lab-b"),
        format!("host links left behind:\n{links}"),
    )?;
    let (out, _) = run_netlab(&host, &["lab", "down", &name])?;
    ensure(
        out.status.code() == Some(2),
        "second lab down should say the lab is not up",
    )?;
    // A router lab: forwarding and routes from the file make left reach right.
    let r = ok_json(
        &host,
        &[
            "lab",
            "up",
            &lab_file("router.toml"),
            "--name",
            &name,
            "--json",
        ],
    )?;
    ensure(
        r["created"].as_array().map(Vec::len) == Some(5),
        format!("router lab: {r}"),
    )?;
    let (out, text) = run_netlab(
        &host,
        &[
            "probe",
            &format!("{name}-left"),
            &format!("{name}-right"),
            "-c",
            "1",
            "--no-processes",
        ],
    )?;
    ensure(out.status.success(), format!("router lab probe:\n{text}"))?;
    ok_json(&host, &["lab", "down", &name, "--json"])?;
    ensure(
        !std::path::Path::new("/run/netns")
            .join(format!("{name}-r"))
            .exists(),
        "router namespace left behind",
    )?;
    // Bad input creates nothing and says why.
    let bad = host.state_dir().with_extension("bad.toml");
    let _rm = RemoveOnDrop(bad.clone());
    std::fs::write(
        &bad,
        "name = \"x\"\n[[links]]\na = { netns = \"nowhere\", name = \"e0\" }\nb = { netns = \"host\", name = \"e1\" }\n",
    )
    .map_err(|e| e.to_string())?;
    let (out, text) = run_netlab(&host, &["lab", "up", &bad.display().to_string()])?;
    ensure(
        out.status.code() == Some(2) && text.contains("nowhere"),
        format!("bad lab file: {} {text}", out.status),
    )
}

fn capture_filter() -> Result<(), String> {
    let t = topo("capf")?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args = [
        "capture",
        &t.b,
        "-i",
        "eth0",
        "-c",
        "2",
        "--timeout",
        "10",
        "--json",
        "--filter",
        "udp dst port 9999 and not icmp",
    ];
    let mut cmd = t.host.command(exe)?;
    cmd.env("NETLOOM_TEST_WORKER", "netlab")
        .env(ARGS_VAR, args.join("\u{1f}"))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start netlab capture: {e}"))?;
    let mut err = BufReader::new(child.stderr.take().ok_or("no stderr")?);
    let mut line = String::new();
    err.read_line(&mut line).map_err(|e| e.to_string())?;
    ensure(
        line.contains("capturing in") && line.contains("filter"),
        format!("netlab capture said: {line}"),
    )?;
    let ns_a = Netns::open_name(&t.a).map_err(|e| e.to_string())?;
    // ARP, a ping, datagrams to another port: none match; the two to 9999 do.
    let _ = run_in(&ns_a, &["ping", "-c", "1", "-W", "1", &t.ip(3)]);
    for port in [9998, 9999, 9997, 9999] {
        let send = format!("echo p{port} > /dev/udp/{}/{port}", t.ip(3));
        run_in(&ns_a, &["bash", "-c", &send])?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    ensure(
        out.status.success(),
        format!("netlab capture: {}", out.status),
    )?;
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure(
        lines.len() == 2,
        format!("{} packets, want 2: {lines:?}", lines.len()),
    )?;
    let want = format!("{}.9999: UDP", t.ip(3));
    ensure(
        lines
            .iter()
            .all(|p| p["summary"].to_string().contains(&want)),
        format!("a packet that does not match the filter: {lines:?}"),
    )?;
    // A filter netlab cannot compile is refused before anything is opened.
    let (out, text) = run_netlab(&t.host, &["capture", &t.b, "--filter", "udp prt 9"])?;
    ensure(
        out.status.code() == Some(2) && text.contains("prt"),
        format!("bad filter: {text}"),
    )
}

fn doctor_overlay_checks() -> Result<(), String> {
    let t = topo("docov")?;
    let h = &t.host;
    // VXLAN over a veth "underlay" whose MTU then shrinks below the overlay's + 50.
    h.sh(&[
        "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1",
    ])?;
    h.sh(&["ip", "addr", "add", "172.31.254.1/24", "dev", "ul0"])?;
    h.sh(&["ip", "link", "set", "ul0", "up"])?;
    h.sh(&[
        "ip",
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "42",
        "dev",
        "ul0",
        "dstport",
        "4789",
        "local",
        "172.31.254.1",
    ])?;
    h.sh(&["ip", "link", "set", "ul0", "mtu", "1400"])?;
    // A host route through another interface that covers the bridge's subnet.
    h.sh(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
    ])?;
    h.sh(&["ip", "link", "set", "up0", "up"])?;
    let wide = ipnetwork::Ipv4Network::new(t.net.ip(), 16)
        .map_err(|e| e.to_string())?
        .network()
        .to_string()
        + "/16";
    h.sh(&["ip", "route", "add", &wide, "dev", "up0"])?;
    // A netloom network on br0 with masquerade on (the default), and a masquerade rule that
    // covers some other subnet only.
    let store = FileStore::open(h.state_dir()).map_err(|e| e.to_string())?;
    let net = serde_json::json!({
        "id": "nltnet1", "name": "nlt-net", "driver": "bridge",
        "subnets": [{"subnet": t.net.to_string(), "gateway": t.ip(1), "pool_id": "p1"}],
        "options": {"bridge": "br0"}
    });
    store
        .put(
            &Key::new(["networks", "nltnet1"]),
            net.to_string().as_bytes(),
            Expect::Any,
        )
        .map_err(|e| e.to_string())?;
    h.sh(&["nft", "add", "table", "ip", "nltdocnat"])?;
    h.sh(&[
        "nft",
        "add chain ip nltdocnat post { type nat hook postrouting priority 100; }",
    ])?;
    h.sh(&[
        "nft",
        "add rule ip nltdocnat post ip saddr 10.254.254.0/24 masquerade",
    ])?;
    let r = json_of(
        &netlab_in(h, &["doctor", "--json", "--no-processes"], &[])?,
        "doctor",
    )?;
    // Offload on is a warning only where the overlay driver would turn it off (kernel < 5.7).
    let c = check(&r, "vxlan_csum")?;
    let want = if engine_core::netlink::ethtool::needs_tx_checksum_workaround() {
        "warn"
    } else {
        "ok"
    };
    ensure(
        c["verdict"] == want
            && c["findings"]
                .to_string()
                .contains("host:vx0 tx-checksumming on"),
        format!("vxlan_csum (want {want}): {c}"),
    )?;
    let c = check(&r, "overlay_mtu")?;
    ensure(
        c["verdict"] == "warn"
            && c["findings"]
                .to_string()
                .contains("vx0 mtu 1450 > underlay ul0 mtu 1400 - 50 = 1350"),
        format!("overlay_mtu: {c}"),
    )?;
    let c = check(&r, "route_conflicts")?;
    ensure(
        c["verdict"] == "warn"
            && c["findings"]
                .to_string()
                .contains(&format!("{} on br0 overlaps route {wide} dev up0", t.net)),
        format!("route_conflicts: {c}"),
    )?;
    let c = check(&r, "missing_nat")?;
    ensure(
        c["verdict"] == "fail" && c["findings"].to_string().contains("nlt-net"),
        format!("missing_nat: {c}"),
    )?;
    // Fixing each one clears it.
    h.sh(&[
        "nft",
        &format!(
            "add rule ip nltdocnat post ip saddr {} oifname != \"br0\" masquerade",
            t.net
        ),
    ])?;
    h.sh(&["ip", "link", "set", "ul0", "mtu", "1500"])?;
    h.sh(&["ip", "route", "del", &wide, "dev", "up0"])?;
    let r = json_of(
        &netlab_in(h, &["doctor", "--json", "--no-processes"], &[])?,
        "doctor",
    )?;
    for id in ["missing_nat", "route_conflicts"] {
        let c = check(&r, id)?;
        ensure(c["verdict"] == "ok", format!("{id} after the fix: {c}"))?;
    }
    // Other namespaces on the machine may hold VXLAN devices of their own: only ours counts.
    let c = check(&r, "overlay_mtu")?;
    ensure(
        !c["findings"].to_string().contains("host:vx0"),
        format!("overlay_mtu after the fix: {c}"),
    )
}

fn topo_dot_renders() -> Result<(), String> {
    let t = topo("dot")?;
    let out = netlab_in(&t.host, &["topo", "--format", "dot", "--no-processes"], &[])?;
    ensure(out.status.success(), "netlab topo --format dot failed")?;
    let dot = String::from_utf8_lossy(&out.stdout).to_string();
    ensure(
        dot.starts_with("graph netlab {") && dot.trim_end().ends_with('}'),
        "not a DOT graph",
    )?;
    match Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .ok_or("no stdin")?
                .write_all(dot.as_bytes())
                .map_err(|e| e.to_string())?;
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let svg = String::from_utf8_lossy(&out.stdout);
            ensure(
                out.status.success(),
                format!(
                    "dot rejected the graph: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            )?;
            for want in ["<svg", "veth-a", "br0", t.a.as_str()] {
                // Graphviz writes '-' in SVG text as "&#45;".
                ensure(
                    svg.contains(want) || svg.contains(&want.replace('-', "&#45;")),
                    format!("the SVG lacks {want:?}: {}", svg.get(..400).unwrap_or(&svg)),
                )?;
            }
            Ok(())
        }
        Err(e) if tests::trial::strict() => Err(format!("graphviz `dot` is needed in CI: {e}")),
        Err(e) => {
            eprintln!("netlab::topo_dot_renders_with_graphviz: no `dot` ({e}); structure only");
            // Every edge's ends are declared nodes.
            for l in dot.lines().filter(|l| l.contains(" -- ")) {
                for end in l.split(" -- ").take(2) {
                    let id = end.trim().split(' ').next().unwrap_or_default();
                    ensure(
                        dot.contains(&format!("{id} [")),
                        format!("edge end {id} is not a node"),
                    )?;
                }
            }
            Ok(())
        }
    }
}

/// A port published by netloom-bridge + netloom-portmap, then `nft flush ruleset`: the doctor's
/// published_ports check names the publication with no NAT, and is clear before the flush and
/// once the ports are unpublished.
fn doctor_published_port() -> Result<(), String> {
    use serde_json::json;
    use tests::cni::{our_bin, run, Call};
    let mut host = FakeHost::new("docpp")?;
    let c = host.container("c")?;
    let subnet = names::subnet_v4();
    let name = names::unique("pp");
    let bridge = json!({"cniVersion": "1.0.0", "name": name, "type": "netloom-bridge",
        "bridge": "nlbrpp0", "isGateway": true, "ipMasq": true, "stateDir": host.state_dir(),
        "ipam": {"type": "netloom-ipam", "ranges": [[{"subnet": subnet.to_string()}]],
            "dataDir": host.state_dir().join("cni")}});
    let call = |command| Call {
        command,
        container_id: "ppc",
        netns: Some(&c),
        ifname: "eth0",
        args: "",
    };
    let r = run(&host, &our_bin("netloom-bridge")?, &call("ADD"), &bridge)?.ok()?;
    let pm = json!({"cniVersion": "1.0.0", "name": name, "type": "netloom-portmap",
        "stateDir": host.state_dir(), "prevResult": r,
        "runtimeConfig": {"portMappings": [{"hostPort": 18444, "containerPort": 80, "protocol": "tcp"}]}});
    run(&host, &our_bin("netloom-portmap")?, &call("ADD"), &pm)?.ok()?;
    let doctor = || -> Result<Value, String> {
        let r = json_of(
            &netlab_in(&host, &["doctor", "--json", "--no-processes"], &[])?,
            "doctor",
        )?;
        check(&r, "published_ports").cloned()
    };
    let c0 = doctor()?;
    ensure(
        c0["verdict"] == "ok",
        format!("published_ports before: {c0}"),
    )?;
    host.sh(&["nft", "flush", "ruleset"])?;
    let c1 = doctor()?;
    ensure(
        c1["verdict"] == "fail" && c1["findings"].to_string().contains("portmap"),
        format!("published_ports after a flush: {c1}"),
    )?;
    run(&host, &our_bin("netloom-portmap")?, &call("DEL"), &pm)?.ok()?;
    run(&host, &our_bin("netloom-bridge")?, &call("DEL"), &bridge)?.ok()?;
    let c2 = doctor()?;
    ensure(
        c2["verdict"] == "ok" && c2["summary"].to_string().contains("no ports"),
        format!("published_ports once unpublished: {c2}"),
    )
}
