//! Packet-filter rules as Tailscale clients read them (`FilterRule`), and
//! the encoding of a compiled [`NodeFilter`] into them.
//!
//! How a client evaluates the rules (Tailscale's `wgengine/filter`), which
//! the encoding has to respect:
//! - an empty `IPProto` means TCP, UDP, ICMP and ICMPv6;
//! - TCP, UDP and SCTP match on the destination address and port range;
//! - an ICMP echo request is accepted when any rule, of any protocol and
//!   port, matches its source and destination addresses;
//! - any other protocol matches only a destination whose port range is
//!   every port (`0-65535`).
//!
//! A compiled filter ignores ports for protocols without them, so a rule
//! that mixes such protocols (other than ICMP) with specific ports is
//! written as two rules: the ported protocols with their ports, the others
//! with every port. The policy compiler never produces such a rule (a
//! protocol without ports only takes `*`), but the encoding does not rely
//! on it.

use crate::wire::{CapMap, cap_map, null_default};
use gatehouse_filter::ports::{PortRange as FilterPorts, ProtoSet, proto};
use gatehouse_filter::{IpSet, NodeFilter};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An inclusive port range.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(default, rename_all = "PascalCase")]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ANY: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// Destination addresses with a port range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetPortRange {
    /// An address, a CIDR prefix, a range `a-b`, or `*`.
    #[serde(rename = "IP")]
    pub ip: String,
    /// The ports.
    pub ports: PortRange,
}

/// Application capabilities a rule grants its sources toward destinations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CapGrant {
    /// Destination prefixes the grant applies to.
    #[serde(deserialize_with = "null_default")]
    pub dsts: Vec<IpNet>,
    /// Capability name → values.
    #[serde(with = "cap_map", skip_serializing_if = "CapMap::is_empty")]
    pub cap_map: CapMap,
}

/// One rule of a client's packet filter: packets from `src_ips` to
/// `dst_ports` with a protocol in `ip_proto` are accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct FilterRule {
    /// Sources: addresses, prefixes, ranges `a-b`, `*`, or `cap:<name>`.
    #[serde(rename = "SrcIPs", deserialize_with = "null_default")]
    pub src_ips: Vec<String>,
    /// Destinations and ports (exclusive with `cap_grant`).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dst_ports: Vec<NetPortRange>,
    /// IP protocol numbers; empty means TCP, UDP, ICMP and ICMPv6.
    #[serde(
        rename = "IPProto",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_proto: Vec<i32>,
    /// Application capabilities (exclusive with `dst_ports`).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cap_grant: Vec<CapGrant>,
}

/// Protocols a client matches on port ranges, or (ICMP) on addresses only:
/// every other protocol needs a rule open to every port.
fn port_aware(p: u8) -> bool {
    matches!(
        p,
        proto::TCP | proto::UDP | proto::SCTP | proto::ICMP | proto::ICMPV6
    )
}

/// `IPProto` for a protocol set: empty for the client's default set.
fn ip_proto(protos: &ProtoSet) -> Vec<i32> {
    if *protos == ProtoSet::default_set() {
        Vec::new()
    } else {
        protos.iter().map(i32::from).collect()
    }
}

/// `SrcIPs` for an address set: `*` for every address, otherwise the
/// fewest prefixes, single addresses without a prefix length.
fn src_ips(set: &IpSet) -> Vec<String> {
    set.to_strings()
}

fn dst(ip: String, ports: FilterPorts) -> NetPortRange {
    NetPortRange {
        ip,
        ports: PortRange {
            first: ports.first,
            last: ports.last,
        },
    }
}

