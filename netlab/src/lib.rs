//! netlab: see, enter, probe, capture and diagnose container networks.
//!
//! The binary (`src/main.rs`) is a thin clap front; everything it shows is computed here so the
//! integration tests and the benchmark call the same code.
//!
//! - [`discover`]: every network namespace on the host (/run/netns, /proc, Docker, netloom's
//!   state, CNI results), deduplicated by inode.
//! - [`target`]: turns a TARGET argument into a namespace, with suggestions when unknown.
//! - [`inventory`]: interfaces, addresses, default routes and veth peers of each namespace
//!   (`netlab ls`), one netlink socket per namespace.
//! - [`topo`]: the same data as a graph (text, Graphviz DOT, JSON).
//! - [`doctor`]: host checks with a verdict and a fix each ([`overlay`]: VXLAN offload and MTU,
//!   route conflicts, missing NAT).
//! - [`capture`]: packets inside a namespace, as pcap or one line each; [`bpf`] compiles its
//!   `--filter` (a tcpdump subset) to classic BPF.
//! - [`probe`]: real traffic from a namespace, its latency, and on failure the likely cause.
//! - [`trace`]: the path a packet takes across namespaces, from the kernels' state.
//! - [`lab`]: declarative labs (TOML) built with engine-core and removed exactly.
//! - [`nft`]: a namespace's nftables ruleset and a matcher for one packet.
//!
//! Everything but [`capture`] (its socket) and [`lab`] only reads.

pub mod bpf;
pub mod capture;
pub mod cli;
pub mod discover;
pub mod docker;
pub mod doctor;
pub mod error;
pub mod inventory;
pub mod lab;
pub mod nft;
pub mod nsid;
pub mod overlay;
pub mod ports;
pub mod probe;
pub mod render;
pub mod target;
pub mod topo;
pub mod trace;

pub use error::{Error, Result};
