//! What a gate costs per request: the same trivial service served over
//! loopback TCP by hyper's connection builder directly (the baseline) and
//! through `Gate::serve` (request tracking, read watching, the watchdog),
//! driven by the same keep-alive HTTP/1.1 and HTTP/2 clients, in
//! interleaved rounds of one run.
//!
//! Run: `cargo bench -p gatehouse-limits --bench serve`. `cargo test
//! --benches` runs a quick check that both servers answer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use bytes::Bytes;
use gatehouse_limits::{Gate, Limits};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

fn service() -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
    })
}

/// hyper's auto builder with the settings a gate uses, no gate.
async fn plain_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http1().header_read_timeout(None);
                b.http2()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .max_concurrent_streams(256);
                let _ = b
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service())
                    .await;
            });
        }
    });
    addr
}

async fn gate_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let gate = Gate::new(Limits::default());
    tokio::spawn(async move {
        loop {
            let (tcp, _, slot) = gate.accept(&l).await;
            let _ = tcp.set_nodelay(true);
            let gate = gate.clone();
            tokio::spawn(async move {
                let _ = gate
                    .serve(tcp, slot, service(), std::future::pending())
                    .await;
            });
        }
    });
    addr
}

/// `conns` HTTP/1.1 keep-alive connections, `per_conn` requests each, one
/// at a time per connection; requests per second.
async fn load_h1(addr: SocketAddr, conns: usize, per_conn: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (mut send, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            for _ in 0..per_conn {
                send.ready().await.unwrap();
                let resp = send
                    .send_request(
                        Request::get("/")
                            .header("host", "b")
                            .body(Empty::new())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"hello\n");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (conns * per_conn) as f64 / start.elapsed().as_secs_f64()
}

/// `conns` HTTP/2 connections with `streams` concurrent request loops each.
async fn load_h2(addr: SocketAddr, conns: usize, streams: usize, per_stream: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..streams {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_stream {
                    send.ready().await.unwrap();
                    let resp = send
                        .send_request(Request::get("http://b/").body(Empty::new()).unwrap())
                        .await
                        .unwrap();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(&body[..], b"hello\n");
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    (conns * streams * per_stream) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plain = plain_server().await;
        let gated = gate_server().await;
        if quick {
            load_h1(plain, 2, 5).await;
            load_h1(gated, 2, 5).await;
            load_h2(plain, 1, 2, 5).await;
            load_h2(gated, 1, 2, 5).await;
            println!("serve bench: quick check passed");
            return;
        }
        let rounds = 5;
        let (mut p1, mut g1, mut p2, mut g2) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            p1.push(load_h1(plain, 16, 4_000).await);
            g1.push(load_h1(gated, 16, 4_000).await);
            p2.push(load_h2(plain, 4, 16, 1_000).await);
            g2.push(load_h2(gated, 4, 16, 1_000).await);
        }
        let (p1, g1, p2, g2) = (median(p1), median(g1), median(p2), median(g2));
        println!("| protocol | hyper alone (req/s) | through a gate (req/s) | gate / alone |");
        println!("|---|---|---|---|");
        println!(
            "| HTTP/1.1, 16 connections | {p1:.0} | {g1:.0} | {:.3} |",
            g1 / p1
        );
        println!(
            "| HTTP/2, 4 connections × 16 streams | {p2:.0} | {g2:.0} | {:.3} |",
            g2 / p2
        );
    });
}
