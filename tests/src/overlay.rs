//! The multi-host overlay lab shared by the overlay tests and the overlay benchmark.
//!
//! A "lab" namespace holds the underlay bridge and etcd on its address; N fake hosts are plugged
//! into it with a veth (`eth0`, default route via the lab), each running netloomd with the
//! overlay agent; containers are namespaces in the hosts attached with `netloom-vxlan`.
//! Dropping the lab stops the agents, then etcd, then removes every namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cni::{our_bin, run, Call};
use crate::etcd::Etcd;
use crate::fakehost::run_in_path;
use crate::{names, FakeHost};

/// netloomd with the overlay agent, inside one fake host.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    /// The Docker plugin names are `<prefix>-overlay`, `<prefix>-ipam`, …
    pub prefix: String,
    plugin_dir: PathBuf,
}

impl Agent {
    pub fn start(host: &FakeHost, url: &str, vtep: IpAddr) -> Result<Agent, String> {
        Self::start_with(host, url, vtep, None)
    }

    /// Like [`Agent::start`], with the Docker plugin sockets in `plugin_dir` (a dockerd's).
    pub fn start_with(
        host: &FakeHost,
        url: &str,
        vtep: IpAddr,
        plugin_dir: Option<&Path>,
    ) -> Result<Agent, String> {
        Self::start_args(host, url, vtep, plugin_dir, &[])
    }

