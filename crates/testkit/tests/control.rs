//! Control server acceptance: registration and its refusals, map streams
//! and their deltas, policy changes, restarts, certificates, the API
//! document. Real TLS on loopback; nodes are light clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_client::{AdminClient, ClientError, IdentityOrClientError, NodeClient};
use gatehouse_proto::control::{CreateKey, CreateOAuthClient};
use gatehouse_testkit::{LightNode, TestControl};
use std::net::SocketAddr;

fn api_status(e: &IdentityOrClientError) -> (u16, String) {
    match e {
        IdentityOrClientError::Client(ClientError::Api { status, message }) => {
            (*status, message.clone())
        }
        other => panic!("expected an API refusal, got {other}"),
    }
}

const POLICY_K8S_MESH: &str = r#"{
  "tagOwners": {"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"], "tag:db": []},
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:k8s:80,443"]},
    {"action": "accept", "src": ["tag:k8s"], "dst": ["tag:k8s:5432"]},
  ],
}"#;

#[tokio::test]
async fn registration_refusals_write_nothing() {
    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    let good = c.key(Some("alice@example.com"), &[], false).await;

    // Malformed and wrong keys.
    for bad in [
        "nope",
        &good.replace("authkey", "oauth"),
        // The same key with its last secret digit changed.
        &format!(
            "{}{}",
            &good[..good.len() - 1],
            if good.ends_with('0') { '1' } else { '0' }
        ),
    ] {
        let e = c.node(bad, "x").await.unwrap_err();
        assert_eq!(api_status(&e), (401, "invalid auth key".into()), "{bad}");
    }
    // A good one-off key works once.
    let n = c.node(&good, "alice-laptop").await.unwrap();
    assert_eq!(n.identity.name, "alice-laptop");
    assert_eq!(n.identity.fqdn, "alice-laptop.test.gatehouse.internal");
    let e = c.node(&good, "again").await.unwrap_err();
    assert_eq!(api_status(&e).0, 401);
    assert!(api_status(&e).1.contains("already used"), "{e}");

    // Revoked.
    let revoked = c.key(Some("alice@example.com"), &[], true).await;
    let id = c
        .admin
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| revoked.contains(&k.id))
        .unwrap()
        .id;
    c.admin.revoke_key(&id).await.unwrap();
    let e = c.node(&revoked, "r").await.unwrap_err();
    assert_eq!(api_status(&e), (401, "auth key revoked".into()));

    // Expired: wait for the clock to pass the key's expiry.
    let k = c
        .admin
        .create_key(&CreateKey {
            user: Some("alice@example.com".into()),
            tags: vec![],
            reusable: true,
            ephemeral: false,
            expiry_seconds: Some(1),
        })
        .await
        .unwrap();
    while gatehouse_control::clock::unix_now() < k.expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let e = c.node(k.key.as_deref().unwrap(), "late").await.unwrap_err();
    assert_eq!(api_status(&e), (401, "auth key expired".into()));

    // Only the one good registration was written.
    let nodes = c.admin.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    let audit = c.admin.audit(100).await.unwrap();
    let refused = audit
        .iter()
        .filter(|a| a.action == "node.register" && a.outcome == "refused")
        .count();
    assert_eq!(refused, 6, "{audit:#?}");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "node.register" && a.outcome == "ok")
    );
}

