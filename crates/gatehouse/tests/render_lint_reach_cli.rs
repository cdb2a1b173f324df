//! The `gatehouse render|lint|reach` command-line contract: outputs, exit
//! codes and error positions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn render_seed(dir: &Path, target: &str, netpol: &str) {
    let catalog = root().join("examples/seed-cluster.yaml");
    let (code, _, err) = run(&[
        "render",
        catalog.to_str().unwrap(),
        "--target",
        target,
        "--netpol",
        netpol,
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("wrote"), "{err}");
}

#[test]
fn render_then_reach_list_and_query() {
    let dir = tempfile::tempdir().unwrap();
    render_seed(dir.path(), "tailscale", "cilium");
    let workloads = root().join("examples/seed-workloads.yaml");
    let (w, d) = (workloads.to_str().unwrap(), dir.path().to_str().unwrap());
    let (code, out, err) = run(&["reach", "list", d, w]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "list output is sorted");
    assert!(
        lines.contains(&"cloudflared/cloudflared[Deployment] => blog/blog[Deployment] : TCP 2368")
    );
    assert!(lines.contains(
        &"tailscale/ts-proxies[StatefulSet] => monitoring/grafana[Deployment] : TCP 3000"
    ));
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("default/intruder") && l.contains("=> monitoring/"))
    );
    for l in &lines {
        let (pair, conns) = l.split_once(" : ").unwrap();
        assert!(pair.contains(" => ") && !conns.is_empty(), "{l}");
    }

    let (code, out, _) = run(&[
        "reach",
        "query",
        d,
        w,
        "--from",
        "cloudflared/cloudflared",
        "--to",
        "blog/blog",
        "--port",
        "2368",
    ]);
    assert_eq!((code, out.lines().next()), (0, Some("allow")));
    let (code, out, _) = run(&[
        "reach",
        "query",
        d,
        w,
        "--from",
        "default/intruder",
        "--to",
        "monitoring/grafana",
        "--port",
        "3000/tcp",
        "--explain",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("deny\n"), "{out}");
    assert!(
        out.contains("CiliumNetworkPolicy monitoring/grafana-access"),
        "{out}"
    );
    // Through the Service: its port 80 leads to container port 2368.
    let (code, out, _) = run(&[
        "reach",
        "query",
        d,
        w,
        "--from",
        "cloudflared/cloudflared",
        "--to",
        "blog/blog",
        "--port",
        "80",
    ]);
    assert_eq!(
        code, 1,
        "the workload itself does not listen on 80 for cloudflared: {out}"
    );
    let (code, out, err) = run(&[
        "reach",
        "query",
        d,
        w,
        "--from",
        "tailscale/ts-proxies",
        "--to",
        "monitoring/grafana",
        "--port",
        "80",
        "--explain",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let (code, out, _) = run(&[
        "reach",
        "query",
        d,
        w,
        "--from",
        "external",
        "--to",
        "pdf-tools/pdf-tools",
        "--port",
        "8080",
    ]);
    assert_eq!((code, out.trim()), (1, "deny"));
    let (code, _, err) = run(&[
        "reach",
        "query",
        d,
        w,
        "--from",
        "nope/x",
        "--to",
        "blog/blog",
        "--port",
        "1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no workload nope/x"), "{err}");
}

#[test]
fn reach_query_through_a_service_port() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata: {name: front, namespace: a}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: a, labels: {app: web}}\nspec: {containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cli, namespace: a, labels: {app: cli}}\nspec: {containers: [{name: c, image: x}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 8080}]}]\n",
    )
    .unwrap();
    let p = f.to_str().unwrap();
    let (code, out, _) = run(&[
        "reach",
        "query",
        p,
        "--from",
        "a/cli",
        "--to",
        "a/front",
        "--port",
        "80",
        "--explain",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a/web[Pod] port 8080/TCP"), "{out}");
    let (code, _, err) = run(&[
        "reach", "query", p, "--from", "a/cli", "--to", "a/front", "--port", "81",
    ]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn malformed_manifests_give_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [x\n  namespace: y\n",
    )
    .unwrap();
    let p = f.to_str().unwrap();
    let (code, _, err) = run(&["reach", "list", p]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{p}:5:")), "{err}");
    let (code, out, _) = run(&["lint", p]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("{p}:5: error[GH000")), "{out}");
    // A bad value (not YAML syntax) also points at its line.
    std::fs::write(&f, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: b}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/99}\n").unwrap();
    let (code, _, err) = run(&["reach", "list", p]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{p}:8:")) && err.contains("prefix length"),
        "{err}"
    );
}

#[test]
fn lint_exit_codes_and_json() {
    let fixtures = root().join("crates/lint/tests/fixtures");
    let f = fixtures.join("gh007-integer-port.yaml");
    let (code, out, _) = run(&["lint", f.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["rule"], "GH007");
    assert_eq!(v[0]["level"], "error");
    assert_eq!(v[0]["at"]["line"], 10);
    assert!(v[0]["fix"].as_str().unwrap().contains("\"8080\""));
    // Warnings alone exit 0.
    let f = fixtures.join("gh010-unanchored-path.yml");
    let (code, out, _) = run(&["lint", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning[GH010"), "{out}");
    // The rendered seed cluster is clean.
    let dir = tempfile::tempdir().unwrap();
    render_seed(dir.path(), "tailscale", "kubernetes");
    let w = root().join("examples/seed-workloads.yaml");
    let (code, out, err) = run(&["lint", dir.path().to_str().unwrap(), w.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    let (code, _, err) = run(&["lint", "/nonexistent/x.yaml"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn render_refuses_a_bad_catalog_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, "apiVersion: gatehouse.dev/v1alpha1\nkind: ExposureCatalog\nservices:\n- name: a\n  namespace: a\n  service: {port: 80}\n  backend: {prot: 8080}\n").unwrap();
    let out_dir = dir.path().join("out");
    let (code, _, err) = run(&[
        "render",
        f.to_str().unwrap(),
        "--target",
        "gatehouse",
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{}:7:", f.display())) && err.contains("prot"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing written for a bad catalog");
}
