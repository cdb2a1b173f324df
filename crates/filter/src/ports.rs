//! Port ranges and IP protocol sets, the port and protocol sides of every
//! filter rule, with the names the policy file uses for protocols.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// One port.
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Whether `port` is inside.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortRange::ALL {
            f.write_str("*")
        } else if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Formats a list of port ranges the way the policy file writes them.
pub fn format_ports(ports: &[PortRange]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn normalise(ports: &[PortRange]) -> Vec<PortRange> {
    let mut v = ports.to_vec();
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// IANA protocol numbers the policy file knows by name.
pub mod proto {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// IGMP.
    pub const IGMP: u8 = 2;
    /// IPv4-in-IP encapsulation.
    pub const IPV4: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// EGP.
    pub const EGP: u8 = 8;
    /// IGP.
    pub const IGP: u8 = 9;
    /// UDP.
    pub const UDP: u8 = 17;
    /// GRE.
    pub const GRE: u8 = 47;
    /// ESP.
    pub const ESP: u8 = 50;
    /// AH.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// A set of IP protocols (by IANA number).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtoSet([u64; 4]);

impl fmt::Debug for ProtoSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl ProtoSet {
    /// No protocol.
    pub const EMPTY: ProtoSet = ProtoSet([0; 4]);

    /// The protocols meant when none is written: TCP, UDP, ICMP and ICMPv6.
    pub fn default_set() -> Self {
        Self::of(&[proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6])
    }

    /// Every protocol.
    pub fn all() -> Self {
        ProtoSet([u64::MAX; 4])
    }

    /// A set of the given protocol numbers.
    pub fn of(protos: &[u8]) -> Self {
        let mut s = Self::EMPTY;
        for &p in protos {
            s.insert(p);
        }
        s
    }

    /// Adds a protocol.
    pub fn insert(&mut self, p: u8) {
        self.0[usize::from(p / 64)] |= 1 << (p % 64);
    }

    /// Whether the protocol is in the set.
    pub fn contains(&self, p: u8) -> bool {
        self.0[usize::from(p / 64)] & (1 << (p % 64)) != 0
    }

    /// The union of two sets.
    pub fn union(self, other: Self) -> Self {
        ProtoSet([
            self.0[0] | other.0[0],
            self.0[1] | other.0[1],
            self.0[2] | other.0[2],
            self.0[3] | other.0[3],
        ])
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// Whether the set has any protocol that carries ports (TCP, UDP, SCTP).
    pub fn has_ports(&self) -> bool {
        self.contains(proto::TCP) || self.contains(proto::UDP) || self.contains(proto::SCTP)
    }

    /// Whether every protocol in the set carries ports.
    pub fn only_ported(&self) -> bool {
        !self.is_empty()
            && self
                .iter()
                .all(|p| matches!(p, proto::TCP | proto::UDP | proto::SCTP))
    }

    /// The protocol numbers in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|p| self.contains(*p))
    }

    /// Names (or numbers) of the protocols, ascending.
    pub fn names(&self) -> Vec<String> {
        if *self == Self::all() {
            return vec!["*".into()];
        }
        self.iter().map(proto_name).collect()
    }
}

impl Serialize for ProtoSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for ProtoSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut set = ProtoSet::EMPTY;
        for name in Vec::<String>::deserialize(d)? {
            if name == "*" {
                return Ok(ProtoSet::all());
            }
            let p = parse_proto(&name)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown protocol {name:?}")))?;
            set.insert(p);
        }
        Ok(set)
    }
}

/// The policy-file name of a protocol number, or the number itself.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::ICMP => "icmp".into(),
        proto::IGMP => "igmp".into(),
        proto::IPV4 => "ipv4".into(),
        proto::TCP => "tcp".into(),
        proto::EGP => "egp".into(),
        proto::IGP => "igp".into(),
        proto::UDP => "udp".into(),
        proto::GRE => "gre".into(),
        proto::ESP => "esp".into(),
        proto::AH => "ah".into(),
        proto::ICMPV6 => "ipv6-icmp".into(),
        proto::SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

/// Parses one protocol as written in `proto` or a grant's `ip` prefix: a
/// name, or an IANA number 1–255.
pub fn parse_proto(s: &str) -> Option<u8> {
    let p = match s {
        "icmp" => proto::ICMP,
        "igmp" => proto::IGMP,
        "ipv4" | "ip-in-ip" => proto::IPV4,
        "tcp" => proto::TCP,
        "egp" => proto::EGP,
        "igp" => proto::IGP,
        "udp" => proto::UDP,
        "gre" => proto::GRE,
        "esp" => proto::ESP,
        "ah" => proto::AH,
        "ipv6-icmp" | "icmpv6" => proto::ICMPV6,
        "sctp" => proto::SCTP,
        n if !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && !(n.len() > 1 && n.starts_with('0')) =>
        {
            match n.parse::<u8>() {
                Ok(0) | Err(_) => return None,
                Ok(v) => v,
            }
        }
        _ => return None,
    };
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_proto("tcp"), Some(6));
        assert_eq!(parse_proto("ipv6-icmp"), Some(58));
        assert_eq!(parse_proto("47"), Some(47));
        assert_eq!(parse_proto("0"), None);
        assert_eq!(parse_proto("256"), None);
        assert_eq!(parse_proto("TCP"), None);
        let d = ProtoSet::default_set();
        assert_eq!(d.names(), vec!["icmp", "tcp", "udp", "ipv6-icmp"]);
        assert!(d.has_ports() && !d.only_ported());
        assert!(ProtoSet::of(&[6, 17]).only_ported());
        assert!(ProtoSet::all().contains(255));
    }

    #[test]
    fn formats_as_the_policy_writes() {
        assert_eq!(format_ports(&[PortRange::ALL]), "*");
        assert_eq!(format_ports(&[r(22, 22), r(8000, 8100)]), "22,8000-8100");
    }

    proptest! {
        #[test]
        fn normalise_keeps_membership(
            ranges in prop::collection::vec((any::<u16>(), any::<u16>()), 0..8),
            probe in any::<u16>(),
        ) {
            let ranges: Vec<PortRange> =
                ranges.into_iter().map(|(a, b)| r(a.min(b), a.max(b))).collect();
            let n = normalise(&ranges);
            prop_assert_eq!(
                ranges.iter().any(|x| x.contains(probe)),
                n.iter().any(|x| x.contains(probe))
            );
            for w in n.windows(2) {
                prop_assert!(u32::from(w[0].last) + 1 < u32::from(w[1].first));
            }
        }
    }
}
