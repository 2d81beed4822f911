//! The ADD result, independent of spec version, and its rendering for each version.
//!
//! Shapes (what changes between versions):
//! - 0.3.0, 0.3.1, 0.4.0: every `ips[]` entry carries `"version": "4"|"6"`; interfaces have
//!   name/mac/sandbox; routes have dst/gw.
//! - 1.0.0: no `version` in `ips[]`.
//! - 1.1.0: interfaces add `mtu`, `socketPath`, `pciID`; routes add `mtu`, `advmss`, `priority`,
//!   `table`, `scope`. These are dropped when rendering for anything older.
//!
//! Empty optional fields are left out, as the reference plugins do (libcni ≥1.2 also drops an
//! empty `dns`). Parsing accepts the union of all shapes, so a `prevResult` of any supported
//! version reads the same way; unknown keys are ignored.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CniError;
use crate::version::CniVersion;

/// An ADD result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// An interface the plugin created or touched (host side included: bridge, veth peer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; `None` = host.
    pub sandbox: Option<String>,
    /// 1.1.0 only (vhost-user and similar).
    pub socket_path: Option<String>,
    /// 1.1.0 only (SR-IOV and similar).
    pub pci_id: Option<String>,
}

/// One address, with its prefix, on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with the subnet's prefix length (host bits kept: "10.1.0.5/24").
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; IPAM results leave it out.
    pub interface: Option<usize>,
}

/// A route for the container interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// 1.1.0 only, as are the rest.
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    /// 0 universe, 253 link, 254 host.
    pub scope: Option<u8>,
}

impl Route {
    /// A plain route (the pre-1.1 fields only).
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// Resolver settings, in results and in network configs (`dns` key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// Go encoders write `null` for a nil slice when a struct lacks `omitempty`; read it as empty.
pub(crate) fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

// ---- rendering -------------------------------------------------------------------------------

#[derive(Serialize)]
struct OutResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<OutInterface<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ips: Vec<OutIp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<OutRoute>,
    #[serde(skip_serializing_if = "Dns::is_empty")]
    dns: &'a Dns,
}

#[derive(Serialize)]
struct OutInterface<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
    #[serde(rename = "socketPath", skip_serializing_if = "Option::is_none")]
    socket_path: Option<&'a str>,
    #[serde(rename = "pciID", skip_serializing_if = "Option::is_none")]
    pci_id: Option<&'a str>,
}

#[derive(Serialize)]
struct OutIp {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
}

#[derive(Serialize)]
struct OutRoute {
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advmss: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<u8>,
}

/// Keeps a 1.1-only value only when rendering for 1.1.
fn v11<T>(version: CniVersion, v: Option<T>) -> Option<T> {
    if version.has_1_1_fields() {
        v
    } else {
        None
    }
}

