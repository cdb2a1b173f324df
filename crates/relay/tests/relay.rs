//! The relay with real TLS on loopback: forwarding, admission, revocation,
//! PeerGone, hostile input, rate limits, both HTTP fronts, the WebSocket
//! form, keepalives, health, restarts and the reconnecting client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{DEADLINE, Front, barrier, closed, next, start};
use gatehouse_relay::client::{Connection, Event};
use gatehouse_relay::{
    Frame, NodePublicKey, PeerGoneReason, PrivateKey, Rate, RelayClient, RelayConfig,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn disco_like(n: usize) -> Bytes {
    let mut p = b"TS\xf0\x9f\x92\xac".to_vec();
    p.resize(n, 7);
    Bytes::from(p)
}

async fn exchange(front: Front, websocket: bool) {
    let relay = start(RelayConfig::default(), front).await;
    let (a, b) = (relay.node(), relay.node());
    let mut cfg = relay.client_config();
    cfg.websocket = websocket;
    let mut ca = Connection::connect(&cfg, &a).await.unwrap();
    let mut cb = relay.connect(&b).await; // plain DERP either way
    assert_eq!(ca.server_key(), relay.server.public_key());
    assert_eq!(ca.server_info().version, 2);
    ca.send(&[Frame::SendPacket {
        dst: b.public(),
        packet: Bytes::from_static(b"hello b"),
    }])
    .await
    .unwrap();
    assert_eq!(
        next(&mut cb).await,
        Frame::RecvPacket {
            src: a.public(),
            packet: Bytes::from_static(b"hello b")
        }
    );
    let big = Bytes::from(vec![0x5a; 64 << 10]);
    cb.send(&[Frame::SendPacket {
        dst: a.public(),
        packet: big.clone(),
    }])
    .await
    .unwrap();
    assert_eq!(
        next(&mut ca).await,
        Frame::RecvPacket {
            src: b.public(),
            packet: big
        }
    );
    assert_eq!(relay.metric("relay_packets_relayed_total"), 2);
    assert_eq!(relay.metric("relay_clients"), 2);
    assert_eq!(
        relay.metric("relay_home_clients"),
        2,
        "both sent NotePreferred(true)"
    );
}

#[tokio::test]
async fn two_clients_exchange_packets_own_listener() {
    exchange(Front::Own, false).await;
}

#[tokio::test]
async fn two_clients_exchange_packets_embedded() {
    exchange(Front::Embedded, false).await;
}

#[tokio::test]
async fn websocket_form_own_listener() {
    exchange(Front::Own, true).await;
}

#[tokio::test]
async fn websocket_form_embedded() {
    exchange(Front::Embedded, true).await;
}

#[tokio::test]
async fn unknown_key_is_refused_and_gets_nothing() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let a = relay.node();
    let stranger = PrivateKey::generate();
    let err = Connection::connect(&relay.client_config(), &stranger)
        .await
        .unwrap_err();
    assert!(
        matches!(err, gatehouse_relay::ClientError::Closed),
        "{err:?}"
    );
    assert_eq!(
        relay.metric("relay_refused_total{reason=\"not_admitted\"}"),
        1
    );
    assert!(!relay.server.is_connected(&stranger.public()));
    // Packets for the stranger go nowhere; a disco packet gets NotHere.
    let mut ca = relay.connect(&a).await;
    ca.send(&[
        Frame::SendPacket {
            dst: stranger.public(),
            packet: Bytes::from_static(b"\x01\0\0\0wireguard"),
        },
        Frame::SendPacket {
            dst: stranger.public(),
            packet: disco_like(100),
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        barrier(&mut ca).await,
        vec![Frame::PeerGone {
            key: stranger.public(),
            reason: PeerGoneReason::NotHere
        }],
        "silence for WireGuard, NotHere for disco"
    );
    assert_eq!(
        relay.metric("relay_packets_dropped_total{reason=\"unknown_destination\"}"),
        2
    );
}

#[tokio::test]
async fn forged_client_info_is_refused() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let a = relay.node();
    // A ClientInfo claiming a's key, sealed with another private key.
    let impostor = PrivateKey::generate();
    let mut tls = raw_upgrade(&relay, "Upgrade: DERP\r\n").await;
    let server_key = read_server_key(&mut tls).await;
    let Frame::ClientInfo { nonce, sealed, .. } = gatehouse_relay::handshake::client_info_frame(
        &impostor,
        &server_key,
        &gatehouse_relay::handshake::default_client_info(),
    ) else {
        unreachable!()
    };
    let mut out = bytes::BytesMut::new();
    gatehouse_relay::frame::encode(
        &Frame::ClientInfo {
            key: a.public(),
            nonce,
            sealed,
        },
        &mut out,
    );
    tls.write_all(&out).await.unwrap();
    let mut rest = vec![];
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "no ServerInfo for a forged key");
    assert_eq!(
        relay.metric("relay_refused_total{reason=\"bad_client_info\"}"),
        1
    );
}

