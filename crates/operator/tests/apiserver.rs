//! The reconcile against a real API server (kube-apiserver on kine, see
//! testkit's `kube_apiserver`), as the ServiceAccount `deploy/rbac.yaml`
//! grants, with a real control: what the scripted mock cannot show
//! (admission, defaulting, schema validation, server-side apply field
//! ownership, RBAC, finalizers and deletion for real).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::lines;
use common::real::{NS, Real};
use gatehouse_testkit::wait_for;
use serde_json::{Value, json};
use std::time::Duration;

fn service(name: &str, port: i32, target: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]},
    })
}

fn ingress(name: &str, hosts: &[&str], annotations: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "ingressClassName": "gatehouse",
            "defaultBackend": {"service": {"name": name, "port": {"number": 80}}},
            "tls": [{"hosts": hosts}],
        },
    })
}

async fn blog(env: &Real, annotations: Value) {
    env.apply(service("blog", 80, json!(2368))).await;
    env.apply(ingress("blog", &["k8s-blog"], annotations)).await;
}

fn args(sts: &Value) -> Vec<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn new_ingress_makes_proxy_policy_and_status_once_online() {
    let env = Real::new("new").await;
    blog(&env, json!({})).await;
    let w = env.reconcile("blog").await;
    let name = env.sts_name("blog").await;
    let ns = &env.ns;
    assert_eq!(
        lines(&w),
        vec![
            format!("PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/blog"),
            format!("PATCH /api/v1/namespaces/{NS}/serviceaccounts/{name}"),
            format!("PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{name}"),
            format!("PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/{name}"),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
            format!("PATCH /apis/apps/v1/namespaces/{NS}/statefulsets/{name}"),
            format!(
                "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/gatehouse-blog-blog"
            ),
        ]
    );
    assert!(w.iter().all(|r| r.status < 300), "{w:?}");
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", ns, "blog")
        .await
        .unwrap();
    assert_eq!(
        ing["metadata"]["finalizers"],
        json!(["gatehouse.dev/cleanup"])
    );
    assert!(ing["status"]["loadBalancer"]["ingress"].is_null(), "{ing}");
    // The server defaulted the StatefulSet; what the operator set is there.
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).await.unwrap();
    let a = args(&sts);
    let i = a.iter().position(|x| x == "--hostname").unwrap();
    assert_eq!(a[i + 1], "k8s-blog");
    assert_eq!(
        sts["spec"]["updateStrategy"]["type"], "RollingUpdate",
        "defaulted"
    );
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            ns,
            "gatehouse-blog-blog",
        )
        .await
        .unwrap();
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        json!([{"port": 2368, "protocol": "TCP"}])
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));

    // The key registers a node; the next reconcile writes the status only.
    let key = env.authkey(&name, 0).await;
    let node = env.control.node(&key, "k8s-blog").await.unwrap();
    let fqdn = node.identity.fqdn.clone();
    wait_for("node online", Duration::from_secs(10), || async {
        let n = env.control.admin.nodes().await.ok()?;
        n.iter()
            .any(|n| n.online && n.node.name == "k8s-blog")
            .then_some(())
    })
    .await;
    let w = env.reconcile("blog").await;
    assert_eq!(
        lines(&w),
        vec![format!(
            "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/blog/status"
        )]
    );
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", ns, "blog")
        .await
        .unwrap();
    assert_eq!(
        ing["status"]["loadBalancer"]["ingress"],
        json!([{"hostname": fqdn}])
    );
    assert!(
        env.event_reasons("blog")
            .await
            .contains(&"Ready".to_string())
    );
    // Idempotence against the real server's defaulting: nothing to write.
    let w = env.reconcile("blog").await;
    assert!(w.is_empty(), "{w:?}");
    drop(node);
}

