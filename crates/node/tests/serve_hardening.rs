//! `serve` against hostile clients, with real components: control
//! in-process, alice's laptop (SOCKS5) and two tagged nodes on the mesh
//! data plane. `tight` serves a Python WSGI backend with small timeouts;
//! `capped` serves the test backend and takes two connections at most.
//!
//! - identity headers spelled with underscores (`Gatehouse_User_Login`),
//!   which a WSGI backend reads as the real ones, never reach it: it sees
//!   the caller's real login, alone;
//! - connections that stay silent, never finish a head, trickle one, or
//!   sit idle after a request are closed;
//! - over the cap, a new connection is closed while the open ones keep
//!   working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gatehouse_node::limits::Limits;
use gatehouse_testkit::wsgi::{WsgiOrigin, environ};
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the other end closes; fails after [`DEADLINE`].
async fn closed(s: &mut (impl AsyncReadExt + Unpin), what: &str) {
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    assert!(
        tokio::time::timeout(DEADLINE, read).await.is_ok(),
        "{what}: still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_spellings_stripped_and_connections_limited() {
    let control = control().await;
    let dir = tempfile::tempdir().unwrap();
    let wsgi = WsgiOrigin::start().await;
    let backend = backend().await;
    let small = Duration::from_secs(2);

    let key = control.key(None, &["tag:k8s", "tag:blog"], false).await;
    let mut cfg = node_config(&control, &key, "tight", dir.path().join("tight"));
    cfg.routes = vec![
        gatehouse_node::serve::route::parse_route(&format!("/=http://{}", wsgi.addr)).unwrap(),
        // The WSGI server answers HTTP/1.0 and closes; the test backend
        // keeps connections alive.
        gatehouse_node::serve::route::parse_route(&format!("/keep=http://{}", backend.addr))
            .unwrap(),
    ];
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    cfg.serve_limits = Limits {
        handshake_timeout: small,
        header_read_timeout: small,
        idle_timeout: small,
        ..Limits::default()
    };
    let tight = start(cfg).await;

    let key = control.key(None, &["tag:k8s", "tag:blog"], false).await;
    let mut cfg = node_config(&control, &key, "capped", dir.path().join("capped"));
    cfg.routes = vec![
        gatehouse_node::serve::route::parse_route(&format!("/=http://{}", backend.addr)).unwrap(),
    ];
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    cfg.serve_limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let capped = start(cfg).await;

    let key = control.key(Some("alice@example.com"), &[], false).await;
    let mut cfg = node_config(&control, &key, "laptop", dir.path().join("laptop"));
    cfg.socks5 = Some("127.0.0.1:0".parse().unwrap());
    let laptop = start(cfg).await;
    wait_peers(&laptop, &["capped", "tight"]).await;
    wait_for("endpoints of laptop's peers", async || {
        laptop
            .status()
            .peers
            .iter()
            .all(|p| !p.endpoints.is_empty())
    })
    .await;
    wait_peers(&tight, &["laptop"]).await;
    wait_peers(&capped, &["laptop"]).await;

    let socks = laptop.bound.socks5.unwrap();
    let ca_path = ca_file(&control, dir.path());
    let ca = control.ca.clone();
    let tight_host = tight.identity.fqdn.clone();
    let capped_host = capped.identity.fqdn.clone();

    stage(
        "identity spellings",
        identity_spellings(socks, ca_path.to_str().unwrap(), &tight_host, &laptop),
    )
    .await;
    stage(
        "canonical paths",
        canonical_paths(socks, ca_path.to_str().unwrap(), &tight_host),
    )
    .await;
    stage(
        "slow and idle connections",
        slow_and_idle_connections(socks, &ca, &tight_host),
    )
    .await;
    // What closed them: the timeouts, each counted.
    let m = node_metrics(&tight).await;
    for (reason, at_least) in [("handshake", 1.0), ("header", 3.0), ("idle", 1.0)] {
        let name = format!(
            "gatehouse_node_connections_timed_out_total{{listener=\"serve_https\",reason=\"{reason}\"}}"
        );
        assert!(metric(&m, &name) >= Some(at_least), "{name}: {m}");
    }
    // The data plane's paths: what came in, by path kind, and the relay
    // connection the node holds.
    let rx = metric(&m, "gatehouse_node_path_direct_rx_bytes_total").unwrap_or(0.0)
        + metric(&m, "gatehouse_node_path_relay_rx_bytes_total").unwrap_or(0.0);
    assert!(rx > 0.0, "{m}");
    assert!(
        metric(&m, "gatehouse_node_relay_connects_total") >= Some(1.0),
        "{m}"
    );
    stage("the cap", cap(socks, &ca, &capped_host, &backend)).await;
    let m = node_metrics(&capped).await;
    let refused = "gatehouse_node_connections_refused_total{listener=\"serve_https\"}";
    assert!(metric(&m, refused) >= Some(1.0), "{m}");
}

async fn node_metrics(node: &gatehouse_node::RunningNode) -> String {
    let addr = node.bound.metrics.unwrap();
    let (out, err, ok) = run(
        "curl",
        &["-sS", "--max-time", "10", &format!("http://{addr}/metrics")],
    )
    .await;
    assert!(ok, "{err}");
    out
}

/// The value of the metric line `name value`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs one part of the test; fails naming it if it hangs.
async fn stage(what: &str, f: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(DEADLINE * 4, f).await.is_err() {
        panic!("{what}: timed out");
    }
}

/// The forged spellings through serve to the WSGI backend, over HTTP/1.1
/// and HTTP/2.
/// serve routes and forwards the edge's canonical form of a path, and
/// refuses a path that has none.
async fn canonical_paths(socks: std::net::SocketAddr, ca: &str, host: &str) {
    let proxy = format!("socks5h://{socks}");
    let curl = |path: &'static str| {
        let url = format!("https://{host}{path}");
        let proxy = proxy.clone();
        async move {
            run(
                "curl",
                &[
                    "-sS",
                    "--path-as-is",
                    "--max-time",
                    "20",
                    "--proxy",
                    &proxy,
                    "--cacert",
                    ca,
                    "-w",
                    "\n%{http_code}",
                    &url,
                ],
            )
            .await
        }
    };
    let (out, err, ok) = curl("/%61pi//x/./y").await;
    assert!(ok, "{err}");
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{out}");
    assert_eq!(
        environ(body).get("PATH_INFO").map(String::as_str),
        Some("/api/x/y"),
        "{out}"
    );
    for refused in ["/a%2Fb", "/a;b", "/..%2f/etc", "/%252e%252e/x"] {
        let (out, err, ok) = curl(refused).await;
        assert!(ok, "{err}");
        assert!(out.ends_with("\n400"), "{refused}: {out}");
    }
}

