//! A gate serving real TCP connections on loopback, against clients that
//! never finish a request head, trickle one a byte at a time, stay idle
//! after a request (HTTP/1.1 and HTTP/2), and come when the listener is
//! full. The timeouts are set small; every wait has a generous deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use gatehouse_limits::{Gate, Limits, ListenerMetrics, Slot};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn tight() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        h2_keep_alive_interval: None,
        ..Limits::default()
    }
}

struct Server {
    addr: SocketAddr,
    metrics: ListenerMetrics,
    /// Requests to `/wait` held until [`Notify::notify_waiters`].
    release: Arc<Notify>,
    waiting: Arc<AtomicUsize>,
}

impl Server {
    async fn start(limits: Limits) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let metrics = ListenerMetrics::default();
        let gate = Gate::with_metrics(limits, metrics.gate("test"));
        let release = Arc::new(Notify::new());
        let waiting = Arc::new(AtomicUsize::new(0));
        let (rel, wait) = (release.clone(), waiting.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _, slot) = gate.accept(&l).await;
                let (gate, rel, wait) = (gate.clone(), rel.clone(), wait.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<_>| {
                        let (rel, wait) = (rel.clone(), wait.clone());
                        async move {
                            if req.uri().path() == "/upgrade" {
                                return Ok(upgrade(req));
                            }
                            if req.uri().path() == "/wait" {
                                let released = rel.notified();
                                tokio::pin!(released);
                                released.as_mut().enable();
                                wait.fetch_add(1, Ordering::SeqCst);
                                released.await;
                                wait.fetch_sub(1, Ordering::SeqCst);
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = gate.serve(tcp, slot, svc, std::future::pending()).await;
                });
            }
        });
        Server {
            addr,
            metrics,
            release,
            waiting,
        }
    }

    fn timed_out(&self, reason: &'static str) -> u64 {
        match reason {
            "header" => self.metrics.gate("test").header_timeouts.get(),
            _ => self.metrics.gate("test").idle_closed.get(),
        }
    }

    fn open(&self) -> i64 {
        self.metrics.gate("test").open.get()
    }
}

/// Answers 101 and echoes on the upgraded connection, holding the
/// connection's slot as a proxy splicing an upgrade does.
fn upgrade(mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let slot = req.extensions().get::<Slot>().cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _slot = slot;
        if let Ok(up) = on_upgrade.await {
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Polls `f` until it holds, failing after [`DEADLINE`].
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes the connection; fails after [`DEADLINE`].
async fn closed_by_server(s: &mut (impl AsyncReadExt + Unpin), what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    assert!(
        tokio::time::timeout(DEADLINE, read).await.is_ok(),
        "{what}: still open"
    );
    got
}

async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> String {
    send.ready().await.unwrap();
    let resp = send
        .send_request(
            Request::get(path)
                .header("host", "t")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn silent_unfinished_and_trickled_heads_are_closed() {
    let s = Server::start(tight()).await;
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let mut partial = TcpStream::connect(s.addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // A byte every 50 ms: a timeout that restarted with each byte would
    // never fire.
    let trickle = TcpStream::connect(s.addr).await.unwrap();
    let (mut trickle_r, mut trickle_w) = trickle.into_split();
    let writer = tokio::spawn(async move {
        let head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: ";
        let _ = trickle_w.write_all(head).await;
        while trickle_w.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // A half-sent HTTP/2 preface.
    let mut preface = TcpStream::connect(s.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();

    for (conn, what) in [
        (&mut silent, "silent"),
        (&mut partial, "unfinished head"),
        (&mut preface, "unfinished preface"),
    ] {
        assert!(closed_by_server(conn, what).await.is_empty(), "{what}");
    }
    assert!(closed_by_server(&mut trickle_r, "trickle").await.is_empty());
    writer.await.unwrap();
    until("four header timeouts counted", || {
        s.timed_out("header") == 4
    })
    .await;
    until("no connection open", || s.open() == 0).await;
}

#[tokio::test]
async fn a_request_in_flight_is_not_idle_and_an_idle_http1_connection_is_closed() {
    let s = Server::start(tight()).await;
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let slow = tokio::spawn(async move {
        let body = get(&mut send, "/wait").await;
        (send, body)
    });
    until("the request is in flight", || {
        s.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    // A silent connection timing out proves that more than the idle and
    // header timeouts have passed while the request was in flight.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    closed_by_server(&mut silent, "silent").await;
    s.release.notify_waiters();
    let (_send, body) = slow.await.unwrap();
    assert_eq!(body, "ok", "the request in flight finished");
    // Now idle: the server closes the connection.
    let ended = tokio::time::timeout(DEADLINE, conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    until("an idle closure counted", || s.timed_out("idle") == 1).await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let s = Server::start(tight()).await;
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send
        .send_request(Request::get("http://t/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    let ended = tokio::time::timeout(DEADLINE, conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection stayed open");
    until("an idle closure counted", || s.timed_out("idle") == 1).await;
}

#[tokio::test]
async fn over_the_cap_new_connections_close_and_existing_ones_keep_working() {
    let s = Server::start(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let mut a = http1(s.addr).await;
    assert_eq!(get(&mut a, "/").await, "ok");
    let slow = tokio::spawn(async move {
        let body = get(&mut a, "/wait").await;
        (a, body)
    });
    until("the request is in flight", || {
        s.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    let b = TcpStream::connect(s.addr).await.unwrap();
    until("two connections open", || s.open() == 2).await;

    // The third is closed at once, without an answer.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(closed_by_server(&mut c, "over the cap").await.is_empty());
    assert_eq!(s.metrics.gate("test").refused.get(), 1);

    // The first connection still works: its request in flight, then another.
    s.release.notify_waiters();
    let (mut a, body) = slow.await.unwrap();
    assert_eq!(body, "ok");
    assert_eq!(get(&mut a, "/").await, "ok");

    // A place freed is a place taken.
    drop(b);
    until("one connection open", || s.open() == 1).await;
    let mut d = http1(s.addr).await;
    assert_eq!(get(&mut d, "/").await, "ok");
}

#[tokio::test]
async fn an_upgraded_connection_keeps_its_place() {
    let s = Server::start(Limits {
        max_connections: 1,
        ..Limits::default()
    })
    .await;
    let mut a = TcpStream::connect(s.addr).await.unwrap();
    a.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        a.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    a.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    a.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");

    // hyper is done with the connection, the upgrade is not: still full.
    let mut b = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_by_server(&mut b, "over the cap").await.is_empty());
    assert_eq!(s.metrics.gate("test").refused.get(), 1);

    drop(a);
    until("the upgraded connection's place freed", || s.open() == 0).await;
}
