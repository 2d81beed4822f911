//! Deterministic names and MAC addresses for the macvlan and ipvlan drivers.
//!
//! Everything netloom makes in the host is named after what it belongs to, so DEL, GC and
//! crash recovery find it without stored state. The prefixes differ from the bridge driver's
//! (`nl` + 11 hex digits) so neither driver's sweeps can take the other's links.

use engine_core::netlink::MacAddr;
use engine_core::AttachmentKey;

use crate::naming::fnv1a;

/// The netloom-made parent of a network without one: `dm-` + 12 hex digits (Docker names its
/// dummy parents `dm-<network id>` too).
pub fn internal_parent(network: &str) -> String {
    format!("dm-{:012x}", fnv1a(&["parent", network]) & 0xffff_ffff_ffff)
}

/// The host shim of a network: `nlshim` + 9 hex digits.
pub fn shim(network_id: &str) -> String {
    format!("nlshim{:09x}", fnv1a(&["shim", network_id]) & 0xf_ffff_ffff)
}

/// Whether `name` is a host shim name.
pub fn is_shim(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("nlshim")
        && name[6..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The link an endpoint gets in the host when the runtime moves it itself (Docker's Join):
/// `nlv` + 12 hex digits.
pub fn host_link(network_id: &str, key: &AttachmentKey) -> String {
    format!(
        "nlv{:012x}",
        fnv1a(&[network_id, &key.container_id, &key.ifname]) & 0xffff_ffff_ffff
    )
}

/// Whether `name` is an endpoint's host-side link name.
pub fn is_host_link(name: &str) -> bool {
    name.len() == 15 && name.starts_with("nlv") && name[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name an interface takes in a container while it waits to be deleted (see the drivers'
/// `leave`): `nld` + 12 hex digits, unique per call.
pub fn tombstone(ifname: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let salt = format!("{}-{nanos}", std::process::id());
    format!("nld{:012x}", fnv1a(&[ifname, &salt]) & 0xffff_ffff_ffff)
}

/// A MAC address that stays the same for an endpoint across ADDs (and so across container
/// restarts that reuse the attachment): locally administered, unicast.
pub fn stable_mac(network_id: &str, key: &AttachmentKey) -> MacAddr {
    crate::naming::stable_mac(&["mac", network_id, &key.container_id, &key.ifname])
}

/// Splits an 802.1Q sub-interface name `<base>.<vid>` into the base and the VLAN id, when the
/// part after the last dot is a number. The id is not range-checked here.
pub fn split_vlan(name: &str) -> Option<(&str, u32)> {
    let (base, vid) = name.rsplit_once('.')?;
    if base.is_empty() || vid.is_empty() || !vid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A number too long for u32 is still a VLAN id attempt: report it as out of range.
    Some((base, vid.parse().unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_are_stable() {
        let k = AttachmentKey::new("c1", "eth0").unwrap();
        for n in [
            internal_parent("web"),
            shim("web"),
            host_link("web", &k),
            tombstone("eth0"),
        ] {
            assert!(n.len() <= 15, "{n}");
            engine_core::validate_ifname(&n).unwrap();
        }
        assert_eq!(internal_parent("web"), internal_parent("web"));
        assert_ne!(internal_parent("web"), internal_parent("db"));
        assert!(is_shim(&shim("web")) && !is_shim("nlshimzzzzzzzzz"));
        assert!(is_host_link(&host_link("web", &k)) && !is_host_link("eth0"));
        // Not a bridge driver name (nl + 11 hex digits), so no sweep takes the other's links.
        assert!(!crate::naming::is_host_veth(&host_link("web", &k)));
    }

    #[test]
    fn macs_are_stable_unicast_and_local() {
        let k = AttachmentKey::new("c1", "eth0").unwrap();
        let m = stable_mac("web", &k);
        assert_eq!(m, stable_mac("web", &k));
        assert_ne!(
            m,
            stable_mac("web", &AttachmentKey::new("c2", "eth0").unwrap())
        );
        assert_eq!(m.0[0] & 0x03, 0x02);
    }

    #[test]
    fn vlan_names_split() {
        assert_eq!(split_vlan("eth1.50"), Some(("eth1", 50)));
        assert_eq!(split_vlan("bond0.4094"), Some(("bond0", 4094)));
        assert_eq!(split_vlan("eth1"), None);
        assert_eq!(split_vlan("br.lan"), None);
        assert_eq!(split_vlan(".5"), None);
        assert_eq!(split_vlan("eth1.99999999999"), Some(("eth1", u32::MAX)));
    }
}
