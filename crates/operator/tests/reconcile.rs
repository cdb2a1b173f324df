//! Reconcile against the scripted mock API server, with a real control.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, NS, ingress, lines, service};
use gatehouse_testkit::wait_for;
use serde_json::{Value, json};
use std::time::Duration;

fn blog(env: &Env, annotations: Value) {
    env.tracker.insert(service("blog", "blog", 80, json!(2368)));
    env.tracker
        .insert(ingress("blog", "blog", &["k8s-blog"], annotations));
}

fn sts_name(env: &Env) -> String {
    let l = env.tracker.list("apps/v1", "StatefulSet");
    assert_eq!(l.len(), 1, "{l:?}");
    l[0]["metadata"]["name"].as_str().unwrap().to_string()
}

fn args(sts: &Value) -> Vec<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn authkey(env: &Env, secret: &str, i: usize) -> String {
    use base64::Engine;
    let s = env.get("v1", "Secret", NS, secret).unwrap();
    let b = s["data"][format!("authkey-{i}")].as_str().unwrap();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
}

#[tokio::test]
async fn new_ingress_makes_proxy_policy_and_status_once_online() {
    let env = Env::new().await;
    blog(&env, json!({}));
    let w = env.reconcile("blog", "blog").await;
    let name = sts_name(&env);
    assert_eq!(
        lines(&w),
        vec![
            "PATCH /apis/networking.k8s.io/v1/namespaces/blog/ingresses/blog".to_string(),
            format!("PATCH /api/v1/namespaces/{NS}/serviceaccounts/{name}"),
            format!("PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{name}"),
            format!("PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/{name}"),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
            format!("PATCH /apis/apps/v1/namespaces/{NS}/statefulsets/{name}"),
            "PATCH /apis/networking.k8s.io/v1/namespaces/blog/networkpolicies/gatehouse-blog-blog"
                .to_string(),
        ]
    );
    // Every apply is server-side, with the fixed manager and strict validation.
    for r in w
        .iter()
        .filter(|r| r.content_type.starts_with("application/apply-patch"))
    {
        assert!(r.query.contains("fieldManager=gatehouse-operator"), "{r:?}");
        assert!(r.query.contains("fieldValidation=Strict"), "{r:?}");
    }
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    assert_eq!(
        ing["metadata"]["finalizers"],
        json!(["gatehouse.dev/cleanup"])
    );
    assert!(
        ing["status"].is_null(),
        "no status before the proxy is online"
    );

    // The StatefulSet runs the node in serve mode, unprivileged.
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).unwrap();
    let a = args(&sts);
    let i = a.iter().position(|x| x == "--hostname").unwrap();
    assert_eq!(a[i + 1], "k8s-blog");
    assert!(
        a.contains(&"/=http://blog.blog.svc.cluster.local:80".to_string()),
        "{a:?}"
    );
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "10m", "memory": "16Mi"})
    );
    // The Role may touch only that Secret.
    let role = env
        .get("rbac.authorization.k8s.io/v1", "Role", NS, &name)
        .unwrap();
    assert_eq!(role["rules"][0]["resourceNames"], json!([name]));
    assert_eq!(role["rules"][0]["resources"], json!(["secrets"]));
    // The policy admits exactly this Ingress's proxies on the container port.
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "blog",
            "gatehouse-blog-blog",
        )
        .unwrap();
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        json!({"app": "blog"})
    );
    assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 1);
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        json!([{"port": 2368, "protocol": "TCP"}])
    );
    let from = &np["spec"]["ingress"][0]["from"][0];
    assert_eq!(
        from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        NS
    );
    assert_eq!(
        from["podSelector"]["matchLabels"]["gatehouse.dev/ingress-name"],
        "blog"
    );

    // The key in the Secret is a real one-off key for tag:k8s: a node
    // registers with it, and the next reconcile publishes its name.
    let key = authkey(&env, &name, 0);
    let node = env.control.node(&key, "k8s-blog").await.unwrap();
    assert!(
        env.control.node(&key, "again").await.is_err(),
        "one-off key"
    );
    let fqdn = node.identity.fqdn.clone();
    wait_for("node online", Duration::from_secs(10), || async {
        let n = env.control.admin.nodes().await.ok()?;
        n.iter()
            .any(|n| n.online && n.node.name == "k8s-blog")
            .then_some(())
    })
    .await;
    let w = env.reconcile("blog", "blog").await;
    assert_eq!(
        lines(&w),
        vec!["PATCH /apis/networking.k8s.io/v1/namespaces/blog/ingresses/blog/status"]
    );
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    assert_eq!(
        ing["status"]["loadBalancer"]["ingress"],
        json!([{"hostname": fqdn}])
    );
    let nodes = env.control.admin.nodes().await.unwrap();
    assert_eq!(nodes[0].node.tags, vec!["tag:k8s"]);
    assert!(env.event_reasons().contains(&"Ready".to_string()));

    // Idempotence: nothing changed, nothing is written (not even an event).
    let w = env.reconcile("blog", "blog").await;
    assert!(w.is_empty(), "{w:?}");
    drop(node);
}

