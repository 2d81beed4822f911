//! The network configuration a plugin receives on stdin.
//!
//! The well-known keys are typed; the whole object is kept in [`NetConf::raw`] so plugin keys
//! (`bridge`, `isGateway`, `snat`...) and keys nobody knows pass through untouched, and a
//! plugin reads its own with [`NetConf::plugin_config`].
//!
//! Errors: text that is not a JSON object, or a key of the wrong JSON type, is code 6 with
//! serde's message; values that decode but are wrong (a bad name, port 0, an unparsable IP) are
//! code 7.
//!
//! Runtime differences handled here (see the recorded invocations):
//! - `runtimeConfig.portMappings` entries: go-cni sends `HostPort`/`ContainerPort`/`Protocol`/
//!   `HostIP` (Go field names, `HostIP` "" for all addresses), podman and cnitool send
//!   `hostPort`/...; keys inside entries are matched case-insensitively. Likewise `bandwidth`
//!   (`IngressRate`...) and `dns` (`Servers`, `Searches`, `Options`).
//! - `capabilities` reaches plugins although the spec says it should not (libcni keeps it).
//! - GC's list of live attachments comes as `cni.dev/valid-attachments` and, in the 1.1.0 tag
//!   text, `cni.dev/attachments`; libcni sends both. Either is read.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use engine_core::{AttachmentKey, PortMapping, Proto};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::result::{CniResult, Dns};
use crate::version::CniVersion;

/// A network configuration as one plugin receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` as written (validated against the plugin's list by the dispatcher).
    pub cni_version: Option<String>,
    /// `cniVersions`, when a configuration carries the list form.
    pub cni_versions: Vec<String>,
    pub name: String,
    /// `type`: the plugin binary's name.
    pub plugin_type: String,
    /// The `ipam` object, untouched (the IPAM plugin parses it).
    pub ipam: Option<Map<String, Value>>,
    pub dns: Option<Dns>,
    pub ip_masq: bool,
    pub capabilities: BTreeMap<String, bool>,
    pub runtime_config: RuntimeConfig,
    /// `prevResult`, parsed in its own version.
    pub prev_result: Option<PrevResult>,
    /// `args` (structured alternative to CNI_ARGS), untouched; see [`NetConf::arg_ips`].
    pub args: Option<Value>,
    /// GC only: the attachments to keep. `None` when the runtime sent no list (cnitool with no
    /// GC arguments; libcni has then already run DEL for every attachment it had cached).
    pub valid_attachments: Option<Vec<AttachmentKey>>,
    /// The whole object as received.
    pub raw: Map<String, Value>,
}

/// A `prevResult`: what the previous plugin in the chain (or the cached ADD) produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevResult {
    /// The version it was written in (its own `cniVersion`, else the request's).
    pub version: CniVersion,
    pub result: CniResult,
}

/// `runtimeConfig`: the capability arguments the runtime filled in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConfig {
    /// `portMappings` (portmap).
    pub port_mappings: Vec<PortMapping>,
    /// `ips` (host-local, static): addresses asked for, with or without a prefix.
    pub ips: Vec<RequestedIp>,
    /// `mac` (tuning), lower-cased.
    pub mac: Option<String>,
    /// `aliases`: DNS names for the container on this network.
    pub aliases: Vec<String>,
    /// `bandwidth` (bits/s and bits).
    pub bandwidth: Option<Bandwidth>,
    /// `dns` (CRI's resolver settings for the pod).
    pub dns: Option<RuntimeDns>,
    /// `ipRanges`, in host-local's `ranges` format, untouched (IPAM parses it).
    pub ip_ranges: Option<Value>,
    /// The whole `runtimeConfig` object as received.
    pub raw: Map<String, Value>,
}

/// An address asked for through `runtimeConfig.ips`, `args.cni.ips` or `CNI_ARGS IP=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedIp {
    pub address: IpAddr,
    /// Present when written in CIDR form.
    pub prefix: Option<u8>,
}

impl RequestedIp {
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once('/') {
            None => Some(RequestedIp {
                address: s.parse().ok()?,
                prefix: None,
            }),
            Some((a, p)) => {
                let address: IpAddr = a.parse().ok()?;
                let max = if address.is_ipv4() { 32 } else { 128 };
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let prefix: u8 = p.parse().ok().filter(|p| *p <= max)?;
                Some(RequestedIp {
                    address,
                    prefix: Some(prefix),
                })
            }
        }
    }
}

impl fmt::Display for RequestedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

