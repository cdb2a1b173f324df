//! The bodies of the fuzz targets (`fuzz/fuzz_targets/mesh_*.rs`), here so
//! that `cargo test` replays the committed corpus through the same code.

use crate::core::Core;
use crate::filter::{CompiledFilter, FlowTable};
use crate::packet;
use crate::path::Path;
use gatehouse_filter::ports::{PortRange, ProtoSet};
use gatehouse_filter::{FilterRule, IpSet, NetPortRange, NodeFilter, RuleId, RuleKind};
use gatehouse_proto::control::Peer;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Private key of the fuzzed node.
pub const NODE_KEY: [u8; 32] = [2; 32];
/// Private key of its one peer.
pub const PEER_KEY: [u8; 32] = [1; 32];
/// The node's address.
pub const NODE_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 0, 2));
/// The peer's address.
pub const PEER_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 0, 1));

fn filter() -> NodeFilter {
    NodeFilter {
        node: "fuzz".into(),
        addresses: vec![NODE_IP],
        rules: vec![FilterRule {
            origin: RuleId {
                kind: RuleKind::Acl,
                index: 0,
            },
            src_ips: Arc::new(IpSet::all()),
            dst_ports: vec![NetPortRange {
                ip: NODE_IP,
                ports: PortRange {
                    first: 80,
                    last: 443,
                },
            }],
            protos: ProtoSet::default_set(),
        }],
    }
}

/// An IP packet from a peer: header parsing, the filter, the flow table.
pub fn packet(data: &[u8]) {
    let now = Instant::now();
    let f = CompiledFilter::new(&filter());
    let mut flows = FlowTable::default();
    if let Ok(info) = packet::parse(data) {
        assert!(info.len <= data.len());
        let _ = f.allows(info.src, info.dst, info.proto, info.dst_port);
        flows.outbound(&info, now);
        let _ = flows.is_reply(&info, now);
    }
}

/// A UDP datagram arriving at a node with one peer, then the same bytes as
/// an outbound IP packet, then a timer run.
pub fn datagram(data: &[u8]) {
    let now = Instant::now();
    let Ok(mut core) = Core::new(NODE_KEY, vec![NODE_IP], now) else {
        return;
    };
    let peer = Peer {
        id: "peer".into(),
        name: "peer".into(),
        fqdn: "peer.fuzz".into(),
        wireguard_key: crate::public_key(&PEER_KEY),
        addresses: vec![PEER_IP],
        endpoints: vec![SocketAddr::from(([192, 0, 2, 1], 51820))],
        disco_key: None,
        home_relay: None,
        user: None,
        tags: Vec::new(),
        key_expiry: 0,
        service: None,
    };
    core.set_peers(&[peer], now);
    core.set_filter(&filter());
    let from = Path::Direct(SocketAddr::from(([192, 0, 2, 1], 51820)));
    core.handle_datagram(from, data, now);
    core.handle_packet(data, now);
    core.handle_timeout(now + Duration::from_secs(6));
    while core.poll_transmit().is_some() {}
    while core.poll_event().is_some() {}
}

/// An echo message from a peer: the parser, and the answer the core would
/// send (which must parse back to the same identifier, sequence and data,
/// addresses swapped, with a valid checksum).
pub fn echo(data: &[u8]) {
    let Some(e) = crate::echo::parse(data) else {
        return;
    };
    let reply = e.reply();
    assert!(crate::echo::checksum_ok(&reply));
    let Some(r) = crate::echo::parse(&reply) else {
        panic!("the reply to {e:?} does not parse");
    };
    assert_eq!(
        (r.src, r.dst, r.request, r.id, r.seq, r.data),
        (e.dst, e.src, false, e.id, e.seq, e.data)
    );
}
