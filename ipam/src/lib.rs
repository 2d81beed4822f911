//! netloom's address management: the [`engine_core::ipam::Ipam`] contract over the state store.
//!
//! - [`allocator`]: the pure part. Validates a range set (host-local's rules) and picks the next
//!   free address after the last one handed out, in `u128` arithmetic so IPv6 ranges of any size
//!   cost the same.
//! - [`defaults`]: default pools (Docker's `default-address-pools`) and the choice of a free
//!   subnet among them.
//! - [`StoreIpam`]: pools and leases persisted in a [`engine_core::StateStore`], safe for many
//!   processes at once and against kill -9 at any point. See README.md for the layout.
//!
//! Errors are [`engine_core::Error`]: this crate implements an engine-core contract, and callers
//! map failures by [`engine_core::ErrorKind`] (Conflict, Exhausted, InvalidConfig, NotFound…).

pub mod allocator;
pub mod defaults;
mod store_ipam;

pub use defaults::{DefaultPool, DefaultPools, DEFAULT_V6_BASE};
pub use store_ipam::{layout, no_host_routes, RouteProvider, StoreIpam};