/// `runtimeConfig.bandwidth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Bandwidth {
    #[serde(rename = "ingressrate", default)]
    pub ingress_rate: Option<u64>,
    #[serde(rename = "ingressburst", default)]
    pub ingress_burst: Option<u64>,
    #[serde(rename = "egressrate", default)]
    pub egress_rate: Option<u64>,
    #[serde(rename = "egressburst", default)]
    pub egress_burst: Option<u64>,
}

/// `runtimeConfig.dns`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeDns {
    #[serde(default, deserialize_with = "crate::result::null_as_empty")]
    pub servers: Vec<String>,
    #[serde(default, deserialize_with = "crate::result::null_as_empty")]
    pub searches: Vec<String>,
    #[serde(default, deserialize_with = "crate::result::null_as_empty")]
    pub options: Vec<String>,
}

/// Deserialises `map[key]` when present (and not null), naming the key (after `prefix`, the
/// path of `map` itself) in the error.
fn field<T: DeserializeOwned>(
    map: &Map<String, Value>,
    key: &str,
    prefix: &str,
) -> Result<Option<T>, CniError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v).map(Some).map_err(|e| {
            CniError::decode(format!(
                "network configuration key \"{prefix}{key}\" cannot be decoded: {e}"
            ))
        }),
    }
}

/// The object with its keys lower-cased, for Go-style `HostPort` vs `hostPort`.
fn lower_keys(v: &Value, ctx: &str) -> Result<Map<String, Value>, CniError> {
    match v {
        Value::Object(m) => Ok(m
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()),
        other => Err(CniError::decode(format!(
            "{ctx} must be a JSON object, not {other}"
        ))),
    }
}

/// Decodes an object whose keys may come in any case into `T` (whose fields are lower-case).
fn case_insensitive<T: DeserializeOwned>(v: &Value, ctx: &str) -> Result<T, CniError> {
    let m = lower_keys(v, ctx)?;
    T::deserialize(Value::Object(m))
        .map_err(|e| CniError::decode(format!("{ctx} cannot be decoded: {e}")))
}

#[derive(Deserialize)]
struct WirePortMapping {
    #[serde(rename = "hostport", default)]
    host_port: Option<i64>,
    #[serde(rename = "containerport", default)]
    container_port: Option<i64>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(rename = "hostip", default)]
    host_ip: Option<String>,
}

fn port(value: Option<i64>, ctx: &str, key: &str) -> Result<u16, CniError> {
    let v = value.ok_or_else(|| CniError::invalid_config(format!("{ctx} has no {key}")))?;
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| CniError::invalid_config(format!("{ctx} {key} {v} is not a port (1-65535)")))
}

fn parse_port_mapping(v: &Value, n: usize) -> Result<PortMapping, CniError> {
    let ctx = format!("runtimeConfig.portMappings[{n}]");
    let w: WirePortMapping = case_insensitive(v, &ctx)?;
    let host = port(w.host_port, &ctx, "hostPort")?;
    let container = port(w.container_port, &ctx, "containerPort")?;
    let proto: Proto = w
        .protocol
        .as_deref()
        .unwrap_or("tcp")
        .parse()
        .map_err(|e: engine_core::Error| CniError::invalid_config(format!("{ctx}: {e}")))?;
    let host_ip = match w.host_ip.as_deref() {
        // go-cni writes "" for "every host address".
        None | Some("") => None,
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            CniError::invalid_config(format!("{ctx} hostIP {s:?} is not an IP address"))
        })?),
    };
    PortMapping::new(proto, host_ip, (host, host), container)
        .map_err(|e| CniError::invalid_config(format!("{ctx}: {e}")))
}

fn parse_requested_ips(list: Vec<String>, ctx: &str) -> Result<Vec<RequestedIp>, CniError> {
    list.iter()
        .enumerate()
        .map(|(n, s)| {
            RequestedIp::parse(s).ok_or_else(|| {
                CniError::invalid_config(format!(
                    "{ctx}[{n}] {s:?} is not an IP address (optionally with /prefix)"
                ))
            })
        })
        .collect()
}

/// "aa:bb:cc:dd:ee:ff", returned lower-cased.
fn parse_mac(s: &str, ctx: &str) -> Result<String, CniError> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(CniError::invalid_config(format!(
            "{ctx} {s:?} is not a MAC address like 02:42:ac:11:00:02"
        )))
    }
}

