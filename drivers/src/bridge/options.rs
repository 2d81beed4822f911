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
        } else if BOOLS.iter().any(|(b, _)| b == k) {
            parse_bool(k, v)?;
        } else {
            let known: Vec<&str> = std::iter::once(BRIDGE)
                .chain(BOOLS.iter().map(|(b, _)| *b))
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
    if let Some(mtu) = spec.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(Error::InvalidConfig(format!(
                "mtu {mtu} is out of range (68-65535)"
            )));
        }
    }
    Ok(out)
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
    fn internal_networks_get_no_way_out() {
        let mut s = spec(&[("ip_masquerade", "true")]);
        s.internal = true;
        let b = BridgeOptions::from_network(&normalise(&s).unwrap()).unwrap();
        assert!(!b.ip_masquerade && !b.is_default_gateway);
    }
}
