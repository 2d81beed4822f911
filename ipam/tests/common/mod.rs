//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use engine_core::ipam::{PoolRequest, RangeSpec};
use engine_core::store::file::FileStore;
use engine_core::StateStore;
use ipam::{RouteProvider, StoreIpam};
use ipnetwork::IpNetwork;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "netloom-ipam-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn store_at(dir: &std::path::Path) -> Arc<dyn StateStore> {
    Arc::new(FileStore::open(dir).unwrap())
}

pub fn routes(list: &[&str]) -> RouteProvider {
    let nets: Vec<IpNetwork> = list.iter().map(|s| s.parse().unwrap()).collect();
    Box::new(move || Ok(nets.clone()))
}

/// A fresh IPAM over its own store with the given host routes.
pub fn ipam(tag: &str, host_routes: &[&str]) -> (StoreIpam, TempDir) {
    let d = TempDir::new(tag);
    (StoreIpam::new(store_at(&d.0), routes(host_routes)), d)
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn range(
    subnet: &str,
    start: Option<&str>,
    end: Option<&str>,
    gateway: Option<&str>,
) -> RangeSpec {
    RangeSpec {
        subnet: subnet.parse().unwrap(),
        start: start.map(ip),
        end: end.map(ip),
        gateway: gateway.map(ip),
    }
}

pub fn pool_req(id: Option<&str>, ranges: Vec<RangeSpec>) -> PoolRequest {
    PoolRequest {
        id: id.map(str::to_string),
        ranges,
        ..Default::default()
    }
}
