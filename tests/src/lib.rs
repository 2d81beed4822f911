//! netloom's integration test harness: the real kernel, no mocks.
//!
//! - [`caps`]: probes what this machine can do (root, nftables, iptables, link kinds, dockerd,
//!   etcd). A test that needs something missing is reported as *ignored* with the reason, never
//!   as passed; under `NETLOOM_TEST_STRICT=1` (CI) a missing capability this machine is expected
//!   to have fails the test instead.
//! - [`FakeHost`]: a private network namespace per test in which the product runs as if on the
//!   host, plus container namespaces; everything is removed on drop, also when the test fails.
//! - [`names`]: per-run prefixes and per-test subnets so tests run in parallel.
//! - [`sweep`]: the final check that nothing with this run's prefix was left behind.

pub mod caps;
pub mod cni;
pub mod docker;
pub mod etcd;
pub mod fakehost;
pub mod image;
pub mod names;
pub mod overlay;
pub mod podman;
pub mod sweep;
pub mod trial;

pub use caps::{Cap, Caps};
pub use fakehost::FakeHost;
pub use trial::{run_main, Suite};
