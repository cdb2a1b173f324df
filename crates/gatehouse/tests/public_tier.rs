//! The public tier end to end, on loopback, with real clients: one edge and
//! two connector replicas (one on QUIC, one on the TLS/TCP fallback) in
//! front of real origins. One stack serves every assertion of this test to
//! keep the suite fast.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use bytes::Bytes;
use common::{BIN, Stack, http_get, metric};
use futures::{SinkExt, StreamExt};
use gatehouse_testkit::process::Proc;
use gatehouse_testkit::{free_port, wait_for};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_tier_end_to_end() {
    let mut s = Stack::new().await;
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    s.start_connector(1, "tcp").await;
    let result = tokio::time::timeout(Duration::from_secs(240), checks(&mut s)).await;
    if !matches!(result, Ok(())) {
        s.dump();
        panic!("public tier checks failed or timed out");
    }
}

async fn checks(s: &mut Stack) {
    routing_and_headers(s).await;
    reserved_headers(s).await;
    path_rules(s).await;
    origin_kinds(s).await;
    bypass_corpus(s).await;
    websocket(s).await;
    sse(s).await;
    grpc(s).await;
    large_bodies(s).await;
    raw_tcp(s).await;
    plain_http(s).await;
    operations(s).await;
    reload(s).await;
    bad_token(s).await;
    revoke(s).await;
}

