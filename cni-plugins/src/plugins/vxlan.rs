//! `netloom-vxlan`: a VXLAN overlay across hosts, over a global store (etcd).
//!
//! Keys: `store` (else `NETLOOM_STORE`; `etcd://HOST:PORT[,…]`), `advertiseAddr` (the local
//! tunnel address; default: the address of the interface with the default route), `vxlanPort`
//! (4789), `vni` (pin the VNI; default: one chosen cluster-wide), `overlay` (the cluster-wide
//! name; default: the network's `name`), `mtu` (default: the underlay's MTU − 50 / − 70),
//! `isGateway`, `isDefaultGateway`, `ipMasq` (all true by default: containers leave through
//! their own host with masquerade), `internal` (no way out), `txChecksumOffload`
//! (`auto`/`on`/`off`), `stateDir`, and `ipam` with host-local's range keys — addresses come
//! from the global store, so no two hosts hand out the same one.
//!
//! Local state (the network record, journals, firewall) stays in the host's own store; the
//! global store holds the overlay's VNI, pools, leases and endpoint records. A host needs the
//! overlay agent (`netloomd --store …`) running: it registers the host and programs later
//! changes; ADD refuses to run without it rather than leave a container nobody can reach.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use drivers::overlay::control::{self, EndpointRecord, MacAddrText, OverlayRequest};
use drivers::overlay::{agent, names, options as oopt};
use engine_core::engine::{AttachRequest, Engine, SandboxSetup};
use engine_core::ipam::{AddressRequest, Ipam, Release};
use engine_core::model::{NetworkSpec, Sandbox};
use engine_core::netlink::Netlink;
use engine_core::sandbox::NetlinkSandboxes;
use engine_core::store::file::FileStore;
use engine_core::{AttachmentKey, Options, StateStore};
use ipam::StoreIpam;
use serde::Deserialize;

use crate::error::CniError;
use crate::plugins::bridge::requested_ips;
use crate::plugins::context::{state_dir, Context};
use crate::plugins::hostlocal::{is_builtin, IpamConf};
use crate::result::CniResult;
use crate::skel::{GcRequest, Plugin, Request, StatusRequest};

fn yes() -> bool {
    true
}

/// The plugin's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanConf {
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub advertise_addr: Option<IpAddr>,
    #[serde(default)]
    pub vxlan_port: Option<u16>,
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub overlay: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default = "yes")]
    pub is_gateway: bool,
    #[serde(default = "yes")]
    pub is_default_gateway: bool,
    #[serde(default = "yes")]
    pub ip_masq: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub tx_checksum_offload: Option<String>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// The plugin.
pub struct VxlanPlugin;

struct Parsed {
    conf: VxlanConf,
    ipam: IpamConf,
    store_spec: String,
    overlay: String,
}

fn parse(config: &crate::config::NetConf) -> Result<Parsed, CniError> {
    let conf: VxlanConf = config.plugin_config()?;
    let ipam_obj = config.ipam.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "netloom-vxlan needs an \"ipam\" section (type netloom-ipam or host-local, with the overlay's subnet)",
        )
    })?;
    let ipam = IpamConf::parse(ipam_obj)?;
    if !is_builtin(&ipam.ipam_type) {
        return Err(CniError::unsupported_field(format!(
            "ipam type {:?}: netloom-vxlan allocates from the global store itself; use netloom-ipam or host-local keys",
            ipam.ipam_type
        )));
    }
    let store_spec = conf
        .store
        .clone()
        .or_else(|| std::env::var("NETLOOM_STORE").ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            CniError::invalid_config(
                "netloom-vxlan needs a global store: set \"store\": \"etcd://HOST:PORT\" or NETLOOM_STORE",
            )
        })?;
    let overlay = conf.overlay.clone().unwrap_or_else(|| config.name.clone());
    Ok(Parsed {
        conf,
        ipam,
        store_spec,
        overlay,
    })
}

/// The local store, the global store, IPAM over the global store and the engine.
struct Opened {
    ctx: Context,
    global: Arc<dyn StateStore>,
}

