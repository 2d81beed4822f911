//! The model: networks, endpoints, sandboxes (CNM terms) and what is asked of them.
//!
//! These are plain data, serialisable into the state store and shared by both front doors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Free-form driver options as users type them (`-o key=value`, CNI config keys).
pub type Options = BTreeMap<String, String>;

/// Identifies one attachment of a container to a network: what CNI calls (containerID, ifname).
/// Docker endpoints map onto it as (endpoint id, "eth").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    /// Builds a key, checking both parts with the CNI rules (which Docker ids also satisfy).
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Result<Self> {
        let k = AttachmentKey {
            container_id: container_id.into(),
            ifname: ifname.into(),
        };
        validate_container_id(&k.container_id)?;
        validate_ifname(&k.ifname)?;
        Ok(k)
    }

    /// The owner string IPAM leases carry: `<container id>/<ifname>`.
    pub fn owner(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }
}

impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// A container id: non-empty, starts alphanumeric, then `[A-Za-z0-9_.-]` (CNI's rule).
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut bytes = id.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "container id {id:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// An interface name as the kernel accepts it: 1–15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if bad {
        Err(Error::InvalidConfig(format!(
            "interface name {name:?} is invalid: use 1 to 15 characters without '/', ':' or spaces"
        )))
    } else {
        Ok(())
    }
}

/// A network name (CNI `name`, Docker network name): path-safe, same charset as container ids.
pub fn validate_network_name(name: &str) -> Result<()> {
    validate_container_id(name).map_err(|_| {
        Error::InvalidConfig(format!(
            "network name {name:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        ))
    })
}

/// Whether two subnets share any address (families differ ⇒ no).
pub fn subnets_overlap(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// One subnet of a network and where its addresses come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetConfig {
    pub subnet: IpNetwork,
    /// The gateway address (on the bridge, for bridge networks), if the network has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The IPAM pool the subnet's addresses are leased from; empty when they are leased
    /// outside netloom (a delegated CNI IPAM plugin) and arrive as static addresses.
    pub pool_id: String,
}

/// What a user asks for when creating a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub driver: String,
    pub subnets: Vec<SubnetConfig>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub enable_ipv6: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub options: Options,
}

/// A network as stored: the spec plus what netloom decided (id, driver-normalised options).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnets: Vec<SubnetConfig>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub enable_ipv6: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Options after the driver's `validate` (defaults filled in, spellings normalised).
    #[serde(default)]
    pub options: Options,
}

/// Transport protocols a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// From an IANA protocol number (Docker sends 6/17/132).
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

impl std::str::FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            _ => Err(Error::InvalidConfig(format!(
                "protocol {s:?} is not one of tcp, udp, sctp"
            ))),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

/// A published port or range: host `host_port..=host_port_end` → container `container_port..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub proto: Proto,
    /// Bind address on the host; None = every host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    /// Last host port of a range (inclusive); equal to `host_port` for a single port.
    pub host_port_end: u16,
    pub container_port: u16,
}

impl PortMapping {
    /// A mapping, checking that the range is well-formed.
    pub fn new(
        proto: Proto,
        host_ip: Option<IpAddr>,
        host: (u16, u16),
        container_port: u16,
    ) -> Result<Self> {
        let (start, end) = host;
        if start == 0 || container_port == 0 || end < start {
            return Err(Error::InvalidConfig(format!(
                "port mapping {start}-{end}:{container_port}/{proto} is invalid: ports must be 1-65535 and the range ascending"
            )));
        }
        let span = end - start;
        if container_port.checked_add(span).is_none() {
            return Err(Error::InvalidConfig(format!(
                "port mapping {start}-{end}:{container_port}/{proto}: the container range would pass port 65535"
            )));
        }
        Ok(PortMapping {
            proto,
            host_ip,
            host_port: start,
            host_port_end: end,
            container_port,
        })
    }

    pub fn len(&self) -> u32 {
        u32::from(self.host_port_end - self.host_port) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What is asked when attaching a container: addresses come already leased (drivers never call IPAM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub network_id: String,
    pub key: AttachmentKey,
    /// Addresses with the subnet's prefix length.
    pub addresses: Vec<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub options: Options,
    /// Where the container end will go, when the engine configures the sandbox itself (CNI): a
    /// driver may create the link there directly under its final name, which spares a move
    /// between namespaces (tens of ms in the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// The container namespace and interface name an endpoint's link ends up as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub netns_path: PathBuf,
    pub ifname: String,
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network_id: String,
    pub key: AttachmentKey,
    pub addresses: Vec<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The link left in the host netns (veth peer, or the macvlan before Docker moves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub options: Options,
}

/// A container's network namespace, by path (CNI_NETNS, Docker's SandboxKey).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub netns_path: PathBuf,
}

/// A route to install in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub destination: IpNetwork,
    /// None = directly connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// Something CHECK found different from what was set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// What was inspected ("interface eth0", "nft element 10.1.0.5 . 8080").
    pub subject: String,
    /// What is wrong, said plainly.
    pub problem: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_keys_follow_cni_rules() {
        assert!(AttachmentKey::new("abc123", "eth0").is_ok());
        assert!(AttachmentKey::new("-abc", "eth0").is_err());
        assert!(AttachmentKey::new("abc", "").is_err());
        assert!(AttachmentKey::new("abc", "a/b").is_err());
        assert!(AttachmentKey::new("abc", "0123456789abcdef").is_err());
        assert_eq!(AttachmentKey::new("c1", "eth0").unwrap().owner(), "c1/eth0");
    }

    #[test]
    fn port_ranges_are_checked() {
        let m = PortMapping::new(Proto::Tcp, None, (8000, 8100), 8000).unwrap();
        assert_eq!(m.len(), 101);
        assert!(PortMapping::new(Proto::Tcp, None, (10, 5), 80).is_err());
        assert!(PortMapping::new(Proto::Udp, None, (0, 0), 80).is_err());
        assert!(PortMapping::new(Proto::Tcp, None, (100, 200), 65500).is_err());
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
        assert_eq!(Proto::from_number(132), Some(Proto::Sctp));
    }
}
