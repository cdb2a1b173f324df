//! The inbound packet filter: control's [`NodeFilter`] compiled into tables
//! that answer in a few binary searches, plus the table of flows this node
//! opened, whose replies are let in whatever the filter says.
//!
//! Semantics (`docs/decisions/0012-mesh-data-plane.md`): a decrypted packet
//! for this node is accepted when the compiled filter accepts it (same
//! answer as [`NodeFilter::allows`]) or when it answers a flow this node
//! opened (TCP SYN, UDP datagram or ICMP echo request sent by this node).
//! Everything else is dropped and counted. Inbound TCP is checked on every
//! segment, so revoking access also stops established inbound connections.

use crate::packet::{PacketInfo, proto};
use gatehouse_filter::{IpSet, NodeFilter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Protocols whose ports the filter restricts, in table order.
const PORTED: [u8; 3] = [proto::TCP, proto::UDP, proto::SCTP];

/// Sorted, disjoint port intervals covering 0..=65535, each with the union
/// of the source sets of the rules that open it.
#[derive(Debug, Clone, Default)]
struct PortTable {
    /// Interval `i` is `starts[i] ..= starts[i + 1] - 1` (the last ends at 65535).
    starts: Vec<u16>,
    /// Sources admitted in each interval (`None`: no rule).
    sources: Vec<Option<Arc<IpSet>>>,
}

impl PortTable {
    fn lookup(&self, port: u16) -> Option<&IpSet> {
        let i = self.starts.partition_point(|s| *s <= port).checked_sub(1)?;
        self.sources.get(i)?.as_deref()
    }
}

/// The tables of one destination address.
#[derive(Debug, Clone)]
struct DstTable {
    ip: IpAddr,
    ported: [PortTable; 3],
    /// Protocols without ports, by number.
    other: HashMap<u8, Arc<IpSet>>,
}

/// A [`NodeFilter`] compiled for lookups on every packet.
#[derive(Debug, Clone, Default)]
pub struct CompiledFilter {
    dsts: Vec<DstTable>,
}

fn union_all(sets: &[&Arc<IpSet>]) -> Option<Arc<IpSet>> {
    match sets {
        [] => None,
        [one] => Some(Arc::clone(one)),
        many => {
            let mut acc = IpSet::new();
            for s in many {
                if s.is_all() {
                    return Some(Arc::clone(s));
                }
                acc = acc.union(s);
            }
            Some(Arc::new(acc))
        }
    }
}

fn port_table(filter: &NodeFilter, ip: IpAddr, p: u8) -> PortTable {
    // Every (range, source set) that opens protocol `p` on `ip`.
    let mut ranges = Vec::new();
    for r in &filter.rules {
        if !r.protos.contains(p) {
            continue;
        }
        for d in r.dst_ports.iter().filter(|d| d.ip == ip) {
            ranges.push((d.ports.first, d.ports.last, &r.src_ips));
        }
    }
    let mut bounds: Vec<u16> = vec![0];
    for (first, last, _) in &ranges {
        bounds.push(*first);
        if let Some(next) = last.checked_add(1) {
            bounds.push(next);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut t = PortTable::default();
    for &start in &bounds {
        let covering: Vec<&Arc<IpSet>> = ranges
            .iter()
            .filter(|(f, l, _)| *f <= start && start <= *l)
            .map(|(_, _, s)| *s)
            .collect();
        let set = union_all(&covering);
        // Merge with the previous interval when it admits the same sources.
        if let Some(prev) = t.sources.last()
            && prev.as_deref() == set.as_deref()
        {
            continue;
        }
        t.starts.push(start);
        t.sources.push(set);
    }
    t
}

impl CompiledFilter {
    /// Compiles a filter. Cost grows with rules × port boundaries; done once
    /// per map change, off the packet path.
    pub fn new(filter: &NodeFilter) -> Self {
        let mut ips: Vec<IpAddr> = filter
            .rules
            .iter()
            .flat_map(|r| r.dst_ports.iter().map(|d| d.ip))
            .collect();
        ips.sort();
        ips.dedup();
        let dsts = ips
            .into_iter()
            .map(|ip| {
                let ported = PORTED.map(|p| port_table(filter, ip, p));
                let mut other: HashMap<u8, Vec<&Arc<IpSet>>> = HashMap::new();
                for r in &filter.rules {
                    if !r.dst_ports.iter().any(|d| d.ip == ip) {
                        continue;
                    }
                    for p in r.protos.iter().filter(|p| !PORTED.contains(p)) {
                        other.entry(p).or_default().push(&r.src_ips);
                    }
                }
                let other = other
                    .into_iter()
                    .filter_map(|(p, sets)| union_all(&sets).map(|s| (p, s)))
                    .collect();
                DstTable { ip, ported, other }
            })
            .collect();
        CompiledFilter { dsts }
    }

    /// Whether a packet from `src` to `dst` with protocol `proto` (and, for
    /// TCP, UDP and SCTP, destination port `port`) is accepted. Agrees with
    /// `NodeFilter::allows(..).is_some()`.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
        let Some(t) = self.dsts.iter().find(|t| t.ip == dst) else {
            return false;
        };
        let set = match PORTED.iter().position(|p| *p == proto) {
            Some(i) => t.ported[i].lookup(port),
            None => t.other.get(&proto).map(|s| &**s),
        };
        set.is_some_and(|s| s.contains(src))
    }
}

/// A flow as seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    proto: u8,
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

/// How long a flow this node opened stays known without traffic.
pub const TCP_FLOW_IDLE: Duration = Duration::from_secs(2 * 3600);
/// The same for UDP and ICMP echo.
pub const DATAGRAM_FLOW_IDLE: Duration = Duration::from_secs(120);
/// At most this many flows are remembered.
pub const MAX_FLOWS: usize = 65_536;

/// Flows this node opened, whose replies are accepted.
#[derive(Debug, Default)]
pub struct FlowTable {
    flows: HashMap<FlowKey, Instant>,
    /// Flows not remembered because the table was full.
    pub overflow: u64,
}

fn echo_proto(p: u8) -> u8 {
    // Requests and replies share the key: the protocol and the echo id.
    p
}

impl FlowTable {
    /// Records an outbound packet: opening packets add a flow, others keep
    /// their flow alive.
    pub fn outbound(&mut self, p: &PacketInfo, now: Instant) {
        let key = FlowKey {
            proto: echo_proto(p.proto),
            local: p.src,
            local_port: p.src_port,
            remote: p.dst,
            remote_port: p.dst_port,
        };
        if let Some(t) = self.flows.get_mut(&key) {
            *t = now;
            return;
        }
        let opens =
            p.is_tcp_syn() || (p.proto == proto::UDP && !p.later_fragment) || p.is_echo_request();
        if !opens {
            return;
        }
        if self.flows.len() >= MAX_FLOWS {
            self.expire(now);
            if self.flows.len() >= MAX_FLOWS {
                self.overflow += 1;
                return;
            }
        }
        self.flows.insert(key, now);
    }

    /// Whether an inbound packet answers a flow this node opened.
    pub fn is_reply(&mut self, p: &PacketInfo, now: Instant) -> bool {
        let key = FlowKey {
            proto: echo_proto(p.proto),
            local: p.dst,
            local_port: p.dst_port,
            remote: p.src,
            remote_port: p.src_port,
        };
        match self.flows.get_mut(&key) {
            // ICMP echo: only replies, never a request riding on our id.
            Some(_) if p.is_echo_request() => false,
            Some(t) => {
                *t = now;
                true
            }
            None => false,
        }
    }

    /// Forgets idle flows.
    pub fn expire(&mut self, now: Instant) {
        self.flows.retain(|k, seen| {
            let idle = if k.proto == proto::TCP {
                TCP_FLOW_IDLE
            } else {
                DATAGRAM_FLOW_IDLE
            };
            now.saturating_duration_since(*seen) < idle
        });
    }

    /// Number of flows remembered.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is remembered.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// What the filter did, since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterCounters {
    /// Packets a rule accepted.
    pub accepted: u64,
    /// Packets accepted as replies to flows this node opened.
    pub replies: u64,
    /// Packets no rule accepted (and not replies).
    pub denied: u64,
    /// TCP SYNs among `denied`: connection attempts refused.
    pub denied_syn: u64,
    /// Packets whose source is not an address of the peer that sent them.
    pub spoofed: u64,
    /// Packets for an address that is not this node's.
    pub not_local: u64,
    /// Packets that do not parse as IP.
    pub malformed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{build, parse, tcp_flags};
    use gatehouse_filter::ports::{PortRange, ProtoSet};
    use gatehouse_filter::{FilterRule, NetPortRange, RuleId};
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule_id() -> RuleId {
        RuleId {
            kind: gatehouse_filter::RuleKind::Acl,
            index: 0,
        }
    }

    fn rule(srcs: &[&str], dst: &[(IpAddr, u16, u16)], protos: &[u8]) -> FilterRule {
        FilterRule {
            origin: rule_id(),
            src_ips: Arc::new(IpSet::from_nets(srcs.iter().map(|s| s.parse().unwrap()))),
            dst_ports: dst
                .iter()
                .map(|(ip, f, l)| NetPortRange {
                    ip: *ip,
                    ports: PortRange {
                        first: *f,
                        last: *l,
                    },
                })
                .collect(),
            routed: Vec::new(),
            protos: ProtoSet::of(protos),
        }
    }

    #[test]
    fn ports_protocols_and_sources() {
        let me = ip("100.64.0.2");
        let f = NodeFilter {
            node: "blog".into(),
            addresses: vec![me],
            rules: vec![
                rule(&["100.64.0.1/32"], &[(me, 443, 443)], &[proto::TCP]),
                rule(
                    &["100.64.0.0/24"],
                    &[(me, 8000, 8100)],
                    &[proto::TCP, proto::ICMP],
                ),
            ],
        };
        let c = CompiledFilter::new(&f);
        assert!(c.allows(ip("100.64.0.1"), me, proto::TCP, 443));
        assert!(!c.allows(ip("100.64.0.3"), me, proto::TCP, 443));
        assert!(c.allows(ip("100.64.0.3"), me, proto::TCP, 8050));
        assert!(!c.allows(ip("100.64.0.3"), me, proto::UDP, 8050));
        assert!(c.allows(ip("100.64.0.9"), me, proto::ICMP, 0));
        assert!(!c.allows(ip("100.64.1.9"), me, proto::ICMP, 0));
        assert!(!c.allows(ip("100.64.0.1"), ip("100.64.0.9"), proto::TCP, 443));
    }

    #[test]
    fn replies_to_opened_flows_only() {
        let now = Instant::now();
        let (me, peer) = (ip("100.64.0.1"), ip("100.64.0.2"));
        let mut t = FlowTable::default();
        let syn = parse(&build::tcp(me, peer, 40000, 22, tcp_flags::SYN, b"")).unwrap();
        let synack = parse(&build::tcp(
            peer,
            me,
            22,
            40000,
            tcp_flags::SYN | tcp_flags::ACK,
            b"",
        ))
        .unwrap();
        let other = parse(&build::tcp(peer, me, 22, 40001, tcp_flags::ACK, b"")).unwrap();
        assert!(!t.is_reply(&synack, now));
        t.outbound(&syn, now);
        assert!(t.is_reply(&synack, now));
        assert!(!t.is_reply(&other, now));
        // A reply (SYN-ACK) sent by this node opens nothing.
        t.outbound(
            &parse(&build::tcp(
                me,
                peer,
                443,
                5555,
                tcp_flags::SYN | tcp_flags::ACK,
                b"",
            ))
            .unwrap(),
            now,
        );
        assert!(!t.is_reply(
            &parse(&build::tcp(peer, me, 5555, 443, tcp_flags::ACK, b"")).unwrap(),
            now
        ));
        // Echo: the reply is let in, a request with the same id is not.
        let req = parse(&build::echo_request(me, peer, 7)).unwrap();
        t.outbound(&req, now);
        let mut reply = build::echo_request(peer, me, 7);
        reply[20] = 0;
        assert!(t.is_reply(&parse(&reply).unwrap(), now));
        assert!(!t.is_reply(&parse(&build::echo_request(peer, me, 7)).unwrap(), now));
        // Idle flows are forgotten.
        t.expire(now + TCP_FLOW_IDLE + Duration::from_secs(1));
        assert!(t.is_empty());
    }

    fn arb_rule(addrs: Vec<IpAddr>) -> impl Strategy<Value = FilterRule> {
        let src = proptest::collection::vec((0u8..8, 28u8..=32), 1..4);
        let dst = proptest::collection::vec((0..addrs.len(), 0u16..40, 0u16..20), 1..4);
        let protos = proptest::sample::subsequence(
            vec![proto::TCP, proto::UDP, proto::ICMP, proto::SCTP, 47],
            1..4,
        );
        (src, dst, protos, any::<bool>()).prop_map(move |(src, dst, protos, star)| FilterRule {
            origin: rule_id(),
            src_ips: Arc::new(if star {
                IpSet::all()
            } else {
                IpSet::from_nets(src.iter().map(|(o, len)| {
                    format!("100.64.0.{}/{}", o * 4, len)
                        .parse::<ipnet::Ipv4Net>()
                        .unwrap()
                        .trunc()
                        .into()
                }))
            }),
            dst_ports: dst
                .iter()
                .map(|(i, f, w)| NetPortRange {
                    ip: addrs[*i],
                    ports: PortRange {
                        first: *f,
                        last: f + w,
                    },
                })
                .collect(),
            routed: Vec::new(),
            protos: ProtoSet::of(&protos),
        })
    }

    proptest! {
        #[test]
        fn agrees_with_node_filter(
            rules in proptest::collection::vec(arb_rule(vec![ip("100.64.0.2"), ip("fd7a::2")]), 0..6),
            probes in proptest::collection::vec((0u8..40, 0usize..3, 0usize..5, 0u16..64), 64),
        ) {
            let f = NodeFilter { node: "n".into(), addresses: vec![ip("100.64.0.2"), ip("fd7a::2")], rules };
            let c = CompiledFilter::new(&f);
            let dsts = [ip("100.64.0.2"), ip("fd7a::2"), ip("100.64.0.3")];
            let protos = [proto::TCP, proto::UDP, proto::ICMP, proto::SCTP, 47];
            for (s, d, p, port) in probes {
                let src = if s < 36 { IpAddr::from([100, 64, 0, s]) } else { ip("fd7a::1") };
                let (dst, pr) = (dsts[d], protos[p]);
                prop_assert_eq!(
                    c.allows(src, dst, pr, port),
                    f.allows(src, dst, pr, port).is_some(),
                    "src {} dst {} proto {} port {}", src, dst, pr, port
                );
            }
        }
    }
}
