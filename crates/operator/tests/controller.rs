//! The operator's controller (watches, leader election, the reconcile
//! loop) against a real API server of each test's own: two replicas and a
//! real Lease, the API server restarted under the operator with its
//! storage lost, a watch that resumes too late ("too old resource
//! version") after one API server replica restarted while the other
//! served, and 500 Ingresses applied at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::real::{NS, Real};
use gatehouse_render::NetpolKind;
use gatehouse_testkit::wait_for;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn settings(s: &mut gatehouse_operator::Settings) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    s.netpol = Some(NetpolKind::Kubernetes);
    s.ready_poll = Duration::from_millis(500);
}

fn app(ns: &str, name: &str) -> (Value, Value) {
    (
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "ingressClassName": "gatehouse",
                "defaultBackend": {"service": {"name": name, "port": {"number": 80}}},
                "tls": [{"hosts": [format!("k8s-{name}")]}],
            },
        }),
    )
}

async fn apply_app(env: &Real, client: &kube::Client, ns: &str, name: &str) {
    let (svc, ing) = app(ns, name);
    env.apply_as(client, "kubectl", svc, false).await;
    env.apply_as(client, "kubectl", ing, false).await;
}

/// Waits until Ingress `ns/name` has its proxy StatefulSet and its
/// NetworkPolicy.
async fn applied(env: &Real, ns: &str, name: &str, within: Duration) {
    let sel = format!("gatehouse.dev/ingress-namespace={ns},gatehouse.dev/ingress-name={name}");
    wait_for(&format!("{ns}/{name} applied"), within, || {
        let sel = sel.clone();
        async move {
            let sts = env.list("apps/v1", "StatefulSet", NS, &sel).await;
            let np = env
                .list("networking.k8s.io/v1", "NetworkPolicy", ns, &sel)
                .await;
            (!sts.is_empty() && !np.is_empty()).then_some(())
        }
    })
    .await;
}

