//! The overlay driver's options, normalised. Front doors resolve the cluster-wide parts (VNI
//! from the global store, the local tunnel address, the MTU from the underlay) before the
//! network is created, so the driver itself is pure kernel work like the bridge driver.
//!
//! Keys: `overlay` (cluster-wide name), `vni`, `vxlan_port`, `vtep` (local tunnel address),
//! `vxlan` (device name), `tx_csum_offload` (`auto`, `on`, `off`), plus every bridge option
//! (the bridge the containers' veths and the VXLAN device are ports of).

use std::net::IpAddr;

use engine_core::{validate_ifname, Error, NetworkSpec, Options, Result};

use super::names;
use crate::bridge::options as bridge_opts;

pub const OVERLAY: &str = "overlay";
pub const VNI: &str = "vni";
pub const VXLAN_PORT: &str = "vxlan_port";
pub const VTEP: &str = "vtep";
pub const VXLAN: &str = "vxlan";
pub const TX_CSUM_OFFLOAD: &str = "tx_csum_offload";

/// IANA's VXLAN port.
pub const DEFAULT_PORT: u16 = 4789;
/// The largest 24-bit VNI.
pub const MAX_VNI: u32 = 0x00ff_ffff;

const OWN: &[&str] = &[OVERLAY, VNI, VXLAN_PORT, VTEP, VXLAN, TX_CSUM_OFFLOAD];

/// What to do about transmit checksum offload on the VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxCsum {
    /// Off where the kernel has the checksum-after-NAT bug (before 5.7), else left on.
    Auto,
    On,
    Off,
}

/// The parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayOptions {
    pub overlay: String,
    pub vni: u32,
    pub port: u16,
    pub vtep: IpAddr,
    pub vxlan: String,
    pub tx_csum: TxCsum,
}

fn parse_vni(v: &str) -> Result<u32> {
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_VNI).contains(&n) => Ok(n),
        _ => Err(Error::InvalidConfig(format!(
            "vni {v:?} is not a VXLAN network identifier (1-{MAX_VNI})"
        ))),
    }
}

fn parse_port(v: &str) -> Result<u16> {
    match v.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::InvalidConfig(format!(
            "vxlan_port {v:?} is not a UDP port (1-65535)"
        ))),
    }
}

fn parse_tx(v: &str) -> Result<TxCsum> {
    match v {
        "auto" => Ok(TxCsum::Auto),
        "on" | "true" => Ok(TxCsum::On),
        "off" | "false" => Ok(TxCsum::Off),
        _ => Err(Error::InvalidConfig(format!(
            "tx_csum_offload {v:?}: use auto, on or off"
        ))),
    }
}

/// Checks and normalises `spec.options`.
pub fn normalise(spec: &NetworkSpec) -> Result<Options> {
    let mut bridge_spec = spec.clone();
    bridge_spec.options = spec
        .options
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let overlay = spec
        .options
        .get(OVERLAY)
        .cloned()
        .unwrap_or_else(|| spec.name.clone());
    if overlay.is_empty() || overlay.len() > 128 {
        return Err(Error::InvalidConfig(format!(
            "overlay name {overlay:?} must be 1-128 characters"
        )));
    }
    bridge_spec
        .options
        .entry(bridge_opts::BRIDGE.into())
        .or_insert_with(|| names::bridge(&overlay));
    let mut out = bridge_opts::normalise(&bridge_spec)?;
    let vni = spec.options.get(VNI).ok_or_else(|| {
        Error::InvalidConfig(format!(
            "overlay network {}: no VNI (the front door allocates one in the global store)",
            spec.name
        ))
    })?;
    out.insert(VNI.into(), parse_vni(vni)?.to_string());
    let port = match spec.options.get(VXLAN_PORT) {
        Some(p) => parse_port(p)?,
        None => DEFAULT_PORT,
    };
    out.insert(VXLAN_PORT.into(), port.to_string());
    let vtep: IpAddr = spec
        .options
        .get(VTEP)
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "overlay network {}: no local tunnel address (vtep)",
                spec.name
            ))
        })?
        .parse()
        .map_err(|_| Error::InvalidConfig("vtep is not an IP address".into()))?;
    out.insert(VTEP.into(), vtep.to_string());
    // Derived, never chosen: every host and the agent find the device from the overlay name.
    let dev = names::vxlan(&overlay);
    if let Some(given) = spec.options.get(VXLAN) {
        validate_ifname(given)
            .map_err(|e| Error::InvalidConfig(format!("vxlan device name: {e}")))?;
        if *given != dev {
            return Err(Error::InvalidConfig(format!(
                "the VXLAN device of overlay {overlay} is always named {dev}; drop the vxlan option"
            )));
        }
    }
    out.insert(VXLAN.into(), dev);
    let tx = spec
        .options
        .get(TX_CSUM_OFFLOAD)
        .map(String::as_str)
        .unwrap_or("auto");
    parse_tx(tx)?;
    out.insert(TX_CSUM_OFFLOAD.into(), tx.to_string());
    out.insert(OVERLAY.into(), overlay);
    Ok(out)
}

impl OverlayOptions {
    /// Reads normalised options (as stored on the network).
    pub fn from_network(options: &Options) -> Result<Self> {
        let get = |k: &str| {
            options.get(k).ok_or_else(|| {
                Error::Internal(format!("overlay network stored without option {k}"))
            })
        };
        Ok(OverlayOptions {
            overlay: get(OVERLAY)?.clone(),
            vni: parse_vni(get(VNI)?)?,
            port: parse_port(get(VXLAN_PORT)?)?,
            vtep: get(VTEP)?
                .parse()
                .map_err(|_| Error::Internal("stored vtep is not an IP address".into()))?,
            vxlan: get(VXLAN)?.clone(),
            tx_csum: parse_tx(get(TX_CSUM_OFFLOAD)?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(opts: &[(&str, &str)]) -> NetworkSpec {
        NetworkSpec {
            name: "web".into(),
            driver: "overlay".into(),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_errors() {
        let o = normalise(&spec(&[("vni", "42"), ("vtep", "10.0.0.1")])).unwrap();
        let p = OverlayOptions::from_network(&o).unwrap();
        assert_eq!(p.vni, 42);
        assert_eq!(p.port, 4789);
        assert_eq!(p.overlay, "web");
        assert_eq!(p.vxlan, names::vxlan("web"));
        assert_eq!(o.get("bridge"), Some(&names::bridge("web")));
        assert_eq!(p.tx_csum, TxCsum::Auto);
        let e = normalise(&spec(&[("vni", "0"), ("vtep", "10.0.0.1")])).unwrap_err();
        assert!(e.to_string().contains("vni \"0\""), "{e}");
        let e = normalise(&spec(&[("vni", "16777216"), ("vtep", "10.0.0.1")])).unwrap_err();
        assert!(e.to_string().contains("1-16777215"), "{e}");
        let e = normalise(&spec(&[("vni", "5")])).unwrap_err();
        assert!(e.to_string().contains("vtep"), "{e}");
        let e =
            normalise(&spec(&[("vni", "5"), ("vtep", "10.0.0.1"), ("bogus", "1")])).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