#[tokio::test]
async fn revoked_key_is_disconnected() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let (a, b) = (relay.node(), relay.node());
    let mut ca = relay.connect(&a).await;
    let mut cb = relay.connect(&b).await;
    barrier(&mut ca).await;
    assert_eq!(relay.revoke(&a.public()), 1);
    closed(&mut ca).await;
    assert_eq!(relay.metric("relay_closed_total{reason=\"revoked\"}"), 1);
    // b is untouched, and a cannot come back.
    barrier(&mut cb).await;
    assert!(
        Connection::connect(&relay.client_config(), &a)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn peer_gone_when_a_sender_leaves() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let (a, b, c) = (relay.node(), relay.node(), relay.node());
    let mut ca = relay.connect(&a).await;
    let mut cb = relay.connect(&b).await;
    let mut cc = relay.connect(&c).await;
    ca.send(&[Frame::SendPacket {
        dst: b.public(),
        packet: Bytes::from_static(b"x"),
    }])
    .await
    .unwrap();
    assert!(matches!(next(&mut cb).await, Frame::RecvPacket { .. }));
    drop(ca);
    assert_eq!(
        next(&mut cb).await,
        Frame::PeerGone {
            key: a.public(),
            reason: PeerGoneReason::Disconnected
        }
    );
    // c never heard from a: nothing for it.
    assert_eq!(barrier(&mut cc).await, vec![]);
}

#[tokio::test]
async fn malformed_frames_close_only_that_connection() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let (a, b) = (relay.node(), relay.node());
    let mut ca = relay.connect(&a).await;
    let mut cb = relay.connect(&b).await;
    let hostile: Vec<&[u8]> = vec![
        &[0x04, 0, 0, 0, 3, 1, 2, 3],    // SendPacket shorter than a key
        &[0x04, 0xff, 0xff, 0xff, 0xff], // a 4 GiB frame
        &[0x07, 0, 0, 0, 2, 1, 1],       // NotePreferred of two bytes
        &[0x12, 0, 0, 0, 1, 9],          // Ping of one byte
        &[0x10, 0, 0, 0, 0],             // WatchConns: mesh only
    ];
    for bytes in hostile {
        let m = relay.node();
        let mut cm = relay.connect(&m).await;
        cm.send_raw(Bytes::copy_from_slice(bytes)).await.unwrap();
        closed(&mut cm).await;
        // The others keep working.
        ca.send(&[Frame::SendPacket {
            dst: b.public(),
            packet: Bytes::from_static(b"still"),
        }])
        .await
        .unwrap();
        assert!(matches!(next(&mut cb).await, Frame::RecvPacket { .. }));
    }
    assert_eq!(relay.metric("relay_closed_total{reason=\"malformed\"}"), 4);
    assert_eq!(relay.metric("relay_closed_total{reason=\"mesh_frame\"}"), 1);
    // Garbage instead of a handshake, and unknown frame types (skipped).
    let mut raw = raw_upgrade(&relay, "Upgrade: DERP\r\n").await;
    read_server_key(&mut raw).await;
    raw.write_all(&[0x02, 0, 0, 0, 60]).await.unwrap();
    raw.write_all(&[0u8; 60]).await.unwrap();
    let mut rest = vec![];
    let _ = tokio::time::timeout(DEADLINE, raw.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    ca.send_raw(Bytes::from_static(&[0x42, 0, 0, 0, 2, 1, 2]))
        .await
        .unwrap();
    assert_eq!(
        barrier(&mut ca).await,
        vec![],
        "unknown frame types are skipped"
    );
}

