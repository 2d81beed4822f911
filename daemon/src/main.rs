//! netloomd's entry point: flags and config, logging, the runtime.

use std::process::ExitCode;

use clap::Parser;
use daemon::config::{Cli, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netloomd: {e:#}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level).unwrap_or_else(|e| {
        eprintln!(
            "netloomd: --log-level {:?}: {e}; using info",
            settings.log_level
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // A handful of workers is plenty: handlers mostly wait on blocking engine calls, which run
    // on tokio's separate blocking pool.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netloomd: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("netloomd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