#[tokio::test]
async fn tags_only_by_their_owners() {
    let c = TestControl::start().await;
    // The starter policy: tag:k8s is owned by tag:k8s-operator.
    let client = c
        .admin
        .create_oauth(&CreateOAuthClient {
            scopes: vec!["auth_keys:write".into(), "devices:read".into()],
            tags: vec!["tag:k8s-operator".into()],
            description: "operator".into(),
        })
        .await
        .unwrap();
    let secret = client.secret.unwrap();
    let token = AdminClient::oauth_token(&c.join, &c.ca, &secret, None)
        .await
        .unwrap();
    assert_eq!(token.token_type, "bearer");
    let op = AdminClient::new(c.join.clone(), &c.ca, &token.access_token).unwrap();
    // Scopes are enforced.
    let e = op.users().await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 403, .. }), "{e}");
    // It may mint keys for tag:k8s ...
    let key = op
        .create_key(&CreateKey {
            user: None,
            tags: vec!["tag:k8s".into()],
            reusable: true,
            ephemeral: false,
            expiry_seconds: None,
        })
        .await
        .unwrap();
    // ... but not for a tag it does not own, nor untagged keys.
    let e = op
        .create_key(&CreateKey {
            user: None,
            tags: vec!["tag:k8s-operator".into()],
            reusable: false,
            ephemeral: false,
            expiry_seconds: None,
        })
        .await;
    assert!(e.is_ok(), "a client may apply its own tag: {e:?}");
    c.admin.set_policy(r#"{"tagOwners": {"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"], "tag:other": []}}"#).await.unwrap();
    let e = op
        .create_key(&CreateKey {
            user: None,
            tags: vec!["tag:other".into()],
            reusable: false,
            ephemeral: false,
            expiry_seconds: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 403, message } if message.contains("not owned")),
        "{e}"
    );
    let e = op
        .create_key(&CreateKey {
            user: Some("x@y.z".into()),
            tags: vec![],
            reusable: false,
            ephemeral: false,
            expiry_seconds: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 400, .. }), "{e}");

    let k = key.key.unwrap();
    let svc = c.node(&k, "k8s-grafana").await.unwrap();
    assert_eq!(c.admin.nodes().await.unwrap()[0].node.tags, vec!["tag:k8s"]);
    drop(svc);
    // The policy changes: tag:k8s is no longer owned by the operator. The
    // key it minted can no longer register a node.
    c.admin
        .set_policy(r#"{"tagOwners": {"tag:k8s-operator": [], "tag:k8s": []}}"#)
        .await
        .unwrap();
    let e = c.node(&k, "k8s-blog").await.unwrap_err();
    let (status, msg) = api_status(&e);
    assert_eq!(status, 403);
    assert!(
        msg.contains("tag:k8s is not owned by the key's creator"),
        "{msg}"
    );
    assert_eq!(c.admin.nodes().await.unwrap().len(), 1);
    // Revoking the client revokes its tokens.
    c.admin.revoke_oauth(&client.id).await.unwrap();
    assert!(matches!(
        op.keys().await.unwrap_err(),
        ClientError::Api { status: 401, .. }
    ));
    assert!(matches!(
        AdminClient::oauth_token(&c.join, &c.ca, &secret, None)
            .await
            .unwrap_err(),
        ClientError::Api { status: 401, .. }
    ));
}

async fn three_nodes(c: &TestControl) -> (LightNode, LightNode, LightNode) {
    c.admin.create_user("alice@example.com").await.unwrap();
    c.admin.set_policy(POLICY_K8S_MESH).await.unwrap();
    let alice = c
        .node(
            &c.key(Some("alice@example.com"), &[], false).await,
            "alice-laptop",
        )
        .await
        .unwrap();
    let k = c.key(None, &["tag:k8s"], true).await;
    let grafana = c.node(&k, "k8s-grafana").await.unwrap();
    let blog = c.node(&k, "k8s-blog").await.unwrap();
    (alice, grafana, blog)
}

#[tokio::test]
async fn netmaps_hold_exactly_the_allowed_peers_and_follow_changes() {
    let c = TestControl::start().await;
    let (mut alice, mut grafana, mut blog) = three_nodes(&c).await;
    alice.wait_peers(&["k8s-blog", "k8s-grafana"]).await;
    grafana.wait_peers(&["alice-laptop", "k8s-blog"]).await;
    blog.wait_peers(&["alice-laptop", "k8s-grafana"]).await;
    let v = grafana.view().unwrap();
    assert!(
        v.filter
            .rules
            .iter()
            .any(|r| r.dst_ports.iter().any(|d| d.ports.first == 443))
    );
    assert_eq!(v.dns.domain, "test.gatehouse.internal");
    assert_eq!(v.self_node.node.fqdn, "k8s-grafana.test.gatehouse.internal");

    // Policy change: services no longer talk to each other.
    c.admin
        .set_policy(
            r#"{"tagOwners": {"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"]},
            "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:k8s:443"]}]}"#,
        )
        .await
        .unwrap();
    grafana.wait_peers(&["alice-laptop"]).await;
    blog.wait_peers(&["alice-laptop"]).await;
    grafana
        .wait_until("filter without 5432 and 80", |s| {
            s.is_some_and(|s| {
                s.filter
                    .rules
                    .iter()
                    .all(|r| r.dst_ports.iter().all(|d| d.ports.first == 443))
            })
        })
        .await;

    // Invalid policies are refused whole; the old one stays.
    let before = c.admin.policy().await.unwrap();
    let e = c
        .admin
        .set_policy(r#"{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 400, message } if message.contains("not supported")),
        "{e}"
    );
    let e = c
        .admin
        .set_policy(r#"{"tagOwners": {"tag:k8s-operator": [], "tag:k8s": []}, "tests": [{"src": "alice@example.com", "accept": ["tag:k8s:443"]}]}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 400, message } if message.contains("tests[0]")),
        "{e}"
    );
    assert_eq!(c.admin.policy().await.unwrap(), before);
    assert_eq!(alice.peer_names(), vec!["k8s-blog", "k8s-grafana"]);

    // Endpoint change reaches the peers.
    let ep: SocketAddr = "192.0.2.7:41641".parse().unwrap();
    blog.client
        .set_endpoints(&gatehouse_proto::control::EndpointsRequest::direct(vec![
            ep,
        ]))
        .await
        .unwrap();
    alice
        .wait_until("blog's endpoint", |s| {
            s.is_some_and(|s| {
                s.peers
                    .values()
                    .any(|p| p.name == "k8s-blog" && p.endpoints == vec![ep])
            })
        })
        .await;

    // Node delete: gone from peers, its stream closed, its credential refused.
    c.admin.delete_node("k8s-blog").await.unwrap();
    alice.wait_peers(&["k8s-grafana"]).await;
    blog.wait_until("stream closed", |s| s.is_none()).await;
    let e = blog.client.map().await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 401, .. }), "{e}");

    // Expire: same for the peers.
    c.admin.expire_node("k8s-grafana").await.unwrap();
    alice.wait_peers(&[]).await;
    grafana.wait_until("stream closed", |s| s.is_none()).await;
}

