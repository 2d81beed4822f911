//! Who is registered: the DNS view of each network and one record per container attachment,
//! kept in the state store so the CNI plugin (short-lived) and the server (long-lived) share it.
//!
//! Keys: `dns/networks/<network>` → [`NetworkEntry`],
//! `dns/records/<network>/<container id>/<ifname>` → [`RecordEntry`].
//! Writers take the per-network lock `dns-net-<network>` so a DEL that removes a network's
//! last record cannot race an ADD that registers a new one.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine_core::store::file::FileStore;
use engine_core::{Expect, Key, StateStore, StateStoreExt};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The search domain when the configuration names none.
pub const DEFAULT_DOMAIN: &str = "dns.netloom";

/// How long a writer waits for another writer of the same network.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// One DNS-enabled network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEntry {
    pub name: String,
    /// Askers whose source address is in one of these get this network's names.
    pub subnets: Vec<IpNetwork>,
    /// Where the server listens for this network (port 53, UDP and TCP).
    pub gateways: Vec<IpAddr>,
    /// The search domain, lower case, without dots at either end.
    pub domain: String,
    /// Upstream resolvers for forwarded names; empty means the host's.
    pub upstreams: Vec<SocketAddr>,
}

/// One container attachment's names and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// Lower case; the first is the primary name (PTR answers use it).
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// Checks and lower-cases a DNS name given by a runtime (container name, alias, domain).
/// Underscores are allowed: runtimes generate names like `suspicious_curie`.
pub fn normalize_name(name: &str) -> Result<String> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| Err(Error::InvalidName(format!("DNS name {name:?} {why}")));
    if n.is_empty() {
        return bad("is empty");
    }
    if n.len() > 253 {
        return bad("is longer than 253 characters");
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("has an empty label or one longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("may contain only letters, digits, '-', '_' and dots");
        }
    }
    Ok(n)
}

/// Parses an upstream as `ip` or `ip:port` / `[v6]:port` (port 53 by default).
pub fn parse_upstream(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        Error::InvalidConfig(format!(
            "upstream {s:?} is not an address (use 192.0.2.53, 192.0.2.53:5353 or [2001:db8::53]:53)"
        ))
    })
}

fn network_key(net: &str) -> Key {
    Key::new(["dns", "networks", net])
}

fn records_prefix(net: &str) -> Key {
    Key::new(["dns", "records", net])
}

fn record_key(net: &str, container_id: &str, ifname: &str) -> Key {
    Key::new(["dns", "records", net, container_id, ifname])
}

/// The registry in one state directory.
#[derive(Clone)]
pub struct Registry {
    dir: PathBuf,
    store: Arc<dyn StateStore>,
}

impl Registry {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Registry {
            dir: dir.to_path_buf(),
            store: Arc::new(FileStore::open(dir)?),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// `<state>/dns`: the server's control socket, pid file and log.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("dns")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir().join("control.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.runtime_dir().join("server.pid")
    }

    pub fn log_file(&self) -> PathBuf {
        self.runtime_dir().join("server.log")
    }

    fn net_lock(&self, net: &str) -> Result<Box<dyn engine_core::store::LockGuard>> {
        Ok(self.store.lock(&format!("dns-net-{net}"), LOCK_WAIT)?)
    }

    /// Registers `rec` on `net`, creating the network entry or widening it with new subnets and
    /// gateways (domain and upstreams follow the latest configuration).
    pub fn register(&self, net: &NetworkEntry, rec: &RecordEntry) -> Result<()> {
        let _g = self.net_lock(&net.name)?;
        let mut merged = net.clone();
        if let Some((_, old)) = self
            .store
            .get_json::<NetworkEntry>(&network_key(&net.name))?
        {
            for s in old.subnets {
                if !merged.subnets.contains(&s) {
                    merged.subnets.push(s);
                }
            }
            for g in old.gateways {
                if !merged.gateways.contains(&g) {
                    merged.gateways.push(g);
                }
            }
        }
        self.store
            .put_json(&network_key(&net.name), &merged, Expect::Any)?;
        self.store.put_json(
            &record_key(&net.name, &rec.container_id, &rec.ifname),
            rec,
            Expect::Any,
        )?;
        Ok(())
    }

    pub fn record(
        &self,
        net: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<RecordEntry>> {
        Ok(self
            .store
            .get_json(&record_key(net, container_id, ifname))?
            .map(|(_, r)| r))
    }

    /// Removes one attachment's record; the network entry goes with its last record. Returns
    /// whether anything was removed.
    pub fn unregister(&self, net: &str, container_id: &str, ifname: &str) -> Result<bool> {
        let _g = self.net_lock(net)?;
        let key = record_key(net, container_id, ifname);
        let had = self.store.get(&key)?.is_some();
        self.store.delete(&key, Expect::Any)?;
        self.drop_network_if_empty(net)?;
        Ok(had)
    }

    /// Removes the records of `net` whose attachment `keep` rejects; returns how many went.
    pub fn gc(&self, net: &str, keep: impl Fn(&str, &str) -> bool) -> Result<usize> {
        let _g = self.net_lock(net)?;
        let mut removed = 0;
        for (key, _, rec) in self.store.list_json::<RecordEntry>(&records_prefix(net))? {
            if !keep(&rec.container_id, &rec.ifname) {
                self.store.delete(&key, Expect::Any)?;
                removed += 1;
            }
        }
        self.drop_network_if_empty(net)?;
        Ok(removed)
    }

    fn drop_network_if_empty(&self, net: &str) -> Result<()> {
        if self.store.list(&records_prefix(net))?.is_empty() {
            self.store.delete(&network_key(net), Expect::Any)?;
        }
        Ok(())
    }

    /// Every network and record, for the server's table.
    pub fn snapshot(&self) -> Result<(Vec<NetworkEntry>, Vec<RecordEntry>)> {
        let nets = self
            .store
            .list_json::<NetworkEntry>(&Key::new(["dns", "networks"]))?
            .into_iter()
            .map(|(_, _, n)| n)
            .collect();
        let recs = self
            .store
            .list_json::<RecordEntry>(&Key::new(["dns", "records"]))?
            .into_iter()
            .map(|(_, _, r)| r)
            .collect();
        Ok((nets, recs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_lowered() {
        assert_eq!(normalize_name("Web_1.").unwrap(), "web_1");
        assert_eq!(normalize_name("a.B-c").unwrap(), "a.b-c");
        assert!(normalize_name("").is_err());
        assert!(normalize_name("a..b").is_err());
        assert!(normalize_name("has space").is_err());
        assert!(normalize_name(&"x".repeat(64)).is_err());
    }

    #[test]
    fn upstreams_parse_with_default_port() {
        assert_eq!(
            parse_upstream("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[fd00::1]:5353").unwrap(),
            "[fd00::1]:5353".parse().unwrap()
        );
        assert!(parse_upstream("resolver.example").is_err());
    }
}