impl Parsed {
    fn open(&self, firewall: bool) -> Result<Opened, CniError> {
        let dir = state_dir(self.conf.state_dir.clone(), Some(&self.ipam));
        let store: Arc<dyn StateStore> = Arc::new(FileStore::open(&dir)?);
        let global = engine_core::store::open_global(&self.store_spec)?;
        // Overlay subnets are cluster-wide: they need not avoid this host's routes.
        let ipam = Arc::new(StoreIpam::new(global.clone(), ipam::no_host_routes()));
        let fw = if firewall {
            Some(firewall_backend()?)
        } else {
            None
        };
        let engine = Engine::new(
            store.clone(),
            ipam.clone(),
            drivers::registry(),
            fw.clone(),
            Arc::new(NetlinkSandboxes),
            None,
        );
        Ok(Opened {
            ctx: Context {
                store,
                ipam,
                engine,
                firewall: fw,
            },
            global,
        })
    }

    fn vtep(&self, nl: &Netlink) -> Result<IpAddr, CniError> {
        match self.conf.advertise_addr {
            Some(a) => Ok(a),
            None => nl.default_route_address()?.ok_or_else(|| {
                CniError::invalid_config(
                    "netloom-vxlan: no advertiseAddr and no default route to take it from; set \"advertiseAddr\"",
                )
            }),
        }
    }

    fn port(&self) -> u16 {
        self.conf.vxlan_port.unwrap_or(oopt::DEFAULT_PORT)
    }

    fn network_spec(
        &self,
        name: &str,
        pools: &[String],
        vni: u32,
        vtep: IpAddr,
        mtu: u32,
    ) -> NetworkSpec {
        let c = &self.conf;
        let mut options = Options::new();
        options.insert(oopt::OVERLAY.into(), self.overlay.clone());
        options.insert(oopt::VNI.into(), vni.to_string());
        options.insert(oopt::VXLAN_PORT.into(), self.port().to_string());
        options.insert(oopt::VTEP.into(), vtep.to_string());
        options.insert(
            oopt::TX_CSUM_OFFLOAD.into(),
            c.tx_checksum_offload
                .clone()
                .unwrap_or_else(|| "auto".into()),
        );
        let is_gateway = c.is_gateway || c.is_default_gateway;
        options.insert("is_gateway".into(), is_gateway.to_string());
        options.insert(
            "is_default_gateway".into(),
            (c.is_default_gateway && is_gateway).to_string(),
        );
        options.insert("ip_masquerade".into(), c.ip_masq.to_string());
        // Routed pod networks: as netloom-bridge, no inbound limit and no isolation.
        options.insert("isolate".into(), "false".into());
        options.insert("open_inbound".into(), "true".into());
        let subnets = self.ipam.subnets(pools);
        NetworkSpec {
            name: name.to_string(),
            driver: "overlay".into(),
            enable_ipv6: subnets.iter().any(|s| s.subnet.is_ipv6()),
            subnets,
            internal: c.internal,
            mtu: Some(mtu),
            options,
        }
    }
}

/// Leases one address per range set from the global pools (a static one where asked), all or
/// none.
fn lease(
    ctx: &Context,
    pools: &[String],
    conf: &IpamConf,
    owner: &str,
    wanted: &[IpAddr],
) -> Result<Vec<IpAddr>, CniError> {
    for a in wanted {
        if !conf
            .range_sets
            .iter()
            .flatten()
            .any(|r| r.subnet.contains(*a))
        {
            return Err(CniError::invalid_config(format!(
                "requested address {a} is in no subnet of this overlay"
            )));
        }
    }
    let mut out = Vec::new();
    for (i, pool) in pools.iter().enumerate() {
        let address = wanted
            .iter()
            .copied()
            .find(|a| conf.range_sets[i].iter().any(|r| r.subnet.contains(*a)));
        match ctx.ipam.request_address(
            pool,
            &AddressRequest {
                owner: owner.to_string(),
                address,
            },
        ) {
            Ok(l) => out.push(l.address.ip()),
            Err(e) => {
                for p in &pools[..i] {
                    let _ = ctx
                        .ipam
                        .release_address(p, &Release::Owner(owner.to_string()));
                }
                return Err(e.into());
            }
        }
    }
    Ok(out)
}

