//! `netloom-portmap`: publishes `runtimeConfig.portMappings` through the firewall engine, as the
//! reference `portmap` plugin does with iptables — but as map elements in one nftables
//! transaction, so adding a container never rewrites the others' rules.

use std::path::PathBuf;

use engine_core::engine::network_rules;
use engine_core::firewall::{EndpointRules, NetworkRules};
use engine_core::{Expect, Key, StateStoreExt};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::CniError;
use crate::plugins::context::{state_dir, Context};
use crate::result::CniResult;
use crate::skel::{GcRequest, Plugin, Request, StatusRequest};

/// The reference portmap plugin's keys. `snat` (default true: hairpin connections are
/// masqueraded) is always on in netloom's engine; `markMasqBit` and `externalSetMarkChain` are
/// iptables mechanics with no meaning here and are accepted and ignored. `conditionsV4/V6` are
/// iptables match fragments: a non-empty list is refused rather than silently dropped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PortmapConf {
    conditions_v4: Vec<String>,
    conditions_v6: Vec<String>,
    state_dir: Option<PathBuf>,
    /// nftables, iptables or auto (the reference plugin's key; else `NETLOOM_FIREWALL`).
    backend: Option<String>,
}

/// What DEL and GC need, kept in the store: `portmap/<network>/<container id>/<ifname>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    network: NetworkRules,
    endpoint: EndpointRules,
}

fn record_key(network: &str, key: &engine_core::AttachmentKey) -> Key {
    Key::new(["portmap", network, &key.container_id, &key.ifname])
}

/// The plugin.
pub struct PortmapPlugin;

fn open(config: &crate::config::NetConf) -> Result<(PortmapConf, Context), CniError> {
    let conf: PortmapConf = config.plugin_config()?;
    if !conf.conditions_v4.is_empty() || !conf.conditions_v6.is_empty() {
        return Err(CniError::unsupported_field(
            "conditionsV4/conditionsV6 are iptables match fragments, which netloom-portmap cannot apply; remove them",
        ));
    }
    let ctx = Context::open(
        state_dir(conf.state_dir.clone(), None),
        conf.backend.clone(),
    )?;
    Ok((conf, ctx))
}

/// The network's firewall view: netloom's own when netloom-bridge made the network, else one
/// derived from the main plugin's result (its host-side interface and the container subnets).
/// The network's firewall description, and whether netloom's engine owns the network (its main
/// plugin set the network's rules up when it created it).
fn network_for(
    ctx: &Context,
    name: &str,
    prev: &CniResult,
) -> Result<(NetworkRules, bool), CniError> {
    if let Some(rules) = ctx
        .engine
        .get_network(name)?
        .as_ref()
        .and_then(network_rules)
    {
        return Ok((rules, true));
    }
    let interface = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.as_deref().unwrap_or("").is_empty())
        .map(|i| i.name.clone())
        .ok_or_else(|| {
            CniError::invalid_config(
                "prevResult names no host interface (bridge) for netloom-portmap to publish through",
            )
        })?;
    let subnets: Vec<IpNetwork> = prev
        .ips
        .iter()
        .filter_map(|i| IpNetwork::new(i.address.network(), i.address.prefix()).ok())
        .collect();
    Ok((
        NetworkRules {
            network_id: name.to_string(),
            interface,
            subnets,
            // The main plugin owns masquerade and isolation; portmap only publishes.
            masquerade: false,
            icc: true,
            internal: false,
            isolate: false,
            open_inbound: true,
        },
        false,
    ))
}

