//! Control under abuse, with real TLS on loopback: a flood of bad
//! registrations (bounded database, 429 with Retry-After, other sources
//! unaffected), audit retention, OAuth clients confined to their own keys,
//! names reserved for tagged nodes, endpoints nobody can use, and the
//! reconnect hint a gracefully stopping control sends its map streams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_client::{AdminClient, ClientError, IdentityOrClientError, NodeClient};
use gatehouse_proto::control::{CreateKey, CreateOAuthClient, MapMessage, RegisterRequest};
use gatehouse_testkit::{DEADLINE, TestControl, config, wait_for};
use std::path::Path;
use std::time::Duration;

fn status_of(e: &ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => *status,
        other => panic!("expected an API refusal, got {other}"),
    }
}

fn reg_status(e: &IdentityOrClientError) -> u16 {
    match e {
        IdentityOrClientError::Client(c) => status_of(c),
        other => panic!("expected an API refusal, got {other}"),
    }
}

/// Bytes of the database and its write-ahead log.
fn db_size(dir: &Path) -> u64 {
    ["control.db", "control.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// `curl` from a chosen loopback source address: status, headers, body.
async fn curl_from(
    source: &str,
    control: &TestControl,
    path: &str,
    token: &str,
) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &control.ca).unwrap();
    let headers = dir.path().join("headers");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--interface", source, "--cacert"])
        .arg(&ca)
        .arg("-D")
        .arg(&headers)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{}{path}", control.join.url()))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        std::fs::read_to_string(&headers).unwrap_or_default(),
        body.to_string(),
    )
}

