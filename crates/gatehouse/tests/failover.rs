//! Availability under faults, with real processes killed and restarted on
//! loopback and wrk as the load: a connector killed, a rolling restart with
//! graceful shutdown, an edge restarted, crashed, draining, and QUIC blocked
//! then let through again. Each fault test reports the recovery time it
//! measured; the timings are compared in
//! `crates/gatehouse/benches/public_tier_faults.rs`, not asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::faults::{
    CONNS, TunnelPort, connector_metric, edge_metric, origin_progress, set_heartbeat,
    wait_all_quic, wait_edge_metric, wrk_during,
};
use common::{Stack, http_get, metric};
use gatehouse_testkit::wait_for;
use std::time::{Duration, Instant};

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
    assert_eq!(
        (r.non_2xx, r.errors),
        (0, 0),
        "failures while another connector was healthy ({CONNS} in flight):\n{}",
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
    let port = TunnelPort::start(s.tunnel, false).await;
    s.tunnel = port.addr;
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
    assert_eq!(
        connector_metric(&s, 0, "gatehouse_connector_tcp_connections").await,
        Some(2.0)
    );
}

/// A connector on the TLS/TCP fallback because QUIC was blocked moves back
/// to QUIC once UDP passes again (it keeps trying QUIC in the background),
/// and no request fails while its connections move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connectors_return_to_quic_once_it_works_again() {
    let mut s = Stack::new().await;
    s.start_edge().await;
    let port = TunnelPort::start(s.tunnel, false).await;
    s.tunnel = port.addr;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], gatehouse_testkit::free_port()));
    let mut cmd = s.connector_cmd(&s.token.clone(), "auto", metrics);
    cmd.args(["--handshake-timeout", "1s"]);
    let p = gatehouse_testkit::process::Proc::start("connector-auto", s.path(), cmd);
    s.connectors.push((p, metrics));
    s.wait_connections(0, 2).await;
    assert_eq!(
        connector_metric(&s, 0, "gatehouse_connector_tcp_connections").await,
        Some(2.0),
        "both connections on the fallback while UDP is blocked"
    );
    let mut back = Duration::ZERO;
    let r = wrk_during(s.https.port(), 6, async {
        origin_progress(&s, 100).await;
        port.set_udp(true);
        back = wait_all_quic(&s, 0, 2.0).await;
        origin_progress(&s, 100).await;
    })
    .await;
    eprintln!(
        "UDP let through again: all connections on QUIC after {back:?}\n{}",
        r.text
    );
    assert_eq!(
        (r.non_2xx, r.errors),
        (0, 0),
        "requests failed while connections moved to QUIC:\n{}",
        r.text
    );
    let log = s.connectors[0].0.output();
    assert_eq!(
        log.matches("QUIC works again").count(),
        2,
        "each connection moved once: {log}"
    );
    assert_eq!(
        edge_metric(&s, "gatehouse_edge_tunnel_connections").await,
        Some(2.0)
    );
}

/// A connector killed (SIGKILL) under load while another is healthy: no
/// request fails. The edge probes the dead connector's connections as soon
/// as a request on one hears nothing, closes them when the probe goes
/// unanswered, and retries the requests they held on the other connector.
/// Then the last connector is killed: a request gets its 502 as soon as
/// the probe is over, not after QUIC's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_connector_is_dropped_after_one_unanswered_probe() {
    let mut s = Stack::new().await;
    // Heartbeats of 2 s: QUIC's idle timeout (3 s) is far from what the
    // probes take, so only the probes can have found the dead connections.
    set_heartbeat(&s, "2s");
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    s.start_connector(1, "quic").await;
    let mut dropped = Duration::ZERO;
    let r = wrk_during(s.https.port(), 4, async {
        origin_progress(&s, 200).await;
        s.connectors[0].0.signal("KILL");
        dropped = wait_edge_metric(&s, "gatehouse_edge_tunnel_connections", 2.0).await;
    })
    .await;
    let probes = edge_metric(&s, "gatehouse_edge_tunnel_probe_failures_total").await;
    eprintln!(
        "connector killed under load: slowest request {:.0} ms, p99 {:.1} ms; its connections dropped within {dropped:?}\n{}",
        r.max_ms, r.p99_ms, r.text
    );
    assert!(r.requests > 200, "{}", r.text);
    assert_eq!(
        (r.non_2xx, r.errors),
        (0, 0),
        "requests failed although a healthy connector was connected:\n{}",
        r.text
    );
    assert_eq!(
        probes,
        Some(2.0),
        "both connections of the killed connector closed by a probe\n{}",
        s.edge_log()
    );

    // The last connector dies: requests fail fast.
    s.connectors[1].0.signal("KILL");
    tokio::task::block_in_place(|| s.connectors[1].0.wait());
    let t0 = Instant::now();
    let (code, body) = s.get("localhost", "/after-kill", &[]).await;
    let answered = t0.elapsed();
    eprintln!("only connector killed: 502 after {answered:?}");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("failed before the origin answered"), "{body}");
    assert_eq!(
        edge_metric(&s, "gatehouse_edge_tunnel_probe_failures_total").await,
        Some(4.0),
        "{}",
        s.edge_log()
    );
    assert_eq!(
        edge_metric(&s, "gatehouse_edge_tunnel_connections").await,
        Some(0.0)
    );
}

