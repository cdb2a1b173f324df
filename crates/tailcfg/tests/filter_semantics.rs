//! The encoded packet filter admits, in a Tailscale client, what the
//! compiled filter admits: the rules are written to JSON, read back, and
//! evaluated with the client's matching rules (a small model of
//! Tailscale's `wgengine/filter`, written from its behaviour), then
//! compared with `NodeFilter::allows` on random filters and packets.
//!
//! Where the client is looser or stricter by design, the comparison says
//! so exactly:
//! - an ICMP echo request is accepted when any rule matches its source and
//!   destination addresses, whatever the rule's protocols and ports: the
//!   client accepts a superset, and exactly that superset (rules without a
//!   protocol match nothing and are not sent, so they add nothing);
//! - ICMP inside a packet of the other address family (ICMPv4 in IPv6,
//!   ICMPv6 in IPv4) takes the client's "other protocol" path, which wants
//!   rules open to every port: the client accepts a subset.
//!
//! Protocol 99 (Tailscale's own TSMP) is always accepted by the client and
//! is left out; TCP is modelled for connection-opening SYNs and UDP and
//! SCTP for new flows (later packets are accepted by connection state).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_filter::ports::{PortRange as FilterPorts, ProtoSet};
use gatehouse_filter::{FilterRule as Compiled, IpSet, NetPortRange, NodeFilter, RuleId, RuleKind};
use gatehouse_tailcfg::{FilterRule, packet_filter};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

// ---- The client's model -------------------------------------------------

/// One parsed rule, as the client holds it (`filter.Match`).
#[derive(Debug)]
struct Match {
    protos: Vec<u8>,
    srcs: Vec<IpNet>,
    dsts: Vec<(IpNet, u16, u16)>,
}

const DEFAULT_PROTOS: [u8; 4] = [6, 17, 1, 58];

/// The client's `parseIPSet`: `*`, a prefix (network bits only), a range
/// `a-b`, or an address. Errors drop the entry.
fn parse_ip_set(s: &str) -> Option<Vec<IpNet>> {
    if s == "*" {
        return Some(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
    }
    if s.starts_with("cap:") {
        return Some(Vec::new());
    }
    if s.contains('/') {
        let n: IpNet = s.parse().ok()?;
        return (n.trunc() == n).then_some(vec![n]);
    }
    if s.matches('-').count() == 1 {
        let (a, b) = s.split_once('-')?;
        let (a, b): (IpAddr, IpAddr) = (a.parse().ok()?, b.parse().ok()?);
        // A range as the prefixes that cover it.
        let set = match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
                ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect()
            }
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect()
            }
            _ => return None,
        };
        return Some(set);
    }
    let ip: IpAddr = s.parse().ok()?;
    Some(vec![IpNet::from(ip)])
}

fn matches_from(rules: &[FilterRule]) -> Vec<Match> {
    rules
        .iter()
        .map(|r| Match {
            protos: if r.ip_proto.is_empty() {
                DEFAULT_PROTOS.to_vec()
            } else {
                r.ip_proto
                    .iter()
                    .filter_map(|p| u8::try_from(*p).ok())
                    .collect()
            },
            srcs: r
                .src_ips
                .iter()
                .filter_map(|s| parse_ip_set(s))
                .flatten()
                .collect(),
            dsts: r
                .dst_ports
                .iter()
                .filter_map(|d| parse_ip_set(&d.ip).map(|n| (n, d.ports)))
                .flat_map(|(nets, p)| nets.into_iter().map(move |n| (n, p.first, p.last)))
                .collect(),
        })
        .collect()
}

/// The client's inbound verdict for a new packet (`runIn4`/`runIn6`).
fn client_accepts(ms: &[Match], src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
    let src_ok = |m: &Match| m.srcs.iter().any(|n| n.contains(&src));
    let icmp_here = (proto == 1 && dst.is_ipv4()) || (proto == 58 && dst.is_ipv6());
    if icmp_here {
        // matchIPsOnly: any rule, any protocol, any port.
        return ms
            .iter()
            .any(|m| src_ok(m) && m.dsts.iter().any(|(n, _, _)| n.contains(&dst)));
    }
    if matches!(proto, 6 | 17 | 132) {
        // match: protocol, source, destination and port.
        return ms.iter().any(|m| {
            m.protos.contains(&proto)
                && src_ok(m)
                && m.dsts
                    .iter()
                    .any(|(n, a, b)| n.contains(&dst) && *a <= port && port <= *b)
        });
    }
    // matchProtoAndIPsOnlyIfAllPorts.
    ms.iter().any(|m| {
        m.protos.contains(&proto)
            && src_ok(m)
            && m.dsts
                .iter()
                .any(|(n, a, b)| (*a, *b) == (0, 65535) && n.contains(&dst))
    })
}

// ---- Random compiled filters --------------------------------------------

const V4: [u8; 4] = [100, 64, 0, 0];

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(V4[0], V4[1], V4[2], last))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, last))
}

/// The node whose filter is generated: two IPv4 and one IPv6 address.
fn node_addrs() -> Vec<IpAddr> {
    vec![v4(5), v4(6), v6(5)]
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (0u8..16, 28u8..=32).prop_map(|(a, l)| IpNet::V4(
            Ipv4Net::new(Ipv4Addr::new(100, 64, 0, a), l)
                .unwrap()
                .trunc()
        )),
        (0u16..16, 124u8..=128).prop_map(|(a, l)| IpNet::V6(
            Ipv6Net::new(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, a), l)
                .unwrap()
                .trunc()
        )),
        Just("10.0.0.0/8".parse().unwrap()),
    ]
}

