//! The operator as a process (`gatehouse operator run`, as deployed) over N
//! Ingresses, against a real API server (kube-apiserver on kine, testkit's
//! `kube_apiserver`, the operator acting as deploy/'s ServiceAccount) and,
//! in the same run, against testkit's object tracker served over HTTP (the
//! baseline: the API server's own cost is the difference). Both with a
//! real control. N Ingresses are stored, the operator starts, and the
//! benchmark waits until every Ingress has its StatefulSet, NetworkPolicy
//! and `ProxyApplied` event. Reports the time, the operator's RSS, and API
//! writes per Ingress (the tracker's log; the API server's audit log);
//! then counts the writes of ten idle seconds (nothing changed, expected
//! 0), and restarts the operator over the same objects (every Ingress
//! reconciled again with nothing to write).
//!
//! Run: `cargo bench -p gatehouse --bench operator_scale` (1,000
//! Ingresses; `-- --ingresses N` for another size, `-- --concurrency N`
//! for the operator's reconcile limit, default 16, `-- --only apiserver`
//! or `--only tracker` for one of the two). Under `cargo test --benches`
//! it runs 20 Ingresses on both and checks the counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_testkit::TestControl;
use gatehouse_testkit::kube_apiserver::{ApiServer, Audited, Options, Who, run_ok};
use gatehouse_testkit::kube_tracker::{Recorded, Tracker};
use gatehouse_testkit::process::Proc;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
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

/// One request, as either backend saw it.
#[derive(Debug, Clone)]
struct Req {
    write: bool,
    event: bool,
    /// GET of a NetworkPolicy by name: its namespace.
    np_read: Option<String>,
}

/// Where the objects live.
enum Backend {
    Tracker(Tracker),
    Api(Box<ApiServer>, kube::Client),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Tracker(_) => "the tracker over HTTP",
            Backend::Api(..) => "kube-apiserver on kine",
        }
    }

    /// The operator's requests so far.
    fn requests(&self) -> Vec<Req> {
        match self {
            Backend::Tracker(t) => t
                .requests()
                .into_iter()
                .map(|r: Recorded| Req {
                    write: r.is_write(),
                    event: r.path.contains("/events"),
                    np_read: (r.method == "GET" && r.path.contains("/networkpolicies/"))
                        .then(|| r.path.clone()),
                })
                .collect(),
            Backend::Api(s, _) => {
                let user = gatehouse_testkit::kube_apiserver::service_account_user(
                    "gatehouse",
                    "gatehouse-operator",
                );
                s.audit_of(&user)
                    .into_iter()
                    .filter(|a: &Audited| a.resource != "leases" && !a.resource.is_empty())
                    .map(|a| Req {
                        write: a.is_write() && !a.uri.contains("dryRun=All"),
                        event: a.resource == "events",
                        np_read: (a.verb == "get" && a.resource == "networkpolicies")
                            .then(|| format!("{}/{}", a.namespace, a.name)),
                    })
                    .collect()
            }
        }
    }

    /// How many StatefulSets and NetworkPolicies exist.
    async fn applied(&self) -> (usize, usize) {
        match self {
            Backend::Tracker(t) => (
                t.list("apps/v1", "StatefulSet").len(),
                t.list("networking.k8s.io/v1", "NetworkPolicy").len(),
            ),
            Backend::Api(_, admin) => {
                use k8s_openapi::api::apps::v1::StatefulSet;
                use k8s_openapi::api::networking::v1::NetworkPolicy;
                let lp = kube::api::ListParams::default();
                let s = kube::Api::<StatefulSet>::all(admin.clone())
                    .list_metadata(&lp)
                    .await
                    .map_or(0, |l| l.items.len());
                let n = kube::Api::<NetworkPolicy>::all(admin.clone())
                    .list_metadata(&lp)
                    .await
                    .map_or(0, |l| l.items.len());
                (s, n)
            }
        }
    }
}

fn objects(i: usize) -> [Value; 3] {
    let ns = format!("app{i}");
    [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "ingressClassName": "gatehouse",
                "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
                "tls": [{"hosts": [format!("k8s-web-{i}")]}],
            },
        }),
    ]
}

async fn create(admin: &kube::Client, obj: &Value) {
    use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
    let av = obj["apiVersion"].as_str().unwrap();
    let (g, v) = av.split_once('/').unwrap_or(("", av));
    let gvk = GroupVersionKind::gvk(g, v, obj["kind"].as_str().unwrap());
    let ar = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(admin.clone(), ns, &ar),
        None => Api::all_with(admin.clone(), &ar),
    };
    let o: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    api.create(&PostParams::default(), &o).await.unwrap();
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A backend holding the N Ingresses, and a kubeconfig for the operator.
async fn backend(api: bool, n: usize, dir: &Path) -> (Backend, PathBuf) {
    if !api {
        let tracker = Tracker::new();
        let addr = tracker.serve().await;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!("apiVersion: v1\nkind: Config\nclusters: [{{name: l, cluster: {{server: 'http://{addr}'}}}}]\nusers: [{{name: l, user: {{}}}}]\ncontexts: [{{name: l, context: {{cluster: l, user: l, namespace: gatehouse}}}}]\ncurrent-context: l\n"),
        )
        .unwrap();
        for i in 0..n {
            for o in objects(i).into_iter().skip(1) {
                tracker.insert(o);
            }
        }
        tracker.clear_log();
        return (Backend::Tracker(tracker), kubeconfig);
    }
    let s = ApiServer::start(Options::default());
    let d = root().join("deploy");
    run_ok(
        s.kubectl(&Who::Admin, "default")
            .args(["apply", "-f"])
            .arg(d.join("namespace.yaml"))
            .arg("-f")
            .arg(d.join("crds")),
    );
    run_ok(s.kubectl(&Who::Admin, "default").args([
        "wait",
        "--for=condition=established",
        "crd/proxyclasses.gatehouse.dev",
    ]));
    run_ok(
        s.kubectl(&Who::Admin, "default")
            .args(["apply", "-f"])
            .arg(&d),
    );
    let admin = s.admin().await;
    let token = s
        .service_account_token("gatehouse", "gatehouse-operator")
        .await;
    let kubeconfig = s.kubeconfig(&Who::Token(token), "gatehouse");
    // 32 at a time, as a GitOps tool applying a directory would.
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let admin = admin.clone();
            async move {
                for o in objects(i) {
                    create(&admin, &o).await;
                }
            }
        })
        .await;
    (Backend::Api(Box::new(s), admin), kubeconfig)
}

