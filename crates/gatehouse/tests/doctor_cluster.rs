//! `gatehouse doctor --cluster` against testkit's object tracker served over
//! HTTP (standing in for the API server), with a real control: a cluster
//! with every trap the doctor knows is reported (exit 1); the same cluster
//! with the traps fixed and control running reports nothing (exit 0).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::kube_tracker::Tracker;
use gatehouse_testkit::{TestControl, free_port};
use serde_json::{Value, json};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

async fn doctor(kubeconfig: &Path, control: &str) -> (i32, Vec<Value>) {
    let out = tokio::process::Command::new(BIN)
        .args(["doctor", "--cluster", "--json", "--control", control])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), findings)
}

fn rules(findings: &[Value]) -> Vec<String> {
    let mut r: Vec<String> = findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_string())
        .collect();
    r.sort();
    r
}

fn cilium_config(legacy_routing: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cilium-config", "namespace": "kube-system"},
        "data": {"kube-proxy-replacement": "true", "enable-host-legacy-routing": legacy_routing},
    })
}

#[tokio::test]
async fn doctor_reports_the_traps_of_a_cluster_and_nothing_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::new();
    let addr = tracker.serve().await;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://{addr}'}}}}]\nusers: [{{name: c, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: c}}}}]\ncurrent-context: c\n"),
    )
    .unwrap();
    tracker.serve_group(
        "cilium.io/v2",
        &[("ciliumnetworkpolicies", "CiliumNetworkPolicy", true)],
    );
    // Cilium replaces kube-proxy with eBPF host routing; an L4 proxy exposes
    // a Service; the nodes run Talos 1.9; no IngressClass gatehouse.
    tracker.insert(cilium_config("false"));
    tracker.insert(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "cp-1"},
        "status": {"nodeInfo": {"osImage": "Talos (v1.9.5)", "kubeletVersion": "v1.32.3"}},
    }));
    tracker.insert(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "web", "annotations": {"tailscale.com/expose": "true"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    // Control is not listening at this join string.
    let gone = format!(
        "https://127.0.0.1:{}#sha256:{}",
        free_port(),
        "0".repeat(64)
    );
    let (code, findings) = doctor(&kubeconfig, &gone).await;
    assert_eq!(
        rules(&findings),
        vec!["DR001", "DR002", "DR003", "GH001"],
        "{findings:#?}"
    );
    assert_eq!(code, 1);
    let talos = findings.iter().find(|f| f["rule"] == "DR003").unwrap();
    assert!(
        talos["message"].as_str().unwrap().contains("cp-1"),
        "{talos}"
    );

    // Fixed: host legacy routing on, the Service exposed another way, the
    // IngressClass installed, and control running.
    tracker.insert(cilium_config("true"));
    tracker.insert(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    tracker.insert(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "gatehouse"},
        "spec": {"controller": "gatehouse.dev/ingress"},
    }));
    let control = TestControl::start().await;
    let (code, findings) = doctor(&kubeconfig, &control.info.join).await;
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(code, 0);
}