#[tokio::test]
async fn pending_proxies_are_polled_in_control_only_until_something_changes() {
    let env = Env::new().await;
    blog(&env, json!({}));
    env.reconcile("blog", "blog").await; // applies (the finalizer changes the Ingress)
    env.reconcile("blog", "blog").await; // full: nothing to write, not online
    let name = sts_name(&env);
    for _ in 0..3 {
        env.tracker.clear_log();
        env.reconcile("blog", "blog").await;
        assert!(
            env.tracker.requests().is_empty(),
            "{:?}",
            env.tracker.requests()
        );
    }
    // The StatefulSet was changed by someone else (its watch forgets the
    // poll): a full reconcile applies it again.
    let mut sts = env.get("apps/v1", "StatefulSet", NS, &name).unwrap();
    sts["spec"]["replicas"] = json!(5);
    sts["metadata"]["annotations"]["gatehouse.dev/applied-hash"] = json!("edited");
    env.tracker.insert(sts);
    env.ctx.forget_pending("blog", "blog");
    let w = env.reconcile("blog", "blog").await;
    assert_eq!(
        lines(&w),
        vec![format!(
            "PATCH /apis/apps/v1/namespaces/{NS}/statefulsets/{name}"
        )]
    );
    // The Ingress changed (new resource version): a full reconcile.
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["spec"]["tls"] = json!([{"hosts": ["k8s-www"]}]);
    env.tracker.insert(ing);
    let w = env.reconcile("blog", "blog").await;
    assert!(w.iter().any(|r| r.line().contains("statefulsets")), "{w:?}");
    // The node comes online: the poll sees it and the status is written.
    let name = sts_name(&env);
    env.reconcile("blog", "blog").await;
    let key = authkey(&env, &name, 0);
    let _node = env.control.node(&key, "k8s-www").await.unwrap();
    wait_for("node online", Duration::from_secs(10), || async {
        let n = env.control.admin.nodes().await.ok()?;
        n.iter()
            .any(|n| n.online && n.node.name == "k8s-www")
            .then_some(())
    })
    .await;
    let w = env.reconcile("blog", "blog").await;
    assert_eq!(
        lines(&w),
        vec!["PATCH /apis/networking.k8s.io/v1/namespaces/blog/ingresses/blog/status"]
    );
}