    /// Like [`Agent::start_with`], with more netloomd flags.
    pub fn start_args(
        host: &FakeHost,
        url: &str,
        vtep: IpAddr,
        plugin_dir: Option<&Path>,
        extra: &[&str],
    ) -> Result<Agent, String> {
        let dir = host.state_dir().join("agent");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = dir.join("netloomd.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?;
        let prefix = names::unique("ov");
        let plugin_dir = plugin_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("plugins"));
        let mut cmd = host.command(our_bin("netloomd")?)?;
        cmd.arg("--state-dir")
            .arg(host.state_dir().join("state"))
            .arg("--plugin-dir")
            .arg(&plugin_dir)
            .args(["--admin-socket", "none", "--plugin-prefix"])
            .arg(&prefix)
            .args(["--store", url, "--advertise-addr", &vtep.to_string()])
            .args(["--host-ttl", "2", "--log-level", "info,drivers=debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = cmd.spawn().map_err(|e| format!("start netloomd: {e}"))?;
        let mut agent = Agent {
            child: Some(child),
            log,
            prefix,
            plugin_dir,
        };
        // netloomd starts the agent after its firewall: a CNI ADD racing that first firewall
        // setup in a fresh namespace can lose its etcd connection's SYN-ACK to conntrack
        // (invalid state), which is not what these tests are about.
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&agent.log).unwrap_or_default();
            // The agent runs, and the plugin sockets (bound after it) answer.
            if text.contains("overlay agent starting") && text.contains("IpamDriver listening") {
                return Ok(agent);
            }
            if let Some(Ok(Some(st))) = agent.child.as_mut().map(|c| c.try_wait()) {
                agent.child = None;
                return Err(format!("netloomd exited ({st}):\n{}", agent.log_tail()));
            }
            if Instant::now() > end {
                return Err(format!(
                    "netloomd did not start its agent:\n{}",
                    agent.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // A killed netloomd leaves its sockets; they carry this run's prefix.
        if let Ok(dir) = std::fs::read_dir(&self.plugin_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Agent {
    /// SIGTERM and wait (SIGKILL after 10 s).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One fake host on the underlay.
pub struct Host {
    // Drop order: the agent before the host's namespaces.
    pub agent: Option<Agent>,
    pub fh: FakeHost,
    pub vtep: IpAddr,
}

impl Host {
    /// The end of the host's agent log (empty without an agent), for failure messages.
    pub fn agent_log_tail(&self) -> String {
        self.agent.as_ref().map(Agent::log_tail).unwrap_or_default()
    }
}

/// The lab: underlay bridge, etcd, hosts.
pub struct Lab {
    // Drop order: hosts (their agents revoke their records in etcd), then etcd, then the lab.
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    pub lab: FakeHost,
}

/// How the lab's underlay is addressed.
#[derive(Clone, Copy)]
pub struct UnderlaySpec {
    pub v6: bool,
    pub mtu: u32,
}

impl Lab {
    pub fn new(n: usize, spec: UnderlaySpec) -> Result<Lab, String> {
        Self::with_agent_args(n, spec, &[])
    }

    /// A lab whose netloomds get `agent_args` too.
    pub fn with_agent_args(
        n: usize,
        spec: UnderlaySpec,
        agent_args: &[&str],
    ) -> Result<Lab, String> {
        let lab = FakeHost::new("ovl")?;
        let net = names::subnet_v4();
        let base = net.ip().octets();
        let v4 = |last: u8| format!("{}.{}.{}.{last}", base[0], base[1], base[2]);
        let v6net = names::subnet_v6();
        let v6 = |last: u16| {
            let s = v6net.ip().segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, last).to_string()
        };
        lab.sh(&["ip", "link", "add", "ulbr", "type", "bridge"])?;
        lab.sh(&["ip", "addr", "add", &format!("{}/24", v4(1)), "dev", "ulbr"])?;
        lab.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", v6(1)),
            "dev",
            "ulbr",
            "nodad",
        ])?;
        lab.sh(&["ip", "link", "set", "ulbr", "up"])?;
        let etcd = Etcd::start(Some(lab.netns().path()))?;
        let mut out = Lab {
            hosts: Vec::new(),
            etcd,
            lab,
        };
        for i in 0..n {
            let fh = FakeHost::new(&format!("ovh{i}"))?;
            let port = format!("u{i}");
            let host_ns = fh.netns().path().to_string_lossy().into_owned();
            let ns_name = Path::new(&host_ns)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or("fake host path has no name")?;
            out.lab.sh(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns_name,
            ])?;
            out.lab
                .sh(&["ip", "link", "set", &port, "master", "ulbr", "up"])?;
            let last = 10 + i as u8;
            fh.sh(&[
                "ip",
                "link",
                "set",
                "eth0",
                "mtu",
                &spec.mtu.to_string(),
                "up",
            ])?;
            fh.sh(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", v4(last)),
                "dev",
                "eth0",
            ])?;
            fh.sh(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{}/64", v6(u16::from(last))),
                "dev",
                "eth0",
                "nodad",
            ])?;
            fh.sh(&["ip", "route", "add", "default", "via", &v4(1)])?;
            let vtep: IpAddr = if spec.v6 {
                v6(u16::from(last)).parse()
            } else {
                v4(last).parse()
            }
            .map_err(|e| format!("{e}"))?;
            // A new veth drops packets until the kernel's link watcher activates its queue
            // (batched, up to a second): wait until the host reaches the lab before anything
            // talks to etcd, so no first SYN is lost to it.
            let lab_ip = v4(1);
            let end = Instant::now() + Duration::from_secs(10);
            while fh.sh(&["ping", "-c1", "-W", "0.3", &lab_ip]).is_err() {
                if Instant::now() > end {
                    return Err(format!("fake host {i} cannot reach the lab at {lab_ip}"));
                }
            }
            let agent = Agent::start_args(&fh, &out.etcd.url(), vtep, None, agent_args)?;
            out.hosts.push(Host {
                agent: Some(agent),
                fh,
                vtep,
            });
        }
        Ok(out)
    }

    /// The lab bridge's IPv4 address: "outside" for the containers.
    pub fn outside(&self) -> String {
        self.etcd.ip().to_string()
    }
}

/// A CNI network configuration for one overlay.
pub fn conf(lab: &Lab, host: &Host, name: &str, subnet: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "netloom-vxlan",
        "store": lab.etcd.url(),
        "advertiseAddr": host.vtep.to_string(),
        "stateDir": host.fh.state_dir().join("state"),
        "ipam": {"type": "host-local", "subnet": subnet}
    });
    crate::cni::merge(&mut c, extra);
    c
}

/// A container attached to an overlay.
pub struct Ctr {
    pub netns: PathBuf,
    pub ip: String,
    pub mac: String,
}

pub fn call<'a>(command: &'a str, id: &'a str, netns: Option<&'a Path>) -> Call<'a> {
    Call {
        command,
        container_id: id,
        netns,
        ifname: "eth0",
        args: "",
    }
}