fn arb_src() -> impl Strategy<Value = IpSet> {
    prop_oneof![
        1 => Just(IpSet::all()),
        1 => Just(IpSet::new()),
        6 => prop::collection::vec(arb_net(), 1..5).prop_map(IpSet::from_nets),
    ]
}

fn arb_ports() -> impl Strategy<Value = FilterPorts> {
    prop_oneof![
        Just(FilterPorts::ALL),
        (0u16..40, 0u16..8).prop_map(|(a, w)| FilterPorts {
            first: a,
            last: a + w
        }),
    ]
}

const PROTOS: [u8; 9] = [1, 2, 6, 17, 47, 50, 58, 132, 200];

fn arb_protos() -> impl Strategy<Value = ProtoSet> {
    prop_oneof![
        2 => Just(ProtoSet::default_set()),
        1 => Just(ProtoSet::all()),
        1 => Just(ProtoSet::EMPTY),
        4 => prop::collection::vec(prop::sample::select(PROTOS.to_vec()), 1..4)
            .prop_map(|v| ProtoSet::of(&v)),
    ]
}

fn arb_rule(index: usize) -> impl Strategy<Value = Compiled> {
    (
        arb_src(),
        prop::collection::vec((prop::sample::select(node_addrs()), arb_ports()), 0..4),
        arb_protos(),
    )
        .prop_map(move |(src, dsts, protos)| {
            let mut dst_ports: Vec<NetPortRange> = dsts
                .into_iter()
                .map(|(ip, ports)| NetPortRange { ip, ports })
                .collect();
            dst_ports.sort();
            dst_ports.dedup();
            Compiled {
                origin: RuleId {
                    kind: RuleKind::Grant,
                    index,
                },
                src_ips: Arc::new(src),
                dst_ports,
                routed: Vec::new(),
                protos,
            }
        })
}

fn arb_filter() -> impl Strategy<Value = NodeFilter> {
    (0usize..5)
        .prop_flat_map(|n| (0..n).map(arb_rule).collect::<Vec<_>>())
        .prop_map(|rules| NodeFilter {
            node: "n".into(),
            addresses: node_addrs(),
            rules,
        })
}

fn arb_src_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..20).prop_map(v4),
        (0u16..20).prop_map(v6),
        Just(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        Just(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    ]
}

/// Whether a rule of the compiled filter that can match anything (it has a
/// protocol) matches these addresses.
fn any_rule_matches_addresses(f: &NodeFilter, src: IpAddr, dst: IpAddr) -> bool {
    f.rules.iter().any(|r| {
        !r.protos.is_empty() && r.src_ips.contains(src) && r.dst_ports.iter().any(|d| d.ip == dst)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_verdicts_match_the_compiled_filter(
        f in arb_filter(),
        probes in prop::collection::vec(
            (arb_src_ip(), prop::sample::select(node_addrs()),
             prop::sample::select(PROTOS.to_vec()), prop_oneof![0u16..48, Just(65535u16)]),
            1..48,
        ),
    ) {
        let json = serde_json::to_string(&packet_filter(&f)).unwrap();
        let rules: Vec<FilterRule> = serde_json::from_str(&json).unwrap();
        let ms = matches_from(&rules);
        for (src, dst, proto, port) in probes {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            let ours = f.allows(src, dst, proto, port).is_some();
            let theirs = client_accepts(&ms, src, dst, proto, port);
            let icmp_here = (proto == 1 && dst.is_ipv4()) || (proto == 58 && dst.is_ipv6());
            let icmp_elsewhere = (proto == 1 || proto == 58) && !icmp_here;
            let case = format!("{src} -> {dst} proto {proto} port {port}\n{json}\n{f:#?}");
            if icmp_here {
                prop_assert_eq!(theirs, any_rule_matches_addresses(&f, src, dst), "{}", case);
                prop_assert!(!ours || theirs, "{}", case);
            } else if icmp_elsewhere {
                prop_assert!(!theirs || ours, "{}", case);
            } else {
                prop_assert_eq!(theirs, ours, "{}", case);
            }
        }
    }
}

/// The model itself reads Tailscale's forms: `*`, ranges, prefixes with
/// host bits refused.
#[test]
fn model_reads_the_clients_forms() {
    let rules: Vec<FilterRule> = serde_json::from_str(
        r#"[{"SrcIPs": ["100.64.0.1-100.64.0.6", "10.0.0.1/8", "fd7a:115c:a1e0::/48"],
             "DstPorts": [{"IP": "*", "Ports": {"First": 22, "Last": 22}}]}]"#,
    )
    .unwrap();
    let ms = matches_from(&rules);
    assert!(client_accepts(&ms, v4(6), v4(5), 6, 22));
    assert!(!client_accepts(&ms, v4(7), v4(5), 6, 22));
    // "10.0.0.1/8" has host bits: the client drops it.
    assert!(!client_accepts(
        &ms,
        "10.0.0.1".parse().unwrap(),
        v4(5),
        6,
        22
    ));
    assert!(client_accepts(&ms, v6(9), v6(5), 17, 22));
    // Default protocols: no GRE; ICMP by address only.
    assert!(!client_accepts(&ms, v4(1), v4(5), 47, 22));
    assert!(client_accepts(&ms, v4(1), v4(5), 1, 0));
}