async fn identity_spellings(
    socks: std::net::SocketAddr,
    ca: &str,
    host: &str,
    laptop: &gatehouse_node::RunningNode,
) {
    let proxy = format!("socks5h://{socks}");
    let url = format!("https://{host}/");
    for version in ["--http1.1", "--http2"] {
        let (out, err, ok) = run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                "--proxy",
                &proxy,
                "--cacert",
                ca,
                version,
                "-H",
                "Gatehouse_User_Login: admin@example.com",
                "-H",
                "Gatehouse_Node_Tags: tag:admin-ui",
                "-H",
                "gatehouse.node.name: admin-laptop.example.com",
                "-H",
                "X_Forwarded_For: 6.6.6.6",
                "-H",
                "X-Real-IP: 6.6.6.6",
                "-H",
                "Forwarded: for=6.6.6.6",
                &url,
            ],
        )
        .await;
        assert!(ok, "curl {version} through serve: {err}");
        let env = environ(&out);
        assert_eq!(
            env.get("HTTP_GATEHOUSE_USER_LOGIN").map(String::as_str),
            Some("alice@example.com"),
            "{version}: {env:?}"
        );
        assert_eq!(
            env.get("HTTP_GATEHOUSE_NODE_NAME"),
            Some(&laptop.identity.fqdn),
            "{version}: {env:?}"
        );
        assert_eq!(
            env.get("HTTP_X_FORWARDED_FOR"),
            Some(&laptop.identity.addresses[0].to_string()),
            "{version}: {env:?}"
        );
        let identity: Vec<&str> = env
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with("HTTP_GATEHOUSE"))
            .collect();
        assert_eq!(
            identity,
            ["HTTP_GATEHOUSE_NODE_NAME", "HTTP_GATEHOUSE_USER_LOGIN"],
            "{version}: {env:?}"
        );
        for forged in [
            "HTTP_GATEHOUSE_NODE_TAGS",
            "HTTP_X_REAL_IP",
            "HTTP_FORWARDED",
        ] {
            assert!(!env.contains_key(forged), "{version}: {forged} in {env:?}");
        }
    }
}

/// Silent, unfinished, trickled and idle connections to `tight` are closed.
async fn slow_and_idle_connections(socks: std::net::SocketAddr, ca: &str, host: &str) {
    let mut silent = socks_connect(socks, host, 443).await.unwrap();
    let mut after_tls = mesh_tls(socks, host, ca, &[b"http/1.1"]).await.unwrap();
    let mut unfinished = mesh_tls(socks, host, ca, &[b"http/1.1"]).await.unwrap();
    unfinished
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
        .await
        .unwrap();
    unfinished.flush().await.unwrap();
    let trickle = mesh_tls(socks, host, ca, &[b"http/1.1"]).await.unwrap();
    let (mut trickle_r, mut trickle_w) = tokio::io::split(trickle);
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Pad: ");
    let writer = tokio::spawn(async move {
        let _ = trickle_w.write_all(head.as_bytes()).await;
        while trickle_w.write_all(b"a").await.is_ok() && trickle_w.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed(&mut silent, "no TLS handshake").await;
    closed(&mut after_tls, "silent after TLS").await;
    closed(&mut unfinished, "unfinished head").await;
    closed(&mut trickle_r, "trickled head").await;
    // Through the SOCKS5 proxy, writes after the close may go on landing
    // in its buffers: the writer is stopped, not awaited.
    writer.abort();

    // HTTP/1.1 keep-alive: answered, then closed once idle.
    let tls = mesh_tls(socks, host, ca, &[b"http/1.1"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = get(&mut send, host, "/keep").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    resp.into_body().collect().await.unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, conn).await.is_ok(),
        "idle keep-alive connection still open"
    );
}

/// Two connections fill `capped`; a third is closed at once; the first
/// two keep working; a freed place is taken again.
async fn cap(socks: std::net::SocketAddr, ca: &str, host: &str, backend: &Backend) {
    let mut a = http1(socks, host, ca).await;
    let resp = get(&mut a, host, "/sse").await;
    let mut body = resp.into_body();
    let first = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    let b = mesh_tls(socks, host, ca, &[b"http/1.1"]).await.unwrap();

    // The third: the mesh accepts the TCP connection, serve closes it
    // before any TLS.
    let refused = mesh_tls(socks, host, ca, &[b"http/1.1"]).await;
    assert!(refused.is_err(), "a third connection was served");

    backend.sse_go.notify_one();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"data: two\n\n");
    let resp = get(&mut a, host, "/again").await;
    assert_eq!(resp.status(), 200, "the first connection stopped working");

    drop(b);
    wait_for("a place freed and taken", async || {
        mesh_tls(socks, host, ca, &[b"http/1.1"]).await.is_ok()
    })
    .await;
}
