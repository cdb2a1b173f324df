//! Availability under load with wrk: one connector killed, a rolling
//! restart with graceful shutdown, and an edge restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::{Stack, http_get, metric};
use gatehouse_testkit::wait_for;
use std::time::{Duration, Instant};

const CONNS: u64 = 16;

struct WrkResult {
    requests: u64,
    non_2xx: u64,
    errors: u64,
    text: String,
}

/// Runs wrk for `secs` against the edge while `during` runs.
async fn wrk_during<F: std::future::Future<Output = ()>>(
    port: u16,
    secs: u32,
    during: F,
) -> WrkResult {
    let url = format!("https://localhost:{port}/load");
    let child = tokio::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNS}"),
            &format!("-d{secs}s"),
            "--timeout",
            "20s",
            "--latency",
        ])
        .arg(url)
        .output();
    let (out, ()) = tokio::join!(child, during);
    let text = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    let num = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(',').parse().ok())
            .unwrap_or(0)
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|r| {
            r.split(',')
                .filter_map(|p| p.split_whitespace().last())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    WrkResult {
        requests,
        non_2xx: num("Non-2xx or 3xx responses:"),
        errors,
        text,
    }
}

/// Waits until the origin has seen `n` more requests than now.
async fn origin_progress(s: &Stack, n: usize) {
    let start = s.origin.seen().len();
    wait_for(
        "load reaching the origin",
        Duration::from_secs(30),
        || async move { (s.origin.seen().len() >= start + n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_rolling_restart_and_edge_restart() {
    let mut s = Stack::new().await;
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    s.start_connector(1, "quic").await;
    let r = tokio::time::timeout(Duration::from_secs(240), scenario(&mut s)).await;
    if r.is_err() {
        s.dump();
        panic!("failover scenario timed out");
    }
}

async fn scenario(s: &mut Stack) {
    // 1. Kill one connector (SIGKILL) under load: at most the requests in
    //    flight on it may fail (wrk has CONNS requests in flight in all).
    let port = s.https.port();
    let r = wrk_during(port, 4, async {
        origin_progress(s, 200).await;
        s.connectors[0].0.signal("KILL");
    })
    .await;
    eprintln!("kill under load:\n{}", r.text);
    assert!(r.requests > 200, "{}", r.text);
    assert!(
        r.non_2xx + r.errors <= CONNS,
        "more failures than requests in flight:\n{}",
        r.text
    );
    // 2. Rolling restart with graceful shutdown: zero failures.
    s.start_connector(0, "quic").await;
    let r = wrk_during(port, 6, async {
        origin_progress(s, 200).await;
        for i in [1, 0] {
            s.connectors[i].0.signal("TERM");
            let exited = tokio::task::block_in_place(|| s.connectors[i].0.wait());
            assert!(exited, "connector {i} did not exit cleanly");
            // Replace it before draining the other one.
            let cmd = s.connector_cmd(&s.token.clone(), "quic", s.connectors[i].1);
            s.connectors[i].0 =
                gatehouse_testkit::process::Proc::start(&format!("connector{i}b"), s.path(), cmd);
            s.wait_connections(i, 2).await;
        }
        origin_progress(s, 100).await;
    })
    .await;
    eprintln!("rolling restart under load:\n{}", r.text);
    assert!(r.requests > 300, "{}", r.text);
    assert_eq!(
        (r.non_2xx, r.errors),
        (0, 0),
        "failures during a rolling restart:\n{}",
        r.text
    );
    // 3. Restart the edge: a response in flight finishes, new connections
    //    are refused, then connectors reconnect to the new edge on their own.
    let mut sse = open_sse(s).await;
    let mut edge = s.edge.take().unwrap();
    edge.signal("TERM");
    let https = s.https;
    wait_for(
        "edge refusing new connections",
        Duration::from_secs(10),
        || async move {
            tokio::net::TcpStream::connect(https)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    s.origin.release_sse();
    let mut rest = String::new();
    while let Some(f) = http_body_util::BodyExt::frame(&mut sse).await {
        if let Some(d) = f
            .expect("in-flight response cut by the edge shutdown")
            .data_ref()
        {
            rest += &String::from_utf8_lossy(d);
        }
    }
    assert_eq!(rest, "data: second\n\n");
    assert!(
        tokio::task::block_in_place(|| edge.wait()),
        "edge did not exit cleanly"
    );
    let down = Instant::now();
    s.start_edge().await;
    let up = Instant::now();
    for i in 0..2 {
        s.wait_connections(i, 2).await;
    }
    let reconnected = up.elapsed();
    eprintln!(
        "edge restart: down for {:?}, all connectors reconnected {:?} after the new edge listened",
        up - down,
        reconnected
    );
    let m = http_get(s.admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(&m, "gatehouse_edge_tunnel_connections"),
        Some(4.0),
        "{m}"
    );
    assert_eq!(s.get("localhost", "/after-restart", &[]).await.0, 200);
}

/// With UDP to the edge swallowed, `--transport auto` connects over TLS/TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_transport_falls_back_to_tcp_when_udp_is_blocked() {
    let mut s = Stack::new().await;
    s.start_edge().await;
    // A port whose UDP side drops everything and whose TCP side forwards to
    // the edge's tunnel port.
    let port = gatehouse_testkit::free_port();
    let blackhole = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let edge_tunnel = s.tunnel;
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while blackhole.recv_from(&mut buf).await.is_ok() {}
    });
    tokio::spawn(async move {
        while let Ok((mut a, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut b = tokio::net::TcpStream::connect(edge_tunnel).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    s.tunnel = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], gatehouse_testkit::free_port()));
    let mut cmd = s.connector_cmd(&s.token.clone(), "auto", metrics);
    cmd.args(["--handshake-timeout", "1s"]);
    let p = gatehouse_testkit::process::Proc::start("connector-auto", s.path(), cmd);
    s.connectors.push((p, metrics));
    s.wait_connections(0, 2).await;
    let (code, body) = s.get("app.test", "/via-fallback", &[]).await;
    assert_eq!(code, 200, "{body}");
    let log = s.connectors[0].0.output();
    assert!(
        log.contains("\"transport\":\"tcp\""),
        "connected over TCP: {log}"
    );
    assert!(
        !log.contains("\"transport\":\"quic\""),
        "QUIC cannot have connected: {log}"
    );
}

/// Starts an SSE response through the edge and reads its first event.
async fn open_sse(s: &Stack) -> hyper::body::Incoming {
    let tcp = tokio::net::TcpStream::connect(s.https).await.unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(s.pki.client_config(&[b"http/1.1"])))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/sse")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let mut got = String::new();
    while !got.contains("data: first\n\n") {
        let f = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        got += &String::from_utf8_lossy(f.data_ref().unwrap());
    }
    body
}

/// `--ha-connections 4` over two edge addresses: two connections to each,
/// and both edges serve the tunnel's hostnames.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_connections_spread_over_every_edge() {
    let mut s = Stack::new().await;
    s.start_edge().await;
    // A second edge: same tunnels and hostnames, other ports (chosen again
    // if a parallel test takes one before the edge binds it).
    let port = || std::net::SocketAddr::from(([127, 0, 0, 1], gatehouse_testkit::free_port()));
    let text = std::fs::read_to_string(&s.edge_cfg).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    let cfg2 = s.path().join("edge2.yaml");
    let mut second = None;
    for _ in 0..5 {
        let (https2, tunnel2, admin2) = (port(), port(), port());
        std::fs::write(
            &cfg2,
            text.replace(
                &first,
                &format!("listen: {{https: {https2}, tunnel: {tunnel2}, admin: {admin2}}}"),
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["edge", "--config"]).arg(&cfg2);
        let mut edge2 = gatehouse_testkit::process::Proc::start("edge2", s.path(), cmd);
        if edge2.wait_listening(admin2, Duration::from_secs(20)).await {
            second = Some((edge2, https2, tunnel2, admin2));
            break;
        }
    }
    let (_edge2, https2, tunnel2, admin2) = second.expect("the second edge never started");
    let metrics = port();
    let mut cmd = s.connector_cmd(&s.token.clone(), "quic", metrics);
    // Replace the single --edge and --ha-connections of the stack's command.
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut fixed = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--edge" => {
                let _ = it.next();
                fixed.extend([
                    "--edge".to_owned(),
                    s.tunnel.to_string(),
                    "--edge".to_owned(),
                    tunnel2.to_string(),
                ]);
            }
            "--ha-connections" => {
                let _ = it.next();
                fixed.extend(["--ha-connections".to_owned(), "4".to_owned()]);
            }
            _ => fixed.push(a),
        }
    }
    cmd = std::process::Command::new(common::BIN);
    cmd.args(&fixed);
    let p = gatehouse_testkit::process::Proc::start("connector-ha", s.path(), cmd);
    s.connectors.push((p, metrics));
    s.wait_connections(0, 4).await;
    for admin in [s.admin, admin2] {
        let m = http_get(admin, "/metrics").await.unwrap();
        assert_eq!(
            metric(&m, "gatehouse_edge_tunnel_connections"),
            Some(2.0),
            "{m}"
        );
    }
    for https in [s.https, https2] {
        let out = s
            .curl()
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--resolve", &format!("app.test:{}:127.0.0.1", https.port())])
            .arg(format!("https://app.test:{}/", https.port()))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
}

/// More long-lived requests than a QUIC connection first allows: the
/// connector starts each connection with a small stream allowance and
/// raises it as streams open, so 400 Server-Sent Events streams held open
/// at once over two connections (256 streams allowed at first) all get
/// their first event, then all finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_allowance_grows_with_long_lived_requests() {
    const STREAMS: usize = 400;
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(soft.max(4096).min(hard), hard);
    }
    let mut s = Stack::new().await;
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    let opened = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all((0..STREAMS).map(|_| open_sse(&s))),
    )
    .await;
    let Ok(bodies) = opened else {
        s.dump();
        panic!("not every one of {STREAMS} event streams got its first event");
    };
    s.origin.release_sse();
    for mut body in bodies {
        let mut rest = String::new();
        while let Some(f) = http_body_util::BodyExt::frame(&mut body).await {
            if let Some(d) = f.unwrap().data_ref() {
                rest += &String::from_utf8_lossy(d);
            }
        }
        assert_eq!(rest, "data: second\n\n");
    }
}
