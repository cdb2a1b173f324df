//! Sets of IP addresses kept as sorted, merged ranges per address family:
//! the source side of every compiled filter rule.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A set of IPv4 and IPv6 addresses.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl fmt::Debug for IpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.to_strings()).finish()
    }
}

fn v4_bounds(n: &Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

fn v6_bounds(n: &Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

fn merge<T: Copy + Ord + One>(mut v: Vec<(T, T)>) -> Vec<(T, T)> {
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if last.1 == T::MAX || a <= last.1.inc() => {
                if b > last.1 {
                    last.1 = b;
                }
            }
            _ => out.push((a, b)),
        }
    }
    out
}

/// Minimal helpers over the two integer widths used for addresses.
trait One: Sized {
    const MAX: Self;
    fn inc(self) -> Self;
}

impl One for u32 {
    const MAX: Self = u32::MAX;
    fn inc(self) -> Self {
        self.saturating_add(1)
    }
}

impl One for u128 {
    const MAX: Self = u128::MAX;
    fn inc(self) -> Self {
        self.saturating_add(1)
    }
}

fn insert_point<T: Copy + Ord + One + Dec>(ranges: &mut Vec<(T, T)>, x: T) {
    let i = ranges.partition_point(|r| r.1 < x);
    if ranges.get(i).is_some_and(|r| r.0 <= x) {
        return;
    }
    let joins_prev = i > 0 && ranges[i - 1].1 != T::MAX && ranges[i - 1].1.inc() == x;
    let joins_next = ranges.get(i).is_some_and(|r| x != T::MAX && x.inc() == r.0);
    match (joins_prev, joins_next) {
        (true, true) => {
            ranges[i - 1].1 = ranges[i].1;
            ranges.remove(i);
        }
        (true, false) => ranges[i - 1].1 = x,
        (false, true) => ranges[i].0 = x,
        (false, false) => ranges.insert(i, (x, x)),
    }
}

fn remove_point<T: Copy + Ord + One + Dec>(ranges: &mut Vec<(T, T)>, x: T) {
    let i = ranges.partition_point(|r| r.1 < x);
    let Some(&(a, b)) = ranges.get(i) else { return };
    if x < a {
        return;
    }
    match (a == x, b == x) {
        (true, true) => {
            ranges.remove(i);
        }
        (true, false) => ranges[i].0 = x.inc(),
        (false, true) => ranges[i].1 = x.dec(),
        (false, false) => {
            ranges[i].1 = x.dec();
            ranges.insert(i + 1, (x.inc(), b));
        }
    }
}

/// Decrement for the address integer widths.
trait Dec {
    fn dec(self) -> Self;
}

impl Dec for u32 {
    fn dec(self) -> Self {
        self.saturating_sub(1)
    }
}

impl Dec for u128 {
    fn dec(self) -> Self {
        self.saturating_sub(1)
    }
}

/// The ranges of `a` not in `b` (both sorted and merged).
fn subtract<T: Copy + Ord + One + Dec>(a: &[(T, T)], b: &[(T, T)]) -> Vec<(T, T)> {
    let mut out = Vec::new();
    for &(mut lo, hi) in a {
        let mut open = true;
        for &(x, y) in b.iter().skip(b.partition_point(|r| r.1 < lo)) {
            if x > hi {
                break;
            }
            if x > lo {
                out.push((lo, x.dec()));
            }
            if y >= hi {
                open = false;
                break;
            }
            lo = y.inc();
        }
        if open {
            out.push((lo, hi));
        }
    }
    out
}

fn contains<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.1 < x);
    ranges.get(i).is_some_and(|r| r.0 <= x)
}

fn covers<T: Copy + Ord>(ranges: &[(T, T)], (a, b): (T, T)) -> bool {
    let i = ranges.partition_point(|r| r.1 < a);
    ranges.get(i).is_some_and(|r| r.0 <= a && b <= r.1)
}

fn intersects<T: Copy + Ord>(ranges: &[(T, T)], (a, b): (T, T)) -> bool {
    let i = ranges.partition_point(|r| r.1 < a);
    ranges.get(i).is_some_and(|r| r.0 <= b)
}

