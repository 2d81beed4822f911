//! netloom test harness.
