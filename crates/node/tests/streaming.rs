//! Streams through `serve`, reached from laptop's SOCKS5 proxy: a WebSocket
//! echo (HTTP/1.1 upgrade spliced through), server-sent events whose first
//! event arrives while the backend holds the response open, and a large
//! download that the backend generates only as fast as the client reads
//! (so nothing on the way buffers the body).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use std::sync::atomic::Ordering;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sse_and_large_download() {
    let m = mesh().await;
    let socks = m.laptop.bound.socks5.unwrap();
    let host = m.blog.identity.fqdn.clone();
    let ca = m.control.ca.clone();

    // WebSocket echo.
    let tls = mesh_tls(socks, &host, &ca, &[b"http/1.1"]).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["hello", "again"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();

    // Server-sent events: the first event must arrive while the backend
    // still holds the response open (it sends the second only when told).
    let mut conn = http1(socks, &host, &ca).await;
    let resp = get(&mut conn, &host, "/sse").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("first event not delivered before the response ended: buffered?")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    m.blog_backend.sse_go.notify_one();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "data: two\n\n");

    // A large download: at every point, what the backend has generated
    // minus what the client has read stays within the buffers of the
    // hops in between (sockets, TLS records), far below the total.
    const TOTAL: u64 = 256 << 20;
    const BOUND: u64 = 96 << 20;
    let mut conn = http1(socks, &host, &ca).await;
    let resp = get(&mut conn, &host, &format!("/download?bytes={TOTAL}")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut read = 0u64;
    let mut max_ahead = 0u64;
    while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame()).await.unwrap() {
        let frame = frame.unwrap();
        if let Ok(d) = frame.into_data() {
            read += d.len() as u64;
            let ahead = m.blog_backend.produced.load(Ordering::SeqCst) - read;
            max_ahead = max_ahead.max(ahead);
            assert!(
                ahead <= BOUND,
                "the backend is {ahead} bytes ahead of the client: something buffers"
            );
        }
    }
    assert_eq!(read, TOTAL);
    eprintln!("download: at most {} KiB in flight", max_ahead >> 10);
}
