//! netloom's network drivers. Each implements [`engine_core::driver::Driver`] and knows nothing
//! of the front doors: options arrive normalised (see each driver's `options` module), addresses
//! arrive leased.

pub mod bridge;
pub mod local;
pub mod naming;
pub mod overlay;
pub mod vlan;

use std::sync::Arc;

use engine_core::engine::DriverRegistry;

/// Registers every driver this build has.
pub fn register_all(registry: &mut DriverRegistry) {
    registry.register(Arc::new(bridge::BridgeDriver));
    registry.register(Arc::new(vlan::VlanDriver::macvlan()));
    registry.register(Arc::new(vlan::VlanDriver::ipvlan()));
    registry.register(Arc::new(overlay::OverlayDriver));
    registry.register(Arc::new(local::NoneDriver));
    registry.register(Arc::new(local::HostDriver));
}

/// A registry with every driver.
pub fn registry() -> DriverRegistry {
    let mut r = DriverRegistry::default();
    register_all(&mut r);
    r
}