async fn routing_and_headers(s: &Stack) {
    // Both replicas serve: many requests spread over four connections on two transports.
    for _ in 0..8 {
        let (code, body) = s.get("app.test", "/hello?x=1", &[]).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("origin=app\n"), "{body}");
        assert!(body.contains("target=/hello?x=1\n"), "{body}");
    }
    for (i, (_, m)) in s.connectors.iter().enumerate() {
        let text = http_get(*m, "/metrics").await.unwrap();
        let n = metric(&text, "gatehouse_connector_requests_total").unwrap();
        assert!(n >= 1.0, "connector {i} served no request: {text}");
    }
    // Forwarded headers, client IP, request id shared with the response and
    // both logs; identity headers forged by the client never reach the origin.
    let out = s
        .curl()
        .args(["-D", "-"])
        .args(["-H", "Gatehouse-User-Login: alice@example.com"])
        .args(["-H", "gatehouse-client-ip: 192.0.2.66"])
        .arg(s.url("app.test", "/who"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("x-forwarded-proto=https\n"), "{text}");
    assert!(text.contains("x-forwarded-for=127.0.0.1\n"), "{text}");
    assert!(text.contains("client-ip=127.0.0.1\n"), "{text}");
    assert!(text.contains("user-login=\n"), "{text}");
    assert!(
        text.contains(&format!("x-forwarded-host=app.test:{}\n", s.https.port())),
        "{text}"
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse-request-id: "))
        .expect("request id header")
        .trim()
        .to_owned();
    assert!(text.contains(&format!("request-id={id}\n")), "{text}");
    wait_for(
        "request id in edge and connector logs",
        Duration::from_secs(10),
        || {
            let id = id.clone();
            async move {
                let in_edge = s.edge_log().contains(&id);
                let in_conn = s.connectors.iter().any(|(c, _)| c.output().contains(&id));
                (in_edge && in_conn).then_some(())
            }
        },
    )
    .await;
    // HTTP/1.1 and HTTP/2 from clients.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = s
            .curl()
            .args([
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg(s.url("app.test", "/v"))
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{version} 200")
        );
    }
    // Unknown host: 404 from the edge, no tunnel touched.
    let before = total_connector_requests(s).await;
    let (code, body) = s.get("app.test", "/", &["-H", "Host: unknown.test"]).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        total_connector_requests(s).await,
        before,
        "a tunnel saw the unknown host"
    );
    // An unconfigured SNI gets no certificate at all.
    let out = s
        .curl()
        .args([
            "--resolve",
            &format!("nope.test:{}:127.0.0.1", s.https.port()),
        ])
        .arg(s.url("nope.test", "/"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    // Catch-all and path rules of the connector's ingress.
    assert_eq!(s.get("misc.test", "/", &[]).await.0, 503);
    assert_eq!(s.get("app.test", "/teapot/pot", &[]).await.0, 418);
    // A tunnel with no live connection: 502 with a clear page.
    let (code, body) = s.get("orphan.test", "/", &[]).await;
    assert_eq!(code, 502);
    assert!(body.contains("No tunnel connection is live"), "{body}");
}

/// What a client may not tell the origin, through the edge to a WSGI
/// backend (which reads `Gatehouse_User_Login` as `Gatehouse-User-Login`):
/// no Gatehouse identity at all, no `Forwarded` or `X-Real-IP`, and only
/// the edge's own client address; and a request naming two hosts is
/// refused before any tunnel sees it.
async fn reserved_headers(s: &Stack) {
    for version in ["--http1.1", "--http2"] {
        let out = s
            .curl()
            .arg(version)
            .args(["-H", "Gatehouse_User_Login: admin@example.com"])
            .args(["-H", "Gatehouse_Node_Tags: tag:admin-ui"])
            .args(["-H", "Gatehouse-User-Login: admin@example.com"])
            .args(["-H", "gatehouse.node.name: admin.example.com"])
            .args(["-H", "Gatehouse_Client_IP: 192.0.2.66"])
            .args(["-H", "Forwarded: for=192.0.2.66;proto=https"])
            .args(["-H", "X-Real-IP: 192.0.2.66"])
            .args(["-H", "X_Forwarded_For: 192.0.2.66"])
            .args(["-H", "X-Forwarded-Prefix: /admin"])
            .arg(s.url("wsgi.test", "/"))
            .output()
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        let env = gatehouse_testkit::wsgi::environ(&body);
        for forged in [
            "HTTP_GATEHOUSE_USER_LOGIN",
            "HTTP_GATEHOUSE_NODE_TAGS",
            "HTTP_GATEHOUSE_NODE_NAME",
            "HTTP_FORWARDED",
            "HTTP_X_REAL_IP",
            "HTTP_X_FORWARDED_PREFIX",
        ] {
            assert!(!env.contains_key(forged), "{version}: {forged} in {env:?}");
        }
        let identity: Vec<&str> = env
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with("HTTP_GATEHOUSE"))
            .collect();
        assert_eq!(
            identity,
            ["HTTP_GATEHOUSE_CLIENT_IP", "HTTP_GATEHOUSE_REQUEST_ID"],
            "{version}: only the edge's own: {env:?}"
        );
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(
            get("HTTP_GATEHOUSE_CLIENT_IP"),
            Some("127.0.0.1"),
            "{env:?}"
        );
        assert_eq!(get("HTTP_X_FORWARDED_FOR"), Some("127.0.0.1"), "{env:?}");
        assert!(get("HTTP_GATEHOUSE_REQUEST_ID").is_some(), "{env:?}");
    }

    // Two Host fields: 400 from the edge, nothing reaches the origin.
    let before = s.origin.seen().len();
    let mut tls = tls_stream(s, "app.test", &[b"http/1.1"]).await;
    tls.write_all(b"GET /two-hosts HTTP/1.1\r\nHost: app.test\r\nHost: misc.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    assert_eq!(
        s.origin.seen().len(),
        before,
        "a request with two hosts was forwarded"
    );
}

async fn total_connector_requests(s: &Stack) -> f64 {
    let mut n = 0.0;
    for (_, m) in &s.connectors {
        n += metric(
            &http_get(*m, "/metrics").await.unwrap(),
            "gatehouse_connector_requests_total",
        )
        .unwrap();
    }
    n
}

/// HTTPS origins with `caPool` + `originServerName` + `httpHostHeader`, with
/// `noTLSVerify`, and with neither (refused); an origin on a Unix socket.
async fn origin_kinds(s: &Stack) {
    let (code, body) = s.get("misc.test", "/secure/x", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("origin=tls\n") && body.contains("host=backend.internal\n"),
        "{body}"
    );
    let (code, body) = s.get("misc.test", "/insecure", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("origin=tls\n"), "{body}");
    assert_eq!(
        s.get("misc.test", "/strict", &[]).await.0,
        502,
        "unverifiable origin certificate"
    );
    let (code, body) = s.get("misc.test", "/unix/y?z=1", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("origin=unix\n") && body.contains("target=/unix/y?z=1\n"),
        "{body}"
    );
}

async fn path_rules(s: &Stack) {
    assert_eq!(s.get("app.test", "/admin", &[]).await.0, 403);
    assert_eq!(s.get("app.test", "/admin/", &[]).await.0, 403);
    assert_eq!(s.get("app.test", "/admin/users", &[]).await.0, 403);
    assert_eq!(s.get("app.test", "/admin/health", &[]).await.0, 200);
    assert_eq!(
        s.get("app.test", "/admin/health", &["-X", "POST"]).await.0,
        403
    );
    assert_eq!(s.get("app.test", "/administrator", &[]).await.0, 200);
    let (code, body) = s.get("app.test", "/a//b/./c/../d", &[]).await;
    assert_eq!(code, 200);
    assert!(
        body.contains("target=/a/b/d\n"),
        "the origin gets the canonical path: {body}"
    );
}

/// Ways to ask for a denied path of wsgi.test (`/admin` and below but
/// `/admin/health`, `/staff` and below, `/keys` and below, `/passwd`) that
/// an origin might honour: its raw and its decoded reading, case mappings
/// and foldings, NFKC, stripped spaces and invisible characters, and a
/// decoded `?` or `#` cutting the path.
const BYPASS: &[&str] = &[
    // Spelling, encoding, dot-segments, separators, parameters.
    "/admin",
    "/admin/",
    "/admin/secret",
    "/ADMIN",
    "/Admin/secret",
    "/aDmIn",
    "/%61dmin",
    "/%41DMIN",
    "/%61%64%6d%69%6e",
    "/%2561dmin",
    "//admin",
    "///admin/secret",
    "/./admin",
    "/x/../admin",
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
    "/%2e/admin",
    "/admin%2fsecret",
    "/admin%2Fsecret",
    "/x%2f..%2fadmin",
    "/admin\\secret",
    "/x\\..\\admin",
    "/admin%5csecret",
    "/admin.",
    "/admin./secret",
    "/admin%2e",
    "/admin%20",
    "/admin;x=1",
    "/admin;/secret",
    "/x/..;/admin",
    "/admin%3bx",
    "/%c0%afadmin",
    "/x/%c0%ae%c0%ae/admin",
    "/%e0%80%afadmin",
    "/admin%00",
    "/admin%00.html",
    "/admin%0d%0a",
    "/admin/health/../secret",
    "/admin/health/%2e%2e/secret",
    "/public/../admin",
    "/public/%2e%2e/%61dmin",
    "/admin?x=/public",
    "/%2f/admin",
    "/admin#frag",
    "/./ADMIN/./secret",
    "/admin/%2e/",
    "/a/b/../../admin",
    "/admin/secret/..",
    "/ADMIN/HEALTH/../secret",
    "/staff",
    "/STAFF/list",
    "/keys",
    "/Keys/1",
    "/passwd",
    // Encoded delimiters: a layer that decodes and parses again ends the
    // path at them.
    "/admin%3F.css",
    "/admin%3fx=1",
    "/ADMIN%3F",
    "/admin%3F/../public",
    "/admin/%3F",
    "/%61dmin%3F",
    "/admin%23",
    "/admin%23frag",
    "/passwd%23.txt",
    "/staff%3F",
    "/admin%253F",
    "/admin%2523",
    // Case mappings: ı upper-cases to I (Python's upper(), Java's
    // equalsIgnoreCase), İ lower-cases to i (Java), ſ upper-cases to S,
    // K (Kelvin) lower-cases to k, ß and ẞ fold to ss, ligatures split.
    "/adm%C4%B1n",
    "/ADM%C4%B1N",
    "/adm%C4%B1n/secret",
    "/adm%C4%B0n",
    "/%C4%B1/../admin",
    "/%C5%BFtaff",
    "/%C5%BFtaff/list",
    "/%EF%AC%86aff",
    "/%EF%AC%85aff",
    "/sta%EF%AC%80",
    "/%E2%84%AAeys",
    "/%E2%84%AAEYS/1",
    "/key%C5%BF",
    "/pa%C3%9Fwd",
    "/PA%C3%9FWD",
    "/pa%E1%BA%9Ewd",
    "/pa%C5%BF%C5%BFwd",
    // NFKC: fullwidth, circled, modifier, Roman numeral, mathematical and
    // outlined letters; fullwidth and one-dot-leader punctuation.
    "/%EF%BD%81dmin",
    "/%EF%BC%A1DMIN",
    "/adm%E2%85%B0n",
    "/%E2%93%90dmin",
    "/%C2%AAdmin",
    "/a%E1%B5%88min",
    "/adm%E2%84%B9n",
    "/admi%E2%81%BF",
    "/%F0%9D%90%9Admin",
    "/adm%F0%9D%9A%A4n",
    "/%F0%9C%B3%96DMIN",
    "/%EF%BD%93taff",
    "/admin%EF%BC%8Fsecret",
    "/admin%EF%BC%BCsecret",
    "/x/%E2%80%A5/admin",
    "/x/%EF%BC%8E%EF%BC%8E/admin",
    "/x/%E2%80%A4%E2%80%A4/admin",
    "/admin%EF%BC%9F.css",
    "/admin%EF%B9%96x",
    "/admin%EF%BC%83x",
    "/admin%EF%BC%9Bx",
    // Spaces and controls that origins trim.
    "/admin%C2%A0",
    "/admin%E3%80%80",
    "/admin%E2%80%A8",
    "/admin%C2%85",
    "/admin%E1%9A%80",
    "/%E2%80%83admin",
    // Invisible characters an origin may drop.
    "/ad%E2%80%8Dmin",
    "/adm%E2%80%8Cin",
    "/%E2%80%8Badmin",
    "/admin%C2%AD",
    "/admin%EF%B8%8F",
    "/adm%E2%81%A0in",
    "/admin%EF%BB%BF",
    "/x/.%E2%80%8B./admin",
    // Code points a later Unicode may map onto ASCII.
    "/admin%CD%B8",
    "/adm%F4%8F%BF%BFin",
];

/// Paths with non-ASCII characters that must keep working: they reach the
/// origin as sent, and no reading of them is a denied path.
const KEPT: &[&str] = &[
    "/caf%C3%A9",
    "/%E6%96%87%E6%A1%A3",
    "/administrator",
    "/staffing",
    "/passwd/x",
    "/admin/health",
    "/g%C3%BCzel/%C5%9Fi%C5%9F/%C4%9F%C3%B6%C3%A7",
    "/%D9%85%DB%8C%E2%80%8C%D8%B1%D9%88%D9%85",
    "/%E2%9D%A4%EF%B8%8F",
    "/%F0%9F%91%A8%E2%80%8D%F0%9F%91%A9",
    "/%C3%85ngstr%C3%B6m/%CE%A9",
];

/// Whether `path` (one reading of a request) is denied by wsgi.test's rules.
fn reads_as_denied(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let segments: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    match segments.first().copied() {
        Some("admin") => lower != "/admin/health",
        Some("staff" | "keys") => true,
        Some("passwd") => segments.len() == 1,
        _ => false,
    }
}

async fn bypass_corpus(s: &Stack) {
    assert!(BYPASS.len() >= 100, "{}", BYPASS.len());
    // The reader would see each bypass: sent straight to the origin, these
    // are read as denied paths.
    for p in [
        "/adm%C4%B1n",
        "/pa%C3%9Fwd",
        "/%E2%84%AAeys",
        "/%EF%BD%81dmin",
        "/x/%E2%80%A5/admin",
        "/admin%3F.css",
        "/admin%23x",
        "/ad%E2%80%8Dmin",
        "/admin%E2%80%A8",
    ] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--path-as-is", "-o", "/dev/null"])
            .arg(format!("http://{}{p}", s.wsgi.addr))
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{p}: {out:?}");
        let seen = s.wsgi.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.target, p);
        assert!(
            last.readings.iter().any(|r| reads_as_denied(r)),
            "{p} read as {:?}",
            last.readings
        );
    }
    // Through the edge, none of them reaches the origin as a path it could
    // read as a denied one.
    for p in BYPASS {
        let before = s.wsgi.seen().len();
        let (code, body) = s.get("wsgi.test", p, &[]).await;
        assert!(matches!(code, 400 | 403 | 404), "{p} got {code}: {body}");
        for seen in &s.wsgi.seen()[before..] {
            let denied: Vec<&String> = seen
                .readings
                .iter()
                .filter(|r| reads_as_denied(r))
                .collect();
            assert!(
                denied.is_empty(),
                "{p} reached the origin as {}, read as {denied:?}",
                seen.target
            );
        }
    }
    // The 400 names why.
    let (code, body) = s.get("wsgi.test", "/adm%C4%B1n", &[]).await;
    assert_eq!(code, 400);
    assert!(
        body.contains("U+0131 'ı' in the path reads as ASCII"),
        "{body}"
    );
    let (code, body) = s.get("wsgi.test", "/admin%3F.css", &[]).await;
    assert_eq!(code, 400);
    assert!(body.contains("'?' or '#' inside the path"), "{body}");
    for p in KEPT {
        let before = s.wsgi.seen().len();
        let (code, body) = s.get("wsgi.test", p, &[]).await;
        assert_eq!(code, 200, "{p}: {body}");
        let seen = s.wsgi.seen();
        let [seen] = &seen[before..] else {
            panic!("{p}: the origin saw {:?}", &seen[before..]);
        };
        assert_eq!(seen.target, *p);
        assert!(
            !seen.readings.iter().any(|r| reads_as_denied(r)),
            "{p} read as {:?}",
            seen.readings
        );
    }
}

