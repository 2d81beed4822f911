//! host-local's IPAM configuration, read with the reference plugin's keys and meaning.
//!
//! `ranges` is a list of range sets; each range set is a list of ranges and yields one address.
//! The legacy single-range keys (`subnet`, `rangeStart`, `rangeEnd`, `gateway`) are one range set.
//! The gateway defaults to the subnet's first address, as host-local does.

use std::net::IpAddr;
use std::path::PathBuf;

use engine_core::ipam::RangeSpec;
use engine_core::model::RouteSpec;
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::result::{Dns, Route};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: String,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: String,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
}

/// The parsed IPAM section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConf {
    pub ipam_type: String,
    /// One entry per range set; each yields one address.
    pub range_sets: Vec<Vec<RangeSpec>>,
    pub routes: Vec<Route>,
    pub data_dir: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
}

/// Whether netloom handles this IPAM type itself (no exec of an IPAM binary).
pub fn is_builtin(ipam_type: &str) -> bool {
    matches!(ipam_type, "netloom-ipam" | "host-local")
}

fn parse_subnet(s: &str, at: &str) -> Result<IpNetwork, CniError> {
    let bad = || {
        CniError::invalid_config(format!(
            "{at}: subnet {s:?} is not a CIDR (like 10.1.0.0/24)"
        ))
    };
    // ipnetwork reads a bare address as a /32; host-local wants the prefix spelled out.
    if !s.contains('/') {
        return Err(bad());
    }
    let n: IpNetwork = s.parse().map_err(|_| bad())?;
    // host-local accepts host bits ("10.1.0.5/24") and means the network.
    IpNetwork::new(n.network(), n.prefix())
        .map_err(|_| CniError::invalid_config(format!("{at}: subnet {s:?} is not valid")))
}

/// IPAM routes as sandbox routes: a route without `gw` goes via the gateway of its family, as
/// the reference plugins configure it (host-local's routes, a delegated plugin's result).
pub(crate) fn sandbox_routes(routes: &[Route], gateways: &[IpAddr]) -> Vec<RouteSpec> {
    routes
        .iter()
        .map(|r| RouteSpec {
            destination: r.dst,
            gateway: r.gw.or_else(|| {
                gateways
                    .iter()
                    .copied()
                    .find(|g| g.is_ipv4() == r.dst.is_ipv4())
            }),
        })
        .collect()
}

/// The first host address of a subnet (none for /31, /32, /127, /128).
pub(crate) fn first_host(subnet: IpNetwork) -> Option<IpAddr> {
    match subnet {
        IpNetwork::V4(n) => {
            let base = u32::from(n.network());
            (n.prefix() < 31).then(|| IpAddr::from(std::net::Ipv4Addr::from(base + 1)))
        }
        IpNetwork::V6(n) => {
            let base = u128::from(n.network());
            (n.prefix() < 127).then(|| IpAddr::from(std::net::Ipv6Addr::from(base + 1)))
        }
    }
}

impl IpamConf {
    /// No ranges, routes or resolver file: for results built around a delegated plugin's.
    pub fn none() -> Self {
        IpamConf {
            ipam_type: String::new(),
            range_sets: Vec::new(),
            routes: Vec::new(),
            data_dir: None,
            resolv_conf: None,
        }
    }

