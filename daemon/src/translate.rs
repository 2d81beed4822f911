//! Docker's spellings → netloom's model: network options (`-o`, `--internal`, `--ipv6`), IPAM
//! data, endpoint addresses and MACs, published ports. Pure functions, unit-tested.
//!
//! Users type the same options they use with Docker's built-in bridge driver; each maps to the
//! bridge driver's normalised key (drivers/src/bridge/options.rs) or to something netloomd
//! handles itself. Options Docker's bridge has but netloom does not are refused with a message
//! that names them, and unknown keys (typos) are refused with a suggestion: an option that
//! silently does nothing is worse than an error.

use std::collections::BTreeMap;
use std::net::IpAddr;

use engine_core::{Error, Options, PortMapping, Proto, Result};
use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use crate::docker_api::{
    IpamData, PortBinding, OPT_ENABLE_IPV4, OPT_ENABLE_IPV6, OPT_GENERIC, OPT_INTERNAL,
};

pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPT_HOST_BINDING: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";
pub const OPT_IFACE_PREFIX: &str = "com.docker.network.container_iface_prefix";
pub const OPT_GATEWAY_MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
pub const OPT_GATEWAY_MODE_V6: &str = "com.docker.network.bridge.gateway_mode_ipv6";

/// Docker bridge options netloom knows but does not implement, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "com.docker.network.bridge.inhibit_ipv4",
        "the gateway address is always put on the bridge",
    ),
    (
        "com.docker.network.bridge.trusted_host_interfaces",
        "direct routing from host interfaces is not implemented",
    ),
    (
        "com.docker.network.bridge.default_bridge",
        "netloom networks are never Docker's default bridge",
    ),
    ("com.docker.network.bridge.enable_ipv6", "use --ipv6"),
];

/// Every key accepted in `-o`, for error messages.
const KNOWN: &[&str] = &[
    OPT_BRIDGE_NAME,
    OPT_MASQUERADE,
    OPT_ICC,
    OPT_HOST_BINDING,
    OPT_MTU,
    OPT_IFACE_PREFIX,
    OPT_GATEWAY_MODE_V4,
    OPT_GATEWAY_MODE_V6,
];

/// What a CreateNetwork's `Options` say, translated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    pub internal: bool,
    pub enable_ipv6: bool,
    pub mtu: Option<u32>,
    /// Normalised bridge-driver options (`bridge`, `ip_masquerade`, `icc`).
    pub driver: Options,
    /// Default host address for published ports (`host_binding_ipv4`).
    pub host_binding: Option<IpAddr>,
    /// The in-container interface name prefix (`container_iface_prefix`).
    pub iface_prefix: Option<String>,
}