#[tokio::test]
async fn hosts_and_paths_change() {
    let env = Env::new().await;
    blog(&env, json!({}));
    env.tracker
        .insert(service("blog", "api", 8080, json!(9000)));
    env.reconcile("blog", "blog").await;
    let first = sts_name(&env);
    let key = authkey(&env, &first, 0);
    let _node = env.control.node(&key, "k8s-blog").await.unwrap();

    // Two new hosts replace the old one, with Exact and Prefix paths.
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["spec"]["tls"] = json!([{"hosts": ["k8s-www", "k8s-api"]}]);
    ing["spec"]["rules"] = json!([
        {"host": "k8s-api", "http": {"paths": [
            {"path": "/v1", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 8080}}}},
            {"path": "/health", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
        ]}},
        {"http": {"paths": [
            {"path": "/static", "pathType": "Prefix", "backend": {"service": {"name": "blog", "port": {"number": 80}}}},
        ]}},
    ]);
    env.tracker.insert(ing);
    let w = env.reconcile("blog", "blog").await;
    let stss = env.tracker.list("apps/v1", "StatefulSet");
    let hosts: Vec<(String, Vec<String>)> = stss
        .iter()
        .map(|s| {
            let a = args(s);
            let i = a.iter().position(|x| x == "--hostname").unwrap();
            let serve: Vec<String> = a
                .windows(2)
                .filter(|w| w[0] == "--serve")
                .map(|w| w[1].clone())
                .collect();
            (a[i + 1].clone(), serve)
        })
        .collect();
    let api = hosts.iter().find(|h| h.0 == "k8s-api").unwrap();
    assert_eq!(
        api.1,
        vec![
            "exact:/health=http://api.blog.svc.cluster.local:8080",
            "/static=http://blog.blog.svc.cluster.local:80",
            "/v1=http://api.blog.svc.cluster.local:8080",
            "/=http://blog.blog.svc.cluster.local:80",
        ]
    );
    let www = hosts.iter().find(|h| h.0 == "k8s-www").unwrap();
    assert_eq!(
        www.1,
        vec![
            "/static=http://blog.blog.svc.cluster.local:80",
            "/=http://blog.blog.svc.cluster.local:80",
        ]
    );
    assert_eq!(hosts.len(), 2, "the old host's proxy is gone: {hosts:?}");
    // The old proxy's objects and its node are removed; a policy per backend.
    assert!(env.get("v1", "Secret", NS, &first).is_none());
    assert!(
        env.get("rbac.authorization.k8s.io/v1", "Role", NS, &first)
            .is_none()
    );
    assert!(
        w.iter()
            .any(|r| r.line()
                == format!("DELETE /apis/apps/v1/namespaces/{NS}/statefulsets/{first}"))
    );
    let nodes = env.control.admin.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.node.name != "k8s-blog"), "{nodes:?}");
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "blog",
            "gatehouse-blog-api",
        )
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 9000);
    assert!(
        env.get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "blog",
            "gatehouse-blog-blog"
        )
        .is_some()
    );

    // Dropping the rules removes the api backend's policy.
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["spec"]["rules"] = json!([]);
    env.tracker.insert(ing);
    env.reconcile("blog", "blog").await;
    assert!(
        env.get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "blog",
            "gatehouse-blog-api"
        )
        .is_none()
    );
}

#[tokio::test]
async fn proxy_class_change_updates_the_stateful_set_and_mints_keys_for_new_replicas() {
    let env = Env::new().await;
    blog(&env, json!({"gatehouse.dev/proxy-class": "fast"}));
    // A named class that does not exist: an event, nothing written.
    let w = env.reconcile("blog", "blog").await;
    assert!(lines(&w).is_empty(), "{w:?}");
    assert!(
        env.event_reasons()
            .contains(&"ProxyClassNotFound".to_string())
    );
    env.tracker.insert(json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ProxyClass",
        "metadata": {"name": "fast"},
        "spec": {"replicas": 1},
    }));
    env.reconcile("blog", "blog").await;
    let name = sts_name(&env);
    // The proxy is not online: a readiness poll reads nothing from the API.
    env.reconcile("blog", "blog").await;
    env.tracker.clear_log();
    let w = env.reconcile("blog", "blog").await;
    assert!(w.is_empty() && env.tracker.requests().is_empty());
    env.tracker.insert(json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ProxyClass",
        "metadata": {"name": "fast"},
        "spec": {
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
        },
    }));
    // What the controller's ProxyClass watch does before it triggers the
    // reconcile of the Ingresses of that class.
    env.ctx.forget_pending_class("fast");
    let w = env.reconcile("blog", "blog").await;
    assert_eq!(
        lines(&w),
        vec![
            format!("PATCH /api/v1/namespaces/{NS}/secrets/{name}"),
            format!("PATCH /apis/apps/v1/namespaces/{NS}/statefulsets/{name}"),
        ]
    );
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).unwrap();
    assert_eq!(sts["spec"]["replicas"], 2);
    let pod = &sts["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "web");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["spec"]["priorityClassName"], "high");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RUST_LOG")
    );
    assert!(args(&sts).contains(&"0.0.0.0:9100".to_string()));
    // Each replica has its own one-off key, both valid.
    let (k0, k1) = (authkey(&env, &name, 0), authkey(&env, &name, 1));
    assert_ne!(k0, k1);
    env.control.node(&k1, "k8s-blog").await.unwrap();
}

