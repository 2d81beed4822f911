//! `netloom-macvlan` (and, through [`crate::plugins::ipvlan`], `netloom-ipvlan`): the reference
//! macvlan and ipvlan plugins' keys and behaviour on netloom's engine.
//!
//! Keys: `master`, `mode`, `mtu`, `mac` (macvlan), `linkInContainer` and `ipam`, as the
//! reference plugins read them; netloom's own: `hostShim` (+ `hostShimAddress`), `internal` (no
//! master: a netloom-made parent), `flag` (ipvlan: bridge/private/vepa) and `stateDir`. A master
//! named `<if>.<vid>` is created as an 802.1Q sub-interface when it does not exist.
//!
//! CNI has no "delete network" verb. A network is therefore deleted by the DEL (or GC) that
//! leaves it without endpoints — with its host shim, and the parent or VLAN sub-interface
//! netloom made for it — under a per-network lock that ADD holds too, so an ADD never finds its
//! network half torn down. That also keeps a network that no container uses any more from
//! holding its subnet on the parent (two networks on one parent must not overlap) after its
//! configuration was renamed or removed.

use std::net::IpAddr;
use std::path::PathBuf;

use engine_core::engine::{AttachRequest, SandboxSetup};
use engine_core::ipam::{AddressRequest, Ipam, Release};
use engine_core::model::{NetworkSpec, Sandbox, SubnetConfig};
use engine_core::netlink::Netlink;
use engine_core::store::LockGuard;
use engine_core::{AttachmentKey, ErrorKind, Expect, Key, Options, StateStoreExt};
use serde::Deserialize;

use drivers::vlan::{names, options as vopt, Kind};

use crate::error::CniError;
use crate::plugins::bridge::requested_ips;
use crate::plugins::context::{state_dir, Context, Needs};
use crate::plugins::delegate::{merge_subnets, Delegate};
use crate::plugins::hostlocal::{is_builtin, sandbox_routes, IpamConf};
use crate::plugins::mirror::Mirror;
use crate::result::CniResult;
use crate::skel::{GcRequest, Plugin, Request, StatusRequest};

/// The configuration keys of both plugins (the reference ones, then netloom's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VlanConf {
    pub master: Option<String>,
    pub mode: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<String>,
    pub link_in_container: bool,
    /// netloom's: a macvlan/ipvlan in the host on the same parent, so host ↔ container works.
    pub host_shim: bool,
    /// netloom's: the shim's address(es); leased from the IPAM ranges when absent.
    pub host_shim_address: Option<String>,
    /// netloom's: no master, a netloom-made parent (containers reach only each other).
    pub internal: bool,
    /// netloom's, ipvlan only: bridge (default), private or vepa.
    pub flag: Option<String>,
    /// netloom's: where the state store lives.
    pub state_dir: Option<PathBuf>,
}

/// The owner of the host shim's IPAM leases (a name no CNI container id can clash with in
/// practice, valid as an attachment so GC lists can carry it).
pub const SHIM_OWNER_CONTAINER: &str = "netloom-host-shim";
pub const SHIM_OWNER_IFNAME: &str = "shim";

fn shim_owner() -> Result<AttachmentKey, CniError> {
    Ok(AttachmentKey::new(SHIM_OWNER_CONTAINER, SHIM_OWNER_IFNAME)?)
}

/// One of the two plugins.
#[derive(Debug, Clone, Copy)]
pub struct VlanPlugin {
    kind: Kind,
    name: &'static str,
}

/// `netloom-macvlan`.
pub const MACVLAN: VlanPlugin = VlanPlugin {
    kind: Kind::Macvlan,
    name: "netloom-macvlan",
};

impl VlanPlugin {
    pub const fn new(kind: Kind, name: &'static str) -> Self {
        VlanPlugin { kind, name }
    }
}

struct Parsed {
    kind: Kind,
    conf: VlanConf,
    /// netloom-ipam/host-local keys; empty (no range sets) when another plugin leases.
    ipam: IpamConf,
    /// Another IPAM plugin's type, run from `CNI_PATH` (see [`super::delegate`]).
    delegated: Option<String>,
}

