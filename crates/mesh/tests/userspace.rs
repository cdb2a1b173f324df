//! Two and three `Mesh` instances on loopback UDP, configured as control
//! would configure them, exchanging TCP streams through their user-space
//! stacks; the filter refusing a source.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_mesh::testing::{TestNode, start_all};
use gatehouse_mesh::{Mesh, MeshStatus};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(20);

const POLICY: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:blog:80,443"]},
  ],
  "tagOwners": {"tag:blog": ["alice@example.com"], "tag:grafana": ["alice@example.com"]},
}"#;

fn world() -> Vec<TestNode> {
    vec![
        TestNode::new("laptop", 1, Some("alice@example.com"), &[]),
        TestNode::new("blog", 2, Some("alice@example.com"), &["tag:blog"]),
        TestNode::new("grafana", 3, Some("alice@example.com"), &["tag:grafana"]),
    ]
}

/// Polls `cond` on a mesh's status until it holds, failing after DEADLINE.
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn echo_server(m: &Mesh) {
    let c = tokio::time::timeout(DEADLINE, m.accept())
        .await
        .unwrap()
        .unwrap();
    let (mut r, mut w) = tokio::io::split(c.stream);
    tokio::io::copy(&mut r, &mut w).await.unwrap();
    w.shutdown().await.unwrap();
}

#[tokio::test]
async fn allowed_source_gets_a_stream_and_bytes_flow_both_ways() {
    let nodes = world();
    let meshes = start_all(POLICY, &nodes).await.unwrap();
    let (laptop, blog) = (&meshes[0], &meshes[1]);
    let server = echo_server(blog);
    let client = async {
        let mut s = tokio::time::timeout(
            DEADLINE,
            laptop.connect(SocketAddr::new(nodes[1].ip(), 443)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(s.peer_addr(), SocketAddr::new(nodes[1].ip(), 443));
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut r, mut w) = tokio::io::split(&mut s);
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let recv = async {
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::join!(send, recv);
        assert!(
            back == data,
            "echoed {} bytes, sent {}",
            back.len(),
            data.len()
        );
    };
    tokio::time::timeout(DEADLINE, async { tokio::join!(server, client) })
        .await
        .unwrap();
    let st = blog.status();
    assert!(st.counters.filter.accepted > 0);
    assert_eq!(st.counters.filter.denied, 0);
    let peer = st.peers.iter().find(|p| p.name == "laptop").unwrap();
    assert_eq!(
        peer.path.map(|p| p.to_string()),
        Some(format!("udp:{}", laptop.status().listen))
    );
    assert!(peer.last_handshake.is_some());
    for m in meshes {
        m.shutdown().await;
    }
}

#[tokio::test]
async fn accepted_connection_reports_both_ends() {
    let nodes = world();
    let meshes = start_all(POLICY, &nodes).await.unwrap();
    let (laptop, blog) = (&meshes[0], &meshes[1]);
    let (c, accepted) = tokio::join!(laptop.connect(SocketAddr::new(nodes[1].ip(), 80)), async {
        blog.accept().await.unwrap()
    });
    let c = c.unwrap();
    assert_eq!(accepted.remote, c.local_addr());
    assert_eq!(accepted.local, SocketAddr::new(nodes[1].ip(), 80));
    // IPv6 works the same way.
    let v6 = SocketAddr::new(nodes[1].addresses[1], 443);
    let (c6, a6) = tokio::join!(laptop.connect(v6), async { blog.accept().await.unwrap() });
    assert_eq!(a6.remote, c6.unwrap().local_addr());
    for m in meshes {
        m.shutdown().await;
    }
}

/// The filter drops the SYN of a denied source before any stack sees it:
/// the caller never gets a SYN-ACK (its connect stays pending), the callee
/// counts the drop and never sends the caller a single IP packet.
#[tokio::test]
async fn denied_source_never_gets_a_syn_ack() {
    let nodes = world();
    let meshes = start_all(POLICY, &nodes).await.unwrap();
    let (laptop, blog, grafana) = (&meshes[0], &meshes[1], &meshes[2]);
    for (target, node, port) in [(grafana, &nodes[2], 443), (blog, &nodes[1], 22)] {
        let before = target.status().counters.filter.denied_syn;
        let connect = laptop.connect(SocketAddr::new(node.ip(), port));
        tokio::pin!(connect);
        let watch = wait_status(target, "a second SYN dropped", |s| {
            s.counters.filter.denied_syn >= before + 2
        });
        tokio::select! {
            r = &mut connect => panic!("connect to a denied port completed: {r:?}"),
            () = watch => {}
        }
        let st = target.status();
        let to_laptop = st.peers.iter().find(|p| p.name == "laptop").unwrap();
        assert_eq!(
            to_laptop.tx_bytes, 0,
            "{} sent IP packets to the denied source",
            node.name
        );
        assert_eq!(st.sockets, 0, "no socket was made for the denied SYN");
    }
    // The session itself is up (the handshake is not what the filter stops).
    assert!(
        grafana
            .status()
            .peers
            .iter()
            .any(|p| p.name == "laptop" && p.last_handshake.is_some())
    );
    for m in meshes {
        m.shutdown().await;
    }
}

#[tokio::test]
async fn unknown_address_is_unreachable() {
    let nodes = world();
    let meshes = start_all(POLICY, &nodes).await.unwrap();
    let e = meshes[0]
        .connect("100.64.9.9:80".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::HostUnreachable);
    for m in meshes {
        m.shutdown().await;
    }
}

/// A new filter applies to the next connection: granted, then revoked.
#[tokio::test]
async fn policy_change_applies_to_new_connections() {
    let nodes = world();
    let meshes = start_all(POLICY, &nodes).await.unwrap();
    let (laptop, grafana) = (&meshes[0], &meshes[2]);
    let dst = SocketAddr::new(nodes[2].ip(), 3000);
    let granted = r#"{
      "tagOwners": {"tag:blog": ["alice@example.com"], "tag:grafana": ["alice@example.com"]},
      "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:grafana:3000"]}],
    }"#;
    gatehouse_mesh::testing::apply_all(granted, &nodes, &meshes);
    let (c, a) = tokio::join!(laptop.connect(dst), async {
        grafana.accept().await.unwrap()
    });
    let mut c = c.unwrap();
    let mut a = a.stream;
    c.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    a.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    // Revoked: the next SYN is dropped, and so are the established
    // connection's further segments.
    gatehouse_mesh::testing::apply_all(POLICY, &nodes, &meshes);
    let before = grafana.status().counters.filter.denied_syn;
    {
        let connect = laptop.connect(dst);
        tokio::pin!(connect);
        tokio::select! {
            r = &mut connect => panic!("connect after revocation completed: {r:?}"),
            () = wait_status(grafana, "a SYN dropped", |s| s.counters.filter.denied_syn > before) => {}
        }
    }
    let denied = grafana.status().counters.filter.denied;
    c.write_all(b"more").await.unwrap();
    wait_status(grafana, "the old connection's segment dropped", |s| {
        s.counters.filter.denied > denied
    })
    .await;
    drop((c, a));
    for m in meshes {
        m.shutdown().await;
    }
}

