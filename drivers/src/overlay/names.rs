//! Link names of an overlay on a host, derived from the cluster-wide overlay name so that every
//! host, the agent and a DEL after lost state find them without stored state.
//!
//! `nlo` + 10 hex digits for the bridge, `nlx` + the same digits for the VXLAN device (13 bytes,
//! under the kernel's 15). Neither prefix is a hex digit, so they never look like a host veth
//! (`nl` + 11 hex digits, see [`crate::naming`]).

/// FNV-1a, 64 bits (stable across processes and Rust versions).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn digits(overlay: &str) -> String {
    format!("{:010x}", fnv1a(overlay) & 0xff_ffff_ffff)
}

/// The bridge of an overlay on this host.
pub fn bridge(overlay: &str) -> String {
    format!("nlo{}", digits(overlay))
}

/// The VXLAN device of an overlay on this host.
pub fn vxlan(overlay: &str) -> String {
    format!("nlx{}", digits(overlay))
}

/// A stable hash of the overlay name, for spreading automatically chosen VNIs.
pub fn hash(overlay: &str) -> u64 {
    fnv1a(overlay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_distinct() {
        assert_eq!(bridge("web").len(), 13);
        assert_eq!(vxlan("web").len(), 13);
        assert_eq!(bridge("web"), bridge("web"));
        assert_ne!(bridge("web"), bridge("db"));
        assert_eq!(&bridge("web")[3..], &vxlan("web")[3..]);
        assert!(!crate::naming::is_host_veth(&bridge("web")));
        assert!(!crate::naming::is_host_veth(&vxlan("web")));
    }
}
