//! netloom's CNI protocol library, shared by the plugin binaries (netloom-bridge, netloom-ipam,
//! netloom-portmap, netloom-loopback, netloom-macvlan, netloom-ipvlan, netloom-dns).
//!
//! A binary implements [`skel::Plugin`] and calls [`skel::run_process`]; everything about the
//! protocol lives here:
//! - [`env`](mod@env): the `CNI_*` variables, parsed from an injected getter, with per-command rules.
//! - [`version`]: supported spec versions (0.3.0–1.1.0), negotiation, the VERSION reply.
//! - [`config`]: the network configuration on stdin (runtimeConfig, prevResult, GC lists).
//! - [`result`]: a version-independent ADD result, rendered and parsed in every version.
//! - [`error`]: error replies and the code table (spec codes 1–51, netloom's from 100).
//! - [`skel`]: the dispatcher.
//!
//! Behaviour follows what real runtimes send (podman 4.3, containerd's go-cni, cnitool),
//! recorded under `tests/fixtures/`.

pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod skel;
pub mod version;

pub use config::{NetConf, PrevResult, RequestedIp, RuntimeConfig};
pub use env::{CniArgs, CniEnv, Command};
pub use error::CniError;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{run, run_process, GcRequest, Plugin, Request, StatusRequest};
pub use version::CniVersion;

pub mod plugins;
