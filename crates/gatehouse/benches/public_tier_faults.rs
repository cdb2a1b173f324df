//! Recovery times of the public tier under faults, QUIC against the
//! TLS/TCP fallback as the same-run baseline (on TCP a killed process's
//! kernel resets its connections at once, so that is the floor).
//!
//! `cargo bench -p gatehouse --bench public_tier_faults` runs, with real
//! `gatehouse` processes on loopback, an edge heartbeat of 2 s (the
//! default) and `BENCH_RUNS` (default 5) runs of each:
//! - a connector killed (SIGKILL) under wrk load while another is healthy:
//!   failed requests, the slowest request, and the time until the edge has
//!   dropped the dead connections;
//! - the only connector killed: time until a request gets its 502;
//! - the edge killed and started again at once: time from the new edge
//!   listening until every connection is back;
//! - the edge killed and started again 3 s later, connectors in `auto`
//!   mode: time from the new edge listening until every connection is back
//!   on QUIC (the baseline: `--transport tcp`, back at all);
//! - the edge stopped with SIGTERM and started again, `auto` mode: the same.
//!
//! Without `--bench` (as `cargo test --benches` runs it) it checks its
//! harness with one run of the edge crash over QUIC.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::Stack;
use common::faults::{
    origin_progress, set_heartbeat, wait_edge_metric, wait_recovered, wrk_during,
};
use std::time::Duration;

/// A fresh stack: edge (heartbeat 2 s) and `n` connectors on `transport`.
async fn stack(transport: &str, n: usize) -> Stack {
    let mut s = Stack::new().await;
    set_heartbeat(&s, "2s");
    s.start_edge().await;
    for i in 0..n {
        s.start_connector(i, transport).await;
    }
    s
}

/// A connector killed under load, another healthy: (failed requests,
/// slowest request in ms, time until the edge dropped the dead
/// connections).
async fn killed_connector(transport: &str) -> (u64, f64, Duration) {
    let s = stack(transport, 2).await;
    let mut dropped = Duration::ZERO;
    let r = wrk_during(s.https.port(), 4, async {
        origin_progress(&s, 200).await;
        s.connectors[0].0.signal("KILL");
        dropped = wait_edge_metric(&s, "gatehouse_edge_tunnel_connections", 2.0).await;
    })
    .await;
    assert!(r.requests > 200, "{}", r.text);
    (r.non_2xx + r.errors, r.max_ms, dropped)
}

/// The only connector killed: time until a request gets its 502 (curl's
/// own measure, from its first byte out).
async fn only_connector_killed(transport: &str) -> Duration {
    let mut s = stack(transport, 1).await;
    s.connectors[0].0.signal("KILL");
    tokio::task::block_in_place(|| s.connectors[0].0.wait());
    let out = s
        .curl()
        .args(["-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
        .arg(s.url("localhost", "/after-kill"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, secs) = text.split_once(' ').unwrap();
    assert_eq!(code, "502", "{text}");
    Duration::from_secs_f64(secs.trim().parse().unwrap())
}

/// The edge killed, down for `outage`, started again: time from the new
/// edge listening until every connection is back (on QUIC unless the
/// connectors run `--transport tcp`).
async fn edge_crash(transport: &str, outage: Duration) -> Duration {
    let mut s = stack(transport, 1).await;
    let mut edge = s.edge.take().unwrap();
    edge.signal("KILL");
    tokio::task::block_in_place(|| edge.wait());
    // The outage itself, the fault being measured (not a synchronisation).
    tokio::time::sleep(outage).await;
    s.start_edge().await;
    wait_recovered(&s, 0, 2.0, transport != "tcp").await
}

/// The edge stopped with SIGTERM (nothing in flight) and started again.
async fn edge_stop(transport: &str) -> Duration {
    let mut s = stack(transport, 1).await;
    let mut edge = s.edge.take().unwrap();
    edge.signal("TERM");
    assert!(tokio::task::block_in_place(|| edge.wait()));
    s.start_edge().await;
    wait_recovered(&s, 0, 2.0, transport != "tcp").await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "median (min–max)" of millisecond samples.
fn spread(v: &mut [f64]) -> (f64, String) {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    (
        median,
        format!("{median:.0} ms ({:.0}–{:.0})", v[0], v[v.len() - 1]),
    )
}

fn row(name: &str, quic: &mut [f64], tcp: &mut [f64]) {
    let (q, qs) = spread(quic);
    let (t, ts) = spread(tcp);
    println!("| {name} | {qs} | {ts} | {:.1}× |", q / t.max(1.0));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        let d = edge_crash("quic", Duration::ZERO).await;
        println!("public_tier_faults harness ok (edge crash over QUIC: back in {d:?})");
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (mut q_fail, mut t_fail) = (0, 0);
    let (mut q_max, mut t_max, mut q_drop, mut t_drop) = (vec![], vec![], vec![], vec![]);
    let (mut q_502, mut t_502) = (vec![], vec![]);
    let (mut q_crash, mut t_crash) = (vec![], vec![]);
    let (mut q_outage, mut t_outage) = (vec![], vec![]);
    let (mut q_stop, mut t_stop) = (vec![], vec![]);
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        for (transport, fail, max, drop) in [
            ("quic", &mut q_fail, &mut q_max, &mut q_drop),
            ("tcp", &mut t_fail, &mut t_max, &mut t_drop),
        ] {
            let (f, m, d) = killed_connector(transport).await;
            *fail += f;
            max.push(m);
            drop.push(ms(d));
        }
        q_502.push(ms(only_connector_killed("quic").await));
        t_502.push(ms(only_connector_killed("tcp").await));
        q_crash.push(ms(edge_crash("quic", Duration::ZERO).await));
        t_crash.push(ms(edge_crash("tcp", Duration::ZERO).await));
        let outage = Duration::from_secs(3);
        q_outage.push(ms(edge_crash("auto", outage).await));
        t_outage.push(ms(edge_crash("tcp", outage).await));
        q_stop.push(ms(edge_stop("auto").await));
        t_stop.push(ms(edge_stop("tcp").await));
    }
    println!(
        "{runs} runs each, median (min–max); edge heartbeat 2 s, 2 connections per connector\n"
    );
    println!("| fault | QUIC (`auto` where noted) | TLS/TCP (baseline) | QUIC / TCP |");
    println!("|---|---|---|---|");
    row(
        "connector killed under wrk load: slowest request",
        &mut q_max,
        &mut t_max,
    );
    row(
        "connector killed under wrk load: dead connections dropped by the edge",
        &mut q_drop,
        &mut t_drop,
    );
    row(
        "only connector killed: a request's 502",
        &mut q_502,
        &mut t_502,
    );
    row(
        "edge killed, restarted at once: all connections back",
        &mut q_crash,
        &mut t_crash,
    );
    row(
        "edge killed, restarted 3 s later (`auto`): all connections back on QUIC",
        &mut q_outage,
        &mut t_outage,
    );
    row(
        "edge stopped (SIGTERM), restarted (`auto`): all connections back on QUIC",
        &mut q_stop,
        &mut t_stop,
    );
    println!(
        "\nfailed requests while a healthy connector was connected: QUIC {q_fail}, TLS/TCP {t_fail} (of {runs} runs of 4 s of wrk, 16 connections)"
    );
}