impl IpSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every IPv4 and IPv6 address (what `*` means as a source).
    pub fn all() -> Self {
        IpSet {
            v4: vec![(0, u32::MAX)],
            v6: vec![(0, u128::MAX)],
        }
    }

    /// Builds a set from networks (single addresses are /32 or /128).
    pub fn from_nets<I: IntoIterator<Item = IpNet>>(nets: I) -> Self {
        let mut b = IpSetBuilder::default();
        for n in nets {
            b.add_net(n);
        }
        b.build()
    }

    /// Whether the set holds the address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => contains(&self.v4, u32::from(a)),
            IpAddr::V6(a) => contains(&self.v6, u128::from(a)),
        }
    }

    /// Whether the set holds every address of the network.
    pub fn covers(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => covers(&self.v4, v4_bounds(n)),
            IpNet::V6(n) => covers(&self.v6, v6_bounds(n)),
        }
    }

    /// Whether the set holds any address of the network.
    pub fn intersects(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => intersects(&self.v4, v4_bounds(n)),
            IpNet::V6(n) => intersects(&self.v6, v6_bounds(n)),
        }
    }

    /// Adds one address.
    pub fn insert(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => insert_point(&mut self.v4, u32::from(a)),
            IpAddr::V6(a) => insert_point(&mut self.v6, u128::from(a)),
        }
    }

    /// Removes one address (splitting the range that held it).
    pub fn remove(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => remove_point(&mut self.v4, u32::from(a)),
            IpAddr::V6(a) => remove_point(&mut self.v6, u128::from(a)),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether the set is every address of both families.
    pub fn is_all(&self) -> bool {
        self.v4 == [(0, u32::MAX)] && self.v6 == [(0, u128::MAX)]
    }

    /// The union of two sets.
    pub fn union(&self, other: &IpSet) -> IpSet {
        let mut v4 = self.v4.clone();
        v4.extend_from_slice(&other.v4);
        let mut v6 = self.v6.clone();
        v6.extend_from_slice(&other.v6);
        IpSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// The addresses of this set that are not in `other`.
    pub fn difference(&self, other: &IpSet) -> IpSet {
        IpSet {
            v4: subtract(&self.v4, &other.v4),
            v6: subtract(&self.v6, &other.v6),
        }
    }

    /// Number of ranges (a measure of size for formatting and benchmarks).
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// The set as the fewest CIDR prefixes, IPv4 first, ascending.
    pub fn to_nets(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(a, b) in &self.v4 {
            range_to_cidrs(u128::from(a), u128::from(b), 32, &mut |base, len| {
                let addr = Ipv4Addr::from(u32::try_from(base).unwrap_or(0));
                if let Ok(n) = Ipv4Net::new(addr, len) {
                    out.push(IpNet::V4(n));
                }
            });
        }
        for &(a, b) in &self.v6 {
            range_to_cidrs(a, b, 128, &mut |base, len| {
                if let Ok(n) = Ipv6Net::new(Ipv6Addr::from(base), len) {
                    out.push(IpNet::V6(n));
                }
            });
        }
        out
    }

    /// The set as strings: `*` for everything, otherwise addresses (no
    /// `/32` or `/128`) and prefixes.
    pub fn to_strings(&self) -> Vec<String> {
        if self.is_all() {
            return vec!["*".into()];
        }
        self.to_nets()
            .into_iter()
            .map(|n| {
                if n.prefix_len() == n.max_prefix_len() {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect()
    }
}

impl Serialize for IpSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.to_strings())
    }
}

impl<'de> serde::Deserialize<'de> for IpSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        let mut b = IpSetBuilder::default();
        for item in items {
            if item == "*" {
                return Ok(IpSet::all());
            }
            let net = match item.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => item.parse::<IpNet>().map_err(serde::de::Error::custom)?,
            };
            b.add_net(net);
        }
        Ok(b.build())
    }
}

/// Splits the inclusive range `[a, b]` of a `bits`-wide address space into
/// the fewest aligned prefixes.
fn range_to_cidrs(mut a: u128, b: u128, bits: u8, emit: &mut dyn FnMut(u128, u8)) {
    loop {
        // Largest block starting at `a` that is aligned and fits in [a, b].
        let mut size_log = if a == 0 {
            u32::from(bits)
        } else {
            a.trailing_zeros().min(u32::from(bits))
        };
        while size_log > 0 {
            let last = if size_log >= 128 {
                u128::MAX
            } else {
                a | ((1u128 << size_log) - 1)
            };
            if last <= b {
                break;
            }
            size_log -= 1;
        }
        let len = bits - u8::try_from(size_log).unwrap_or(bits);
        emit(a, len);
        let last = if size_log >= 128 {
            u128::MAX
        } else {
            a | ((1u128 << size_log) - 1)
        };
        if last >= b {
            return;
        }
        a = last + 1;
    }
}

