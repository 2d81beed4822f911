//! The macvlan and ipvlan drivers, and what they share: parents (including 802.1Q
//! sub-interfaces and netloom-made parents), the checks between networks on one parent, the
//! host shim and the endpoint life cycle.
//!
//! Both drivers give each endpoint a child link of the network's parent: a macvlan (its own MAC,
//! modes bridge/private/vepa/passthru) or an ipvlan (the parent's MAC, modes l2/l3/l3s, flags
//! bridge/private/vepa). With a placement (CNI) the child is created directly inside the
//! container under its final name, which spares a move between namespaces; without one
//! (Docker) it is left in the host under a derived name for the runtime to move.
//!
//! Module map: [`options`] (normalised keys), [`parent`] (parents and neighbour checks),
//! [`shim`] (host ↔ container), [`macvlan`] and [`ipvlan`] (the kind-specific link creation),
//! [`names`] (derived names and MACs).

pub mod ipvlan;
pub mod macvlan;
pub mod names;
pub mod options;
pub mod parent;
pub mod reaper;
pub mod shim;

use std::net::IpAddr;

use engine_core::driver::{Capabilities, Driver, Handoff, JoinInfo, Op};
use engine_core::journal::UndoStep;
use engine_core::netlink::{LinkKind, Netlink, OperState};
use engine_core::netns::Netns;
use engine_core::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, Error, ErrorKind, Expect, Network, NetworkSpec,
    Options, Result, RouteSpec, Sandbox, StateStoreExt,
};
use ipnetwork::IpNetwork;

pub use options::VlanOptions;

/// Which child link kind a network uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Macvlan,
    Ipvlan,
}

impl Kind {
    /// The driver name as users type it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Macvlan => "macvlan",
            Kind::Ipvlan => "ipvlan",
        }
    }

    fn link_kind(self) -> LinkKind {
        match self {
            Kind::Macvlan => LinkKind::Macvlan,
            Kind::Ipvlan => LinkKind::Ipvlan,
        }
    }
}

/// Whether a kernel error's errno is of this kind (EOPNOTSUPP → Unsupported, EBUSY →
/// ResourceBusy, …): std's errno table, so no libc constants are needed here.
pub(crate) fn errno_is(e: &Error, kind: std::io::ErrorKind) -> bool {
    e.errno()
        .is_some_and(|n| std::io::Error::from_raw_os_error(n).kind() == kind)
}

/// The macvlan driver (`VlanDriver::macvlan()`) or the ipvlan driver (`VlanDriver::ipvlan()`).
#[derive(Debug, Clone, Copy)]
pub struct VlanDriver {
    kind: Kind,
}

impl VlanDriver {
    pub fn macvlan() -> Self {
        VlanDriver {
            kind: Kind::Macvlan,
        }
    }

