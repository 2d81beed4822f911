//! engine-core: netloom's model, contracts and kernel primitives.
//!
//! - [`model`]: networks, endpoints, sandboxes, port mappings.
//! - Contracts implemented elsewhere: [`driver::Driver`], [`ipam::Ipam`],
//!   [`store::StateStore`], [`firewall::Firewaller`].
//! - [`store::file::FileStore`]: the embedded, multi-process state store.
//! - [`netns`]: the only place that switches network namespaces.
//! - [`netlink`]: typed rtnetlink access (links, addresses, routes, neighbours, sysctls).
//! - [`journal`]: the undo journal that makes multi-step operations crash-safe.

pub(crate) mod after_exit;
pub mod driver;
pub mod engine;
pub mod error;
pub mod firewall;
pub mod ipam;
pub mod journal;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod reaper;
pub mod sandbox;
pub mod store;

pub use error::{Error, ErrorKind, Result, ResultExt};
pub use model::*;
pub use store::{
    Expect, Key, LeaseGuard, PutOutcome, StateStore, StateStoreExt, Versioned, WatchEvent, Watcher,
};