impl CniResult {
    /// The container's addresses: those on interfaces inside the sandbox (or all, for results
    /// without interface indexes, such as an IPAM plugin's). What chained plugins act on.
    pub fn container_ips(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self
                    .interfaces
                    .get(i)
                    .is_some_and(|x| !x.sandbox.as_deref().unwrap_or("").is_empty()),
                None => true,
            })
            .map(|ip| ip.address.ip())
            .collect()
    }
    fn out(&self, version: CniVersion) -> OutResult<'_> {
        OutResult {
            cni_version: version.as_str(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| OutInterface {
                    name: &i.name,
                    mac: i.mac.as_deref(),
                    mtu: v11(version, i.mtu),
                    sandbox: i.sandbox.as_deref(),
                    socket_path: v11(version, i.socket_path.as_deref()),
                    pci_id: v11(version, i.pci_id.as_deref()),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| OutIp {
                    version: version
                        .ips_carry_version()
                        .then_some(if ip.address.is_ipv4() { "4" } else { "6" }),
                    interface: ip.interface,
                    address: ip.address.to_string(),
                    gateway: ip.gateway.map(|g| g.to_string()),
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| OutRoute {
                    dst: r.dst.to_string(),
                    gw: r.gw.map(|g| g.to_string()),
                    mtu: v11(version, r.mtu),
                    advmss: v11(version, r.advmss),
                    priority: v11(version, r.priority),
                    table: v11(version, r.table),
                    scope: v11(version, r.scope),
                })
                .collect(),
            dns: &self.dns,
        }
    }

    /// The result as JSON text in `version`'s shape.
    pub fn to_json(&self, version: CniVersion) -> String {
        // Strings, integers and Vecs of them: serialisation cannot fail.
        serde_json::to_string(&self.out(version)).unwrap_or_default()
    }

    /// The result as a JSON value in `version`'s shape (for embedding as `prevResult`).
    pub fn to_value(&self, version: CniVersion) -> Value {
        serde_json::to_value(self.out(version)).unwrap_or(Value::Null)
    }

    /// Reads a result of any supported version. Its own `cniVersion` decides the version;
    /// `default` is used when it has none (IPAM plugins sometimes leave it out). Errors: code 1
    /// for a version netloom cannot read, code 6 for anything malformed. `what` names the
    /// source in messages ("prevResult", "IPAM result").
    pub fn from_value(
        value: &Value,
        default: CniVersion,
        what: &str,
    ) -> Result<(CniVersion, CniResult), CniError> {
        let raw: InResult = serde_json::from_value(value.clone())
            .map_err(|e| CniError::decode(format!("{what} cannot be decoded: {e}")))?;
        let version = match raw.cni_version.as_deref() {
            None | Some("") => default,
            Some(v) => CniVersion::parse(v).ok_or_else(|| {
                CniError::incompatible(format!(
                    "{what} is in CNI version {v:?}, which netloom cannot read"
                ))
                .with_details("readable versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")
            })?,
        };
        let bad = |field: String, value: &str, expected: &str| {
            CniError::decode(format!("{what} {field} {value:?} is not {expected}"))
        };
        let mut out = CniResult::default();
        for i in raw.interfaces.unwrap_or_default() {
            out.interfaces.push(Interface {
                name: i.name,
                mac: non_empty(i.mac),
                mtu: i.mtu.filter(|m| *m != 0),
                sandbox: non_empty(i.sandbox),
                socket_path: non_empty(i.socket_path),
                pci_id: non_empty(i.pci_id),
            });
        }
        for (n, ip) in raw.ips.unwrap_or_default().into_iter().enumerate() {
            let address = parse_cidr(&ip.address).ok_or_else(|| {
                bad(
                    format!("ips[{n}].address"),
                    &ip.address,
                    "an address in CIDR notation",
                )
            })?;
            let gateway = match non_empty(ip.gateway) {
                None => None,
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| bad(format!("ips[{n}].gateway"), &g, "an IP address"))?,
                ),
            };
            out.ips.push(IpConfig {
                address,
                gateway,
                interface: ip.interface,
            });
        }
        for (n, r) in raw.routes.unwrap_or_default().into_iter().enumerate() {
            let dst = parse_cidr(&r.dst).ok_or_else(|| {
                bad(
                    format!("routes[{n}].dst"),
                    &r.dst,
                    "a destination in CIDR notation",
                )
            })?;
            let gw = match non_empty(r.gw) {
                None => None,
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| bad(format!("routes[{n}].gw"), &g, "an IP address"))?,
                ),
            };
            out.routes.push(Route {
                dst,
                gw,
                mtu: r.mtu.filter(|v| *v != 0),
                advmss: r.advmss.filter(|v| *v != 0),
                priority: r.priority,
                table: r.table,
                scope: r.scope,
            });
        }
        out.dns = raw.dns.unwrap_or_default();
        Ok((version, out))
    }

    /// [`CniResult::from_value`] from JSON text (a delegated plugin's stdout).
    pub fn from_json(
        text: &[u8],
        default: CniVersion,
        what: &str,
    ) -> Result<(CniVersion, CniResult), CniError> {
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| CniError::decode(format!("{what} is not JSON: {e}")))?;
        CniResult::from_value(&value, default, what)
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// "addr/prefix" only: a bare address or a dotted netmask is not CIDR notation.
pub(crate) fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    IpNetwork::new(addr, prefix.parse().ok()?).ok()
}

#[derive(Deserialize)]
struct InResult {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Option<Vec<InInterface>>,
    #[serde(default)]
    ips: Option<Vec<InIp>>,
    #[serde(default)]
    routes: Option<Vec<InRoute>>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Deserialize)]
struct InInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(rename = "socketPath", default)]
    socket_path: Option<String>,
    #[serde(rename = "pciID", default)]
    pci_id: Option<String>,
}

