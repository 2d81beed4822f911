//! Default pools: where a subnet comes from when the user does not give one.
//!
//! Configured like Docker's `default-address-pools`: a list of base prefixes, each split into
//! subnets of one size, tried in order. The choice is pure: the caller passes every subnet that
//! is already in use (other pools, routes on the host) and gets the first candidate that overlaps
//! none of them. Candidates that overlap are skipped in jumps past the blocking subnet, so a base
//! such as an IPv6 /48 split into /64s costs one step per blocker, not one per candidate.

use std::net::IpAddr;

use engine_core::{Error, Result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::allocator::{from_u128, net_bounds};

/// One entry of the list: split `base` into subnets of prefix length `size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPool {
    pub base: IpNetwork,
    pub size: u8,
}

/// The ordered list of default pools (both families; the family of a request picks the entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPools(Vec<DefaultPool>);

/// netloom's IPv6 default base: the ULA prefix fd00::/8 with the 40-bit global ID 6e:65:74:6c:6f
/// ("netlo" in ASCII). RFC 4193 asks for a random global ID; hosts whose containers' ULA
/// subnets are routed between sites should configure their own.
pub const DEFAULT_V6_BASE: &str = "fd6e:6574:6c6f::/48";

impl DefaultPools {
    /// Checks every entry: canonical base, and a size that is neither wider than the base nor
    /// too narrow to allocate from.
    pub fn new(pools: Vec<DefaultPool>) -> Result<Self> {
        for p in &pools {
            let bits: u8 = if p.base.is_ipv6() { 128 } else { 32 };
            if p.base.ip() != p.base.network() {
                return Err(Error::InvalidConfig(format!(
                    "default pool base {} has host bits set (did you mean {}/{}?)",
                    p.base,
                    p.base.network(),
                    p.base.prefix()
                )));
            }
            if p.size < p.base.prefix() || p.size == 0 || p.size > bits - 2 {
                return Err(Error::InvalidConfig(format!(
                    "default pool {} has size /{}: it must be between /{} and /{}",
                    p.base,
                    p.size,
                    p.base.prefix().max(1),
                    bits - 2
                )));
            }
        }
        Ok(DefaultPools(pools))
    }

    /// Docker's `default-address-pools` (172.17.0.0/16 … 172.31.0.0/16 as /16s, then
    /// 192.168.0.0/16 as /20s) and, for IPv6, [`DEFAULT_V6_BASE`] as /64s.
    pub fn docker() -> Self {
        let mut pools: Vec<DefaultPool> = (17u8..=31)
            .map(|b| DefaultPool {
                base: IpNetwork::new(IpAddr::from([172, b, 0, 0]), 16)
                    .unwrap_or_else(|_| unreachable!()),
                size: 16,
            })
            .collect();
        pools.push(DefaultPool {
            base: net("192.168.0.0/16"),
            size: 20,
        });
        pools.push(DefaultPool {
            base: net(DEFAULT_V6_BASE),
            size: 64,
        });
        DefaultPools(pools)
    }

    pub fn pools(&self) -> &[DefaultPool] {
        &self.0
    }

    /// The first subnet of the requested family that overlaps nothing in `in_use`. Prefix-0
    /// entries (default routes) are ignored, as Docker does: they overlap everything.
    pub fn choose(&self, v6: bool, in_use: &[IpNetwork]) -> Option<IpNetwork> {
        let blockers: Vec<(u128, u128)> = in_use
            .iter()
            .filter(|n| n.is_ipv6() == v6 && n.prefix() > 0)
            .map(net_bounds)
            .collect();
        let bits: u32 = if v6 { 128 } else { 32 };
        for p in self.0.iter().filter(|p| p.base.is_ipv6() == v6) {
            let (base_lo, base_hi) = net_bounds(&p.base);
            let Some(block) = 1u128.checked_shl(bits - u32::from(p.size)) else {
                continue;
            };
            let mut lo = base_lo;
            while lo <= base_hi {
                let hi = lo + (block - 1);
                let past = blockers
                    .iter()
                    .filter(|(b_lo, b_hi)| *b_lo <= hi && *b_hi >= lo)
                    .map(|(_, b_hi)| *b_hi)
                    .max();
                match past {
                    None => return IpNetwork::new(from_u128(lo, v6), p.size).ok(),
                    // Jump to the first aligned candidate after the blocker.
                    Some(b_hi) => match b_hi.checked_add(1).and_then(|n| align_up(n, block)) {
                        Some(next) => lo = next,
                        None => break,
                    },
                }
            }
        }
        None
    }
}

