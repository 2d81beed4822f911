//! Benchmark: `netlab ls --json` and `netlab doctor --json` on a host with many namespaces
//! (issue 8: 500 in under 1 s).
//!
//! Builds a private fake host namespace with a bridge, then N container namespaces (default
//! 500), each with a veth pair whose host end is on the bridge and an address on the container
//! end, the shape a container host has. Runs the `netlab` binary (next to this example in the
//! target directory) inside the fake host a few times, prints the timings, and removes
//! everything (namespaces are removed on drop, also on error).
//!
//! Run as root: `cargo build -p netlab --release --bin netlab --example ls_bench &&
//! target/release/examples/ls_bench [N]`

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use engine_core::netlink::{AddrOptions, BridgeSpec, Netlink, VethSpec};
use engine_core::netns::Netns;
use ipnetwork::{IpNetwork, Ipv4Network};

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500);
    let exe = std::env::current_exe()?;
    let netlab: PathBuf = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|d| d.join("netlab"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    anyhow::ensure!(
        netlab.exists(),
        "{} is missing: build it with --bin netlab",
        netlab.display()
    );
    let tag = format!("nlbench{}", std::process::id());
    let t0 = Instant::now();
    let host = Netns::create_named(&format!("{tag}-host"))?;
    let hnl = Netlink::in_netns(&host)?;
    hnl.set_up("lo")?;
    hnl.create_bridge(&BridgeSpec::new("br0"))?;
    hnl.set_up("br0")?;
    let mut containers = Vec::with_capacity(n);
    for i in 0..n {
        let c = Netns::create_named(&format!("{tag}-c{i}"))?;
        let host_end = format!("veth{i}");
        hnl.create_veth(&VethSpec::new(&host_end, "eth0").peer_netns(&c))?;
        hnl.set_master(&host_end, "br0")?;
        hnl.set_up(&host_end)?;
        let cnl = Netlink::in_netns(&c)?;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 2)) + i as u32);
        let net = IpNetwork::V4(Ipv4Network::new(ip, 16)?);
        cnl.add_address("eth0", net, AddrOptions::default())?;
        cnl.set_up("eth0")?;
        cnl.set_up("lo")?;
        containers.push(c);
    }
    println!("built {n} namespaces in {:.2}s", t0.elapsed().as_secs_f64());
    let mut best = f64::MAX;
    for run in 1..=3 {
        let mut cmd = Command::new(&netlab);
        cmd.args(["ls", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        host.command(&mut cmd)?;
        let t = Instant::now();
        let out = cmd.output()?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(out.status.success(), "netlab ls failed: {}", out.status);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let listed = v["namespaces"].as_array().map_or(0, Vec::len);
        let peers = v["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|ns| ns["label"].as_str().is_some_and(|l| l.starts_with(&tag)))
            .filter(|ns| ns["interfaces"][1]["peer"]["ifname"].is_string())
            .count();
        println!("run {run}: netlab ls --json: {secs:.3}s, {listed} namespaces, {peers} veth peers resolved");
        best = best.min(secs);
    }
    println!("best of 3 with {n} container namespaces: {best:.3}s");
    // doctor reads the same inventory plus sysctls, the rulesets and the VXLAN devices.
    let mut best = f64::MAX;
    for run in 1..=3 {
        let mut cmd = Command::new(&netlab);
        cmd.args(["doctor", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        host.command(&mut cmd)?;
        let t = Instant::now();
        let out = cmd.output()?;
        let secs = t.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let checks = v["checks"].as_array().map_or(0, Vec::len);
        println!("run {run}: netlab doctor --json: {secs:.3}s, {checks} checks");
        best = best.min(secs);
    }
    println!("doctor, best of 3 with {n} container namespaces: {best:.3}s");
    drop(containers);
    drop(host);
    Ok(())
}
