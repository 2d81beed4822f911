//! The macvlan and ipvlan drivers' options, normalised from what users type.
//!
//! Keys are Docker's spellings (`parent`, `macvlan_mode`, `ipvlan_mode`, `ipvlan_flag`) plus
//! netloom's (`host_shim`, `host_shim_address`, `default_route`). `master` (the CNI key) and
//! `mode` are accepted as aliases. Front doors map their spellings onto these; the drivers read
//! only the normalised form stored on the network.

use std::net::IpAddr;

use engine_core::netlink::{IpvlanFlag, IpvlanMode, MacvlanMode};
use engine_core::{validate_ifname, Error, NetworkSpec, Options, Result};

use super::names;
use super::Kind;

pub const PARENT: &str = "parent";
/// `true` when the parent is netloom-made (no parent given, or an internal network).
pub const INTERNAL: &str = "internal";
pub const MACVLAN_MODE: &str = "macvlan_mode";
pub const IPVLAN_MODE: &str = "ipvlan_mode";
pub const IPVLAN_FLAG: &str = "ipvlan_flag";
pub const HOST_SHIM: &str = "host_shim";
pub const HOST_SHIM_ADDRESS: &str = "host_shim_address";
/// Whether `join` gives containers a default route (via the gateway; on-link for ipvlan l3).
/// CNI sets it to false: there, routes come from the IPAM section.
pub const DEFAULT_ROUTE: &str = "default_route";

/// The parsed options of a macvlan or ipvlan network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanOptions {
    pub parent: String,
    pub internal: bool,
    pub macvlan_mode: MacvlanMode,
    pub ipvlan_mode: IpvlanMode,
    pub ipvlan_flag: IpvlanFlag,
    pub host_shim: bool,
    /// The shim's own addresses (a /32 or /128 each); empty = the subnets' gateways, which only
    /// an internal network leaves unused.
    pub host_shim_addresses: Vec<IpAddr>,
    pub default_route: bool,
}

pub fn parse_macvlan_mode(v: &str) -> Result<MacvlanMode> {
    match v.to_ascii_lowercase().as_str() {
        "bridge" | "" => Ok(MacvlanMode::Bridge),
        "private" => Ok(MacvlanMode::Private),
        "vepa" => Ok(MacvlanMode::Vepa),
        "passthru" | "passthrough" => Ok(MacvlanMode::Passthru),
        _ => Err(Error::InvalidConfig(format!(
            "macvlan mode {v:?} is not one of bridge, private, vepa, passthru"
        ))),
    }
}

pub fn macvlan_mode_name(m: MacvlanMode) -> &'static str {
    match m {
        MacvlanMode::Bridge => "bridge",
        MacvlanMode::Private => "private",
        MacvlanMode::Vepa => "vepa",
        MacvlanMode::Passthru => "passthru",
        MacvlanMode::Source => "source",
    }
}

pub fn parse_ipvlan_mode(v: &str) -> Result<IpvlanMode> {
    match v.to_ascii_lowercase().as_str() {
        "l2" | "" => Ok(IpvlanMode::L2),
        "l3" => Ok(IpvlanMode::L3),
        "l3s" => Ok(IpvlanMode::L3s),
        _ => Err(Error::InvalidConfig(format!(
            "ipvlan mode {v:?} is not one of l2, l3, l3s"
        ))),
    }
}

pub fn ipvlan_mode_name(m: IpvlanMode) -> &'static str {
    match m {
        IpvlanMode::L2 => "l2",
        IpvlanMode::L3 => "l3",
        IpvlanMode::L3s => "l3s",
    }
}

pub fn parse_ipvlan_flag(v: &str) -> Result<IpvlanFlag> {
    match v.to_ascii_lowercase().as_str() {
        "bridge" | "" => Ok(IpvlanFlag::Bridge),
        "private" => Ok(IpvlanFlag::Private),
        "vepa" => Ok(IpvlanFlag::Vepa),
        _ => Err(Error::InvalidConfig(format!(
            "ipvlan flag {v:?} is not one of bridge, private, vepa"
        ))),
    }
}

pub fn ipvlan_flag_name(f: IpvlanFlag) -> &'static str {
    match f {
        IpvlanFlag::Bridge => "bridge",
        IpvlanFlag::Private => "private",
        IpvlanFlag::Vepa => "vepa",
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Error::InvalidConfig(format!(
            "option {key} must be true or false, not {v:?}"
        ))),
    }
}

