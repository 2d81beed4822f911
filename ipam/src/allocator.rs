//! The pure address allocator: validation of a range set and the choice of the next address.
//!
//! No I/O happens here. [`RangeSet::next_free`] is given a view of what is taken and the last
//! address handed out, and walks the ranges in host-local's order: the address after the last
//! one, through the end of its range, on through the following ranges, wrapping round to the
//! first range and ending at the last address itself. Addresses are `u128` (IPv4 too), so
//! stepping through an IPv6 /64 costs the same as through a /24, and the walk is bounded by the
//! number of taken and excluded addresses, never by the size of the ranges.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use engine_core::ipam::RangeSpec;
use engine_core::{Error, Result};
use ipnetwork::IpNetwork;

/// An address as a number; IPv4 addresses keep their 32-bit value.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`]; `v6` says which family the number belongs to.
pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        // An IPv4 range never produces a value above u32::MAX: its bounds come from an IPv4
        // subnet and the walk never leaves them.
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// The first and last address of `net`, as numbers.
pub fn net_bounds(net: &IpNetwork) -> (u128, u128) {
    (to_u128(net.network()), to_u128(net.broadcast()))
}

/// What the allocator must treat as in use. Implementations need not be restricted to the
/// range set: `len` only has to be an upper bound of the taken addresses inside it.
pub trait Taken {
    fn is_taken(&self, ip: IpAddr) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Taken for BTreeSet<IpAddr> {
    fn is_taken(&self, ip: IpAddr) -> bool {
        self.contains(&ip)
    }
    fn len(&self) -> usize {
        BTreeSet::len(self)
    }
}

impl Taken for HashSet<IpAddr> {
    fn is_taken(&self, ip: IpAddr) -> bool {
        self.contains(&ip)
    }
    fn len(&self) -> usize {
        HashSet::len(self)
    }
}

/// One validated range; all bounds are inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    network: u128,
    last: u128,
    start: u128,
    end: u128,
    gateway: Option<u128>,
}

impl Range {
    pub fn v6(&self) -> bool {
        self.subnet.is_ipv6()
    }

    pub fn start(&self) -> IpAddr {
        from_u128(self.start, self.v6())
    }

    pub fn end(&self) -> IpAddr {
        from_u128(self.end, self.v6())
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway.map(|g| from_u128(g, self.v6()))
    }

    /// The range as a spec with every default filled in.
    pub fn to_spec(&self) -> RangeSpec {
        RangeSpec {
            subnet: self.subnet,
            start: Some(self.start()),
            end: Some(self.end()),
            gateway: self.gateway(),
        }
    }

    fn in_subnet(&self, v: u128) -> bool {
        (self.network..=self.last).contains(&v)
    }

    fn in_range(&self, v: u128) -> bool {
        (self.start..=self.end).contains(&v)
    }

    /// Network address, IPv4 broadcast, gateway: never handed out by any path.
    fn is_structural(&self, v: u128) -> bool {
        v == self.network || (!self.v6() && v == self.last) || self.gateway == Some(v)
    }

    /// Number of addresses in start..=end, saturating at u128::MAX for an IPv6 /0.
    fn count(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }
}

/// Why a specific address cannot be leased, for static requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticRefusal {
    /// Not inside any subnet of the set.
    OutsideSubnets,
    NetworkAddress(IpNetwork),
    Broadcast(IpNetwork),
    Gateway,
    Reserved,
}

/// A chosen address and the index of the range it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub ip: IpAddr,
    pub range: usize,
}

/// A validated pool: one or more ranges of one family plus addresses never handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
    reserved: BTreeSet<u128>,
    v6: bool,
}