/// ADD, retried while the host's agent has not registered yet (it starts in the background).
pub fn add(host: &mut Host, conf: &Value, id: &str) -> Result<(Ctr, Duration), String> {
    let netns = host.fh.container(id)?;
    let plugin = our_bin("netloom-vxlan")?;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let t = Instant::now();
        let out = run(&host.fh, &plugin, &call("ADD", id, Some(&netns)), conf)?;
        let took = t.elapsed();
        // Code 11 is "try again later", and runtimes do: the agent may not have registered
        // yet, or (on a loaded machine) one connection to etcd timed out.
        let retry = out.stdout.contains("no overlay agent") || out.stdout.contains("unreachable");
        if out.code != 0 && retry && Instant::now() < end {
            eprintln!(
                "ADD {id} answered \"try again later\", retrying: {}",
                out.stdout.trim()
            );
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let v = out.ok().map_err(|e| {
            let tail = host.agent_log_tail();
            format!("{e}\nagent log:\n{tail}")
        })?;
        return Ok((ctr_from(&v, netns)?, took));
    }
}

/// One container `c<i>` on each host of the lab on overlay `net`, and the first reaching the
/// last: the starting point of the host-loss and purge scenarios.
pub fn container_per_host(lab: &mut Lab, net: &str, subnet: &str) -> Result<Vec<Ctr>, String> {
    let mut ctrs = Vec::new();
    for i in 0..lab.hosts.len() {
        let c = conf(lab, &lab.hosts[i], net, subnet, json!({}));
        let (ctr, _) = add(&mut lab.hosts[i], &c, &format!("c{i}"))?;
        ctrs.push(ctr);
    }
    if let (Some(first), Some(last)) = (ctrs.first(), ctrs.last()) {
        ping_until(&first.netns, &last.ip, Duration::from_secs(10))?;
    }
    Ok(ctrs)
}

pub fn ctr_from(v: &Value, netns: PathBuf) -> Result<Ctr, String> {
    let ip = v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .ok_or_else(|| format!("no address in {v}"))?
        .to_string();
    let mac = v["interfaces"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["sandbox"].is_string()))
        .and_then(|i| i["mac"].as_str())
        .ok_or_else(|| format!("no container interface in {v}"))?
        .to_string();
    Ok(Ctr { netns, ip, mac })
}

pub fn del(host: &Host, conf: &Value, id: &str, c: &Ctr) -> Result<(), String> {
    let plugin = our_bin("netloom-vxlan")?;
    run(&host.fh, &plugin, &call("DEL", id, Some(&c.netns)), conf)?
        .ok()
        .map(|_| ())
}

pub fn ping_once(from: &Path, to: &str, wait: &str) -> bool {
    run_in_path(from, &["ping", "-c1", "-W", wait, to]).is_ok()
}

/// Pings until one answer or `timeout`; the time to the first answer.
pub fn ping_until(from: &Path, to: &str, timeout: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if ping_once(from, to, "0.2") {
            return Ok(t.elapsed());
        }
    }
    Err(format!(
        "{} cannot reach {to} within {timeout:?}",
        from.display()
    ))
}

/// The overlay's VXLAN device on a host.
pub fn vxlan_dev(overlay: &str) -> String {
    drivers::overlay::names::vxlan(overlay)
}

pub fn fdb(host: &Host, overlay: &str) -> Result<String, String> {
    let out = host
        .fh
        .sh(&["bridge", "fdb", "show", "dev", &vxlan_dev(overlay)])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn neigh(host: &Host, overlay: &str) -> Result<String, String> {
    let out = host
        .fh
        .sh(&["ip", "neigh", "show", "dev", &vxlan_dev(overlay)])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn container_mtu(c: &Ctr) -> Result<u32, String> {
    // Not /sys/class/net: sysfs shows the namespace it was mounted in, not the one we entered.
    let out = run_in_path(&c.netns, &["ip", "-o", "link", "show", "eth0"])?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.split(" mtu ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("no mtu in {s}"))
}

/// Waits until `f` holds, polling.
pub fn wait_for(
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        if f()? {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            return Err(format!("condition not met within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn overlay_subnet() -> String {
    // 10.200.0.0/13 is the fake hosts' range; overlays take their /24s from it too (unique
    // per test), distinct from the underlay's.
    names::subnet_v4().to_string()
}

/// The keys below `prefix` (e.g. "overlay/endpoints/web") in the lab's etcd, read from the lab
/// namespace (etcd listens on the lab bridge only).
pub fn etcd_keys(lab: &Lab, prefix: &str) -> Result<Vec<String>, String> {
    use engine_core::StateStore;
    let store =
        engine_core::store::etcd::EtcdStore::open(&lab.etcd.url()).map_err(|e| e.to_string())?;
    let key = engine_core::Key::new(prefix.split('/'));
    lab.lab
        .netns()
        .run(|| store.list(&key))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
        .map(|l| l.into_iter().map(|(k, _)| k.segments().join("/")).collect())
}
