//! The etcd store against a real etcd (Debian's etcd-server) started by each test.

use std::time::Duration;

use tests::etcd::Etcd;
use tests::{run_main, Cap, FakeHost, Suite};

const ETCD: &[Cap] = &[Cap::Etcd];

fn main() {
    let mut s = Suite::new();
    s.test(
        "etcd::fixture_starts_stops_and_restarts",
        &[Cap::Root, Cap::Etcd],
        fixture_starts_stops_and_restarts,
    );
    let _ = ETCD;
    run_main(s)
}

/// The fixture itself: on loopback, inside a fake host on its address, stop and start again.
fn fixture_starts_stops_and_restarts() -> Result<(), String> {
    let mut e = Etcd::start(None)?;
    if !e.url().starts_with("etcd://127.0.0.1:") {
        return Err(format!("unexpected url {}", e.url()));
    }
    e.stop()?;
    e.start_again()?;
    let host = FakeHost::new("etcdfx")?;
    host.sh(&["ip", "link", "add", "nlfx0", "type", "bridge"])?;
    host.sh(&["ip", "addr", "add", "10.251.0.1/24", "dev", "nlfx0"])?;
    host.sh(&["ip", "link", "set", "nlfx0", "up"])?;
    let mut inner = Etcd::start(Some(host.netns().path()))?;
    if inner.url()
        != format!(
            "etcd://10.251.0.1:{}",
            inner.url().rsplit(':').next().unwrap_or("")
        )
    {
        return Err(format!("unexpected url {}", inner.url()));
    }
    inner.stop()?;
    std::thread::sleep(Duration::from_millis(10));
    inner.start_again()?;
    Ok(())
}
