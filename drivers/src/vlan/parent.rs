//! Parents: the host link macvlan and ipvlan endpoints hang off.
//!
//! A network's parent is one of:
//! - an existing link the user named (`parent=eth1`), used as it is and never deleted;
//! - an 802.1Q sub-interface `parent=eth1.50`: used if it exists, else created on `eth1` with
//!   VLAN id 50 and deleted with the last network that needed it — only if netloom created it;
//! - a netloom-made parent `dm-…` for a network without a parent (internal-only): a `dummy`
//!   where the kernel has it, else an empty bridge (it forwards nothing, has no ports, and
//!   macvlans on it switch between themselves), deleted with its network.
//!
//! What netloom created is marked in the store (`drivers/vlan/created/<parent>`); which
//! networks use which parent is recorded per network (`drivers/vlan/networks/<id>`). Both are
//! read and written under one store lock, so parallel network creations and deletions agree on
//! who is last.

use std::time::Duration;

use engine_core::driver::Op;
use engine_core::journal::UndoStep;
use engine_core::netlink::{Link, LinkKind, Netlink, VlanSpec};
use engine_core::{Error, Expect, Key, Network, Result, StateStore, StateStoreExt};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::names;
use super::options::VlanOptions;
use super::Kind;

/// The store lock under which parents and network records change.
pub const LOCK: &str = "drivers-vlan";
pub const LOCK_TIMEOUT: Duration = engine_core::engine::LOCK_TIMEOUT;

/// What the drivers remember of a network: enough to check neighbours on the same parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    pub name: String,
    pub driver: String,
    pub parent: String,
    /// The mode as users write it ("bridge", "l3 private").
    pub mode: String,
    pub subnets: Vec<IpNetwork>,
}

/// A parent netloom created, and so may delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// "vlan", "dummy" or "bridge".
    pub kind: String,
}

pub fn net_key(network_id: &str) -> Key {
    Key::new(["drivers", "vlan", "networks", network_id])
}

pub fn created_key(parent: &str) -> Key {
    Key::new(["drivers", "vlan", "created", parent])
}

/// Every network record, by network id.
pub fn networks(store: &dyn StateStore) -> Result<Vec<(String, NetRecord)>> {
    let prefix = Key::new(["drivers", "vlan", "networks"]);
    Ok(store
        .list_json::<NetRecord>(&prefix)?
        .into_iter()
        .filter_map(|(k, _, r)| k.segments().last().cloned().map(|id| (id, r)))
        .collect())
}

/// Whether the store says netloom created `parent`.
pub fn created_by_us(store: &dyn StateStore, parent: &str) -> Result<Option<Created>> {
    Ok(store
        .get_json::<Created>(&created_key(parent))?
        .map(|(_, c)| c))
}