/// Streams do not outlive the data plane: after shutdown they end.
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let nodes = world();
    let mut meshes = start_all(POLICY, &nodes).await.unwrap();
    let dst = SocketAddr::new(nodes[1].ip(), 443);
    let (c, a) = tokio::join!(meshes[0].connect(dst), async {
        meshes[1].accept().await.unwrap()
    });
    let mut c = c.unwrap();
    let laptop = meshes.remove(0);
    laptop.shutdown().await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert!(c.write_all(b"x").await.is_err());
    drop(a);
    for m in meshes {
        m.shutdown().await;
    }
}

#[tokio::test]
async fn ping_round_trips_through_the_peers_data_plane() {
    let nodes = world();
    let meshes = start_all(POLICY, &nodes).await.unwrap();
    let (laptop, grafana) = (&meshes[0], &meshes[2]);
    // grafana's filter admits nothing from laptop; its data plane answers
    // the ping all the same, on both address families.
    for addr in &nodes[2].addresses {
        let rtt = laptop.ping(*addr).await.unwrap();
        assert!(rtt < DEADLINE, "{rtt:?}");
    }
    let c = grafana.status().counters;
    assert_eq!(c.echo_answered, 2);
    assert_eq!(c.filter.accepted, 0);
    let e = laptop
        .ping("100.64.0.99".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::HostUnreachable);

    // A peer whose data plane is gone does not answer.
    let blog_ip = nodes[1].ip();
    meshes[1].close().await;
    let e = laptop.ping(blog_ip).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}
