//! The one sysctl the firewall owns: `route_localnet` on a network's bridge.
//!
//! A port published on 127.0.0.1 is DNATed from the host's loopback to a container, which the
//! kernel only routes when the *outgoing* interface has route_localnet=1. It is set on the
//! bridge alone (never `all`), and the `guard` chain drops 127.0.0.0/8 arriving on any other
//! interface, so LAN hosts cannot use it (moby#45610).
//!
//! Set through netlink (`IFLA_INET_CONF`), which works where /proc/sys is mounted read-only
//! (Docker runs managed plugins that way); read back through /proc/sys from a thread inside the
//! firewall's namespace (/proc/sys/net follows the namespace of the thread that opens it).
//! Never by running `sysctl`.

use std::io::ErrorKind;

use tracing::warn;

use crate::error::{Error, Result};
use crate::model::{validate_ifname, Drift};
use crate::netlink::Netlink;
use crate::netns::Netns;

fn path(ifname: &str) -> Result<String> {
    validate_ifname(ifname)?;
    Ok(format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet"))
}

/// Sets route_localnet=1 on `ifname` inside `ns`. A missing interface is only a warning: the
/// rules are name-based and work once it appears, except for 127.0.0.1 publishing.
pub fn enable_route_localnet(ns: &Netns, ifname: &str) -> Result<()> {
    validate_ifname(ifname)?;
    let nl = Netlink::in_netns(ns)?;
    match nl.enable_route_localnet(ifname) {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENODEV) => {
            warn!(interface = ifname, "interface does not exist yet; ports published on 127.0.0.1 will not work until the firewall is reapplied");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Reports route_localnet not being 1 on an existing `ifname`.
pub fn check_route_localnet(ns: &Netns, ifname: &str) -> Result<Vec<Drift>> {
    let p = path(ifname)?;
    match ns.run(|| std::fs::read_to_string(&p))? {
        Ok(v) if v.trim() == "1" => Ok(Vec::new()),
        Ok(v) => Ok(vec![Drift {
            subject: format!("sysctl net.ipv4.conf.{ifname}.route_localnet"),
            problem: format!(
                "is {}, expected 1 (ports published on 127.0.0.1 are unreachable)",
                v.trim()
            ),
        }]),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("read {p} in {}", ns.path().display()), e)),
    }
}
