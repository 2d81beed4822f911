//! netloom-dnsd: the DNS server for container names (see the dns crate and README "DNS").
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netloom-dnsd",
    about = "netloom's DNS server for container names"
)]
struct Cli {
    /// The state directory whose registry to serve (NETLOOM_STATE_DIR, else /var/lib/netloom).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Port to listen on at every gateway address.
    #[arg(long, default_value_t = 53)]
    port: u16,
    /// Milliseconds to linger with no DNS-enabled network before exiting.
    #[arg(long, default_value_t = 2000)]
    grace_ms: u64,
    /// Milliseconds a forwarded query may take in total before SERVFAIL.
    #[arg(long, default_value_t = 1000)]
    forward_timeout_ms: u64,
    /// Threads serving queries (default: NETLOOM_DNSD_THREADS, else two per core, 2 to 4).
    #[arg(long)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the running server's metrics (Prometheus text).
    Metrics,
    /// Ask the running server to re-read the registry.
    Reload,
    /// A stand-in upstream for tests and benchmarks (the `test.` zone; see the crate docs).
    #[command(hide = true)]
    TestUpstream {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        mute: bool,
    },
}

fn main() {
    let wanted = std::env::var("NETLOOM_DNS_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&wanted)
        .ok()
        .filter(|_| !wanted.is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // hickory-server logs every request at info: only when asked for by name.
    if !wanted.contains("hickory") {
        for quiet in ["hickory_server=warn", "hickory_proto=warn"] {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let cli = Cli::parse();
    let state_dir = cli
        .state_dir
        .unwrap_or_else(engine_core::store::default_state_dir);
    let reg = || dns::Registry::open(&state_dir);
    let outcome = match cli.cmd {
        None => dns::server::run(dns::server::Options {
            state_dir: state_dir.clone(),
            port: cli.port,
            grace: Duration::from_millis(cli.grace_ms),
            forward_timeout: Duration::from_millis(cli.forward_timeout_ms),
            threads: cli
                .threads
                .or_else(|| std::env::var("NETLOOM_DNSD_THREADS").ok()?.parse().ok())
                .unwrap_or_else(default_threads),
        }),
        Some(Cmd::Metrics) => reg().and_then(|r| {
            dns::control::request(&r.control_socket(), "metrics", Duration::from_secs(5))
                .map(|m| println!("{m}"))
        }),
        Some(Cmd::Reload) => reg().and_then(|r| dns::control::reload(&r.control_socket())),
        Some(Cmd::TestUpstream { listen, mute }) => dns::testupstream::run(listen, mute),
    };
    if let Err(e) = outcome {
        eprintln!("netloom-dnsd: {e}");
        std::process::exit(1);
    }
}

/// Two serving threads per core, at least 2 and at most 4: on a busy host a serving thread
/// that the scheduler preempts leaves its share of askers (SO_REUSEPORT spreads them by source)
/// waiting, and a second one per core keeps answering; measured on 2 cores under load, 4
/// threads answered 1.2-1.5x the queries of 2 (README, DNS benchmark).
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| (2 * n.get()).clamp(2, 4))
}
