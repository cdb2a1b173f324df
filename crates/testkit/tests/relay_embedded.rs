//! Control's embedded relay (docs/decisions/0029-paths-through-nat.md):
//! the relay map in every node's map and its changes, STUN beside control,
//! `/derp` on control's listener admitting exactly the nodes of the mesh,
//! and the disco key and home relay a node announces reaching its peers.
//! Real TLS, real UDP, the relay client nodes use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use bytes::Bytes;
use gatehouse_proto::control::{EndpointsRequest, RelayMap, RelayNode, RelayRegion};
use gatehouse_relay::client::{ClientConfig, Connection};
use gatehouse_relay::{Event, PrivateKey, RelayClient};
use gatehouse_testkit::{DEADLINE, LightNode, TestControl};
use std::sync::Arc;

fn relay_key(node: &LightNode) -> PrivateKey {
    let b = base64::engine::general_purpose::STANDARD
        .decode(&node.identity.wireguard_private)
        .unwrap();
    PrivateKey::from_bytes(b.try_into().unwrap())
}

fn relay_config(c: &TestControl) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(c.ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = gatehouse_ops::tls::client_config(Some(roots), &[]).unwrap();
    let mut cfg = ClientConfig::new(c.info.url.clone(), Arc::new(tls));
    cfg.backoff = (
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(200),
    );
    cfg
}

async fn next_event(client: &mut RelayClient, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match client.recv().await {
                Some(e) if f(&e) => return e,
                Some(_) => {}
                None => panic!("{what}: the relay client stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test]
async fn control_relays_for_its_nodes_only_and_hands_out_its_map() {
    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    let key = c.key(Some("alice@example.com"), &[], true).await;
    let mut a = c.node(&key, "a").await.unwrap();
    let b = c.node(&key, "b").await.unwrap();

    // The map names control's relay: its host and port, and a STUN port.
    let relays = a.view().unwrap().relays;
    assert_eq!(relays.regions.len(), 1, "{relays:?}");
    let node = &relays.regions[0].nodes[0];
    assert_eq!(
        format!("https://{}:{}", node.host, node.port),
        c.info.url,
        "{relays:?}"
    );
    let stun_port = node.stun_port.unwrap();
    assert_eq!(
        Some(stun_port),
        c.running.as_ref().unwrap().stun_addr.map(|a| a.port())
    );

    // STUN answers with the address the request came from.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tx = gatehouse_disco::stun::new_tx_id();
    udp.send_to(
        &gatehouse_disco::stun::binding_request(&tx),
        ("127.0.0.1", stun_port),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(DEADLINE, udp.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let (got_tx, seen) = gatehouse_disco::stun::parse_binding_response(&buf[..n]).unwrap();
    assert_eq!(got_tx, tx);
    assert_eq!(seen, udp.local_addr().unwrap());

    // Both nodes connect with their WireGuard keys and exchange a packet.
    let cfg = relay_config(&c);
    let mut ra = RelayClient::start(cfg.clone(), relay_key(&a));
    let mut rb = RelayClient::start(cfg.clone(), relay_key(&b));
    next_event(&mut ra, "a connects", |e| matches!(e, Event::Connected(_))).await;
    next_event(&mut rb, "b connects", |e| matches!(e, Event::Connected(_))).await;
    ra.send(rb.key(), Bytes::from_static(b"through control"))
        .await
        .unwrap();
    let got = next_event(&mut rb, "b receives", |e| matches!(e, Event::Packet { .. })).await;
    assert_eq!(
        got,
        Event::Packet {
            src: ra.key(),
            data: Bytes::from_static(b"through control"),
        }
    );

    // A key that is no node of this network is refused in the handshake.
    let stranger = Connection::connect(&cfg, &PrivateKey::generate()).await;
    assert!(stranger.is_err(), "a stranger was admitted");

    // A node deleted from the mesh loses the relay at once, and cannot
    // come back.
    c.admin.delete_node(&b.identity.node_id).await.unwrap();
    next_event(&mut rb, "b is dropped", |e| {
        matches!(e, Event::Disconnected(_))
    })
    .await;
    assert!(Connection::connect(&cfg, &relay_key(&b)).await.is_err());

    // What a node announces reaches its peers: disco key and home relay.
    let c2 = c.node(&key, "c").await.unwrap();
    let disco = gatehouse_disco::DiscoPrivateKey::generate().public();
    c2.client
        .set_endpoints(&EndpointsRequest {
            endpoints: vec!["192.0.2.7:41641".parse().unwrap()],
            disco_key: Some(disco.to_string()),
            home_relay: Some(relays.regions[0].id),
        })
        .await
        .unwrap();
    let want = disco.to_string();
    a.wait_until("c's disco key", |s| {
        s.and_then(|s| s.peers.values().find(|p| p.name == "c"))
            .is_some_and(|p| {
                p.disco_key.as_deref() == Some(want.as_str()) && p.home_relay == Some(900)
            })
    })
    .await;
    // A malformed disco key is refused.
    let bad = c2
        .client
        .set_endpoints(&EndpointsRequest {
            endpoints: vec![],
            disco_key: Some("discokey:nothex".into()),
            home_relay: None,
        })
        .await;
    assert!(bad.is_err());

    // A new relay map reaches running nodes; an unusable one is refused
    // and changes nothing.
    let running = c.running.as_ref().unwrap();
    let map = RelayMap {
        regions: vec![RelayRegion {
            id: 7,
            code: "fra".into(),
            name: "Frankfurt".into(),
            nodes: vec![RelayNode {
                name: "fra1".into(),
                host: "relay.example.com".into(),
                port: 443,
                stun_port: Some(3478),
            }],
        }],
    };
    assert!(running.set_relay_map(RelayMap::default()).is_err());
    running.set_relay_map(map.clone()).unwrap();
    a.wait_until("the new relay map", |s| s.is_some_and(|s| s.relays == map))
        .await;
}
