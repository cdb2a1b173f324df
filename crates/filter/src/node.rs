//! A node's compiled inbound packet filter.

use crate::ipset::IpSet;
use crate::ports::{PortRange, ProtoSet, proto};
use crate::rule::RuleId;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

/// One rule of a node's inbound filter: packets from `src` to one of
/// `dst_ports` with a protocol in `protos` are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterRule {
    /// The policy rule this comes from.
    pub origin: RuleId,
    /// Source addresses (`*` = any).
    #[serde(rename = "srcIPs")]
    pub src_ips: Arc<IpSet>,
    /// Destination address and port ranges on this node.
    pub dst_ports: Vec<NetPortRange>,
    /// Destinations beyond this node that it forwards to, as a subnet
    /// router or an exit node, with port ranges. A Gatehouse node forwards
    /// nothing, so its data plane has no use for them; Tailscale routers
    /// receive them in their packet filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed: Vec<RoutedPortRange>,
    /// IP protocols.
    #[serde(rename = "ipProto")]
    pub protos: ProtoSet,
}

/// A destination address with a port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetPortRange {
    /// One of the node's addresses.
    pub ip: IpAddr,
    /// Ports (all ports for protocols without ports).
    pub ports: PortRange,
}

/// Forwarded destinations (a subnet, the internet) with a port range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedPortRange {
    /// The destination addresses.
    pub nets: Arc<IpSet>,
    /// Ports (all ports for protocols without ports).
    pub ports: PortRange,
}

/// A node's compiled inbound packet filter: deny unless a rule accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFilter {
    /// The node.
    pub node: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Accepting rules, in policy order.
    pub rules: Vec<FilterRule>,
}

/// Whether `proto` carries ports that a rule's port ranges restrict.
pub fn has_ports(p: u8) -> bool {
    matches!(p, proto::TCP | proto::UDP | proto::SCTP)
}

impl NodeFilter {
    /// The first rule accepting a packet, if any. Ports are ignored for
    /// protocols that have none (ICMP).
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Option<RuleId> {
        self.rules
            .iter()
            .find(|r| {
                r.protos.contains(proto)
                    && r.dst_ports
                        .iter()
                        .any(|d| d.ip == dst && (!has_ports(proto) || d.ports.contains(port)))
                    && r.src_ips.contains(src)
            })
            .map(|r| r.origin)
    }

    /// The first rule accepting a packet that this node forwards (as a
    /// subnet router or exit node) to `dst`, if any.
    pub fn allows_routed(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Option<RuleId> {
        self.rules
            .iter()
            .find(|r| {
                r.protos.contains(proto)
                    && r.routed.iter().any(|d| {
                        d.nets.contains(dst) && (!has_ports(proto) || d.ports.contains(port))
                    })
                    && r.src_ips.contains(src)
            })
            .map(|r| r.origin)
    }
}
