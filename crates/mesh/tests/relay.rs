//! Paths through relays and disco, with real `Mesh` instances on loopback
//! UDP. A small forwarder task stands in for the relay server: it takes
//! what each mesh hands to its relay link and delivers it to the mesh with
//! the destination key, naming the sender's key, as a relay does (the
//! node's real relay client and server are tested in `gatehouse-node` and
//! `gatehouse-relay`). A UDP proxy between the two meshes is their only
//! direct path, and can drop everything to cut it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_disco::{NodePublicKey, stun};
use gatehouse_mesh::testing::{TestNode, filters};
use gatehouse_mesh::udp::Udp;
use gatehouse_mesh::{Mesh, MeshConfig, MeshStatus, Mode, Path, PeerStatus, Transmit};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

const DEADLINE: Duration = Duration::from_secs(40);
const REGION: u16 = 7;

const POLICY: &str = r#"{
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:blog:443"]}],
  "tagOwners": {"tag:blog": ["alice@example.com"]},
}"#;

fn nodes() -> Vec<TestNode> {
    vec![
        TestNode::new("laptop", 1, Some("alice@example.com"), &[]),
        TestNode::new("blog", 2, Some("alice@example.com"), &["tag:blog"]),
    ]
}

fn node_key(n: &TestNode) -> NodePublicKey {
    gatehouse_mesh::public_key(&n.private_key).parse().unwrap()
}

/// Every datagram each mesh hands to its relay link, delivered to the mesh
/// with the destination key. Returns the count of datagrams carried.
fn relay(nodes: &[TestNode], meshes: &[Arc<Mesh>]) -> Arc<AtomicU64> {
    let carried = Arc::new(AtomicU64::new(0));
    let keys: Vec<NodePublicKey> = nodes.iter().map(node_key).collect();
    for (i, m) in meshes.iter().enumerate() {
        let mut rx = m.relay_link().expect("relay link taken once");
        assert!(m.relay_link().is_none());
        let (keys, meshes, carried) = (keys.clone(), meshes.to_vec(), Arc::clone(&carried));
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                assert_eq!(out.region, REGION, "sent to the peer's home relay");
                if let Some(j) = keys.iter().position(|k| *k == out.to) {
                    carried.fetch_add(1, Ordering::Relaxed);
                    meshes[j].relay_received(out.region, keys[i], &out.payload);
                }
            }
        });
    }
    carried
}

/// A UDP proxy between two meshes: each sees the other at the proxy's
/// address. `drop` set: everything is dropped (the direct path is cut).
struct Proxy {
    addr: SocketAddr,
    drop: Arc<AtomicBool>,
}

async fn proxy(a: SocketAddr, b: SocketAddr, drop: bool) -> Proxy {
    // The mesh's own batched socket, so the proxy keeps up with a stream.
    let mut sock = Udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    let flag = Arc::new(AtomicBool::new(drop));
    let d = Arc::clone(&flag);
    tokio::spawn(async move {
        let mut out: Vec<Transmit> = Vec::new();
        while sock.readable().await.is_ok() {
            let r = sock.try_recv(|from, data| {
                let to = if from == a {
                    b
                } else if from == b {
                    a
                } else {
                    return;
                };
                if !d.load(Ordering::Relaxed) {
                    out.push(Transmit {
                        path: Path::Direct(to),
                        payload: data.to_vec(),
                        to: None,
                    });
                }
            });
            if r.is_err() {
                break;
            }
            sock.send_all(&out).await;
            out.clear();
        }
    });
    Proxy { addr, drop: flag }
}

/// Starts the meshes; each sees the other at `endpoint_of(j)`, with its
/// disco key and home relay [`REGION`], and lists only that address in its
/// CallMeMaybe messages (so no path bypasses the proxy or the blackhole).
async fn start(nodes: &[TestNode]) -> Vec<Arc<Mesh>> {
    let mut v = Vec::new();
    for n in nodes {
        v.push(Arc::new(n.start().await.unwrap()));
    }
    v
}

fn configure(nodes: &[TestNode], meshes: &[Arc<Mesh>], endpoint_of: impl Fn(usize) -> SocketAddr) {
    let filters = filters(POLICY, nodes);
    for (i, m) in meshes.iter().enumerate() {
        let peers: Vec<_> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, n)| {
                let mut p = n.peer(Some(endpoint_of(j)));
                p.disco_key = Some(meshes[j].disco_public().to_string());
                p.home_relay = Some(REGION);
                p
            })
            .collect();
        m.set_endpoints_for_disco(vec![endpoint_of(i)]);
        m.set_home_relay(Some(REGION));
        m.apply(&peers, &filters[i]);
    }
}

fn peer<'a>(s: &'a MeshStatus, name: &str) -> &'a PeerStatus {
    s.peers.iter().find(|p| p.name == name).unwrap()
}

