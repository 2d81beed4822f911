//! netloom's embedded DNS: containers find each other by name on their network.
//!
//! - [`registry`]: who is registered (state store keys under `dns/`), written by the
//!   `netloom-dns` CNI plugin, read by the server. No hickory types cross this API.
//! - [`launcher`] and [`control`]: the plugin's side — tell the server to reload, start one if
//!   none runs.
//! - [`server`]: `netloom-dnsd` itself — [`listen`] (UDP+TCP on gateway addresses, served by
//!   hickory-server), [`handler`] (its request handler), [`answer`] (names scoped by the
//!   asker's network), [`forward`] + [`cache`] (raced upstreams), [`metrics`].
//! - [`testupstream`]: a stand-in upstream for tests and benchmarks.

pub mod answer;
pub mod cache;
pub mod control;
pub mod error;
pub mod forward;
pub mod handler;
pub mod launcher;
pub mod listen;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod table;
pub mod testupstream;
pub mod upstreams;

pub use error::{Error, Result};
pub use registry::{NetworkEntry, RecordEntry, Registry, DEFAULT_DOMAIN};