/// Translates CreateNetwork's `Options`. Only the `generic` map is what the user typed and is
/// checked strictly; other top-level keys are Docker's own and unknown ones are ignored (newer
/// engines add some).
///
/// `driver` is the Docker driver name (for messages), `engine_driver` the engine's. Only the
/// bridge driver's options are translated here; other drivers (macvlan, ipvlan) already take
/// Docker's spellings (`parent`, `macvlan_mode`…), so their keys pass through to the driver,
/// whose validation names what is wrong.
pub fn network_options(
    options: &Map<String, Value>,
    driver: &str,
    engine_driver: &str,
) -> Result<NetworkOptions> {
    let mut out = NetworkOptions {
        internal: json_bool(options, OPT_INTERNAL)?.unwrap_or(false),
        enable_ipv6: json_bool(options, OPT_ENABLE_IPV6)?.unwrap_or(false),
        ..Default::default()
    };
    if json_bool(options, OPT_ENABLE_IPV4)? == Some(false) {
        // IPv4Data is then empty; nothing else to do, but say it was understood.
        tracing::debug!("IPv6-only network (--ipv4=false)");
    }
    let generic = match options.get(OPT_GENERIC) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(Error::InvalidConfig(format!(
                "option {OPT_GENERIC} must be a map, not {other}"
            )));
        }
    };
    for (key, value) in &generic {
        let v = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if engine_driver != "bridge" && key != OPT_MTU && key != OPT_IFACE_PREFIX {
            if key.starts_with("com.docker.network.bridge.") {
                return Err(Error::InvalidConfig(format!(
                    "-o {key} is a bridge option; {driver} networks do not take it"
                )));
            }
            out.driver.insert(key.clone(), v);
            continue;
        }
        match key.as_str() {
            OPT_BRIDGE_NAME => {
                engine_core::validate_ifname(&v)
                    .map_err(|e| Error::InvalidConfig(format!("-o {key}: {e}")))?;
                out.driver.insert("bridge".into(), v);
            }
            OPT_MASQUERADE => {
                out.driver
                    .insert("ip_masquerade".into(), go_bool(key, &v)?.to_string());
            }
            OPT_ICC => {
                out.driver
                    .insert("icc".into(), go_bool(key, &v)?.to_string());
            }
            OPT_HOST_BINDING => {
                let ip: IpAddr = v.parse().map_err(|_| {
                    Error::InvalidConfig(format!(
                        "-o {key}={v}: not an IP address (e.g. 127.0.0.1)"
                    ))
                })?;
                // 0.0.0.0 and :: mean "every address", the default.
                out.host_binding = (!ip.is_unspecified()).then_some(ip);
            }
            OPT_MTU => {
                let mtu: u32 = v.parse().map_err(|_| {
                    Error::InvalidConfig(format!(
                        "-o {key}={v}: the MTU must be a number (68-65535)"
                    ))
                })?;
                if !(68..=65535).contains(&mtu) {
                    return Err(Error::InvalidConfig(format!(
                        "-o {key}={v}: the MTU must be between 68 and 65535"
                    )));
                }
                out.mtu = Some(mtu);
            }
            OPT_IFACE_PREFIX => {
                // Docker appends an index: keep room for it within the 15-byte limit.
                let ok = !v.is_empty()
                    && v.len() <= 12
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(Error::InvalidConfig(format!(
                        "-o {key}={v}: use 1 to 12 letters, digits or '_'"
                    )));
                }
                out.iface_prefix = Some(v);
            }
            OPT_GATEWAY_MODE_V4 | OPT_GATEWAY_MODE_V6 => {
                if v != "nat" {
                    return Err(Error::Unsupported(format!(
                        "-o {key}={v}: {driver} supports only gateway mode \"nat\" (the default)"
                    )));
                }
            }
            _ => {
                if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| k == key) {
                    return Err(Error::Unsupported(format!(
                        "-o {key} is not supported by {driver}: {why}"
                    )));
                }
                let hint = closest(key, KNOWN)
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                return Err(Error::InvalidConfig(format!(
                    "unknown option -o {key} for driver {driver}{hint}; known options: {}",
                    KNOWN.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// A JSON boolean option; Docker sends real booleans, but tolerate "true"/"false" strings.
fn json_bool(options: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => go_bool(key, s).map(Some),
        Some(other) => Err(Error::InvalidConfig(format!(
            "option {key} must be true or false, not {other}"
        ))),
    }
}

/// Booleans as Docker parses them (Go's strconv.ParseBool), so every spelling users type for
/// the built-in driver works here.
pub fn go_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(Error::InvalidConfig(format!(
            "-o {key}={v}: must be true or false"
        ))),
    }
}

/// The known key closest to a typo, if one is close enough to be what was meant.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 10))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// One pool of a network, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolData {
    pub subnet: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub aux: Vec<IpAddr>,
}