fn parse_addresses(v: &str) -> Result<Vec<IpAddr>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            // Accept a prefix length and ignore it: the shim's addresses are always host routes.
            let ip = s.split('/').next().unwrap_or(s);
            ip.parse().map_err(|_| {
                Error::InvalidConfig(format!("{HOST_SHIM_ADDRESS}: {s:?} is not an IP address"))
            })
        })
        .collect()
}

/// Checks a parent name: an interface name, and for `<base>.<vid>` a VLAN id of 1-4094.
pub fn check_parent(parent: &str) -> Result<()> {
    validate_ifname(parent).map_err(|e| Error::InvalidConfig(format!("parent: {e}")))?;
    if let Some((base, vid)) = names::split_vlan(parent) {
        if !(1..=4094).contains(&vid) {
            return Err(Error::InvalidConfig(format!(
                "parent {parent:?}: VLAN id {vid} is out of range (802.1Q ids are 1-4094)"
            )));
        }
        validate_ifname(base)
            .map_err(|e| Error::InvalidConfig(format!("parent {parent:?}: {e}")))?;
    }
    Ok(())
}

/// Checks and normalises a network's options for `kind`: every key known, every value
/// well-formed, defaults filled in. Unknown keys are rejected so typos do not silently do
/// nothing. Pure: the parent's existence is checked when the network is created.
pub fn normalise(kind: Kind, spec: &NetworkSpec) -> Result<Options> {
    let mode_key = match kind {
        Kind::Macvlan => MACVLAN_MODE,
        Kind::Ipvlan => IPVLAN_MODE,
    };
    let mut raw = Options::new();
    for (k, v) in &spec.options {
        let key = match k.as_str() {
            "master" => PARENT,
            "mode" => mode_key,
            PARENT | HOST_SHIM | HOST_SHIM_ADDRESS | DEFAULT_ROUTE => k.as_str(),
            MACVLAN_MODE if kind == Kind::Macvlan => MACVLAN_MODE,
            IPVLAN_MODE | IPVLAN_FLAG if kind == Kind::Ipvlan => k.as_str(),
            MACVLAN_MODE | IPVLAN_MODE | IPVLAN_FLAG => {
                return Err(Error::InvalidConfig(format!(
                    "option {k} is not for {} networks (use {})",
                    kind.name(),
                    match kind {
                        Kind::Macvlan => "macvlan_mode",
                        Kind::Ipvlan => "ipvlan_mode and ipvlan_flag",
                    }
                )))
            }
            _ => {
                let mut known = vec![PARENT, mode_key];
                if kind == Kind::Ipvlan {
                    known.push(IPVLAN_FLAG);
                }
                known.extend([HOST_SHIM, HOST_SHIM_ADDRESS, DEFAULT_ROUTE]);
                return Err(Error::InvalidConfig(format!(
                    "unknown {} option {k:?} (known: {})",
                    kind.name(),
                    known.join(", ")
                )));
            }
        };
        if raw.insert(key.to_string(), v.clone()).is_some() {
            return Err(Error::InvalidConfig(format!(
                "option {key} is given twice (as {k} and under another spelling)"
            )));
        }
    }
    let mut out = Options::new();
    let parent = raw
        .get(PARENT)
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    let internal = match parent {
        Some(p) if spec.internal => {
            return Err(Error::InvalidConfig(format!(
                "an internal network gets a netloom-made parent: drop parent={p} or make the network non-internal"
            )))
        }
        Some(p) => {
            check_parent(&p)?;
            out.insert(PARENT.into(), p);
            false
        }
        None => {
            out.insert(PARENT.into(), names::internal_parent(&spec.name));
            true
        }
    };
    out.insert(INTERNAL.into(), internal.to_string());
    match kind {
        Kind::Macvlan => {
            let m = parse_macvlan_mode(raw.get(MACVLAN_MODE).map(String::as_str).unwrap_or(""))?;
            out.insert(MACVLAN_MODE.into(), macvlan_mode_name(m).into());
        }
        Kind::Ipvlan => {
            let m = parse_ipvlan_mode(raw.get(IPVLAN_MODE).map(String::as_str).unwrap_or(""))?;
            out.insert(IPVLAN_MODE.into(), ipvlan_mode_name(m).into());
            let f = parse_ipvlan_flag(raw.get(IPVLAN_FLAG).map(String::as_str).unwrap_or(""))?;
            out.insert(IPVLAN_FLAG.into(), ipvlan_flag_name(f).into());
        }
    }
    let shim = raw
        .get(HOST_SHIM)
        .map(|v| parse_bool(HOST_SHIM, v))
        .transpose()?
        .unwrap_or(false);
    out.insert(HOST_SHIM.into(), shim.to_string());
    let shim_addrs = raw
        .get(HOST_SHIM_ADDRESS)
        .map(|v| parse_addresses(v))
        .transpose()?
        .unwrap_or_default();
    if !shim_addrs.is_empty() {
        if !shim {
            return Err(Error::InvalidConfig(format!(
                "{HOST_SHIM_ADDRESS} is set but {HOST_SHIM} is not true"
            )));
        }
        for a in &shim_addrs {
            if !spec.subnets.iter().any(|s| s.subnet.contains(*a)) {
                return Err(Error::InvalidConfig(format!(
                    "{HOST_SHIM_ADDRESS} {a} is in no subnet of the network: containers reach the shim on-link, so it needs an address of theirs"
                )));
            }
        }
        let list: Vec<String> = shim_addrs.iter().map(IpAddr::to_string).collect();
        out.insert(HOST_SHIM_ADDRESS.into(), list.join(","));
    }
    if shim {
        if kind == Kind::Macvlan && out.get(MACVLAN_MODE).map(String::as_str) != Some("bridge") {
            return Err(Error::InvalidConfig(
                "host_shim needs macvlan_mode bridge: in private, vepa and passthru modes containers cannot reach a sibling macvlan such as the shim".into(),
            ));
        }
        if kind == Kind::Ipvlan && out.get(IPVLAN_FLAG).map(String::as_str) != Some("bridge") {
            return Err(Error::InvalidConfig(
                "host_shim needs ipvlan_flag bridge: with private or vepa containers cannot reach a sibling ipvlan such as the shim".into(),
            ));
        }
        if shim_addrs.is_empty() && !internal {
            return Err(Error::InvalidConfig(format!(
                "host_shim needs {HOST_SHIM_ADDRESS}: an address of the network's subnet kept free for the host (the gateway is the upstream router's); the CNI plugins lease one themselves"
            )));
        }
        if shim_addrs.is_empty() && !spec.subnets.iter().any(|s| s.gateway.is_some()) {
            return Err(Error::InvalidConfig(format!(
                "host_shim on an internal network takes the subnet's gateway address, and this network has none: set {HOST_SHIM_ADDRESS}"
            )));
        }
    }
    let default_route = raw
        .get(DEFAULT_ROUTE)
        .map(|v| parse_bool(DEFAULT_ROUTE, v))
        .transpose()?
        .unwrap_or(true)
        && !internal;
    out.insert(DEFAULT_ROUTE.into(), default_route.to_string());
    if let Some(mtu) = spec.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(Error::InvalidConfig(format!(
                "mtu {mtu} is out of range (68-65535)"
            )));
        }
    }
    Ok(out)
}

