//! The node's relay connections against control's embedded relay: home
//! and on-demand regions, datagrams both ways, a map change closing what
//! it removed. Real TLS on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use gatehouse_node::relays::Relays;
use gatehouse_proto::control::RelayMap;
use gatehouse_relay::{NodePublicKey, PrivateKey};
use gatehouse_testkit::{DEADLINE, LightNode, TestControl};
use rustls::pki_types::pem::PemObject as _;
use std::sync::Arc;
use tokio::sync::mpsc;

type Got = mpsc::UnboundedReceiver<(u16, NodePublicKey, Bytes)>;

fn relays_of(c: &TestControl, node: &LightNode) -> (Relays, Got, NodePublicKey) {
    let key = PrivateKey::from_bytes(
        gatehouse_mesh::MeshConfig::decode_private_key(&node.identity.wireguard_private).unwrap(),
    );
    let public = key.public();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(c.ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = Arc::new(gatehouse_ops::tls::client_config(Some(roots), &[]).unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let deliver = Arc::new(move |region, from, data| {
        let _ = tx.send((region, from, data));
    });
    (Relays::new(key, tls, deliver), rx, public)
}

async fn received(rx: &mut Got, what: &str) -> (u16, NodePublicKey, Bytes) {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
        .unwrap()
}

#[tokio::test]
async fn datagrams_go_through_the_home_relay_both_ways() {
    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    let key = c.key(Some("alice@example.com"), &[], true).await;
    let a = c.node(&key, "a").await.unwrap();
    let b = c.node(&key, "b").await.unwrap();
    let map = a.view().unwrap().relays;
    let region = map.regions[0].id;

    let (ra, mut got_a, ka) = relays_of(&c, &a);
    let (rb, mut got_b, kb) = relays_of(&c, &b);
    for r in [&ra, &rb] {
        r.set_map(&map);
        r.set_home(Some(region));
    }
    // b must be connected before a's datagram can reach it: a relay drops
    // what it cannot deliver. Send until one arrives (each try is a
    // datagram, as WireGuard's retransmissions are).
    let first = tokio::time::timeout(DEADLINE, async {
        loop {
            ra.send(region, kb, Bytes::from_static(b"hello b"));
            if let Ok(Some(x)) =
                tokio::time::timeout(std::time::Duration::from_millis(100), got_b.recv()).await
            {
                return x;
            }
        }
    })
    .await
    .expect("a's datagram reaches b through the relay");
    assert_eq!(first, (region, ka, Bytes::from_static(b"hello b")));
    rb.send(region, ka, Bytes::from_static(b"hello a"));
    assert_eq!(
        received(&mut got_a, "b's answer").await,
        (region, kb, Bytes::from_static(b"hello a"))
    );
    let status = ra.status();
    assert!(
        status[&region].connected && status[&region].home,
        "{status:?}"
    );

    // A region the map does not have: dropped and counted, nothing opened.
    let dropped = ra
        .counters()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    ra.send(4242, kb, Bytes::from_static(b"nowhere"));
    assert_eq!(
        ra.counters()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        dropped + 1
    );
    assert!(!ra.status().contains_key(&4242));

    // A map without the region closes its connection and forgets home.
    ra.set_map(&RelayMap::default());
    assert!(ra.status().is_empty());
    assert_eq!(ra.home(), None);
}