async fn holder(env: &Real) -> Option<String> {
    let lease = env
        .get("coordination.k8s.io/v1", "Lease", NS, "gatehouse-operator")
        .await?;
    lease["spec"]["holderIdentity"].as_str().map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_through_a_real_lease() {
    let env = Real::own("lease", false, settings).await;
    let ns = env.ns.clone();
    let a = env.replica("replica-a").await;
    wait_for("a leads", Duration::from_secs(30), || async {
        (holder(&env).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = env.replica("replica-b").await;
    apply_app(&env, &env.admin, &ns, "blog").await;
    applied(&env, &ns, "blog", Duration::from_secs(30)).await;
    assert!(a.ctx.counters.reconciles.load(Ordering::Relaxed) > 0);
    assert_eq!(
        b.ctx.counters.reconciles.load(Ordering::Relaxed),
        0,
        "b only waits"
    );
    assert_eq!(holder(&env).await.as_deref(), Some("replica-a"));
    // The leader stops (a rolling update): it releases the lease, b leads
    // and serves what comes next.
    a.stop().await;
    wait_for("b leads", Duration::from_secs(60), || async {
        (holder(&env).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    apply_app(&env, &env.admin, &ns, "www").await;
    applied(&env, &ns, "www", Duration::from_secs(30)).await;
    assert!(b.ctx.counters.reconciles.load(Ordering::Relaxed) > 0);
    let lease = env
        .get("coordination.k8s.io/v1", "Lease", NS, "gatehouse-operator")
        .await
        .unwrap();
    assert!(
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0) >= 1,
        "{lease}"
    );
    assert_eq!(b.ctx.counters.failures.load(Ordering::Relaxed), 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_lost_under_the_operator_and_it_recreates_what_it_owns() {
    let env = Real::own("lost", true, settings).await;
    let ns = env.ns.clone();
    let op = env.replica("op").await;
    apply_app(&env, &env.admin, &ns, "blog").await;
    applied(&env, &ns, "blog", Duration::from_secs(30)).await;
    let sts_before = env.list("apps/v1", "StatefulSet", NS, "").await;
    // The API server and kine restart: every object is gone.
    env.server.restart(false);
    assert!(
        env.list("apps/v1", "StatefulSet", NS, "").await.is_empty() || {
            // (the namespace itself is gone)
            true
        }
    );
    // What a restore (or the GitOps tool) applies again: deploy/, the
    // namespace, the Service and the Ingress. The operator, still running
    // from before, must notice and recreate its own objects.
    common::real::install(&env.server);
    let admin = env
        .server
        .client(&gatehouse_testkit::kube_apiserver::Who::Admin, &ns)
        .await;
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    nsapi
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    apply_app(&env, &admin, &ns, "blog").await;
    applied(&env, &ns, "blog", Duration::from_secs(60)).await;
    let sts_after = env.list("apps/v1", "StatefulSet", NS, "").await;
    assert_eq!(
        common::real::names(&sts_before),
        common::real::names(&sts_after),
        "the same proxy, recreated"
    );
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", &ns, "blog")
        .await
        .unwrap();
    assert_eq!(
        ing["metadata"]["finalizers"],
        json!(["gatehouse.dev/cleanup"])
    );
    // The connector's ConfigMap (no public Ingress needs it yet) too.
    assert!(
        env.get("v1", "ConfigMap", NS, "gatehouse-connector")
            .await
            .is_some()
    );
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_too_late_relists_and_misses_nothing() {
    let env = Real::own("late", false, settings).await;
    let ns = env.ns.clone();
    // Without leader election (`--lease none`): the watches' own recovery.
    let op = env.controller().await;
    apply_app(&env, &env.admin, &ns, "blog").await;
    applied(&env, &ns, "blog", Duration::from_secs(30)).await;
    // One API server replica restarts while the other serves writes: the
    // operator's watches resume from a resource version older than the
    // restarted server's watch cache ("too old resource version").
    let peer = env.server.start_peer();
    env.server.stop_apiserver(true);
    let restarted = Instant::now();
    let via_peer = peer.admin().await;
    apply_app(&env, &via_peer, &ns, "www").await;
    for i in 0..20 {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("churn-{i}"), "namespace": ns}});
        env.apply_as(&via_peer, "kubectl", cm, false).await;
    }
    env.server.start_apiserver_again();
    peer.stop();
    applied(&env, &ns, "www", Duration::from_secs(60)).await;
    eprintln!("resumed in {:?}", restarted.elapsed());
    // The operator listed Ingresses again after the restart (the watcher
    // relists only when its resource version is gone).
    let user =
        gatehouse_testkit::kube_apiserver::service_account_user(NS, common::real::OPERATOR_SA);
    let lists: Vec<_> = env
        .server
        .audit_of(&user)
        .into_iter()
        .filter(|a| a.verb == "list" && a.resource == "ingresses")
        .collect();
    assert!(lists.len() >= 2, "{lists:?}");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_ingresses_at_once() {
    const N: usize = 500;
    let env = Real::own("many", false, settings).await;
    let ns = env.ns.clone();
    let op = env.replica("op").await;
    let user =
        gatehouse_testkit::kube_apiserver::service_account_user(NS, common::real::OPERATOR_SA);
    let start = Instant::now();
    let names: Vec<String> = (0..N).map(|i| format!("app{i}")).collect();
    futures::future::join_all(names.iter().map(|n| apply_app(&env, &env.admin, &ns, n))).await;
    let stss: Api<DynamicObject> = Api::namespaced_with(
        env.admin.clone(),
        NS,
        &kube::api::ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&()),
    );
    wait_for("every proxy applied", Duration::from_secs(600), || async {
        let n = stss.list(&ListParams::default()).await.ok()?.items.len();
        (n == N).then_some(())
    })
    .await;
    // Each first reconcile ends with its NetworkPolicy and event.
    wait_for("every policy", Duration::from_secs(120), || async {
        (env.list("networking.k8s.io/v1", "NetworkPolicy", &ns, "")
            .await
            .len()
            == N)
            .then_some(())
    })
    .await;
    let took = start.elapsed();
    let settle = Instant::now();
    wait_for("writes settle", Duration::from_secs(120), || async {
        let before = env.server.audit_of(&user).len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        (env.server.audit_of(&user).len() == before).then_some(())
    })
    .await;
    let audit = env.server.audit_of(&user);
    let writes: Vec<_> = audit
        .iter()
        .filter(|a| {
            a.is_write()
                && !a.uri.contains("dryRun=All")
                && a.resource != "events"
                && a.resource != "leases"
        })
        .collect();
    let errors: Vec<_> = audit
        .iter()
        .filter(|a| a.code >= 400 && a.code != 404)
        .collect();
    eprintln!(
        "{N} Ingresses applied in {took:?} (settled {:?} later): {} writes, {} requests, {} errors",
        settle.elapsed(),
        writes.len(),
        audit.len(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "no error storm: {:?}",
        &errors[..errors.len().min(10)]
    );
    // Finalizer, ServiceAccount, Role, RoleBinding, Secret, StatefulSet,
    // NetworkPolicy, and the connector's ConfigMap once.
    assert_eq!(writes.len(), 7 * N + 1, "no write twice");
    assert_eq!(op.ctx.counters.failures.load(Ordering::Relaxed), 0);
    // Pending proxies (nothing runs them here) are polled in control only;
    // each is read in full again every FULL_RECONCILE_EVERY (30 s): in 5
    // idle seconds, nothing is written and no Ingress is read twice (a hot
    // loop would).
    let before = env.server.audit_of(&user).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle: Vec<_> = env.server.audit_of(&user)[before..]
        .iter()
        .filter(|a| a.resource != "leases")
        .cloned()
        .collect();
    assert!(idle.iter().all(|a| !a.is_write()), "{idle:?}");
    let mut reads = std::collections::BTreeMap::<String, usize>::new();
    for a in idle.iter().filter(|a| a.resource == "services") {
        *reads.entry(a.name.clone()).or_default() += 1;
    }
    assert!(reads.values().all(|n| *n == 1), "{reads:?}");
    op.stop().await;
}
