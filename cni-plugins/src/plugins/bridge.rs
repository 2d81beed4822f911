//! `netloom-bridge`: the reference `bridge` plugin's keys and behaviour on netloom's engine.

use std::net::IpAddr;
use std::path::PathBuf;

use engine_core::engine::{AttachRequest, SandboxSetup};
use engine_core::ipam::Ipam;
use engine_core::model::{NetworkSpec, Sandbox, SubnetConfig};
use engine_core::{AttachmentKey, Options};
use serde::Deserialize;

use crate::error::CniError;
use crate::plugins::context::{state_dir, Context};
use crate::plugins::delegate::{merge_subnets, Delegate};
use crate::plugins::hostlocal::{first_host, is_builtin, sandbox_routes, IpamConf};
use crate::plugins::mirror::Mirror;
use crate::result::CniResult;
use crate::skel::{GcRequest, Plugin, Request, StatusRequest};

/// The reference bridge plugin's configuration keys (defaults as there).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BridgeConf {
    pub bridge: Option<String>,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// The access VLAN of every container port (0 or absent: none). Wide, so an out-of-range
    /// value gets a clear "invalid config" rather than a decode error.
    pub vlan: Option<i64>,
    /// Tagged VLANs of every container port.
    pub vlan_trunk: Option<Vec<VlanTrunk>>,
    /// Keep the bridge's default VLAN on the ports (default true, as the reference plugin).
    pub preserve_default_vlan: Option<bool>,
    pub macspoofchk: bool,
    /// netloom's own: keep this network apart from other netloom networks (off by default,
    /// as with the reference plugin).
    pub isolate: bool,
    /// netloom's own: where the state store lives.
    pub state_dir: Option<PathBuf>,
    /// The firewall backend: nftables, iptables or auto (as the reference portmap plugin's
    /// key; else `NETLOOM_FIREWALL`). A chain's plugins must agree.
    pub backend: Option<String>,
}

/// One `vlanTrunk` entry: a single `id`, or a `minID`..`maxID` range (or both).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VlanTrunk {
    #[serde(rename = "minID")]
    pub min_id: Option<i64>,
    #[serde(rename = "maxID")]
    pub max_id: Option<i64>,
    pub id: Option<i64>,
}

/// `vlanTrunk` as the driver's `vlan_trunk` option (`10,20-30`), checked as the reference
/// plugin checks it.
fn trunk_option(trunk: &[VlanTrunk]) -> Result<String, CniError> {
    let vid = |what: &str, v: i64| -> Result<i64, CniError> {
        if (1..=4094).contains(&v) {
            Ok(v)
        } else {
            Err(CniError::invalid_config(format!(
                "vlanTrunk {what} {v} is out of range (1-4094)"
            )))
        }
    };
    let mut parts = Vec::new();
    for t in trunk {
        match (t.min_id, t.max_id) {
            (Some(lo), Some(hi)) => {
                let (lo, hi) = (vid("minID", lo)?, vid("maxID", hi)?);
                if lo > hi {
                    return Err(CniError::invalid_config(format!(
                        "vlanTrunk minID {lo} is greater than maxID {hi}"
                    )));
                }
                parts.push(format!("{lo}-{hi}"));
            }
            (None, Some(_)) | (Some(_), None) => {
                return Err(CniError::invalid_config(
                    "vlanTrunk minID and maxID must be given together",
                ))
            }
            (None, None) => {}
        }
        if let Some(id) = t.id {
            parts.push(vid("id", id)?.to_string());
        }
    }
    Ok(parts.join(","))
}

/// The plugin.
pub struct BridgePlugin;

/// The reference plugin's default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Where a network's addresses come from.
enum IpamSource {
    /// `netloom-ipam` / `host-local` keys: leased in netloom's own store.
    Netloom(IpamConf),
    /// Any other type: that IPAM plugin, run from `CNI_PATH` (see [`super::delegate`]).
    Delegated(String),
}

struct Parsed {
    conf: BridgeConf,
    ipam: IpamSource,
    /// `vlanTrunk` flattened (`10,20-30`; empty: none).
    trunk: String,
}

