//! Overlay benchmark (not part of the test suite): `cargo bench -p tests --bench overlay`
//! (needs root, etcd and iperf3; uses the release binaries next to the bench executable).
//!
//! 1. TCP throughput container → container across two fake hosts over the overlay, against the
//!    same two hosts talking directly over their underlay veths: the same iperf3 options, runs
//!    alternating (overlay, underlay, overlay, …; `NETLOOM_BENCH_ROUNDS`, default 5), medians and
//!    the median of the per-round ratios. Then the same with tx checksum offload turned off on
//!    both VXLAN devices (the flannel#1279 workaround old kernels need), to show its cost in
//!    the same run. `NETLOOM_BENCH_ONLY=throughput` stops after this part.
//! 2. Convergence: time from an ADD returning on host 0 to the first answered ping from a
//!    container on host 1 (20 samples).
//! 3. Per-ADD cost as the overlay grows: 3 hosts × 100 endpoints, ADDs round-robin.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::overlay::*;
use tests::{names, Cap, Caps};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let caps = Caps::get();
    for c in [Cap::Root, Cap::Veth, Cap::Bridge, Cap::Vxlan, Cap::Etcd] {
        if let Some(why) = caps.missing(c) {
            eprintln!("overlay bench skipped: needs {c:?} ({why})");
            return;
        }
    }
    if Command::new("iperf3").arg("--version").output().is_err() {
        eprintln!("overlay bench skipped: needs iperf3 (apt-get install iperf3)");
        return;
    }
    if let Err(e) = bench() {
        eprintln!("overlay bench failed: {e}");
        std::process::exit(1);
    }
}

fn in_ns(path: &Path, argv: &[&str]) -> Result<Command, String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    engine_core::netns::Netns::open(path)
        .and_then(|n| n.command(&mut cmd))
        .map_err(|e| e.to_string())?;
    Ok(cmd)
}

/// One iperf3 run (4 s, one stream, defaults otherwise): server in `server_ns` on `ip`, client
/// in `client_ns`; Gbit/s received.
fn iperf(server_ns: &Path, client_ns: &Path, ip: &str) -> Result<f64, String> {
    let mut server: Child = in_ns(server_ns, &["iperf3", "-s", "-1", "-B", ip])?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 -s: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns(client_ns, &["iperf3", "-c", ip, "-t", "4", "-J"])?
        .output()
        .map_err(|e| format!("iperf3 -c: {e}"))?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("no throughput in {v}"))
}

fn bench() -> Result<(), String> {
    let mut lab = Lab::new(
        3,
        UnderlaySpec {
            v6: false,
            mtu: 1500,
        },
    )?;
    let net = names::unique("obn");
    // A /16 (300 endpoints do not fit a /24), in a range no test uses; it exists only inside
    // the bench's namespaces.
    let subnet = format!("10.{}.0.0/16", 190 + std::process::id() % 8);
    let confs: Vec<_> = (0..3)
        .map(|h| conf(&lab, &lab.hosts[h], &net, &subnet, json!({})))
        .collect();

    // 1. Throughput.
    let (a, _) = add(&mut lab.hosts[0], &confs[0], "ta")?;
    let (b, _) = add(&mut lab.hosts[1], &confs[1], "tb")?;
    ping_until(&a.netns, &b.ip, Duration::from_secs(10))?;
    let h0 = lab.hosts[0].fh.netns().path().to_path_buf();
    let h1 = lab.hosts[1].fh.netns().path().to_path_buf();
    let v1 = lab.hosts[1].vtep.to_string();
    let rounds: usize = std::env::var("NETLOOM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|x, y| x.total_cmp(y));
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let vx = vxlan_dev(&net);
    let set_csum = |on: bool| -> Result<(), String> {
        for h in [&h0, &h1] {
            let ns = engine_core::netns::Netns::open(h).map_err(|e| e.to_string())?;
            engine_core::netlink::ethtool::set_tx_checksum(Some(&ns), &vx, on)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let csum_now = {
        let ns = engine_core::netns::Netns::open(&h0).map_err(|e| e.to_string())?;
        engine_core::netlink::ethtool::tx_checksum(Some(&ns), &vx).map_err(|e| e.to_string())?
    };
    let measure = |label: &str, rounds: usize| -> Result<(), String> {
        let (mut ov, mut ul, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let o = iperf(&b.netns, &a.netns, &b.ip)?;
            let u = iperf(&h1, &h0, &v1)?;
            ov.push(o);
            ul.push(u);
            ratio.push(o / u);
        }
        println!(
            "throughput, {label}, {rounds} alternating rounds: overlay median {:.2} Gbit/s ({}), \
             underlay veth median {:.2} Gbit/s ({}); ratio of medians {:.2}, median of per-round \
             ratios {:.2} ({})",
            median(&ov),
            fmt(&ov),
            median(&ul),
            fmt(&ul),
            median(&ov) / median(&ul),
            median(&ratio),
            fmt(&ratio)
        );
        Ok(())
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}; tx checksum offload on the VXLAN devices as created: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        if csum_now { "on" } else { "off" }
    );
    measure("VXLAN devices as netloom creates them", rounds)?;
    set_csum(false)?;
    let forced = measure(
        "tx checksum offload forced off (the old-kernel workaround)",
        3,
    );
    set_csum(csum_now)?;
    forced?;
    if std::env::var("NETLOOM_BENCH_ONLY").as_deref() == Ok("throughput") {
        return Ok(());
    }

    // 2. Convergence.
    let mut conv = Vec::new();
    for i in 0..20 {
        let (c, _) = add(&mut lab.hosts[0], &confs[0], &format!("cv{i}"))?;
        let t = Instant::now();
        ping_until(&b.netns, &c.ip, Duration::from_secs(5))?;
        conv.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    conv.sort_by(|x, y| x.total_cmp(y));
    println!(
        "convergence (ADD returned on host 0 → first ping answered from host 1), 20 samples: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        conv[10], conv[18], conv[19]
    );

    // 3. Per-ADD cost as endpoints grow.
    let per_host = 100;
    let mut times = Vec::new();
    for k in 0..per_host {
        for (h, conf) in confs.iter().enumerate() {
            let (_, took) = add(&mut lab.hosts[h], conf, &format!("g{h}-{k}"))?;
            times.push(took.as_secs_f64() * 1000.0);
        }
    }
    let block = 75;
    let means: Vec<String> = times
        .chunks(block)
        .map(|c| format!("{:.1}", c.iter().sum::<f64>() / c.len() as f64))
        .collect();
    println!(
        "per-ADD ms, 3 hosts × {per_host} endpoints, mean per {block} ADDs in order: {}",
        means.join(", ")
    );
    Ok(())
}
