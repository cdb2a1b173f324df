//! The edge's connection limits against real clients on loopback: an edge
//! process with small timeouts and a cap of three connections per
//! listener, one connector, real origins. Connections that never start
//! TLS, stay silent after it, never finish a request head, trickle one, or
//! sit idle after a request (HTTP/1.1 and HTTP/2) are closed, on the HTTPS
//! and the plain HTTP listener; over the cap a new connection is closed
//! while the open ones finish their requests; and the metrics count it all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use bytes::Bytes;
use common::{Stack, http_get, metric};
use gatehouse_testkit::wait_for;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_idle_and_excess_connections_are_closed() {
    let mut s = Stack::new().await;
    s.edge_extra = "limits: {max_connections: 3, handshake_timeout: 2s, header_read_timeout: 2s, idle_timeout: 2s}\n".into();
    s.write_edge_cfg("");
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    let result = tokio::time::timeout(Duration::from_secs(180), checks(&s)).await;
    if !matches!(result, Ok(())) {
        s.dump();
        panic!("edge limit checks failed or timed out");
    }
}

async fn checks(s: &Stack) {
    slow_clients(s).await;
    idle_after_a_request(s).await;
    wait_open(s, "https", 0).await;
    cap(s).await;
}

fn connector(s: &Stack) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(s.pki.client_config(&[b"h2", b"http/1.1"])))
}

async fn tls(
    s: &Stack,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(s.https).await?;
    let c = tokio_rustls::TlsConnector::from(Arc::new(s.pki.client_config(alpn)));
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    c.connect(name, tcp).await
}

/// Reads until the edge closes the connection; fails after [`DEADLINE`].
async fn closed(r: &mut (impl AsyncRead + Unpin), what: &str) {
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
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

async fn metrics(s: &Stack) -> String {
    http_get(s.admin, "/metrics").await.unwrap()
}

async fn wait_open(s: &Stack, listener: &str, n: u64) {
    let name = format!("gatehouse_edge_connections{{listener=\"{listener}\"}}");
    wait_for(
        &format!("{n} connections open on {listener}"),
        DEADLINE,
        || {
            let name = name.clone();
            async move { (metric(&metrics(s).await, &name)? == n as f64).then_some(()) }
        },
    )
    .await;
}

async fn slow_clients(s: &Stack) {
    // Three at once: the cap.
    let mut no_tls = TcpStream::connect(s.https).await.unwrap();
    let mut silent = tls(s, &[b"http/1.1"]).await.unwrap();
    let mut unfinished = tls(s, &[b"http/1.1"]).await.unwrap();
    unfinished
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    unfinished.flush().await.unwrap();
    let mut plain = TcpStream::connect(s.http).await.unwrap();
    closed(&mut no_tls, "no TLS handshake").await;
    closed(&mut silent, "silent after TLS").await;
    closed(&mut unfinished, "unfinished head").await;
    closed(&mut plain, "silent plain HTTP").await;
    wait_open(s, "https", 0).await;

    let trickle = tls(s, &[b"http/1.1"]).await.unwrap();
    let (mut trickle_r, mut trickle_w) = tokio::io::split(trickle);
    let writer = tokio::spawn(async move {
        let _ = trickle_w
            .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Pad: ")
            .await;
        while trickle_w.write_all(b"a").await.is_ok() && trickle_w.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed(&mut trickle_r, "trickled head").await;
    writer.abort();

    let m = metrics(s).await;
    let timed_out = |listener: &str, reason: &str| {
        metric(
            &m,
            &format!(
                "gatehouse_edge_connections_timed_out_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(timed_out("https", "handshake") >= 1.0, "{m}");
    assert!(timed_out("https", "header") >= 3.0, "{m}");
    assert!(timed_out("http", "header") >= 1.0, "{m}");
}

async fn idle_after_a_request(s: &Stack) {
    // HTTP/1.1 keep-alive.
    let stream = tls(s, &[b"http/1.1"]).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("/one")
                .header("host", "app.test")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, conn).await.is_ok(),
        "idle HTTP/1.1 connection still open"
    );

    // HTTP/2.
    let stream = tls(s, &[b"h2"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get(format!("https://app.test:{}/two", s.https.port()))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    resp.into_body().collect().await.unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, conn).await.is_ok(),
        "idle HTTP/2 connection still open"
    );
    let m = metrics(s).await;
    let idle = metric(
        &m,
        "gatehouse_edge_connections_timed_out_total{listener=\"https\",reason=\"idle\"}",
    );
    assert!(idle >= Some(2.0), "{m}");
}

/// Three server-sent event streams fill the listener; a fourth connection
/// is closed before TLS; the streams finish; then a new one is served.
async fn cap(s: &Stack) {
    let mut streams = Vec::new();
    for i in 0..3 {
        let stream = tls(s, &[b"http/1.1"]).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = send
            .send_request(
                http::Request::get("/sse")
                    .header("host", "app.test")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap_or_else(|_| panic!("stream {i}: no first event"))
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: first\n\n");
        streams.push(body);
    }
    wait_open(s, "https", 3).await;
    let refused = connector(s)
        .connect(
            rustls::pki_types::ServerName::try_from("app.test").unwrap(),
            TcpStream::connect(s.https).await.unwrap(),
        )
        .await;
    assert!(refused.is_err(), "a fourth connection was served");
    let m = metrics(s).await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_edge_connections_refused_total{listener=\"https\"}"
        ),
        Some(1.0),
        "{m}"
    );

    s.origin.release_sse();
    for (i, body) in streams.into_iter().enumerate() {
        let rest = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .unwrap_or_else(|_| panic!("stream {i} did not finish"))
            .unwrap()
            .to_bytes();
        assert_eq!(&rest[..], b"data: second\n\n", "stream {i}");
    }
    // The streams' connections go idle and close; a new client is served.
    wait_for("a request served after the streams", DEADLINE, || async {
        (s.get("app.test", "/after", &[]).await.0 == 200).then_some(())
    })
    .await;
}
