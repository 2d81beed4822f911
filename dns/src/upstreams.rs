//! The host's resolvers, for networks that name no upstreams of their own.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the real upstreams, used when /etc/resolv.conf points at its stub.
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
const RESOLVED_STUB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 53));

/// `nameserver` lines of a resolv.conf text (zone-scoped and malformed entries skipped).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The host's upstreams: /etc/resolv.conf's, or systemd-resolved's real ones when
/// resolv.conf names the 127.0.0.53 stub (the stub would work from the host, but answers for
/// the host's own search domains and adds a hop).
pub fn host_upstreams() -> Vec<SocketAddr> {
    from_files(Path::new(RESOLV_CONF), Path::new(RESOLVED_UPSTREAMS))
}

fn from_files(resolv: &Path, resolved: &Path) -> Vec<SocketAddr> {
    let main = parse_resolv_conf(&std::fs::read_to_string(resolv).unwrap_or_default());
    if main.iter().any(|s| s.ip() == RESOLVED_STUB) {
        let real = parse_resolv_conf(&std::fs::read_to_string(resolved).unwrap_or_default());
        if !real.is_empty() {
            return real;
        }
    }
    main
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_is_replaced_by_resolved_list() {
        let dir = std::env::temp_dir().join(format!("nl-dns-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("resolv.conf");
        let b = dir.join("resolved.conf");
        std::fs::write(&a, "# x\nnameserver 127.0.0.53\noptions edns0\n").unwrap();
        std::fs::write(
            &b,
            "nameserver 10.9.0.1\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\n",
        )
        .unwrap();
        let got = from_files(&a, &b);
        assert_eq!(
            got,
            vec![
                "10.9.0.1:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        std::fs::write(&a, "nameserver 10.8.0.1\n").unwrap();
        assert_eq!(from_files(&a, &b), vec!["10.8.0.1:53".parse().unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