/// Parses IPv4Data or IPv6Data, checking each entry's family and that its addresses lie in it.
pub fn pool_data(data: &[IpamData], v6: bool) -> Result<Vec<PoolData>> {
    let family = if v6 { "IPv6Data" } else { "IPv4Data" };
    let mut out = Vec::new();
    for d in data {
        let subnet: IpNetwork = d.pool.parse().map_err(|_| {
            Error::InvalidConfig(format!("{family}: pool {:?} is not a CIDR", d.pool))
        })?;
        if subnet.is_ipv6() != v6 {
            return Err(Error::InvalidConfig(format!(
                "{family}: pool {subnet} is of the wrong address family"
            )));
        }
        if subnet.ip() != subnet.network() {
            return Err(Error::InvalidConfig(format!(
                "{family}: pool {subnet} has host bits set (did you mean {}/{}?)",
                subnet.network(),
                subnet.prefix()
            )));
        }
        let inside = |what: &str, s: &str| -> Result<IpAddr> {
            let ip = parse_ip_or_cidr(s).ok_or_else(|| {
                Error::InvalidConfig(format!("{family}: {what} {s:?} is not an address"))
            })?;
            if !subnet.contains(ip) {
                return Err(Error::InvalidConfig(format!(
                    "{family}: {what} {ip} is outside pool {subnet}"
                )));
            }
            Ok(ip)
        };
        let gateway = if d.gateway.is_empty() {
            None
        } else {
            Some(inside("gateway", &d.gateway)?)
        };
        let mut aux = Vec::new();
        for (name, a) in &d.aux_addresses {
            aux.push(inside(&format!("aux address {name}"), a)?);
        }
        out.push(PoolData {
            subnet,
            gateway,
            aux,
        });
    }
    Ok(out)
}

/// "10.1.0.5/24" or "10.1.0.5" → 10.1.0.5.
pub fn parse_ip_or_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpNetwork>()
        .ok()
        .map(|n| n.ip())
        .or_else(|| s.parse().ok())
}

/// An endpoint address from CreateEndpoint ("" = none): CIDR, of the expected family.
pub fn endpoint_address(s: &str, v6: bool) -> Result<Option<IpNetwork>> {
    if s.is_empty() {
        return Ok(None);
    }
    let what = if v6 {
        "Interface.AddressIPv6"
    } else {
        "Interface.Address"
    };
    // Docker always sends the prefix length; a bare address would silently become a /32.
    if !s.contains('/') {
        return Err(Error::InvalidConfig(format!(
            "{what} {s:?} is not an address in CIDR form"
        )));
    }
    let n: IpNetwork = s.parse().map_err(|_| {
        Error::InvalidConfig(format!("{what} {s:?} is not an address in CIDR form"))
    })?;
    if n.is_ipv6() != v6 {
        return Err(Error::InvalidConfig(format!(
            "{what} {s} is of the wrong address family"
        )));
    }
    Ok(Some(n))
}

/// A MAC address as the kernel wants it: six ':'-separated hex pairs, lower case.
pub fn normalise_mac(s: &str) -> Result<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(Error::InvalidConfig(format!(
            "MAC address {s:?} is not valid (want aa:bb:cc:dd:ee:ff)"
        )));
    }
    let mac = parts.join(":").to_ascii_lowercase();
    let first =
        u8::from_str_radix(&mac[..2], 16).map_err(|_| Error::Internal("hex digits".into()))?;
    if first & 1 == 1 {
        return Err(Error::InvalidConfig(format!(
            "MAC address {s} is a multicast address"
        )));
    }
    Ok(mac)
}

/// The MAC Docker's own bridge would give: 02:42 and the IPv4 address, so ARP caches stay right
/// when an address moves to a new container; without IPv4, 02:42 and a hash of the endpoint.
pub fn generated_mac(v4: Option<IpAddr>, endpoint_id: &str) -> String {
    let tail: [u8; 4] = match v4 {
        Some(IpAddr::V4(a)) => a.octets(),
        _ => {
            let mut h: u32 = 0x811c_9dc5;
            for b in endpoint_id.bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
            h.to_be_bytes()
        }
    };
    format!(
        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
        tail[0], tail[1], tail[2], tail[3]
    )
}

