//! The bridge driver's options, normalised from what users type.
//!
//! Front doors map their spellings onto these keys (CNI `bridge`, `isGateway`…; Docker
//! `com.docker.network.bridge.name`, `enable_ip_masquerade`…); the driver reads only these.

use engine_core::{validate_ifname, Error, NetworkSpec, Options, Result};

pub const BRIDGE: &str = "bridge";
pub const IS_GATEWAY: &str = "is_gateway";
pub const IS_DEFAULT_GATEWAY: &str = "is_default_gateway";
pub const FORCE_ADDRESS: &str = "force_address";
pub const IP_MASQUERADE: &str = "ip_masquerade";
pub const ICC: &str = "icc";
pub const HAIRPIN: &str = "hairpin";
pub const PROMISC: &str = "promisc";
/// Keep the network apart from other netloom networks (Docker's behaviour).
pub const ISOLATE: &str = "isolate";
/// Let outside traffic reach containers directly, not only through published ports.
pub const OPEN_INBOUND: &str = "open_inbound";
/// The VLAN (1-4094) every endpoint's bridge port gets as PVID, untagged (CNI `vlan`); turns
/// VLAN filtering on on the bridge.
pub const VLAN: &str = "vlan";
/// Tagged VLANs every endpoint's port carries (CNI `vlanTrunk`), as `10,20-30`.
pub const VLAN_TRUNK: &str = "vlan_trunk";
/// Keep the bridge's default VLAN on tagged ports (CNI `preserveDefaultVlan`, default true).
pub const PRESERVE_DEFAULT_VLAN: &str = "preserve_default_vlan";
/// Drop frames from a container whose source MAC is not its interface's (CNI `macspoofchk`).
pub const MACSPOOFCHK: &str = "macspoofchk";
/// Derived, never given, for VLAN networks: `<bridge>.<vid>`, the VLAN's gateway port, where
/// the gateway addresses live and routed traffic enters and leaves (made only with a
/// gateway). The engine's firewall keys the network's entries by it.
pub const GATEWAY_INTERFACE: &str = "gateway_interface";

const BOOLS: &[(&str, bool)] = &[
    (IS_GATEWAY, true),
    (IS_DEFAULT_GATEWAY, true),
    (FORCE_ADDRESS, false),
    (IP_MASQUERADE, true),
    (ICC, true),
    (HAIRPIN, false),
    (PROMISC, false),
    (ISOLATE, true),
    (OPEN_INBOUND, false),
];

/// Flags stored only when given (so networks that do not use them keep the options they had).
const OPTIONAL_BOOLS: &[(&str, bool)] = &[(PRESERVE_DEFAULT_VLAN, true), (MACSPOOFCHK, false)];

/// The parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeOptions {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masquerade: bool,
    pub icc: bool,
    pub hairpin: bool,
    pub promisc: bool,
    /// The access VLAN of every port (PVID, untagged).
    pub vlan: Option<u16>,
    /// Tagged VLANs of every port, sorted, each once.
    pub vlan_trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    pub macspoofchk: bool,
    /// See [`GATEWAY_INTERFACE`].
    pub gateway_interface: Option<String>,
}

/// The bridge name used when none is given: `nlbr-` + the start of the network id.
pub fn default_bridge_name(network: &str) -> String {
    let id: String = network
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(10)
        .collect();
    format!("nlbr-{id}")
}

