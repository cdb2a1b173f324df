//! Installing the operator as users do, with the real tools against a real
//! API server: `helm lint`, `helm template` equal to `deploy/`, the
//! `kubectl` commands of docs/operator.md run as written (and its example
//! Ingress accepted), and `helm install`, `upgrade` and `uninstall` of the
//! chart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::kube_apiserver::{ApiServer, Options, Who, run_ok, tools};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Objects by `kind namespace/name`, sorted.
fn by_name(v: Vec<Value>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = v
        .into_iter()
        .map(|o| {
            let m = &o["metadata"];
            (
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap_or_default(),
                    m["namespace"].as_str().unwrap_or_default(),
                    m["name"].as_str().unwrap_or_default()
                ),
                o,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// helm with its caches in a directory of its own (no server needed).
fn helm(home: &Path) -> Command {
    let mut c = Command::new(&tools().helm);
    c.current_dir(root())
        .env("HOME", home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    c
}

#[test]
fn helm_lints_the_chart_and_renders_it_to_deploy() {
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(helm(home.path()).args(["lint", "--strict", "charts/gatehouse"]));
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let rendered = run_ok(helm(home.path()).args([
        "template",
        "gatehouse",
        "charts/gatehouse",
        "--include-crds",
    ]));
    let mut deploy = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(root().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    names.push(root().join("deploy/crds/proxyclasses.gatehouse.dev.yaml"));
    names.sort();
    for p in names {
        deploy.extend(docs(&std::fs::read_to_string(p).unwrap()));
    }
    let (got, want) = (by_name(docs(&rendered)), by_name(deploy));
    assert_eq!(
        got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
        want.iter().map(|w| w.0.clone()).collect::<Vec<_>>()
    );
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert_eq!(g, w, "{name}");
    }
}

/// The ```sh block of `section` in docs/operator.md.
fn doc_block(section: &str) -> String {
    let text = read("docs/operator.md");
    let start = text.find(section).unwrap_or_else(|| panic!("{section}"));
    let rest = &text[start..];
    let open = rest.find("```sh\n").unwrap() + 6;
    let close = rest[open..].find("```").unwrap();
    rest[open..open + close].to_string()
}

/// Runs `line` with `sh` in the repository, kubectl (or helm) on the PATH
/// acting as the admin of `s`.
fn sh(s: &ApiServer, line: &str) -> String {
    let t = tools();
    let path = format!(
        "{}:{}:{}",
        t.kubectl.parent().unwrap().display(),
        t.helm.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = s.helm(&Who::Admin, "default");
    c.env_remove("HELM_NAMESPACE");
    let mut cmd = Command::new("sh");
    cmd.current_dir(root())
        .arg("-c")
        .arg(line)
        .env("PATH", path);
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    run_ok(&mut cmd)
}

#[tokio::test]
async fn the_documented_kubectl_commands_install_the_operator() {
    let s = ApiServer::shared();
    let block = doc_block("## Install");
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| l.starts_with("kubectl "))
        .collect();
    assert!(lines.len() >= 4, "{block}");
    for l in &lines {
        sh(s, l);
    }
    for what in [
        "namespace/gatehouse",
        "crd/proxyclasses.gatehouse.dev",
        "ingressclass/gatehouse",
        "clusterrole/gatehouse-operator",
        "-n gatehouse deployment/gatehouse-operator",
        "-n gatehouse deployment/gatehouse-connector",
        "-n gatehouse secret/gatehouse-operator-oauth",
        "-n gatehouse secret/gatehouse-tunnel",
        "-n gatehouse configmap/gatehouse",
    ] {
        sh(s, &format!("kubectl get {what}"));
    }
    // The example Ingress of "The one step", as written, is accepted.
    let text = read("docs/operator.md");
    let start = text.find("## The one step").unwrap();
    let rest = &text[start..];
    let open = rest.find("```yaml\n").unwrap() + 8;
    let close = rest[open..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ingress.yaml");
    std::fs::write(&f, &rest[open..open + close]).unwrap();
    sh(s, "kubectl create namespace blog");
    sh(s, &format!("kubectl apply -f {}", f.display()));
    // And the ProxyClass example.
    let start = text.find("## ProxyClass").unwrap();
    let rest = &text[start..];
    let open = rest.find("```yaml\n").unwrap() + 8;
    let close = rest[open..].find("```").unwrap();
    std::fs::write(&f, &rest[open..open + close]).unwrap();
    sh(s, &format!("kubectl apply -f {}", f.display()));
    let out = sh(
        s,
        "kubectl get proxyclass default -o jsonpath={.spec.replicas}",
    );
    assert_eq!(out, "2");
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_against_the_api_server() {
    let s = ApiServer::start(Options::default());
    // The command docs/operator.md gives, as written.
    let text = read("docs/operator.md");
    let start = text
        .find("`helm install gatehouse charts/gatehouse")
        .unwrap()
        + 1;
    let end = start + text[start..].find('`').unwrap();
    let install = &text[start..end];
    sh(&s, install);
    let out = sh(&s, "helm list -o json");
    let releases: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(releases[0]["name"], "gatehouse");
    assert_eq!(releases[0]["status"], "deployed");
    assert_eq!(
        sh(
            &s,
            "kubectl -n gatehouse get configmap gatehouse -o jsonpath={.data.control}"
        ),
        "…"
    );
    sh(&s, "kubectl get crd proxyclasses.gatehouse.dev");
    sh(&s, "kubectl get clusterrolebinding gatehouse-operator");
    // Upgrade: a value changes the Deployment.
    sh(
        &s,
        "helm upgrade gatehouse charts/gatehouse --reuse-values --set operator.replicas=3",
    );
    assert_eq!(
        sh(
            &s,
            "kubectl -n gatehouse get deployment gatehouse-operator -o jsonpath={.spec.replicas}"
        ),
        "3"
    );
    let out = sh(&s, "helm history gatehouse -o json");
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    // Uninstall removes what the chart made; the CRD stays (helm never
    // deletes crds/), and the namespace is left terminating (no namespace
    // controller runs here).
    sh(&s, "helm uninstall gatehouse");
    for gone in [
        "clusterrole/gatehouse-operator",
        "clusterrolebinding/gatehouse-operator",
        "ingressclass/gatehouse",
    ] {
        let out = s
            .kubectl(&Who::Admin, "default")
            .args(["get", gone])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{gone} left");
    }
    sh(&s, "kubectl get crd proxyclasses.gatehouse.dev");
    let phase = sh(
        &s,
        "kubectl get namespace gatehouse -o jsonpath={.status.phase}",
    );
    assert_eq!(phase, "Terminating");
}
