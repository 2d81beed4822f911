//! netloomd: Docker's remote NetworkDriver and IpamDriver plugin protocols over netloom's engine.
//!
//! - [`docker_api`]: the protocol's wire structs.
//! - [`translate`]: Docker's option spellings, addresses and port bindings → netloom's model.
//! - [`service`]: one synchronous method per protocol call, over the engine; [`addresses`]:
//!   the addresses each Docker network's endpoints hold.
//! - [`records`]: what the Docker front door stores beside the engine's records.
//! - [`reconcile`]: startup recovery after a crash or reboot; [`firewall_guard`]: puts the
//!   firewall rules back when someone else removes them.
//! - [`http`]: axum routers (plugin sockets, admin API); [`server`]: unix sockets.
//! - [`workers`]: the long-lived threads engine work runs on.
//! - [`metrics`], [`config`], [`fault`] (test-only crash points).

pub mod addresses;
pub mod config;
pub mod docker_api;
pub mod fault;
pub mod firewall_guard;
pub mod http;
pub mod metrics;
pub mod overlay;
pub mod reconcile;
pub mod records;
pub mod run;
pub mod server;
pub mod service;
pub mod translate;
pub mod workers;

#[cfg(test)]
mod tests;
