//! Names and subnets unique to this test process and test.

use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// Every namespace, state dir or root-visible object this run makes starts with this prefix,
/// which is how the final sweep finds leftovers.
pub fn run_prefix() -> String {
    format!("nlt{}", std::process::id())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh number for this process.
pub fn next() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A unique name with the run prefix: `nlt<pid>-<tag>-<n>`.
pub fn unique(tag: &str) -> String {
    format!("{}-{tag}-{}", run_prefix(), next())
}

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// A /24 from 10.200.0.0/13 unique within this process (second octet from the pid so two test
/// processes on one machine rarely meet; tests run in their own namespaces anyway).
pub fn subnet_v4() -> Ipv4Network {
    let n = SUBNET.fetch_add(1, Ordering::Relaxed);
    let second = 200 + (std::process::id() % 8) as u8;
    let third = (n % 256) as u8;
    Ipv4Network::new([10, second, third, 0].into(), 24).expect("a /24 is valid")
}

/// A /64 from fd4e:6c00::/32 (ULA), unique within this process.
pub fn subnet_v6() -> Ipv6Network {
    let n = SUBNET.fetch_add(1, Ordering::Relaxed);
    let pid = (std::process::id() & 0xffff) as u16;
    let addr = std::net::Ipv6Addr::new(0xfd4e, 0x6c00, pid, n as u16, 0, 0, 0, 0);
    Ipv6Network::new(addr, 64).expect("a /64 is valid")
}