/// Refuses a network that cannot share its parent with the networks already on it.
pub fn check_neighbours(
    kind: Kind,
    net: &Network,
    o: &VlanOptions,
    others: &[(String, NetRecord)],
) -> Result<()> {
    for (id, other) in others {
        if *id == net.id || other.parent != o.parent {
            continue;
        }
        if other.driver != kind.name() {
            return Err(Error::Conflict(format!(
                "parent {} already carries {} network {}: a link cannot be a macvlan and an ipvlan parent at once; use another parent or a VLAN of it (e.g. {}.10)",
                o.parent, other.driver, other.name, o.parent
            )));
        }
        if kind == Kind::Macvlan && (other.mode == "passthru" || o.mode_name(kind) == "passthru") {
            return Err(Error::Conflict(format!(
                "parent {} already carries macvlan network {}, and passthru mode gives one macvlan the whole parent; use another parent",
                o.parent, other.name
            )));
        }
        for s in &net.subnets {
            for os in &other.subnets {
                if engine_core::subnets_overlap(s.subnet, *os) {
                    return Err(Error::Conflict(format!(
                        "subnet {} overlaps subnet {os} of network {}, which is on the same parent {}: containers of both would share one broadcast domain with clashing addresses; use another subnet or another parent",
                        s.subnet, other.name, o.parent
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The name of a link's master, for messages.
fn master_name(nl: &Netlink, index: u32) -> String {
    match nl.link_by_index(index) {
        Ok(Some(l)) => l.name,
        _ => format!("ifindex {index}"),
    }
}

/// Refuses a parent that cannot carry macvlan/ipvlan links: enslaved to a bridge or bond, or down.
pub fn check_usable(nl: &Netlink, link: &Link, what: &str) -> Result<()> {
    if let Some(m) = link.master {
        return Err(Error::InvalidConfig(format!(
            "{what} {} is enslaved to {} (a bridge or bond port): its traffic belongs to that master; use the master itself, another interface or a VLAN",
            link.name,
            master_name(nl, m)
        )));
    }
    if link.name == "lo" {
        return Err(Error::InvalidConfig(format!(
            "{what} {} is the loopback device",
            link.name
        )));
    }
    if !link.admin_up {
        return Err(Error::InvalidConfig(format!(
            "{what} {} is down: bring it up (ip link set {} up) and try again",
            link.name, link.name
        )));
    }
    Ok(())
}

/// Makes sure the network's parent exists and can carry endpoints; returns it. Records an undo
/// step before creating anything. Call under [`LOCK`].
pub fn ensure(op: &mut Op, nl: &Netlink, net: &Network, o: &VlanOptions) -> Result<Link> {
    let store = op.store().clone();
    let host_ns = op.host_netns().map(|p| p.to_path_buf());
    if o.internal {
        if let Some(l) = nl.link_by_name(&o.parent)? {
            if created_by_us(store.as_ref(), &o.parent)?.is_none() {
                return Err(Error::Conflict(format!(
                    "{} exists but netloom did not create it, so it cannot serve as network {}'s internal parent; remove it or give a parent",
                    o.parent, net.name
                )));
            }
            if !l.admin_up {
                nl.set_up(l.index)?;
            }
            return Ok(l);
        }
        op.record(UndoStep::DeleteLink {
            netns: host_ns,
            name: o.parent.clone(),
        })?;
        let marker = created_key(&o.parent);
        op.record(UndoStep::RestoreKey {
            key: marker.to_string(),
            value: None,
        })?;
        store.put_json(
            &marker,
            &Created {
                kind: "dummy".into(),
            },
            Expect::Any,
        )?;
        let link = match nl.create_dummy(&o.parent, net.mtu) {
            Ok(l) => l,
            // This kernel has no dummy: an empty bridge is the next best thing (no ports, so
            // nothing enters or leaves; the macvlans on it switch among themselves).
            Err(e) if super::errno_is(&e, std::io::ErrorKind::Unsupported) => {
                store.put_json(
                    &marker,
                    &Created {
                        kind: "bridge".into(),
                    },
                    Expect::Any,
                )?;
                let mut spec = engine_core::netlink::BridgeSpec::new(&o.parent);
                if let Some(mtu) = net.mtu {
                    spec = spec.mtu(mtu);
                }
                nl.create_bridge(&spec)?
            }
            Err(e) => return Err(e),
        };
        nl.set_up(link.index)?;
        return Ok(link);
    }
    if let Some(l) = nl.link_by_name(&o.parent)? {
        if let (Some((_, vid)), Some(LinkKind::Vlan)) = (names::split_vlan(&o.parent), &l.kind) {
            let got = nl.link_details(l.index)?.and_then(|d| d.vlan_id);
            if got.is_some_and(|g| u32::from(g) != vid) {
                return Err(Error::Conflict(format!(
                    "{} exists with VLAN id {}, not {vid}; rename it or pick the matching parent name",
                    o.parent,
                    got.unwrap_or_default()
                )));
            }
        }
        if !l.admin_up && created_by_us(store.as_ref(), &o.parent)?.is_some() {
            // Ours: keep it usable.
            nl.set_up(l.index)?;
            return Ok(l);
        }
        check_usable(nl, &l, "parent")?;
        return Ok(l);
    }
    let Some((base_name, vid)) = names::split_vlan(&o.parent) else {
        return Err(Error::NotFound(format!(
            "parent {} does not exist in the host's network namespace; name an existing interface (ip link) or leave parent out for an internal network",
            o.parent
        )));
    };
    let base = nl.link_by_name(base_name)?.ok_or_else(|| {
        Error::NotFound(format!(
            "parent {}: its base interface {base_name} does not exist, so the VLAN {vid} sub-interface cannot be made",
            o.parent
        ))
    })?;
    check_usable(nl, &base, &format!("parent {}: base interface", o.parent))?;
    let id = u16::try_from(vid).map_err(|_| {
        Error::InvalidConfig(format!(
            "parent {}: VLAN id {vid} is out of range",
            o.parent
        ))
    })?;
    op.record(UndoStep::DeleteLink {
        netns: host_ns,
        name: o.parent.clone(),
    })?;
    let marker = created_key(&o.parent);
    op.record(UndoStep::RestoreKey {
        key: marker.to_string(),
        value: None,
    })?;
    store.put_json(
        &marker,
        &Created {
            kind: "vlan".into(),
        },
        Expect::Any,
    )?;
    let link = nl.create_vlan(&VlanSpec::new(&o.parent, base.index, id)).map_err(|e| {
        if super::errno_is(&e, std::io::ErrorKind::Unsupported) {
            Error::Unsupported(format!(
                "parent {}: this kernel has no 802.1Q VLAN support (module 8021q); create {} yourself or use another parent",
                o.parent, o.parent
            ))
        } else {
            e
        }
    })?;
    nl.set_up(link.index)?;
    Ok(link)
}

/// Called after a network left `parent`: when no network uses it any more and netloom created
/// it, deletes it — unless links netloom does not know of still hang off it. Call under [`LOCK`].
pub fn release(
    store: &dyn StateStore,
    nl: &Netlink,
    parent: &str,
    except_network: &str,
) -> Result<()> {
    if networks(store)?
        .iter()
        .any(|(id, r)| id != except_network && r.parent == parent)
    {
        return Ok(());
    }
    let Some(created) = created_by_us(store, parent)? else {
        return Ok(());
    };
    if let Some(l) = nl.link_by_name(parent)? {
        let users: Vec<String> = nl
            .links()?
            .into_iter()
            .filter(|c| {
                c.link_index == Some(l.index) && c.link_netnsid.is_none() && c.index != l.index
            })
            .filter(|c| {
                matches!(
                    c.kind,
                    Some(LinkKind::Macvlan | LinkKind::Ipvlan | LinkKind::Vlan)
                )
            })
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            tracing::warn!(parent, kind = %created.kind, users = ?users, "keeping a netloom-made parent that other links still use");
            return Ok(());
        }
        nl.delete_link_if_exists(l.index)?;
    }
    store.delete(&created_key(parent), Expect::Any)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::{NetworkSpec, SubnetConfig};

    fn net(id: &str, subnet: &str, opts: &[(&str, &str)], kind: Kind) -> (Network, VlanOptions) {
        let spec = NetworkSpec {
            name: id.into(),
            driver: kind.name().into(),
            subnets: vec![SubnetConfig {
                subnet: subnet.parse().unwrap(),
                gateway: None,
                pool_id: id.into(),
            }],
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let options = super::super::options::normalise(kind, &spec).unwrap();
        let o = VlanOptions::from_network(kind, &options).unwrap();
        let n = Network {
            id: id.into(),
            name: id.into(),
            driver: kind.name().into(),
            subnets: spec.subnets,
            internal: false,
            enable_ipv6: false,
            mtu: None,
            options,
        };
        (n, o)
    }

    fn record(n: &Network, o: &VlanOptions, kind: Kind) -> (String, NetRecord) {
        let r = NetRecord {
            name: n.name.clone(),
            driver: kind.name().into(),
            parent: o.parent.clone(),
            mode: o.mode_name(kind),
            subnets: n.subnets.iter().map(|s| s.subnet).collect(),
        };
        (n.id.clone(), r)
    }

    #[test]
    fn neighbours_on_one_parent() {
        let (a, ao) = net("a", "10.1.0.0/24", &[("parent", "eth1")], Kind::Macvlan);
        let others = vec![record(&a, &ao, Kind::Macvlan)];
        // Same parent, disjoint subnet: fine. Overlapping: refused, naming both.
        let (b, bo) = net("b", "10.2.0.0/24", &[("parent", "eth1")], Kind::Macvlan);
        check_neighbours(Kind::Macvlan, &b, &bo, &others).unwrap();
        let (c, co) = net("c", "10.1.0.128/25", &[("parent", "eth1")], Kind::Macvlan);
        let e = check_neighbours(Kind::Macvlan, &c, &co, &others).unwrap_err();
        assert!(
            e.to_string()
                .contains("overlaps subnet 10.1.0.0/24 of network a"),
            "{e}"
        );
        assert_eq!(e.kind(), engine_core::ErrorKind::Conflict);
        // Other parent: anything goes.
        let (d, d_o) = net("d", "10.1.0.0/24", &[("parent", "eth2")], Kind::Macvlan);
        check_neighbours(Kind::Macvlan, &d, &d_o, &others).unwrap();
        // ipvlan beside macvlan on one parent: refused.
        let (e_, eo) = net("e", "10.3.0.0/24", &[("parent", "eth1")], Kind::Ipvlan);
        let e = check_neighbours(Kind::Ipvlan, &e_, &eo, &others).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot be a macvlan and an ipvlan parent"),
            "{e}"
        );
        // Passthru wants the parent to itself.
        let (f, fo) = net(
            "f",
            "10.4.0.0/24",
            &[("parent", "eth1"), ("macvlan_mode", "passthru")],
            Kind::Macvlan,
        );
        assert!(check_neighbours(Kind::Macvlan, &f, &fo, &others)
            .unwrap_err()
            .to_string()
            .contains("passthru"));
        // A network is not its own neighbour (re-creation with a changed spec).
        check_neighbours(Kind::Macvlan, &a, &ao, &others).unwrap();
    }
}