impl Default for DefaultPools {
    fn default() -> Self {
        Self::docker()
    }
}

fn align_up(v: u128, block: u128) -> Option<u128> {
    let rem = v % block;
    if rem == 0 {
        Some(v)
    } else {
        v.checked_add(block - rem)
    }
}

fn net(s: &str) -> IpNetwork {
    // Only called on the constants above.
    s.parse()
        .unwrap_or_else(|_| unreachable!("bad built-in default pool {s}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::ErrorKind;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn docker_order_for_v4() {
        let d = DefaultPools::docker();
        assert_eq!(d.choose(false, &[]), Some(n("172.17.0.0/16")));
        assert_eq!(
            d.choose(false, &[n("172.17.0.0/16")]),
            Some(n("172.18.0.0/16"))
        );
        let all172: Vec<IpNetwork> = vec![n("172.16.0.0/12")];
        assert_eq!(d.choose(false, &all172), Some(n("192.168.0.0/20")));
        let mut busy = all172.clone();
        busy.push(n("192.168.0.0/24"));
        busy.push(n("192.168.17.5/32"));
        assert_eq!(d.choose(false, &busy), Some(n("192.168.32.0/20")));
        busy.push(n("192.168.0.0/16"));
        assert_eq!(d.choose(false, &busy), None);
    }

    #[test]
    fn default_route_is_ignored_and_families_do_not_mix() {
        let d = DefaultPools::docker();
        assert_eq!(
            d.choose(false, &[n("0.0.0.0/0"), n("fd6e:6574:6c6f::/64")]),
            Some(n("172.17.0.0/16"))
        );
        assert_eq!(
            d.choose(true, &[n("::/0"), n("172.17.0.0/16")]),
            Some(n("fd6e:6574:6c6f::/64"))
        );
    }

    #[test]
    fn v6_jumps_past_blockers() {
        let d = DefaultPools::docker();
        let busy = vec![n("fd6e:6574:6c6f::/50"), n("fd6e:6574:6c6f:4000::/64")];
        assert_eq!(d.choose(true, &busy), Some(n("fd6e:6574:6c6f:4001::/64")));
        assert_eq!(d.choose(true, &[n("fd00::/8")]), None);
    }

    #[test]
    fn custom_pools_are_validated() {
        let ok = DefaultPools::new(vec![DefaultPool {
            base: n("10.0.0.0/8"),
            size: 24,
        }])
        .unwrap();
        assert_eq!(
            ok.choose(false, &[n("10.0.0.0/23")]),
            Some(n("10.0.2.0/24"))
        );
        assert_eq!(ok.choose(true, &[]), None);
        for (base, size) in [
            ("10.0.0.0/8", 7),
            ("10.0.0.0/8", 31),
            ("10.0.0.1/8", 24),
            ("::/0", 0),
        ] {
            let err = DefaultPools::new(vec![DefaultPool {
                base: n(base),
                size,
            }])
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{base} {size}");
        }
        let top = DefaultPools::new(vec![DefaultPool {
            base: n("ffff::/16"),
            size: 17,
        }])
        .unwrap();
        assert_eq!(
            top.choose(true, &[n("ffff::/17")]),
            Some(n("ffff:8000::/17"))
        );
        assert_eq!(top.choose(true, &[n("ffff::/16")]), None);
    }
}