fn tls(s: &Stack, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(s.pki.client_config(alpn)))
}

async fn tls_stream(
    s: &Stack,
    host: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(s.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tls(s, alpn).connect(name, tcp).await.unwrap()
}

async fn websocket(s: &Stack) {
    use tokio_tungstenite::tungstenite::Message;
    let stream = tls_stream(s, "app.test", &[b"http/1.1"]).await;
    let url = format!("wss://app.test:{}/ws", s.https.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got, Message::text(msg));
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
}

async fn sse(s: &Stack) {
    // The origin sends its second event only after the test saw the first:
    // a proxy that buffered the response would never deliver the first.
    let stream = tls_stream(s, "app.test", &[b"h2"]).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://app.test:{}/sse", s.https.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut got = String::new();
    while !got.contains("data: first\n\n") {
        let f = body.frame().await.unwrap().unwrap();
        got += &String::from_utf8_lossy(f.data_ref().unwrap());
    }
    assert!(!got.contains("second"));
    s.origin.release_sse();
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            got += &String::from_utf8_lossy(d);
        }
    }
    assert_eq!(got, "data: first\n\ndata: second\n\n");
}

async fn grpc(s: &Stack) {
    use gatehouse_testkit::grpc::Client;
    let mut c = Client::connect(s.https, "grpc.test", s.pki.client_config(&[b"h2"])).await;
    // Unary.
    let (resp, mut call) = c.call("/test.Echo/Unary").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    call.send("world").await;
    call.close();
    assert_eq!(call.recv().await.as_deref(), Some("hello world"));
    assert_eq!(call.recv().await, None);
    let t = call.trailers.take().expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["grpc-message"], "done");
    // Bidirectional streaming: each answer arrives before the next message is sent.
    let (_, mut call) = c.call("/test.Echo/Stream").await;
    for i in 0..5 {
        call.send(&format!("m{i}")).await;
        assert_eq!(call.recv().await, Some(format!("echo m{i}")));
    }
    call.close();
    assert_eq!(call.recv().await, None);
    assert_eq!(call.trailers.take().expect("trailers")["grpc-status"], "0");
}

