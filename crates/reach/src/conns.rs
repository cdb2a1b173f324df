//! Sets of connections (protocol × port ranges) and IPv4 address ranges.

use std::fmt;

/// A transport protocol that network policies can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// Every protocol, in the order used for indexing.
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    /// Parses `TCP`, `UDP`, `SCTP` (any case).
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    fn index(self) -> usize {
        match self {
            Proto::Tcp => 0,
            Proto::Udp => 1,
            Proto::Sctp => 2,
        }
    }
}

/// Sorted, merged, inclusive ranges of `u16` (ports) or `u32` (addresses).
fn normalize<T: Copy + Ord + Into<u64>>(v: &mut Vec<(T, T)>) {
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for &(lo, hi) in v.iter() {
        if let Some(last) = out.last_mut() {
            if lo.into() <= last.1.into() + 1 {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    *v = out;
}

fn intersect<T: Copy + Ord>(a: &[(T, T)], b: &[(T, T)]) -> Vec<(T, T)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a` minus `b`; `pred`/`succ` step one value down/up.
fn subtract<T: Copy + Ord>(
    a: &[(T, T)],
    b: &[(T, T)],
    pred: impl Fn(T) -> T,
    succ: impl Fn(T) -> T,
) -> Vec<(T, T)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(lo, hi) in a {
        let mut cur = lo;
        let mut done = false;
        while j < b.len() && b[j].1 < cur {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 <= hi {
            if b[k].0 > cur {
                out.push((cur, pred(b[k].0)));
            }
            if b[k].1 >= hi {
                done = true;
                break;
            }
            cur = succ(b[k].1);
            k += 1;
        }
        if !done {
            out.push((cur, hi));
        }
    }
    out
}

/// A set of connections: for each protocol, a set of port ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ConnSet {
    ports: [Vec<(u16, u16)>; 3],
}

impl ConnSet {
    /// No connection.
    pub fn none() -> Self {
        ConnSet::default()
    }

    /// Every port of every protocol.
    pub fn all() -> Self {
        ConnSet {
            ports: [vec![(0, 65535)], vec![(0, 65535)], vec![(0, 65535)]],
        }
    }

    /// Every port of one protocol.
    pub fn proto(p: Proto) -> Self {
        let mut c = ConnSet::none();
        c.add(p, 0, 65535);
        c
    }

    /// One port range of one protocol.
    pub fn range(p: Proto, lo: u16, hi: u16) -> Self {
        let mut c = ConnSet::none();
        c.add(p, lo, hi);
        c
    }

    /// Adds the ports `lo..=hi` of `p`.
    pub fn add(&mut self, p: Proto, lo: u16, hi: u16) {
        let v = &mut self.ports[p.index()];
        v.push((lo.min(hi), lo.max(hi)));
        normalize(v);
    }

    /// Whether no connection is in the set.
    pub fn is_empty(&self) -> bool {
        self.ports.iter().all(Vec::is_empty)
    }

    /// Whether every connection is in the set.
    pub fn is_all(&self) -> bool {
        self.ports.iter().all(|v| v.as_slice() == [(0, 65535)])
    }

    /// Whether `port` of `p` is in the set.
    pub fn contains(&self, p: Proto, port: u16) -> bool {
        self.ports[p.index()]
            .iter()
            .any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// Adds everything of `other`.
    pub fn union_with(&mut self, other: &ConnSet) {
        for (mine, theirs) in self.ports.iter_mut().zip(&other.ports) {
            if theirs.is_empty() {
                continue;
            }
            mine.extend_from_slice(theirs);
            normalize(mine);
        }
    }

    /// What both sets hold.
    #[must_use]
    pub fn intersect(&self, other: &ConnSet) -> ConnSet {
        ConnSet {
            ports: [
                intersect(&self.ports[0], &other.ports[0]),
                intersect(&self.ports[1], &other.ports[1]),
                intersect(&self.ports[2], &other.ports[2]),
            ],
        }
    }

    /// This set without `other`.
    #[must_use]
    pub fn minus(&self, other: &ConnSet) -> ConnSet {
        let sub = |a: &[(u16, u16)], b: &[(u16, u16)]| {
            subtract(a, b, |x| x.saturating_sub(1), |x| x.saturating_add(1))
        };
        ConnSet {
            ports: [
                sub(&self.ports[0], &other.ports[0]),
                sub(&self.ports[1], &other.ports[1]),
                sub(&self.ports[2], &other.ports[2]),
            ],
        }
    }

    /// The port ranges of one protocol.
    pub fn ranges(&self, p: Proto) -> &[(u16, u16)] {
        &self.ports[p.index()]
    }
}

/// netpol-analyzer's notation: `All Connections`, `No Connections`, or
/// `TCP 80,443,8000-8100,UDP 53` (a protocol with every port is just `TCP`),
/// protocols in alphabetical order.
impl fmt::Display for ConnSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("All Connections");
        }
        if self.is_empty() {
            return f.write_str("No Connections");
        }
        let mut parts = Vec::new();
        for p in [Proto::Sctp, Proto::Tcp, Proto::Udp] {
            let r = self.ranges(p);
            if r.is_empty() {
                continue;
            }
            if r == [(0, 65535)] {
                parts.push(p.name().to_string());
                continue;
            }
            let ports: Vec<String> = r
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            parts.push(format!("{} {}", p.name(), ports.join(",")));
        }
        f.write_str(&parts.join(","))
    }
}

/// A set of IPv4 addresses as sorted, merged, inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct IpRanges(pub Vec<(u32, u32)>);

impl IpRanges {
    /// Every IPv4 address.
    pub fn all() -> Self {
        IpRanges(vec![(0, u32::MAX)])
    }

    /// Parses `a.b.c.d/n` (or a bare address as /32). `Ok(None)` for an IPv6
    /// prefix, which this model leaves out.
    ///
    /// # Errors
    /// A message when the text is neither.
    pub fn parse_cidr(s: &str) -> Result<Option<Self>, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        if addr.contains(':') {
            return match addr.parse::<std::net::Ipv6Addr>() {
                Ok(_) => Ok(None),
                Err(_) => Err(format!("invalid CIDR {s:?}")),
            };
        }
        // `AddrParseError` says only "invalid IP address syntax".
        let ip: std::net::Ipv4Addr = addr
            .parse()
            .map_err(|_syntax| format!("invalid CIDR {s:?}"))?;
        let len: u32 = match len {
            Some(l) => l
                .parse()
                .ok()
                .filter(|&l| l <= 32)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => 32,
        };
        let base = u32::from(ip);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let lo = base & mask;
        let hi = lo | !mask;
        Ok(Some(IpRanges(vec![(lo, hi)])))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other`.
    pub fn union_with(&mut self, other: &IpRanges) {
        self.0.extend_from_slice(&other.0);
        normalize(&mut self.0);
    }

    /// This set without `other`.
    #[must_use]
    pub fn minus(&self, other: &IpRanges) -> IpRanges {
        IpRanges(subtract(
            &self.0,
            &other.0,
            |x| x.saturating_sub(1),
            |x| x.saturating_add(1),
        ))
    }

    /// Whether the whole range `lo..=hi` is in the set.
    pub fn covers(&self, lo: u32, hi: u32) -> bool {
        self.0.iter().any(|&(a, b)| a <= lo && hi <= b)
    }

    /// `a.b.c.d-w.x.y.z` for each range, comma-separated.
    pub fn display(&self) -> String {
        self.0
            .iter()
            .map(|&(lo, hi)| format_range(lo, hi))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `a.b.c.d-w.x.y.z` (netpol-analyzer's notation for IP blocks).
pub fn format_range(lo: u32, hi: u32) -> String {
    format!(
        "{}-{}",
        std::net::Ipv4Addr::from(lo),
        std::net::Ipv4Addr::from(hi)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn model(c: &ConnSet, p: Proto, port: u16) -> bool {
        c.contains(p, port)
    }

    fn arb_conns() -> impl Strategy<Value = ConnSet> {
        proptest::collection::vec((0usize..3, 0u16..40, 0u16..10), 0..6).prop_map(|v| {
            let mut c = ConnSet::none();
            for (p, lo, w) in v {
                c.add(Proto::ALL[p], lo, lo + w);
            }
            c
        })
    }

    proptest! {
        #[test]
        fn set_operations_agree_with_membership(a in arb_conns(), b in arb_conns()) {
            let mut u = a.clone();
            u.union_with(&b);
            let i = a.intersect(&b);
            let d = a.minus(&b);
            for p in Proto::ALL {
                for port in 0u16..52 {
                    let (x, y) = (model(&a, p, port), model(&b, p, port));
                    prop_assert_eq!(u.contains(p, port), x || y);
                    prop_assert_eq!(i.contains(p, port), x && y);
                    prop_assert_eq!(d.contains(p, port), x && !y);
                }
            }
        }

        #[test]
        fn ip_minus_agrees_with_membership(
            a in proptest::collection::vec((0u32..100, 0u32..20), 0..5),
            b in proptest::collection::vec((0u32..100, 0u32..20), 0..5),
        ) {
            let mk = |v: &[(u32, u32)]| {
                let mut r = IpRanges::default();
                for &(lo, w) in v { r.union_with(&IpRanges(vec![(lo, lo + w)])); }
                r
            };
            let (ra, rb) = (mk(&a), mk(&b));
            let d = ra.minus(&rb);
            for x in 0u32..125 {
                prop_assert_eq!(d.covers(x, x), ra.covers(x, x) && !rb.covers(x, x));
            }
        }
    }

    #[test]
    fn display_matches_netpol_analyzer() {
        assert_eq!(ConnSet::all().to_string(), "All Connections");
        assert_eq!(ConnSet::none().to_string(), "No Connections");
        let mut c = ConnSet::range(Proto::Tcp, 8080, 8080);
        c.add(Proto::Tcp, 80, 80);
        c.add(Proto::Udp, 53, 53);
        assert_eq!(c.to_string(), "TCP 80,8080,UDP 53");
        let mut c = ConnSet::proto(Proto::Udp);
        c.add(Proto::Tcp, 1, 100);
        assert_eq!(c.to_string(), "TCP 1-100,UDP");
    }

    #[test]
    fn cidrs() {
        let r = IpRanges::parse_cidr("10.0.0.0/8").unwrap().unwrap();
        assert_eq!(r.display(), "10.0.0.0-10.255.255.255");
        let r = IpRanges::parse_cidr("10.1.2.3/8").unwrap().unwrap();
        assert_eq!(r.display(), "10.0.0.0-10.255.255.255");
        assert_eq!(
            IpRanges::parse_cidr("0.0.0.0/0").unwrap().unwrap(),
            IpRanges::all()
        );
        assert!(IpRanges::parse_cidr("fd00::/8").unwrap().is_none());
        assert!(IpRanges::parse_cidr("10.0.0.0/33").is_err());
        assert!(IpRanges::parse_cidr("nope").is_err());
    }
}