/// Accumulates addresses and networks, then merges them once.
#[derive(Debug, Default, Clone)]
pub struct IpSetBuilder {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSetBuilder {
    /// Adds one address.
    pub fn add_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                let x = u32::from(a);
                self.v4.push((x, x));
            }
            IpAddr::V6(a) => {
                let x = u128::from(a);
                self.v6.push((x, x));
            }
        }
    }

    /// Adds a network.
    pub fn add_net(&mut self, net: IpNet) {
        match net {
            IpNet::V4(n) => self.v4.push(v4_bounds(&n)),
            IpNet::V6(n) => self.v6.push(v6_bounds(&n)),
        }
    }

    /// Adds every address of another set.
    pub fn add_set(&mut self, set: &IpSet) {
        self.v4.extend_from_slice(&set.v4);
        self.v6.extend_from_slice(&set.v6);
    }

    /// The merged set.
    pub fn build(self) -> IpSet {
        IpSet {
            v4: merge(self.v4),
            v6: merge(self.v6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn merges_and_formats() {
        let s = IpSet::from_nets([
            net("100.64.0.1/32"),
            net("100.64.0.2/32"),
            net("100.64.0.3/32"),
            net("100.64.0.0/32"),
            net("10.0.0.0/8"),
            net("fd7a:115c:a1e0::1/128"),
        ]);
        assert_eq!(
            s.to_strings(),
            vec!["10.0.0.0/8", "100.64.0.0/30", "fd7a:115c:a1e0::1"]
        );
        assert!(s.contains("10.200.0.1".parse().unwrap()));
        assert!(!s.contains("100.64.0.4".parse().unwrap()));
        assert!(s.covers(&net("100.64.0.0/31")));
        assert!(!s.covers(&net("100.64.0.0/29")));
        assert!(s.intersects(&net("100.64.0.0/29")));
        assert_eq!(IpSet::all().to_strings(), vec!["*"]);
        assert_eq!(
            IpSet::from_nets([net("0.0.0.0/0")]).to_strings(),
            vec!["0.0.0.0/0"]
        );
    }

    proptest! {
        #[test]
        fn point_updates_match_rebuild(
            start in prop::collection::vec(0u32..64, 0..32),
            ops in prop::collection::vec((any::<bool>(), 0u32..64), 0..32),
        ) {
            let ip = |x: u32| IpAddr::V4(Ipv4Addr::from(u32::MAX - 63 + x));
            let mut model: std::collections::BTreeSet<u32> = start.iter().copied().collect();
            let mut set = IpSet::from_nets(model.iter().map(|x| IpNet::from(ip(*x))));
            for (add, x) in ops {
                if add {
                    model.insert(x);
                    set.insert(ip(x));
                } else {
                    model.remove(&x);
                    set.remove(ip(x));
                }
                let rebuilt = IpSet::from_nets(model.iter().map(|x| IpNet::from(ip(*x))));
                prop_assert_eq!(&set, &rebuilt);
            }
        }

        #[test]
        fn cidrs_cover_exactly(a in any::<u32>(), len in 0u32..4096) {
            let b = a.saturating_add(len);
            let set = IpSet { v4: vec![(a, b)], v6: vec![] };
            let nets = set.to_nets();
            let back = IpSet::from_nets(nets.clone());
            prop_assert_eq!(back, set);
            // Each prefix is maximal: no two neighbours merge into a bigger aligned one
            // beyond what range_to_cidrs emits (checked by count bound).
            prop_assert!(nets.len() <= 64);
        }

        #[test]
        fn membership_matches_naive(
            nets in prop::collection::vec((any::<u32>(), 24u8..=32), 0..12),
            probes in prop::collection::vec(any::<u32>(), 0..32),
        ) {
            let nets: Vec<IpNet> = nets
                .into_iter()
                .map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()))
                .collect();
            let set = IpSet::from_nets(nets.clone());
            for p in probes {
                let ip = IpAddr::V4(Ipv4Addr::from(p));
                prop_assert_eq!(set.contains(ip), nets.iter().any(|n| n.contains(&ip)));
            }
            for n in &nets {
                prop_assert!(set.covers(n));
            }
        }

        #[test]
        fn difference_matches_naive(
            a in prop::collection::vec((0u32..256, 0u32..16), 0..8),
            b in prop::collection::vec((0u32..256, 0u32..16), 0..8),
        ) {
            let set = |v: &[(u32, u32)]| {
                let mut bld = IpSetBuilder::default();
                for &(lo, len) in v {
                    bld.v4.push((lo, lo + len));
                }
                bld.build()
            };
            let (sa, sb) = (set(&a), set(&b));
            let d = sa.difference(&sb);
            for x in 0u32..280 {
                let ip = IpAddr::V4(Ipv4Addr::from(x));
                prop_assert_eq!(d.contains(ip), sa.contains(ip) && !sb.contains(ip), "{}", x);
            }
            prop_assert_eq!(IpSet::from_nets(d.to_nets()), d);
        }
    }
}