    pub fn ipvlan() -> Self {
        VlanDriver { kind: Kind::Ipvlan }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn options(&self, net: &Network) -> Result<VlanOptions> {
        VlanOptions::from_network(self.kind, &net.options)
    }
}

impl Driver for VlanDriver {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            scope: "local".into(),
            supports_ipv6: true,
            supports_port_mapping: false,
            max_endpoints: None,
            no_interface: false,
        }
    }

    fn validate(&self, spec: &NetworkSpec) -> Result<Options> {
        options::normalise(self.kind, spec)
    }

    fn create_network(&self, op: &mut Op, net: &Network) -> Result<()> {
        let kind = self.kind;
        let o = self.options(net)?;
        let store = op.store().clone();
        let _lock = store.lock(parent::LOCK, parent::LOCK_TIMEOUT)?;
        let others = parent::networks(store.as_ref())?;
        parent::check_neighbours(kind, net, &o, &others)?;
        let nl = op.host()?;
        let parent_link = parent::ensure(op, &nl, net, &o).with_net(net)?;
        if let Some(mtu) = net.mtu {
            if mtu > parent_link.mtu {
                return Err(Error::InvalidConfig(format!(
                    "network {}: mtu {mtu} is larger than parent {}'s {}; a {} link cannot exceed its parent's MTU",
                    net.name,
                    o.parent,
                    parent_link.mtu,
                    kind.name()
                )));
            }
        }
        let key = parent::net_key(&net.id);
        let previous = store.get(&key)?;
        op.record(UndoStep::RestoreKey {
            key: key.to_string(),
            value: previous.as_ref().map(|v| v.value.clone()),
        })?;
        let record = parent::NetRecord {
            name: net.name.clone(),
            driver: kind.name().into(),
            parent: o.parent.clone(),
            mode: o.mode_name(kind),
            subnets: net.subnets.iter().map(|s| s.subnet).collect(),
        };
        store.put_json(&key, &record, Expect::Any)?;
        if o.host_shim {
            shim::ensure(op, &nl, kind, net, &o, &parent_link)?;
        } else {
            // The options changed from shim to no shim: the old one must go.
            shim::remove(store.as_ref(), &nl, net)?;
        }
        // A re-created network that moved to another parent leaves the old one behind.
        if let Some(old) =
            previous.and_then(|v| serde_json::from_slice::<parent::NetRecord>(&v.value).ok())
        {
            if old.parent != o.parent {
                parent::release(store.as_ref(), &nl, &old.parent, &net.id)?;
            }
        }
        Ok(())
    }

    fn delete_network(&self, op: &mut Op, net: &Network) -> Result<()> {
        let o = self.options(net)?;
        let store = op.store().clone();
        let _lock = store.lock(parent::LOCK, parent::LOCK_TIMEOUT)?;
        let nl = op.host()?;
        shim::remove(store.as_ref(), &nl, net)?;
        store.delete(&parent::net_key(&net.id), Expect::Any)?;
        parent::release(store.as_ref(), &nl, &o.parent, &net.id)
    }

    fn create_endpoint(&self, op: &mut Op, net: &Network, spec: &EndpointSpec) -> Result<Handoff> {
        let kind = self.kind;
        let o = self.options(net)?;
        let nl = op.host()?;
        let parent = nl.link_by_name(&o.parent)?.ok_or_else(|| {
            Error::NotFound(format!(
                "parent {} of network {} is gone; bring it back or recreate the network",
                o.parent, net.name
            ))
        })?;
        parent::check_usable(&nl, &parent, "parent").with_net(net)?;
        let mtu = spec.mtu.or(net.mtu);
        if let Some(m) = mtu.filter(|m| *m > parent.mtu) {
            return Err(Error::InvalidConfig(format!(
                "network {}: mtu {m} is larger than parent {}'s {}",
                net.name, o.parent, parent.mtu
            )));
        }
        let child = ChildSpec {
            parent: parent.index,
            mtu,
            mac: None,
        };
        let child = match kind {
            Kind::Macvlan => {
                let mac = macvlan::endpoint_mac(net, spec)?;
                // The same attachment just deleted may still hold its MAC on its way out.
                reaper::wait_for_mac(&mac)?;
                ChildSpec {
                    mac: Some(mac),
                    ..child
                }
            }
            Kind::Ipvlan => {
                ipvlan::refuse_mac(spec)?;
                child
            }
        };
        let (link, placed) = match &spec.placement {
            Some(p) => {
                let ns = Netns::open(&p.netns_path).map_err(|e| {
                    e.context(format!("container namespace {}", p.netns_path.display()))
                })?;
                // The one step recorded after the change, deliberately. The link is born in the
                // container under its final name with NLM_F_EXCL, so "the name is taken" is the
                // kernel's atomic answer (EEXIST) rather than a look-up that costs a thread in
                // the container and can race; recorded first, the undo of that failure would
                // delete the container's own interface. What a crash between the two steps can
                // leave is confined to the container's namespace, which the runtime's DEL (the
                // sandbox step deletes the name) or the namespace's removal clears.
                create_child(kind, &nl, &o, &p.ifname, &child, Some(&ns), &parent.name)?;
                let undo = UndoStep::DeleteLink {
                    netns: Some(p.netns_path.clone()),
                    name: p.ifname.clone(),
                };
                if let Err(e) = op.record(undo) {
                    let _ = Netlink::in_netns(&ns)
                        .and_then(|inner| inner.delete_link_if_exists(p.ifname.as_str()));
                    return Err(e);
                }
                (p.ifname.clone(), true)
            }
            None => {
                let name = names::host_link(&net.id, &spec.key);
                // Derived from the attachment: one that exists was left by a crash and is ours.
                nl.delete_link_if_exists(name.as_str())?;
                let host_ns = op.host_netns().map(|p| p.to_path_buf());
                op.record(UndoStep::DeleteLink {
                    netns: host_ns,
                    name: name.clone(),
                })?;
                create_child(kind, &nl, &o, &name, &child, None, &parent.name)?;
                (name, false)
            }
        };
        if o.host_shim {
            shim::add_routes(op.store().as_ref(), &nl, net, &spec.key, &spec.addresses)?;
        }
        Ok(Handoff {
            link,
            // ipvlan children carry the parent's MAC.
            mac: child
                .mac
                .map(|m| m.to_string())
                .or_else(|| parent.mac.map(|m| m.to_string())),
            host_end: None,
            placed,
            host_interfaces: Vec::new(),
        })
    }

    fn delete_endpoint(&self, op: &mut Op, net: &Network, ep: &Endpoint) -> Result<()> {
        let o = self.options(net)?;
        let nl = op.host()?;
        // Left in the host when the runtime never took it (Docker mode), else already gone.
        nl.delete_link_if_exists(names::host_link(&net.id, &ep.key).as_str())?;
        if o.host_shim {
            shim::remove_routes(op.store().as_ref(), &nl, net, &ep.key)?;
        }
        Ok(())
    }

    fn join(
        &self,
        _op: &mut Op,
        net: &Network,
        ep: &Endpoint,
        _sandbox: &Sandbox,
    ) -> Result<JoinInfo> {
        let o = self.options(net)?;
        Ok(join_info(self.kind, net, &o, &ep.addresses))
    }

    fn leave(&self, _op: &mut Op, _net: &Network, ep: &Endpoint) -> Result<()> {
        // By default the child goes with the sandbox step (the engine deletes it in the
        // container). Processes that allow it retire it instead: see `reaper`.
        if reaper::mode() == reaper::Mode::Sync {
            return Ok(());
        }
        let Some(sb) = &ep.sandbox else { return Ok(()) };
        let ns = match Netns::open(&sb.netns_path) {
            Ok(ns) => ns,
            // The runtime removed the namespace, and the child with it.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidConfig) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let nl = Netlink::in_netns(&ns)?;
        let Some(link) = nl.link_by_name(&ep.key.ifname)? else {
            return Ok(());
        };
        // Only our own kind of link; anything else is the sandbox step's to delete.
        if link.kind.as_ref() != Some(&self.kind.link_kind()) {
            return Ok(());
        }
        reaper::retire(&ns, &nl, &link, self.kind == Kind::Macvlan).map(drop)
    }

    fn check(&self, host: &Netlink, net: &Network, ep: &Endpoint) -> Result<Vec<Drift>> {
        let o = self.options(net)?;
        let mut drift = check_parent(host, &o)?;
        if o.host_shim {
            drift.extend(shim::check(host, net, &o, &ep.addresses)?);
        }
        if let Some(sb) = &ep.sandbox {
            drift.extend(check_child(self.kind, &o, sb, &ep.key.ifname)?);
        }
        Ok(drift)
    }

    fn gc(&self, op: &mut Op, net: &Network, live: &[AttachmentKey]) -> Result<Vec<Error>> {
        let o = self.options(net)?;
        if !o.host_shim {
            return Ok(Vec::new());
        }
        let nl = op.host()?;
        shim::gc(op.store().as_ref(), &nl, net, live)
    }
}