async fn large_bodies(s: &Stack) {
    let big = s.path().join("big.bin");
    let size = 48 * 1024 * 1024;
    std::fs::write(&big, vec![b'y'; size]).unwrap();
    for flag in ["--http1.1", "--http2"] {
        let (code, body) = s
            .get(
                "app.test",
                "/upload",
                &[flag, "--data-binary", &format!("@{}", big.display())],
            )
            .await;
        assert_eq!(
            (code, body.as_str()),
            (200, format!("received={size}\n").as_str())
        );
        let out = s
            .curl()
            .args([
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
            ])
            .arg(s.url("app.test", &format!("/bulk/{size}")))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("200 {size}"));
    }
}

async fn raw_tcp(s: &Stack) {
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(BIN);
    cmd.args([
        "tunnel",
        "access",
        "tcp",
        "--hostname",
        "tcp.test",
        "--url",
        &local.to_string(),
    ])
    .args(["--edge", &s.https.to_string(), "--cacert"])
    .arg(&s.pki.ca);
    let _access = Proc::start("access", s.path(), cmd);
    let mut conn = wait_for(
        "access tcp listener",
        Duration::from_secs(20),
        || async move { tokio::net::TcpStream::connect(local).await.ok() },
    )
    .await;
    for i in 0..3 {
        let msg = format!("ping {i}\n");
        conn.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    // A plain HTTP request to a tcp:// rule gets a clear refusal.
    let (code, body) = s.get("tcp.test", "/", &[]).await;
    assert_eq!(code, 400);
    assert!(body.contains("gatehouse tunnel access tcp"), "{body}");
}

async fn plain_http(s: &Stack) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: app.test",
        ])
        .arg(format!("http://{}/path?q=1", s.http))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "308 https://app.test/path?q=1"
    );
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: unknown.test",
        ])
        .arg(format!("http://{}/", s.http))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

