//! What every netloom CNI plugin opens: the state store, IPAM and the engine.

use std::path::PathBuf;
use std::sync::Arc;

use engine_core::engine::{Engine, OverlapPolicy};
use engine_core::firewall::{FirewallChoice, Firewaller, LazyFirewall};
use engine_core::ipam::RangeSpec;
use engine_core::ipam::{Ipam, PoolRequest, OPT_ALLOW_OVERLAP};
use engine_core::netlink::Netlink;
use engine_core::sandbox::NetlinkSandboxes;
use engine_core::store::file::FileStore;
use engine_core::StateStore;
use ipam::allocator::RangeSet;
use ipam::StoreIpam;

use crate::error::CniError;
use crate::plugins::hostlocal::IpamConf;

/// Where the state store lives: the plugin's `stateDir` key, else `NETLOOM_STATE_DIR`, else
/// /var/lib/netloom. Every plugin of a chain must agree (portmap finds the network netloom-bridge
/// made there), so nothing chain-specific such as IPAM's `dataDir` moves it; `dataDir` only
/// places host-local's lease files (see [`crate::plugins::mirror`]).
pub fn state_dir(plugin_state_dir: Option<PathBuf>, _ipam: Option<&IpamConf>) -> PathBuf {
    plugin_state_dir
        .or_else(|| {
            std::env::var_os("NETLOOM_STATE_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/netloom"))
}

/// The opened store, IPAM and engine.
pub struct Context {
    pub store: Arc<dyn StateStore>,
    pub ipam: Arc<StoreIpam>,
    pub engine: Engine,
    pub firewall: Option<Arc<dyn Firewaller>>,
}

/// The firewall backend: the configuration's `backend` key (the reference portmap plugin's
/// spelling), else `NETLOOM_FIREWALL`; nftables, iptables or auto (the default).
fn firewall(backend: Option<&str>) -> Result<Arc<dyn Firewaller>, CniError> {
    let choice: FirewallChoice = match backend {
        Some(b) => b.parse().map_err(|_| {
            CniError::invalid_config(format!("backend {b:?}: use nftables, iptables or auto"))
        })?,
        None => {
            let env = std::env::var("NETLOOM_FIREWALL").unwrap_or_else(|_| "auto".into());
            env.parse().map_err(|_| {
                CniError::invalid_env(format!(
                    "NETLOOM_FIREWALL={env:?}: use nftables, iptables or auto"
                ))
            })?
        }
    };
    // Opened on first use: most ADDs and DELs never need it (see `LazyFirewall`).
    Ok(Arc::new(LazyFirewall::new(choice, None)?))
}

/// What a plugin needs opened besides the store and IPAM.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Program the firewall (bridge, portmap). Opening it probes the backend: a netlink round
    /// trip that plugins with nothing to filter (IPAM, macvlan) should not pay.
    pub firewall: bool,
    /// The namespace the engine treats as the host (macvlan's `linkInContainer`).
    pub host_netns: Option<PathBuf>,
    /// The configuration's `backend` key, when it has one.
    pub backend: Option<String>,
}

impl Context {
    /// The store, IPAM and an engine with the firewall (`backend`: the configuration's key).
    pub fn open(dir: PathBuf, backend: Option<String>) -> Result<Self, CniError> {
        Self::open_with(
            dir,
            Needs {
                firewall: true,
                host_netns: None,
                backend,
            },
        )
    }

    pub fn open_with(dir: PathBuf, needs: Needs) -> Result<Self, CniError> {
        let store: Arc<dyn StateStore> = Arc::new(FileStore::open(&dir)?);
        // Default pools must not collide with routes on this host; asked only when one is chosen.
        let routes: ipam::RouteProvider = Box::new(|| Netlink::connect()?.host_routes());
        let ipam = Arc::new(StoreIpam::new(store.clone(), routes));
        let firewall = if needs.firewall {
            Some(firewall(needs.backend.as_deref())?)
        } else {
            None
        };
        let engine = Engine::new(
            store.clone(),
            ipam.clone(),
            drivers::registry(),
            firewall.clone(),
            Arc::new(NetlinkSandboxes),
            needs.host_netns,
        )
        // netloom-portmap keeps its own record and removes its own entries.
        .with_ports_only_in_records(true);
        Ok(Context {
            store,
            ipam,
            engine,
            firewall,
        })
    }

    /// The firewall, for plugins that opened one.
    pub fn firewall(&self) -> Result<&Arc<dyn Firewaller>, CniError> {
        self.firewall.as_ref().ok_or_else(|| {
            CniError::new(
                crate::error::code::INTERNAL,
                "this plugin opened no firewall",
            )
        })
    }

    /// Makes sure the pools of a CNI network's range sets exist with these ranges; returns
    /// their ids in range-set order.
    pub fn ensure_pools(&self, network: &str, conf: &IpamConf) -> Result<Vec<String>, CniError> {
        let mut ids = Vec::new();
        for (i, set) in conf.range_sets.iter().enumerate() {
            let id = IpamConf::pool_id(network, i);
            // Compare in the pool's normalised form (start/end filled in), as stored.
            let wanted: Vec<RangeSpec> = RangeSet::new(set, &[])?
                .ranges()
                .iter()
                .map(|r| r.to_spec())
                .collect();
            match self.ipam.get_pool(&id)? {
                Some(p) if p.ranges == wanted => {}
                Some(p) => {
                    // The config changed: only safe when nothing is leased from the old ranges.
                    if !self.ipam.leases(&id)?.is_empty() {
                        return Err(CniError::invalid_config(format!(
                            "network {network}: range set {i} changed while containers hold addresses from it; DEL them first"
                        )));
                    }
                    for _ in 0..p.refs.max(1) {
                        self.ipam.release_pool(&id)?;
                    }
                    self.request_pool(&id, set)?;
                }
                None => self.request_pool(&id, set)?,
            }
            ids.push(id);
        }
        Ok(ids)
    }

    fn request_pool(&self, id: &str, set: &[engine_core::ipam::RangeSpec]) -> Result<(), CniError> {
        let mut req = PoolRequest {
            id: Some(id.to_string()),
            ranges: set.to_vec(),
            ..Default::default()
        };
        req.options.insert(OPT_ALLOW_OVERLAP.into(), "true".into());
        match self.ipam.request_pool(&req) {
            Ok(_) => Ok(()),
            // A parallel ADD created it with the same ranges first: fine.
            Err(e)
                if e.kind() == engine_core::ErrorKind::Conflict
                    && self.ipam.get_pool(id)?.is_some() =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn overlap(&self) -> OverlapPolicy {
        OverlapPolicy::Allow
    }
}