impl Plugin for PortmapPlugin {
    fn name(&self) -> &str {
        "netloom-portmap"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let prev = req.prev_result().cloned().ok_or_else(|| {
            CniError::invalid_config(
                "netloom-portmap is a chained plugin: it needs the main plugin's prevResult",
            )
        })?;
        let ports = req.config.runtime_config.port_mappings.clone();
        if ports.is_empty() {
            return Ok(prev);
        }
        let (_conf, ctx) = open(&req.config)?;
        let name = &req.config.name;
        let (network, engine_owned) = network_for(&ctx, name, &prev)?;
        let endpoint = EndpointRules {
            network_id: network.network_id.clone(),
            owner: req.key.owner(),
            addresses: prev.container_ips(),
            ports,
        };
        if endpoint.addresses.is_empty() {
            return Err(CniError::invalid_config(
                "prevResult has no container address to publish ports to",
            ));
        }
        // Stored first: a DEL after a crash in the next step still knows what to remove.
        let key = record_key(name, &req.key);
        let rec = Record {
            network: network.clone(),
            endpoint: endpoint.clone(),
        };
        ctx.store.put_json(&key, &rec, Expect::Any)?;
        let fw = ctx.firewall()?;
        // A network netloom's engine owns got its rules (and route_localnet) when its main plugin
        // created it, so the common ADD goes straight to the endpoint's entries: re-verifying
        // the network's whole ruleset here cost ~20 kernel dumps per ADD. If someone flushed
        // the rules since, the firewall reports them missing (nftables heals them itself) and
        // they are set up again. A network of another main plugin is set up (idempotently)
        // every time, as before: nothing else of ours watches it.
        let done = if engine_owned {
            match fw.add_endpoint(&network, &endpoint) {
                Err(e) if e.kind() == engine_core::ErrorKind::NotFound => fw
                    .setup_network(&network)
                    .and_then(|_| fw.add_endpoint(&network, &endpoint)),
                other => other,
            }
        } else {
            fw.setup_network(&network)
                .and_then(|_| fw.add_endpoint(&network, &endpoint))
        };
        if let Err(e) = done {
            let _ = ctx.store.delete(&key, Expect::Any);
            return Err(e.into());
        }
        if engine_owned {
            // Best effort: without the stamp the next ADD only reads the ruleset back.
            if let Err(e) = engine_core::firewall::verified::record(
                ctx.store.as_ref(),
                fw.as_ref(),
                None,
                &network.network_id,
            ) {
                tracing::debug!(error = %e, "could not record the verified firewall generation");
            }
        }
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (_conf, ctx) = open(&req.config)?;
        let key = record_key(&req.config.name, &req.key);
        let Some((_, rec)) = ctx.store.get_json::<Record>(&key)? else {
            return Ok(());
        };
        ctx.firewall()?.del_endpoint(&rec.network, &rec.endpoint)?;
        ctx.store.delete(&key, Expect::Any)?;
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (_conf, ctx) = open(&req.config)?;
        let key = record_key(&req.config.name, &req.key);
        let Some((_, rec)) = ctx.store.get_json::<Record>(&key)? else {
            if req.config.runtime_config.port_mappings.is_empty() {
                return Ok(());
            }
            return Err(CniError::new(
                crate::error::code::NOT_FOUND,
                format!("no ports published for {}", req.key),
            ));
        };
        let drift = ctx
            .firewall()?
            .check(&rec.network, std::slice::from_ref(&rec.endpoint))?;
        if drift.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
        Err(CniError::new(
            crate::error::code::FIREWALL,
            format!("CHECK found drift: {}", list.join("; ")),
        ))
    }

    fn status(&self, req: &StatusRequest) -> Result<(), CniError> {
        open(&req.config)
            .map(|_| ())
            .map_err(|e| CniError::unavailable(e.msg))
    }

    fn gc(&self, req: &GcRequest) -> Result<(), CniError> {
        let (_conf, ctx) = open(&req.config)?;
        let mut first_error = None;
        for (key, _, rec) in ctx
            .store
            .list_json::<Record>(&Key::new(["portmap", &req.config.name]))?
        {
            let live = rec
                .endpoint
                .owner
                .split_once('/')
                .and_then(|(c, i)| engine_core::AttachmentKey::new(c, i).ok())
                .is_some_and(|k| req.is_valid(&k));
            if live {
                continue;
            }
            match ctx.firewall()?.del_endpoint(&rec.network, &rec.endpoint) {
                Ok(()) => {
                    ctx.store.delete(&key, Expect::Any)?;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
