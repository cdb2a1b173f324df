//! `gatehouse relay` as a process, learning its nodes from a real control
//! through an OAuth client that may only read devices: the network's nodes
//! relay packets to each other, a stranger is refused, a node deleted in
//! control is disconnected, STUN answers over real UDP, the operations
//! endpoints report it, and SIGTERM tells clients it restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use bytes::Bytes;
use gatehouse_client::NodeClient;
use gatehouse_proto::control::CreateOAuthClient;
use gatehouse_relay::client::{ClientConfig, Connection};
use gatehouse_relay::{Frame, PrivateKey};
use gatehouse_testkit::process::Proc;
use gatehouse_testkit::{TestControl, free_port, wait_for};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(20);

async fn get(url: &str) -> Option<(u16, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

fn relay_tls(cert_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(gatehouse_ops_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn gatehouse_ops_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_process_admits_the_networks_nodes() {
    let control = TestControl::start().await;
    let secret = control
        .admin
        .create_oauth(&CreateOAuthClient {
            scopes: vec!["devices:read".into()],
            tags: vec![],
            description: "relay".into(),
        })
        .await
        .unwrap()
        .secret
        .unwrap();
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    let key = control.key(Some("alice@example.com"), &[], true).await;
    let mut nodes = vec![];
    for name in ["laptop", "phone"] {
        let id = NodeClient::register(&control.join, &control.ca, &key, name)
            .await
            .unwrap();
        let wg: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(&id.wireguard_private)
            .unwrap()
            .try_into()
            .unwrap();
        nodes.push((id.node_id.clone(), PrivateKey::from_bytes(wg)));
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oauth"), &secret).unwrap();
    let (https, stun, ops) = (free_port(), free_port(), free_port());
    let join = control.info.join.clone();
    std::fs::write(
        dir.path().join("relay.yaml"),
        format!(
            "listen: 127.0.0.1:{https}\nstun: 127.0.0.1:{stun}\nops: 127.0.0.1:{ops}\n\
             state: {state}\nhostname: 127.0.0.1\ntls: {{ self_signed: true }}\n\
             region: {{ id: 900, code: own, name: Own relay }}\n\
             control: {{ join: \"{join}\", credential: \"file:{oauth}\", poll: 200ms }}\n",
            state = dir.path().join("state").display(),
            oauth = dir.path().join("oauth").display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["relay", "--config"])
        .arg(dir.path().join("relay.yaml"));
    let mut relay = Proc::start("relay", dir.path(), cmd);
    let ops_url = format!("http://127.0.0.1:{ops}");
    wait_for("the relay to be ready", DEADLINE, || async {
        get(&format!("{ops_url}/readyz"))
            .await
            .filter(|r| r.0 == 200)
    })
    .await;
    let cert = std::fs::read_to_string(dir.path().join("state/relay.crt")).unwrap();
    let cfg = ClientConfig::new(format!("https://127.0.0.1:{https}"), relay_tls(&cert));
    let log = std::fs::read_to_string(&relay.log).unwrap();
    assert!(log.contains("region 900 (own, Own relay)"), "{log}");

    // The two nodes relay to each other.
    let (laptop, phone) = (&nodes[0].1, &nodes[1].1);
    let mut a = Connection::connect(&cfg, laptop).await.unwrap();
    let mut b = Connection::connect(&cfg, phone).await.unwrap();
    assert!(log.contains(&a.server_key().to_nodekey_string()), "{log}");
    a.send(&[Frame::SendPacket {
        dst: phone.public(),
        packet: Bytes::from_static(b"hello"),
    }])
    .await
    .unwrap();
    let got = loop {
        match tokio::time::timeout(DEADLINE, b.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Frame::KeepAlive => continue,
            f => break f,
        }
    };
    assert_eq!(
        got,
        Frame::RecvPacket {
            src: laptop.public(),
            packet: Bytes::from_static(b"hello")
        }
    );

    // A key control does not know is refused.
    assert!(
        Connection::connect(&cfg, &PrivateKey::generate())
            .await
            .is_err()
    );

    // STUN over real UDP tells the sender its address.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tx = gatehouse_disco::stun::new_tx_id();
    sock.send_to(
        &gatehouse_disco::stun::binding_request(&tx),
        ("127.0.0.1", stun),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(DEADLINE, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        gatehouse_disco::stun::parse_binding_response(&buf[..n]).unwrap(),
        (tx, sock.local_addr().unwrap())
    );

    // Deleting the phone in control disconnects it, and it cannot return.
    control.admin.delete_node(&nodes[1].0).await.unwrap();
    tokio::time::timeout(DEADLINE, async { while b.recv().await.is_ok() {} })
        .await
        .expect("the deleted node's connection closes");
    assert!(Connection::connect(&cfg, phone).await.is_err());

    let (code, metrics) = get(&format!("{ops_url}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    for want in [
        "gatehouse_relay_clients 1",
        "gatehouse_relay_packets_relayed_total 1",
        "gatehouse_relay_stun_answered_total 1",
        "gatehouse_relay_closed_total{reason=\"revoked\"} 1",
        "gatehouse_relay_refused_total{reason=\"not_admitted\"} 2",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }

    // SIGTERM: the connected client is told the relay restarts.
    relay.signal("TERM");
    let f = loop {
        match tokio::time::timeout(DEADLINE, a.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Frame::KeepAlive => continue,
            f => break f,
        }
    };
    assert!(matches!(f, Frame::Restarting { .. }), "{f:?}");
    assert!(relay.wait(), "the relay exits cleanly");
}
