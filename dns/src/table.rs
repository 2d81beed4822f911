//! The in-memory view the server answers from, rebuilt from the registry on every reload and
//! swapped in whole (readers never wait, queries in flight finish on the old table).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

use crate::registry::{NetworkEntry, RecordEntry};

/// One network's names.
#[derive(Debug, Default)]
pub struct NetTable {
    pub name: String,
    pub subnets: Vec<IpNetwork>,
    pub gateways: Vec<IpAddr>,
    /// Lower case, no dots at the ends ("dns.netloom").
    pub domain: String,
    pub upstreams: Vec<SocketAddr>,
    /// name, alias or short id → addresses (in registration order).
    pub names: HashMap<String, Vec<IpAddr>>,
    /// address → the primary name as an absolute name ("web.dns.netloom.").
    pub ptr: HashMap<IpAddr, String>,
}

/// All networks of one host.
#[derive(Debug, Default)]
pub struct Table {
    pub nets: Vec<NetTable>,
}

impl Table {
    /// Builds the table; networks without upstreams of their own get `host_upstreams`.
    pub fn build(
        nets: Vec<NetworkEntry>,
        recs: Vec<RecordEntry>,
        host_upstreams: &[SocketAddr],
    ) -> Table {
        let mut out: Vec<NetTable> = nets
            .into_iter()
            .map(|n| NetTable {
                upstreams: if n.upstreams.is_empty() {
                    host_upstreams.to_vec()
                } else {
                    n.upstreams
                },
                name: n.name,
                subnets: n.subnets,
                gateways: n.gateways,
                domain: n.domain,
                names: HashMap::new(),
                ptr: HashMap::new(),
            })
            .collect();
        for r in recs {
            let Some(net) = out.iter_mut().find(|n| n.name == r.network) else {
                continue;
            };
            for name in &r.names {
                let list = net.names.entry(name.clone()).or_default();
                for ip in &r.ips {
                    if !list.contains(ip) {
                        list.push(*ip);
                    }
                }
            }
            if let Some(primary) = r.names.first() {
                for ip in &r.ips {
                    net.ptr.insert(*ip, format!("{primary}.{}.", net.domain));
                }
            }
        }
        Table { nets: out }
    }

    /// The network an asker belongs to: the one whose subnet holds its source address; when
    /// subnets overlap, the one that owns the address the query arrived on.
    pub fn net_for(&self, src: IpAddr, local: IpAddr) -> Option<&NetTable> {
        let src = canonical(src);
        let mut found = self
            .nets
            .iter()
            .filter(|n| n.subnets.iter().any(|s| s.contains(src)));
        let first = found.next()?;
        if first.gateways.contains(&canonical(local)) {
            return Some(first);
        }
        found
            .find(|n| n.gateways.contains(&canonical(local)))
            .or(Some(first))
    }

    /// Every address the server must listen on.
    pub fn listen_addrs(&self) -> BTreeSet<IpAddr> {
        self.nets
            .iter()
            .flat_map(|n| n.gateways.iter().copied())
            // Link-local gateways would need a scope id; runtimes hand out global ones.
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .collect()
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnet: &str, gw: &str) -> NetworkEntry {
        NetworkEntry {
            name: name.into(),
            subnets: vec![subnet.parse().unwrap()],
            gateways: vec![gw.parse().unwrap()],
            domain: "dns.netloom".into(),
            upstreams: vec![],
        }
    }

    #[test]
    fn scoping_and_aliases() {
        let t = Table::build(
            vec![
                net("a", "10.1.0.0/24", "10.1.0.1"),
                net("b", "10.2.0.0/24", "10.2.0.1"),
            ],
            vec![
                RecordEntry {
                    network: "a".into(),
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                    names: vec!["web".into(), "www".into()],
                    ips: vec!["10.1.0.2".parse().unwrap()],
                },
                RecordEntry {
                    network: "a".into(),
                    container_id: "c2".into(),
                    ifname: "eth0".into(),
                    names: vec!["web2".into(), "www".into()],
                    ips: vec!["10.1.0.3".parse().unwrap()],
                },
            ],
            &["10.9.9.9:53".parse().unwrap()],
        );
        let a = t
            .net_for("10.1.0.7".parse().unwrap(), "10.1.0.1".parse().unwrap())
            .unwrap();
        assert_eq!(a.names["www"].len(), 2);
        assert_eq!(
            a.ptr[&"10.1.0.3".parse::<IpAddr>().unwrap()],
            "web2.dns.netloom."
        );
        assert_eq!(a.upstreams, vec!["10.9.9.9:53".parse().unwrap()]);
        let b = t
            .net_for("10.2.0.7".parse().unwrap(), "10.2.0.1".parse().unwrap())
            .unwrap();
        assert!(b.names.is_empty());
        assert!(t
            .net_for("10.3.0.7".parse().unwrap(), "10.1.0.1".parse().unwrap())
            .is_none());
        assert_eq!(t.listen_addrs().len(), 2);
    }
}