/// Adds the network's name to an error's context.
trait WithNet<T> {
    fn with_net(self, net: &Network) -> Result<T>;
}

impl<T> WithNet<T> for Result<T> {
    fn with_net(self, net: &Network) -> Result<T> {
        self.map_err(|e| e.context(format!("network {}", net.name)))
    }
}

/// What a child link is made of, beside its kind and name.
#[derive(Debug, Clone, Copy)]
struct ChildSpec {
    parent: u32,
    mtu: Option<u32>,
    mac: Option<engine_core::netlink::MacAddr>,
}

fn create_child(
    kind: Kind,
    nl: &Netlink,
    o: &VlanOptions,
    name: &str,
    c: &ChildSpec,
    netns: Option<&Netns>,
    parent_name: &str,
) -> Result<()> {
    let r = match kind {
        Kind::Macvlan => macvlan::create(nl, o, name, c.parent, c.mtu, c.mac, netns),
        Kind::Ipvlan => ipvlan::create(nl, o, name, c.parent, c.mtu, netns),
    };
    r.map_err(|e| explain_create_error(kind, o, name, parent_name, netns, e))
}

/// Turns the kernel's terse answers to a failed child creation into what to do about them
/// (the kernel's own words follow in parentheses).
fn explain_create_error(
    kind: Kind,
    o: &VlanOptions,
    name: &str,
    parent: &str,
    netns: Option<&Netns>,
    e: Error,
) -> Error {
    use std::io::ErrorKind as K;
    let other = match kind {
        Kind::Macvlan => "ipvlan",
        Kind::Ipvlan => "macvlan",
    };
    let explained = if errno_is(&e, K::AlreadyExists) {
        let place = netns
            .map(|n| format!("in {}", n.path().display()))
            .unwrap_or_else(|| "in the host".into());
        format!("interface {name} already exists {place}; pick another interface name (CNI_IFNAME) or DEL the old attachment")
    } else if errno_is(&e, K::ResourceBusy) {
        format!(
            "parent {parent} already carries {other} links (a link cannot be a macvlan and an ipvlan parent at once); use another parent or a VLAN of it"
        )
    } else if kind == Kind::Macvlan
        && o.macvlan_mode == engine_core::netlink::MacvlanMode::Passthru
        && errno_is(&e, K::InvalidInput)
    {
        format!("parent {parent} already has a macvlan: passthru mode gives one endpoint the whole parent; use bridge mode for more")
    } else if errno_is(&e, K::AddrInUse) {
        format!(
            "another {} on parent {parent} already uses this MAC address",
            kind.name()
        )
    } else if errno_is(&e, K::Unsupported) {
        return Error::Unsupported(format!("this kernel has no {} support ({e})", kind.name()));
    } else {
        return e;
    };
    Error::Conflict(format!("{explained} ({e})"))
}