#[tokio::test]
async fn rate_limit_drops_over_limit_packets() {
    // A burst of exactly one full frame; a refill of one byte a second.
    let burst = gatehouse_relay::server::MIN_BURST;
    let cfg = RelayConfig {
        rate_limit: Some(Rate { per_sec: 1, burst }),
        ..RelayConfig::default()
    };
    let relay = start(cfg, Front::Own).await;
    let (a, b) = (relay.node(), relay.node());
    let mut ca = relay.connect(&a).await;
    let mut cb = relay.connect(&b).await;
    assert_eq!(ca.server_info().rate_bytes_per_sec, 1);
    assert_eq!(ca.server_info().burst_bytes, burst);
    let big = Bytes::from(vec![1u8; 40 << 10]);
    let marker = Bytes::from_static(b"marker");
    let send = |p: Bytes| Frame::SendPacket {
        dst: b.public(),
        packet: p,
    };
    ca.send(&[
        send(big.clone()),
        send(big.clone()),
        send(big.clone()),
        send(marker.clone()),
    ])
    .await
    .unwrap();
    barrier(&mut ca).await;
    assert_eq!(
        next(&mut cb).await,
        Frame::RecvPacket {
            src: a.public(),
            packet: big
        }
    );
    assert_eq!(
        next(&mut cb).await,
        Frame::RecvPacket {
            src: a.public(),
            packet: marker
        }
    );
    assert_eq!(barrier(&mut cb).await, vec![]);
    assert_eq!(
        relay.metric("relay_packets_dropped_total{reason=\"rate_limited\"}"),
        2
    );
}

#[tokio::test]
async fn ping_keepalive_health_and_restarting() {
    let cfg = RelayConfig {
        keepalive: Duration::from_millis(100),
        keepalive_jitter: Duration::ZERO,
        ..RelayConfig::default()
    };
    let relay = start(cfg, Front::Own).await;
    let a = relay.node();
    let mut ca = relay.connect(&a).await;
    // An idle client gets keepalives.
    let f = tokio::time::timeout(DEADLINE, ca.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f, Frame::KeepAlive);
    ca.send(&[Frame::Ping([1, 2, 3, 4, 5, 6, 7, 8])])
        .await
        .unwrap();
    assert_eq!(next(&mut ca).await, Frame::Pong([1, 2, 3, 4, 5, 6, 7, 8]));
    relay.server.set_health(Some("no word from control".into()));
    assert_eq!(
        next(&mut ca).await,
        Frame::Health("no word from control".into())
    );
    relay.server.set_health(None);
    assert_eq!(next(&mut ca).await, Frame::Health(String::new()));
    let stop = {
        let s = relay.server.clone();
        tokio::spawn(async move {
            s.shutdown(Duration::from_millis(500), Duration::from_secs(30))
                .await
        })
    };
    assert_eq!(
        next(&mut ca).await,
        Frame::Restarting {
            reconnect_in: Duration::from_millis(500),
            try_for: Duration::from_secs(30)
        }
    );
    closed(&mut ca).await;
    stop.await.unwrap();
    assert_eq!(relay.server.client_count(), 0);
    assert!(
        Connection::connect(&relay.client_config(), &a)
            .await
            .is_err(),
        "refused while stopping"
    );
}

#[tokio::test]
async fn relay_client_reconnects_and_delivers() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let (a, b) = (relay.node(), relay.node());
    let mut rb = RelayClient::start(relay.client_config(), b.clone());
    assert_eq!(
        tokio::time::timeout(DEADLINE, rb.recv()).await.unwrap(),
        Some(Event::Connected(relay.server.public_key()))
    );
    let mut ca = relay.connect(&a).await;
    ca.send(&[Frame::SendPacket {
        dst: b.public(),
        packet: Bytes::from_static(b"one"),
    }])
    .await
    .unwrap();
    assert_eq!(
        tokio::time::timeout(DEADLINE, rb.recv()).await.unwrap(),
        Some(Event::Packet {
            src: a.public(),
            data: Bytes::from_static(b"one")
        })
    );
    assert!(rb.ping().await.is_ok());
    // Kicked off (revoked, then admitted again): the client comes back.
    relay.revoke(&b.public());
    relay.admit(&[a.public(), b.public()]);
    let mut saw_disconnect = false;
    loop {
        match tokio::time::timeout(DEADLINE, rb.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Disconnected(_) => saw_disconnect = true,
            Event::Connected(_) => break,
            _ => {}
        }
    }
    assert!(saw_disconnect);
    rb.send(a.public(), Bytes::from_static(b"back"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ca).await,
        Frame::RecvPacket {
            src: b.public(),
            packet: Bytes::from_static(b"back")
        }
    );
    rb.set_home(false).await.unwrap();
    assert!(rb.ping().await.is_ok());
    assert_eq!(
        relay.metric("relay_home_clients"),
        1,
        "only a's connection is home now"
    );
}

