//! The plugins themselves: each binary in `src/bin/` is `run_process(&Plugin)`.

pub mod bridge;
pub mod context;
pub mod hostlocal;
pub mod ipam;
pub mod ipvlan;
pub mod loopback;
pub mod macvlan;
pub mod mirror;
pub mod portmap;
