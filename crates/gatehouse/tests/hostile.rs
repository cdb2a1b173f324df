//! Hostile input at the edge's tunnel endpoint: garbage instead of a
//! handshake, a client that holds a valid token but answers streams with
//! malformed frames, and a malformed control frame. Only the stream or the
//! connection concerned may suffer; the edge keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use bytes::BytesMut;
use common::{Stack, http_get, metric};
use gatehouse_proto::{Frame, Hello};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn write_frame(w: &mut quinn::SendStream, f: &Frame) {
    let mut b = BytesMut::new();
    gatehouse_proto::encode(f, &mut b).unwrap();
    w.write_all(&b).await.unwrap();
}

async fn read_frame(r: &mut quinn::RecvStream) -> Frame {
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = gatehouse_proto::decode(&mut buf).unwrap() {
            return f;
        }
        let mut chunk = [0u8; 4096];
        let n = r.read(&mut chunk).await.unwrap().expect("stream ended");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_survives_hostile_connectors() {
    let mut s = Stack::new().await;
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    let r = tokio::time::timeout(Duration::from_secs(120), scenario(&s)).await;
    if r.is_err() {
        s.dump();
        panic!("timed out");
    }
}

async fn scenario(s: &Stack) {
    // 1. Garbage after a TLS handshake on the TCP fallback port.
    let tls = s.pki.client_config(&[gatehouse_proto::ALPN_TCP]);
    let tcp = tokio::net::TcpStream::connect(s.tunnel).await.unwrap();
    let mut conn = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::try_from("edge.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    conn.write_all(&[0xee; 64]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut sink)).await;
    assert!(sink.is_empty(), "no welcome for garbage");
    // 2. Garbage over QUIC, then a valid token whose streams answer garbage.
    let mut qc = s.pki.client_config(&[gatehouse_proto::ALPN_QUIC]);
    qc.alpn_protocols = vec![gatehouse_proto::ALPN_QUIC.to_vec()];
    let qcfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(qc).unwrap(),
    ));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let c = ep
        .connect_with(qcfg.clone(), s.tunnel, "edge.test")
        .unwrap()
        .await
        .unwrap();
    let (mut w, _r) = c.open_bi().await.unwrap();
    w.write_all(&[0xee; 64]).await.unwrap();
    let why = c.closed().await;
    eprintln!("garbage hello: {why}");
    // A version the edge does not speak is refused with a reason.
    let v2 = ep
        .connect_with(qcfg.clone(), s.tunnel, "edge.test")
        .unwrap()
        .await
        .unwrap();
    let (mut vw, mut vr) = v2.open_bi().await.unwrap();
    write_frame(
        &mut vw,
        &Frame::Hello(Hello {
            version: gatehouse_proto::VERSION + 1,
            token: s.token.clone(),
            connector_id: "future".into(),
            conn_index: 0,
        }),
    )
    .await;
    match read_frame(&mut vr).await {
        Frame::Refused(why) => assert!(why.contains("version"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let rogue = ep
        .connect_with(qcfg.clone(), s.tunnel, "edge.test")
        .unwrap()
        .await
        .unwrap();
    let (mut cw, mut cr) = rogue.open_bi().await.unwrap();
    write_frame(
        &mut cw,
        &Frame::Hello(Hello {
            version: gatehouse_proto::VERSION,
            token: s.token.clone(),
            connector_id: "rogue".into(),
            conn_index: 0,
        }),
    )
    .await;
    assert!(matches!(read_frame(&mut cr).await, Frame::Welcome(_)));
    let rogue_streams = {
        let rogue = rogue.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while let Ok((mut w, mut r)) = rogue.accept_bi().await {
                let _ = read_frame(&mut r).await;
                // An unknown frame type, then a status the codec refuses.
                let garbage: &[u8] = if n % 2 == 0 {
                    &[0xee, 0, 0, 0, 0]
                } else {
                    &[0x11, 0, 0, 0, 4, 0, 42, 0, 0]
                };
                let _ = w.write_all(garbage).await;
                let _ = w.finish();
                n += 1;
            }
            n
        })
    };
    let m = http_get(s.admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(&m, "gatehouse_edge_tunnel_connections"),
        Some(3.0),
        "{m}"
    );
    // Requests spread over the real connector's two connections and the
    // rogue one: those given to the rogue fail before any response and are
    // retried elsewhere (GET), so every request succeeds.
    for i in 0..12 {
        let (code, body) = s.get("app.test", &format!("/r{i}"), &[]).await;
        assert_eq!(code, 200, "{body}");
    }
    // A malformed control frame closes the rogue's connection only.
    cw.write_all(&[0x13, 0, 0, 0, 3, 0, 1, 0]).await.unwrap();
    let why = rogue.closed().await;
    eprintln!("malformed control frame: {why}");
    let answered = rogue_streams.await.unwrap();
    assert!(answered > 0, "the rogue connection was given no stream");
    let m = http_get(s.admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(&m, "gatehouse_edge_tunnel_connections"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(s.get("app.test", "/still-fine", &[]).await.0, 200);
    assert_eq!(
        http_get(s.admin, "/ready").await.as_deref(),
        Some("ready\n")
    );
}
