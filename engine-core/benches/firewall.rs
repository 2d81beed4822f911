//! Firewall benchmark (not a timed test): what publishing ports costs as endpoints pile up.
//!
//! `cargo bench -p engine-core --bench firewall` (as root). Everything happens inside a
//! throwaway network namespace, removed at the end. Prints, for the nftables backend:
//! - the cost of adding one endpoint with 2 published ports when 1, 100 and 500 endpoints
//!   already exist (median of a window of adds around that count), and of removing one;
//! - publishing a 1000-port range (one interval element);
//! - check and reapply of the whole ruleset at 500 endpoints.
//!
//! Optional: `NETLOOM_BENCH_IPTABLES=1` runs the same adds on the iptables backend.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use engine_core::firewall::{
    EndpointRules, Firewaller, IptablesFirewall, NetworkRules, NftFirewall,
};
use engine_core::netns::Netns;
use engine_core::{PortMapping, Proto};

const COUNTS: [usize; 3] = [1, 100, 500];
/// Under `cargo test --all-targets` (no `--bench` argument) only a quick smoke run.
const SMOKE_COUNTS: [usize; 2] = [1, 12];
/// Adds measured around each count (the median is reported).
const WINDOW: usize = 9;

fn main() {
    if !engine_core::netns::can_create() {
        eprintln!("firewall bench: skipped, needs root to create a network namespace");
        return;
    }
    let name = format!("nlbench{}", std::process::id());
    let ns = match Netns::create_named(&name) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("firewall bench: cannot create a namespace: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "netloom firewall benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let nft = match NftFirewall::in_netns(reopen(&ns)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("nftables unavailable: {e}");
            std::process::exit(1);
        }
    };
    let nsp = ns.path().to_path_buf();
    let cold = move || -> Result<Box<dyn Firewaller>, String> {
        let ns = Netns::open(&nsp).map_err(|e| e.to_string())?;
        Ok(Box::new(
            NftFirewall::in_netns(ns).map_err(|e| e.to_string())?,
        ))
    };
    if let Err(e) = run("nftables", &nft, &cold) {
        eprintln!("nftables bench failed: {e}");
        std::process::exit(1);
    }
    if std::env::var("NETLOOM_BENCH_IPTABLES").is_ok_and(|v| v == "1") {
        let name = format!("nlbenchipt{}", std::process::id());
        match Netns::create_named(&name).and_then(|ns| {
            let p = ns.path().to_path_buf();
            Ok((IptablesFirewall::in_netns(Netns::open(&p)?)?, ns, p))
        }) {
            Ok((ipt, _ns, p)) => {
                let cold = move || -> Result<Box<dyn Firewaller>, String> {
                    let ns = Netns::open(&p).map_err(|e| e.to_string())?;
                    Ok(Box::new(
                        IptablesFirewall::in_netns(ns).map_err(|e| e.to_string())?,
                    ))
                };
                if let Err(e) = run("iptables", &ipt, &cold) {
                    eprintln!("iptables bench failed: {e}");
                }
            }
            Err(e) => eprintln!("iptables unavailable: {e}"),
        }
    }
}

fn reopen(ns: &Netns) -> Netns {
    Netns::open(ns.path()).unwrap_or_else(|e| {
        eprintln!("reopen namespace: {e}");
        std::process::exit(1)
    })
}

fn network() -> NetworkRules {
    NetworkRules {
        network_id: "bench".into(),
        interface: "nlbench0".into(),
        subnets: vec!["10.77.0.0/16".parse().unwrap_or_else(|_| unreachable!())],
        masquerade: true,
        icc: true,
        internal: false,
        isolate: true,
        open_inbound: false,
    }
}