#[tokio::test]
async fn nodes_keep_a_tag_the_policy_no_longer_declares() {
    let mut c = TestControl::start().await;
    let (mut alice, mut grafana, blog) = three_nodes(&c).await;
    alice.wait_peers(&["k8s-blog", "k8s-grafana"]).await;
    grafana.wait_peers(&["alice-laptop", "k8s-blog"]).await;
    // tag:k8s, which grafana and blog carry, is no longer declared: the
    // policy is accepted and the nodes stay tagged (in autogroup:tagged,
    // in no user's devices).
    c.admin
        .set_policy(
            r#"{"tagOwners": {"tag:k8s-operator": []},
            "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:tagged:443"]},
                     {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:member:*"]}]}"#,
        )
        .await
        .unwrap();
    grafana.wait_peers(&["alice-laptop"]).await;
    grafana
        .wait_until("a filter opening 443 to alice", |s| {
            s.is_some_and(|s| {
                !s.filter.rules.is_empty()
                    && s.filter
                        .rules
                        .iter()
                        .all(|r| r.dst_ports.iter().all(|d| d.ports.first == 443))
            })
        })
        .await;
    alice.wait_peers(&["k8s-blog", "k8s-grafana"]).await;
    let tags: Vec<(String, Vec<String>)> = c
        .admin
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.node.name, n.node.tags))
        .collect();
    assert!(
        tags.contains(&("k8s-grafana".into(), vec!["tag:k8s".into()])),
        "{tags:?}"
    );
    // A restart loads the stored policy and nodes and serves maps again.
    let (alice_id, grafana_id) = (alice.identity.clone(), grafana.identity.clone());
    drop((alice, grafana, blog));
    c.restart().await;
    let mut alice = LightNode::connect(alice_id).await.unwrap();
    alice.wait_peers(&["k8s-blog", "k8s-grafana"]).await;
    let mut grafana = LightNode::connect(grafana_id).await.unwrap();
    grafana.wait_peers(&["alice-laptop"]).await;
    // Declared again, rules naming the tag select the nodes that kept it:
    // tag:k8s to tag:k8s on 5432.
    c.admin.set_policy(POLICY_K8S_MESH).await.unwrap();
    grafana.wait_peers(&["alice-laptop", "k8s-blog"]).await;
    grafana
        .wait_until("a filter opening 5432 to tag:k8s", |s| {
            s.is_some_and(|s| {
                s.filter
                    .rules
                    .iter()
                    .any(|r| r.dst_ports.iter().any(|d| d.ports.first == 5432))
            })
        })
        .await;
}