impl RuntimeConfig {
    /// `network` picks this network's entry when `aliases` comes as a per-network map.
    fn parse(raw: Map<String, Value>, network: &str) -> Result<Self, CniError> {
        let ctx = "runtimeConfig.";
        let mut rc = RuntimeConfig::default();
        if let Some(list) = field::<Vec<Value>>(&raw, "portMappings", ctx)? {
            rc.port_mappings = list
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_null())
                .map(|(n, v)| parse_port_mapping(v, n))
                .collect::<Result<_, _>>()?;
        }
        if let Some(list) = field::<Vec<String>>(&raw, "ips", ctx)? {
            rc.ips = parse_requested_ips(list, "runtimeConfig.ips")?;
        }
        if let Some(mac) = field::<String>(&raw, "mac", ctx)?.filter(|m| !m.is_empty()) {
            rc.mac = Some(parse_mac(&mac, "runtimeConfig.mac")?);
        }
        rc.aliases = match raw.get("aliases") {
            None | Some(Value::Null) => Vec::new(),
            // Podman's CNI era sent {"<network>": ["name", ...]}; CONVENTIONS.md a plain list.
            Some(Value::Object(per_net)) => {
                field::<Vec<String>>(per_net, network, "runtimeConfig.aliases.")?
                    .unwrap_or_default()
            }
            Some(_) => field::<Vec<String>>(&raw, "aliases", ctx)?.unwrap_or_default(),
        };
        if let Some(v) = raw.get("bandwidth").filter(|v| !v.is_null()) {
            rc.bandwidth = Some(case_insensitive(v, "runtimeConfig.bandwidth")?);
        }
        if let Some(v) = raw.get("dns").filter(|v| !v.is_null()) {
            rc.dns = Some(case_insensitive(v, "runtimeConfig.dns")?);
        }
        rc.ip_ranges = raw.get("ipRanges").filter(|v| !v.is_null()).cloned();
        rc.raw = raw;
        Ok(rc)
    }
}

#[derive(Deserialize)]
struct WireAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    /// Some runtimes list a container without an interface: it keeps all of them.
    #[serde(default)]
    ifname: String,
}

impl NetConf {
    /// Parses stdin. Does not check the version (the dispatcher does, per plugin and command).
    /// `default_version` is the version a `prevResult` without its own `cniVersion` is read as.
    pub fn parse(stdin: &[u8], default_version: CniVersion) -> Result<Self, CniError> {
        NetConf::from_map(parse_object(stdin)?, default_version)
    }

    /// As [`NetConf::parse`], from an already decoded object.
    pub fn from_map(
        raw: Map<String, Value>,
        default_version: CniVersion,
    ) -> Result<Self, CniError> {
        let ctx = "";
        let cni_version = field::<String>(&raw, "cniVersion", ctx)?;
        let cni_versions = field::<Vec<String>>(&raw, "cniVersions", ctx)?.unwrap_or_default();

        let name = field::<String>(&raw, "name", ctx)?.unwrap_or_default();
        if name.is_empty() {
            return Err(CniError::invalid_config(
                "the network configuration has no \"name\"",
            ));
        }
        engine_core::validate_network_name(&name)
            .map_err(|e| CniError::invalid_config(e.to_string()))?;

        let prev_default = cni_version
            .as_deref()
            .and_then(CniVersion::parse)
            .unwrap_or(default_version);
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let (version, result) = CniResult::from_value(v, prev_default, "prevResult")?;
                Some(PrevResult { version, result })
            }
        };

        let valid_attachments =
            match field::<Vec<WireAttachment>>(&raw, "cni.dev/valid-attachments", ctx)? {
                Some(list) => Some(list),
                None => field::<Vec<WireAttachment>>(&raw, "cni.dev/attachments", ctx)?,
            }
            .map(|list| {
                list.into_iter()
                    .map(|a| AttachmentKey {
                        container_id: a.container_id,
                        ifname: a.ifname,
                    })
                    .collect()
            });

        let runtime_config = match field::<Map<String, Value>>(&raw, "runtimeConfig", ctx)? {
            Some(m) => RuntimeConfig::parse(m, &name)?,
            None => RuntimeConfig::default(),
        };

        Ok(NetConf {
            cni_version,
            cni_versions,
            plugin_type: field::<String>(&raw, "type", ctx)?.unwrap_or_default(),
            ipam: field(&raw, "ipam", ctx)?,
            dns: field(&raw, "dns", ctx)?,
            ip_masq: field(&raw, "ipMasq", ctx)?.unwrap_or(false),
            capabilities: field(&raw, "capabilities", ctx)?.unwrap_or_default(),
            args: raw.get("args").filter(|v| !v.is_null()).cloned(),
            name,
            runtime_config,
            prev_result,
            valid_attachments,
            raw,
        })
    }

    /// The whole configuration decoded into the plugin's own type (code 6 on failure).
    pub fn plugin_config<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        T::deserialize(Value::Object(self.raw.clone())).map_err(|e| {
            CniError::decode(format!(
                "{} configuration cannot be decoded: {e}",
                self.plugin_type
            ))
        })
    }

    /// Whether the configuration enables a capability (`capabilities: {"portMappings": true}`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.get(name).copied().unwrap_or(false)
    }

    /// `args.cni.ips`: requested addresses in the structured form (takes precedence over
    /// `CNI_ARGS IP=` when both are present, per CONVENTIONS.md).
    pub fn arg_ips(&self) -> Result<Vec<RequestedIp>, CniError> {
        let Some(ips) = self
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips"))
        else {
            return Ok(Vec::new());
        };
        let list = Vec::<String>::deserialize(ips)
            .map_err(|e| CniError::decode(format!("args.cni.ips cannot be decoded: {e}")))?;
        parse_requested_ips(list, "args.cni.ips")
    }
}