async fn wait_status(m: &Mesh, what: &str, cond: impl Fn(&MeshStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = m.status();
        if cond(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i * 31 % 253) as u8).collect()
}

/// A stream from laptop to blog:443 carrying `data`; between its halves
/// (after blog received the first half), `middle` runs. Checks the bytes.
async fn transfer_with<F: std::future::Future<Output = ()>>(
    nodes: &[TestNode],
    meshes: &[Arc<Mesh>],
    data: &[u8],
    middle: impl FnOnce() -> F,
) {
    let half = data.len() / 2;
    let (got_half_tx, got_half_rx) = tokio::sync::oneshot::channel::<()>();
    let server = async {
        let c = meshes[1].accept().await.unwrap();
        let mut s = c.stream;
        let mut back = vec![0u8; half];
        s.read_exact(&mut back).await.unwrap();
        got_half_tx.send(()).unwrap();
        s.read_to_end(&mut back).await.unwrap();
        back
    };
    let client = async {
        let mut s = meshes[0]
            .connect(SocketAddr::new(nodes[1].ip(), 443))
            .await
            .unwrap();
        s.write_all(&data[..half]).await.unwrap();
        got_half_rx.await.unwrap();
        middle().await;
        s.write_all(&data[half..]).await.unwrap();
        s.shutdown().await.unwrap();
    };
    let (back, ()) = tokio::time::timeout(DEADLINE * 2, async { tokio::join!(server, client) })
        .await
        .expect("transfer timed out");
    assert!(
        back == data,
        "received {} bytes, sent {}",
        back.len(),
        data.len()
    );
}

async fn shutdown(meshes: Vec<Arc<Mesh>>) {
    for m in meshes {
        m.close().await;
    }
}

/// Direct endpoints lead nowhere (a socket that never answers): the
/// stream runs through the relay from its first packet, and disco pings
/// through the relay are answered.
#[tokio::test]
async fn without_a_direct_path_traffic_flows_through_the_relay() {
    let nodes = nodes();
    let meshes = start(&nodes).await;
    let blackhole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole = blackhole.local_addr().unwrap();
    let carried = relay(&nodes, &meshes);
    configure(&nodes, &meshes, |_| hole);
    let data = pattern(1_000_000);
    transfer_with(&nodes, &meshes, &data, || async {}).await;
    assert!(carried.load(Ordering::Relaxed) > 0);
    for (m, other) in [(&meshes[0], "blog"), (&meshes[1], "laptop")] {
        let s = m.status();
        let p = peer(&s, other);
        assert_eq!(p.path, Some(Path::Relay(REGION)), "{p:#?}");
        assert!(p.reachable && p.reachable_since.is_some(), "{p:#?}");
        assert_eq!(p.home_relay, Some(REGION));
        assert!(s.counters.relay_tx_bytes > 0 && s.counters.relay_rx_bytes > 0);
        assert_eq!(s.counters.direct_rx_bytes, 0, "nothing came over UDP");
        assert!(s.counters.disco_pings_sent > 0, "the blackhole was pinged");
        assert!(s.counters.call_me_maybe_sent > 0);
        assert_eq!(s.home_relay, Some(REGION));
    }
    // `gatehouse node ping`: the only pong comes through the relay.
    let (rtt, path) = meshes[0].disco_ping(nodes[1].ip()).await.unwrap();
    assert_eq!(path, Path::Relay(REGION));
    assert!(rtt < DEADLINE);
    assert_eq!(
        meshes[0]
            .disco_ping("100.64.0.99".parse().unwrap())
            .await
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::HostUnreachable
    );
    // A relay delivering from a key of no peer: dropped and counted.
    let before = meshes[1].status().counters;
    meshes[1].relay_received(REGION, NodePublicKey([9; 32]), &[4, 0, 0, 0, 1, 2, 3]);
    let after = meshes[1].status().counters;
    assert_eq!(after.relay_unknown_sender, before.relay_unknown_sender + 1);
    assert_eq!(after.relay_rx_bytes, before.relay_rx_bytes);
    drop(blackhole);
    shutdown(meshes).await;
}

