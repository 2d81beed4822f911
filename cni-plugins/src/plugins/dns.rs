//! `netloom-dns`: a chained plugin that gives the container a DNS name on its network.
//!
//! ADD registers the container's name (CNI_ARGS `K8S_POD_NAME`, else the container id), its
//! `runtimeConfig.aliases` and its 12-character short id with the addresses of the main
//! plugin's result, makes `netloom-dnsd` serve them (starting it if none runs) and returns the
//! result with `dns.nameservers` = the network's gateways and the search domain. The name
//! answers as soon as ADD returns. DEL and GC remove records; the server exits after the last.
//!
//! Configuration keys: `domainName` (default `dns.netloom`), `upstreams` (["ip" or
//! "ip:port", …]; default: the host's resolv.conf), `stateDir`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use dns::{NetworkEntry, RecordEntry, Registry};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::error::{code, CniError};
use crate::plugins::context::state_dir;
use crate::result::CniResult;
use crate::skel::{GcRequest, Plugin, Request, StatusRequest};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct DnsConf {
    domain_name: Option<String>,
    upstreams: Vec<String>,
    state_dir: Option<PathBuf>,
}

/// The plugin.
pub struct DnsPlugin;

fn dns_err(e: dns::Error) -> CniError {
    match e {
        dns::Error::Store(e) => CniError::from(e),
        dns::Error::InvalidName(m) | dns::Error::InvalidConfig(m) => CniError::invalid_config(m),
        dns::Error::Io { .. } => CniError::io(e.to_string()),
        other => CniError::new(code::INTERNAL, other.to_string()),
    }
}

fn open(config: &crate::config::NetConf) -> Result<(DnsConf, Registry), CniError> {
    let conf: DnsConf = config.plugin_config()?;
    let reg = Registry::open(&state_dir(conf.state_dir.clone(), None)).map_err(dns_err)?;
    Ok((conf, reg))
}

