//! netloom drivers.
