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

/// 500 Ingresses at once load both cores for minutes: that test runs
/// alone, the others side by side.
static ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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
    let _side_by_side = ALONE.read().await;
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
    let _side_by_side = ALONE.read().await;
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
    // Backoff after the restart as in `a_watch_resumed_too_late…`.
    applied(&env, &ns, "blog", Duration::from_secs(240)).await;
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
    let _side_by_side = ALONE.read().await;
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
    // The watches back off as client-go's do (0.8 s doubling to 30 s):
    // refused connections while the server was down, then 403s until the
    // restarted server's authorizer has synced, can add up to a few of
    // those 30 s waits on a loaded machine. What is asserted is that the
    // Ingress written meanwhile is reconciled, not how fast.
    applied(&env, &ns, "www", Duration::from_secs(240)).await;
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
    let _alone = ALONE.write().await;
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
    wait_for("writes settle", Duration::from_secs(300), || async {
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
    // 429 is the API server's priority and fairness asking a client to
    // back off (on a loaded machine a watch can get one); the client waits
    // and retries. Anything else is an error, and so would be more than a
    // handful of 429s: a storm.
    let throttled = audit.iter().filter(|a| a.code == 429).count();
    assert!(throttled <= 10, "{throttled} requests throttled: a storm");
    let errors: Vec<_> = audit
        .iter()
        .filter(|a| a.code >= 400 && a.code != 404 && a.code != 429)
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

/// A grant of a Role or ClusterRole: (API group, resource, verb).
type Grant = (String, String, String);

/// The rules `deploy/rbac.yaml` grants the operator: cluster-wide (the
/// ClusterRole) and in its namespace (the Role).
fn granted() -> (Vec<Grant>, Vec<Grant>) {
    use serde::Deserialize;
    let text = std::fs::read_to_string(common::real::root().join("deploy/rbac.yaml")).unwrap();
    let (mut cluster, mut ns) = (Vec::new(), Vec::new());
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(d).unwrap();
        let out = match v["kind"].as_str() {
            Some("ClusterRole") => &mut cluster,
            Some("Role") => &mut ns,
            _ => continue,
        };
        for r in v["rules"].as_array().unwrap() {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for verb in r["verbs"].as_array().unwrap() {
                        out.push((
                            g.as_str().unwrap().to_string(),
                            res.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    (cluster, ns)
}

/// Drives the operator (leader election on, as deploy/ runs it) through
/// every path that calls the API, then compares what it called (the API
/// server's audit log) with what deploy/rbac.yaml grants: nothing it
/// calls is refused, and nothing granted goes unused, except what it must
/// hold to grant it to the proxies' Roles (RBAC lets nobody grant more
/// than they hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_exactly_what_the_operator_uses() {
    let _side_by_side = ALONE.read().await;
    let env = Real::own("rbac", false, settings).await;
    let ns = env.ns.clone();
    let op = env.replica("op").await;
    // A named target port nothing resolves (EndpointSlices, then Pods are
    // listed; the event repeats on the next full reconcile), public.
    let (mut svc, mut ing) = app(&ns, "blog");
    svc["spec"]["ports"][0]["targetPort"] = json!("web");
    ing["metadata"]["annotations"] = json!({"gatehouse.dev/public-hostname": "blog.example.com"});
    env.apply(svc).await;
    env.apply(ing.clone()).await;
    applied(&env, &ns, "blog", Duration::from_secs(30)).await;
    // Online: the status is written.
    let sts = env.sts_name("blog").await;
    let key = env.authkey(&sts, 0).await;
    let _node = env.control.node(&key, "k8s-blog").await.unwrap();
    wait_for("status", Duration::from_secs(30), || async {
        let i = env
            .get("networking.k8s.io/v1", "Ingress", &ns, "blog")
            .await?;
        i["status"]["loadBalancer"]["ingress"][0]["hostname"]
            .as_str()
            .map(|_| ())
    })
    .await;
    // An Ingress naming no class (the IngressClass is read).
    let (svc, mut plain) = app(&ns, "plain");
    plain["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ingressClassName");
    env.apply(svc).await;
    env.apply(plain).await;
    // A ProxyClass the API server refuses in the StatefulSet (its status).
    let class = format!("bad-{ns}");
    env.apply(json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ProxyClass",
        "metadata": {"name": class},
        "spec": {"statefulSet": {"pod": {"container": {"resources": {
            "requests": {"cpu": "200m"}, "limits": {"cpu": "100m"}}}}}},
    }))
    .await;
    let (svc, mut bad) = app(&ns, "bad");
    bad["metadata"]["annotations"] = json!({"gatehouse.dev/proxy-class": class});
    env.apply(svc).await;
    env.apply(bad).await;
    wait_for("class refused", Duration::from_secs(30), || async {
        let pc = env
            .get("gatehouse.dev/v1alpha1", "ProxyClass", "", &class)
            .await?;
        (pc["status"]["conditions"][0]["status"] == "False").then_some(())
    })
    .await;
    // Hosts change: the old proxy's objects are deleted; an annotation
    // change reconciles blog again (the same NamedPortUnresolved event).
    ing["spec"]["tls"] = json!([{"hosts": ["k8s-www"]}]);
    ing["metadata"]["annotations"]["example.com/rev"] = json!("2");
    env.apply(ing).await;
    wait_for("old proxy gone", Duration::from_secs(30), || async {
        env.get("apps/v1", "StatefulSet", NS, &sts)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // Deleted: cleanup, finalizer.
    env.delete("networking.k8s.io/v1", "Ingress", &ns, "blog")
        .await;
    wait_for("blog gone", Duration::from_secs(30), || async {
        env.get("networking.k8s.io/v1", "Ingress", &ns, "blog")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    op.stop().await;

    // Cilium installed later, the operator restarted: CiliumNetworkPolicies.
    common::real::install_cilium(&env.server);
    let mut s2 = env.settings.clone();
    s2.netpol = None;
    let env2 = Real {
        settings: s2,
        ..env
    };
    let op = env2.replica("op").await;
    apply_app(&env2, &env2.admin, &ns, "cil").await;
    wait_for("CiliumNetworkPolicy", Duration::from_secs(30), || async {
        env2.get(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            &ns,
            "gatehouse-cil-cil",
        )
        .await
    })
    .await;
    env2.delete("networking.k8s.io/v1", "Ingress", &ns, "cil")
        .await;
    wait_for("cil gone", Duration::from_secs(30), || async {
        env2.get("networking.k8s.io/v1", "Ingress", &ns, "cil")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    op.stop().await;

    // What it called, against what it is granted.
    let user =
        gatehouse_testkit::kube_apiserver::service_account_user(NS, common::real::OPERATOR_SA);
    let calls: Vec<_> = env2
        .server
        .audit_of(&user)
        .into_iter()
        .filter(|a| !a.resource.is_empty())
        .collect();
    let refused: Vec<_> = calls.iter().filter(|a| a.code == 403).collect();
    assert!(refused.is_empty(), "refused: {refused:#?}");
    let (cluster, in_ns) = granted();
    let mut used: std::collections::BTreeSet<(Grant, bool)> = Default::default();
    for a in &calls {
        let res = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let in_own_ns = a.namespace == NS;
        used.insert(((a.group.clone(), res.clone(), a.verb.clone()), in_own_ns));
        // A server-side apply that creates is authorised as create too.
        if a.verb == "patch" && a.code == 201 {
            used.insert(((a.group.clone(), res, "create".into()), in_own_ns));
        }
    }
    for (g, in_ns_call) in &used {
        let ok = cluster.contains(g) || (*in_ns_call && in_ns.contains(g));
        assert!(ok, "called without a grant: {g:?}");
    }
    // What the operator grants the proxies' Roles it must hold itself.
    let held_to_grant: Vec<Grant> = ["get", "update", "patch"]
        .iter()
        .map(|v| (String::new(), "secrets".to_string(), v.to_string()))
        .collect();
    let unused_cluster: Vec<_> = cluster
        .iter()
        .filter(|g| !used.iter().any(|(u, _)| u == *g))
        .collect();
    let unused_ns: Vec<_> = in_ns
        .iter()
        .filter(|g| !used.contains(&((*g).clone(), true)) && !held_to_grant.contains(g))
        .collect();
    assert!(
        unused_cluster.is_empty() && unused_ns.is_empty(),
        "granted but never used: cluster-wide {unused_cluster:?}, in {NS} {unused_ns:?}"
    );
}
