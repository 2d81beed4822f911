//! The host shim: how the host reaches its own macvlan/ipvlan containers.
//!
//! The kernel never passes traffic between a parent and its macvlan (or ipvlan) children, so a
//! host cannot talk to containers on its own parent (moby/libnetwork#1915). The shim is one more
//! child of the same parent, left in the host: it carries a host address of the network's subnet
//! as a /32 (/128) — so it adds no subnet route that could fight the parent's — and every
//! container address gets a host route through it. Containers see the shim as a neighbour on
//! their own subnet and answer it directly.
//!
//! Host routes are per endpoint. Before adding them the driver writes an intent record
//! (`drivers/vlan/routes/<network>/<container>/<ifname>`) that deliberately survives a rollback:
//! the runtime's DEL after a failed ADD, or GC, reads it to remove exactly those routes. The
//! shim itself is deleted with the network, taking whatever routes are left with it.

use std::net::IpAddr;

use engine_core::driver::Op;
use engine_core::journal::UndoStep;
use engine_core::netlink::{
    AddrOptions, IpvlanFlag, IpvlanSpec, Link, MacvlanMode, MacvlanSpec, Netlink, RouteSpec,
};
use engine_core::{
    AttachmentKey, Drift, Error, Expect, Key, Network, Result, StateStore, StateStoreExt,
};
use ipnetwork::IpNetwork;

use super::names;
use super::options::VlanOptions;
use super::Kind;

fn routes_prefix(network_id: &str) -> Key {
    Key::new(["drivers", "vlan", "routes", network_id])
}

fn routes_key(network_id: &str, key: &AttachmentKey) -> Key {
    Key::new([
        "drivers",
        "vlan",
        "routes",
        network_id,
        &key.container_id,
        &key.ifname,
    ])
}

/// A host route to one address.
fn host_route(ip: IpAddr, shim_index: u32) -> RouteSpec {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    // A full-length prefix is always valid.
    let dst = IpNetwork::new(ip, prefix).unwrap_or_else(|_| IpNetwork::from(ip));
    RouteSpec::new(dst).dev(shim_index)
}

/// The shim's own addresses: the ones configured, else (internal networks, where nothing else
/// owns it) each subnet's gateway.
pub fn addresses(net: &Network, o: &VlanOptions) -> Vec<IpAddr> {
    if !o.host_shim_addresses.is_empty() {
        return o.host_shim_addresses.clone();
    }
    net.subnets.iter().filter_map(|s| s.gateway).collect()
}

/// Creates the shim on `parent` (replacing a stale one of the same name), gives it its
/// addresses, brings it up and puts back the routes of endpoints that already exist.
pub fn ensure(
    op: &mut Op,
    nl: &Netlink,
    kind: Kind,
    net: &Network,
    o: &VlanOptions,
    parent: &Link,
) -> Result<()> {
    let name = names::shim(&net.id);
    // The name is derived from the network: one that exists is ours (left by a crash, or from
    // before the network's options changed) and in the way.
    nl.delete_link_if_exists(name.as_str())?;
    let host_ns = op.host_netns().map(|p| p.to_path_buf());
    op.record(UndoStep::DeleteLink {
        netns: host_ns,
        name: name.clone(),
    })?;
    let created = match kind {
        Kind::Macvlan => {
            nl.create_macvlan(&MacvlanSpec::new(&name, parent.index, MacvlanMode::Bridge))
        }
        Kind::Ipvlan => nl.create_ipvlan(&IpvlanSpec::new(
            &name,
            parent.index,
            o.ipvlan_mode,
            IpvlanFlag::Bridge,
        )),
    };
    let shim = created.map_err(|e| e.context(format!("host shim of network {}", net.name)))?;
    for ip in addresses(net, o) {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let a = IpNetwork::new(ip, prefix)
            .map_err(|e| Error::Internal(format!("host address {ip}: {e}")))?;
        // Deleting the link removes its addresses too: the DeleteLink step covers them.
        nl.add_address(
            shim.index,
            a,
            AddrOptions {
                nodad: true,
                ..Default::default()
            },
        )?;
    }
    nl.set_up(shim.index)?;
    for (_, _, ips) in op
        .store()
        .list_json::<Vec<IpAddr>>(&routes_prefix(&net.id))?
    {
        for ip in ips {
            nl.replace_route(&host_route(ip, shim.index))?;
        }
    }
    Ok(())
}

