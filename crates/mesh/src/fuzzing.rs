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
/// Disco private key of the fuzzed node.
pub const NODE_DISCO: [u8; 32] = [4; 32];
/// Disco private key of its peer.
pub const PEER_DISCO: [u8; 32] = [3; 32];
/// The peer's home relay region.
pub const PEER_RELAY: u16 = 9;
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
            routed: Vec::new(),
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

/// A UDP datagram arriving at a node with one peer (WireGuard, disco or
/// STUN, as the shared socket classifies it), the same bytes delivered by a
/// relay from the peer and from a stranger, then as an outbound IP packet,
/// then a timer run.
pub fn datagram(data: &[u8]) {
    let now = Instant::now();
    let Ok(mut core) = Core::new(NODE_KEY, vec![NODE_IP], now) else {
        return;
    };
    core.set_disco_key(gatehouse_disco::DiscoPrivateKey::from_bytes(NODE_DISCO));
    core.set_disco_endpoints(vec![SocketAddr::from(([192, 0, 2, 2], 41641))]);
    let peer = Peer {
        id: "peer".into(),
        name: "peer".into(),
        fqdn: "peer.fuzz".into(),
        wireguard_key: crate::public_key(&PEER_KEY),
        addresses: vec![PEER_IP],
        endpoints: vec![SocketAddr::from(([192, 0, 2, 1], 51820))],
        disco_key: Some(
            gatehouse_disco::DiscoPrivateKey::from_bytes(PEER_DISCO)
                .public()
                .to_string(),
        ),
        home_relay: Some(PEER_RELAY),
        user: None,
        tags: Vec::new(),
        key_expiry: 0,
        service: None,
        online: None,
    };
    core.set_peers(&[peer], now);
    core.set_filter(&filter());
    let from = Path::Direct(SocketAddr::from(([192, 0, 2, 1], 51820)));
    core.handle_datagram(from, data, now);
    let peer_key = gatehouse_disco::NodePublicKey(
        *boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from(PEER_KEY))
            .as_bytes(),
    );
    core.handle_relay_datagram(PEER_RELAY, peer_key, data, now);
    core.handle_relay_datagram(
        PEER_RELAY,
        gatehouse_disco::NodePublicKey([7; 32]),
        data,
        now,
    );
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