#[tokio::test]
async fn public_annotation_added_then_removed() {
    let env = Env::new().await;
    blog(&env, json!({}));
    env.reconcile("blog", "blog").await;
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["metadata"]["annotations"] = json!({
        "gatehouse.dev/public-hostname": "blog.example.com",
        "gatehouse.dev/public-deny-paths": "/ghost",
    });
    env.tracker.insert(ing);
    let w = env.reconcile("blog", "blog").await;
    assert_eq!(
        lines(&w),
        vec![
            "PATCH /apis/networking.k8s.io/v1/namespaces/blog/networkpolicies/gatehouse-blog-blog"
                .to_string(),
            format!("PATCH /api/v1/namespaces/{NS}/configmaps/gatehouse-connector"),
        ]
    );
    // The edge has the route with its path rules.
    let routes = env.edge.routes.lock().unwrap().clone();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].hostname, "blog.example.com");
    assert_eq!(routes[0].owner, "ingress/blog/blog");
    let rules: Vec<String> = routes[0]
        .rules
        .iter()
        .map(|r| format!("{} {}", r.action, r.path))
        .collect();
    assert_eq!(rules, vec!["allow /*", "deny /ghost", "deny /ghost/*"]);
    // The connector's config has the rule, denied paths first, and validates.
    let cm = env
        .get("v1", "ConfigMap", NS, "gatehouse-connector")
        .unwrap();
    let cfg = cm["data"]["config.yaml"].as_str().unwrap();
    gatehouse_tunnel::ingress::Ingress::parse(cfg).expect("connector accepts it");
    assert!(cfg.contains("path: ^/ghost(/|$)"), "{cfg}");
    assert!(
        cfg.contains("service: http://blog.blog.svc.cluster.local:80"),
        "{cfg}"
    );
    // The backend's policy admits the connector too.
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "blog",
            "gatehouse-blog-blog",
        )
        .unwrap();
    let from = &np["spec"]["ingress"][1]["from"][0];
    assert_eq!(
        from["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "gatehouse-connector"
    );
    assert_eq!(np["spec"]["ingress"][1]["ports"][0]["port"], 2368);

    // Removing the annotation removes all three.
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["metadata"]["annotations"] = json!({});
    env.tracker.insert(ing);
    env.reconcile("blog", "blog").await;
    assert!(env.edge.routes.lock().unwrap().is_empty());
    let cm = env
        .get("v1", "ConfigMap", NS, "gatehouse-connector")
        .unwrap();
    let cfg = cm["data"]["config.yaml"].as_str().unwrap();
    assert!(!cfg.contains("blog.example.com"), "{cfg}");
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "blog",
            "gatehouse-blog-blog",
        )
        .unwrap();
    assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn target_port_by_name_resolves_through_endpoint_slices_or_pods() {
    let env = Env::new().await;
    env.tracker
        .insert(service("blog", "blog", 80, json!("web")));
    env.tracker
        .insert(ingress("blog", "blog", &["k8s-blog"], json!({})));
    env.tracker.insert(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "blog-x1", "namespace": "blog", "labels": {"kubernetes.io/service-name": "blog"}},
        "addressType": "IPv4", "endpoints": [],
        "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
    }));
    env.reconcile("blog", "blog").await;
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "blog",
            "gatehouse-blog-blog",
        )
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 3000);

    // Without slices, the pods' named container port.
    let env = Env::new().await;
    env.tracker
        .insert(service("shop", "shop", 80, json!("web")));
    env.tracker
        .insert(ingress("shop", "shop", &["k8s-shop"], json!({})));
    env.tracker.insert(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shop-0", "namespace": "shop", "labels": {"app": "shop"}},
        "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "web", "containerPort": 8081}]}]},
    }));
    env.reconcile("shop", "shop").await;
    let np = env
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "shop",
            "gatehouse-shop-shop",
        )
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8081);
}