#[tokio::test]
async fn restart_keeps_state_and_credentials() {
    let mut c = TestControl::start().await;
    let (alice, grafana, _blog) = three_nodes(&c).await;
    let alice_id = alice.identity.clone();
    let before: Vec<(String, Vec<std::net::IpAddr>)> = c
        .admin
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.node.name, n.node.addresses))
        .collect();
    drop(alice);
    drop(grafana);
    c.restart().await;
    // The same credential still works, the map resumes.
    let mut alice = LightNode::connect(alice_id).await.unwrap();
    alice.wait_peers(&["k8s-blog", "k8s-grafana"]).await;
    let after: Vec<(String, Vec<std::net::IpAddr>)> = c
        .admin
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.node.name, n.node.addresses))
        .collect();
    assert_eq!(before, after);
    // New registrations get fresh names and addresses.
    let k = c.key(None, &["tag:k8s"], true).await;
    let again = c.node(&k, "k8s-grafana").await.unwrap();
    assert_eq!(again.identity.name, "k8s-grafana-1");
    let all = c.admin.nodes().await.unwrap();
    let mut addrs: Vec<_> = all.iter().flat_map(|n| n.node.addresses.clone()).collect();
    let n = addrs.len();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), n, "duplicate addresses");
    // The admin token was created once: the restart printed none.
    assert!(c.info.new_admin_token.is_none());
}

#[tokio::test]
async fn map_stream_requires_a_machine_certificate() {
    let c = TestControl::start().await;
    // A client without a certificate cannot open a map.
    let mut ident = {
        c.admin.create_user("bob@example.com").await.unwrap();
        let n = c
            .node(&c.key(Some("bob@example.com"), &[], false).await, "bob")
            .await
            .unwrap();
        n.identity.clone()
    };
    // Another CA's certificate is refused in the handshake.
    let other = TestControl::start().await;
    other.admin.create_user("eve@example.com").await.unwrap();
    let eve = other
        .node(&other.key(Some("eve@example.com"), &[], false).await, "eve")
        .await
        .unwrap();
    ident.machine_cert = eve.identity.machine_cert.clone();
    ident.machine_key = eve.identity.machine_key.clone();
    let e = NodeClient::new(&ident).unwrap().map().await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Transport(_) | ClientError::Tls(_) | ClientError::Api { status: 401, .. }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn renewal_delivers_a_new_serving_certificate() {
    let c = TestControl::start().await;
    let (mut alice, _g, _b) = three_nodes(&c).await;
    let old = alice.view().unwrap().self_node.serving_cert;
    let csr = alice.identity.serving_csr().unwrap();
    let new = alice.client.renew(&csr).await.unwrap();
    assert_ne!(old, new);
    let n = new.clone();
    alice
        .wait_until("self update with the new cert", move |s| {
            s.is_some_and(|s| s.self_node.serving_cert == n)
        })
        .await;
}

#[tokio::test]
async fn pin_mismatch_is_refused() {
    let c = TestControl::start().await;
    let mut join = c.join.clone();
    join.ca_sha256 = Some("00".repeat(32));
    let e = gatehouse_client::fetch_pinned_ca(&join).await.unwrap_err();
    let why = gatehouse_ops::chain(&e);
    assert!(why.contains("pinned hash"), "{why}");
    assert_eq!(
        gatehouse_client::ca_fingerprint(&c.ca).unwrap(),
        c.info.ca_fingerprint
    );
}

#[tokio::test]
async fn keys_expire_on_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = gatehouse_testkit::config(tmp.path());
    cfg.node_key_lifetime = std::time::Duration::from_secs(3);
    let c = TestControl::start_with(cfg, Some(tmp)).await;
    let (mut alice, _g, _b) = three_nodes(&c).await;
    alice.wait_peers(&["k8s-blog", "k8s-grafana"]).await;
    // No admin action: the keys reach their expiry and the nodes leave.
    alice
        .wait_until("own stream closed at key expiry", |s| s.is_none())
        .await;
    let audit = c.admin.audit(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "node.expire" && a.actor == "control"),
        "{audit:#?}"
    );
}

#[tokio::test]
async fn renewed_certificates_have_new_serial_numbers() {
    let c = TestControl::start().await;
    let (alice, _g, _b) = three_nodes(&c).await;
    let csr = alice.identity.serving_csr().unwrap();
    let a = alice.client.renew(&csr).await.unwrap();
    let b = alice.client.renew(&csr).await.unwrap();
    let serial = |pem: &str| {
        let der = gatehouse_control::ca::pem_to_der(pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.tbs_certificate.serial.clone()
    };
    assert_ne!(serial(&a), serial(&b));
    assert_ne!(serial(&a), serial(&alice.identity.serving_cert));
}