/// Gateways and routes for an endpoint with `addrs`.
pub fn join_info(kind: Kind, net: &Network, o: &VlanOptions, addrs: &[IpNetwork]) -> JoinInfo {
    let has = |v4: bool| addrs.iter().any(|a| a.is_ipv4() == v4);
    let l3 = o.is_l3(kind);
    // ipvlan l3 has no ARP: there is no gateway to point at, only the parent's routing.
    let gateway = |v4: bool| -> Option<IpAddr> {
        if o.internal || l3 || !has(v4) {
            return None;
        }
        net.subnets
            .iter()
            .filter(|s| s.subnet.is_ipv4() == v4)
            .find_map(|s| s.gateway)
    };
    let (gw4, gw6) = (gateway(true), gateway(false));
    let mut routes = Vec::new();
    let any = |v4: bool| -> IpNetwork {
        let ip: IpAddr = if v4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        IpNetwork::new(ip, 0).unwrap_or_else(|_| IpNetwork::from(ip))
    };
    if o.default_route {
        if l3 {
            for v4 in [true, false].into_iter().filter(|f| has(*f)) {
                routes.push(RouteSpec {
                    destination: any(v4),
                    gateway: None,
                });
            }
        } else {
            for gw in [gw4, gw6].into_iter().flatten() {
                routes.push(RouteSpec {
                    destination: any(gw.is_ipv4()),
                    gateway: Some(gw),
                });
            }
        }
    }
    if l3 {
        // Every subnet of the network is on-link through the parent, not only the one the
        // endpoint's address (and so its connected route) is in.
        for s in &net.subnets {
            if has(s.subnet.is_ipv4()) && !addrs.iter().any(|a| s.subnet.contains(a.ip())) {
                routes.push(RouteSpec {
                    destination: s.subnet,
                    gateway: None,
                });
            }
        }
    }
    JoinInfo {
        gateway_v4: gw4,
        gateway_v6: gw6,
        routes,
        dst_prefix: "eth".into(),
    }
}