impl RangeSet {
    /// Validates the specs the way host-local does (canonical subnets, start <= end, bounds and
    /// gateway inside the subnet, one family, no overlapping ranges) and fills in defaults.
    pub fn new(specs: &[RangeSpec], reserved: &[IpAddr]) -> Result<RangeSet> {
        let Some(first) = specs.first() else {
            return Err(Error::InvalidConfig(
                "a pool needs at least one range".into(),
            ));
        };
        let v6 = first.subnet.is_ipv6();
        let mut ranges = Vec::with_capacity(specs.len());
        for spec in specs {
            if spec.subnet.is_ipv6() != v6 {
                return Err(Error::InvalidConfig(format!(
                    "subnet {} mixes address families with {}; put IPv4 and IPv6 ranges in separate pools",
                    spec.subnet, first.subnet
                )));
            }
            ranges.push(validate_range(spec)?);
        }
        // Sorting makes the walk order and the stored form independent of how the user listed
        // the ranges, and makes the overlap check a neighbour comparison.
        ranges.sort_by_key(|r| r.start);
        for pair in ranges.windows(2) {
            if pair[1].start <= pair[0].end {
                return Err(Error::InvalidConfig(format!(
                    "range {}-{} overlaps range {}-{} in the same pool",
                    pair[1].start(),
                    pair[1].end(),
                    pair[0].start(),
                    pair[0].end()
                )));
            }
        }
        let mut set = RangeSet {
            ranges,
            reserved: BTreeSet::new(),
            v6,
        };
        for &ip in reserved {
            if set.subnet_of(ip).is_none() {
                return Err(Error::InvalidConfig(format!(
                    "reserved address {ip} is outside the pool's subnets ({})",
                    set.describe()
                )));
            }
            set.reserved.insert(to_u128(ip));
        }
        Ok(set)
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// The reserved addresses, sorted and without duplicates.
    pub fn reserved(&self) -> Vec<IpAddr> {
        self.reserved
            .iter()
            .map(|&v| from_u128(v, self.v6))
            .collect()
    }

    /// The subnets, comma-separated, for ids and messages.
    pub fn describe(&self) -> String {
        let mut subnets: Vec<String> = Vec::new();
        for r in &self.ranges {
            let s = r.subnet.to_string();
            if !subnets.contains(&s) {
                subnets.push(s);
            }
        }
        subnets.join(",")
    }

    /// The first range whose subnet holds `ip` (ranges may share a subnet).
    pub fn subnet_of(&self, ip: IpAddr) -> Option<&Range> {
        if ip.is_ipv6() != self.v6 {
            return None;
        }
        let v = to_u128(ip);
        self.ranges.iter().find(|r| r.in_subnet(v))
    }

    /// Whether the dynamic allocator could ever hand out `ip`.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        if ip.is_ipv6() != self.v6 {
            return false;
        }
        let v = to_u128(ip);
        self.ranges
            .iter()
            .any(|r| r.in_range(v) && !r.is_structural(v))
            && !self.reserved.contains(&v)
    }

    /// Checks a static request. Like Docker's `--ip`, the address may lie outside start..end
    /// as long as it is inside a subnet of the set and is not excluded.
    pub fn check_static(&self, ip: IpAddr) -> std::result::Result<usize, StaticRefusal> {
        if ip.is_ipv6() != self.v6 {
            return Err(StaticRefusal::OutsideSubnets);
        }
        let v = to_u128(ip);
        // Prefer the range that holds the address, so the lease reports that range's gateway.
        let idx = self
            .ranges
            .iter()
            .position(|r| r.in_range(v))
            .or_else(|| self.ranges.iter().position(|r| r.in_subnet(v)))
            .ok_or(StaticRefusal::OutsideSubnets)?;
        let r = &self.ranges[idx];
        if v == r.network {
            return Err(StaticRefusal::NetworkAddress(r.subnet));
        }
        if !self.v6 && v == r.last {
            return Err(StaticRefusal::Broadcast(r.subnet));
        }
        // Ranges may share a subnet: the gateway of any of them is off limits.
        if self.ranges.iter().any(|o| o.gateway == Some(v)) {
            return Err(StaticRefusal::Gateway);
        }
        if self.reserved.contains(&v) {
            return Err(StaticRefusal::Reserved);
        }
        Ok(idx)
    }

    /// How many addresses the dynamic allocator can hand out in total (saturating).
    pub fn capacity(&self) -> u128 {
        let mut excluded: BTreeSet<u128> = BTreeSet::new();
        for r in &self.ranges {
            for v in [Some(r.network), (!self.v6).then_some(r.last), r.gateway]
                .into_iter()
                .flatten()
            {
                if r.in_range(v) {
                    excluded.insert(v);
                }
            }
        }
        for &v in &self.reserved {
            if self.ranges.iter().any(|r| r.in_range(v)) {
                excluded.insert(v);
            }
        }
        let total = self
            .ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.count()));
        total.saturating_sub(excluded.len() as u128)
    }

    fn is_excluded(&self, v: u128) -> bool {
        self.reserved.contains(&v)
            || self
                .ranges
                .iter()
                .any(|r| r.in_subnet(v) && r.is_structural(v))
    }

    /// The position after `v` in range `ri`, wrapping to the next range and then to the first.
    fn step(&self, ri: usize, v: u128) -> (usize, u128) {
        if v < self.ranges[ri].end {
            (ri, v + 1)
        } else {
            let next = (ri + 1) % self.ranges.len();
            (next, self.ranges[next].start)
        }
    }

    /// The next free address after `last` (host-local's lastReservedIP order), or None when
    /// every address is taken or excluded. A `last` outside the ranges starts the walk at the
    /// first range.
    pub fn next_free(&self, last: Option<IpAddr>, taken: &dyn Taken) -> Option<Candidate> {
        let start = last
            .filter(|ip| ip.is_ipv6() == self.v6)
            .map(to_u128)
            .and_then(|v| {
                self.ranges
                    .iter()
                    .position(|r| r.in_range(v))
                    .map(|ri| self.step(ri, v))
            });
        let (mut ri, mut v) = start.unwrap_or((0, self.ranges[0].start));
        // Every visited address is distinct until the walk has gone all the way round, and each
        // one that is not free is taken or excluded: after (taken + excluded + 1) visits one must
        // have been free, unless the ranges hold fewer addresses than that.
        let excluded_bound = self.reserved.len() as u128 + 3 * self.ranges.len() as u128;
        let total = self
            .ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.count()));
        let budget = total.min(
            (taken.len() as u128)
                .saturating_add(excluded_bound)
                .saturating_add(1),
        );
        let mut visited = 0u128;
        while visited < budget {
            let ip = from_u128(v, self.v6);
            if !self.is_excluded(v) && !taken.is_taken(ip) {
                return Some(Candidate { ip, range: ri });
            }
            (ri, v) = self.step(ri, v);
            visited += 1;
        }
        None
    }
}