/// stdin as a JSON object (code 6 otherwise).
pub(crate) fn parse_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::decode(format!(
            "network configuration on stdin is not valid JSON: {e}"
        ))
    })?;
    match value {
        Value::Object(m) => Ok(m),
        other => Err(CniError::decode(format!(
            "network configuration on stdin must be a JSON object, not {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetConf, CniError> {
        NetConf::parse(text.as_bytes(), CniVersion::V1_0_0)
    }

    #[test]
    fn well_known_keys_are_typed_and_everything_is_kept() {
        let c = parse(
            r#"{"bridge":"cncl0","cniVersion":"1.0.0","hairpinMode":true,"ipMasq":true,
                "ipam":{"type":"host-local","ranges":[[{"subnet":"10.79.0.0/24"}]]},"isGateway":true,
                "name":"cncl-net","type":"bridge","dns":{"nameservers":["10.79.0.1"]},"x-unknown":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version.as_deref(), Some("1.0.0"));
        assert_eq!(
            (c.name.as_str(), c.plugin_type.as_str()),
            ("cncl-net", "bridge")
        );
        assert!(c.ip_masq);
        assert_eq!(
            c.ipam.as_ref().and_then(|m| m.get("type")),
            Some(&Value::from("host-local"))
        );
        assert_eq!(
            c.dns.as_ref().map(|d| d.nameservers.clone()),
            Some(vec!["10.79.0.1".to_string()])
        );
        assert_eq!(c.raw.get("bridge"), Some(&Value::from("cncl0")));
        assert_eq!(c.raw["x-unknown"]["a"], 1);
        assert!(c.prev_result.is_none() && c.valid_attachments.is_none());

        #[derive(Deserialize)]
        struct Bridge {
            bridge: String,
            #[serde(rename = "isGateway")]
            is_gateway: bool,
        }
        let b: Bridge = c.plugin_config().unwrap();
        assert_eq!((b.bridge.as_str(), b.is_gateway), ("cncl0", true));
    }

    #[test]
    fn decode_errors_are_code_6_with_serde_message() {
        let e = parse("{not json").unwrap_err();
        assert_eq!(e.code, 6);
        assert!(
            e.msg.contains("not valid JSON: key must be a string"),
            "{}",
            e.msg
        );
        let e = parse("[]").unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                6,
                "network configuration on stdin must be a JSON object, not an array"
            )
        );
        let e = parse(r#"{"name":"n","ipMasq":"yes"}"#).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(
            e.msg.starts_with(
                "network configuration key \"ipMasq\" cannot be decoded: invalid type"
            ),
            "{}",
            e.msg
        );
        let e = parse(r#"{"name":"n","runtimeConfig":{"portMappings":[{"hostPort":"80"}]}}"#)
            .unwrap_err();
        assert_eq!(e.code, 6);
        assert!(
            e.msg
                .starts_with("runtimeConfig.portMappings[0] cannot be decoded"),
            "{}",
            e.msg
        );
        let e = parse(r#"{"name":"n","prevResult":{"cniVersion":"1.0.0","ips":{}}}"#).unwrap_err();
        assert_eq!(e.code, 6);
    }

    #[test]
    fn invalid_values_are_code_7() {
        let e = parse(r#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (7, "the network configuration has no \"name\"")
        );
        let e = parse(r#"{"name":"../etc"}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("network name \"../etc\" is invalid"),
            "{}",
            e.msg
        );
        let cases = [
            (
                r#"{"hostPort":0,"containerPort":80}"#,
                "hostPort 0 is not a port",
            ),
            (
                r#"{"hostPort":70000,"containerPort":80}"#,
                "hostPort 70000 is not a port",
            ),
            (r#"{"hostPort":8080}"#, "has no containerPort"),
            (
                r#"{"hostPort":8080,"containerPort":80,"protocol":"icmp"}"#,
                "protocol \"icmp\"",
            ),
            (
                r#"{"hostPort":8080,"containerPort":80,"hostIP":"localhost"}"#,
                "hostIP \"localhost\"",
            ),
        ];
        for (pm, needle) in cases {
            let e = parse(&format!(
                r#"{{"name":"n","runtimeConfig":{{"portMappings":[{pm}]}}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.code, 7, "{pm}");
            assert!(
                e.msg.starts_with("runtimeConfig.portMappings[0]") && e.msg.contains(needle),
                "{}",
                e.msg
            );
        }
        let e = parse(r#"{"name":"n","runtimeConfig":{"ips":["10.0.0.300"]}}"#).unwrap_err();
        assert_eq!(e.code, 7);
        let e = parse(r#"{"name":"n","runtimeConfig":{"mac":"02:42:ac:11:00"}}"#).unwrap_err();
        assert_eq!(e.code, 7);
    }

    #[test]
    fn port_mappings_in_every_spelling() {
        // go-cni (containerd) spelling, as recorded.
        let go = parse(
            r#"{"name":"cncl-net","runtimeConfig":{"portMappings":[{"HostPort":19081,"ContainerPort":8080,"Protocol":"tcp","HostIP":""},{"HostPort":19082,"ContainerPort":8080,"Protocol":"tcp","HostIP":"127.0.0.1"}]}}"#,
        )
        .unwrap();
        // podman/cnitool spelling.
        let podman = parse(
            r#"{"name":"cncl-net","runtimeConfig":{"portMappings":[{"hostPort":19081,"containerPort":8080,"protocol":"tcp"},{"hostPort":19082,"containerPort":8080,"protocol":"TCP","hostIP":"127.0.0.1"}]}}"#,
        )
        .unwrap();
        let want = vec![
            PortMapping::new(Proto::Tcp, None, (19081, 19081), 8080).unwrap(),
            PortMapping::new(
                Proto::Tcp,
                Some("127.0.0.1".parse().unwrap()),
                (19082, 19082),
                8080,
            )
            .unwrap(),
        ];
        assert_eq!(go.runtime_config.port_mappings, want);
        assert_eq!(podman.runtime_config.port_mappings, want);
        let udp = parse(r#"{"name":"n","runtimeConfig":{"portMappings":[{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"::1"}]}}"#)
            .unwrap();
        assert_eq!(udp.runtime_config.port_mappings[0].proto, Proto::Udp);
        assert_eq!(
            udp.runtime_config.port_mappings[0].host_ip,
            Some("::1".parse().unwrap())
        );
    }

    #[test]
    fn other_capability_args() {
        let c = parse(
            r#"{"name":"cncl-caps","capabilities":{"bandwidth":true,"dns":true,"portMappings":false},
                "runtimeConfig":{
                  "bandwidth":{"IngressRate":10000000,"IngressBurst":4294967295,"EgressRate":20000000,"EgressBurst":4294967295},
                  "dns":{"Servers":["10.79.0.53"],"Searches":["cncl-ns.svc.cluster.local"],"Options":["ndots:5"]},
                  "ips":["10.1.2.3/24","2001:db8::5"],"mac":"C2:11:22:33:44:55","aliases":["web","db"],
                  "ipRanges":[[{"subnet":"10.2.0.0/24"}]],
                  "io.kubernetes.cri.pod-annotations":{"team":"cncl"}}}"#,
        )
        .unwrap();
        assert!(
            c.has_capability("bandwidth")
                && !c.has_capability("portMappings")
                && !c.has_capability("mac")
        );
        let rc = &c.runtime_config;
        assert_eq!(
            rc.bandwidth,
            Some(Bandwidth {
                ingress_rate: Some(10_000_000),
                ingress_burst: Some(4_294_967_295),
                egress_rate: Some(20_000_000),
                egress_burst: Some(4_294_967_295)
            })
        );
        let dns = rc.dns.clone().unwrap();
        assert_eq!(dns.servers, vec!["10.79.0.53"]);
        assert_eq!(dns.searches, vec!["cncl-ns.svc.cluster.local"]);
        assert_eq!(dns.options, vec!["ndots:5"]);
        assert_eq!(
            rc.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            vec!["10.1.2.3/24", "2001:db8::5"]
        );
        assert_eq!(rc.ips[1].prefix, None);
        assert_eq!(rc.mac.as_deref(), Some("c2:11:22:33:44:55"));
        assert_eq!(rc.aliases, vec!["web", "db"]);
        assert!(rc.ip_ranges.is_some());
        assert_eq!(rc.raw["io.kubernetes.cri.pod-annotations"]["team"], "cncl");
    }

    #[test]
    fn aliases_per_network_map() {
        let c =
            parse(r#"{"name":"web","runtimeConfig":{"aliases":{"web":["a","b"],"other":["c"]}}}"#)
                .unwrap();
        assert_eq!(c.runtime_config.aliases, vec!["a", "b"]);
        let c = parse(r#"{"name":"db","runtimeConfig":{"aliases":{"web":["a"]}}}"#).unwrap();
        assert!(c.runtime_config.aliases.is_empty());
    }

    #[test]
    fn valid_attachments_from_either_key() {
        let list = r#"[{"containerID":"podsim-x","ifname":"eth0"},{"containerID":"podsim-y","ifname":"net1"}]"#;
        let want = vec![
            AttachmentKey {
                container_id: "podsim-x".into(),
                ifname: "eth0".into(),
            },
            AttachmentKey {
                container_id: "podsim-y".into(),
                ifname: "net1".into(),
            },
        ];
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let c = parse(&format!(
                r#"{{"name":"n","cniVersion":"1.1.0","{key}":{list}}}"#
            ))
            .unwrap();
            assert_eq!(c.valid_attachments.as_ref(), Some(&want), "{key}");
        }
        // Both present (what libcni sends): valid-attachments wins.
        let c = parse(&format!(
            r#"{{"name":"n","cni.dev/attachments":[],"cni.dev/valid-attachments":{list}}}"#
        ))
        .unwrap();
        assert_eq!(c.valid_attachments, Some(want));
        // Empty list is not the same as no list.
        let c = parse(r#"{"name":"n","cni.dev/valid-attachments":[]}"#).unwrap();
        assert_eq!(c.valid_attachments, Some(vec![]));
        let c = parse(r#"{"name":"n","cni.dev/valid-attachments":[{"containerID":"only-id"}]}"#)
            .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].ifname, "");
    }

    #[test]
    fn prev_result_uses_its_own_version_else_the_configs() {
        let c = parse(
            r#"{"name":"n","cniVersion":"1.0.0","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.5/24"}]}}"#,
        )
        .unwrap();
        let prev = c.prev_result.unwrap();
        assert_eq!(prev.version, CniVersion::V0_4_0);
        assert_eq!(prev.result.ips[0].address.to_string(), "10.0.0.5/24");
        let c = parse(
            r#"{"name":"n","cniVersion":"0.3.1","prevResult":{"ips":[{"address":"10.0.0.5/24"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.prev_result.unwrap().version, CniVersion::V0_3_1);
        let c = parse(r#"{"name":"n","prevResult":null}"#).unwrap();
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn structured_args_ips() {
        let c = parse(r#"{"name":"n","args":{"cni":{"ips":["10.1.0.9","fd00::9/64"],"labels":[{"key":"a","value":"b"}]}}}"#)
            .unwrap();
        let ips = c.arg_ips().unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[1].prefix, Some(64));
        let c = parse(r#"{"name":"n","args":{"cni":{"ips":["nope"]}}}"#).unwrap();
        assert_eq!(c.arg_ips().unwrap_err().code, 7);
        assert!(parse(r#"{"name":"n"}"#)
            .unwrap()
            .arg_ips()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn requested_ip_forms() {
        assert_eq!(
            RequestedIp::parse("10.0.0.1/24").map(|r| r.prefix),
            Some(Some(24))
        );
        assert_eq!(RequestedIp::parse("10.0.0.1").map(|r| r.prefix), Some(None));
        for bad in ["10.0.0.1/33", "10.0.0.1/", "::1/129", "host", "10.0.0.1/a"] {
            assert_eq!(RequestedIp::parse(bad), None, "{bad}");
        }
    }
}