fn admin_token(control: &TestControl) -> String {
    std::fs::read_to_string(&control.info.admin_token_file)
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_registrations_is_bounded_and_stays_local() {
    let control = TestControl::start().await;
    let before = db_size(&control.dir);
    let audit_before = control.admin.audit(10_000).await.unwrap().len();
    // Registrations with a bad key and a huge host name, and with a bad key
    // and a plausible host name, from 127.0.0.1.
    let huge = "a".repeat(900 * 1024);
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..120 {
        let req = RegisterRequest {
            auth_key: "gh-authkey-000000000000-bad".into(),
            hostname: if i % 2 == 0 {
                huge.clone()
            } else {
                format!("h{i}")
            },
            wireguard_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            machine_csr: "x".into(),
            serving_csr: "x".into(),
            shared_name: false,
            version: String::new(),
        };
        let e = gatehouse_client::register(&control.join, &control.ca, &req)
            .await
            .unwrap_err();
        let code = match e {
            // Answered 429 before its body was read: the upload is cut off.
            ClientError::Transport(_) if i % 2 == 0 => 429,
            e => status_of(&e),
        };
        *seen.entry(code).or_default() += 1;
    }
    // The huge names were refused before any lookup (400), the bad keys
    // with 401, until the source ran out of refusals: then 429.
    assert!(seen.get(&400).is_some_and(|n| *n > 0), "{seen:?}");
    assert!(seen.get(&401).is_some_and(|n| *n > 0), "{seen:?}");
    assert!(seen.get(&429).is_some_and(|n| *n >= 80), "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 120);

    // The audit log holds only the bad-key refusals, each bounded.
    let audit = control.admin.audit(10_000).await;
    // (127.0.0.1 is rate-limited now, so read it from another source.)
    assert_eq!(status_of(&audit.unwrap_err()), 429);
    let token = admin_token(&control);
    let (code, _, body) =
        curl_from("127.0.0.2", &control, "/api/v1/audit?limit=10000", &token).await;
    assert_eq!(code, 200, "{body}");
    let entries: Vec<gatehouse_proto::control::AuditEntry> = serde_json::from_str(&body).unwrap();
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "node.register" && e.outcome == "refused")
        .collect();
    assert_eq!(refused.len(), seen[&401], "{refused:#?}");
    assert!(entries.len() - audit_before <= seen[&401] + 1);
    assert!(
        entries
            .iter()
            .all(|e| e.target.len() <= 256 && e.detail.len() <= 4096)
    );
    // The database barely grew (the huge names were never stored).
    let grown = db_size(&control.dir).saturating_sub(before);
    assert!(grown < 512 * 1024, "database grew by {grown} bytes");

    // The limited source is told when to come back. (On a slow machine the
    // budget may have refilled a little since the flood: refused requests
    // spend it again.)
    let mut last = (0, String::new(), String::new());
    for _ in 0..40 {
        last = curl_from("127.0.0.1", &control, "/api/v1/nodes", "not-a-token").await;
        if last.0 != 401 {
            break;
        }
    }
    let (code, headers, body) = last;
    assert_eq!(code, 429, "{body}");
    let retry: u64 = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_string())
        })
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(body.contains("too many refused requests"), "{body}");
    // Another source is served as usual.
    let (code, _, body) = curl_from("127.0.0.3", &control, "/api/v1/nodes", &token).await;
    assert_eq!(code, 200, "{body}");
    let metrics = curl_from("127.0.0.3", &control, "/metrics", "").await.2;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_control_rate_limited_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_keeps_its_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.audit_max_entries = 10;
    cfg.audit_prune_every = Duration::ZERO;
    let control = TestControl::start_with(cfg, Some(tmp)).await;
    for i in 0..30 {
        control
            .admin
            .create_user(&format!("u{i}@example.com"))
            .await
            .unwrap();
    }
    let kept = wait_for("retention applied", DEADLINE, || async {
        let a = control.admin.audit(10_000).await.unwrap();
        (a.len() <= 10).then_some(a)
    })
    .await;
    // The newest entries are the ones kept.
    assert!(
        kept.iter().any(|e| e.target == "u29@example.com"),
        "{kept:#?}"
    );
    assert!(!kept.iter().any(|e| e.target == "u0@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_clients_mint_tagged_keys_only_and_see_their_own() {
    let control = TestControl::start().await;
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    let operator = control.operator_secret().await;
    let token = AdminClient::oauth_token(&control.join, &control.ca, &operator, None)
        .await
        .unwrap()
        .access_token;
    let client = AdminClient::new(control.join.clone(), &control.ca, &token).unwrap();
    // A user on a tagged key is refused, whoever mints it.
    for c in [&client, &control.admin] {
        let e = c
            .create_key(&CreateKey {
                user: Some("alice@example.com".into()),
                tags: vec!["tag:k8s".into()],
                ..CreateKey::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), 400, "{e}");
        assert!(e.to_string().contains("tagged key has no user"), "{e}");
    }
    let mine = client
        .create_key(&CreateKey {
            tags: vec!["tag:k8s".into()],
            ..CreateKey::default()
        })
        .await
        .unwrap();
    let alices = control
        .admin
        .create_key(&CreateKey {
            user: Some("alice@example.com".into()),
            ..CreateKey::default()
        })
        .await
        .unwrap();
    // The client sees and revokes only its own keys.
    let seen: Vec<String> = client
        .keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(seen, vec![mine.id.clone()]);
    let e = client.revoke_key(&alices.id).await.unwrap_err();
    assert_eq!(status_of(&e), 404);
    let still = control.admin.keys().await.unwrap();
    assert!(
        still
            .iter()
            .any(|k| k.id == alices.id && k.revoked_at.is_none())
    );
    client.revoke_key(&mine.id).await.unwrap();
    // A client given auth_keys:all sees every key.
    let all = control
        .admin
        .create_oauth(&CreateOAuthClient {
            scopes: vec!["auth_keys:all".into(), "auth_keys:read".into()],
            tags: vec![],
            description: "key auditor".into(),
        })
        .await
        .unwrap()
        .secret
        .unwrap();
    let token = AdminClient::oauth_token(&control.join, &control.ca, &all, None)
        .await
        .unwrap()
        .access_token;
    let auditor = AdminClient::new(control.join.clone(), &control.ca, &token).unwrap();
    assert_eq!(auditor.keys().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_device_cannot_take_a_tagged_name() {
    let control = TestControl::start().await;
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    control
        .admin
        .set_policy(r#"{"tagOwners": {"tag:web": []}, "acls": []}"#)
        .await
        .unwrap();
    // By pattern (the default `k8s-*`): refused, nothing stored.
    let key = control.key(Some("alice@example.com"), &[], true).await;
    let e = control.node(&key, "k8s-future").await.unwrap_err();
    assert_eq!(reg_status(&e), 409, "{e}");
    assert!(e.to_string().contains("reserved for tagged nodes"), "{e}");
    assert!(control.admin.nodes().await.unwrap().is_empty());
    // The service then gets exactly its name.
    let tagged = control.key(None, &["tag:web"], true).await;
    let svc = control.node(&tagged, "k8s-future").await.unwrap();
    assert_eq!(svc.identity.name, "k8s-future");
    // By history: a name a tagged node held stays the tags' after it goes.
    let blog = control.node(&tagged, "blog").await.unwrap();
    control
        .admin
        .delete_node(&blog.identity.node_id)
        .await
        .unwrap();
    let e = control.node(&key, "blog").await.unwrap_err();
    assert_eq!(reg_status(&e), 409, "{e}");
    assert!(
        e.to_string().contains("belongs to tagged nodes (tag:web)"),
        "{e}"
    );
    // Other names are the user's as before.
    let laptop = control.node(&key, "laptop").await.unwrap();
    assert_eq!(laptop.identity.name, "laptop");
    // Tagged nodes may take them too (with a suffix on collision).
    let again = control.node(&tagged, "blog").await.unwrap();
    assert_eq!(again.identity.name, "blog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_nobody_can_use_are_refused() {
    let control = TestControl::start().await;
    control
        .admin
        .set_policy(r#"{"tagOwners": {"tag:web": []}, "acls": []}"#)
        .await
        .unwrap();
    let key = control.key(None, &["tag:web"], false).await;
    let node = control.node(&key, "web").await.unwrap();
    for bad in [
        "255.255.255.255:9",
        "224.0.0.251:5353",
        "[ff02::1]:41641",
        "0.0.0.0:41641",
        "192.0.2.1:0",
    ] {
        let e = node
            .client
            .set_endpoints(&gatehouse_proto::control::EndpointsRequest::direct(vec![
                bad.parse().unwrap(),
            ]))
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), 400, "{bad}: {e}");
    }
    let many: Vec<std::net::SocketAddr> = (1..=33u16)
        .map(|p| std::net::SocketAddr::from(([192, 0, 2, 1], p)))
        .collect();
    assert_eq!(
        status_of(
            &node
                .client
                .set_endpoints(&gatehouse_proto::control::EndpointsRequest::direct(many))
                .await
                .unwrap_err()
        ),
        400
    );
    // This node talks to control over loopback: its loopback endpoint is of
    // use to peers on this machine, and is accepted.
    node.client
        .set_endpoints(&gatehouse_proto::control::EndpointsRequest::direct(vec![
            "127.0.0.1:41641".parse().unwrap(),
            "192.0.2.1:41641".parse().unwrap(),
        ]))
        .await
        .unwrap();
    let listed = control.admin.nodes().await.unwrap();
    assert_eq!(listed[0].node.endpoints.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_control_asks_its_nodes_to_come_back_soon() {
    let mut control = TestControl::start().await;
    control
        .admin
        .set_policy(r#"{"tagOwners": {"tag:web": []}, "acls": []}"#)
        .await
        .unwrap();
    let key = control.key(None, &["tag:web"], false).await;
    let id = NodeClient::register(&control.join, &control.ca, &key, "web")
        .await
        .unwrap();
    let client = NodeClient::new(&id).unwrap();
    let mut stream = client.map().await.unwrap();
    assert!(matches!(
        stream.next().await.unwrap(),
        Some(MapMessage::Full(_))
    ));
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(m)) = stream.next().await {
            got.push(m);
        }
        got
    });
    control.stop().await;
    let got = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    match got.last() {
        Some(MapMessage::Reconnect { after_ms }) => {
            // One stream: spread over the shortest window.
            assert!((100..600).contains(after_ms), "{after_ms}");
        }
        other => panic!("expected a reconnect hint last, got {other:?} in {got:?}"),
    }
}

/// A TLS client trusting control's CA.
fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// Reads until the peer closes (true) or the deadline passes (false).
async fn closed_by_peer(mut s: impl tokio::io::AsyncRead + Unpin) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_closes_slow_and_excess_connections() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.limits.max_connections = 4;
    cfg.limits.handshake_timeout = Duration::from_millis(500);
    cfg.limits.header_read_timeout = Duration::from_millis(500);
    cfg.limits.idle_timeout = Duration::from_millis(800);
    let control = TestControl::start_with(cfg, Some(tmp)).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], control.join.port));
    let tls = tls_client(&control.ca);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();

    // No TLS at all.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // TLS, then nothing.
    let quiet = tls
        .connect(
            name.clone(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .unwrap();
    // A request answered, then nothing.
    let mut idle = tls
        .connect(
            name.clone(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // TLS, then half a request head.
    let mut partial = tls
        .connect(
            name.clone(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The cap is full: a fifth is closed at once.
    let fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_peer(fifth).await, "over the cap: still open");
    assert!(closed_by_peer(silent).await, "no handshake: still open");
    assert!(closed_by_peer(quiet).await, "silent after TLS: still open");
    assert!(
        closed_by_peer(idle).await,
        "idle after a request: still open"
    );
    assert!(closed_by_peer(partial).await, "unfinished head: still open");
    // Control still serves, and counted what it closed.
    let metrics = wait_for("timeouts counted", DEADLINE, || async {
        let m = String::from_utf8(control.admin.get_raw("/metrics").await.ok()?.to_vec()).ok()?;
        m.contains("gatehouse_control_connections_refused_total{listener=\"api\"} 1")
            .then_some(m)
    })
    .await;
    for reason in ["handshake", "header", "idle"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "gatehouse_control_connections_timed_out_total{{listener=\"api\",reason=\"{reason}\"}}"
            )) && !l.ends_with(" 0")),
            "{reason}: {metrics}"
        );
    }
}

/// Control reads time from the clock it is given: moving a test clock
/// expires keys and nodes without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_follows_the_clock_it_is_given() {
    let clock = std::sync::Arc::new(gatehouse_control::clock::ManualClock::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.clock = clock.clone();
    cfg.node_key_lifetime = Duration::from_secs(3600);
    let control = TestControl::start_with(cfg, Some(tmp)).await;
    control
        .admin
        .set_policy(r#"{"tagOwners": {"tag:web": []}, "acls": []}"#)
        .await
        .unwrap();
    let key = control
        .admin
        .create_key(&CreateKey {
            tags: vec!["tag:web".into()],
            reusable: true,
            expiry_seconds: Some(600),
            ..CreateKey::default()
        })
        .await
        .unwrap()
        .key
        .unwrap();
    let mut node = control.node(&key, "web").await.unwrap();
    assert_eq!(
        node.identity.key_expiry,
        gatehouse_control::clock::Clock::now(&*clock) + 3600,
        "the node key's expiry is on control's clock"
    );
    // Past the pre-auth key's expiry: refused.
    clock.advance(601);
    let e = control.node(&key, "web2").await.unwrap_err();
    assert_eq!(reg_status(&e), 401, "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
    // Past the node key's expiry: the node leaves the mesh.
    clock.advance(3600);
    node.wait_until("the stream closed", |s| s.is_none()).await;
    assert!(
        control
            .admin
            .nodes()
            .await
            .unwrap()
            .iter()
            .all(|n| !n.online)
    );
}