struct Stats {
    took: f64,
    objects: usize,
    events: usize,
    rss: f64,
    peak: f64,
    idle_writes: usize,
    idle_reads: usize,
    restart: f64,
    restart_writes: usize,
}

async fn run(api: bool, n: usize, idle: Duration, concurrency: &str) -> Stats {
    let dir = tempfile::tempdir().unwrap();
    let control = TestControl::start().await;
    let oauth_secret = control.operator_secret().await;
    let secret = dir.path().join("oauth");
    std::fs::write(&secret, oauth_secret).unwrap();
    let (b, kubeconfig) = backend(api, n, dir.path()).await;
    let operator = || {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "operator",
            "run",
            "--image",
            "ghcr.io/gatehouse-dev/gatehouse-proxy:0.1.0",
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
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let (sts, np) = b.applied().await;
        // Each first reconcile ends with its `ProxyApplied` event, written
        // after the NetworkPolicy: done when every Ingress has one.
        let applied = b.requests().iter().filter(|r| r.event && r.write).count();
        if sts == n && np == n && applied >= n {
            break;
        }
        assert!(Instant::now() < deadline && op.running(), "{}", op.output());
        tokio::time::sleep(Duration::from_millis(if api { 250 } else { 20 })).await;
    }
    let took = start.elapsed().as_secs_f64();
    let rss = rss_mib(op.pid(), "VmRSS:");
    let peak = rss_mib(op.pid(), "VmHWM:");
    let reqs = b.requests();
    let events = reqs.iter().filter(|r| r.write && r.event).count();
    let objects = reqs.iter().filter(|r| r.write && !r.event).count();
    let mark = reqs.len();
    tokio::time::sleep(idle).await;
    let after = b.requests();
    let idle_writes = after[mark..].iter().filter(|r| r.write).count();
    let idle_reads = after.len() - mark - idle_writes;
    op.signal("TERM");
    let _ = op.wait();

    // Same-run baseline: a restart over the same objects. The operator
    // lists every Ingress again and reconciles each, finding nothing to
    // write; done when every Ingress's NetworkPolicy was read.
    let mark = b.requests().len();
    let start = Instant::now();
    let mut op = Proc::start("operator-restart", dir.path(), operator());
    loop {
        let seen: std::collections::HashSet<String> = b.requests()[mark..]
            .iter()
            .filter_map(|r| r.np_read.clone())
            .collect();
        if seen.len() == n {
            break;
        }
        assert!(Instant::now() < deadline && op.running(), "{}", op.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restart = start.elapsed().as_secs_f64();
    let restart_writes = b.requests()[mark..].iter().filter(|r| r.write).count();
    op.signal("TERM");
    let _ = op.wait();
    println!(
        "operator_scale: {n} Ingresses, `gatehouse operator run --concurrency {concurrency}` against {}, real control",
        b.name()
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
    println!("  operator RSS {rss:.1} MiB (peak {peak:.1} MiB)");
    println!(
        "  then {} s idle: {idle_writes} writes, {idle_reads} reads",
        idle.as_secs()
    );
    println!(
        "  restart over the same Ingresses (nothing to write): {restart:.2} s, {restart_writes} writes; first start / restart {:.1}x",
        took / restart
    );
    Stats {
        took,
        objects,
        events,
        rss,
        peak,
        idle_writes,
        idle_reads,
        restart,
        restart_writes,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let n = match arg("--ingresses") {
        Some(v) => v.parse().unwrap(),
        None if bench => 1_000,
        None => 20,
    };
    let idle = Duration::from_secs(if bench { 10 } else { 2 });
    let concurrency = arg("--concurrency").unwrap_or_else(|| "16".into());
    let only = arg("--only");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    for (api, name) in [(true, "apiserver"), (false, "tracker")] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let s = rt.block_on(run(api, n, idle, &concurrency));
        // Finalizer, ServiceAccount, Role, RoleBinding, Secret, StatefulSet,
        // NetworkPolicy, and the connector's ConfigMap once.
        assert_eq!(s.objects, 7 * n + 1, "object writes ({name})");
        assert!(s.events >= n, "events ({name})");
        assert_eq!(
            s.idle_writes + s.restart_writes,
            0,
            "writes while nothing changes (idle, restart; {name})"
        );
        results.push((name, s));
    }
    if let [(_, a), (_, t)] = results.as_slice() {
        println!(
            "operator_scale: kube-apiserver / tracker: first start {:.1}x, restart {:.1}x, operator RSS {:.2}x (peak {:.2}x), idle reads {} / {}",
            a.took / t.took,
            a.restart / t.restart,
            a.rss / t.rss,
            a.peak / t.peak,
            a.idle_reads,
            t.idle_reads,
        );
    }
}
