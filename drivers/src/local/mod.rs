//! The two drivers that make no links: `none` (the container gets only its loopback) and `host`
//! (the container shares the host's namespace). They exist so that every kind of network a
//! runtime knows goes through the same engine — records, locks, the journal, CHECK — and so
//! netlab labs and front doors can name them like any other driver.

mod host;
mod none;

pub use host::HostDriver;
pub use none::NoneDriver;

use engine_core::driver::{Capabilities, Handoff};
use engine_core::{Error, NetworkSpec, Options, Result};

/// What both drivers advertise: local, no addresses, no ports, no interface in the sandbox.
fn capabilities() -> Capabilities {
    Capabilities {
        scope: "local".into(),
        supports_ipv6: false,
        supports_port_mapping: false,
        max_endpoints: None,
        no_interface: true,
    }
}

/// Neither driver has addresses or options to give: a spec with either is a mistake the user
/// should hear about rather than see ignored.
fn validate(driver: &str, what: &str, spec: &NetworkSpec) -> Result<Options> {
    if let Some(s) = spec.subnets.first() {
        return Err(Error::InvalidConfig(format!(
            "network {}: the {driver} driver gives containers {what}, so it takes no subnet ({} given)",
            spec.name, s.subnet
        )));
    }
    if let Some(k) = spec.options.keys().next() {
        return Err(Error::InvalidConfig(format!(
            "network {}: the {driver} driver has no options ({k:?} given)",
            spec.name
        )));
    }
    Ok(Options::new())
}

/// No link goes to the sandbox.
fn no_link() -> Handoff {
    Handoff {
        link: String::new(),
        mac: None,
        host_end: None,
        placed: false,
        host_interfaces: Vec::new(),
    }
}
