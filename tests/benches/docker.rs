//! netloomd against Docker's built-in bridge driver, side by side in one run (issue 6).
//!
//! One private dockerd next to netloomd in a fake host (the fixture the Docker tests use); for
//! each driver the same docker CLI commands are timed in alternation, so both see the same
//! machine load: `network create`, `run -d` (returns when the container runs), `network
//! connect`, `network disconnect`, `rm -f`, `network rm`. Then one container publishes a
//! 1000-port range (`-p 20000-20999:20000-20999`): its `run -d` time and the memory it added
//! (the built-in driver's docker-proxy processes plus dockerd's growth, against netloomd's
//! growth).
//!
//!   cargo bench -p tests --bench docker [-- ROUNDS] [no-range]
//!
//! `no-range` leaves out the 1000-port range (the built-in driver takes ~1 min for it), for
//! quick before/after runs of the per-container operations.
//!
//! Every docker command pays the CLI's own start (~30–60 ms here) on both sides alike; the
//! ratios are what to read.

use std::time::Instant;

use tests::docker::{DockerEnv, IMAGE};
use tests::{names, Cap, Caps};

struct Driver {
    label: &'static str,
    name: String,
    ipam: Option<String>,
}

fn main() {
    let caps = Caps::get();
    for cap in [Cap::Root, Cap::Dockerd, Cap::Nftables] {
        if let Some(why) = caps.missing(cap) {
            eprintln!("docker bench skipped: {cap:?} missing ({why})");
            return;
        }
    }
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let range = !std::env::args().any(|a| a == "no-range");
    if let Err(e) = run(rounds, range) {
        eprintln!("docker bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(rounds: usize, range: bool) -> Result<(), String> {
    let env = DockerEnv::start("dbench")?;
    let drivers = [
        Driver {
            label: "docker bridge",
            name: "bridge".into(),
            ipam: None,
        },
        Driver {
            label: "netloom",
            name: env.driver(),
            ipam: Some(env.ipam_driver()),
        },
        // netloom's network driver with Docker's own IPAM: one remote round trip less per
        // address, to see what the IPAM plugin protocol costs.
        Driver {
            label: "netloom, Docker IPAM",
            name: env.driver(),
            ipam: None,
        },
    ];
    const OPS: [&str; 6] = [
        "network create",
        "run -d",
        "network connect",
        "network disconnect",
        "rm -f",
        "network rm",
    ];
    // times[driver][op] in ms
    let mut times = vec![vec![Vec::new(); OPS.len()]; drivers.len()];
    for round in 0..rounds {
        for (di, d) in drivers.iter().enumerate() {
            let (net, side) = (format!("b{round}n{di}"), format!("b{round}s{di}"));
            let (s1, s2) = (
                names::subnet_v4().to_string(),
                names::subnet_v4().to_string(),
            );
            let create = |name: &str, subnet: &str| -> Result<f64, String> {
                let mut args = vec!["network", "create", "-d", &d.name, "--subnet", subnet];
                if let Some(ipam) = &d.ipam {
                    args.extend(["--ipam-driver", ipam.as_str()]);
                }
                args.push(name);
                timed(|| env.docker(&args))
            };
            let t = create(&net, &s1)?;
            times[di][0].push(t);
            create(&side, &s2)?;
            let c = format!("b{round}c{di}");
            let ops: [Vec<&str>; 5] = [
                vec![
                    "run",
                    "-d",
                    "--name",
                    &c,
                    "--network",
                    &net,
                    IMAGE,
                    "sleep",
                    "600",
                ],
                vec!["network", "connect", &side, &c],
                vec!["network", "disconnect", &side, &c],
                vec!["rm", "-f", &c],
                vec!["network", "rm", &net],
            ];
            for (oi, args) in ops.iter().enumerate() {
                times[di][oi + 1].push(timed(|| env.docker(args))?);
            }
            env.docker(&["network", "rm", &side])?;
        }
    }
    println!(
        "Docker: netloomd vs the built-in bridge driver, {rounds} rounds, medians (p90) in ms, \
         docker CLI included"
    );
    println!(
        "| operation | docker bridge | netloom | netloom / docker | netloom, Docker IPAM | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (oi, op) in OPS.iter().enumerate() {
        let (b, n, m) = (
            stats(&mut times[0][oi]),
            stats(&mut times[1][oi]),
            stats(&mut times[2][oi]),
        );
        println!(
            "| {op} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.2}× | {:.1} ({:.1}) | {:.2}× |",
            b.0,
            b.1,
            n.0,
            n.1,
            n.0 / b.0,
            m.0,
            m.1,
            m.0 / b.0
        );
    }
    // What netloomd itself spent per request, from its own metrics: the rest of a docker
    // command's time is dockerd, containerd and the CLI.
    println!();
    println!("| netloomd request | count | mean ms |");
    println!("|---|---|---|");
    for (method, (count, sum)) in plugin_times(&env)? {
        println!(
            "| {method} | {count} | {:.2} |",
            sum * 1000.0 / count.max(1) as f64
        );
    }

    if !range {
        env.clean()?;
        return Ok(());
    }
    // A 1000-port range, once per driver.
    println!();
    println!("| 1000-port range `-p 20000-20999:20000-20999` | docker bridge | netloom |");
    println!("|---|---|---|");
    let mut rows = Vec::new();
    let mut own = None;
    for (di, d) in drivers.iter().take(2).enumerate() {
        let net = format!("brange{di}");
        let mut args = vec!["network", "create", "-d", &d.name];
        let subnet = names::subnet_v4().to_string();
        args.extend(["--subnet", &subnet]);
        if let Some(ipam) = &d.ipam {
            args.extend(["--ipam-driver", ipam.as_str()]);
        }
        args.push(&net);
        env.docker(&args)?;
        let before = rss_kib(&env);
        let own_before = env.netloomd.pid().map(vm_rss).unwrap_or(0);
        let pec_before = plugin_time(&env, "NetworkDriver.ProgramExternalConnectivity")?;
        let c = format!("brange{di}c");
        let t = timed(|| {
            env.docker(&[
                "run",
                "-d",
                "--name",
                &c,
                "--network",
                &net,
                "-p",
                "20000-20999:20000-20999",
                IMAGE,
                "sleep",
                "600",
            ])
        })?;
        let after = rss_kib(&env);
        let own_after = env.netloomd.pid().map(vm_rss).unwrap_or(0);
        let pec = plugin_time(&env, "NetworkDriver.ProgramExternalConnectivity")? - pec_before;
        let proxies = proxy_count(&env);
        rows.push((d.label, t, after.saturating_sub(before), proxies));
        if di == 1 {
            own = Some((pec * 1000.0, own_after.saturating_sub(own_before)));
        }
        env.docker(&["rm", "-f", &c])?;
        env.docker(&["network", "rm", &net])?;
    }
    let cell = |i: usize| {
        let (_, t, kib, p) = rows[i];
        (
            format!("{t:.0} ms"),
            format!("{:.1} MB", kib as f64 / 1024.0),
            p,
        )
    };
    let (b, n) = (cell(0), cell(1));
    println!("| `docker run -d` time | {} | {} |", b.0, n.0);
    println!(
        "| memory added (dockerd + docker-proxy + netloomd RSS) | {} | {} |",
        b.1, n.1
    );
    println!("| docker-proxy processes | {} | {} |", b.2, n.2);
    if let Some((ms, kib)) = own {
        println!(
            "| netloomd alone: ProgramExternalConnectivity time, RSS added | – | {ms:.1} ms, {kib} KiB |"
        );
    }
    env.clean()?;
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<String, String>) -> Result<f64, String> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Median and 90th percentile.
fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// Resident memory of dockerd, its docker-proxy children and netloomd, in KiB.
fn rss_kib(env: &DockerEnv) -> u64 {
    let mut pids: Vec<u32> = env.dockerd.pid().into_iter().collect();
    pids.extend(env.netloomd.pid());
    pids.extend(proxies(env));
    pids.iter().map(|p| vm_rss(*p)).sum()
}

fn proxy_count(env: &DockerEnv) -> usize {
    proxies(env).len()
}

/// docker-proxy processes whose parent is our dockerd.
fn proxies(env: &DockerEnv) -> Vec<u32> {
    let Some(dockerd) = env.dockerd.pid() else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().any(|l| l == "Name:\tdocker-proxy")
                && status.lines().any(|l| {
                    l.strip_prefix("PPid:\t")
                        .and_then(|p| p.trim().parse().ok())
                        == Some(dockerd)
                })
        })
        .collect()
}

fn vm_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Requests answered and seconds spent, of one plugin method.
type MethodTime = (u64, f64);

/// (count, seconds) per plugin method from netloomd's /metrics.
fn plugin_times(env: &DockerEnv) -> Result<Vec<(String, MethodTime)>, String> {
    let (_, text) = env.netloomd.admin_get("/metrics")?;
    let mut out: std::collections::BTreeMap<String, MethodTime> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("netloom_plugin_request_duration_seconds_") else {
            continue;
        };
        let (kind, rest) = rest.split_once('{').unwrap_or(("", ""));
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(method) = labels
            .strip_prefix("method=\"")
            .and_then(|m| m.split('"').next())
        else {
            continue;
        };
        let e = out.entry(method.to_string()).or_default();
        match kind {
            "count" => e.0 = value.trim().parse().unwrap_or(0),
            "sum" => e.1 = value.trim().parse().unwrap_or(0.0),
            _ => {}
        }
    }
    Ok(out.into_iter().collect())
}

fn plugin_time(env: &DockerEnv, method: &str) -> Result<f64, String> {
    Ok(plugin_times(env)?
        .into_iter()
        .find(|(m, _)| m == method)
        .map(|(_, (_, s))| s)
        .unwrap_or(0.0))
}