/// Checks and normalises `spec.options`: every key known, every value well-formed, defaults
/// filled in. Unknown keys are rejected so typos do not silently do nothing.
pub fn normalise(spec: &NetworkSpec) -> Result<Options> {
    let mut out = Options::new();
    for (k, v) in &spec.options {
        if k == BRIDGE {
            validate_ifname(v).map_err(|e| Error::InvalidConfig(format!("bridge name: {e}")))?;
        } else if k == VLAN {
            match parse_vlan(v)? {
                // 0 is the reference plugin's "no VLAN".
                None => continue,
                Some(vid) => {
                    out.insert(k.clone(), vid.to_string());
                    continue;
                }
            }
        } else if k == VLAN_TRUNK {
            let ids = parse_trunk(v)?;
            if !ids.is_empty() {
                out.insert(k.clone(), format_trunk(&ids));
            }
            continue;
        } else if k == GATEWAY_INTERFACE {
            return Err(Error::InvalidConfig(format!(
                "bridge option {k:?} is derived by netloom (from \"vlan\"), not set"
            )));
        } else if BOOLS.iter().any(|(b, _)| b == k) {
            parse_bool(k, v)?;
        } else if OPTIONAL_BOOLS.iter().any(|(b, _)| b == k) {
            out.insert(k.clone(), parse_bool(k, v)?.to_string());
            continue;
        } else {
            let known: Vec<&str> = [BRIDGE, VLAN, VLAN_TRUNK]
                .into_iter()
                .chain(BOOLS.iter().chain(OPTIONAL_BOOLS).map(|(b, _)| *b))
                .collect();
            return Err(Error::InvalidConfig(format!(
                "unknown bridge option {k:?} (known: {})",
                known.join(", ")
            )));
        }
        out.insert(k.clone(), v.clone());
    }
    out.entry(BRIDGE.into())
        .or_insert_with(|| default_bridge_name(&spec.name));
    for (k, d) in BOOLS {
        let v = out
            .get(*k)
            .map(|v| parse_bool(k, v))
            .transpose()?
            .unwrap_or(*d);
        out.insert((*k).to_string(), v.to_string());
    }
    if spec.internal {
        // An internal network has no way out: no masquerade, and containers get no default route.
        out.insert(IP_MASQUERADE.into(), "false".into());
        out.insert(IS_DEFAULT_GATEWAY.into(), "false".into());
    }
    if out.contains_key(VLAN) && out.contains_key(VLAN_TRUNK) {
        // As the reference plugin: a port is either an access port or a trunk.
        return Err(Error::InvalidConfig(
            "vlan and vlanTrunk cannot be set together: a port is either an access port (vlan) or a trunk (vlanTrunk)".into(),
        ));
    }
    // Every VLAN network gets its own: its gateway port when it has a gateway, and in any case
    // the name its firewall entries are keyed by, so networks sharing a bridge on different
    // VLANs do not share (and overwrite) them.
    if let Some(vid) = out.get(VLAN) {
        let bridge = out.get(BRIDGE).cloned().unwrap_or_default();
        let vid: u16 = vid
            .parse()
            .map_err(|_| Error::Internal("normalised vlan is not a number".into()))?;
        out.insert(GATEWAY_INTERFACE.into(), vlan_gateway_name(&bridge, vid));
    }
    if let Some(mtu) = spec.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(Error::InvalidConfig(format!(
                "mtu {mtu} is out of range (68-65535)"
            )));
        }
    }
    Ok(out)
}

/// The gateway port of VLAN `vid` on `bridge`, which carries the gateway addresses: the
/// reference plugin's `<bridge>.<vid>` when that fits the kernel's 15 bytes, else a name
/// derived from both.
pub fn vlan_gateway_name(bridge: &str, vid: u16) -> String {
    let name = format!("{bridge}.{vid}");
    if name.len() <= 15 {
        name
    } else {
        format!(
            "nlgw{:06x}.{vid}",
            crate::naming::fnv1a(&["vlan-gateway", bridge]) & 0xff_ffff
        )
    }
}

/// A VLAN id: 1-4094, or 0 for none.
fn parse_vlan(v: &str) -> Result<Option<u16>> {
    let bad = || {
        Error::InvalidConfig(format!(
            "vlan must be a VLAN id from 1 to 4094 (0: none), not {v:?}"
        ))
    };
    let n: u16 = v.trim().parse().map_err(|_| bad())?;
    match n {
        0 => Ok(None),
        1..=4094 => Ok(Some(n)),
        _ => Err(bad()),
    }
}