/// What a `-p` asks for after translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRequest {
    /// Publish exactly this (single ports and runs of consecutive ports merged into ranges).
    Fixed(PortMapping),
    /// Publish `container_port` on one free host port out of `first..=last` (`-p 8000-8010:80`).
    Choose {
        proto: Proto,
        host_ip: Option<IpAddr>,
        first: u16,
        last: u16,
        container_port: u16,
    },
}

/// Translates `com.docker.network.portmap`. `host_binding` is the network's default host
/// address (`host_binding_ipv4`), used where the binding names none. Consecutive single ports
/// (`-p 20000-20999:20000-20999` arrives as 1000 bindings) become one range, which the firewall
/// programs as a single interval element.
pub fn port_requests(
    bindings: &[PortBinding],
    host_binding: Option<IpAddr>,
) -> Result<Vec<PortRequest>> {
    let mut singles: Vec<PortMapping> = Vec::new();
    let mut out = Vec::new();
    for b in bindings {
        let proto = Proto::from_number(b.proto).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "port {}: protocol number {} is not tcp, udp or sctp",
                b.port, b.proto
            ))
        })?;
        let host_ip = if b.host_ip.is_empty() {
            host_binding
        } else {
            let ip: IpAddr = b.host_ip.parse().map_err(|_| {
                Error::InvalidConfig(format!(
                    "port {}/{proto}: host IP {:?} is not an address",
                    b.port, b.host_ip
                ))
            })?;
            (!ip.is_unspecified()).then_some(ip)
        };
        if b.port == 0 {
            return Err(Error::InvalidConfig(format!(
                "a {proto} binding has container port 0"
            )));
        }
        if b.host_port == 0 {
            return Err(Error::InvalidConfig(format!(
                "port {}/{proto}: Docker sent no host port; publish with an explicit or Docker-chosen host port",
                b.port
            )));
        }
        let end = if b.host_port_end == 0 {
            b.host_port
        } else {
            b.host_port_end
        };
        if end < b.host_port {
            return Err(Error::InvalidConfig(format!(
                "port {}/{proto}: host port range {}-{end} is descending",
                b.port, b.host_port
            )));
        }
        if end == b.host_port {
            singles.push(PortMapping::new(
                proto,
                host_ip,
                (b.host_port, b.host_port),
                b.port,
            )?);
        } else {
            out.push(PortRequest::Choose {
                proto,
                host_ip,
                first: b.host_port,
                last: end,
                container_port: b.port,
            });
        }
    }
    singles.sort_by_key(|m| (m.proto, m.host_ip, m.host_port));
    singles.dedup();
    let mut merged: Vec<PortMapping> = Vec::new();
    for m in singles {
        if let Some(last) = merged.last_mut() {
            let next_host = last.host_port_end.checked_add(1);
            let next_container =
                u32::from(last.container_port) + u32::from(last.host_port_end - last.host_port) + 1;
            if last.proto == m.proto
                && last.host_ip == m.host_ip
                && next_host == Some(m.host_port)
                && next_container == u32::from(m.container_port)
            {
                last.host_port_end = m.host_port;
                continue;
            }
        }
        merged.push(m);
    }
    let mut fixed: Vec<PortRequest> = merged.into_iter().map(PortRequest::Fixed).collect();
    fixed.extend(out);
    Ok(fixed)
}

/// Published ports back in Docker's shape (EndpointOperInfo), one binding per mapping range.
pub fn port_bindings(ports: &[PortMapping], container: Option<IpAddr>) -> Vec<PortBinding> {
    let mut out = Vec::new();
    for p in ports {
        for offset in 0..=(p.host_port_end - p.host_port) {
            out.push(PortBinding {
                proto: p.proto.number(),
                ip: container.map(|a| a.to_string()).unwrap_or_default(),
                port: p.container_port + offset,
                host_ip: p.host_ip.map(|a| a.to_string()).unwrap_or_default(),
                host_port: p.host_port + offset,
                host_port_end: p.host_port + offset,
            });
        }
    }
    out
}

