//! host-local's on-disk view of the leases, kept beside netloom's store.
//!
//! Tools and scripts read `<dataDir>/<network>/<ip>` (content `<container id>\r\n<ifname>`) to
//! see which addresses are in use — kubelet's old dockershim did, as do many debugging recipes.
//! netloom's leases live in its own store; this mirror keeps that well-known layout true so
//! netloom-ipam is a drop-in for host-local. It is a *view*: written after a lease is granted,
//! removed after it is released, re-synced by GC; failures are logged, never fatal.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use engine_core::AttachmentKey;

/// host-local's default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The mirror directory of one network.
#[derive(Debug, Clone)]
pub struct Mirror {
    dir: PathBuf,
}

impl Mirror {
    pub fn new(data_dir: Option<&Path>, network: &str) -> Mirror {
        let base = data_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        Mirror {
            dir: base.join(network),
        }
    }

    /// Records `ips` as held by `key`.
    pub fn add(&self, key: &AttachmentKey, ips: &[IpAddr]) {
        if let Err(e) = fs::create_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot create host-local lease directory");
            return;
        }
        for ip in ips {
            let body = format!("{}\r\n{}", key.container_id, key.ifname);
            if let Err(e) = fs::write(self.dir.join(ip.to_string()), body) {
                tracing::warn!(ip = %ip, error = %e, "cannot write host-local lease file");
            }
        }
        if let Some(last) = ips.iter().find(|i| i.is_ipv4()).or(ips.first()) {
            let _ = fs::write(self.dir.join("last_reserved_ip.0"), last.to_string());
        }
    }

    /// Removes every file held by `key`.
    pub fn remove_owner(&self, key: &AttachmentKey) {
        self.retain_where(|_, owner| {
            owner != Some((key.container_id.as_str(), key.ifname.as_str()))
        });
    }

    /// Removes every file whose address is not in `leased`.
    pub fn retain(&self, leased: &[IpAddr]) {
        self.retain_where(|ip, _| leased.contains(&ip));
    }

    fn retain_where(&self, keep: impl Fn(IpAddr, Option<(&str, &str)>) -> bool) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let body = fs::read_to_string(e.path()).unwrap_or_default();
            let mut lines = body.split("\r\n").map(str::trim);
            let owner = match (lines.next(), lines.next()) {
                (Some(c), Some(i)) => Some((c, i)),
                _ => None,
            };
            if !keep(ip, owner) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_and_retain() {
        let base = std::env::temp_dir().join(format!("netloom-mirror-test-{}", std::process::id()));
        let m = Mirror::new(Some(&base), "net1");
        let a = AttachmentKey::new("ca", "eth0").unwrap();
        let b = AttachmentKey::new("cb", "eth0").unwrap();
        let (ia, ib): (IpAddr, IpAddr) = ("10.1.0.2".parse().unwrap(), "10.1.0.3".parse().unwrap());
        m.add(&a, &[ia]);
        m.add(&b, &[ib]);
        assert_eq!(
            fs::read_to_string(base.join("net1/10.1.0.2")).unwrap(),
            "ca\r\neth0"
        );
        m.remove_owner(&a);
        assert!(!base.join("net1/10.1.0.2").exists());
        assert!(base.join("net1/10.1.0.3").exists());
        m.retain(&[]);
        assert!(!base.join("net1/10.1.0.3").exists());
        assert!(base.join("net1/last_reserved_ip.0").exists());
        fs::remove_dir_all(base).unwrap();
    }
}