/// A trunk list `10,20-30` (the CNI front door flattens `vlanTrunk` into it): sorted, each once.
pub fn parse_trunk(v: &str) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            Error::InvalidConfig(format!(
                "vlanTrunk entry {part:?} is not a VLAN id (1-4094) or a range of them (min-max)"
            ))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if !(1..=4094).contains(&lo) || !(1..=4094).contains(&hi) || lo > hi {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The compact text of a sorted id list: runs become ranges.
pub fn format_trunk(ids: &[u16]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    parts.join(",")
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

impl BridgeOptions {
    /// Reads normalised options (as stored on the network).
    pub fn from_network(options: &Options) -> Result<Self> {
        let flag = |k: &str| -> Result<bool> {
            let d = BOOLS
                .iter()
                .chain(OPTIONAL_BOOLS)
                .find(|(b, _)| *b == k)
                .map(|(_, d)| *d)
                .unwrap_or(false);
            options
                .get(k)
                .map(|v| parse_bool(k, v))
                .transpose()
                .map(|v| v.unwrap_or(d))
        };
        Ok(BridgeOptions {
            bridge: options.get(BRIDGE).cloned().ok_or_else(|| {
                Error::Internal("bridge network stored without a bridge name".into())
            })?,
            is_gateway: flag(IS_GATEWAY)?,
            is_default_gateway: flag(IS_DEFAULT_GATEWAY)?,
            force_address: flag(FORCE_ADDRESS)?,
            ip_masquerade: flag(IP_MASQUERADE)?,
            icc: flag(ICC)?,
            hairpin: flag(HAIRPIN)?,
            promisc: flag(PROMISC)?,
            vlan: options
                .get(VLAN)
                .map(|v| parse_vlan(v))
                .transpose()?
                .flatten(),
            vlan_trunk: options
                .get(VLAN_TRUNK)
                .map(|v| parse_trunk(v))
                .transpose()?
                .unwrap_or_default(),
            preserve_default_vlan: flag(PRESERVE_DEFAULT_VLAN)?,
            macspoofchk: flag(MACSPOOFCHK)?,
            gateway_interface: options.get(GATEWAY_INTERFACE).cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(opts: &[(&str, &str)]) -> NetworkSpec {
        NetworkSpec {
            name: "web".into(),
            driver: "bridge".into(),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let o = normalise(&spec(&[])).unwrap();
        let b = BridgeOptions::from_network(&o).unwrap();
        assert_eq!(b.bridge, "nlbr-web");
        assert!(b.is_gateway && b.ip_masquerade && b.icc && b.is_default_gateway);
        assert!(!b.hairpin && !b.promisc && !b.force_address);
    }

    #[test]
    fn typos_and_bad_values_are_rejected() {
        let e = normalise(&spec(&[("ip_masqurade", "true")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown bridge option \"ip_masqurade\""),
            "{e}"
        );
        let e = normalise(&spec(&[("icc", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("icc must be true or false"), "{e}");
        let e = normalise(&spec(&[("bridge", "way-too-long-bridge-name")])).unwrap_err();
        assert!(e.to_string().contains("bridge name"), "{e}");
    }

    #[test]
    fn vlan_options() {
        let o = normalise(&spec(&[("vlan", "10"), ("bridge", "br0")])).unwrap();
        let b = BridgeOptions::from_network(&o).unwrap();
        assert_eq!(b.vlan, Some(10));
        assert_eq!(b.gateway_interface.as_deref(), Some("br0.10"));
        assert!(b.preserve_default_vlan && !b.macspoofchk);
        let o = normalise(&spec(&[("vlan", "0")])).unwrap();
        assert!(!o.contains_key("vlan") && !o.contains_key("gateway_interface"));
        for bad in ["4095", "-1", "x"] {
            let e = normalise(&spec(&[("vlan", bad)])).unwrap_err();
            assert!(e.to_string().contains("1 to 4094"), "{e}");
        }
        let o = normalise(&spec(&[("vlan_trunk", "30, 10-12,11")])).unwrap();
        assert_eq!(o["vlan_trunk"], "10-12,30");
        let b = BridgeOptions::from_network(&o).unwrap();
        assert_eq!(b.vlan_trunk, vec![10, 11, 12, 30]);
        let e = normalise(&spec(&[("vlan", "5"), ("vlan_trunk", "7")])).unwrap_err();
        assert!(e.to_string().contains("cannot be set together"), "{e}");
        assert!(normalise(&spec(&[("vlan_trunk", "20-10")])).is_err());
        // Without a gateway the name still keys the firewall entries.
        let o = normalise(&spec(&[("vlan", "7"), ("is_gateway", "false")])).unwrap();
        assert_eq!(o["gateway_interface"], "nlbr-web.7");
        // A long bridge name still gives a valid interface name.
        let n = vlan_gateway_name("a-long-bridge-1", 4094);
        assert!(n.len() <= 15 && n.ends_with(".4094"), "{n}");
    }

    #[test]
    fn internal_networks_get_no_way_out() {
        let mut s = spec(&[("ip_masquerade", "true")]);
        s.internal = true;
        let b = BridgeOptions::from_network(&normalise(&s).unwrap()).unwrap();
        assert!(!b.ip_masquerade && !b.is_default_gateway);
    }
}
