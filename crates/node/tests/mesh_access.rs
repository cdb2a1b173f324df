//! End to end with real components: control in-process, three nodes on the
//! mesh data plane (WireGuard between their UDP sockets on loopback,
//! user-space TCP/IP; laptop: alice's, with SOCKS5 and DNS; blog and
//! grafana: tagged, serving real HTTP backends), real `curl` through the
//! SOCKS5 proxy and HTTP CONNECT with TLS verified against the mesh CA, and
//! real `dig` against the resolver. One test runs the same world on the
//! loopback data plane, which stays selectable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gatehouse_node::PlaneKind;
use gatehouse_node::api::{ApiRequest, ApiResponse, call};
use std::sync::atomic::Ordering;

fn curl_args<'a>(proxy: &'a str, ca: &'a str, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["-sS", "--max-time", "20", "--proxy", proxy, "--cacert", ca];
    v.extend_from_slice(extra);
    v.push(url);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_socks5_and_connect_identity_headers_denials_and_dig() {
    let m = mesh().await;
    let ca = ca_file(&m.control, m.dir.path());
    let ca = ca.to_str().unwrap();
    let socks = m.laptop.bound.socks5.unwrap();
    let blog_url = format!("https://{}/hello?x=1", m.blog.identity.fqdn);

    // SOCKS5 with remote DNS, HTTP/2, TLS verified against the mesh CA; the
    // client tries to pass itself off as someone else.
    let proxy = format!("socks5h://{socks}");
    let (out, err, ok) = run(
        "curl",
        &curl_args(
            &proxy,
            ca,
            &blog_url,
            &[
                "--http2",
                "-w",
                "\n%{http_version}",
                "-H",
                "Gatehouse-User-Login: mallory@example.com",
                "-H",
                "gatehouse-node-tags: tag:admin",
                "-H",
                "X-Forwarded-For: 1.2.3.4",
            ],
        ),
    )
    .await;
    assert!(ok, "curl through SOCKS5 failed: {err}");
    let (json, version) = out.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "curl negotiated HTTP/2 with serve");
    let seen: serde_json::Value = serde_json::from_str(json).unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["query"], "x=1");
    assert_eq!(
        h["gatehouse-user-login"],
        serde_json::json!(["alice@example.com"])
    );
    assert_eq!(
        h["gatehouse-node-name"],
        serde_json::json!([m.laptop.identity.fqdn])
    );
    assert!(
        h.get("gatehouse-node-tags").is_none(),
        "client's header stripped"
    );
    let laptop_v4 = m.laptop.identity.addresses[0].to_string();
    assert_eq!(h["x-forwarded-for"], serde_json::json!([laptop_v4]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(h["host"], serde_json::json!([m.blog.identity.fqdn]));

    // HTTP CONNECT on the same port, HTTP/1.1.
    let proxy = format!("http://{socks}");
    let (out, err, ok) = run(
        "curl",
        &curl_args(
            &proxy,
            ca,
            &blog_url,
            &["--http1.1", "-H", "GATEHOUSE-USER-LOGIN: eve"],
        ),
    )
    .await;
    assert!(ok, "curl through HTTP CONNECT failed: {err}");
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        seen["headers"]["gatehouse-user-login"],
        serde_json::json!(["alice@example.com"])
    );

    // HTTP on port 80 is redirected to HTTPS on the node's name.
    let plain = format!("http://{}/x?y=2", m.blog.identity.fqdn);
    let (out, err, ok) = run(
        "curl",
        &curl_args(
            &format!("socks5h://{socks}"),
            ca,
            &plain,
            &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"],
        ),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, format!("308 https://{}/x?y=2", m.blog.identity.fqdn));

    // All of it went through WireGuard: laptop and blog completed a
    // handshake and exchanged packets, and blog counted the connections.
    let to_blog = path_to(&m.laptop, "blog");
    assert!(to_blog.last_handshake.is_some(), "{to_blog:?}");
    assert!(to_blog.tx_bytes > 0 && to_blog.rx_bytes > 0, "{to_blog:?}");
    assert_eq!(to_blog.connections_out, 3);
    assert_eq!(path_to(&m.blog, "laptop").connections_in, 3);

    // grafana is a peer (port 22 is allowed) but its filter refuses 443
    // from laptop. It drops laptop's SYNs before any stack sees them, so
    // laptop hears nothing back (no SYN-ACK, no reset): the proxy reports a
    // timeout (SOCKS5 reply 6) and nothing reaches grafana's serve or
    // backend.
    let before = m.grafana.status().plane.refused;
    let grafana_url = format!("https://{}/", m.grafana.identity.fqdn);
    let (_, err, ok) = run(
        "curl",
        &curl_args(&format!("socks5h://{socks}"), ca, &grafana_url, &[]),
    )
    .await;
    assert!(!ok, "grafana must refuse laptop on 443");
    assert!(
        err.contains("Can't complete SOCKS5 connection") && err.contains("(6)"),
        "{err}"
    );
    let after = m.grafana.status();
    assert!(after.plane.refused > before, "grafana dropped no SYN");
    let laptop_path = path_to(&m.grafana, "laptop");
    assert!(laptop_path.refused_in >= 1, "{laptop_path:?}");
    assert_eq!(laptop_path.connections_in, 0);
    assert_eq!(path_to(&m.laptop, "grafana").connections_out, 0);
    assert_eq!(m.grafana_backend.requests.load(Ordering::SeqCst), 0);
    assert_eq!(m.blog_backend.requests.load(Ordering::SeqCst), 2);

    // Names outside the mesh are refused by the proxy, unknown mesh names
    // are not found; neither is dialled.
    for url in [
        "https://example.com/",
        "https://nope.test.gatehouse.internal/",
    ] {
        let (_, _, ok) = run(
            "curl",
            &curl_args(&format!("socks5h://{socks}"), ca, url, &[]),
        )
        .await;
        assert!(!ok, "{url}");
    }
    let (out, _, _) = run(
        "curl",
        &curl_args(
            &format!("http://{socks}"),
            ca,
            "https://example.com/",
            &["-o", "/dev/null", "-w", "%{http_connect}"],
        ),
    )
    .await;
    assert_eq!(out, "403");

    // The resolver, asked by real dig over UDP and TCP.
    let dns = m.laptop.bound.dns.unwrap();
    let server = format!("@{}", dns.ip());
    let port = dns.port().to_string();
    let dig = async |args: &[&str]| {
        let mut v = vec![server.as_str(), "-p", port.as_str(), "+time=5", "+tries=1"];
        v.extend_from_slice(args);
        let (out, err, ok) = run("dig", &v).await;
        assert!(ok, "dig {args:?}: {err}");
        out
    };
    let blog_v4 = m.blog.identity.addresses[0].to_string();
    let blog_v6 = m.blog.identity.addresses[1].to_string();
    let fqdn = m.blog.identity.fqdn.as_str();
    assert_eq!(dig(&[fqdn, "A", "+short"]).await.trim(), blog_v4);
    assert_eq!(dig(&[fqdn, "AAAA", "+short"]).await.trim(), blog_v6);
    assert_eq!(dig(&[fqdn, "A", "+short", "+tcp"]).await.trim(), blog_v4);
    assert_eq!(dig(&["blog", "A", "+short"]).await.trim(), blog_v4);
    assert!(dig(&[fqdn, "A"]).await.contains("flags: qr aa rd"));
    assert!(
        dig(&["nope.test.gatehouse.internal", "A"])
            .await
            .contains("status: NXDOMAIN")
    );
    assert!(dig(&["example.com", "A"]).await.contains("status: REFUSED"));
    assert_eq!(
        dig(&["-x", &blog_v4, "+short"]).await.trim(),
        format!("{fqdn}.")
    );

    // A peer no path reaches (it announced no endpoint and no home relay):
    // SOCKS5 says "host unreachable" (4) at once, instead of a timeout.
    let key = m.control.key(None, &["tag:k8s", "tag:blog"], false).await;
    let ghost = m.control.node(&key, "ghost").await.unwrap();
    wait_peers(&m.laptop, &["blog", "ghost", "grafana"]).await;
    let e = socks_connect(socks, &ghost.identity.fqdn, 443)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("SOCKS5 reply 4"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_ping_over_the_local_api() {
    let m = mesh().await;
    let dir = m.dir.path().join("laptop");
    let resp = gatehouse_node::api::call(&dir, &gatehouse_node::api::ApiRequest::Status)
        .await
        .unwrap();
    let gatehouse_node::api::ApiResponse::Status(st) = resp else {
        panic!("{resp:?}")
    };
    assert!(st.ready);
    assert_eq!(st.user.as_deref(), Some("alice@example.com"));
    assert!(st.control.connected);
    let names: Vec<&str> = st.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["blog", "grafana"]);
    assert_eq!(st.peers[0].addresses, m.blog.identity.addresses);
    assert_eq!(st.peers[0].tags, ["tag:k8s", "tag:blog"]);

    // The mesh data plane, on the UDP socket whose address control was told.
    assert_eq!(st.plane.kind, "mesh");
    wait_for("control knows laptop's UDP endpoint", async || {
        let nodes = m.control.admin.nodes().await.unwrap();
        let me = nodes.iter().find(|n| n.node.name == "laptop").unwrap();
        assert_eq!(
            st.plane.public_key.as_deref(),
            Some(me.node.wireguard_key.as_str())
        );
        me.node.endpoints == st.plane.listen
    })
    .await;
    assert_eq!(
        st.peers[0].path.as_ref().unwrap().endpoint,
        Some(m.blog.status().plane.listen[0])
    );

    // ping: a disco ping to grafana's data plane, as `tailscale ping` does
    // (its filter admits nothing but port 22 from laptop; the data plane
    // answers pings itself), by name and by each address; the pong says
    // which path it took.
    for peer in [
        "grafana",
        &m.grafana.identity.addresses[0].to_string(),
        &m.grafana.identity.addresses[1].to_string(),
    ] {
        let ping = ApiRequest::Ping {
            peer: peer.to_string(),
        };
        let resp = call(&dir, &ping).await.unwrap();
        assert!(
            matches!(&resp, ApiResponse::Pong { peer, rtt_ms, via: Some(via), .. }
                if *peer == m.grafana.identity.fqdn && *rtt_ms > 0.0 && via.starts_with("direct ")),
            "{resp:?}"
        );
    }
    let to_grafana = path_to(&m.laptop, "grafana");
    assert_eq!(to_grafana.connections_out, 0, "a ping opens no connection");
    // A peer whose data plane is gone does not answer.
    let grafana_v4 = m.grafana.identity.addresses[0].to_string();
    m.grafana.shutdown().await;
    let resp = call(&dir, &ApiRequest::Ping { peer: grafana_v4 })
        .await
        .unwrap();
    assert!(
        matches!(&resp, ApiResponse::Error { error } if error.contains("no answer")),
        "{resp:?}"
    );
    let ping = gatehouse_node::api::ApiRequest::Ping {
        peer: "nobody".into(),
    };
    let resp = gatehouse_node::api::call(&dir, &ping).await.unwrap();
    assert!(matches!(
        resp,
        gatehouse_node::api::ApiResponse::Error { .. }
    ));

    // The socket and the identity are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for f in ["node.sock", "node.json"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // A second node on the same state directory is refused.
    let mut cfg = gatehouse_node::NodeConfig::new(dir.clone(), "laptop");
    cfg.control = Some(m.control.info.join.clone());
    let err = gatehouse_node::start(cfg).await.unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_plane_stays_selectable() {
    let m = mesh_on(PlaneKind::Loopback).await;
    assert_eq!(m.laptop.status().plane.kind, "loopback");
    let ca = ca_file(&m.control, m.dir.path());
    let socks = m.laptop.bound.socks5.unwrap();
    let url = format!("https://{}/", m.blog.identity.fqdn);
    let (out, err, ok) = run(
        "curl",
        &curl_args(
            &format!("socks5h://{socks}"),
            ca.to_str().unwrap(),
            &url,
            &[],
        ),
    )
    .await;
    assert!(ok, "{err}");
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        seen["headers"]["gatehouse-user-login"],
        serde_json::json!(["alice@example.com"])
    );
    // The loopback plane refuses after its TLS handshake, at once: reply 5.
    let e = socks_connect(socks, &m.grafana.identity.fqdn, 443)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("SOCKS5 reply 5"), "{e}");
    assert_eq!(m.grafana.status().plane.refused, 1);
    let dir = m.dir.path().join("laptop");
    let resp = call(
        &dir,
        &ApiRequest::Ping {
            peer: "blog".into(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(resp, ApiResponse::Pong { .. }), "{resp:?}");
}
