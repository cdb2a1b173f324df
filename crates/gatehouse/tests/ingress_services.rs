//! Ingress services through a real edge and connector. Rules that validate
//! but that the connector cannot serve (bastion, SOCKS proxies, bastion
//! mode, a TCP origin without a port, TLS over a Unix socket, Cloudflare
//! Access) each answer their own clear error, reach no origin, and the
//! other rules of the same tunnel keep serving. `matchSNItoHost` checks the
//! origin's certificate against the request's host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::{Stack, http_get, metric};
use gatehouse_testkit::origin::HttpOrigin;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unserved_rules_answer_errors_and_the_tunnel_keeps_serving() {
    let mut s = Stack::new().await;
    let origin = s.origin.addr;
    let cfg = format!(
        "tunnel: t1\ningress:\n  - hostname: misc.test\n    path: ^/bastion\n    service: bastion\n  - hostname: misc.test\n    path: ^/jump\n    service: http://{origin}\n    originRequest: {{bastionMode: true}}\n  - hostname: misc.test\n    path: ^/socks\n    service: socks-proxy\n  - hostname: misc.test\n    path: ^/ftp\n    service: ftp://127.0.0.1\n  - hostname: misc.test\n    path: ^/unixtls\n    service: unix+tls:{}\n  - hostname: misc.test\n    path: ^/access\n    service: http://{origin}\n    originRequest: {{access: {{required: true, teamName: t, audTag: [a]}}}}\n  - hostname: misc.test\n    path: ^/served\n    service: http://{origin}\n  - hostname: app.test\n    service: http://{origin}\n  - service: http_status:503\n",
        s.unix_socket.display()
    );
    std::fs::write(&s.conn_cfg, cfg).unwrap();
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    let result = tokio::time::timeout(Duration::from_secs(120), checks(&s)).await;
    if !matches!(result, Ok(())) {
        s.dump();
        panic!("checks failed or timed out");
    }
}

async fn checks(s: &Stack) {
    let seen_before = s.origin.seen().len();
    for (path, status, says) in [
        (
            "/bastion",
            501,
            "is a bastion, which gatehouse tunnel does not serve",
        ),
        (
            "/jump/x",
            501,
            "is a bastion, which gatehouse tunnel does not serve",
        ),
        (
            "/socks",
            501,
            "is a SOCKS proxy, which gatehouse tunnel does not serve",
        ),
        (
            "/ftp",
            502,
            "names an origin address that cannot be dialled",
        ),
        ("/unixtls", 501, "is TLS over a Unix socket"),
        ("/access", 403, "requires Cloudflare Access"),
    ] {
        let (code, body) = s.get("misc.test", path, &[]).await;
        assert_eq!(code, status, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
        assert!(!body.contains("127.0.0.1"), "no origin address in {body}");
    }
    assert_eq!(
        s.origin.seen().len(),
        seen_before,
        "a refused rule reached the origin"
    );
    // The same tunnel, the same connector: the other rules serve.
    for (host, path) in [("misc.test", "/served/x"), ("app.test", "/y")] {
        let (code, body) = s.get(host, path, &[]).await;
        assert_eq!(code, 200, "{host}{path}: {body}");
        assert!(body.contains("origin=app\n"), "{body}");
    }
    let m = http_get(s.connectors[0].1, "/metrics").await.unwrap();
    assert_eq!(
        metric(&m, "gatehouse_connector_refused_requests_total"),
        Some(6.0),
        "{m}"
    );
    // The connector said at start which rules it will not serve, by number.
    let log = s.connectors[0].0.output();
    for rule in 0..6 {
        assert!(
            log.lines()
                .any(|l| l.contains("ingress rule will not be served")
                    && l.contains(&format!("\"rule\":{rule},"))),
            "rule {rule}:\n{log}"
        );
    }
    assert!(
        !log.lines()
            .any(|l| l.contains("will not be served") && l.contains("\"rule\":6,")),
        "{log}"
    );
}

/// The origin's certificate names the public host `misc.test`, not the
/// origin's address: with `matchSNItoHost` it verifies for requests to
/// `misc.test` (and to a host whose `httpHostHeader` is `misc.test`), and
/// not for another host; without it, never.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn match_sni_to_host_checks_the_request_host() {
    let mut s = Stack::new().await;
    let origin = HttpOrigin::start_tls("public-name", &s.pki.leaf(&["misc.test"])).await;
    let (addr, ca) = (origin.addr, s.pki.ca.display());
    let cfg = format!(
        "tunnel: t1\ningress:\n  - hostname: misc.test\n    path: ^/sni\n    service: https://{addr}\n    originRequest: {{caPool: {ca}, matchSNItoHost: true}}\n  - hostname: misc.test\n    service: https://{addr}\n    originRequest: {{caPool: {ca}}}\n  - hostname: app.test\n    service: https://{addr}\n    originRequest: {{caPool: {ca}, matchSNItoHost: true, httpHostHeader: misc.test}}\n  - hostname: wsgi.test\n    service: https://{addr}\n    originRequest: {{caPool: {ca}, matchSNItoHost: true}}\n  - service: http_status:503\n"
    );
    std::fs::write(&s.conn_cfg, cfg).unwrap();
    s.start_edge().await;
    s.start_connector(0, "tcp").await;
    let result = tokio::time::timeout(Duration::from_secs(120), async {
        for _ in 0..3 {
            let (code, body) = s.get("misc.test", "/sni/x", &[]).await;
            assert_eq!(code, 200, "{body}");
            assert!(body.contains("origin=public-name\n"), "{body}");
            let (code, body) = s.get("app.test", "/y", &[]).await;
            assert_eq!(code, 200, "{body}");
            assert!(body.contains("host=misc.test\n"), "{body}");
        }
        assert_eq!(
            s.get("misc.test", "/other", &[]).await.0,
            502,
            "no matchSNItoHost"
        );
        assert_eq!(
            s.get("wsgi.test", "/", &[]).await.0,
            502,
            "a name the certificate lacks"
        );
    })
    .await;
    if result.is_err() {
        s.dump();
        panic!("timed out");
    }
}
