//! What the failover tests and the fault benchmark drive: wrk load while a
//! fault happens, a stand-in for the edge's tunnel port whose UDP side can
//! be cut (a firewall dropping QUIC), and the metrics that show recovery.

use super::{Stack, http_get, metric};
use gatehouse_testkit::wait_for;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// wrk's connections (so its requests in flight).
pub const CONNS: u64 = 16;

pub struct WrkResult {
    pub requests: u64,
    pub non_2xx: u64,
    pub errors: u64,
    /// The slowest request, in ms.
    pub max_ms: f64,
    /// The 99th percentile, in ms.
    pub p99_ms: f64,
    pub text: String,
}

/// Milliseconds of a wrk duration such as `1.50s`, `12.3ms` or `950.00us`.
pub fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    let num = |v: &str| v.parse::<f64>().unwrap_or(0.0);
    if let Some(v) = s.strip_suffix("us") {
        num(v) / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        num(v)
    } else if let Some(v) = s.strip_suffix('m') {
        num(v) * 60_000.0
    } else if let Some(v) = s.strip_suffix('s') {
        num(v) * 1000.0
    } else {
        0.0
    }
}

/// Runs wrk for `secs` against the edge's `https` port while `during` runs.
pub async fn wrk_during<F: std::future::Future<Output = ()>>(
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
    // "    Latency   1.23ms  2.34ms  45.67ms   90.12%": mean, stdev, max.
    let max_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Latency"))
        .and_then(|r| r.split_whitespace().nth(2))
        .map_or(0.0, parse_ms);
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or(0.0, parse_ms);
    WrkResult {
        requests,
        non_2xx: num("Non-2xx or 3xx responses:"),
        errors,
        max_ms,
        p99_ms,
        text,
    }
}

/// Waits until the origin has seen `n` more requests than now.
pub async fn origin_progress(s: &Stack, n: usize) {
    let start = s.origin.seen().len();
    wait_for(
        "load reaching the origin",
        Duration::from_secs(30),
        || async move { (s.origin.seen().len() >= start + n).then_some(()) },
    )
    .await;
}

/// A metric of the edge (`None` while it does not answer).
pub async fn edge_metric(s: &Stack, name: &str) -> Option<f64> {
    metric(&http_get(s.admin, "/metrics").await?, name)
}

/// A metric of connector `i`.
pub async fn connector_metric(s: &Stack, i: usize, name: &str) -> Option<f64> {
    metric(&http_get(s.connectors[i].1, "/metrics").await?, name)
}

/// Waits until the edge reports `value` for `name`; returns how long that
/// took.
pub async fn wait_edge_metric(s: &Stack, name: &str, value: f64) -> Duration {
    let t0 = Instant::now();
    wait_for(
        &format!("edge metric {name} at {value}"),
        Duration::from_secs(30),
        || async move { (edge_metric(s, name).await == Some(value)).then_some(()) },
    )
    .await;
    t0.elapsed()
}

/// Waits until connector `i` has `n` connections, none of them on the
/// TLS/TCP fallback; returns how long that took.
pub async fn wait_all_quic(s: &Stack, i: usize, n: f64) -> Duration {
    let t0 = Instant::now();
    wait_for(
        &format!("connector {i} with {n} QUIC connections"),
        Duration::from_secs(30),
        || async move {
            let live = connector_metric(s, i, "gatehouse_connector_connections").await;
            let tcp = connector_metric(s, i, "gatehouse_connector_tcp_connections").await;
            (live == Some(n) && tcp == Some(0.0)).then_some(())
        },
    )
    .await;
    t0.elapsed()
}

/// Sets the heartbeat the edge asks of connectors (the stack's is 500 ms).
/// QUIC's idle timeout follows it: three heartbeats, at most three seconds
/// (the connector's own bound).
pub fn set_heartbeat(s: &Stack, heartbeat: &str) {
    let text = std::fs::read_to_string(&s.edge_cfg).unwrap();
    let text = text.replace("heartbeat: 500ms", &format!("heartbeat: {heartbeat}"));
    std::fs::write(&s.edge_cfg, text).unwrap();
}

/// A port standing for the edge's tunnel port: TCP connections are passed
/// to the edge; UDP datagrams are relayed both ways while `udp` is on and
/// dropped otherwise, as by a firewall that blocks QUIC.
pub struct TunnelPort {
    pub addr: SocketAddr,
    udp: Arc<AtomicBool>,
}

impl TunnelPort {
    pub async fn start(edge: SocketAddr, udp_on: bool) -> Self {
        let port = gatehouse_testkit::free_port();
        let front = Arc::new(
            tokio::net::UdpSocket::bind(("127.0.0.1", port))
                .await
                .unwrap(),
        );
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let udp = Arc::new(AtomicBool::new(udp_on));
        tokio::spawn(async move {
            while let Ok((mut a, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut b) = tokio::net::TcpStream::connect(edge).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
        let on = udp.clone();
        tokio::spawn(async move {
            // One socket toward the edge per client address, so that the
            // edge's answers find their way back.
            let mut backs: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                if !on.load(Ordering::Relaxed) {
                    continue;
                }
                let back = match backs.get(&client) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        b.connect(edge).await.unwrap();
                        let (b2, front2, on2) = (b.clone(), front.clone(), on.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            loop {
                                // (A refused send shows up here as an
                                // error; later datagrams still arrive.)
                                let Ok(n) = b2.recv(&mut buf).await else {
                                    continue;
                                };
                                if on2.load(Ordering::Relaxed) {
                                    let _ = front2.send_to(&buf[..n], client).await;
                                }
                            }
                        });
                        backs.insert(client, b.clone());
                        b
                    }
                };
                let _ = back.send(&buf[..n]).await;
            }
        });
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            udp,
        }
    }

    /// Lets UDP through, or drops it.
    pub fn set_udp(&self, on: bool) {
        self.udp.store(on, Ordering::Relaxed);
    }
}

/// After the edge was restarted: waits until the new edge has `n` tunnel
/// connections and connector `i` has `n`, none on the TLS/TCP fallback
/// when `quic`; returns how long that took. (A connector's own count alone
/// would still include connections to the dead edge it has not noticed.)
pub async fn wait_recovered(s: &Stack, i: usize, n: f64, quic: bool) -> Duration {
    let t0 = Instant::now();
    wait_for(
        &format!("connector {i} back with {n} connections"),
        Duration::from_secs(60),
        || async move {
            let edge = edge_metric(s, "gatehouse_edge_tunnel_connections").await;
            let live = connector_metric(s, i, "gatehouse_connector_connections").await;
            let tcp = connector_metric(s, i, "gatehouse_connector_tcp_connections").await;
            let transport_ok = !quic || tcp == Some(0.0);
            (edge == Some(n) && live == Some(n) && transport_ok).then_some(())
        },
    )
    .await;
    t0.elapsed()
}
