//! `gatehouse reach matrix` and `reach diff`: the cross-layer access matrix
//! over the mesh policy, the edge's path rules and rendered network policies.

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
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CONFIG: &str = r#"
network: seed
policy: policy.hujson
users: [alice@example.com, bob@example.com]
services:
  - name: blog
    backend: builtin:echo
    private: {hostname: k8s-blog}
    public: {hostname: example.com, denyPaths: [/ghost]}
    kubernetes: {workload: blog/blog, port: 2368, proxy: tailscale/ts-proxies, connector: cloudflared/cloudflared}
  - name: grafana
    backend: builtin:echo
    tags: [tag:admin-ui]
    private: {hostname: k8s-grafana}
    kubernetes: {workload: monitoring/grafana, port: 3000, proxy: tailscale/ts-proxies}
"#;

fn setup() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gatehouse.yaml"), CONFIG).unwrap();
    std::fs::copy(
        root().join("examples/demo-policy.hujson"),
        dir.path().join("policy.hujson"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let (code, _, err) = run(&[
        "render",
        root().join("examples/seed-cluster.yaml").to_str().unwrap(),
        "--target",
        "tailscale",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let cfg = dir.path().join("gatehouse.yaml").display().to_string();
    (dir, cfg, out.display().to_string())
}

#[test]
fn matrix_combines_mesh_edge_and_network_layers() {
    let (_dir, cfg, out) = setup();
    let workloads = root()
        .join("examples/seed-workloads.yaml")
        .display()
        .to_string();
    let base = [
        "reach",
        "matrix",
        "-c",
        &cfg,
        "--manifests",
        &out,
        "--manifests",
        &workloads,
    ];
    let explain = |row: &str, col: &str| {
        let mut a = base.to_vec();
        a.extend(["--explain", row, col]);
        let (code, o, e) = run(&a);
        assert_eq!(code, 0, "{e}");
        o
    };
    let o = explain("bob@example.com", "blog (mesh)");
    assert!(o.starts_with("allow bob@example.com -> blog (mesh)"), "{o}");
    assert!(o.contains("mesh     allow") && o.contains("acls[0]"), "{o}");
    assert!(
        o.contains("network  allow proxy tailscale/ts-proxies -> blog/blog port 2368/TCP"),
        "{o}"
    );
    let o = explain("bob@example.com", "grafana (mesh)");
    assert!(o.starts_with("deny"), "{o}");
    assert!(o.contains("opened only to other sources by acls[1]"), "{o}");
    let o = explain("internet", "example.com/");
    assert!(o.starts_with("allow"), "{o}");
    assert!(
        o.contains("network  allow connector cloudflared/cloudflared -> blog/blog port 2368/TCP"),
        "{o}"
    );
    let o = explain("internet", "example.com/ghost");
    assert!(
        o.starts_with("deny") && o.contains("rule /ghost deny"),
        "{o}"
    );

    // The classic mistake: the policy names the Service port, not the
    // container port. The network layer now denies the public path.
    let cnp = Path::new(&out).join("ciliumnetworkpolicy-blog-blog-access.yaml");
    let text = std::fs::read_to_string(&cnp)
        .unwrap()
        .replace("'2368'", "'80'");
    std::fs::write(&cnp, text).unwrap();
    let o = explain("internet", "example.com/");
    assert!(o.starts_with("deny"), "{o}");
    assert!(
        o.contains("network  deny") && o.contains("no rule admits it"),
        "{o}"
    );

    let mut j = base.to_vec();
    j.extend(["--format", "json"]);
    let (_, o, _) = run(&j);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().last().unwrap(), "internet");
    assert!(
        v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "grafana (mesh)" && c["kind"] == "mesh")
    );
    let mut md = base.to_vec();
    md.extend(["--format", "markdown"]);
    let (_, o, _) = run(&md);
    assert!(o.starts_with("| identity | blog (mesh) |"), "{o}");
    assert!(o.contains("| internet | deny |"), "{o}");
}

#[test]
fn diff_reviews_a_policy_change() {
    let (dir, cfg, _) = setup();
    let old = dir.path().join("policy.hujson");
    let new = dir.path().join("new.hujson");
    let text = std::fs::read_to_string(&old)
        .unwrap()
        .replace(
            r#""src": ["group:admins"], "dst": ["tag:admin-ui:443"]"#,
            r#""src": ["autogroup:member"], "dst": ["tag:admin-ui:443"]"#,
        )
        .replace(
            r#""accept": ["tag:k8s:443"], "deny": ["tag:admin-ui:443"]"#,
            r#""accept": ["tag:k8s:443"]"#,
        );
    std::fs::write(&new, text).unwrap();
    let (code, o, e) = run(&[
        "reach",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "-c",
        &cfg,
    ]);
    assert_eq!(code, 1, "{e}");
    assert_eq!(
        o.lines()
            .filter(|l| !l.starts_with("  "))
            .collect::<Vec<_>>(),
        vec!["bob@example.com -> grafana (mesh): deny => allow"],
        "{o}"
    );
    let (code, o, _) = run(&[
        "reach",
        "diff",
        old.to_str().unwrap(),
        old.to_str().unwrap(),
        "-c",
        &cfg,
    ]);
    assert_eq!(code, 0);
    assert_eq!(o.trim(), "no cell changes");
    // Two configs: a new public path shows up as new cells.
    let cfg2 = dir.path().join("two.yaml");
    std::fs::write(
        &cfg2,
        CONFIG.replace("denyPaths: [/ghost]", "denyPaths: [/ghost, /private]"),
    )
    .unwrap();
    let (code, o, _) = run(&["reach", "diff", &cfg, cfg2.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        o.contains("internet -> example.com/private: absent => deny"),
        "{o}"
    );
    let (code, _, e) = run(&["reach", "diff", &cfg, old.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(e.contains("both"), "{e}");
}

#[test]
fn builtin_demo_matrix() {
    let (code, o, _) = run(&["reach", "matrix"]);
    assert_eq!(code, 0);
    assert!(
        o.contains("grafana (mesh)") && o.contains("internet"),
        "{o}"
    );
    let (code, _, e) = run(&["reach", "matrix", "--explain", "nobody", "x"]);
    assert_eq!(code, 2);
    assert!(e.contains("no cell"), "{e}");
}