/// An edge killed (SIGKILL) and started again at once: the connectors'
/// QUIC connections to the dead process end as soon as they send the new
/// one a packet, because it answers with a stateless reset they accept
/// (its keys are derived from the tunnel TLS key), not after QUIC's idle
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_edge_is_replaced_without_waiting_for_idle_timeouts() {
    let mut s = Stack::new().await;
    set_heartbeat(&s, "2s");
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    let mut edge = s.edge.take().unwrap();
    edge.signal("KILL");
    tokio::task::block_in_place(|| edge.wait());
    let down = Instant::now();
    s.start_edge().await;
    let listening = Instant::now();
    let back = wait_edge_metric(&s, "gatehouse_edge_tunnel_connections", 2.0).await;
    eprintln!(
        "edge crash: restarted in {:?}, connectors back {back:?} after it listened",
        listening - down
    );
    let log = s.connectors[0].0.output();
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tunnel connection lost"))
        .collect();
    assert_eq!(lost.len(), 2, "{log}");
    for l in lost {
        assert!(l.contains("reset by peer"), "not ended by a reset: {l}");
    }
    assert_eq!(s.get("localhost", "/after-crash", &[]).await.0, 200);
}

/// A draining edge (SIGTERM, a response still in flight) accepts no new
/// tunnel connection on either transport; connectors it closed, and new
/// ones, connect to its successor over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_edge_takes_no_new_tunnel_connections() {
    let mut s = Stack::new().await;
    s.start_edge().await;
    s.start_connector(0, "auto").await;
    let mut sse = open_sse(&s).await;
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
    // A connector arriving now: QUIC is refused, then TLS/TCP.
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], gatehouse_testkit::free_port()));
    let mut cmd = s.connector_cmd(&s.token.clone(), "auto", metrics);
    cmd.args(["--handshake-timeout", "1s"]);
    let late = gatehouse_testkit::process::Proc::start("connector-late", s.path(), cmd);
    let refused_tcp = |log: &str| {
        log.lines()
            .any(|l| l.contains("could not connect to the edge") && l.contains("\"tcp\":true"))
    };
    wait_for(
        "the late connector refused on both transports",
        Duration::from_secs(20),
        || {
            let log = late.output();
            async move {
                assert!(
                    !log.contains("tunnel connection registered"),
                    "a draining edge registered a connection: {log}"
                );
                refused_tcp(&log).then_some(())
            }
        },
    )
    .await;
    s.connectors.push((late, metrics));
    // The response in flight still finishes.
    s.origin.release_sse();
    let mut rest = String::new();
    while let Some(f) = http_body_util::BodyExt::frame(&mut sse).await {
        if let Some(d) = f.unwrap().data_ref() {
            rest += &String::from_utf8_lossy(d);
        }
    }
    assert_eq!(rest, "data: second\n\n");
    assert!(
        tokio::task::block_in_place(|| edge.wait()),
        "edge did not exit cleanly"
    );
    let log = edge.output();
    let after_drain = log.split_once("edge draining").map_or("", |(_, rest)| rest);
    assert!(
        !after_drain.contains("tunnel connection registered"),
        "registered while draining: {log}"
    );
    s.start_edge().await;
    let mut back = Duration::ZERO;
    for i in 0..2 {
        back = back.max(wait_all_quic(&s, i, 2.0).await);
    }
    eprintln!(
        "draining edge replaced: every connector on QUIC {back:?} after the new edge listened"
    );
    assert_eq!(
        edge_metric(&s, "gatehouse_edge_tunnel_connections").await,
        Some(4.0)
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