fn parse(config: &crate::config::NetConf) -> Result<Parsed, CniError> {
    let conf: BridgeConf = config.plugin_config()?;
    if let Some(v) = conf.vlan.filter(|v| !(0..=4094).contains(v)) {
        return Err(CniError::invalid_config(format!(
            "invalid VLAN id {v} (must be between 0 and 4094)"
        )));
    }
    let trunk = trunk_option(conf.vlan_trunk.as_deref().unwrap_or_default())?;
    if conf.vlan.is_some_and(|v| v != 0) && !trunk.is_empty() {
        return Err(CniError::invalid_config(
            "vlan and vlanTrunk cannot be set together: a port is either an access port (vlan) or a trunk (vlanTrunk)",
        ));
    }
    let ipam_obj = config.ipam.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "netloom-bridge needs an \"ipam\" section (netloom-ipam, host-local or another IPAM plugin)",
        )
    })?;
    let ipam_type = ipam_obj
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    let ipam = if is_builtin(ipam_type) {
        IpamSource::Netloom(IpamConf::parse(ipam_obj)?)
    } else if ipam_type.is_empty() {
        return Err(CniError::invalid_config(
            "ipam.type is missing: name an IPAM plugin (netloom-ipam, host-local, static, dhcp…)",
        ));
    } else {
        IpamSource::Delegated(ipam_type.to_string())
    };
    Ok(Parsed { conf, ipam, trunk })
}

impl Parsed {
    fn own_ipam(&self) -> Option<&IpamConf> {
        match &self.ipam {
            IpamSource::Netloom(i) => Some(i),
            IpamSource::Delegated(_) => None,
        }
    }

    fn context(&self) -> Result<Context, CniError> {
        Context::open(
            state_dir(self.conf.state_dir.clone(), self.own_ipam()),
            self.conf.backend.clone(),
        )
    }

    fn network_spec(&self, name: &str, subnets: Vec<SubnetConfig>) -> NetworkSpec {
        let c = &self.conf;
        let is_gateway = c.is_gateway || c.is_default_gateway;
        let mut options = Options::new();
        options.insert(
            "bridge".into(),
            c.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into()),
        );
        options.insert("is_gateway".into(), is_gateway.to_string());
        options.insert(
            "is_default_gateway".into(),
            c.is_default_gateway.to_string(),
        );
        options.insert("force_address".into(), c.force_address.to_string());
        options.insert("ip_masquerade".into(), c.ip_masq.to_string());
        options.insert("hairpin".into(), c.hairpin_mode.to_string());
        options.insert("promisc".into(), c.promisc_mode.to_string());
        options.insert("isolate".into(), c.isolate.to_string());
        // Only when used, so networks without them keep the options they always had.
        let vlan = c.vlan.filter(|v| *v != 0);
        if let Some(v) = vlan {
            options.insert("vlan".into(), v.to_string());
        }
        if !self.trunk.is_empty() {
            options.insert("vlan_trunk".into(), self.trunk.clone());
        }
        if vlan.is_some() || !self.trunk.is_empty() {
            options.insert(
                "preserve_default_vlan".into(),
                c.preserve_default_vlan.unwrap_or(true).to_string(),
            );
        }
        if c.macspoofchk {
            options.insert("macspoofchk".into(), "true".into());
        }
        // Pod subnets are routed between nodes: unlike Docker, do not limit inbound traffic to
        // published ports.
        options.insert("open_inbound".into(), "true".into());
        NetworkSpec {
            name: name.to_string(),
            driver: "bridge".into(),
            enable_ipv6: subnets.iter().any(|s| s.subnet.is_ipv6()),
            subnets,
            internal: false,
            mtu: c.mtu,
            options,
        }
    }
}