impl VlanOptions {
    /// Reads normalised options (as stored on the network).
    pub fn from_network(kind: Kind, options: &Options) -> Result<Self> {
        let get = |k: &str| options.get(k).map(String::as_str).unwrap_or("");
        let flag = |k: &str| -> Result<bool> {
            options
                .get(k)
                .map(|v| parse_bool(k, v))
                .transpose()
                .map(|v| v.unwrap_or(false))
        };
        let parent = options.get(PARENT).cloned().ok_or_else(|| {
            Error::Internal(format!("{} network stored without a parent", kind.name()))
        })?;
        Ok(VlanOptions {
            parent,
            internal: flag(INTERNAL)?,
            macvlan_mode: parse_macvlan_mode(get(MACVLAN_MODE))?,
            ipvlan_mode: parse_ipvlan_mode(get(IPVLAN_MODE))?,
            ipvlan_flag: parse_ipvlan_flag(get(IPVLAN_FLAG))?,
            host_shim: flag(HOST_SHIM)?,
            host_shim_addresses: parse_addresses(get(HOST_SHIM_ADDRESS))?,
            default_route: flag(DEFAULT_ROUTE)?,
        })
    }

    /// The mode as the user would write it (for messages and records).
    pub fn mode_name(&self, kind: Kind) -> String {
        match kind {
            Kind::Macvlan => macvlan_mode_name(self.macvlan_mode).to_string(),
            Kind::Ipvlan => format!(
                "{} {}",
                ipvlan_mode_name(self.ipvlan_mode),
                ipvlan_flag_name(self.ipvlan_flag)
            ),
        }
    }