#[tokio::test]
async fn hosts_and_paths_change_and_the_old_proxy_goes() {
    let env = Real::new("hosts").await;
    let ns = env.ns.clone();
    blog(&env, json!({})).await;
    env.apply(service("api", 8080, json!(9000))).await;
    env.reconcile("blog").await;
    let first = env.sts_name("blog").await;
    let key = env.authkey(&first, 0).await;
    let _node = env.control.node(&key, "k8s-blog").await.unwrap();

    let mut ing = ingress("blog", &["k8s-www", "k8s-api"], json!({}));
    ing["spec"]["rules"] = json!([
        {"host": "k8s-api", "http": {"paths": [
            {"path": "/v1", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 8080}}}},
            {"path": "/health", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
        ]}},
        {"http": {"paths": [
            {"path": "/static", "pathType": "Prefix", "backend": {"service": {"name": "blog", "port": {"number": 80}}}},
        ]}},
    ]);
    env.apply(ing).await;
    let w = env.reconcile("blog").await;
    let stss = env.stss("blog").await;
    assert_eq!(stss.len(), 2, "the old host's proxy is gone");
    let api = stss
        .iter()
        .find(|s| args(s).contains(&"k8s-api".to_string()))
        .unwrap();
    let serve: Vec<String> = args(api)
        .windows(2)
        .filter(|w| w[0] == "--serve")
        .map(|w| w[1].clone())
        .collect();
    assert_eq!(
        serve,
        vec![
            format!("exact:/health=http://api.{ns}.svc.cluster.local:8080"),
            format!("/static=http://blog.{ns}.svc.cluster.local:80"),
            format!("/v1=http://api.{ns}.svc.cluster.local:8080"),
            format!("/=http://blog.{ns}.svc.cluster.local:80"),
        ]
    );
    // Deleted for real (no garbage collector runs here: the operator deletes
    // each object itself), and the node removed from control.
    for (av, kind) in [
        ("apps/v1", "StatefulSet"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ] {
        assert!(
            env.get(av, kind, NS, &first).await.is_none(),
            "{kind} {first} left"
        );
    }
    assert!(
        w.iter().any(|r| r.line()
            == format!("DELETE /apis/apps/v1/namespaces/{NS}/statefulsets/{first}")
            && r.status == 200),
        "{w:?}"
    );
    let nodes = env.control.admin.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.node.name != "k8s-blog"), "{nodes:?}");
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &ns,
            "gatehouse-blog-api",
        )
        .await
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 9000);

    // Dropping the rules removes the api backend's policy.
    env.apply(ingress("blog", &["k8s-www", "k8s-api"], json!({})))
        .await;
    env.reconcile("blog").await;
    assert!(
        env.get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &ns,
            "gatehouse-blog-api"
        )
        .await
        .is_none()
    );
}

fn proxy_class(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ProxyClass",
        "metadata": {"name": name},
        "spec": spec,
    })
}

#[tokio::test]
async fn proxy_class_change_updates_the_stateful_set_and_mints_keys_for_new_replicas() {
    let env = Real::new("class").await;
    let class = format!("fast-{}", env.ns);
    blog(&env, json!({"gatehouse.dev/proxy-class": class})).await;
    let w = env.reconcile("blog").await;
    assert!(lines(&w).is_empty(), "{w:?}");
    assert!(
        env.event_reasons("blog")
            .await
            .contains(&"ProxyClassNotFound".to_string())
    );
    env.apply(proxy_class(&class, json!({"replicas": 1}))).await;
    env.reconcile("blog").await;
    let name = env.sts_name("blog").await;
    env.apply(proxy_class(
        &class,
        json!({
            "replicas": 2,
            "metrics": {"enabled": true},
            "statefulSet": {"pod": {
                "labels": {"team": "web"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "priorityClassName": "high",
                "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
                "container": {
                    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "env": [{"name": "RUST_LOG", "value": "debug"}],
                },
            }},
        }),
    ))
    .await;
    env.ctx.forget_pending_class(&class);
    let w = env.reconcile("blog").await;
    let ns = NS;
    assert_eq!(
        lines(&w),
        vec![
            format!("PATCH /api/v1/namespaces/{ns}/secrets/{name}"),
            format!("PATCH /apis/apps/v1/namespaces/{ns}/statefulsets/{name}"),
        ]
    );
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).await.unwrap();
    assert_eq!(sts["spec"]["replicas"], 2);
    let pod = &sts["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "web");
    assert_eq!(pod["spec"]["priorityClassName"], "high");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "128Mi"
    );
    let (k0, k1) = (env.authkey(&name, 0).await, env.authkey(&name, 1).await);
    assert_ne!(k0, k1);
    env.control.node(&k1, "k8s-blog").await.unwrap();
}