/// Reads and checks the configuration. DEL passes `lenient`: a value ADD would refuse (a
/// misspelt mode) must not keep DEL from cleaning up after that failed ADD.
fn parse(
    kind: Kind,
    plugin: &str,
    config: &crate::config::NetConf,
    lenient: bool,
) -> Result<Parsed, CniError> {
    let conf: VlanConf = config.plugin_config()?;
    match kind {
        _ if lenient => {}
        Kind::Macvlan => {
            if let Some(m) = &conf.mode {
                vopt::parse_macvlan_mode(m)?;
            }
            if conf.flag.is_some() {
                return Err(CniError::unsupported_field(
                    "flag is an ipvlan key; macvlan has modes bridge, private, vepa and passthru",
                ));
            }
        }
        Kind::Ipvlan => {
            if let Some(m) = &conf.mode {
                vopt::parse_ipvlan_mode(m)?;
            }
            if let Some(f) = &conf.flag {
                vopt::parse_ipvlan_flag(f)?;
            }
            if conf.mac.is_some() {
                return Err(CniError::unsupported_field(
                    "mac: ipvlan interfaces share their parent's MAC; use netloom-macvlan for per-container MACs",
                ));
            }
        }
    }
    if conf.internal && conf.master.as_deref().is_some_and(|m| !m.is_empty()) {
        return Err(CniError::invalid_config("internal and master exclude each other: an internal network gets a netloom-made parent"));
    }
    if conf.link_in_container && (conf.host_shim || conf.internal || vlan_master(&conf).is_some()) {
        return Err(CniError::unsupported_field(
            "linkInContainer works with an existing master inside the container only: hostShim, internal and VLAN masters (<if>.<vid>) need the master in the host",
        ));
    }
    let ipam_obj = config.ipam.as_ref().ok_or_else(|| {
        CniError::invalid_config(format!(
            "{plugin} needs an \"ipam\" section (type netloom-ipam or host-local)"
        ))
    })?;
    let ipam_type = ipam_obj
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    if is_builtin(ipam_type) {
        let ipam = IpamConf::parse(ipam_obj)?;
        return Ok(Parsed {
            kind,
            conf,
            ipam,
            delegated: None,
        });
    }
    if ipam_type.is_empty() {
        return Err(CniError::invalid_config(
            "ipam.type is missing: name an IPAM plugin (netloom-ipam, host-local, dhcp, static…)",
        ));
    }
    if conf.host_shim && conf.host_shim_address.is_none() && !conf.internal {
        return Err(CniError::invalid_config(format!(
            "hostShim with IPAM plugin {ipam_type:?}: netloom cannot lease the shim's address from it; give \"hostShimAddress\""
        )));
    }
    Ok(Parsed {
        kind,
        conf,
        ipam: IpamConf::none(),
        delegated: Some(ipam_type.to_string()),
    })
}

/// The master when it names an 802.1Q sub-interface (`eth1.50`).
fn vlan_master(conf: &VlanConf) -> Option<&str> {
    conf.master
        .as_deref()
        .filter(|m| names::split_vlan(m).is_some())
}

/// The interface of the host's IPv4 (else IPv6) default route: the reference plugins' master
/// when none is given.
fn default_route_interface() -> Result<String, CniError> {
    let nl = Netlink::connect()?;
    let routes = nl.routes()?;
    let oif = routes
        .iter()
        .filter(|r| r.is_default() && r.table == engine_core::netlink::RT_TABLE_MAIN)
        .min_by_key(|r| (!r.destination.is_ipv4(), r.metric.unwrap_or(0)))
        .and_then(|r| r.oif)
        .ok_or_else(|| {
            CniError::invalid_config("no master given and the host has no default route to take one from: set \"master\" (or \"internal\": true)")
        })?;
    nl.link_by_index(oif)?.map(|l| l.name).ok_or_else(|| {
        CniError::invalid_config("the default route's interface vanished; set \"master\"")
    })
}

impl Parsed {
    /// The store, IPAM and engine, without a firewall: macvlan and ipvlan networks have no
    /// bridge to filter on, so probing a backend on every call would be pure cost.
    fn context(&self, netns: Option<&std::path::Path>) -> Result<Context, CniError> {
        // With linkInContainer the master lives in the container, so the engine treats the
        // container as the host. Without a namespace (DEL after it is gone) there is nothing
        // there left to touch.
        let host_netns = netns
            .filter(|p| self.conf.link_in_container && p.exists())
            .map(|p| p.to_path_buf());
        let dir = state_dir(self.conf.state_dir.clone(), Some(&self.ipam));
        Context::open_with(
            dir,
            Needs {
                firewall: false,
                host_netns,
                backend: None,
            },
        )
    }

    /// Serialises ADD against the DEL that may delete the network.
    fn lock(&self, ctx: &Context, network: &str) -> Result<Box<dyn LockGuard>, CniError> {
        Ok(ctx.store.lock(
            &format!("cni-vlan/{network}"),
            engine_core::engine::LOCK_TIMEOUT,
        )?)
    }

