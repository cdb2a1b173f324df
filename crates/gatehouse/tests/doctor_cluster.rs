//! `gatehouse doctor --cluster` against a real API server (testkit's
//! `kube_apiserver`: kube-apiserver on kine), with a real control: a
//! cluster with every trap the doctor knows and nothing of Gatehouse
//! installed is reported (exit 1); the same cluster fixed, with `deploy/`
//! applied as docs/operator.md says and control running, reports nothing
//! (exit 0); an identity that may not read the cluster gets exit 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::kube_apiserver::{ApiServer, Who, run_ok, tools};
use gatehouse_testkit::{TestControl, free_port};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn doctor(kubeconfig: &Path, control: &str) -> (i32, Vec<Value>, String) {
    let out = tokio::process::Command::new(BIN)
        .args(["doctor", "--cluster", "--json", "--control", control])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let findings: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_default();
    (out.status.code().unwrap_or(-1), findings, stderr)
}

fn rules(findings: &[Value]) -> Vec<String> {
    let mut r: Vec<String> = findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_string())
        .collect();
    r.sort();
    r
}

/// `kubectl apply -f -` of `docs` as the admin.
fn apply(s: &ApiServer, docs: &str) {
    use std::io::Write;
    let mut child = s
        .kubectl(&Who::Admin, "default")
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(docs.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cilium_config(legacy_routing: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cilium-config, namespace: kube-system}}\ndata: {{kube-proxy-replacement: \"true\", enable-host-legacy-routing: \"{legacy_routing}\"}}\n"
    )
}

fn web_service(annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: web}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: web, annotations: {annotations}}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    )
}

#[tokio::test]
async fn doctor_reports_the_traps_and_the_missing_install_and_nothing_once_fixed() {
    let s = ApiServer::shared();
    let admin = s.admin().await;
    let kubeconfig = s.kubeconfig(&Who::Admin, "default");
    // Cilium (its published CRDs) replaces kube-proxy with eBPF host
    // routing; an L4 proxy exposes a Service; a node runs Talos 1.9;
    // nothing of Gatehouse is installed.
    let crds = &tools().cilium_crds;
    run_ok(
        s.kubectl(&Who::Admin, "default")
            .args(["apply", "--server-side", "-f"])
            .arg(crds.join("ciliumnetworkpolicies.yaml")),
    );
    apply(s, &cilium_config("false"));
    apply(s, &web_service("{tailscale.com/expose: \"true\"}"));
    let nodes: Api<Node> = Api::all(admin.clone());
    nodes
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cp-1"}})).unwrap(),
        )
        .await
        .unwrap();
    let info = json!({"machineID": "m", "systemUUID": "u", "bootID": "b", "kernelVersion": "6.12.18-talos",
        "osImage": "Talos (v1.9.5)", "containerRuntimeVersion": "containerd://2.0.3", "kubeletVersion": "v1.32.3",
        "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"});
    nodes
        .patch_status(
            "cp-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": info}})),
        )
        .await
        .unwrap();
    // Control is not listening at this join string.
    let gone = format!(
        "https://127.0.0.1:{}#sha256:{}",
        free_port(),
        "0".repeat(64)
    );
    let (code, findings, stderr) = doctor(&kubeconfig, &gone).await;
    assert_eq!(
        rules(&findings),
        vec!["DR001", "DR002", "DR003", "DR004", "DR005", "GH001"],
        "{findings:#?}\n{stderr}"
    );
    assert_eq!(code, 1);
    let talos = findings.iter().find(|f| f["rule"] == "DR003").unwrap();
    assert!(
        talos["message"].as_str().unwrap().contains("cp-1"),
        "{talos}"
    );
    let rbac = findings.iter().find(|f| f["rule"] == "DR005").unwrap();
    let msg = rbac["message"].as_str().unwrap();
    assert!(
        msg.contains("patch networking.k8s.io/ingresses/status (cluster-wide)")
            && msg.contains("create apps/statefulsets (in gatehouse)"),
        "{msg}"
    );

    // Fixed: host legacy routing on, the Service exposed another way,
    // Gatehouse installed as docs/operator.md says, control running.
    apply(s, &cilium_config("true"));
    apply(s, &web_service("{}"));
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
    let control = TestControl::start().await;
    let (code, findings, stderr) = doctor(&kubeconfig, &control.info.join).await;
    assert!(findings.is_empty(), "{findings:#?}\n{stderr}");
    assert_eq!(code, 0);

    // Someone who may not read the cluster: exit 2, and why.
    let (code, findings, stderr) =
        doctor(&s.kubeconfig(&Who::User, "default"), &control.info.join).await;
    assert_eq!(code, 2, "{findings:?}");
    assert!(
        stderr.contains("reading the cluster") && stderr.contains("forbidden"),
        "{stderr}"
    );
}