#[tokio::test]
async fn public_annotation_added_then_removed() {
    let env = Real::new("public").await;
    let ns = env.ns.clone();
    blog(&env, json!({})).await;
    env.reconcile("blog").await;
    env.apply(ingress(
        "blog",
        &["k8s-blog"],
        json!({
            "gatehouse.dev/public-hostname": format!("{ns}.example.com"),
            "gatehouse.dev/public-deny-paths": "/ghost",
        }),
    ))
    .await;
    let w = env.reconcile("blog").await;
    assert_eq!(
        lines(&w),
        vec![
            format!(
                "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/gatehouse-blog-blog"
            ),
            format!("PATCH /api/v1/namespaces/{NS}/configmaps/gatehouse-connector"),
        ]
    );
    let routes = env.edge.routes.lock().unwrap().clone();
    assert_eq!(routes.len(), 1);
    let cm = env
        .get("v1", "ConfigMap", NS, "gatehouse-connector")
        .await
        .unwrap();
    let key = format!("ingress.{ns}.blog.json");
    assert!(cm["data"][&key].is_string(), "{cm}");
    let cfg = cm["data"]["config.yaml"].as_str().unwrap();
    gatehouse_tunnel::ingress::Ingress::parse(cfg).expect("connector accepts it");
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &ns,
            "gatehouse-blog-blog",
        )
        .await
        .unwrap();
    assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 2, "{np}");

    // Removing the annotations removes the route, the rule and the access.
    env.apply(ingress("blog", &["k8s-blog"], json!({}))).await;
    env.reconcile("blog").await;
    assert!(env.edge.routes.lock().unwrap().is_empty());
    let cm = env
        .get("v1", "ConfigMap", NS, "gatehouse-connector")
        .await
        .unwrap();
    assert!(cm["data"][&key].is_null(), "{cm}");
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &ns,
            "gatehouse-blog-blog",
        )
        .await
        .unwrap();
    assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn named_target_port_resolves_through_real_endpoint_slices_and_pods() {
    let env = Real::new("named").await;
    let ns = env.ns.clone();
    env.apply(service("blog", 80, json!("web"))).await;
    env.apply(ingress("blog", &["k8s-blog"], json!({}))).await;
    // Nothing tells the number yet: the policy names the port, an event says so.
    env.reconcile("blog").await;
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &ns,
            "gatehouse-blog-blog",
        )
        .await
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "web");
    assert!(
        env.event_reasons("blog")
            .await
            .contains(&"NamedPortUnresolved".to_string())
    );
    // A pod of the Service with the named port (admitted and stored by the
    // real server; nothing runs it). The finalizer changed the Ingress, so
    // the next reconcile is a full one.
    env.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "blog-0", "labels": {"app": "blog"}},
        "spec": {"containers": [{"name": "c", "image": "ghost:5", "ports": [{"name": "web", "containerPort": 2368}]}]},
    }))
    .await;
    env.reconcile("blog").await;
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &ns,
            "gatehouse-blog-blog",
        )
        .await
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 2368);
    // An EndpointSlice (what the endpoint-slice controller would write) wins.
    env.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "blog-x1", "labels": {"kubernetes.io/service-name": "blog"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.7"]}],
        "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
    }))
    .await;
    // Nothing watches EndpointSlices: a pending proxy's next full reconcile
    // (after FULL_RECONCILE_EVERY) reads them again.
    env.ctx.forget_pending(&ns, "blog");
    env.reconcile("blog").await;
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &ns,
            "gatehouse-blog-blog",
        )
        .await
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 3000);
}