    fn parent(&self) -> Result<Option<String>, CniError> {
        if self.conf.internal {
            return Ok(None);
        }
        match self.conf.master.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => Ok(Some(m.to_string())),
            None if self.conf.link_in_container => Err(CniError::invalid_config(
                "linkInContainer needs \"master\": the interface inside the container",
            )),
            None => default_route_interface().map(Some),
        }
    }

    /// The shim's addresses: configured, or one lease per range set (idempotent per owner).
    fn shim_addresses(&self, ctx: &Context, pools: &[String]) -> Result<Option<String>, CniError> {
        if !self.conf.host_shim {
            return Ok(None);
        }
        if let Some(a) = &self.conf.host_shim_address {
            return Ok(Some(a.clone()));
        }
        if self.conf.internal {
            // The subnets' gateways: on an internal network nothing else owns them.
            return Ok(None);
        }
        let owner = shim_owner()?.owner();
        let mut out = Vec::new();
        for pool in pools {
            let lease = ctx.ipam.request_address(
                pool,
                &AddressRequest {
                    owner: owner.clone(),
                    address: None,
                },
            )?;
            out.push(lease.address.ip().to_string());
        }
        Ok(Some(out.join(",")))
    }

    fn network_spec(
        &self,
        name: &str,
        pools: &[String],
        shim_addrs: Option<String>,
        delegated_subnets: Option<Vec<SubnetConfig>>,
    ) -> Result<NetworkSpec, CniError> {
        let c = &self.conf;
        let mut options = Options::new();
        if let Some(p) = self.parent()? {
            options.insert(vopt::PARENT.into(), p);
        }
        match self.kind {
            Kind::Macvlan => {
                options.insert(
                    vopt::MACVLAN_MODE.into(),
                    c.mode.clone().unwrap_or_else(|| "bridge".into()),
                );
            }
            Kind::Ipvlan => {
                options.insert(
                    vopt::IPVLAN_MODE.into(),
                    c.mode.clone().unwrap_or_else(|| "l2".into()),
                );
                options.insert(
                    vopt::IPVLAN_FLAG.into(),
                    c.flag.clone().unwrap_or_else(|| "bridge".into()),
                );
            }
        }
        options.insert(vopt::HOST_SHIM.into(), c.host_shim.to_string());
        if let Some(a) = shim_addrs {
            options.insert(vopt::HOST_SHIM_ADDRESS.into(), a);
        }
        // CNI: routes come from the IPAM section, as with the reference plugins.
        options.insert(vopt::DEFAULT_ROUTE.into(), "false".into());
        let subnets = delegated_subnets.unwrap_or_else(|| self.ipam.subnets(pools));
        Ok(NetworkSpec {
            name: name.to_string(),
            driver: self.kind.name().into(),
            enable_ipv6: subnets.iter().any(|s| s.subnet.is_ipv6()),
            subnets,
            internal: c.internal,
            mtu: c.mtu,
            options,
        })
    }

    /// ADD's part under the lock: the shim's leases, the network, the attachment.
    fn attach(
        &self,
        ctx: &Context,
        req: &Request,
        pools: &[String],
        netns: &std::path::Path,
        leased: Option<&CniResult>,
    ) -> Result<(engine_core::Network, engine_core::engine::Attachment), CniError> {
        let name = &req.config.name;
        let shim_addrs = self.shim_addresses(ctx, pools)?;
        let delegated_subnets = match leased {
            Some(l) => {
                let existing = ctx
                    .engine
                    .get_network(name)?
                    .map(|n| n.subnets)
                    .unwrap_or_default();
                // A macvlan has no gateway of its own: only the plugin's.
                Some(merge_subnets(existing, l, |_| None)?)
            }
            None => None,
        };
        let spec = self.network_spec(name, pools, shim_addrs, delegated_subnets)?;
        let net = ctx.engine.ensure_network(name, &spec, ctx.overlap())?;
        let gateways: Vec<IpAddr> = net.subnets.iter().filter_map(|s| s.gateway).collect();
        let (static_addresses, extra_routes) = match leased {
            Some(l) => (
                l.ips.iter().map(|i| i.address.ip()).collect(),
                sandbox_routes(&l.routes, &gateways),
            ),
            None => (requested_ips(req)?, self.ipam.sandbox_routes(&gateways)),
        };
        let attach = AttachRequest {
            network_id: net.id.clone(),
            key: req.key.clone(),
            sandbox: SandboxSetup::Configure(Sandbox {
                netns_path: netns.to_path_buf(),
            }),
            static_addresses,
            mac: requested_mac(req, &self.conf),
            ports: Vec::new(),
            extra_routes,
            options: Options::new(),
        };
        let a = ctx.engine.attach(&attach)?;
        Ok((net, a))
    }

    /// Deletes the network when no endpoint is left on it, and gives back the shim's leases.
    fn delete_if_unused(&self, ctx: &Context, name: &str) -> Result<(), CniError> {
        if ctx.engine.get_network(name)?.is_some() {
            let left = ctx.engine.list_endpoints(name)?.len();
            if left > 0 {
                // The count was off (a crash between an attach and its count): put it right.
                set_users(ctx, name, left as u64)?;
                return Ok(());
            }
            ctx.engine.delete_network(name)?;
        }
        ctx.store.delete(&users_key(name), Expect::Any)?;
        let owner = shim_owner()?.owner();
        for i in 0..self.ipam.range_sets.len() {
            ctx.ipam
                .release_address(&IpamConf::pool_id(name, i), &Release::Owner(owner.clone()))?;
        }
        Ok(())
    }
}