/// Deletes the shim and forgets every route record of the network.
pub fn remove(store: &dyn StateStore, nl: &Netlink, net: &Network) -> Result<()> {
    nl.delete_link_if_exists(names::shim(&net.id).as_str())?;
    for (k, _) in store.list(&routes_prefix(&net.id))? {
        store.delete(&k, Expect::Any)?;
    }
    Ok(())
}

/// Routes an endpoint's addresses through the shim. The record is written first and outlives a
/// rollback on purpose (see the module documentation).
pub fn add_routes(
    store: &dyn StateStore,
    nl: &Netlink,
    net: &Network,
    key: &AttachmentKey,
    addrs: &[IpNetwork],
) -> Result<()> {
    let name = names::shim(&net.id);
    let shim = nl.link_by_name(&name)?.ok_or_else(|| {
        Error::NotFound(format!(
            "host shim {name} of network {} is gone; recreate the network",
            net.name
        ))
    })?;
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    store.put_json(&routes_key(&net.id, key), &ips, Expect::Any)?;
    for ip in ips {
        // Replace: a route left by a crash for an address leased again is the same route.
        nl.replace_route(&host_route(ip, shim.index))?;
    }
    Ok(())
}

/// Removes an endpoint's host routes and their record (idempotent).
pub fn remove_routes(
    store: &dyn StateStore,
    nl: &Netlink,
    net: &Network,
    key: &AttachmentKey,
) -> Result<()> {
    let rk = routes_key(&net.id, key);
    let Some((_, ips)) = store.get_json::<Vec<IpAddr>>(&rk)? else {
        return Ok(());
    };
    if let Some(shim) = nl.link_by_name(&names::shim(&net.id))? {
        for ip in ips {
            nl.del_route(&host_route(ip, shim.index))?;
        }
    }
    store.delete(&rk, Expect::Any)?;
    Ok(())
}

/// Removes the routes of attachments not in `live`; continues past errors.
pub fn gc(
    store: &dyn StateStore,
    nl: &Netlink,
    net: &Network,
    live: &[AttachmentKey],
) -> Result<Vec<Error>> {
    let mut errors = Vec::new();
    for (k, _) in store.list(&routes_prefix(&net.id))? {
        let segs = k.segments();
        let (Some(ifname), Some(cid)) = (segs.last(), segs.get(segs.len().saturating_sub(2)))
        else {
            continue;
        };
        let Ok(key) = AttachmentKey::new(cid.clone(), ifname.clone()) else {
            continue;
        };
        if !live.contains(&key) {
            tracing::info!(network = %net.name, attachment = %key, "gc removes stale host-shim routes");
            if let Err(e) = remove_routes(store, nl, net, &key) {
                errors.push(e);
            }
        }
    }
    Ok(errors)
}

/// CHECK's view of the shim for one endpoint.
pub fn check(
    nl: &Netlink,
    net: &Network,
    o: &VlanOptions,
    addrs: &[IpNetwork],
) -> Result<Vec<Drift>> {
    let name = names::shim(&net.id);
    let subject = format!("host shim {name}");
    let Some(shim) = nl.link_by_name(&name)? else {
        return Ok(vec![Drift {
            subject,
            problem: "missing: the host cannot reach the containers".into(),
        }]);
    };
    let mut out = Vec::new();
    if !shim.is_up() {
        out.push(Drift {
            subject: subject.clone(),
            problem: "down".into(),
        });
    }
    let present = nl.addresses_of(shim.index)?;
    for ip in addresses(net, o) {
        if !present.iter().any(|a| a.address.ip() == ip) {
            out.push(Drift {
                subject: subject.clone(),
                problem: format!("address {ip} missing"),
            });
        }
    }
    let routes = nl.routes()?;
    for a in addrs {
        let want = host_route(a.ip(), shim.index);
        if !routes
            .iter()
            .any(|r| r.destination == want.destination && r.oif == Some(shim.index))
        {
            out.push(Drift {
                subject: subject.clone(),
                problem: format!("host route to {} missing", a.ip()),
            });
        }
    }
    Ok(out)
}