/// Static addresses asked for by the runtime: `runtimeConfig.ips`, `args.cni.ips`, CNI_ARGS `IP`.
pub fn requested_ips(req: &Request) -> Result<Vec<IpAddr>, CniError> {
    let mut out: Vec<IpAddr> = req
        .config
        .runtime_config
        .ips
        .iter()
        .map(|r| r.address)
        .collect();
    out.extend(req.config.arg_ips()?.into_iter().map(|r| r.address));
    if let Some(list) = req.args.get("IP") {
        for s in list.split(',').filter(|s| !s.is_empty()) {
            let ip: IpAddr = s.split('/').next().unwrap_or(s).parse().map_err(|_| {
                CniError::invalid_config(format!("CNI_ARGS IP={s:?} is not an IP address"))
            })?;
            out.push(ip);
        }
    }
    Ok(out)
}

/// The MAC asked for: `runtimeConfig.mac` or CNI_ARGS `MAC`.
fn requested_mac(req: &Request) -> Option<String> {
    req.config
        .runtime_config
        .mac
        .clone()
        .or_else(|| req.args.get("MAC").map(str::to_string))
}

impl Plugin for BridgePlugin {
    fn name(&self) -> &str {
        "netloom-bridge"
    }

    fn known_args(&self) -> &[&str] {
        super::MAIN_PLUGIN_ARGS
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let p = parse(&req.config)?;
        let ipam = match &p.ipam {
            IpamSource::Netloom(i) => i,
            IpamSource::Delegated(t) => return add_delegated(req, &p, t),
        };
        let netns = req.netns()?.to_path_buf();
        let ctx = p.context()?;
        let name = &req.config.name;
        let pools = ctx.ensure_pools(name, ipam)?;
        let net = ctx.engine.ensure_network(
            name,
            &p.network_spec(name, ipam.subnets(&pools)),
            ctx.overlap(),
        )?;
        let gateways: Vec<IpAddr> = net.subnets.iter().filter_map(|s| s.gateway).collect();
        let attach = AttachRequest {
            network_id: net.id.clone(),
            key: req.key.clone(),
            sandbox: SandboxSetup::Configure(Sandbox {
                netns_path: netns.clone(),
            }),
            static_addresses: requested_ips(req)?,
            mac: requested_mac(req),
            ports: Vec::new(),
            extra_routes: ipam.sandbox_routes(&gateways),
            options: Options::new(),
        };
        let a = ctx.engine.attach(&attach)?;
        let ips: Vec<IpAddr> = a.endpoint.addresses.iter().map(|n| n.ip()).collect();
        Mirror::new(ipam.data_dir.as_deref(), name).add(&req.key, &ips);
        super::attachment_result(&a, req, &netns, ipam)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let p = parse(&req.config)?;
        let ctx = p.context()?;
        let sandbox = req.netns.as_ref().map(|n| Sandbox {
            netns_path: n.clone(),
        });
        ctx.engine
            .detach(&req.config.name, &req.key, sandbox.as_ref())?;
        let ipam = match &p.ipam {
            IpamSource::Netloom(i) => i,
            // The plugin that leased the addresses releases them.
            IpamSource::Delegated(t) => {
                return Delegate::find(t, &req.cni_path)?.call("DEL", &req.stdin);
            }
        };
        // A failed ADD may have leased addresses before the network record existed.
        for (i, _) in ipam.range_sets.iter().enumerate() {
            let owner = req.key.owner();
            ctx.ipam.release_address(
                &IpamConf::pool_id(&req.config.name, i),
                &engine_core::ipam::Release::Owner(owner),
            )?;
        }
        Mirror::new(ipam.data_dir.as_deref(), &req.config.name).remove_owner(&req.key);
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let p = parse(&req.config)?;
        let ctx = p.context()?;
        let drift = ctx.engine.check(&req.config.name, &req.key)?;
        if drift.is_empty() {
            if let IpamSource::Delegated(t) = &p.ipam {
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
        let p = parse(&req.config)?;
        let ctx = p
            .context()
            .map_err(|e| CniError::unavailable(format!("state store unusable: {}", e.msg)))?;
        ctx.store
            .list(&engine_core::Key::new(["networks"]))
            .map_err(|e| CniError::status_from(&e, false))?;
        if let IpamSource::Delegated(t) = &p.ipam {
            Delegate::find(t, &req.cni_path)?.call("STATUS", &req.stdin)?;
        }
        Ok(())
    }

    fn gc(&self, req: &GcRequest) -> Result<(), CniError> {
        let p = parse(&req.config)?;
        let ctx = p.context()?;
        // Stored endpoints the runtime still lists (an entry without ifname keeps all of a
        // container's), plus the listed ones themselves for leases with no endpoint record.
        let mut live: Vec<AttachmentKey> = ctx
            .engine
            .list_endpoints(&req.config.name)?
            .into_iter()
            .map(|e| e.key)
            .filter(|k| req.is_valid(k))
            .collect();
        live.extend(
            req.valid_attachments()
                .map(<[AttachmentKey]>::to_vec)
                .unwrap_or_default(),
        );
        let errors = ctx.engine.gc(&req.config.name, &live)?;
        let ipam = match &p.ipam {
            IpamSource::Netloom(i) => i,
            IpamSource::Delegated(t) => {
                // The IPAM plugin collects its own leases from the same valid list.
                Delegate::find(t, &req.cni_path)?.call("GC", &req.stdin)?;
                return match errors.into_iter().next() {
                    Some(e) => Err(e.into()),
                    None => Ok(()),
                };
            }
        };
        let mut leased = Vec::new();
        for i in 0..ipam.range_sets.len() {
            match ctx.ipam.leases(&IpamConf::pool_id(&req.config.name, i)) {
                Ok(l) => leased.extend(l.iter().map(|l| l.address.ip())),
                Err(e) if e.kind() == engine_core::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Mirror::new(ipam.data_dir.as_deref(), &req.config.name).retain(&leased);
        if let Some(e) = errors.into_iter().next() {
            return Err(e.into());
        }
        Ok(())
    }
}

/// ADD with a delegated IPAM plugin: it leases, netloom wires what it answered. If wiring
/// fails the plugin is told to release again, so nothing stays leased for a container that has
/// no interface.
fn add_delegated(req: &Request, p: &Parsed, ipam_type: &str) -> Result<CniResult, CniError> {
    let netns = req.netns()?.to_path_buf();
    let ctx = p.context()?;
    let delegate = Delegate::find(ipam_type, &req.cni_path)?;
    let leased = delegate.add(&req.stdin, req.version)?;
    let wired = wire_delegated(req, p, &ctx, &netns, &leased);
    if wired.is_err() {
        if let Err(e) = delegate.call("DEL", &req.stdin) {
            tracing::warn!(error = %e.msg, "releasing the delegated lease after a failed ADD");
        }
    }
    wired
}

fn wire_delegated(
    req: &Request,
    p: &Parsed,
    ctx: &Context,
    netns: &std::path::Path,
    leased: &CniResult,
) -> Result<CniResult, CniError> {
    let name = &req.config.name;
    let existing = ctx
        .engine
        .get_network(name)?
        .map(|n| n.subnets)
        .unwrap_or_default();
    let is_gateway = p.conf.is_gateway || p.conf.is_default_gateway;
    // Without a gateway from the plugin the bridge takes the subnet's first address, as the
    // reference plugin computes it.
    let subnets = merge_subnets(existing, leased, |s| {
        is_gateway.then(|| first_host(s)).flatten()
    })?;
    let net = ctx
        .engine
        .ensure_network(name, &p.network_spec(name, subnets), ctx.overlap())?;
    let gateways: Vec<IpAddr> = net.subnets.iter().filter_map(|s| s.gateway).collect();
    let routes = sandbox_routes(&leased.routes, &gateways);
    let attach = AttachRequest {
        network_id: net.id.clone(),
        key: req.key.clone(),
        sandbox: SandboxSetup::Configure(Sandbox {
            netns_path: netns.to_path_buf(),
        }),
        static_addresses: leased.ips.iter().map(|i| i.address.ip()).collect(),
        mac: requested_mac(req),
        ports: Vec::new(),
        extra_routes: routes,
        options: Options::new(),
    };
    let a = ctx.engine.attach(&attach)?;
    super::delegated_attachment_result(&a, req, netns, leased.dns.clone())
}