    /// Whether containers switch at layer 3 (ipvlan l3/l3s): no ARP, on-link default routes.
    pub fn is_l3(&self, kind: Kind) -> bool {
        kind == Kind::Ipvlan && self.ipvlan_mode != IpvlanMode::L2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::SubnetConfig;

    fn spec(opts: &[(&str, &str)]) -> NetworkSpec {
        NetworkSpec {
            name: "lan".into(),
            driver: "macvlan".into(),
            subnets: vec![SubnetConfig {
                subnet: "10.1.0.0/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                pool_id: "p".into(),
            }],
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_aliases() {
        let o = normalise(Kind::Macvlan, &spec(&[("master", "eth1")])).unwrap();
        let v = VlanOptions::from_network(Kind::Macvlan, &o).unwrap();
        assert_eq!(v.parent, "eth1");
        assert_eq!(v.macvlan_mode, MacvlanMode::Bridge);
        assert!(!v.internal && !v.host_shim && v.default_route);
        let o = normalise(
            Kind::Ipvlan,
            &spec(&[
                ("parent", "eth1.50"),
                ("mode", "l3s"),
                ("ipvlan_flag", "private"),
            ]),
        )
        .unwrap();
        let v = VlanOptions::from_network(Kind::Ipvlan, &o).unwrap();
        assert_eq!(
            (v.ipvlan_mode, v.ipvlan_flag),
            (IpvlanMode::L3s, IpvlanFlag::Private)
        );
        assert!(v.is_l3(Kind::Ipvlan));
    }

    #[test]
    fn no_parent_means_an_internal_network_on_a_netloom_parent() {
        let v = VlanOptions::from_network(
            Kind::Macvlan,
            &normalise(Kind::Macvlan, &spec(&[])).unwrap(),
        )
        .unwrap();
        assert!(v.internal && !v.default_route);
        assert_eq!(v.parent, names::internal_parent("lan"));
        let mut s = spec(&[("parent", "eth1")]);
        s.internal = true;
        let e = normalise(Kind::Macvlan, &s).unwrap_err();
        assert!(
            e.to_string()
                .contains("internal network gets a netloom-made parent"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("parent", "eth1.0")], "VLAN id 0 is out of range"),
            (&[("parent", "eth1.4095")], "VLAN id 4095 is out of range"),
            (&[("parent", "way-too-long-name0")], "parent"),
            (
                &[("macvlan_mode", "bridged")],
                "not one of bridge, private, vepa, passthru",
            ),
            (&[("ipvlan_mode", "l3")], "not for macvlan networks"),
            (&[("parrent", "eth1")], "unknown macvlan option \"parrent\""),
            (&[("parent", "eth1"), ("master", "eth2")], "given twice"),
            (
                &[("parent", "eth1"), ("host_shim", "true")],
                "host_shim needs host_shim_address",
            ),
            (
                &[
                    ("parent", "eth1"),
                    ("host_shim", "true"),
                    ("host_shim_address", "10.9.0.5"),
                ],
                "in no subnet",
            ),
            (
                &[
                    ("parent", "eth1"),
                    ("host_shim", "true"),
                    ("macvlan_mode", "private"),
                    ("host_shim_address", "10.1.0.5"),
                ],
                "needs macvlan_mode bridge",
            ),
            (
                &[("host_shim_address", "10.1.0.5")],
                "host_shim is not true",
            ),
            (&[("host_shim", "maybe")], "must be true or false"),
        ];
        for (opts, want) in cases {
            let e = normalise(Kind::Macvlan, &spec(opts)).unwrap_err();
            assert!(e.to_string().contains(want), "{opts:?}: {e}");
        }
        let e = normalise(Kind::Ipvlan, &spec(&[("ipvlan_mode", "l4")])).unwrap_err();
        assert!(e.to_string().contains("not one of l2, l3, l3s"), "{e}");
        let mut s = spec(&[]);
        s.mtu = Some(20);
        assert!(normalise(Kind::Macvlan, &s)
            .unwrap_err()
            .to_string()
            .contains("mtu 20"));
    }

    #[test]
    fn shim_on_internal_network_defaults_to_the_gateway() {
        let o = normalise(Kind::Macvlan, &spec(&[("host_shim", "true")])).unwrap();
        let v = VlanOptions::from_network(Kind::Macvlan, &o).unwrap();
        assert!(v.host_shim && v.host_shim_addresses.is_empty());
        let o = normalise(
            Kind::Macvlan,
            &spec(&[
                ("parent", "eth1"),
                ("host_shim", "1"),
                ("host_shim_address", "10.1.0.250/24"),
            ]),
        )
        .unwrap();
        assert_eq!(
            o.get(HOST_SHIM_ADDRESS).map(String::as_str),
            Some("10.1.0.250")
        );
    }
}