fn validate_range(spec: &RangeSpec) -> Result<Range> {
    let subnet = spec.subnet;
    let bits: u8 = if subnet.is_ipv6() { 128 } else { 32 };
    if subnet.ip() != subnet.network() {
        return Err(Error::InvalidConfig(format!(
            "subnet {subnet} has host bits set (did you mean {}/{}?)",
            subnet.network(),
            subnet.prefix()
        )));
    }
    // host-local's rule: a /31 or /32 (/127, /128) leaves nothing to hand out once the network
    // and broadcast addresses are excluded.
    if subnet.prefix() > bits - 2 {
        return Err(Error::InvalidConfig(format!(
            "subnet {subnet} is too small to allocate from (use /{} or larger)",
            bits - 2
        )));
    }
    let (network, last) = net_bounds(&subnet);
    let default_end = if subnet.is_ipv6() { last } else { last - 1 };
    let inside = |what: &str, ip: IpAddr| -> Result<u128> {
        if subnet.contains(ip) {
            Ok(to_u128(ip))
        } else {
            Err(Error::InvalidConfig(format!(
                "{what} {ip} is outside subnet {subnet}"
            )))
        }
    };
    let start = match spec.start {
        Some(ip) => inside("range start", ip)?,
        None => network + 1,
    };
    let end = match spec.end {
        Some(ip) => inside("range end", ip)?,
        None => default_end,
    };
    if start > end {
        return Err(Error::InvalidConfig(format!(
            "range start {} is after range end {} in subnet {subnet}",
            from_u128(start, subnet.is_ipv6()),
            from_u128(end, subnet.is_ipv6())
        )));
    }
    let gateway = match spec.gateway {
        Some(ip) => Some(inside("gateway", ip)?),
        None => None,
    };
    Ok(Range {
        subnet,
        network,
        last,
        start,
        end,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::ErrorKind;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn spec(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> RangeSpec {
        RangeSpec {
            subnet: subnet.parse().unwrap(),
            start: start.map(ip),
            end: end.map(ip),
            gateway: gw.map(ip),
        }
    }

    fn set(specs: &[RangeSpec], reserved: &[&str]) -> RangeSet {
        let reserved: Vec<IpAddr> = reserved.iter().map(|s| ip(s)).collect();
        RangeSet::new(specs, &reserved).unwrap()
    }

    fn invalid(specs: &[RangeSpec], reserved: &[&str]) -> String {
        let reserved: Vec<IpAddr> = reserved.iter().map(|s| ip(s)).collect();
        let err = RangeSet::new(specs, &reserved).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        err.to_string()
    }

    fn none() -> BTreeSet<IpAddr> {
        BTreeSet::new()
    }

    #[test]
    fn defaults_skip_network_and_broadcast() {
        let s = set(&[spec("10.1.0.0/24", None, None, None)], &[]);
        let r = &s.ranges()[0];
        assert_eq!(r.start(), ip("10.1.0.1"));
        assert_eq!(r.end(), ip("10.1.0.254"));
        assert_eq!(s.capacity(), 254);
        let v6 = set(&[spec("fd00::/120", None, None, None)], &[]);
        assert_eq!(v6.ranges()[0].end(), ip("fd00::ff"));
        assert_eq!(v6.capacity(), 255);
    }

    #[test]
    fn first_allocation_skips_gateway_and_follows_last() {
        let s = set(&[spec("10.1.0.0/24", None, None, Some("10.1.0.1"))], &[]);
        assert_eq!(s.next_free(None, &none()).unwrap().ip, ip("10.1.0.2"));
        assert_eq!(
            s.next_free(Some(ip("10.1.0.7")), &none()).unwrap().ip,
            ip("10.1.0.8")
        );
        // The last address wraps to the start, past the gateway.
        assert_eq!(
            s.next_free(Some(ip("10.1.0.254")), &none()).unwrap().ip,
            ip("10.1.0.2")
        );
        // A hint outside the ranges starts at the beginning.
        assert_eq!(
            s.next_free(Some(ip("192.168.0.9")), &none()).unwrap().ip,
            ip("10.1.0.2")
        );
        assert_eq!(
            s.next_free(Some(ip("fd00::1")), &none()).unwrap().ip,
            ip("10.1.0.2")
        );
    }

    #[test]
    fn taken_and_reserved_are_skipped() {
        let s = set(
            &[spec("10.1.0.0/29", None, None, Some("10.1.0.1"))],
            &["10.1.0.3"],
        );
        let taken: BTreeSet<IpAddr> = [ip("10.1.0.2"), ip("10.1.0.4")].into();
        assert_eq!(s.next_free(None, &taken).unwrap().ip, ip("10.1.0.5"));
        assert_eq!(s.capacity(), 4);
        let all: BTreeSet<IpAddr> = ["10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
            .iter()
            .map(|a| ip(a))
            .collect();
        assert_eq!(s.next_free(Some(ip("10.1.0.4")), &all), None);
    }

    #[test]
    fn several_ranges_walk_in_order_and_wrap() {
        let s = set(
            &[
                spec("10.2.0.0/24", Some("10.2.0.10"), Some("10.2.0.11"), None),
                spec("10.1.0.0/24", Some("10.1.0.250"), None, None),
            ],
            &[],
        );
        // Sorted by start: 10.1.0.250-254 first, then 10.2.0.10-11.
        assert_eq!(s.ranges()[0].subnet.to_string(), "10.1.0.0/24");
        let c = s.next_free(Some(ip("10.1.0.254")), &none()).unwrap();
        assert_eq!((c.ip, c.range), (ip("10.2.0.10"), 1));
        let c = s.next_free(Some(ip("10.2.0.11")), &none()).unwrap();
        assert_eq!((c.ip, c.range), (ip("10.1.0.250"), 0));
        assert_eq!(s.describe(), "10.1.0.0/24,10.2.0.0/24");
    }

    #[test]
    fn huge_ipv6_range_is_not_enumerated() {
        let s = set(&[spec("fd00::/64", None, None, Some("fd00::1"))], &[]);
        assert_eq!(s.capacity(), (1u128 << 64) - 2);
        assert_eq!(s.next_free(None, &none()).unwrap().ip, ip("fd00::2"));
        let last = ip("fd00::ffff:ffff:ffff:ffff");
        assert_eq!(s.next_free(Some(last), &none()).unwrap().ip, ip("fd00::2"));
        let whole = set(&[spec("::/0", None, None, None)], &[]);
        assert_eq!(whole.capacity(), u128::MAX);
        assert_eq!(
            whole.next_free(Some(ip("ffff::")), &none()).unwrap().ip,
            ip("ffff::1")
        );
    }

    #[test]
    fn static_checks() {
        let s = set(
            &[spec(
                "10.1.0.0/24",
                Some("10.1.0.100"),
                Some("10.1.0.200"),
                Some("10.1.0.1"),
            )],
            &["10.1.0.150"],
        );
        assert_eq!(s.check_static(ip("10.1.0.120")), Ok(0));
        // Outside start..end but inside the subnet is fine (Docker's --ip).
        assert_eq!(s.check_static(ip("10.1.0.20")), Ok(0));
        assert_eq!(s.check_static(ip("10.1.0.1")), Err(StaticRefusal::Gateway));
        assert_eq!(
            s.check_static(ip("10.1.0.150")),
            Err(StaticRefusal::Reserved)
        );
        assert!(matches!(
            s.check_static(ip("10.1.0.0")),
            Err(StaticRefusal::NetworkAddress(_))
        ));
        assert!(matches!(
            s.check_static(ip("10.1.0.255")),
            Err(StaticRefusal::Broadcast(_))
        ));
        assert_eq!(
            s.check_static(ip("10.9.0.1")),
            Err(StaticRefusal::OutsideSubnets)
        );
        assert_eq!(
            s.check_static(ip("fd00::1")),
            Err(StaticRefusal::OutsideSubnets)
        );
        assert!(!s.is_allocatable(ip("10.1.0.20")));
        assert!(s.is_allocatable(ip("10.1.0.120")));
    }

    #[test]
    fn invalid_configs_are_named() {
        assert!(invalid(&[], &[]).contains("at least one range"));
        assert!(invalid(&[spec("10.1.0.5/24", None, None, None)], &[])
            .contains("did you mean 10.1.0.0/24"));
        assert!(invalid(&[spec("10.1.0.0/31", None, None, None)], &[]).contains("too small"));
        assert!(invalid(&[spec("fd00::/127", None, None, None)], &[]).contains("too small"));
        assert!(invalid(
            &[spec(
                "10.1.0.0/24",
                Some("10.1.0.9"),
                Some("10.1.0.3"),
                None
            )],
            &[]
        )
        .contains("range start 10.1.0.9 is after range end 10.1.0.3"));
        assert!(
            invalid(&[spec("10.1.0.0/24", Some("10.1.1.9"), None, None)], &[])
                .contains("range start 10.1.1.9 is outside subnet 10.1.0.0/24")
        );
        assert!(
            invalid(&[spec("10.1.0.0/24", None, Some("fd00::1"), None)], &[]).contains("range end")
        );
        assert!(
            invalid(&[spec("10.1.0.0/24", None, None, Some("10.2.0.1"))], &[])
                .contains("gateway 10.2.0.1 is outside subnet 10.1.0.0/24")
        );
        assert!(invalid(
            &[
                spec("10.1.0.0/24", None, None, None),
                spec("fd00::/64", None, None, None)
            ],
            &[]
        )
        .contains("mixes address families"));
        assert!(invalid(
            &[
                spec("10.1.0.0/24", None, None, None),
                spec("10.1.0.0/25", None, None, None)
            ],
            &[]
        )
        .contains("overlaps"));
        assert!(
            invalid(&[spec("10.1.0.0/24", None, None, None)], &["10.2.0.3"])
                .contains("reserved address 10.2.0.3")
        );
    }

    /// A small range set: one or two IPv4 ranges in a /26 or /27, optional gateway and reserved.
    fn small_set() -> impl Strategy<Value = RangeSet> {
        (
            prop::bool::ANY,
            0u32..64,
            0u32..64,
            prop::option::of(0u32..64),
            prop::collection::vec(0u32..128, 0..6),
        )
            .prop_map(|(two, a, b, gw, reserved)| {
                let base = u32::from(Ipv4Addr::new(10, 9, 0, 0));
                let at = |off: u32| IpAddr::V4(Ipv4Addr::from(base + off));
                let (lo, hi) = (a.min(b), a.max(b));
                let mut specs = vec![RangeSpec {
                    subnet: "10.9.0.0/26".parse().unwrap(),
                    start: Some(at(lo)),
                    end: Some(at(hi)),
                    gateway: gw.map(at),
                }];
                if two {
                    specs.push(RangeSpec {
                        subnet: "10.9.0.64/27".parse().unwrap(),
                        start: None,
                        end: None,
                        gateway: Some(at(65)),
                    });
                }
                let reserved: Vec<IpAddr> = reserved
                    .into_iter()
                    .filter(|&o| o < 64 || (two && o < 96))
                    .map(at)
                    .collect();
                RangeSet::new(&specs, &reserved).unwrap()
            })
    }

    /// Every address the set spans, for brute-force comparison.
    fn universe(s: &RangeSet) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for r in s.ranges() {
            let (lo, hi) = net_bounds(&r.subnet);
            for v in lo..=hi {
                out.push(from_u128(v, false));
            }
        }
        out
    }

    fn is_forbidden(s: &RangeSet, a: IpAddr) -> bool {
        let v = to_u128(a);
        s.reserved().contains(&a)
            || s.ranges().iter().any(|r| {
                let (lo, hi) = net_bounds(&r.subnet);
                (lo..=hi).contains(&v) && (v == lo || v == hi || r.gateway() == Some(a))
            })
    }

    proptest! {
        #[test]
        fn allocating_until_exhausted_never_repeats_or_hands_out_forbidden(s in small_set(), hint in 0u32..128) {
            let mut taken = BTreeSet::new();
            let mut last = Some(IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 0, 0)) + hint)));
            while let Some(c) = s.next_free(last, &taken) {
                prop_assert!(taken.insert(c.ip), "{} handed out twice", c.ip);
                prop_assert!(!is_forbidden(&s, c.ip), "{} is network/broadcast/gateway/reserved", c.ip);
                prop_assert!(s.ranges()[c.range].subnet.contains(c.ip));
                prop_assert!(s.is_allocatable(c.ip));
                last = Some(c.ip);
            }
            let allocatable = universe(&s).into_iter().filter(|a| s.is_allocatable(*a)).count();
            prop_assert_eq!(taken.len(), allocatable);
            prop_assert_eq!(s.capacity(), allocatable as u128);
        }

        #[test]
        fn every_release_makes_the_address_available_again(s in small_set(), pick in any::<prop::sample::Index>(), hint in 0u32..128) {
            let mut taken = BTreeSet::new();
            while let Some(c) = s.next_free(None, &taken) {
                taken.insert(c.ip);
            }
            prop_assume!(!taken.is_empty());
            let all: Vec<IpAddr> = taken.iter().copied().collect();
            let freed = all[pick.index(all.len())];
            taken.remove(&freed);
            let last = Some(IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 0, 0)) + hint)));
            prop_assert_eq!(s.next_free(last, &taken).map(|c| c.ip), Some(freed));
        }

        #[test]
        fn next_free_is_the_first_free_address_after_last(
            s in small_set(),
            taken_offsets in prop::collection::btree_set(0u32..96, 0..40),
            last_pick in any::<prop::sample::Index>(),
        ) {
            let base = u32::from(Ipv4Addr::new(10, 9, 0, 0));
            let taken: BTreeSet<IpAddr> = taken_offsets.iter().map(|o| IpAddr::V4(Ipv4Addr::from(base + o))).collect();
            // Brute force: the allocatable addresses in walk order (ranges are sorted and disjoint).
            let order: Vec<IpAddr> = s.ranges().iter()
                .flat_map(|r| (to_u128(r.start())..=to_u128(r.end())).map(|v| from_u128(v, false)))
                .collect();
            let last = order[last_pick.index(order.len())];
            let pos = order.iter().position(|a| *a == last).unwrap();
            let expected = order[pos + 1..].iter().chain(order[..=pos].iter())
                .find(|a| s.is_allocatable(**a) && !taken.contains(*a))
                .copied();
            prop_assert_eq!(s.next_free(Some(last), &taken).map(|c| c.ip), expected);
        }

        #[test]
        fn big_ipv6_walks_are_bounded(offsets in prop::collection::btree_set(0u128..64, 0..64), from in any::<u64>()) {
            let s = RangeSet::new(&[RangeSpec {
                subnet: "fd00:1::/64".parse().unwrap(), start: None, end: None, gateway: Some(ip("fd00:1::1")),
            }], &[]).unwrap();
            let base = to_u128(ip("fd00:1::"));
            let taken: BTreeSet<IpAddr> = offsets.iter().map(|o| from_u128(base + u128::from(from) + o, true)).collect();
            let last = from_u128(base + u128::from(from), true);
            let c = s.next_free(Some(last), &taken).unwrap();
            prop_assert!(!taken.contains(&c.ip));
            prop_assert!(s.is_allocatable(c.ip));
        }
    }
}
