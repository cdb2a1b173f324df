//! Cross-check against an independent implementation: Tailscale's own Rust
//! crates. Their DERP client (`ts_derp`) connects to our relay over TLS and
//! the HTTP upgrade and exchanges packets with our client and with another
//! of theirs; their disco codec (`ts_disco_protocol`) opens the packets we
//! seal and we open theirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../crates/relay/tests/common/mod.rs"]
mod common;

use bytes::Bytes;
use common::{DEADLINE, Front, next, start};
use gatehouse_disco::{DiscoPrivateKey, DiscoPublicKey, Message, disco};
use gatehouse_relay::{Frame, NodePublicKey, PrivateKey, RelayConfig};
use std::net::{Ipv4Addr, SocketAddr};
use ts_keys::ExportableKey;

fn ts_pair(ours: &PrivateKey) -> ts_keys::NodeKeyPair {
    ts_keys::NodeKeyPair::from(
        ts_keys::Export::<ts_keys::NodePrivateKey>::from_bytes(ours.to_bytes()).import(),
    )
}

fn ts_public(k: &ts_keys::NodePublicKey) -> NodePublicKey {
    NodePublicKey(*k.to_crypto_box().as_bytes())
}

fn region(port: u16) -> Vec<ts_derp::ServerConnInfo> {
    vec![ts_derp::ServerConnInfo {
        hostname: "relay.test".into(),
        ipv4: ts_derp::IpUsage::FixedAddr(Ipv4Addr::LOCALHOST),
        ipv6: ts_derp::IpUsage::Disable,
        tls_validation_config: ts_derp::TlsValidationConfig::InsecureForTests,
        https_port: port,
        stun_port: None,
        stun_only: false,
        supports_port_80: false,
    }]
}

