//! Reconcile N Ingresses against the scripted mock API server (testkit's
//! tracker behind kube-rs's `tower_test` pair) with a real control: total
//! time of the first pass (everything created, one key minted per Ingress)
//! and of a second pass over the same Ingresses (nothing changed: the
//! same-run baseline), API writes and reads per Ingress, and RSS.
//!
//! Run: `cargo bench -p gatehouse-operator --bench reconcile_scale`
//! (`-- --ingresses N` for another size). Under `cargo test --benches` it
//! runs 20 Ingresses and checks the counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Env, ingress, service};
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn pass(env: &Env, n: usize) -> (f64, usize, usize) {
    env.tracker.clear_log();
    let t = Instant::now();
    for i in 0..n {
        let ns = format!("app{i}");
        let obj = env
            .tracker
            .get("networking.k8s.io/v1", "Ingress", &ns, "web")
            .unwrap();
        let ing: Ingress = serde_json::from_value(obj).unwrap();
        gatehouse_operator::reconcile(Arc::new(ing), env.ctx.clone())
            .await
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let reqs = env.tracker.requests();
    let writes = reqs.iter().filter(|r| r.is_write()).count();
    (secs, writes, reqs.len() - writes)
}

async fn run(n: usize) -> (usize, usize) {
    // Control's node list cached as `gatehouse operator run` caches it.
    let env = Env::with_node_list_ttl(gatehouse_operator::mesh::NODE_LIST_TTL).await;
    let before = rss_kib("VmRSS:");
    for i in 0..n {
        let ns = format!("app{i}");
        env.tracker.insert(service(&ns, "web", 80, json!(8080)));
        env.tracker
            .insert(ingress(&ns, "web", &[&format!("k8s-web-{i}")], json!({})));
    }
    let (t1, w1, r1) = pass(&env, n).await;
    let (t2, w2, r2) = pass(&env, n).await;
    let after = rss_kib("VmRSS:");
    let per = |x: usize| x as f64 / n as f64;
    println!(
        "reconcile_scale: {n} Ingresses (one proxy each, NetworkPolicy, real control minting keys)"
    );
    println!(
        "  first pass   {t1:.2} s ({:.2} ms/Ingress), {:.1} writes and {:.1} reads per Ingress",
        t1 * 1000.0 / n as f64,
        per(w1),
        per(r1)
    );
    println!(
        "  second pass  {t2:.2} s ({:.2} ms/Ingress), {:.1} writes and {:.1} reads per Ingress; ratio first/second {:.1}x",
        t2 * 1000.0 / n as f64,
        per(w2),
        per(r2),
        t1 / t2
    );
    println!(
        "  RSS {:.1} MiB before, {:.1} MiB after, peak {:.1} MiB (process = operator + mock API store + control)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        rss_kib("VmHWM:") as f64 / 1024.0
    );
    (w1, w2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let n = match args.iter().position(|a| a == "--ingresses") {
        Some(i) => args[i + 1].parse().unwrap(),
        None if bench => 1_000,
        None => 20,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (w1, w2) = rt.block_on(run(n));
    // Finalizer, ServiceAccount, Role, RoleBinding, Secret, StatefulSet,
    // NetworkPolicy, one event: 8 writes each; then none.
    assert_eq!(w1, 8 * n, "first pass writes");
    assert_eq!(w2, 0, "second pass writes");
}