#[tokio::test]
async fn deletion_removes_everything_then_the_finalizer() {
    let env = Env::new().await;
    blog(
        &env,
        json!({"gatehouse.dev/public-hostname": "blog.example.com"}),
    );
    env.reconcile("blog", "blog").await;
    let name = sts_name(&env);
    let key = authkey(&env, &name, 0);
    let node = env.control.node(&key, "k8s-blog").await.unwrap();
    // kubectl delete: the tracker marks it, the finalizer holds it.
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    env.tracker.insert(ing);
    let w = env.reconcile("blog", "blog").await;
    assert!(
        env.get("networking.k8s.io/v1", "Ingress", "blog", "blog")
            .is_none(),
        "finalizer removed: {w:?}"
    );
    for (av, kind) in [
        ("apps/v1", "StatefulSet"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    ] {
        assert!(env.tracker.list(av, kind).is_empty(), "{kind} left");
    }
    assert!(env.control.admin.nodes().await.unwrap().is_empty());
    assert!(env.edge.routes.lock().unwrap().is_empty());
    let cm = env
        .get("v1", "ConfigMap", NS, "gatehouse-connector")
        .unwrap();
    assert!(
        !cm["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("blog.example.com")
    );
    drop(node);
}

#[tokio::test]
async fn control_refusing_the_key_creates_nothing_and_says_why() {
    let env = Env::new().await;
    // tag:prod is declared but owned by admins only.
    let mut policy = env.control.admin.policy().await.unwrap();
    policy = policy.replace(
        "\"tag:k8s-operator\": [],",
        "\"tag:k8s-operator\": [],\n    \"tag:prod\": [],",
    );
    env.control.admin.set_policy(&policy).await.unwrap();
    blog(&env, json!({"gatehouse.dev/tags": "tag:prod"}));
    let w = env.reconcile("blog", "blog").await;
    assert!(lines(&w).is_empty(), "nothing but an event: {w:?}");
    let ev = env.events();
    let refused = ev.iter().find(|e| e["reason"] == "AuthKeyRefused").unwrap();
    let note = refused["note"].as_str().unwrap();
    assert!(
        note.contains("tag:prod") && note.contains("not owned"),
        "{note}"
    );
    assert_eq!(refused["type"], "Warning");
    let ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    assert!(ing["metadata"]["finalizers"].is_null());
    assert!(
        env.control
            .admin
            .keys()
            .await
            .unwrap()
            .iter()
            .all(|k| k.revoked_at.is_some() || k.tags != vec!["tag:prod"])
    );
}

#[tokio::test]
async fn invalid_annotations_change_nothing_and_name_the_annotation() {
    let env = Env::new().await;
    blog(
        &env,
        json!({"gatehouse.dev/public-hostname": "*.example.com"}),
    );
    let w = env.reconcile("blog", "blog").await;
    assert!(lines(&w).is_empty(), "{w:?}");
    let ev = env.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["reason"], "InvalidAnnotation");
    assert!(
        ev[0]["note"]
            .as_str()
            .unwrap()
            .contains("gatehouse.dev/public-hostname")
    );
    assert!(
        env.control.admin.keys().await.unwrap().is_empty(),
        "no key minted"
    );
}

#[tokio::test]
async fn cilium_network_policy_when_its_crd_is_served() {
    let env = Env::new().await;
    env.tracker.serve_group(
        "cilium.io/v2",
        &[("ciliumnetworkpolicies", "CiliumNetworkPolicy", true)],
    );
    blog(
        &env,
        json!({"gatehouse.dev/public-hostname": "blog.example.com"}),
    );
    env.reconcile("blog", "blog").await;
    let cnp = env
        .get(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            "blog",
            "gatehouse-blog-blog",
        )
        .unwrap();
    assert_eq!(
        cnp["spec"]["endpointSelector"]["matchLabels"],
        json!({"app": "blog"})
    );
    let rules = cnp["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    for r in rules {
        assert_eq!(r["toPorts"][0]["ports"][0]["port"], "2368");
        assert_eq!(
            r["fromEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"],
            NS
        );
    }
    assert!(
        env.tracker
            .list("networking.k8s.io/v1", "NetworkPolicy")
            .is_empty()
    );
}

#[tokio::test]
async fn an_ingress_without_class_is_served_when_gatehouse_is_the_default_class() {
    let env = Env::new().await;
    env.tracker.insert(service("blog", "blog", 80, json!(2368)));
    let mut ing = ingress("blog", "blog", &["k8s-blog"], json!({}));
    ing["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ingressClassName");
    env.tracker.insert(ing);
    let w = env.reconcile("blog", "blog").await;
    assert!(
        w.is_empty(),
        "not ours while gatehouse is not the default: {w:?}"
    );
    env.tracker.insert(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "gatehouse", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "gatehouse.dev/ingress"},
    }));
    env.reconcile("blog", "blog").await;
    assert_eq!(env.tracker.list("apps/v1", "StatefulSet").len(), 1);
}