/// How many endpoints a network has, kept under the network's lock by ADD and DEL, so the DEL
/// that leaves the network empty knows it without reading every endpoint record (which would
/// make each DEL cost as much as the network is big).
fn users_key(network: &str) -> Key {
    Key::new(["cni", "vlan", "users", network])
}

fn users(ctx: &Context, network: &str) -> Result<u64, CniError> {
    Ok(ctx
        .store
        .get_json::<u64>(&users_key(network))?
        .map(|(_, n)| n)
        .unwrap_or(0))
}

fn set_users(ctx: &Context, network: &str, n: u64) -> Result<(), CniError> {
    ctx.store.put_json(&users_key(network), &n, Expect::Any)?;
    Ok(())
}

/// The MAC asked for: CNI_ARGS `MAC`, then `runtimeConfig.mac`, then the `mac` key.
fn requested_mac(req: &Request, conf: &VlanConf) -> Option<String> {
    req.args
        .get("MAC")
        .map(str::to_string)
        .or_else(|| req.config.runtime_config.mac.clone())
        .or_else(|| conf.mac.clone())
}

impl Plugin for VlanPlugin {
    fn name(&self) -> &str {
        self.name
    }

    fn known_args(&self) -> &[&str] {
        super::MAIN_PLUGIN_ARGS
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let p = parse(self.kind, self.name, &req.config, false)?;
        let netns = req.netns()?.to_path_buf();
        let ctx = p.context(Some(&netns))?;
        let name = &req.config.name;
        let pools = ctx.ensure_pools(name, &p.ipam)?;
        // Another IPAM plugin leases first; if wiring then fails, it releases again.
        let delegate = match &p.delegated {
            Some(t) => Some(Delegate::find(t, &req.cni_path)?),
            None => None,
        };
        let leased = match &delegate {
            Some(d) => Some(d.add(&req.stdin, req.version)?),
            None => None,
        };
        let lock = p.lock(&ctx, name)?;
        let attached = p.attach(&ctx, req, &pools, &netns, leased.as_ref());
        let (_net, a) = match attached {
            Ok(x) => x,
            Err(e) => {
                if let Some(d) = &delegate {
                    if let Err(e2) = d.call("DEL", &req.stdin) {
                        tracing::warn!(error = %e2.msg, "releasing the delegated lease after a failed ADD");
                    }
                }
                // A network (or a shim lease) this ADD made for nothing is not left behind.
                let cleanup = match users(&ctx, name) {
                    Ok(0) => p.delete_if_unused(&ctx, name),
                    Ok(_) => Ok(()),
                    Err(e2) => Err(e2),
                };
                if let Err(e2) = cleanup {
                    tracing::warn!(error = %e2.msg, "cleanup after a failed ADD");
                }
                return Err(e);
            }
        };
        set_users(&ctx, name, users(&ctx, name)? + 1)?;
        drop(lock);
        let ips: Vec<IpAddr> = a.endpoint.addresses.iter().map(|n| n.ip()).collect();
        if let Some(l) = leased {
            return super::delegated_attachment_result(&a, req, &netns, l.dns);
        }
        Mirror::new(p.ipam.data_dir.as_deref(), name).add(&req.key, &ips);
        super::attachment_result(&a, req, &netns, &p.ipam)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let p = parse(self.kind, self.name, &req.config, true)?;
        let ctx = p.context(req.netns.as_deref())?;
        let name = &req.config.name;
        let lock = p.lock(&ctx, name)?;
        let sandbox = req.netns.as_ref().map(|n| Sandbox {
            netns_path: n.clone(),
        });
        let existed = ctx.engine.get_endpoint(name, &req.key)?.is_some();
        ctx.engine.detach(name, &req.key, sandbox.as_ref())?;
        if existed {
            let left = users(&ctx, name)?.saturating_sub(1);
            set_users(&ctx, name, left)?;
            if left == 0 {
                p.delete_if_unused(&ctx, name)?;
            }
        } else {
            // A failed ADD may have leased addresses before the network record existed.
            for i in 0..p.ipam.range_sets.len() {
                ctx.ipam.release_address(
                    &IpamConf::pool_id(name, i),
                    &Release::Owner(req.key.owner()),
                )?;
            }
        }
        drop(lock);
        if let Some(t) = &p.delegated {
            // The plugin that leased the addresses releases them.
            return Delegate::find(t, &req.cni_path)?.call("DEL", &req.stdin);
        }
        Mirror::new(p.ipam.data_dir.as_deref(), name).remove_owner(&req.key);
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let p = parse(self.kind, self.name, &req.config, false)?;
        let ctx = p.context(req.netns.as_deref())?;
        let drift = ctx.engine.check(&req.config.name, &req.key)?;
        if drift.is_empty() {
            if let Some(t) = &p.delegated {
                Delegate::find(t, &req.cni_path)?.call("CHECK", &req.stdin)?;
            }
            return Ok(());
        }
        let list: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
        Err(CniError::new(
            crate::error::code::KERNEL,
            format!("CHECK found drift: {}", list.join("; ")),
        ))
    }