/// The network's DNS entry from the configuration and the main plugin's result.
fn network_entry(conf: &DnsConf, name: &str, prev: &CniResult) -> Result<NetworkEntry, CniError> {
    let domain =
        dns::registry::normalize_name(conf.domain_name.as_deref().unwrap_or(dns::DEFAULT_DOMAIN))
            .map_err(dns_err)?;
    let upstreams = conf
        .upstreams
        .iter()
        .map(|u| dns::registry::parse_upstream(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(dns_err)?;
    let mut subnets: Vec<IpNetwork> = Vec::new();
    let mut gateways: Vec<IpAddr> = Vec::new();
    for ip in &prev.ips {
        if let Ok(net) = IpNetwork::new(ip.address.network(), ip.address.prefix()) {
            if !subnets.contains(&net) {
                subnets.push(net);
            }
        }
        if let Some(gw) = ip.gateway {
            if !gateways.contains(&gw) {
                gateways.push(gw);
            }
        }
    }
    if gateways.is_empty() {
        return Err(CniError::invalid_config(
            "prevResult has no gateway address for netloom-dns to listen on (use a main plugin with isGateway)",
        ));
    }
    Ok(NetworkEntry {
        name: name.to_string(),
        subnets,
        gateways,
        domain,
        upstreams,
    })
}

/// Name, aliases and short id, lower case, without repeats. The primary name (first; PTR
/// answers use it) is `K8S_POD_NAME`, else the container id, else — for ids that are no DNS
/// name, such as 64-character hex ids — the short id.
fn names_for(req: &Request) -> Result<Vec<String>, CniError> {
    let mut names: Vec<String> = Vec::new();
    let mut push = |n: String| {
        if !names.contains(&n) {
            names.push(n);
        }
    };
    let cid = &req.key.container_id;
    // Docker's 12-character short id; ids whose start is no DNS label simply have none.
    let short = (cid.len() > 12)
        .then(|| cid.get(..12))
        .flatten()
        .and_then(|s| dns::registry::normalize_name(s).ok());
    match req.args.get("K8S_POD_NAME").filter(|n| !n.is_empty()) {
        Some(n) => push(dns::registry::normalize_name(n).map_err(dns_err)?),
        None => match (dns::registry::normalize_name(cid), &short) {
            (Ok(n), _) => push(n),
            (Err(_), Some(s)) => push(s.clone()),
            (Err(_), None) => {
                return Err(CniError::invalid_config(format!(
                    "container id {cid:?} is not a DNS name and no K8S_POD_NAME was given"
                )))
            }
        },
    }
    for alias in &req.config.runtime_config.aliases {
        push(dns::registry::normalize_name(alias).map_err(dns_err)?);
    }
    if let Some(s) = short {
        push(s);
    }
    Ok(names)
}

impl Plugin for DnsPlugin {
    fn name(&self) -> &str {
        "netloom-dns"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let mut prev = req.prev_result().cloned().ok_or_else(|| {
            CniError::invalid_config(
                "netloom-dns is a chained plugin: it needs the main plugin's prevResult",
            )
        })?;
        let (conf, reg) = open(&req.config)?;
        let net = network_entry(&conf, &req.config.name, &prev)?;
        let rec = RecordEntry {
            network: net.name.clone(),
            container_id: req.key.container_id.clone(),
            ifname: req.key.ifname.clone(),
            names: names_for(req)?,
            ips: prev.container_ips(),
        };
        if rec.ips.is_empty() {
            return Err(CniError::invalid_config(
                "prevResult has no container address to give a name to",
            ));
        }
        reg.register(&net, &rec).map_err(dns_err)?;
        if let Err(e) = dns::launcher::ensure_running(&reg) {
            // Leave nothing half-made: the runtime will not DEL a failed ADD's name.
            let _ = reg.unregister(&net.name, &rec.container_id, &rec.ifname);
            let _ = dns::launcher::notify(&reg);
            return Err(dns_err(e));
        }
        let mut servers: Vec<String> = net.gateways.iter().map(|g| g.to_string()).collect();
        servers.retain(|s| !prev.dns.nameservers.contains(s));
        servers.append(&mut prev.dns.nameservers);
        prev.dns.nameservers = servers;
        if !prev.dns.search.contains(&net.domain) {
            prev.dns.search.insert(0, net.domain.clone());
        }
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (_conf, reg) = open(&req.config)?;
        reg.unregister(&req.config.name, &req.key.container_id, &req.key.ifname)
            .map_err(dns_err)?;
        // A server that cannot bind some other network's address still dropped this name.
        if let Err(e) = dns::launcher::notify(&reg) {
            tracing::warn!(error = %e, "netloom-dnsd reload after DEL");
        }
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (_conf, reg) = open(&req.config)?;
        let rec = reg
            .record(&req.config.name, &req.key.container_id, &req.key.ifname)
            .map_err(dns_err)?
            .ok_or_else(|| {
                CniError::new(
                    code::NOT_FOUND,
                    format!("no DNS name registered for {}", req.key),
                )
            })?;
        if let Some(prev) = req.prev_result() {
            let want = prev.container_ips();
            if want.iter().any(|ip| !rec.ips.contains(ip)) {
                return Err(CniError::new(
                    code::NOT_FOUND,
                    format!(
                        "DNS record of {} has {:?}, prevResult {want:?}",
                        req.key, rec.ips
                    ),
                ));
            }
        }
        dns::control::request(&reg.control_socket(), "ping", Duration::from_secs(5))
            .map(|_| ())
            .map_err(dns_err)
    }

    fn status(&self, req: &StatusRequest) -> Result<(), CniError> {
        open(&req.config)
            .map(|_| ())
            .map_err(|e| CniError::unavailable(e.msg))
    }

    fn gc(&self, req: &GcRequest) -> Result<(), CniError> {
        let (_conf, reg) = open(&req.config)?;
        let removed = reg
            .gc(&req.config.name, |cid, ifname| {
                engine_core::AttachmentKey::new(cid, ifname).is_ok_and(|k| req.is_valid(&k))
            })
            .map_err(dns_err)?;
        if removed > 0 {
            dns::launcher::notify(&reg).map_err(dns_err)?;
        }
        Ok(())
    }
}
