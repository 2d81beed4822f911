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
        format!("ip_forward in a fresh namespace is 0: {fw}"),
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