/// Endpoint options worth keeping beside the endpoint (shown by EndpointOperInfo); the rest is
/// Docker's business.
pub fn kept_endpoint_options(options: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::String(s)) = options.get("com.docker.network.endpoint.ifname") {
        out.insert("com.docker.network.endpoint.ifname".into(), s.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn docker_bridge_options_map_to_driver_keys() {
        let o = network_options(
            &opts(json!({
                "com.docker.network.enable_ipv6": true,
                "com.docker.network.internal": true,
                "com.docker.network.generic": {
                    "com.docker.network.bridge.name": "br-web",
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                    "com.docker.network.bridge.enable_icc": "0",
                    "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
                    "com.docker.network.driver.mtu": "1400",
                    "com.docker.network.container_iface_prefix": "net",
                    "com.docker.network.bridge.gateway_mode_ipv4": "nat"
                }
            })),
            "netloom-bridge",
            "bridge",
        )
        .unwrap();
        assert!(o.internal && o.enable_ipv6);
        assert_eq!(o.driver["bridge"], "br-web");
        assert_eq!(o.driver["ip_masquerade"], "false");
        assert_eq!(o.driver["icc"], "false");
        assert_eq!(o.host_binding, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(o.mtu, Some(1400));
        assert_eq!(o.iface_prefix.as_deref(), Some("net"));
    }

    #[test]
    fn typos_and_unsupported_options_are_refused_clearly() {
        let e = network_options(
            &opts(json!({"com.docker.network.generic": {"com.docker.network.bridge.enable_ip_masqurade": "true"}})),
            "netloom-bridge",
            "bridge",
        )
        .unwrap_err();
        assert_eq!(e.kind(), engine_core::ErrorKind::InvalidConfig);
        assert!(
            e.to_string()
                .contains("did you mean com.docker.network.bridge.enable_ip_masquerade"),
            "{e}"
        );
        let e = network_options(
            &opts(json!({"com.docker.network.generic": {"com.docker.network.bridge.inhibit_ipv4": "true"}})),
            "netloom-bridge",
            "bridge",
        )
        .unwrap_err();
        assert_eq!(e.kind(), engine_core::ErrorKind::Unsupported);
        let e = network_options(
            &opts(json!({"com.docker.network.generic": {"com.docker.network.bridge.gateway_mode_ipv4": "routed"}})),
            "netloom-bridge",
            "bridge",
        )
        .unwrap_err();
        assert!(e.to_string().contains("only gateway mode \"nat\""), "{e}");
        for bad in [
            json!({"com.docker.network.driver.mtu": "big"}),
            json!({"com.docker.network.driver.mtu": "20"}),
            json!({"com.docker.network.bridge.enable_icc": "maybe"}),
            json!({"com.docker.network.bridge.host_binding_ipv4": "localhost"}),
            json!({"com.docker.network.bridge.name": "a-name-that-is-too-long"}),
            json!({"foo": "bar"}),
        ] {
            let r = network_options(
                &opts(json!({ "com.docker.network.generic": bad })),
                "d",
                "bridge",
            );
            assert!(r.is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn other_drivers_get_their_options_as_typed() {
        let o = network_options(
            &opts(
                json!({"com.docker.network.generic": {"parent": "eth1", "macvlan_mode": "bridge",
                                                        "com.docker.network.driver.mtu": "1400"}}),
            ),
            "netloom-macvlan",
            "macvlan",
        )
        .unwrap();
        assert_eq!(o.driver["parent"], "eth1");
        assert_eq!(o.driver["macvlan_mode"], "bridge");
        assert_eq!(o.mtu, Some(1400));
        let e = network_options(
            &opts(json!({"com.docker.network.generic": {"com.docker.network.bridge.name": "x"}})),
            "netloom-macvlan",
            "macvlan",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bridge option"), "{e}");
    }

    #[test]
    fn ipam_data_is_checked() {
        let d = IpamData {
            pool: "10.1.0.0/24".into(),
            gateway: "10.1.0.1/24".into(),
            aux_addresses: [("r".to_string(), "10.1.0.5/24".to_string())].into(),
            ..Default::default()
        };
        let p = pool_data(std::slice::from_ref(&d), false).unwrap();
        assert_eq!(p[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(p[0].aux, vec!["10.1.0.5".parse::<IpAddr>().unwrap()]);
        assert!(pool_data(std::slice::from_ref(&d), true).is_err());
        let outside = IpamData {
            gateway: "10.2.0.1/24".into(),
            ..d.clone()
        };
        assert!(pool_data(&[outside], false)
            .unwrap_err()
            .to_string()
            .contains("outside pool"));
        let host_bits = IpamData {
            pool: "10.1.0.7/24".into(),
            gateway: String::new(),
            aux_addresses: BTreeMap::new(),
            ..d
        };
        assert!(pool_data(&[host_bits], false).is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            generated_mac(Some("172.24.1.129".parse().unwrap()), "x"),
            "02:42:ac:18:01:81"
        );
        assert!(generated_mac(None, "abc").starts_with("02:42:"));
        assert_eq!(
            normalise_mac("02-42-AC-11-00-02").unwrap(),
            "02:42:ac:11:00:02"
        );
        assert!(normalise_mac("01:00:5e:00:00:01").is_err());
        assert!(normalise_mac("zz:00:00:00:00:00").is_err());
    }

    fn b(proto: u8, port: u16, host: u16, end: u16) -> PortBinding {
        PortBinding {
            proto,
            port,
            host_port: host,
            host_port_end: end,
            ..Default::default()
        }
    }

    #[test]
    fn consecutive_ports_merge_into_ranges() {
        let mut bs: Vec<PortBinding> = (0..1000)
            .map(|i| b(6, 20000 + i, 20000 + i, 20000 + i))
            .collect();
        bs.push(b(17, 53, 5353, 5353));
        bs.push(b(6, 80, 8080, 0));
        let r = port_requests(&bs, None).unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r.contains(&PortRequest::Fixed(
            PortMapping::new(Proto::Tcp, None, (20000, 20999), 20000).unwrap()
        )));
        assert!(r.contains(&PortRequest::Fixed(
            PortMapping::new(Proto::Tcp, None, (8080, 8080), 80).unwrap()
        )));
        // Not consecutive in the container: two mappings.
        let r = port_requests(&[b(6, 80, 8080, 8080), b(6, 90, 8081, 8081)], None).unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn host_ranges_choose_one_port_and_host_binding_applies() {
        let hb = Some("127.0.0.1".parse().unwrap());
        let r = port_requests(&[b(6, 80, 8000, 8010)], hb).unwrap();
        assert_eq!(
            r,
            vec![PortRequest::Choose {
                proto: Proto::Tcp,
                host_ip: hb,
                first: 8000,
                last: 8010,
                container_port: 80
            }]
        );
        let explicit = PortBinding {
            host_ip: "0.0.0.0".into(),
            ..b(132, 9, 9, 9)
        };
        let r = port_requests(&[explicit], hb).unwrap();
        assert_eq!(
            r,
            vec![PortRequest::Fixed(
                PortMapping::new(Proto::Sctp, None, (9, 9), 9).unwrap()
            )]
        );
        assert!(port_requests(&[b(99, 80, 80, 80)], None).is_err());
        assert!(port_requests(&[b(6, 80, 0, 0)], None).is_err());
        assert!(port_requests(&[b(6, 80, 90, 85)], None).is_err());
    }

    #[test]
    fn bindings_round_trip_for_oper_info() {
        let m = PortMapping::new(Proto::Udp, None, (5000, 5001), 6000).unwrap();
        let bs = port_bindings(&[m], Some("10.1.0.2".parse().unwrap()));
        assert_eq!(bs.len(), 2);
        assert_eq!((bs[1].port, bs[1].host_port, bs[1].proto), (6001, 5001, 17));
    }
}