#[tokio::test]
async fn deletion_with_the_finalizer_removes_everything_then_the_ingress_goes() {
    let env = Real::new("delete").await;
    let ns = env.ns.clone();
    let host = format!("{ns}.example.com");
    blog(&env, json!({"gatehouse.dev/public-hostname": host})).await;
    env.reconcile("blog").await;
    let name = env.sts_name("blog").await;
    let key = env.authkey(&name, 0).await;
    let node = env.control.node(&key, "k8s-blog").await.unwrap();
    // kubectl delete: the API server sets deletionTimestamp, the finalizer holds it.
    env.delete("networking.k8s.io/v1", "Ingress", &ns, "blog")
        .await;
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", &ns, "blog")
        .await
        .unwrap();
    assert!(ing["metadata"]["deletionTimestamp"].is_string());
    env.reconcile("blog").await;
    assert!(
        env.get("networking.k8s.io/v1", "Ingress", &ns, "blog")
            .await
            .is_none(),
        "the finalizer was removed and the Ingress is gone"
    );
    for (av, kind) in [
        ("apps/v1", "StatefulSet"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ] {
        assert!(env.get(av, kind, NS, &name).await.is_none(), "{kind} left");
    }
    assert!(
        env.list("networking.k8s.io/v1", "NetworkPolicy", &ns, "")
            .await
            .is_empty()
    );
    assert!(env.control.admin.nodes().await.unwrap().is_empty());
    assert!(env.edge.routes.lock().unwrap().is_empty());
    let cm = env
        .get("v1", "ConfigMap", NS, "gatehouse-connector")
        .await
        .unwrap();
    assert!(!cm["data"]["config.yaml"].as_str().unwrap().contains(&host));
    drop(node);
}

#[tokio::test]
async fn control_refusing_the_key_creates_nothing_and_says_why() {
    let env = Real::new("refused").await;
    let mut policy = env.control.admin.policy().await.unwrap();
    policy = policy.replace(
        "\"tag:k8s-operator\": [],",
        "\"tag:k8s-operator\": [],\n    \"tag:prod\": [],",
    );
    env.control.admin.set_policy(&policy).await.unwrap();
    blog(&env, json!({"gatehouse.dev/tags": "tag:prod"})).await;
    let w = env.reconcile("blog").await;
    assert!(lines(&w).is_empty(), "nothing but an event: {w:?}");
    let ev = env.events("blog").await;
    let refused = ev.iter().find(|e| e["reason"] == "AuthKeyRefused").unwrap();
    assert_eq!(refused["type"], "Warning");
    assert!(
        refused["note"].as_str().unwrap().contains("tag:prod"),
        "{refused}"
    );
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", &env.ns, "blog")
        .await
        .unwrap();
    assert!(ing["metadata"]["finalizers"].is_null());
    assert!(env.stss("blog").await.is_empty());
}

#[tokio::test]
async fn cilium_network_policy_with_cilium_s_published_crd() {
    let env = Real::with("cilium", |_| {}).await;
    common::real::shared_cilium();
    let ns = env.ns.clone();
    blog(
        &env,
        json!({"gatehouse.dev/public-hostname": format!("{ns}.example.com")}),
    )
    .await;
    let w = env.reconcile("blog").await;
    assert!(
        w.iter().any(|r| r
            .path
            .ends_with("/ciliumnetworkpolicies/gatehouse-blog-blog")
            && r.status == 201),
        "{w:?}"
    );
    // Stored after Cilium's own schema checked it.
    let cnp = env
        .get(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            &ns,
            "gatehouse-blog-blog",
        )
        .await
        .unwrap();
    assert_eq!(
        cnp["spec"]["endpointSelector"]["matchLabels"],
        json!({"app": "blog"})
    );
    assert_eq!(cnp["spec"]["ingress"].as_array().unwrap().len(), 2);
    assert!(
        env.list("networking.k8s.io/v1", "NetworkPolicy", &ns, "")
            .await
            .is_empty()
    );
    // Deleting removes it too.
    env.delete("networking.k8s.io/v1", "Ingress", &ns, "blog")
        .await;
    env.reconcile("blog").await;
    assert!(
        env.get(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            &ns,
            "gatehouse-blog-blog"
        )
        .await
        .is_none()
    );
}

/// What the operator owns in its namespace for Ingress `name` (any kind).
async fn owned(env: &Real, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (av, kind) in [
        ("apps/v1", "StatefulSet"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ] {
        for o in env.list(av, kind, NS, &env.selector(name)).await {
            out.push(format!("{kind}/{}", Real::name_of(&o)));
        }
    }
    for o in env
        .list(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &env.ns,
            &env.selector(name),
        )
        .await
    {
        out.push(format!("NetworkPolicy/{}", Real::name_of(&o)));
    }
    out
}

#[tokio::test]
async fn a_proxy_class_the_api_server_refuses_in_the_stateful_set_creates_nothing_and_says_which_field()
 {
    let env = Real::new("badclass").await;
    let class = format!("bad-{}", env.ns);
    // The CRD's schema accepts it; the StatefulSet it makes is invalid
    // (requests above limits, a label value with a space).
    env.apply(proxy_class(
        &class,
        json!({"statefulSet": {"pod": {"container": {"resources": {
            "requests": {"cpu": "200m"}, "limits": {"cpu": "100m"},
        }}}}}),
    ))
    .await;
    blog(&env, json!({"gatehouse.dev/proxy-class": class})).await;
    let w = env.reconcile("blog").await;
    assert_eq!(
        lines(&w),
        vec![format!(
            "PATCH /apis/gatehouse.dev/v1alpha1/proxyclasses/{class}/status"
        )],
        "nothing but the class's status and the event"
    );
    assert!(
        owned(&env, "blog").await.is_empty(),
        "{:?}",
        owned(&env, "blog").await
    );
    assert!(
        env.control.admin.keys().await.unwrap().is_empty(),
        "no key minted"
    );
    let ev = env.events("blog").await;
    let bad = ev
        .iter()
        .find(|e| e["reason"] == "InvalidProxyClass")
        .unwrap_or_else(|| panic!("{ev:#?}"));
    let note = bad["note"].as_str().unwrap();
    assert!(
        note.contains(&class) && note.contains("spec.statefulSet.pod.container.resources"),
        "{note}"
    );
    // The ProxyClass says so too.
    let pc = env
        .get("gatehouse.dev/v1alpha1", "ProxyClass", "", &class)
        .await
        .unwrap();
    let cond = &pc["status"]["conditions"][0];
    assert_eq!(cond["type"], "Valid", "{pc}");
    assert_eq!(cond["status"], "False");
    assert!(
        cond["message"].as_str().unwrap().contains("resources"),
        "{cond}"
    );
    // Again (a resync): no error to retry, nothing written at all.
    let w = env.reconcile("blog").await;
    assert!(w.is_empty(), "{w:?}");

    // Fixed: the proxy is made, and the class is valid again.
    env.apply(proxy_class(&class, json!({"replicas": 1}))).await;
    env.ctx.forget_pending_class(&class);
    env.reconcile("blog").await;
    assert_eq!(
        owned(&env, "blog").await.len(),
        6,
        "{:?}",
        owned(&env, "blog").await
    );
    let pc = env
        .get("gatehouse.dev/v1alpha1", "ProxyClass", "", &class)
        .await
        .unwrap();
    assert_eq!(pc["status"]["conditions"][0]["status"], "True", "{pc}");
}

#[tokio::test]
async fn values_the_crd_schema_refuses_never_reach_the_operator() {
    let env = Real::new("schema").await;
    let class = format!("schema-{}", env.ns);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pc.yaml");
    // `kubectl apply -f`, as a person would: the API server checks the
    // CRD's schema and names the field.
    for (spec, said) in [
        ("{replicas: 0}", "spec.replicas: Invalid value: 0"),
        ("{replicas: 11}", "spec.replicas: Invalid value: 11"),
        (
            "{replicas: two}",
            "spec.replicas: Invalid value: \"string\"",
        ),
        (
            "{metrics: {enabled: \"on\"}}",
            "spec.metrics.enabled: Invalid value: \"string\"",
        ),
        ("{replica: 2}", "unknown field \"spec.replica\""),
    ] {
        std::fs::write(
            &f,
            format!("apiVersion: gatehouse.dev/v1alpha1\nkind: ProxyClass\nmetadata: {{name: {class}}}\nspec: {spec}\n"),
        )
        .unwrap();
        let out = env
            .server
            .kubectl(&gatehouse_testkit::kube_apiserver::Who::Admin, &env.ns)
            .arg("apply")
            .arg("-f")
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec} accepted");
        assert!(err.contains(said), "{spec}: {err}");
    }
    assert!(
        env.get("gatehouse.dev/v1alpha1", "ProxyClass", "", &class)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn invalid_annotations_and_ingresses_change_nothing_and_name_the_field() {
    let env = Real::new("badann").await;
    let ns = env.ns.clone();
    env.apply(service("blog", 80, json!(2368))).await;
    for (i, (annotations, hosts, reason, field)) in [
        (
            json!({"gatehouse.dev/public-hostname": "*.example.com"}),
            "k8s-blog",
            "InvalidAnnotation",
            "gatehouse.dev/public-hostname",
        ),
        (
            json!({"gatehouse.dev/backend-port": "0"}),
            "k8s-blog",
            "InvalidAnnotation",
            "gatehouse.dev/backend-port",
        ),
        (
            json!({"gatehouse.dev/tags": "k8s"}),
            "k8s-blog",
            "InvalidAnnotation",
            "gatehouse.dev/tags",
        ),
        (json!({}), "*.corp.example", "InvalidIngress", "spec.tls"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("bad{i}");
        let mut ing = ingress(&name, &[hosts], annotations);
        ing["spec"]["defaultBackend"]["service"]["name"] = json!("blog");
        env.apply(ing).await;
        let w = env.reconcile(&name).await;
        assert!(lines(&w).is_empty(), "{name}: {w:?}");
        let ev = env.events(&name).await;
        assert_eq!(ev.len(), 1, "{ev:#?}");
        assert_eq!(ev[0]["reason"], reason);
        assert!(
            ev[0]["note"].as_str().unwrap().contains(field),
            "{}",
            ev[0]["note"]
        );
        assert!(owned(&env, &name).await.is_empty());
        let stored = env
            .get("networking.k8s.io/v1", "Ingress", &ns, &name)
            .await
            .unwrap();
        assert!(stored["metadata"]["finalizers"].is_null());
        // Reconciled again (a resync): no second event, no write.
        let w = env.reconcile(&name).await;
        assert!(w.is_empty(), "{w:?}");
    }
    // What the Ingress's own validation refuses never reaches the operator.
    let mut ing = ingress("worse", &["k8s-blog"], json!({}));
    ing["spec"]["defaultBackend"]["service"]["port"] = json!({"number": 70000});
    let e = env
        .try_apply_as(&env.admin, "kubectl", ing, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("spec.defaultBackend.service.port.number"),
        "{e}"
    );
    let e = env
        .try_apply_as(
            &env.admin,
            "kubectl",
            ingress("worst", &["K8S_blog"], json!({})),
            false,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("spec.tls[0].hosts[0]"), "{e}");
    assert!(
        env.control.admin.keys().await.unwrap().is_empty(),
        "no key minted"
    );
}

/// The field managers of an object and the top-level fields each owns.
fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap().to_string(),
                m["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_second_field_manager_keeps_its_fields_and_the_operator_keeps_its_own() {
    let env = Real::new("ssa").await;
    blog(&env, json!({})).await;
    env.reconcile("blog").await;
    let name = env.sts_name("blog").await;
    let sts_ref = |extra: Value| {
        let mut o = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": NS},
        });
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    // A person's `kubectl apply --server-side` adds a field the operator
    // does not set: an annotation, and a pod annotation.
    let mut mine = sts_ref(json!({}));
    mine["metadata"]["annotations"] = json!({"example.com/owner": "web-team"});
    env.apply(mine.clone()).await;
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).await.unwrap();
    assert!(
        managers(&sts).contains(&("kubectl".into(), "Apply".into())),
        "{:?}",
        managers(&sts)
    );
    // The operator does not fight it: nothing to write.
    env.ctx.forget_pending(&env.ns, "blog");
    let w = env.reconcile("blog").await;
    assert!(w.is_empty(), "{w:?}");
    // Nor drop it when it applies the StatefulSet again (its content changed).
    let mut ing = ingress("blog", &["k8s-blog"], json!({}));
    ing["spec"]["rules"] = json!([{"http": {"paths": [
        {"path": "/x", "pathType": "Prefix", "backend": {"service": {"name": "blog", "port": {"number": 80}}}},
    ]}}]);
    env.apply(ing).await;
    let w = env.reconcile("blog").await;
    assert!(
        w.iter()
            .any(|r| r.path.ends_with(&format!("/statefulsets/{name}"))),
        "{w:?}"
    );
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).await.unwrap();
    assert_eq!(
        sts["metadata"]["annotations"]["example.com/owner"],
        "web-team"
    );
    assert!(args(&sts).iter().any(|a| a.starts_with("/x=")));

    // A field the operator owns: a plain apply (the person's manifest, now
    // with replicas) conflicts, naming the owner.
    let mut scale = mine.clone();
    scale["spec"] = json!({"replicas": 3});
    let e = env
        .try_apply_as(&env.admin, "kubectl", scale.clone(), false)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 409, "{s:?}");
    assert!(
        s.message.contains("gatehouse-operator") && s.message.contains(".spec.replicas"),
        "{}",
        s.message
    );
    // Forced (`--force-conflicts`), the person takes it; the operator's
    // next reconcile takes it back (the ProxyClass decides replicas), once.
    env.try_apply_as(&env.admin, "kubectl", scale, true)
        .await
        .unwrap();
    assert_eq!(
        env.get("apps/v1", "StatefulSet", NS, &name).await.unwrap()["spec"]["replicas"],
        3
    );
    env.ctx.forget_pending(&env.ns, "blog");
    let w = env.reconcile("blog").await;
    assert_eq!(
        lines(&w),
        vec![format!(
            "PATCH /apis/apps/v1/namespaces/{NS}/statefulsets/{name}"
        )],
    );
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).await.unwrap();
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(
        sts["metadata"]["annotations"]["example.com/owner"],
        "web-team"
    );
    env.ctx.forget_pending(&env.ns, "blog");
    let w = env.reconcile("blog").await;
    assert!(w.is_empty(), "no fight: {w:?}");

    // An edit of the proxy's Role (a broader grant) is taken back too.
    let mut role = env
        .get("rbac.authorization.k8s.io/v1", "Role", NS, &name)
        .await
        .unwrap();
    role["rules"][0]["resourceNames"] = json!([]);
    role["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    let api: kube::Api<k8s_openapi::api::rbac::v1::Role> =
        kube::Api::namespaced(env.admin.clone(), NS);
    api.replace(
        &name,
        &kube::api::PostParams::default(),
        &serde_json::from_value(role).unwrap(),
    )
    .await
    .unwrap();
    env.ctx.forget_pending(&env.ns, "blog");
    let w = env.reconcile("blog").await;
    assert_eq!(
        lines(&w),
        vec![format!(
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{name}"
        )],
    );
    let role = env
        .get("rbac.authorization.k8s.io/v1", "Role", NS, &name)
        .await
        .unwrap();
    assert_eq!(role["rules"][0]["resourceNames"], json!([name]));
}

#[tokio::test]
async fn an_ingress_without_class_is_served_when_gatehouse_is_the_default_class() {
    let env = Real::new("noclass").await;
    env.apply(service("blog", 80, json!(2368))).await;
    let mut ing = ingress("blog", &["k8s-blog"], json!({}));
    ing["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ingressClassName");
    env.apply(ing).await;
    let w = env.reconcile("blog").await;
    assert!(
        w.is_empty(),
        "not ours while gatehouse is not the default: {w:?}"
    );
    // Marked the default class (kubectl annotate), by another field manager.
    let default = |v: &str| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "gatehouse", "annotations": {"ingressclass.kubernetes.io/is-default-class": v}},
        })
    };
    env.apply_as(&env.admin, "default-class-test", default("true"), false)
        .await;
    env.reconcile("blog").await;
    let stss = env.stss("blog").await;
    env.apply_as(&env.admin, "default-class-test", default("false"), false)
        .await;
    assert_eq!(stss.len(), 1);
}