#[derive(Deserialize)]
struct InIp {
    // "version" (0.x) is derived from the address on output; its input value is not needed.
    #[serde(default)]
    interface: Option<usize>,
    address: String,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct InRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    advmss: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    scope: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        parse_cidr(s).unwrap()
    }

    /// Every field set, two families, host-side and sandbox interfaces.
    fn full() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "nl0".into(),
                    mac: Some("02:42:0a:01:00:01".into()),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface {
                    name: "veth1a2b".into(),
                    mac: Some("02:42:0a:01:00:02".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:42:0a:01:00:05".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/c1".into()),
                    socket_path: Some("/run/vhost/c1.sock".into()),
                    pci_id: Some("0000:00:1f.6".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: net("10.1.0.5/24"),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(2),
                },
                IpConfig {
                    address: net("fd00:1::5/64"),
                    gateway: Some("fd00:1::1".parse().unwrap()),
                    interface: Some(2),
                },
            ],
            routes: vec![
                Route {
                    dst: net("0.0.0.0/0"),
                    gw: Some("10.1.0.1".parse().unwrap()),
                    mtu: Some(1400),
                    advmss: Some(1360),
                    priority: Some(100),
                    table: Some(254),
                    scope: Some(0),
                },
                Route::new(net("::/0"), None),
            ],
            dns: Dns {
                nameservers: vec!["10.1.0.1".into()],
                domain: Some("example.internal".into()),
                search: vec!["svc.example.internal".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    const GOLDEN_0X_BODY: &str = r#""interfaces":[{"name":"nl0","mac":"02:42:0a:01:00:01"},{"name":"veth1a2b","mac":"02:42:0a:01:00:02"},{"name":"eth0","mac":"02:42:0a:01:00:05","sandbox":"/run/netns/c1"}],"ips":[{"version":"4","interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"version":"6","interface":2,"address":"fd00:1::5/64","gateway":"fd00:1::1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"},{"dst":"::/0"}],"dns":{"nameservers":["10.1.0.1"],"domain":"example.internal","search":["svc.example.internal"],"options":["ndots:5"]}}"#;

    #[test]
    fn golden_0_3_0_0_3_1_0_4_0() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            assert_eq!(
                full().to_json(v),
                format!(r#"{{"cniVersion":"{v}",{GOLDEN_0X_BODY}"#),
                "{v}"
            );
        }
    }

    #[test]
    fn golden_1_0_0() {
        assert_eq!(
            full().to_json(CniVersion::V1_0_0),
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"nl0","mac":"02:42:0a:01:00:01"},{"name":"veth1a2b","mac":"02:42:0a:01:00:02"},{"name":"eth0","mac":"02:42:0a:01:00:05","sandbox":"/run/netns/c1"}],"ips":[{"interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"interface":2,"address":"fd00:1::5/64","gateway":"fd00:1::1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"},{"dst":"::/0"}],"dns":{"nameservers":["10.1.0.1"],"domain":"example.internal","search":["svc.example.internal"],"options":["ndots:5"]}}"#
        );
    }

    #[test]
    fn golden_1_1_0() {
        assert_eq!(
            full().to_json(CniVersion::V1_1_0),
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"nl0","mac":"02:42:0a:01:00:01","mtu":1500},{"name":"veth1a2b","mac":"02:42:0a:01:00:02"},{"name":"eth0","mac":"02:42:0a:01:00:05","mtu":1450,"sandbox":"/run/netns/c1","socketPath":"/run/vhost/c1.sock","pciID":"0000:00:1f.6"}],"ips":[{"interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"interface":2,"address":"fd00:1::5/64","gateway":"fd00:1::1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1","mtu":1400,"advmss":1360,"priority":100,"table":254,"scope":0},{"dst":"::/0"}],"dns":{"nameservers":["10.1.0.1"],"domain":"example.internal","search":["svc.example.internal"],"options":["ndots:5"]}}"#
        );
    }

    #[test]
    fn empty_result_is_just_the_version() {
        assert_eq!(
            CniResult::default().to_json(CniVersion::V1_0_0),
            r#"{"cniVersion":"1.0.0"}"#
        );
    }

    #[test]
    fn ipam_style_result_has_no_interface_index() {
        let r = CniResult {
            ips: vec![IpConfig {
                address: net("10.79.0.3/24"),
                gateway: None,
                interface: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            r.to_json(CniVersion::V0_4_0),
            r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.79.0.3/24"}]}"#
        );
    }

    #[test]
    fn every_version_round_trips_what_it_can_carry() {
        for v in CniVersion::ALL {
            let text = full().to_json(v);
            let (got_v, got) =
                CniResult::from_json(text.as_bytes(), CniVersion::V0_3_0, "test").unwrap();
            assert_eq!(got_v, v);
            // Re-rendering what was read gives the same bytes.
            assert_eq!(got.to_json(v), text, "{v}");
            if v.has_1_1_fields() {
                assert_eq!(got, full());
            }
        }
    }

    #[test]
    fn parses_recorded_reference_outputs() {
        // bridge 1.1.1 stdout (libcni-invocations, podsim-ADD), dns {} included.
        let bridge = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"cncl0","mac":"e6:71:c7:7c:20:18"},{"name":"veth5c744647","mac":"22:c7:81:94:27:02"},{"name":"eth0","mac":"86:17:8e:11:c5:d2","sandbox":"/run/netns/cncl-a"}],"ips":[{"interface":2,"address":"10.79.0.3/24","gateway":"10.79.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let (v, r) = CniResult::from_json(bridge, CniVersion::V1_1_0, "prevResult").unwrap();
        assert_eq!(v, CniVersion::V1_0_0);
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(
            r.interfaces[2].sandbox.as_deref(),
            Some("/run/netns/cncl-a")
        );
        assert_eq!(r.ips[0].address.ip().to_string(), "10.79.0.3");
        assert_eq!(r.ips[0].address.prefix(), 24);
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.routes, vec![Route::new(net("0.0.0.0/0"), None)]);
        assert!(r.dns.is_empty());

        // loopback 1.1.1 stdout for a 0.3.1 config: no "version" in ips, which we accept.
        let lo = br#"{"cniVersion":"0.3.1","interfaces":[{"name":"lo","mac":"00:00:00:00:00:00","sandbox":"/run/netns/cncl-a"}],"ips":[{"interface":0,"address":"127.0.0.1/8"},{"interface":0,"address":"::1/128"}],"dns":{}}"#;
        let (v, r) = CniResult::from_json(lo, CniVersion::V1_1_0, "prevResult").unwrap();
        assert_eq!(v, CniVersion::V0_3_1);
        assert_eq!(
            r.to_json(v),
            r#"{"cniVersion":"0.3.1","interfaces":[{"name":"lo","mac":"00:00:00:00:00:00","sandbox":"/run/netns/cncl-a"}],"ips":[{"version":"4","interface":0,"address":"127.0.0.1/8"},{"version":"6","interface":0,"address":"::1/128"}]}"#
        );
    }

    #[test]
    fn version_defaults_and_refusals() {
        let (v, _) =
            CniResult::from_json(br#"{"ips":[]}"#, CniVersion::V0_4_0, "IPAM result").unwrap();
        assert_eq!(v, CniVersion::V0_4_0);
        let e = CniResult::from_json(
            br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}"#,
            CniVersion::V1_0_0,
            "prevResult",
        )
        .unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("0.2.0"));
    }

    #[test]
    fn malformed_results_are_code_6_and_say_where() {
        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5"}]}"#,
                "ips[0].address \"10.0.0.5\"",
            ),
            (
                br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/255.255.255.0"}]}"#,
                "ips[0].address",
            ),
            (
                br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24","gateway":"x"}]}"#,
                "ips[0].gateway",
            ),
            (
                br#"{"cniVersion":"1.0.0","routes":[{"dst":"default"}]}"#,
                "routes[0].dst",
            ),
            (
                br#"{"cniVersion":"1.0.0","interfaces":[{"mac":"x"}]}"#,
                "missing field `name`",
            ),
            (br#"{"cniVersion":"1.0.0","ips":"nope"}"#, "invalid type"),
            (b"[1,2]", "cannot be decoded"),
            (b"{", "not JSON"),
        ];
        for (text, needle) in cases {
            let e = CniResult::from_json(text, CniVersion::V1_0_0, "prevResult").unwrap_err();
            assert_eq!(e.code, 6, "{}", String::from_utf8_lossy(text));
            assert!(e.msg.contains(needle), "{:?} lacks {needle:?}", e.msg);
            assert!(e.msg.starts_with("prevResult"), "{}", e.msg);
        }
    }

    #[test]
    fn nulls_and_empty_strings_read_as_absent() {
        let text = br#"{"cniVersion":"1.1.0","interfaces":null,"ips":[{"address":"10.0.0.5/24","gateway":""}],"routes":null,"dns":{"nameservers":null}}"#;
        let (_, r) = CniResult::from_json(text, CniVersion::V1_1_0, "prevResult").unwrap();
        assert!(r.interfaces.is_empty() && r.routes.is_empty() && r.dns.is_empty());
        assert_eq!(r.ips[0].gateway, None);
    }

    #[test]
    fn cidr_parsing_is_strict() {
        assert_eq!(
            parse_cidr("10.0.0.5/24").map(|n| n.to_string()),
            Some("10.0.0.5/24".into())
        );
        assert_eq!(
            parse_cidr("::1/128").map(|n| n.to_string()),
            Some("::1/128".into())
        );
        for bad in [
            "10.0.0.5",
            "10.0.0.5/",
            "10.0.0.5/33",
            "10.0.0.5/+8",
            "x/8",
            "::1/129",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }
}
