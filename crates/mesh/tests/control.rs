//! The data plane fed by a real control server (in-process, `gatehouse-
//! testkit`): nodes register, announce the endpoints their `Mesh` reports,
//! and apply the peers and filter of their map stream; then TCP flows where
//! the policy allows and is refused where it does not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_mesh::{Mesh, MeshConfig, MeshStatus, Mode};
use gatehouse_testkit::{LightNode, TestControl};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"{
  "tagOwners": {"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"]},
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:k8s:443"]}],
}"#;

async fn start(node: &LightNode) -> Mesh {
    let key = MeshConfig::decode_private_key(&node.identity.wireguard_private).unwrap();
    let mesh = Mesh::start(MeshConfig {
        private_key: key,
        addresses: node.identity.addresses.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mode: Mode::Userspace,
    })
    .await
    .unwrap();
    node.client
        .set_endpoints(&gatehouse_proto::control::EndpointsRequest::direct(
            mesh.endpoints(),
        ))
        .await
        .unwrap();
    mesh
}

/// Waits until every peer in the node's map has an endpoint, then applies the map.
async fn apply_when_ready(node: &mut LightNode, mesh: &Mesh) {
    node.wait_until("peers with endpoints", |s| {
        s.is_some_and(|s| !s.peers.is_empty() && s.peers.values().all(|p| !p.endpoints.is_empty()))
    })
    .await;
    let view = node.view().unwrap();
    let peers: Vec<_> = view.peers.values().cloned().collect();
    mesh.apply(&peers, &view.filter);
}

async fn wait_status(m: &Mesh, what: &str, cond: impl Fn(&MeshStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + gatehouse_testkit::DEADLINE;
    loop {
        if cond(&m.status()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn nodes_configured_by_control_talk_as_the_policy_says() {
    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    c.admin.set_policy(POLICY).await.unwrap();
    let mut laptop = c
        .node(
            &c.key(Some("alice@example.com"), &[], false).await,
            "laptop",
        )
        .await
        .unwrap();
    let mut blog = c
        .node(&c.key(None, &["tag:k8s"], false).await, "k8s-blog")
        .await
        .unwrap();
    let (lm, bm) = (start(&laptop).await, start(&blog).await);
    apply_when_ready(&mut laptop, &lm).await;
    apply_when_ready(&mut blog, &bm).await;

    // Allowed: laptop -> blog:443.
    let blog_ip = blog.identity.addresses[0];
    let (conn, acc) = tokio::join!(lm.connect(SocketAddr::new(blog_ip, 443)), bm.accept());
    let (mut conn, acc) = (conn.unwrap(), acc.unwrap());
    assert_eq!(acc.remote.ip(), laptop.identity.addresses[0]);
    let mut server = acc.stream;
    conn.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut req = [0u8; 18];
    server.read_exact(&mut req).await.unwrap();
    server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    let mut resp = [0u8; 19];
    conn.read_exact(&mut resp).await.unwrap();
    assert_eq!(&resp, b"HTTP/1.1 200 OK\r\n\r\n");

    // Not allowed: blog -> laptop (services do not call people), nor laptop -> blog:22.
    for (from, to, port) in [(&bm, &lm, 443u16), (&lm, &bm, 22)] {
        let ip = to.status().addresses[0];
        let before = to.status().counters.filter.denied_syn;
        let connect = from.connect(SocketAddr::new(ip, port));
        tokio::pin!(connect);
        tokio::select! {
            r = &mut connect => panic!("denied connection completed: {r:?}"),
            () = wait_status(to, "a SYN dropped", |s| s.counters.filter.denied_syn > before) => {}
        }
    }
    drop((conn, server));
    lm.shutdown().await;
    bm.shutdown().await;
}