async fn operations(s: &Stack) {
    assert_eq!(
        http_get(s.admin, "/ready").await.as_deref(),
        Some("ready\n")
    );
    let m = http_get(s.admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(&m, "gatehouse_edge_tunnel_connections"),
        Some(4.0),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_edge_responses_total{code=\"403\"}"),
        "{m}"
    );
    for (_, addr) in &s.connectors {
        assert_eq!(http_get(*addr, "/ready").await.as_deref(), Some("ready\n"));
    }
    // Structured logs: every edge log line is JSON.
    for line in s.edge_log().lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

async fn reload(s: &Stack) {
    let unregistered = |s: &Stack| {
        s.edge_log()
            .matches("tunnel connection unregistered")
            .count()
    };
    let before = unregistered(s);
    // File change: picked up without SIGHUP.
    s.write_conn_cfg(419);
    wait_metric(s, "gatehouse_connector_reloads_total", 1.0).await;
    for _ in 0..4 {
        assert_eq!(s.get("app.test", "/teapot", &[]).await.0, 419);
    }
    // A broken file is refused whole; the running rules stay.
    let broken = "ingress:\n  - hostname: app.test\n    service: http://x\n";
    std::fs::write(&s.conn_cfg, broken).unwrap();
    wait_metric(s, "gatehouse_connector_reload_failures_total", 1.0).await;
    for _ in 0..4 {
        assert_eq!(s.get("app.test", "/teapot", &[]).await.0, 419);
    }
    // SIGHUP.
    s.write_conn_cfg(418);
    for (c, _) in &s.connectors {
        c.signal("HUP");
    }
    wait_metric(s, "gatehouse_connector_reloads_total", 2.0).await;
    for _ in 0..4 {
        assert_eq!(s.get("app.test", "/teapot", &[]).await.0, 418);
    }
    // The edge re-reads its config on SIGHUP: a new path rule applies.
    s.write_edge_cfg("      - {path: /teapot/*, action: deny}\n");
    s.edge.as_ref().unwrap().signal("HUP");
    wait_for("edge config reloaded", Duration::from_secs(20), || async {
        (s.get("app.test", "/teapot/x", &[]).await.0 == 403).then_some(())
    })
    .await;
    assert_eq!(
        s.get("app.test", "/teapot", &[]).await.0,
        418,
        "/x/* does not cover /x"
    );
    assert_eq!(
        unregistered(s),
        before,
        "a reload dropped a tunnel connection"
    );
}

/// Waits until every connector's metric `name` is at least `min`.
async fn wait_metric(s: &Stack, name: &str, min: f64) {
    for (_, m) in &s.connectors {
        let m = *m;
        wait_for(name, Duration::from_secs(20), || async move {
            let t = http_get(m, "/metrics").await?;
            (metric(&t, name)? >= min).then_some(())
        })
        .await;
    }
}

async fn bad_token(s: &Stack) {
    let wrong = format!("{}AAAA", &s.token[..s.token.len() - 4]);
    let cmd = s.connector_cmd(
        &wrong,
        "quic",
        std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let p = Proc::start("bad-connector", s.path(), cmd);
    wait_for(
        "bad token refusal in the edge log",
        Duration::from_secs(20),
        || async { s.edge_log().contains("bad token").then_some(()) },
    )
    .await;
    wait_for(
        "refusal in the connector log",
        Duration::from_secs(20),
        || async {
            p.output()
                .contains("refused the tunnel token")
                .then_some(())
        },
    )
    .await;
    drop(p);
    let m = http_get(s.admin, "/metrics").await.unwrap();
    assert!(metric(&m, "gatehouse_edge_tunnel_auth_failures_total").unwrap() >= 1.0);
    assert_eq!(metric(&m, "gatehouse_edge_tunnel_connections"), Some(4.0));
}

async fn revoke(s: &Stack) {
    let out = Command::new(BIN)
        .args(["edge", "tunnel", "revoke", "t1", "--tokens"])
        .arg(&s.tokens)
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_for(
        "revoked tunnel refused",
        Duration::from_secs(20),
        || async { (s.get("app.test", "/", &[]).await.0 == 502).then_some(()) },
    )
    .await;
    for i in 0..s.connectors.len() {
        s.wait_connections(i, 0).await;
    }
}
