//! The operator as a process (`gatehouse operator run`, as deployed) against
//! testkit's object tracker served over HTTP, with a real control: N
//! Ingresses are stored, the operator starts, and the benchmark waits until
//! every Ingress has its StatefulSet, NetworkPolicy and `ProxyApplied`
//! event. Reports the time, the operator's RSS, and API writes per
//! Ingress; then counts the writes of ten idle seconds (nothing changed, expected 0), and restarts the
//! operator over the same objects (the same-run baseline: every Ingress
//! reconciled again with nothing to write).
//!
//! Run: `cargo bench -p gatehouse --bench operator_scale` (1,000 Ingresses;
//! `-- --ingresses N` for another size, `-- --concurrency N` for the
//! operator's reconcile limit, default 16). Under `cargo test --benches`
//! it runs 20 Ingresses and checks the counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_testkit::TestControl;
use gatehouse_testkit::kube_tracker::Tracker;
use gatehouse_testkit::process::Proc;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn run(n: usize, idle: Duration, concurrency: &str) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let control = TestControl::start().await;
    let oauth_secret = control.operator_secret().await;
    let secret = dir.path().join("oauth");
    std::fs::write(&secret, oauth_secret).unwrap();
    let tracker = Tracker::new();
    let addr = tracker.serve().await;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters: [{{name: l, cluster: {{server: 'http://{addr}'}}}}]\nusers: [{{name: l, user: {{}}}}]\ncontexts: [{{name: l, context: {{cluster: l, user: l, namespace: gatehouse}}}}]\ncurrent-context: l\n"),
    )
    .unwrap();
    for i in 0..n {
        let ns = format!("app{i}");
        tracker.insert(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }));
        tracker.insert(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "ingressClassName": "gatehouse",
                "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
                "tls": [{"hosts": [format!("k8s-web-{i}")]}],
            },
        }));
    }
    tracker.clear_log();
    let operator = || {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "operator",
            "run",
            "--image",
            "ghcr.io/gatehouse-dev/gatehouse:0.1.0",
        ])
        .args(["--control", &control.info.join, "--oauth-secret-file"])
        .arg(&secret)
        .args(["--lease", "none", "--netpol", "kubernetes"])
        .args(["--concurrency", concurrency])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn");
        cmd
    };
    let start = Instant::now();
    let mut op = Proc::start("operator", dir.path(), operator());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let sts = tracker.list("apps/v1", "StatefulSet").len();
        let np = tracker.list("networking.k8s.io/v1", "NetworkPolicy").len();
        // Each first reconcile ends with its `ProxyApplied` event, written
        // after the NetworkPolicy: done when every Ingress has one.
        let applied = tracker
            .writes()
            .iter()
            .filter(|w| w.path.contains("/events"))
            .count();
        if sts == n && np == n && applied >= n {
            break;
        }
        assert!(Instant::now() < deadline && op.running(), "{}", op.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let rss = rss_mib(op.pid(), "VmRSS:");
    let writes: Vec<_> = tracker.writes();
    let events = writes.iter().filter(|w| w.path.contains("/events")).count();
    let objects = writes.len() - events;
    tracker.clear_log();
    tokio::time::sleep(idle).await;
    let idle_writes = tracker.writes().len();
    let idle_reads = tracker.requests().len() - idle_writes;
    println!(
        "operator_scale: {n} Ingresses, `gatehouse operator run --concurrency {concurrency}` against the tracker over HTTP, real control"
    );
    println!(
        "  all proxies and policies applied in {took:.2} s ({:.1} Ingresses/s)",
        n as f64 / took
    );
    println!(
        "  writes per Ingress: {:.1} objects + {:.1} events",
        objects as f64 / n as f64,
        events as f64 / n as f64
    );
    println!(
        "  operator RSS {rss:.1} MiB (peak {:.1} MiB)",
        rss_mib(op.pid(), "VmHWM:")
    );
    println!(
        "  then {} s idle: {idle_writes} writes, {idle_reads} reads",
        idle.as_secs()
    );
    op.signal("TERM");
    let _ = op.wait();

    // Same-run baseline: a restart over the same objects. The operator
    // lists every Ingress again and reconciles each, finding nothing to
    // write; done when every Ingress's NetworkPolicy was read.
    tracker.clear_log();
    let start = Instant::now();
    let mut op = Proc::start("operator-restart", dir.path(), operator());
    loop {
        let seen: std::collections::HashSet<String> = tracker
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.contains("/networkpolicies/"))
            .map(|r| r.path)
            .collect();
        if seen.len() == n {
            break;
        }
        assert!(Instant::now() < deadline && op.running(), "{}", op.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = start.elapsed().as_secs_f64();
    let restart_writes = tracker.writes().len();
    println!(
        "  restart over the same Ingresses (nothing to write): {again:.2} s, {restart_writes} writes; first start / restart {:.1}x",
        took / again
    );
    op.signal("TERM");
    let _ = op.wait();
    (objects, idle_writes + restart_writes)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let n = match args.iter().position(|a| a == "--ingresses") {
        Some(i) => args[i + 1].parse().unwrap(),
        None if bench => 1_000,
        None => 20,
    };
    let idle = Duration::from_secs(if bench { 10 } else { 2 });
    let concurrency = match args.iter().position(|a| a == "--concurrency") {
        Some(i) => args[i + 1].clone(),
        None => "16".into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (objects, idle_writes) = rt.block_on(run(n, idle, &concurrency));
    // Finalizer, ServiceAccount, Role, RoleBinding, Secret, StatefulSet,
    // NetworkPolicy, and the connector's ConfigMap once.
    assert_eq!(objects, 7 * n + 1, "object writes");
    assert_eq!(
        idle_writes, 0,
        "writes while nothing changes (idle, restart)"
    );
}