async fn ts_derp_through(front: Front) {
    // ts_derp's TLS uses the process default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let relay = start(RelayConfig::default(), front).await;
    let (t1, t2, ours) = (relay.node(), relay.node(), relay.node());
    let (p1, p2) = (ts_pair(&t1), ts_pair(&t2));
    assert_eq!(ts_public(&p1.public), t1.public());
    let c1 = ts_derp::Client::connect(&region(relay.addr.port()), &p1)
        .await
        .unwrap();
    let c2 = ts_derp::Client::connect(&region(relay.addr.port()), &p2)
        .await
        .unwrap();
    let mut me = relay.connect(&ours).await;

    // Ours to theirs.
    me.send(&[Frame::SendPacket {
        dst: t1.public(),
        packet: Bytes::from_static(b"to ts_derp"),
    }])
    .await
    .unwrap();
    let (src, pkt) = tokio::time::timeout(DEADLINE, c1.recv_one())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ts_public(&src), ours.public());
    assert_eq!(pkt.as_ref(), b"to ts_derp");
    // Theirs to ours.
    c1.send_one(
        ts_keys::NodePublicKey::from_bytes(ours.public().0),
        b"from ts_derp",
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut me).await,
        Frame::RecvPacket {
            src: t1.public(),
            packet: Bytes::from_static(b"from ts_derp")
        }
    );
    // Theirs to theirs.
    let big = vec![0xa5u8; 60 << 10];
    c2.send_one(p1.public, &big).await.unwrap();
    let (src, pkt) = tokio::time::timeout(DEADLINE, c1.recv_one())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(src, p2.public);
    assert_eq!(pkt.as_ref(), &big[..]);

    // A key this network does not have is refused.
    let stranger = ts_keys::NodeKeyPair::random();
    assert!(
        ts_derp::Client::connect(&region(relay.addr.port()), &stranger)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn ts_derp_client_through_our_relay_own_listener() {
    ts_derp_through(Front::Own).await;
}

#[tokio::test]
async fn ts_derp_client_through_our_relay_embedded() {
    ts_derp_through(Front::Embedded).await;
}

fn ts_disco_key(k: &DiscoPrivateKey) -> ts_keys::DiscoPrivateKey {
    ts_keys::Export::<ts_keys::DiscoPrivateKey>::from_bytes(k.to_bytes()).import()
}

#[test]
fn their_disco_codec_opens_ours() {
    use ts_disco_protocol::{CallMeMaybe, Packet, Ping, Pong};
    let (a, b) = (DiscoPrivateKey::generate(), DiscoPrivateKey::generate());
    let tb = ts_disco_key(&b);
    assert_eq!(*tb.public_key().export().as_bytes(), b.public().0);
    let node = NodePublicKey([9; 32]);
    let src: SocketAddr = "198.51.100.4:41641".parse().unwrap();
    let eps: Vec<SocketAddr> = vec![
        "192.0.2.1:1".parse().unwrap(),
        "[2001:db8::5]:41641".parse().unwrap(),
    ];

    let mut ping = disco::seal_to(
        &a,
        &b.public(),
        &Message::Ping {
            tx_id: [1; 12],
            node_key: Some(node),
            padding: 0,
        },
    );
    assert_eq!(
        ping.len(),
        Packet::<ts_disco_protocol::Plaintext>::size_for_message(Ping::size_with_padding(0))
    );
    let pt = Packet::from_encrypted_bytes_mut(&mut ping)
        .unwrap()
        .decrypt_in_place(&tb)
        .unwrap();
    assert_eq!(pt.sender_pubkey().export().as_bytes(), &a.public().0);
    let m = pt.as_msg::<Ping>().unwrap();
    assert_eq!(m.tx_id, [1; 12]);
    assert_eq!(m.node_key.to_crypto_box().as_bytes(), &node.0);

    let mut pong = disco::seal_to(
        &a,
        &b.public(),
        &Message::Pong {
            tx_id: [2; 12],
            src,
        },
    );
    let pt = Packet::from_encrypted_bytes_mut(&mut pong)
        .unwrap()
        .decrypt_in_place(&tb)
        .unwrap();
    let m = pt.as_msg::<Pong>().unwrap();
    assert_eq!((m.tx_id, m.src.socket_addr()), ([2; 12], src));

    let mut cmm = disco::seal_to(
        &a,
        &b.public(),
        &Message::CallMeMaybe {
            endpoints: eps.clone(),
        },
    );
    let pt = Packet::from_encrypted_bytes_mut(&mut cmm)
        .unwrap()
        .decrypt_in_place(&tb)
        .unwrap();
    let m = pt.as_msg::<CallMeMaybe>().unwrap();
    let got: Vec<SocketAddr> = m.endpoints.iter().map(|e| e.socket_addr()).collect();
    assert_eq!(got, eps);
}

#[test]
fn our_disco_codec_opens_theirs() {
    use ts_disco_protocol::{CallMeMaybe, Endpoint, Packet, Ping, Plaintext, Pong};
    let (a, b) = (DiscoPrivateKey::generate(), DiscoPrivateKey::generate());
    let (ta, shared) = (ts_disco_key(&a), b.shared(&a.public()));
    let tb_pub = ts_keys::DiscoPublicKey::from_bytes(b.public().0);
    let nonce = [7u8; 24];
    let node = ts_keys::NodePublicKey::from_bytes([3; 32]);

    let mut buf = vec![0u8; Packet::<Plaintext>::size_for_message(Ping::size_with_padding(0))];
    Packet::<Plaintext>::init_from_bytes::<Ping>(&mut buf, |m| {
        m.tx_id = [4; 12];
        m.node_key = node;
    })
    .unwrap()
    .encrypt_in_place(&ta, &tb_pub, nonce)
    .unwrap();
    assert_eq!(disco::sender(&buf).unwrap(), DiscoPublicKey(a.public().0));
    assert_eq!(
        disco::open(&shared, &buf).unwrap(),
        Message::Ping {
            tx_id: [4; 12],
            node_key: Some(NodePublicKey([3; 32])),
            padding: 0
        }
    );

    let src: SocketAddr = "[2001:db8::9]:3478".parse().unwrap();
    let mut buf = vec![0u8; Packet::<Plaintext>::size_for_message(Pong::size())];
    Packet::<Plaintext>::init_from_bytes::<Pong>(&mut buf, |m| {
        m.tx_id = [5; 12];
        m.src = Endpoint::from_socket_addr(src);
    })
    .unwrap()
    .encrypt_in_place(&ta, &tb_pub, nonce)
    .unwrap();
    assert_eq!(
        disco::open(&shared, &buf).unwrap(),
        Message::Pong {
            tx_id: [5; 12],
            src
        }
    );

    let eps: Vec<SocketAddr> = vec![
        "203.0.113.8:41641".parse().unwrap(),
        "10.0.0.2:7".parse().unwrap(),
    ];
    let mut buf =
        vec![0u8; Packet::<Plaintext>::size_for_message(CallMeMaybe::size_for_endpoint_count(2))];
    Packet::<Plaintext>::init_from_bytes::<CallMeMaybe>(&mut buf, |m| {
        for (slot, e) in m.endpoints.iter_mut().zip(&eps) {
            *slot = Endpoint::from_socket_addr(*e);
        }
    })
    .unwrap()
    .encrypt_in_place(&ta, &tb_pub, nonce)
    .unwrap();
    assert_eq!(
        disco::open(&shared, &buf).unwrap(),
        Message::CallMeMaybe { endpoints: eps }
    );
}