/// The direct path opens mid-stream: pongs prove it, data moves there, and
/// the stream completes.
#[tokio::test]
async fn path_upgrades_to_direct_mid_stream() {
    let nodes = nodes();
    let meshes = start(&nodes).await;
    let px = proxy(meshes[0].status().listen, meshes[1].status().listen, true).await;
    relay(&nodes, &meshes);
    configure(&nodes, &meshes, |_| px.addr);
    let data = pattern(4_000_000);
    let direct_rx_at_switch = Arc::new(AtomicU64::new(0));
    transfer_with(&nodes, &meshes, &data, || async {
        for (m, other) in [(&meshes[0], "blog"), (&meshes[1], "laptop")] {
            assert_eq!(peer(&m.status(), other).path, Some(Path::Relay(REGION)));
        }
        assert_eq!(meshes[1].status().counters.direct_rx_bytes, 0);
        px.drop.store(false, Ordering::Relaxed);
        for (m, other) in [(&meshes[0], "blog"), (&meshes[1], "laptop")] {
            wait_status(m, "a direct path", |s| {
                peer(s, other).path == Some(Path::Direct(px.addr))
            })
            .await;
        }
        direct_rx_at_switch.store(
            meshes[1].status().counters.direct_rx_bytes,
            Ordering::Relaxed,
        );
    })
    .await;
    let s = meshes[1].status();
    // The second half (2 MB) came over UDP.
    assert!(
        s.counters.direct_rx_bytes > direct_rx_at_switch.load(Ordering::Relaxed) + 2_000_000,
        "{:#?}",
        s.counters
    );
    let p = peer(&s, "laptop");
    assert!(p.latency.is_some(), "{p:#?}");
    assert!(meshes[0].status().counters.path_changes >= 1);
    shutdown(meshes).await;
}

/// The direct path is cut mid-stream: trust lapses without pongs, data
/// falls back to the relay in the same WireGuard session, and the stream
/// completes.
#[tokio::test]
async fn cut_direct_path_falls_back_to_the_relay_mid_stream() {
    let nodes = nodes();
    let meshes = start(&nodes).await;
    let px = proxy(meshes[0].status().listen, meshes[1].status().listen, false).await;
    relay(&nodes, &meshes);
    configure(&nodes, &meshes, |_| px.addr);
    let data = pattern(4_000_000);
    let handshakes = Arc::new(AtomicU64::new(0));
    transfer_with(&nodes, &meshes, &data, || async {
        for (m, other) in [(&meshes[0], "blog"), (&meshes[1], "laptop")] {
            wait_status(m, "a direct path", |s| {
                peer(s, other).path == Some(Path::Direct(px.addr))
            })
            .await;
        }
        handshakes.store(meshes[0].status().counters.handshakes, Ordering::Relaxed);
        px.drop.store(true, Ordering::Relaxed);
        for (m, other) in [(&meshes[0], "blog"), (&meshes[1], "laptop")] {
            wait_status(m, "the fall back to the relay", |s| {
                peer(s, other).path == Some(Path::Relay(REGION))
            })
            .await;
        }
    })
    .await;
    let s = meshes[0].status();
    assert!(s.counters.path_changes >= 2, "{:#?}", s.counters);
    // The same WireGuard session carried the stream across the change.
    assert_eq!(s.counters.handshakes, handshakes.load(Ordering::Relaxed));
    assert!(peer(&s, "blog").reachable);
    shutdown(meshes).await;
}

/// STUN from the mesh socket: the responder's answer names the socket's
/// address; a region that never answers is absent.
#[tokio::test]
async fn netcheck_finds_the_reflexive_address_and_region_latency() {
    let nodes = nodes();
    let m = nodes[0].start().await.unwrap();
    let responder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stun_addr = responder.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let a = Arc::clone(&answered);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        while let Ok((n, from)) = responder.recv_from(&mut buf).await {
            if let Ok(tx) = stun::parse_binding_request(&buf[..n]) {
                a.fetch_add(1, Ordering::Relaxed);
                let _ = responder
                    .send_to(&stun::binding_response(&tx, from), from)
                    .await;
            }
        }
    });
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let report = m
        .netcheck(
            vec![(1, stun_addr), (2, silent.local_addr().unwrap())],
            Duration::from_secs(1),
        )
        .await;
    let listen = m.status().listen;
    assert_eq!(report.reflexive, vec![listen]);
    assert_eq!(report.latency.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert!(answered.load(Ordering::Relaxed) >= 1);
    assert!(m.status().disco_endpoints.contains(&listen));
    // Nothing answers at all: an empty report.
    let report = m
        .netcheck(
            vec![(2, silent.local_addr().unwrap())],
            Duration::from_millis(300),
        )
        .await;
    assert!(report.reflexive.is_empty() && report.latency.is_empty());
    m.shutdown().await;
}

/// Bound to every address, the mesh announces no loopback or link-local
/// address; bound to one, it announces that one.
#[tokio::test]
async fn endpoints_exclude_loopback_and_link_local() {
    let n = &nodes()[0];
    let m = Mesh::start(MeshConfig::new(n.private_key, n.addresses.clone()))
        .await
        .unwrap();
    for e in m.endpoints() {
        let ok = match e.ip() {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
            IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
        };
        assert!(ok, "announced {e}");
    }
    m.shutdown().await;
    let m = Mesh::start(MeshConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        mode: Mode::Userspace,
        ..MeshConfig::new(n.private_key, n.addresses.clone())
    })
    .await
    .unwrap();
    assert_eq!(m.endpoints(), vec![m.status().listen]);
    m.shutdown().await;
}