/// The firewall backend: `NETLOOM_FIREWALL` (nftables, iptables, auto).
fn firewall_backend() -> Result<Arc<dyn engine_core::firewall::Firewaller>, CniError> {
    let choice = std::env::var("NETLOOM_FIREWALL").unwrap_or_else(|_| "auto".into());
    let choice: engine_core::firewall::FirewallChoice = choice.parse().map_err(|_| {
        CniError::invalid_env(format!(
            "NETLOOM_FIREWALL={choice:?}: use nftables, iptables or auto"
        ))
    })?;
    Ok(Arc::from(engine_core::firewall::select(choice, None)?))
}

impl Plugin for VxlanPlugin {
    fn name(&self) -> &str {
        "netloom-vxlan"
    }

    fn known_args(&self) -> &[&str] {
        super::MAIN_PLUGIN_ARGS
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let p = parse(&req.config)?;
        let netns = req.netns()?.to_path_buf();
        let nl = Netlink::connect()?;
        let vtep = p.vtep(&nl)?;
        let underlay = nl.underlay(vtep)?;
        let mtu = match p.conf.mtu {
            Some(m) => m,
            None => underlay.overlay_mtu(),
        };
        if !(68..=65535).contains(&mtu) {
            return Err(CniError::invalid_config(format!(
                "overlay MTU {mtu} is out of range (underlay {} has MTU {})",
                underlay.name, underlay.mtu
            )));
        }
        let o = p.open(true)?;
        let me = control::host_id(vtep);
        if !control::host_registered(o.global.as_ref(), &me)? {
            return Err(CniError::new(
                crate::error::code::TRY_AGAIN_LATER,
                format!(
                    "no overlay agent is registered for this host ({me}) in the store {}: start `netloomd --store {} --advertise-addr {vtep}` here",
                    o.global.describe(),
                    p.store_spec
                ),
            ));
        }
        let name = &req.config.name;
        let subnets: Vec<_> = p
            .ipam
            .range_sets
            .iter()
            .flatten()
            .map(|r| r.subnet)
            .collect();
        let rec = control::ensure_overlay(
            o.global.as_ref(),
            &OverlayRequest {
                name: p.overlay.clone(),
                subnets,
                vni: p.conf.vni,
                port: p.port(),
            },
        )?;
        let pools = o
            .ctx
            .ensure_pools(&format!("overlay:{}", p.overlay), &p.ipam)?;
        let device_was_there = nl.link_by_name(&names::vxlan(&p.overlay))?.is_some();
        let net = o.ctx.engine.ensure_network(
            name,
            &p.network_spec(name, &pools, rec.vni, vtep, mtu),
            o.ctx.overlap(),
        )?;
        if let Some(existing) = o.ctx.engine.get_endpoint(&net.id, &req.key)? {
            // Checked before anything is leased or announced: undoing a failed ADD below must
            // never withdraw a live attachment.
            return Err(engine_core::Error::Conflict(format!(
                "container {} already has interface {} on network {name} ({}); DEL it first",
                req.key.container_id,
                req.key.ifname,
                existing
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        // Lease and announce first, attach second: remote agents program the container while
        // this host is still creating it, so it is reachable from everywhere when ADD returns
        // (a ping that beats the programming loses its ARP and waits a second for the retry).
        let owner = req.key.owner();
        let ips = lease(&o.ctx, &pools, &p.ipam, &owner, &requested_ips(req)?)?;
        let mac = match &req.config.runtime_config.mac {
            Some(m) => m.clone(),
            None => ips
                .iter()
                .find(|a| a.is_ipv4())
                .or(ips.first())
                .map(|a| control::mac_for(*a).to_string())
                .unwrap_or_default(),
        };
        let record = EndpointRecord {
            ips: ips.clone(),
            mac: MacAddrText(mac.clone()),
            vtep,
        };
        let undo = |o: &Opened| {
            let _ = control::withdraw_endpoint(o.global.as_ref(), &p.overlay, vtep, &owner);
            for pool in &pools {
                let _ = o
                    .ctx
                    .ipam
                    .release_address(pool, &Release::Owner(owner.clone()));
            }
        };
        if let Err(e) = control::publish_endpoint(o.global.as_ref(), &p.overlay, &owner, &record) {
            undo(&o);
            return Err(e.into());
        }
        let gateways: Vec<IpAddr> = net.subnets.iter().filter_map(|s| s.gateway).collect();
        let attach = AttachRequest {
            network_id: net.id.clone(),
            key: req.key.clone(),
            sandbox: SandboxSetup::Configure(Sandbox {
                netns_path: netns.clone(),
            }),
            static_addresses: ips,
            mac: Some(mac.clone()),
            ports: Vec::new(),
            extra_routes: p.ipam.sandbox_routes(&gateways),
            options: Options::new(),
        };
        let a = match o.ctx.engine.attach(&attach) {
            Ok(a) => a,
            Err(e) => {
                undo(&o);
                return Err(e.into());
            }
        };
        if a.endpoint.mac.as_deref() != Some(mac.as_str()) {
            // The kernel kept another MAC (should not happen): announce the real one.
            let fixed = EndpointRecord {
                mac: MacAddrText(a.endpoint.mac.clone().unwrap_or_default()),
                ..record
            };
            control::publish_endpoint(o.global.as_ref(), &p.overlay, &owner, &fixed)?;
        }
        if !device_was_there {
            // The device is new: the agent skipped this overlay's earlier changes, so bring it
            // up to date from the store (later changes come from the agent).
            agent::sync_overlay(o.global.as_ref(), &nl, &p.overlay, vtep)?;
        }
        super::attachment_result(&a, req, req.netns()?, &p.ipam)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let p = parse(&req.config)?;
        let o = p.open(true)?;
        let name = &req.config.name;
        let owner = req.key.owner();
        // Withdraw first: remote hosts stop sending to it before it disappears. The local
        // network record knows which tunnel address it was published under.
        let vtep = match o.ctx.engine.get_network(name)? {
            Some(n) => n
                .options
                .get(oopt::VTEP)
                .and_then(|v| v.parse::<IpAddr>().ok()),
            None => None,
        };
        let vtep = match vtep {
            Some(v) => Some(v),
            None => Netlink::connect().ok().and_then(|nl| p.vtep(&nl).ok()),
        };
        if let Some(v) = vtep {
            control::withdraw_endpoint(o.global.as_ref(), &p.overlay, v, &owner)?;
        }
        let sandbox = req.netns.as_ref().map(|n| Sandbox {
            netns_path: n.clone(),
        });
        o.ctx.engine.detach(name, &req.key, sandbox.as_ref())?;
        for i in 0..p.ipam.range_sets.len() {
            o.ctx.ipam.release_address(
                &IpamConf::pool_id(&format!("overlay:{}", p.overlay), i),
                &Release::Owner(owner.clone()),
            )?;
        }
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let p = parse(&req.config)?;
        let o = p.open(false)?;
        let drift = o.ctx.engine.check(&req.config.name, &req.key)?;
        if drift.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
        Err(CniError::new(
            crate::error::code::KERNEL,
            format!("CHECK found drift: {}", list.join("; ")),
        ))
    }

    fn status(&self, req: &StatusRequest) -> Result<(), CniError> {
        let p = parse(&req.config)?;
        let o = p
            .open(false)
            .map_err(|e| CniError::unavailable(format!("store unusable: {}", e.msg)))?;
        o.global
            .list(&control::hosts_prefix())
            .map_err(|e| CniError::status_from(&e, false))?;
        Ok(())
    }

    fn gc(&self, req: &GcRequest) -> Result<(), CniError> {
        let p = parse(&req.config)?;
        let o = p.open(true)?;
        let name = &req.config.name;
        let stale: Vec<AttachmentKey> = o
            .ctx
            .engine
            .list_endpoints(name)?
            .into_iter()
            .map(|e| e.key)
            .filter(|k| !req.is_valid(k))
            .collect();
        if let Some(net) = o.ctx.engine.get_network(name)? {
            if let Some(v) = net.options.get(oopt::VTEP).and_then(|v| v.parse().ok()) {
                for k in &stale {
                    control::withdraw_endpoint(o.global.as_ref(), &p.overlay, v, &k.owner())?;
                }
            }
        }
        // One by one, not Engine::gc: that also frees every lease of the pool whose owner this
        // host does not list, and the overlay's pools hold the other hosts' leases too.
        let mut first = None;
        for k in &stale {
            if let Err(e) = o.ctx.engine.detach(name, k, None) {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