    /// Reads the `ipam` object of a plugin configuration.
    pub fn parse(ipam: &Map<String, Value>) -> Result<Self, CniError> {
        let raw: RawIpam = serde_json::from_value(Value::Object(ipam.clone()))
            .map_err(|e| CniError::decode(format!("ipam configuration cannot be decoded: {e}")))?;
        let mut sets = Vec::new();
        if let Some(subnet) = &raw.subnet {
            sets.push(vec![RawRange {
                subnet: subnet.clone(),
                range_start: raw.range_start,
                range_end: raw.range_end,
                gateway: raw.gateway,
            }]);
        }
        sets.extend(raw.ranges.iter().cloned());
        if sets.is_empty() {
            return Err(CniError::invalid_config(
                "ipam has no ranges: give \"ranges\": [[{\"subnet\": \"10.1.0.0/24\"}]] (or \"subnet\")",
            ));
        }
        let mut range_sets = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            if set.is_empty() {
                return Err(CniError::invalid_config(format!(
                    "ipam.ranges[{i}] is empty"
                )));
            }
            let mut specs = Vec::new();
            for (j, r) in set.iter().enumerate() {
                let at = format!("ipam.ranges[{i}][{j}]");
                let subnet = parse_subnet(&r.subnet, &at)?;
                let gateway = r.gateway.or_else(|| first_host(subnet));
                specs.push(RangeSpec {
                    subnet,
                    start: r.range_start,
                    end: r.range_end,
                    gateway,
                });
            }
            range_sets.push(specs);
        }
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let dst: IpNetwork = r.dst.parse().map_err(|_| {
                CniError::invalid_config(format!("ipam.routes[{i}].dst {:?} is not a CIDR", r.dst))
            })?;
            routes.push(Route::new(dst, r.gw));
        }
        Ok(IpamConf {
            ipam_type: raw.ipam_type,
            range_sets,
            routes,
            data_dir: raw.data_dir,
            resolv_conf: raw.resolv_conf,
        })
    }

    /// The IPAM routes as sandbox routes: a route without `gw` goes via the gateway of its
    /// family, as the reference plugins configure it.
    pub fn sandbox_routes(&self, gateways: &[IpAddr]) -> Vec<RouteSpec> {
        sandbox_routes(&self.routes, gateways)
    }

    /// The network's subnets, each pointing at the pool of its range set (`pools` in range-set
    /// order, as [`crate::plugins::context::Context::ensure_pools`] returns them).
    pub fn subnets(&self, pools: &[String]) -> Vec<engine_core::model::SubnetConfig> {
        self.range_sets
            .iter()
            .zip(pools)
            .flat_map(|(set, pool)| {
                set.iter().map(move |r| engine_core::model::SubnetConfig {
                    subnet: r.subnet,
                    gateway: r.gateway,
                    pool_id: pool.clone(),
                })
            })
            .collect()
    }

    /// The pool id of range set `i` of network `network`.
    pub fn pool_id(network: &str, i: usize) -> String {
        format!("cni:{network}:{i}")
    }

    /// DNS settings from `resolvConf`, as host-local reports them.
    pub fn dns(&self) -> Result<Dns, CniError> {
        let Some(path) = &self.resolv_conf else {
            return Ok(Dns::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| CniError::io(format!("read resolvConf {}: {e}", path.display())))?;
        let mut dns = Dns::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_string)),
                Some("domain") => dns.domain = words.next().map(str::to_string),
                Some("search") => dns.search = words.map(str::to_string).collect(),
                Some("options") => dns.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        Ok(dns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<IpamConf, CniError> {
        IpamConf::parse(v.as_object().expect("object"))
    }

    #[test]
    fn ranges_and_legacy_keys() {
        let c = parse(serde_json::json!({
            "type": "host-local",
            "subnet": "10.1.0.5/24",
            "ranges": [[{"subnet": "fd00:1::/64", "gateway": "fd00:1::fe"}], [{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10", "rangeEnd": "10.2.0.20"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.7.0/24", "gw": "10.1.0.254"}],
            "dataDir": "/tmp/x"
        }))
        .unwrap();
        assert_eq!(c.range_sets.len(), 3);
        assert_eq!(c.range_sets[0][0].subnet.to_string(), "10.1.0.0/24");
        assert_eq!(
            c.range_sets[0][0].gateway,
            Some("10.1.0.1".parse().unwrap())
        );
        assert_eq!(
            c.range_sets[1][0].gateway,
            Some("fd00:1::fe".parse().unwrap())
        );
        assert_eq!(c.range_sets[2][0].start, Some("10.2.0.10".parse().unwrap()));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(IpamConf::pool_id("net", 1), "cni:net:1");
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        let e = parse(serde_json::json!({"type": "host-local"})).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("no ranges"), "{}", e.msg);
        let e = parse(serde_json::json!({"type": "host-local", "subnet": "10.1.0.0"})).unwrap_err();
        assert!(e.msg.contains("not a CIDR"), "{}", e.msg);
        let e = parse(serde_json::json!({"type": "host-local", "ranges": [[]]})).unwrap_err();
        assert!(e.msg.contains("ranges[0] is empty"), "{}", e.msg);
        let e = parse(serde_json::json!({"type": 5})).unwrap_err();
        assert_eq!(e.code, 6);
    }
}