fn endpoint(i: usize) -> EndpointRules {
    let a = Ipv4Addr::new(10, 77, (i / 250) as u8, (i % 250) as u8 + 2);
    let p = 10_000 + 2 * i as u16;
    let m = |h: u16, c: u16| PortMapping {
        proto: Proto::Tcp,
        host_ip: None,
        host_port: h,
        host_port_end: h,
        container_port: c,
    };
    EndpointRules {
        network_id: "bench".into(),
        owner: format!("c{i}/eth0"),
        addresses: vec![IpAddr::V4(a)],
        ports: vec![m(p, 80), m(p + 1, 443)],
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Makes a fresh firewall instance (what each CNI invocation does: nothing cached).
type Cold<'a> = &'a dyn Fn() -> Result<Box<dyn Firewaller>, String>;

fn run(label: &str, fw: &dyn Firewaller, cold: Cold<'_>) -> Result<(), String> {
    let net = network();
    let t = Instant::now();
    fw.setup_network(&net).map_err(|e| e.to_string())?;
    println!("[{label}] setup_network: {}", ms(t.elapsed()));
    let mut added = 0usize;
    let mut results = Vec::new();
    let counts: &[usize] = if std::env::args().any(|a| a == "--bench") {
        &COUNTS
    } else {
        &SMOKE_COUNTS
    };
    let max = *counts.iter().max().unwrap_or(&1);
    for &n in counts {
        // Grow to just below n, then time a window of adds centred on it.
        let start = n.saturating_sub(WINDOW / 2 + 1);
        while added < start {
            fw.add_endpoint(&net, &endpoint(added))
                .map_err(|e| e.to_string())?;
            added += 1;
        }
        let mut times = Vec::new();
        let stop = (n + WINDOW / 2).min(max + WINDOW).max(added + 1);
        while added < stop {
            let ep = endpoint(added);
            let t = Instant::now();
            fw.add_endpoint(&net, &ep).map_err(|e| e.to_string())?;
            times.push(t.elapsed());
            added += 1;
        }
        // The same from a fresh instance (new socket, full read of the ruleset).
        let mut cold_times = Vec::new();
        for _ in 0..3 {
            let ep = endpoint(added);
            let t = Instant::now();
            cold()?.add_endpoint(&net, &ep).map_err(|e| e.to_string())?;
            cold_times.push(t.elapsed());
            added += 1;
        }
        results.push((n, median(times), median(cold_times)));
    }
    for (n, d, c) in &results {
        println!(
            "[{label}] add_endpoint (2 ports) with ~{n:>3} endpoints present: {} (fresh instance, as one CNI call: {})",
            ms(*d),
            ms(*c)
        );
    }
    if let (Some((_, first, cfirst)), Some((_, last, clast))) = (results.first(), results.last()) {
        println!(
            "[{label}] growth first -> last count: {:.2}x (fresh instance: {:.2}x)",
            last.as_secs_f64() / first.as_secs_f64().max(1e-9),
            clast.as_secs_f64() / cfirst.as_secs_f64().max(1e-9)
        );
    }
    let mut dels = Vec::new();
    for i in (added - WINDOW)..added {
        let t = Instant::now();
        fw.del_endpoint(&net, &endpoint(i))
            .map_err(|e| e.to_string())?;
        dels.push(t.elapsed());
    }
    added -= WINDOW;
    println!(
        "[{label}] del_endpoint with ~{added} endpoints present: {}",
        ms(median(dels))
    );
    let eps: Vec<EndpointRules> = (0..added).map(endpoint).collect();
    let t = Instant::now();
    let drift = fw.check(&net, &eps).map_err(|e| e.to_string())?;
    println!(
        "[{label}] check of {added} endpoints: {} ({} drift)",
        ms(t.elapsed()),
        drift.len()
    );
    let t = Instant::now();
    fw.reapply(std::slice::from_ref(&net), &eps)
        .map_err(|e| e.to_string())?;
    println!(
        "[{label}] reapply (nothing missing) of {added} endpoints: {}",
        ms(t.elapsed())
    );
    let range = EndpointRules {
        network_id: "bench".into(),
        owner: "range/eth0".into(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 77, 200, 2))],
        ports: vec![PortMapping::new(Proto::Tcp, None, (40_000, 40_999), 40_000)
            .map_err(|e| e.to_string())?],
    };
    let t = Instant::now();
    fw.add_endpoint(&net, &range).map_err(|e| e.to_string())?;
    println!("[{label}] publish a 1000-port range: {}", ms(t.elapsed()));
    let t = Instant::now();
    fw.teardown_network("bench").map_err(|e| e.to_string())?;
    println!(
        "[{label}] teardown_network with {} endpoints: {}",
        added + 1,
        ms(t.elapsed())
    );
    Ok(())
}
