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
            format!("PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/gatehouse-blog-blog"),
        ]
    );
    assert!(w.iter().all(|r| r.status < 300), "{w:?}");
    let ing = env.get("networking.k8s.io/v1", "Ingress", ns, "blog").await.unwrap();
    assert_eq!(ing["metadata"]["finalizers"], json!(["gatehouse.dev/cleanup"]));
    assert!(ing["status"]["loadBalancer"]["ingress"].is_null(), "{ing}");
    // The server defaulted the StatefulSet; what the operator set is there.
    let sts = env.get("apps/v1", "StatefulSet", NS, &name).await.unwrap();
    let a = args(&sts);
    let i = a.iter().position(|x| x == "--hostname").unwrap();
    assert_eq!(a[i + 1], "k8s-blog");
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "RollingUpdate", "defaulted");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let np = env
        .get("networking.k8s.io/v1", "NetworkPolicy", ns, "gatehouse-blog-blog")
        .await
        .unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"], json!([{"port": 2368, "protocol": "TCP"}]));
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));

    // The key registers a node; the next reconcile writes the status only.
    let key = env.authkey(&name, 0).await;
    let node = env.control.node(&key, "k8s-blog").await.unwrap();
    let fqdn = node.identity.fqdn.clone();
    wait_for("node online", Duration::from_secs(10), || async {
        let n = env.control.admin.nodes().await.ok()?;
        n.iter().any(|n| n.online && n.node.name == "k8s-blog").then_some(())
    })
    .await;
    let w = env.reconcile("blog").await;
    assert_eq!(
        lines(&w),
        vec![format!("PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/blog/status")]
    );
    let ing = env.get("networking.k8s.io/v1", "Ingress", ns, "blog").await.unwrap();
    assert_eq!(ing["status"]["loadBalancer"]["ingress"], json!([{"hostname": fqdn}]));
    assert!(env.event_reasons("blog").await.contains(&"Ready".to_string()));
    // Idempotence against the real server's defaulting: nothing to write.
    let w = env.reconcile("blog").await;
    assert!(w.is_empty(), "{w:?}");
    drop(node);
}
