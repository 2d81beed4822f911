//! netloom's DNS: netloom-bridge → netloom-dns chains run through the CNI protocol in a fake
//! host, `dig` inside the container namespaces as the client, netloom-dnsd started on demand by
//! the plugin. The only upstreams are `netloom-dnsd test-upstream` instances on loopback
//! addresses of the fake host (the `test.` zone), never the machine's resolver.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::cni::{our_bin, run, Call};
use tests::fakehost::run_in_path;
use tests::podman::{Podman, IMAGE};
use tests::{image, names, run_main, Cap, FakeHost, Suite};

const NEEDS: &[Cap] = &[Cap::Root, Cap::Veth, Cap::Bridge];

/// The answering test upstream, and two that never answer (dead upstreams).
const UP: &str = "127.0.0.2";
const DEAD1: &str = "127.0.0.3";
const DEAD2: &str = "127.0.0.4";

fn main() {
    let mut s = Suite::new();
    s.test(
        "dns::names_aliases_short_id_case_ptr_aaaa",
        NEEDS,
        names_aliases,
    )
    .test(
        "dns::scoping_between_networks_and_refused_outsiders",
        NEEDS,
        scoping,
    )
    .test(
        "dns::forwarding_cache_negative_cache_metrics",
        NEEDS,
        forwarding,
    )
    .test(
        "dns::dead_upstreams_fast_failover_and_quick_servfail",
        NEEDS,
        dead_upstreams,
    )
    .test("dns::tcp_and_truncated_udp_answers", NEEDS, tcp_truncation)
    .test(
        "dns::visible_after_add_gone_after_del_and_gc",
        NEEDS,
        add_del_gc,
    )
    .test(
        "dns::parallel_adds_one_server_exits_after_last_del",
        NEEDS,
        parallel_one_server,
    )
    .test(
        "dns::port53_taken_on_another_address_does_not_block",
        NEEDS,
        port_taken_elsewhere,
    )
    .test(
        "dns::reloads_never_drop_queries",
        NEEDS,
        reloads_keep_serving,
    )
    .test(
        "dns::podman_containers_resolve_each_other",
        &[
            Cap::Root,
            Cap::Veth,
            Cap::Bridge,
            Cap::Nftables,
            Cap::Podman,
        ],
        podman_resolve,
    )
    .test(
        "dns::killed_server_is_restarted_by_next_add",
        NEEDS,
        killed_server_restarts,
    )
    .test(
        "dns::bad_input_is_refused_and_leaves_nothing",
        NEEDS,
        bad_input,
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

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the fake host's netloom-dnsd (started detached by the plugin) on drop, before the
/// host goes: a failed test must not leave a server behind.
struct ServerGuard(PathBuf);

impl ServerGuard {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.0.join("dns/server.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn alive(pid: i32) -> bool {
    // A killed daemon is a zombie until init reaps it: only a live process has state != Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A test upstream (`netloom-dnsd test-upstream`) on `ip`:53 in `host`, once it serves.
fn start_upstream(host: &FakeHost, ip: &str, mute: bool) -> Result<Proc, String> {
    let mut cmd = host.command(our_bin("netloom-dnsd")?)?;
    cmd.args(["test-upstream", "--listen", &format!("{ip}:53")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if mute {
        cmd.arg("--mute");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start test upstream: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    ensure(
        line.trim() == "ready",
        format!("test upstream on {ip}: {line:?}"),
    )?;
    Ok(proc)
}

/// One network: its bridge configuration and DNS settings.
struct Net {
    name: String,
    bridge: String,
    bridge_conf: Value,
    gateway: String,
    upstreams: Vec<String>,
}

/// A container attached through the chain.
struct Ctr {
    netns: PathBuf,
    cid: String,
    ifname: String,
    net: usize,
    v4: String,
    v6: Option<String>,
    bridge_result: Value,
    dns_result: Value,
}

/// The fake host with its networks, upstreams and containers. Field order is drop order:
/// server first, upstreams, then the host.
struct Lab {
    server: ServerGuard,
    _upstreams: Vec<Proc>,
    nets: Vec<Net>,
    host: FakeHost,
}

impl Lab {
    fn new(tag: &str) -> Result<Lab, String> {
        let host = FakeHost::new(tag)?;
        let mut lab = Lab {
            server: ServerGuard(host.state_dir().to_path_buf()),
            _upstreams: Vec::new(),
            nets: Vec::new(),
            host,
        };
        lab.upstream(UP, false)?;
        lab.upstream(DEAD1, true)?;
        lab.upstream(DEAD2, true)?;
        Ok(lab)
    }

    /// Starts a test upstream on `ip`:53 inside the fake host and waits until it serves.
    fn upstream(&mut self, ip: &str, mute: bool) -> Result<(), String> {
        let p = start_upstream(&self.host, ip, mute)?;
        self._upstreams.push(p);
        Ok(())
    }

    /// Adds a network (a bridge of its own) whose DNS forwards to `upstreams`.
    fn net(&mut self, upstreams: &[&str], dual_stack: bool) -> Result<usize, String> {
        let i = self.nets.len();
        let name = names::unique("dnsnet");
        let subnet = names::subnet_v4();
        let mut ranges = vec![json!([{"subnet": subnet.to_string()}])];
        if dual_stack {
            ranges.push(json!([{"subnet": names::subnet_v6().to_string()}]));
        }
        let bridge_conf = json!({
            "cniVersion": "1.0.0", "name": name, "type": "netloom-bridge",
            "bridge": format!("nldns{i}"), "isGateway": true, "isDefaultGateway": true,
            "ipam": {"type": "netloom-ipam", "ranges": ranges, "dataDir": self.host.state_dir().join("cni")},
            "stateDir": self.host.state_dir(),
        });
        let gateway = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1).to_string();
        self.nets.push(Net {
            name,
            bridge: format!("nldns{i}"),
            bridge_conf,
            gateway,
            upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
        });
        Ok(i)
    }

    fn dns_conf(&self, net: usize, aliases: &[&str], prev: Option<&Value>) -> Value {
        let n = &self.nets[net];
        let mut c = json!({
            "cniVersion": "1.0.0", "name": n.name, "type": "netloom-dns",
            "stateDir": self.host.state_dir(), "upstreams": n.upstreams,
            "capabilities": {"aliases": true},
            "runtimeConfig": {"aliases": {n.name.clone(): aliases}},
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    /// Runs bridge ADD then netloom-dns ADD for a new container namespace.
    fn add(&mut self, net: usize, cid: &str, pod: &str, aliases: &[&str]) -> Result<Ctr, String> {
        let netns = self.host.container(&format!("c{}", names::next()))?;
        let args = if pod.is_empty() {
            "IgnoreUnknown=1".to_string()
        } else {
            format!("IgnoreUnknown=1;K8S_POD_NAME={pod}")
        };
        let call = Call {
            command: "ADD",
            container_id: cid,
            netns: Some(&netns),
            ifname: "eth0",
            args: &args,
        };
        let bridge_result = run(
            &self.host,
            &our_bin("netloom-bridge")?,
            &call,
            &self.nets[net].bridge_conf,
        )?
        .ok()?;
        let conf = self.dns_conf(net, aliases, Some(&bridge_result));
        let dns_result = run(&self.host, &our_bin("netloom-dns")?, &call, &conf)?.ok()?;
        let addr = |v6: bool| {
            bridge_result["ips"].as_array().and_then(|ips| {
                ips.iter()
                    .filter_map(|i| i["address"].as_str())
                    .find(|a| a.contains(':') == v6)
                    .and_then(|a| a.split('/').next())
                    .map(str::to_string)
            })
        };
        Ok(Ctr {
            v4: addr(false).ok_or(format!("no IPv4 address in {bridge_result}"))?,
            v6: addr(true),
            netns,
            cid: cid.to_string(),
            ifname: "eth0".into(),
            net,
            bridge_result,
            dns_result,
        })
    }

    /// netloom-dns `command` (DEL, CHECK) for `c`.
    fn dns_call(&self, command: &str, c: &Ctr) -> Result<tests::cni::Outcome, String> {
        let call = Call {
            command,
            container_id: &c.cid,
            netns: Some(&c.netns),
            ifname: &c.ifname,
            args: "IgnoreUnknown=1",
        };
        let conf = self.dns_conf(c.net, &[], Some(&c.bridge_result));
        run(&self.host, &our_bin("netloom-dns")?, &call, &conf)
    }

    /// DNS DEL then bridge DEL.
    fn del(&self, c: &Ctr) -> Result<(), String> {
        self.dns_call("DEL", c)?.ok()?;
        let call = Call {
            command: "DEL",
            container_id: &c.cid,
            netns: Some(&c.netns),
            ifname: &c.ifname,
            args: "IgnoreUnknown=1",
        };
        let mut conf = self.nets[c.net].bridge_conf.clone();
        conf["prevResult"] = c.bridge_result.clone();
        run(&self.host, &our_bin("netloom-bridge")?, &call, &conf)?.ok()?;
        Ok(())
    }

    fn gc(&self, net: usize, keep: &[&Ctr]) -> Result<(), String> {
        let mut conf = self.dns_conf(net, &[], None);
        conf["cniVersion"] = json!("1.1.0");
        conf["cni.dev/valid-attachments"] = json!(keep
            .iter()
            .map(|c| json!({"containerID": c.cid, "ifname": c.ifname}))
            .collect::<Vec<_>>());
        let call = Call {
            command: "GC",
            ..Default::default()
        };
        run(&self.host, &our_bin("netloom-dns")?, &call, &conf)?.ok()?;
        Ok(())
    }

    /// `dig` from `from` (a container) to its network's gateway.
    fn dig(&self, from: &Ctr, args: &[&str]) -> Result<Dig, String> {
        dig_in(&from.netns, &self.nets[from.net].gateway, args)
    }
}

/// What `dig` printed, parsed.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: String,
    answers: Vec<String>,
    query_ms: u64,
    raw: String,
}

impl Dig {
    fn parse(raw: String) -> Dig {
        let status = raw
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("")
            .to_string();
        let flags = raw
            .split(";; flags:")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .unwrap_or("")
            .to_string();
        let mut answers = Vec::new();
        let mut in_answer = false;
        for line in raw.lines() {
            if line.starts_with(";; ANSWER SECTION:") {
                in_answer = true;
            } else if in_answer && (line.trim().is_empty() || line.starts_with(";;")) {
                in_answer = false;
            } else if in_answer {
                if let Some(last) = line.split_whitespace().last() {
                    answers.push(last.to_string());
                }
            }
        }
        let query_ms = raw
            .split(";; Query time: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        Dig {
            status,
            flags,
            answers,
            query_ms,
            raw,
        }
    }

    fn expect(&self, status: &str, answers: &[&str]) -> Result<(), String> {
        let mut got = self.answers.clone();
        got.sort();
        let mut want: Vec<String> = answers.iter().map(|s| s.to_string()).collect();
        want.sort();
        ensure(
            self.status == status && got == want,
            format!("want {status} {want:?}, got:\n{}", self.raw),
        )
    }
}

/// One `dig` try (no retries: every answer must come the first time) from namespace `ns`.
fn dig_in(ns: &Path, server: &str, args: &[&str]) -> Result<Dig, String> {
    let at = format!("@{server}");
    let mut argv = vec!["dig", at.as_str(), "+tries=1", "+time=3", "+nocookie"];
    argv.extend_from_slice(args);
    let out = run_in_path(ns, &argv)?;
    Ok(Dig::parse(
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn names_aliases() -> Result<(), String> {
    let mut lab = Lab::new("dnsnames")?;
    let n = lab.net(&[UP], true)?;
    let long_id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let a = lab.add(n, long_id, "web", &["www", "Api"])?;
    let b = lab.add(n, "ctr-b", "db", &["www"])?;
    // The result points the container at the gateway, with the search domain.
    let dns = &a.dns_result["dns"];
    ensure(
        dns["nameservers"][0] == lab.nets[n].gateway.as_str() && dns["search"][0] == "dns.netloom",
        format!("result dns: {}", a.dns_result),
    )?;
    lab.dns_call("CHECK", &a)?.ok()?;
    lab.dig(&b, &["web"])?.expect("NOERROR", &[&a.v4])?;
    lab.dig(&b, &["WeB.DNS.netloom"])?
        .expect("NOERROR", &[&a.v4])?;
    lab.dig(&b, &["api"])?.expect("NOERROR", &[&a.v4])?;
    lab.dig(&b, &["0123456789ab"])?
        .expect("NOERROR", &[&a.v4])?;
    lab.dig(&a, &["db.dns.netloom"])?
        .expect("NOERROR", &[&b.v4])?;
    // An alias two containers share: both addresses, in turns.
    let first = lab.dig(&a, &["www"])?;
    first.expect("NOERROR", &[&a.v4, &b.v4])?;
    let second = lab.dig(&a, &["www"])?;
    ensure(
        first.answers[0] != second.answers[0],
        format!(
            "no round robin: {:?} then {:?}",
            first.answers, second.answers
        ),
    )?;
    let a6 = a.v6.clone().ok_or("no IPv6 address")?;
    lab.dig(&b, &["web", "AAAA"])?.expect("NOERROR", &[&a6])?;
    lab.dig(&b, &["-x", &a.v4])?
        .expect("NOERROR", &["web.dns.netloom."])?;
    lab.dig(&b, &["-x", &a6])?
        .expect("NOERROR", &["web.dns.netloom."])?;
    // Over IPv6 too: the v6 gateway is the second nameserver of the result. The container's
    // address and the bridge's gateway address may still be in DAD (a tentative address
    // neither sends nor receives): wait for both, then one try.
    let gw6 = a.dns_result["dns"]["nameservers"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .filter_map(|v| v.as_str())
                .find(|s| s.contains(':'))
        })
        .ok_or(format!("no IPv6 nameserver in {}", a.dns_result))?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run_in_path(
            &b.netns,
            &["ip", "-6", "addr", "show", "dev", "eth0", "tentative"],
        )?;
        let gw = lab.host.sh(&[
            "ip",
            "-6",
            "addr",
            "show",
            "dev",
            &lab.nets[n].bridge,
            "tentative",
        ])?;
        if out.stdout.is_empty() && gw.stdout.is_empty() {
            break;
        }
        ensure(
            Instant::now() < deadline,
            "IPv6 addresses still tentative after 10 s",
        )?;
        std::thread::sleep(Duration::from_millis(100));
    }
    dig_in(&b.netns, &gw6, &["web", "AAAA"])?.expect("NOERROR", &[&a6])?;
    dig_in(&b.netns, &gw6, &["+tcp", "web"])?.expect("NOERROR", &[&a.v4])?;
    // No K8S_POD_NAME and an id too long for a DNS label: the short id is the name.
    let anon_id = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let c = lab.add(n, anon_id, "", &[])?;
    lab.dig(&b, &["fedcba987654"])?
        .expect("NOERROR", &[&c.v4])?;
    lab.dig(&b, &["-x", &c.v4])?
        .expect("NOERROR", &["fedcba987654.dns.netloom."])?;
    lab.del(&c)?;
    // The name exists without MX: NODATA, not NXDOMAIN.
    lab.dig(&b, &["web", "MX"])?.expect("NOERROR", &[])?;
    lab.dig(&b, &["nosuchname"])?.expect("NXDOMAIN", &[])?;
    lab.dig(&b, &["nosuchname.dns.netloom"])?
        .expect("NXDOMAIN", &[])?;
    lab.del(&a)?;
    lab.del(&b)
}

fn scoping() -> Result<(), String> {
    let mut lab = Lab::new("dnsscope")?;
    let n1 = lab.net(&[UP], false)?;
    let n2 = lab.net(&[UP], false)?;
    let a = lab.add(n1, "scope-a", "alpha", &[])?;
    let c = lab.add(n2, "scope-c", "gamma", &[])?;
    lab.dig(&c, &["gamma"])?.expect("NOERROR", &[&c.v4])?;
    lab.dig(&c, &["alpha"])?.expect("NXDOMAIN", &[])?;
    lab.dig(&c, &["alpha.dns.netloom"])?
        .expect("NXDOMAIN", &[])?;
    lab.dig(&a, &["gamma"])?.expect("NXDOMAIN", &[])?;
    // Asking network 1's gateway from network 2 still answers with network 2's view.
    dig_in(&c.netns, &lab.nets[n1].gateway, &["alpha"])?.expect("NXDOMAIN", &[])?;
    // From an address outside every netloom network (the fake host's loopback): refused,
    // for local names and forwarded ones alike — no open resolver.
    let gw = lab.nets[n1].gateway.clone();
    let host_ns = lab.host.netns().path().to_path_buf();
    dig_in(&host_ns, &gw, &["-b", "127.0.0.1", "alpha"])?.expect("REFUSED", &[])?;
    dig_in(&host_ns, &gw, &["-b", "127.0.0.1", "x.ok.test"])?.expect("REFUSED", &[])?;
    lab.del(&a)?;
    lab.del(&c)
}

/// Queries the test upstream has answered so far (asked directly, not through us).
fn upstream_count(lab: &Lab) -> Result<u64, String> {
    let d = dig_in(lab.host.netns().path(), UP, &["count.test", "TXT"])?;
    d.answers
        .first()
        .map(|s| s.trim_matches('"').parse::<u64>().unwrap_or(u64::MAX))
        .ok_or(format!("no count: {}", d.raw))
}

fn forwarding() -> Result<(), String> {
    let mut lab = Lab::new("dnsfwd")?;
    let n = lab.net(&[UP], false)?;
    let a = lab.add(n, "fwd-a", "fwd", &[])?;
    let before = upstream_count(&lab)?;
    lab.dig(&a, &["www.ok.test"])?
        .expect("NOERROR", &["198.18.50.1"])?;
    ensure(
        upstream_count(&lab)? == before + 1,
        "the first query did not reach the upstream",
    )?;
    // Cached: answered again without asking the upstream, with a TTL counted from 300 down.
    let again = lab.dig(&a, &["WWW.ok.test"])?;
    again.expect("NOERROR", &["198.18.50.1"])?;
    ensure(
        upstream_count(&lab)? == before + 1,
        "the second query was not served from the cache",
    )?;
    // Negative answers are cached too (the SOA's negative TTL).
    lab.dig(&a, &["missing.test"])?.expect("NXDOMAIN", &[])?;
    lab.dig(&a, &["missing.test"])?.expect("NXDOMAIN", &[])?;
    ensure(
        upstream_count(&lab)? == before + 2,
        "NXDOMAIN was not cached",
    )?;
    // NODATA (a name with no AAAA) likewise.
    lab.dig(&a, &["www.ok.test", "AAAA"])?
        .expect("NOERROR", &[])?;
    lab.dig(&a, &["www.ok.test", "AAAA"])?
        .expect("NOERROR", &[])?;
    ensure(upstream_count(&lab)? == before + 3, "NODATA was not cached")?;
    // Metrics on the control socket.
    let mut cmd = lab.host.command(our_bin("netloom-dnsd")?)?;
    cmd.args(["metrics", "--state-dir"])
        .arg(lab.host.state_dir());
    let out = cmd.output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "netloom_dns_forwarded_total 3",
        "netloom_dns_cache_hits_total 3",
        "netloom_dns_query_duration_seconds_count",
    ] {
        ensure(
            text.contains(want),
            format!("metrics lack {want:?}:\n{text}"),
        )?;
    }
    lab.del(&a)
}

fn dead_upstreams() -> Result<(), String> {
    let mut lab = Lab::new("dnsdead")?;
    let half = lab.net(&[DEAD1, UP], false)?;
    let none = lab.net(&[DEAD1, DEAD2], false)?;
    let a = lab.add(half, "dead-a", "halfdead", &[])?;
    let b = lab.add(none, "dead-b", "alldead", &[])?;
    // One dead upstream of two: answered at the live one's pace, not after a timeout.
    let d = lab.dig(&a, &["fast.ok.test"])?;
    d.expect("NOERROR", &["198.18.50.1"])?;
    ensure(
        d.query_ms < 500,
        format!("answer took {} ms with one dead upstream", d.query_ms),
    )?;
    // All dead: SERVFAIL after the 1 s budget, not Docker's 4 s per upstream.
    let t = Instant::now();
    let d = lab.dig(&b, &["fast.ok.test"])?;
    let took = t.elapsed();
    d.expect("SERVFAIL", &[])?;
    ensure(
        took < Duration::from_millis(2500),
        format!("SERVFAIL took {took:?}"),
    )?;
    // Local names still answer while upstreams are dead.
    lab.dig(&b, &["alldead"])?.expect("NOERROR", &[&b.v4])?;
    lab.del(&a)?;
    lab.del(&b)
}

fn tcp_truncation() -> Result<(), String> {
    let mut lab = Lab::new("dnstcp")?;
    let n = lab.net(&[UP], false)?;
    let a = lab.add(n, "tcp-a", "tcpname", &[])?;
    lab.dig(&a, &["+tcp", "tcpname"])?
        .expect("NOERROR", &[&a.v4])?;
    lab.dig(&a, &["+tcp", "x.ok.test"])?
        .expect("NOERROR", &["198.18.50.1"])?;
    // 100 A records do not fit a UDP answer: TC set and no records when the client does not
    // retry; dig's normal retry over TCP gets them all.
    let udp = lab.dig(&a, &["+ignore", "+noedns", "big.test"])?;
    ensure(
        udp.flags.contains("tc") && udp.answers.is_empty(),
        format!("want a truncated UDP answer:\n{}", udp.raw),
    )?;
    let full = lab.dig(&a, &["+noedns", "big.test"])?;
    ensure(
        full.status == "NOERROR" && full.answers.len() == 100,
        format!("want 100 answers after the TCP retry:\n{}", full.raw),
    )?;
    let tcp = lab.dig(&a, &["+tcp", "big.test"])?;
    ensure(
        tcp.answers.len() == 100,
        format!("TCP answer:\n{}", tcp.raw),
    )?;
    lab.del(&a)
}

fn add_del_gc() -> Result<(), String> {
    let mut lab = Lab::new("dnslife")?;
    let n = lab.net(&[UP], false)?;
    let a = lab.add(n, "life-a", "anchor", &[])?;
    // Each name answers on the first query right after its ADD returns: no propagation delay.
    for i in 0..3 {
        let c = lab.add(n, &format!("life-{i}"), &format!("new{i}"), &[])?;
        lab.dig(&a, &[&format!("new{i}")])?
            .expect("NOERROR", &[&c.v4])?;
        lab.del(&c)?;
        lab.dig(&a, &[&format!("new{i}")])?
            .expect("NXDOMAIN", &[])?;
    }
    // GC removes the names of attachments the runtime no longer has, keeps the others.
    let g = lab.add(n, "life-gc", "stale", &[])?;
    lab.dig(&a, &["stale"])?.expect("NOERROR", &[&g.v4])?;
    lab.gc(n, &[&a])?;
    lab.dig(&a, &["stale"])?.expect("NXDOMAIN", &[])?;
    lab.dig(&a, &["anchor"])?.expect("NOERROR", &[&a.v4])?;
    // CHECK reports a name that is gone.
    lab.dns_call("CHECK", &g)?.err_code(104)?;
    lab.dns_call("DEL", &g)?.ok()?;
    lab.del(&a)
}

fn parallel_one_server() -> Result<(), String> {
    let mut lab = Lab::new("dnspar")?;
    let n = lab.net(&[UP], false)?;
    // Bridge ADDs first (sequentially), then four netloom-dns ADDs at once on a host with no
    // server yet: exactly one server starts and serves all four names.
    let mut ctrs = Vec::new();
    for i in 0..4 {
        let netns = lab.host.container(&format!("p{i}"))?;
        let cid = format!("par-{i}");
        let call = Call {
            command: "ADD",
            container_id: &cid,
            netns: Some(&netns),
            ifname: "eth0",
            args: "IgnoreUnknown=1",
        };
        let r = run(
            &lab.host,
            &our_bin("netloom-bridge")?,
            &call,
            &lab.nets[n].bridge_conf,
        )?
        .ok()?;
        ctrs.push((netns, cid, r));
    }
    let dns_bin = our_bin("netloom-dns")?;
    let results: Vec<Result<Value, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ctrs
            .iter()
            .map(|(netns, cid, r)| {
                let conf = lab.dns_conf(n, &[], Some(r));
                let (host, bin) = (&lab.host, &dns_bin);
                s.spawn(move || {
                    let call = Call {
                        command: "ADD",
                        container_id: cid,
                        netns: Some(netns),
                        ifname: "eth0",
                        args: "IgnoreUnknown=1",
                    };
                    run(host, bin, &call, &conf)?.ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    for r in results {
        r?;
    }
    let pid = lab.server.pid().ok_or("no server pid file")?;
    let servers = std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| alive(*p))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("netloom-dnsd")
                        && c.contains(&*lab.host.state_dir().to_string_lossy())
                })
                .unwrap_or(false)
        })
        .count();
    ensure(servers == 1, format!("{servers} servers for one state dir"))?;
    let first = Lab::ctr_view(&ctrs[0], n);
    for (_, cid, r) in &ctrs {
        let ip = r["ips"][0]["address"]
            .as_str()
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("");
        lab.dig(&first, &[cid.as_str()])?.expect("NOERROR", &[ip])?;
    }
    // DEL all: the server exits after its grace period (2 s) with nothing left to serve.
    for (netns, cid, r) in &ctrs {
        let c = Ctr {
            netns: netns.clone(),
            cid: cid.clone(),
            ifname: "eth0".into(),
            net: n,
            v4: String::new(),
            v6: None,
            bridge_result: r.clone(),
            dns_result: Value::Null,
        };
        lab.del(&c)?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        ensure(
            Instant::now() < deadline,
            "the server did not exit after the last DEL",
        )?;
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure(
        !lab.host.state_dir().join("dns/control.sock").exists(),
        "control socket left behind",
    )
}

impl Lab {
    /// A lightweight view of a container made outside [`Lab::add`], for `dig`.
    fn ctr_view(c: &(PathBuf, String, Value), net: usize) -> Ctr {
        Ctr {
            netns: c.0.clone(),
            cid: c.1.clone(),
            ifname: "eth0".into(),
            net,
            v4: String::new(),
            v6: None,
            bridge_result: c.2.clone(),
            dns_result: Value::Null,
        }
    }
}

fn port_taken_elsewhere() -> Result<(), String> {
    // The test upstreams already hold port 53 on 127.0.0.2-4 of this host; one more on an
    // address of the host's own bridge-less interface stands for a host DNS server.
    let mut lab = Lab::new("dnsport")?;
    lab.host
        .sh(&["ip", "addr", "add", "198.18.99.1/32", "dev", "lo"])?;
    lab.upstream("198.18.99.1", false)?;
    let n = lab.net(&[UP], false)?;
    let a = lab.add(n, "port-a", "portname", &[])?;
    lab.dig(&a, &["portname"])?.expect("NOERROR", &[&a.v4])?;
    // We hold port 53 on the gateway only, never the wildcard.
    let ss = lab.host.sh(&["ss", "-Hlnup"])?;
    let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
    let ours: Vec<&str> = ss
        .lines()
        .filter(|l| l.contains("netloom-dnsd") && l.contains(":53 "))
        .collect();
    ensure(
        ours.iter()
            .any(|l| l.contains(&format!("{}:53", lab.nets[n].gateway)))
            && !ours
                .iter()
                .any(|l| l.contains("0.0.0.0:53") || l.contains("*:53") || l.contains("[::]:53")),
        format!("sockets:\n{ss}"),
    )?;
    lab.del(&a)
}

fn reloads_keep_serving() -> Result<(), String> {
    let mut lab = Lab::new("dnsreload")?;
    let n = lab.net(&[UP], false)?;
    let a = lab.add(n, "rl-a", "steady", &[])?;
    // One dig process asks 3000 times in a row (batch mode, one try each, 3 s timeout) while
    // containers come and go, each ADD and DEL reloading the server: every query must answer.
    let batch = lab.host.state_dir().join("batch.txt");
    let lines: Vec<String> = (0..3000)
        .map(|_| "steady +tries=1 +time=3".to_string())
        .collect();
    std::fs::write(&batch, lines.join("\n") + "\n").map_err(|e| e.to_string())?;
    let gw = lab.nets[n].gateway.clone();
    let answered = std::thread::scope(|s| -> Result<usize, String> {
        let digger = s.spawn(|| {
            let at = format!("@{gw}");
            let batch = batch.to_string_lossy().into_owned();
            run_in_path(
                &a.netns,
                &["dig", at.as_str(), "+nocookie", "-f", batch.as_str()],
            )
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .matches("status: NOERROR")
                    .count()
            })
        });
        for i in 0..5 {
            let c = lab.add(n, &format!("rl-{i}"), &format!("churn{i}"), &[])?;
            lab.del(&c)?;
        }
        digger
            .join()
            .map_err(|_| "dig thread panicked".to_string())?
    })?;
    ensure(
        answered == 3000,
        format!("{answered} of 3000 queries answered during reloads"),
    )?;
    lab.del(&a)
}

/// The README's conflist under a real runtime: podman 4.3 (CNI backend) runs netloom-bridge
/// then netloom-dns, writes the result's nameserver and search domain into the containers'
/// resolv.conf, and passes `--network-alias` as runtimeConfig.aliases.
fn podman_resolve() -> Result<(), String> {
    let host = FakeHost::new("dnspod")?;
    let state = host.state_dir().join("netloom");
    let _server = ServerGuard(state.clone());
    let _up = start_upstream(&host, UP, false)?;
    let podman = Podman::start(&host, &tests::cni::bin_dir(), &state)?;
    let n = names::next();
    let net = names::unique("dnspod");
    let subnet = names::subnet_v4();
    let gateway = subnet.nth(1).ok_or("subnet too small")?.to_string();
    let state_s = state.to_string_lossy().into_owned();
    podman.add_conflist(
        &net,
        &json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [
                {"type": "netloom-bridge", "bridge": format!("nldnsp{n}"), "isGateway": true,
                 "ipMasq": true, "stateDir": state_s,
                 "ipam": {"type": "netloom-ipam",
                          "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": host.state_dir().join("cni")}},
                {"type": "netloom-dns", "capabilities": {"aliases": true},
                 "stateDir": state_s, "upstreams": [UP]}
            ]
        }),
    )?;
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "--network-alias",
        "www",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])?;
    let web = podman.ip_of("web", &net)?;
    let run = |args: &[&str]| {
        let mut argv = vec!["run", "--rm", "--network", net.as_str(), IMAGE];
        argv.extend_from_slice(args);
        podman.podman(&argv).map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
    };
    let resolv = run(&["cat", "/etc/resolv.conf"])?;
    ensure(
        resolv.contains(&format!("nameserver {gateway}")) && resolv.contains("dns.netloom"),
        format!("resolv.conf in the container:\n{resolv}"),
    )?;
    for name in ["web", "www", "WEB.dns.netloom"] {
        let out = run(&["nslookup", name])?;
        ensure(out.contains(&web), format!("nslookup {name}:\n{out}"))?;
    }
    // By name, from one container to the other.
    let page = run(&["wget", "-qO-", "http://www/"])?;
    ensure(
        page.trim() == image::INDEX.trim(),
        format!("GET http://www/ gave {page:?}"),
    )?;
    // Forwarded through the container's resolver to the (test) upstream.
    let out = run(&["nslookup", "x.ok.test"])?;
    ensure(
        out.contains("198.18.50.1"),
        format!("nslookup x.ok.test:\n{out}"),
    )?;
    // podman rm runs DEL: the name is gone.
    podman.ok(&["rm", "-f", "-t", "0", "web"])?;
    let out = run(&["nslookup", "web"])?;
    ensure(
        !out.contains(&web) && out.to_ascii_uppercase().contains("NXDOMAIN"),
        format!("web still resolves after podman rm:\n{out}"),
    )
}

fn killed_server_restarts() -> Result<(), String> {
    let mut lab = Lab::new("dnskill")?;
    let n = lab.net(&[UP], false)?;
    let a = lab.add(n, "kill-a", "survivor", &[])?;
    let pid = lab.server.pid().ok_or("no server pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        ensure(Instant::now() < deadline, "killed server still alive")?;
        std::thread::sleep(Duration::from_millis(20));
    }
    // A crashed server leaves its socket file and nothing else: the next ADD starts a new one
    // (the kernel released its locks), which serves every name in the store, old and new.
    let b = lab.add(n, "kill-b", "newcomer", &[])?;
    let new_pid = lab.server.pid().ok_or("no new server pid")?;
    ensure(
        new_pid != pid && alive(new_pid),
        "no new server after the crash",
    )?;
    lab.dig(&b, &["survivor"])?.expect("NOERROR", &[&a.v4])?;
    lab.dig(&a, &["newcomer"])?.expect("NOERROR", &[&b.v4])?;
    lab.dns_call("CHECK", &a)?.ok()?;
    lab.del(&a)?;
    lab.del(&b)
}

fn bad_input() -> Result<(), String> {
    let mut lab = Lab::new("dnsbad")?;
    let n = lab.net(&[UP], false)?;
    let netns = lab.host.container("bad")?;
    let call = Call {
        command: "ADD",
        container_id: "bad-1",
        netns: Some(&netns),
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAME=fine",
    };
    let prev = run(
        &lab.host,
        &our_bin("netloom-bridge")?,
        &call,
        &lab.nets[n].bridge_conf,
    )?
    .ok()?;
    let dns = our_bin("netloom-dns")?;
    // Not chained: no prevResult.
    let msg = run(&lab.host, &dns, &call, &lab.dns_conf(n, &[], None))?.err_code(7)?;
    ensure(msg.contains("prevResult"), format!("message: {msg}"))?;
    // An alias that is no DNS name.
    let msg = run(
        &lab.host,
        &dns,
        &call,
        &lab.dns_conf(n, &["bad name!"], Some(&prev)),
    )?
    .err_code(7)?;
    ensure(msg.contains("bad name!"), format!("message: {msg}"))?;
    // An upstream that is no address.
    let mut conf = lab.dns_conf(n, &[], Some(&prev));
    conf["upstreams"] = json!(["resolver.example"]);
    let msg = run(&lab.host, &dns, &call, &conf)?.err_code(7)?;
    ensure(msg.contains("resolver.example"), format!("message: {msg}"))?;
    // Nothing was registered and no server was started for these.
    ensure(
        tests::cni::count_values(&lab.host.state_dir().join("data/dns")) == 0,
        "a refused ADD left DNS records",
    )?;
    ensure(lab.server.pid().is_none(), "a refused ADD started a server")?;
    let mut conf = lab.nets[n].bridge_conf.clone();
    conf["prevResult"] = prev;
    run(
        &lab.host,
        &our_bin("netloom-bridge")?,
        &Call {
            command: "DEL",
            ..call
        },
        &conf,
    )?
    .ok()?;
    Ok(())
}