/// The packet filter a Tailscale client must enforce to admit what `f`
/// admits: one rule per compiled rule (two when it mixes protocols with
/// and without ports), in the compiled order. Rules that can match nothing
/// (no source, destination or protocol) are left out.
///
/// Send it as `MapResponse.PacketFilters["base"]` (or the legacy
/// `PacketFilter`); an empty list makes the client drop every inbound
/// packet, which is what an empty compiled filter means.
pub fn packet_filter(f: &NodeFilter) -> Vec<FilterRule> {
    let mut out = Vec::with_capacity(f.rules.len());
    for r in &f.rules {
        if r.src_ips.is_empty()
            || (r.dst_ports.is_empty() && r.routed.is_empty())
            || r.protos.is_empty()
        {
            continue;
        }
        let src = src_ips(&r.src_ips);
        // The node's own addresses first, then what it forwards to (a
        // subnet router's routes, the internet through an exit node).
        let dsts: Vec<(String, FilterPorts)> = r
            .dst_ports
            .iter()
            .map(|d| (d.ip.to_string(), d.ports))
            .chain(r.routed.iter().flat_map(|d| {
                d.nets
                    .to_nets()
                    .into_iter()
                    .map(move |n| (net_text(&n), d.ports))
            }))
            .collect();
        let portless: Vec<u8> = r.protos.iter().filter(|p| !port_aware(*p)).collect();
        let all_ports = dsts.iter().all(|d| d.1 == FilterPorts::ALL);
        if portless.is_empty() || all_ports {
            out.push(FilterRule {
                src_ips: src,
                dst_ports: dsts.into_iter().map(|(ip, p)| dst(ip, p)).collect(),
                ip_proto: ip_proto(&r.protos),
                cap_grant: Vec::new(),
            });
            continue;
        }
        let ported: Vec<u8> = r.protos.iter().filter(|p| port_aware(*p)).collect();
        if !ported.is_empty() {
            out.push(FilterRule {
                src_ips: src.clone(),
                dst_ports: dsts.iter().map(|(ip, p)| dst(ip.clone(), *p)).collect(),
                ip_proto: ip_proto(&ProtoSet::of(&ported)),
                cap_grant: Vec::new(),
            });
        }
        let mut ips: Vec<String> = Vec::new();
        for (ip, _) in dsts {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        out.push(FilterRule {
            src_ips: src,
            dst_ports: ips
                .into_iter()
                .map(|ip| dst(ip, FilterPorts::ALL))
                .collect(),
            ip_proto: ip_proto(&ProtoSet::of(&portless)),
            cap_grant: Vec::new(),
        });
    }
    out
}

/// A prefix as Tailscale writes a destination: a single address without
/// its prefix length.
fn net_text(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_filter::{FilterRule as Compiled, NetPortRange as CompiledDst, RuleId, RuleKind};
    use std::net::IpAddr;
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(items: &[&str]) -> Arc<IpSet> {
        Arc::new(IpSet::from_nets(items.iter().map(|s| {
            s.parse::<IpNet>()
                .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
        })))
    }

    fn rule(src: Arc<IpSet>, dsts: &[(&str, u16, u16)], protos: ProtoSet) -> Compiled {
        Compiled {
            origin: RuleId {
                kind: RuleKind::Acl,
                index: 0,
            },
            src_ips: src,
            dst_ports: dsts
                .iter()
                .map(|(a, first, last)| CompiledDst {
                    ip: ip(a),
                    ports: FilterPorts {
                        first: *first,
                        last: *last,
                    },
                })
                .collect(),
            routed: Vec::new(),
            protos,
        }
    }

    fn node(rules: Vec<Compiled>) -> NodeFilter {
        NodeFilter {
            node: "web".into(),
            addresses: vec![ip("100.64.0.5"), ip("fd7a:115c:a1e0::5")],
            rules,
        }
    }

    /// An ACL `{"src": [...], "dst": ["web:22"]}` with no `proto`: the
    /// default protocols, so no `IPProto` (as Tailscale's control sends
    /// it), the sources as addresses and prefixes, one destination entry
    /// per address of the node, single addresses without `/32`.
    #[test]
    fn default_protocols_and_one_port() {
        let f = node(vec![rule(
            set(&[
                "100.64.0.1",
                "100.64.0.2",
                "100.64.0.3",
                "fd7a:115c:a1e0::1",
            ]),
            &[("100.64.0.5", 22, 22), ("fd7a:115c:a1e0::5", 22, 22)],
            ProtoSet::default_set(),
        )]);
        let json = serde_json::to_value(packet_filter(&f)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "SrcIPs": ["100.64.0.1", "100.64.0.2/31", "fd7a:115c:a1e0::1"],
                "DstPorts": [
                    {"IP": "100.64.0.5", "Ports": {"First": 22, "Last": 22}},
                    {"IP": "fd7a:115c:a1e0::5", "Ports": {"First": 22, "Last": 22}}
                ]
            }])
        );
    }

    /// `"src": ["*"]`, `"proto": "tcp"`, ports 80 and 443-8443: `*` and
    /// `IPProto: [6]`.
    #[test]
    fn any_source_one_protocol_port_ranges() {
        let f = node(vec![rule(
            Arc::new(IpSet::all()),
            &[("100.64.0.5", 80, 80), ("100.64.0.5", 443, 8443)],
            ProtoSet::of(&[proto::TCP]),
        )]);
        let text = serde_json::to_string(&packet_filter(&f)).unwrap();
        assert_eq!(
            text,
            r#"[{"SrcIPs":["*"],"DstPorts":[{"IP":"100.64.0.5","Ports":{"First":80,"Last":80}},{"IP":"100.64.0.5","Ports":{"First":443,"Last":8443}}],"IPProto":[6]}]"#
        );
    }

    /// A grant's `"ip": ["*"]` compiles to every protocol: the client is
    /// told every number, since an empty list would narrow it to TCP, UDP
    /// and ICMP.
    #[test]
    fn every_protocol_is_listed() {
        let f = node(vec![rule(
            set(&["100.64.0.1"]),
            &[("100.64.0.5", 0, 65535)],
            ProtoSet::all(),
        )]);
        let rules = packet_filter(&f);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].ip_proto, (0..=255).collect::<Vec<i32>>());
        assert_eq!(rules[0].dst_ports[0].ports, PortRange::ANY);
    }

    /// GRE with TCP on port 22 (a compiled filter may hold it): the client
    /// matches GRE only on rules open to every port, so it gets its own.
    #[test]
    fn protocols_without_ports_get_every_port() {
        let f = node(vec![rule(
            set(&["10.0.0.0/8"]),
            &[("100.64.0.5", 22, 22), ("fd7a:115c:a1e0::5", 22, 22)],
            ProtoSet::of(&[proto::TCP, proto::GRE, proto::ICMP]),
        )]);
        let json = serde_json::to_value(packet_filter(&f)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {
                    "SrcIPs": ["10.0.0.0/8"],
                    "DstPorts": [
                        {"IP": "100.64.0.5", "Ports": {"First": 22, "Last": 22}},
                        {"IP": "fd7a:115c:a1e0::5", "Ports": {"First": 22, "Last": 22}}
                    ],
                    "IPProto": [1, 6]
                },
                {
                    "SrcIPs": ["10.0.0.0/8"],
                    "DstPorts": [
                        {"IP": "100.64.0.5", "Ports": {"First": 0, "Last": 65535}},
                        {"IP": "fd7a:115c:a1e0::5", "Ports": {"First": 0, "Last": 65535}}
                    ],
                    "IPProto": [47]
                }
            ])
        );
    }

    #[test]
    fn empty_filter_is_an_empty_list_and_dead_rules_are_dropped() {
        assert_eq!(
            serde_json::to_string(&packet_filter(&node(vec![]))).unwrap(),
            "[]"
        );
        let f = node(vec![
            rule(
                Arc::new(IpSet::new()),
                &[("100.64.0.5", 22, 22)],
                ProtoSet::default_set(),
            ),
            rule(set(&["100.64.0.1"]), &[], ProtoSet::default_set()),
            rule(
                set(&["100.64.0.1"]),
                &[("100.64.0.5", 22, 22)],
                ProtoSet::EMPTY,
            ),
        ]);
        assert!(packet_filter(&f).is_empty());
    }

    /// The form Tailscale's own control sends reads back as the same
    /// rules (the JSON of a captured grant with an application capability).
    #[test]
    fn reads_tailscale_rules() {
        let text = r#"[{"SrcIPs": ["100.100.92.78", "fd7a:115c:a1e0::4b37:4d56"],
            "DstPorts": [{"IP": "100.70.201.64", "Ports": {"First": 0, "Last": 65535}}]},
            {"SrcIPs": ["100.100.92.78"], "CapGrant": [{
              "Dsts": ["100.70.201.64/32", "fd7a:115c:a1e0::8a37:c940/128"],
              "CapMap": {"example.com/cap/test": [{"role": "admin"}]}}]}]"#;
        let rules: Vec<FilterRule> = serde_json::from_str(text).unwrap();
        assert_eq!(rules[0].src_ips.len(), 2);
        assert!(rules[0].ip_proto.is_empty());
        assert_eq!(rules[1].cap_grant[0].dsts.len(), 2);
        assert_eq!(
            rules[1].cap_grant[0].cap_map["example.com/cap/test"][0]["role"],
            "admin"
        );
        let back: Vec<FilterRule> =
            serde_json::from_str(&serde_json::to_string(&rules).unwrap()).unwrap();
        assert_eq!(back, rules);
    }
}
