//! End to end with real components: control in-process, three nodes on the
//! loopback data plane (laptop: alice's, with SOCKS5 and DNS; blog and
//! grafana: tagged, serving real HTTP backends), real `curl` through the
//! SOCKS5 proxy and HTTP CONNECT with TLS verified against the mesh CA, and
//! real `dig` against the resolver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
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

    // grafana is a peer (port 22 is allowed) but its filter refuses 443
    // from laptop: the connection never reaches its serve or backend.
    let before = m.grafana.status().plane.refused;
    let grafana_url = format!("https://{}/", m.grafana.identity.fqdn);
    let (_, _, ok) = run(
        "curl",
        &curl_args(&format!("socks5h://{socks}"), ca, &grafana_url, &[]),
    )
    .await;
    assert!(!ok, "grafana must refuse laptop on 443");
    let after = m.grafana.status();
    assert_eq!(after.plane.refused, before + 1);
    let laptop_path = after
        .peers
        .iter()
        .find(|p| p.name == "laptop")
        .and_then(|p| p.path.clone())
        .unwrap();
    assert_eq!(laptop_path.refused_in, 1);
    assert_eq!(laptop_path.connections_in, 0);
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

    let ping = gatehouse_node::api::ApiRequest::Ping {
        peer: "grafana".into(),
    };
    let resp = gatehouse_node::api::call(&dir, &ping).await.unwrap();
    assert!(
        matches!(&resp, gatehouse_node::api::ApiResponse::Pong { peer, .. } if *peer == m.grafana.identity.fqdn),
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