/// CHECK's view of the parent: there, up, not enslaved, with carrier.
fn check_parent(nl: &Netlink, o: &VlanOptions) -> Result<Vec<Drift>> {
    let subject = format!("parent {}", o.parent);
    let Some(p) = nl.link_by_name(&o.parent)? else {
        return Ok(vec![Drift {
            subject,
            problem: "missing".into(),
        }]);
    };
    let mut out = Vec::new();
    if !p.admin_up {
        out.push(Drift {
            subject: subject.clone(),
            problem: format!("down (ip link set {} up)", o.parent),
        });
    } else if matches!(p.oper_state, OperState::Down | OperState::LowerLayerDown) {
        out.push(Drift {
            subject: subject.clone(),
            problem: "has no carrier".into(),
        });
    }
    if let Some(m) = p.master {
        let master = nl
            .link_by_index(m)?
            .map(|l| l.name)
            .unwrap_or_else(|| format!("ifindex {m}"));
        out.push(Drift {
            subject,
            problem: format!("enslaved to {master}"),
        });
    }
    Ok(out)
}

/// CHECK's view of the child in the container: the right kind in the right mode. Missing,
/// down and addresses are the sandbox check's part.
fn check_child(kind: Kind, o: &VlanOptions, sb: &Sandbox, ifname: &str) -> Result<Vec<Drift>> {
    let ns = match Netns::open(&sb.netns_path) {
        Ok(ns) => ns,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let nl = Netlink::in_netns(&ns)?;
    let Some(link) = nl.link_by_name(ifname)? else {
        return Ok(Vec::new());
    };
    let subject = format!("interface {ifname} in {}", sb.netns_path.display());
    if link.kind.as_ref() != Some(&kind.link_kind()) {
        return Ok(vec![Drift {
            subject,
            problem: format!("is a {:?} link, not a {}", link.kind, kind.name()),
        }]);
    }
    let d = nl.link_details(link.index)?.unwrap_or_default();
    let got = match kind {
        Kind::Macvlan => d
            .macvlan_mode
            .map(options::macvlan_mode_name)
            .map(str::to_string),
        Kind::Ipvlan => d.ipvlan_mode.map(|m| {
            format!(
                "{} {}",
                options::ipvlan_mode_name(m),
                options::ipvlan_flag_name(d.ipvlan_flag.unwrap_or_default())
            )
        }),
    };
    let want = o.mode_name(kind);
    match got {
        Some(g) if g != want => Ok(vec![Drift {
            subject,
            problem: format!("mode {g}, want {want}"),
        }]),
        _ => Ok(Vec::new()),
    }
}

/// Whether the store has a network record for `network_id` (tests and netlab).
pub fn has_record(store: &dyn engine_core::StateStore, network_id: &str) -> Result<bool> {
    Ok(store.get(&parent::net_key(network_id))?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::SubnetConfig;

    fn net(kind: Kind, opts: &[(&str, &str)], subnets: &[(&str, &str)]) -> (Network, VlanOptions) {
        let spec = NetworkSpec {
            name: "n".into(),
            driver: kind.name().into(),
            subnets: subnets
                .iter()
                .map(|(s, g)| SubnetConfig {
                    subnet: s.parse().unwrap(),
                    gateway: Some(g.parse().unwrap()),
                    pool_id: "p".into(),
                })
                .collect(),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let options = options::normalise(kind, &spec).unwrap();
        let o = VlanOptions::from_network(kind, &options).unwrap();
        let n = Network {
            id: "n".into(),
            name: "n".into(),
            driver: kind.name().into(),
            subnets: spec.subnets,
            internal: false,
            enable_ipv6: false,
            mtu: None,
            options,
        };
        (n, o)
    }

    fn addrs(a: &[&str]) -> Vec<IpNetwork> {
        a.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn l2_networks_route_via_the_gateway() {
        let (n, o) = net(
            Kind::Macvlan,
            &[("parent", "eth1")],
            &[("10.1.0.0/24", "10.1.0.1"), ("fd00::/64", "fd00::1")],
        );
        let j = join_info(Kind::Macvlan, &n, &o, &addrs(&["10.1.0.5/24"]));
        assert_eq!(j.gateway_v4, Some("10.1.0.1".parse().unwrap()));
        // No IPv6 address, so no IPv6 gateway or route.
        assert_eq!(j.gateway_v6, None);
        assert_eq!(j.routes.len(), 1);
        assert_eq!(j.routes[0].destination.to_string(), "0.0.0.0/0");
        assert_eq!(j.routes[0].gateway, Some("10.1.0.1".parse().unwrap()));
        // CNI: routes come from IPAM, the gateway is still reported.
        let (n, o) = net(
            Kind::Macvlan,
            &[("parent", "eth1"), ("default_route", "false")],
            &[("10.1.0.0/24", "10.1.0.1")],
        );
        let j = join_info(Kind::Macvlan, &n, &o, &addrs(&["10.1.0.5/24"]));
        assert!(j.routes.is_empty() && j.gateway_v4.is_some());
    }

    #[test]
    fn internal_networks_have_no_way_out() {
        let (n, o) = net(Kind::Macvlan, &[], &[("10.1.0.0/24", "10.1.0.1")]);
        let j = join_info(Kind::Macvlan, &n, &o, &addrs(&["10.1.0.5/24"]));
        assert!(j.routes.is_empty() && j.gateway_v4.is_none());
    }

    #[test]
    fn ipvlan_l3_routes_on_link() {
        let (n, o) = net(
            Kind::Ipvlan,
            &[("parent", "eth1"), ("ipvlan_mode", "l3")],
            &[
                ("10.1.0.0/24", "10.1.0.1"),
                ("10.2.0.0/24", "10.2.0.1"),
                ("fd00::/64", "fd00::1"),
            ],
        );
        let j = join_info(Kind::Ipvlan, &n, &o, &addrs(&["10.1.0.5/24", "fd00::5/64"]));
        assert_eq!((j.gateway_v4, j.gateway_v6), (None, None));
        let r: Vec<(String, Option<IpAddr>)> = j
            .routes
            .iter()
            .map(|r| (r.destination.to_string(), r.gateway))
            .collect();
        assert_eq!(
            r,
            vec![
                ("0.0.0.0/0".into(), None),
                ("::/0".into(), None),
                ("10.2.0.0/24".into(), None)
            ],
            "default routes on-link for each family, and the other subnet on-link"
        );
    }

    #[test]
    fn create_errors_say_what_to_do() {
        let (_, o) = net(
            Kind::Macvlan,
            &[("parent", "eth1"), ("macvlan_mode", "passthru")],
            &[("10.1.0.0/24", "10.1.0.1")],
        );
        let kernel = |errno: i32| Error::Netlink {
            context: "create macvlan eth0".into(),
            errno: Some(errno),
            message: "x".into(),
        };
        let e = explain_create_error(Kind::Ipvlan, &o, "eth0", "eth1", None, kernel(16));
        assert!(
            e.to_string().contains("already carries macvlan links"),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let e = explain_create_error(Kind::Macvlan, &o, "eth0", "eth1", None, kernel(22));
        assert!(
            e.to_string().contains("passthru mode gives one endpoint"),
            "{e}"
        );
        let e = explain_create_error(Kind::Macvlan, &o, "eth0", "eth1", None, kernel(17));
        assert!(
            e.to_string()
                .contains("interface eth0 already exists in the host"),
            "{e}"
        );
        let e = explain_create_error(Kind::Macvlan, &o, "eth0", "eth1", None, kernel(95));
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        // Anything else is passed on as the kernel said it.
        let e = explain_create_error(Kind::Macvlan, &o, "eth0", "eth1", None, kernel(1));
        assert_eq!(e.kind(), ErrorKind::Kernel);
    }
}