#[tokio::test]
async fn duplicate_connections_last_sender_receives() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let (a, b) = (relay.node(), relay.node());
    let mut ca = relay.connect(&a).await;
    let mut b1 = relay.connect(&b).await;
    let mut b2 = relay.connect(&b).await;
    let send = |p: &'static [u8]| Frame::SendPacket {
        dst: b.public(),
        packet: Bytes::from_static(p),
    };
    ca.send(&[send(b"to newest")]).await.unwrap();
    assert!(matches!(next(&mut b2).await, Frame::RecvPacket { .. }));
    // b1 sends: it becomes the active one.
    b1.send(&[Frame::SendPacket {
        dst: a.public(),
        packet: Bytes::from_static(b"hi"),
    }])
    .await
    .unwrap();
    assert!(matches!(next(&mut ca).await, Frame::RecvPacket { .. }));
    ca.send(&[send(b"to b1")]).await.unwrap();
    assert_eq!(
        next(&mut b1).await,
        Frame::RecvPacket {
            src: a.public(),
            packet: Bytes::from_static(b"to b1")
        }
    );
    // One of b's connections closing is not b leaving.
    drop(b2);
    assert_eq!(barrier(&mut ca).await, vec![]);
    let _ = NodePublicKey([0; 32]);
}

#[tokio::test]
async fn fast_start_and_http_paths() {
    let relay = start(RelayConfig::default(), Front::Own).await;
    let a = relay.node();
    // Fast start: no HTTP response, the ServerKey frame comes first, and a
    // ClientInfo sent with the request is read.
    let mut tls = raw_tls(&relay).await;
    let server_key = relay.server.public_key();
    let ci = gatehouse_relay::handshake::client_info_frame(
        &a,
        &server_key,
        &gatehouse_relay::handshake::default_client_info(),
    );
    let mut req = b"GET /derp HTTP/1.1\r\nHost: relay.test\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n".to_vec();
    let mut f = bytes::BytesMut::new();
    gatehouse_relay::frame::encode(&ci, &mut f);
    req.extend_from_slice(&f);
    tls.write_all(&req).await.unwrap();
    assert_eq!(read_server_key(&mut tls).await, server_key);
    let mut hdr = [0u8; 5];
    tls.read_exact(&mut hdr).await.unwrap();
    assert_eq!(hdr[0], 0x03, "ServerInfo follows");
    // Plain requests.
    for (req, want) in [
        (
            "GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "HEAD /derp/latency-check HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "POST /derp/probe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405",
        ),
        ("GET /derp HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 426"),
        ("GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404"),
        (
            "GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: ts_127.0.0.1\r\n\r\n",
            "HTTP/1.1 204",
        ),
    ] {
        let mut tls = raw_tls(&relay).await;
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let resp = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(resp.starts_with(want), "{req:?}: {resp}");
        if req.contains("generate_204") {
            assert!(
                resp.to_ascii_lowercase()
                    .contains("x-tailscale-response: response ts_127.0.0.1"),
                "{resp}"
            );
        }
    }
}

async fn raw_tls(
    relay: &common::TestRelay,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(common::client_tls(&relay.pki))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A TLS connection upgraded with `extra` headers; the 101 head consumed.
async fn raw_upgrade(
    relay: &common::TestRelay,
    extra: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = raw_tls(relay).await;
    tls.write_all(
        format!("GET /derp HTTP/1.1\r\nHost: x\r\n{extra}Connection: Upgrade\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![];
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tls
}

async fn read_server_key(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> NodePublicKey {
    let mut f = [0u8; 45];
    tls.read_exact(&mut f).await.unwrap();
    assert_eq!(&f[..5], &[1, 0, 0, 0, 40]);
    NodePublicKey(f[13..45].try_into().unwrap())
}