    fn status(&self, req: &StatusRequest) -> Result<(), CniError> {
        let p = parse(self.kind, self.name, &req.config, false)?;
        let ctx = p
            .context(None)
            .map_err(|e| CniError::unavailable(format!("state store unusable: {}", e.msg)))?;
        ctx.store
            .list(&engine_core::Key::new(["networks"]))
            .map_err(|e| CniError::status_from(&e, false))?;
        // A master that is not there (and that netloom would not create) makes every ADD fail.
        if let Some(m) = p
            .conf
            .master
            .as_deref()
            .filter(|m| !m.is_empty() && !p.conf.link_in_container)
        {
            let nl = Netlink::connect().map_err(|e| CniError::status_from(&e, false))?;
            let present = nl
                .link_by_name(m)
                .map_err(|e| CniError::status_from(&e, false))?
                .is_some();
            let base_present = names::split_vlan(m)
                .map(|(base, _)| nl.link_by_name(base).map(|l| l.is_some()).unwrap_or(false))
                .unwrap_or(false);
            if !present && !base_present {
                return Err(CniError::unavailable(format!(
                    "master {m} does not exist on this host"
                )));
            }
        }
        if let Some(t) = &p.delegated {
            Delegate::find(t, &req.cni_path)?.call("STATUS", &req.stdin)?;
        }
        Ok(())
    }

    fn gc(&self, req: &GcRequest) -> Result<(), CniError> {
        let p = parse(self.kind, self.name, &req.config, false)?;
        let ctx = p.context(None)?;
        let name = &req.config.name;
        let lock = p.lock(&ctx, name)?;
        let mut live: Vec<AttachmentKey> = ctx
            .engine
            .list_endpoints(name)?
            .into_iter()
            .map(|e| e.key)
            .filter(|k| req.is_valid(k))
            .collect();
        live.extend(
            req.valid_attachments()
                .map(<[AttachmentKey]>::to_vec)
                .unwrap_or_default(),
        );
        // The shim's leases belong to the network, not to a container.
        live.push(shim_owner()?);
        let errors = match ctx.engine.gc(name, &live) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let left = ctx.engine.list_endpoints(name)?.len() as u64;
        set_users(&ctx, name, left)?;
        if left == 0 {
            p.delete_if_unused(&ctx, name)?;
        }
        drop(lock);
        let mut leased = Vec::new();
        for i in 0..p.ipam.range_sets.len() {
            match ctx.ipam.leases(&IpamConf::pool_id(name, i)) {
                Ok(l) => leased.extend(
                    l.iter()
                        .filter(|l| !l.owner.starts_with(SHIM_OWNER_CONTAINER))
                        .map(|l| l.address.ip()),
                ),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Mirror::new(p.ipam.data_dir.as_deref(), name).retain(&leased);
        if let Some(t) = &p.delegated {
            Delegate::find(t, &req.cni_path)?.call("GC", &req.stdin)?;
        }
        if let Some(e) = errors.into_iter().next() {
            return Err(e.into());
        }
        Ok(())
    }
}
