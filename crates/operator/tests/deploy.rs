//! Install artifacts and strict validation: the committed CRD equals the
//! generated one; every manifest in `deploy/` and every object the operator
//! writes passes `kubernetes-validate --strict` (core kinds) or Cilium's
//! strict schemas. (The chart rendered by helm equals `deploy/`:
//! `tests/install.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, ingress, service};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const IMAGE: &str = "ghcr.io/gatehouse-dev/gatehouse:0.1.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn crd_yaml_is_committed_and_current() {
    let generated = gatehouse_operator::crd::crd_yaml().unwrap();
    for p in [
        "deploy/crds/proxyclasses.gatehouse.dev.yaml",
        "charts/gatehouse/crds/proxyclasses.gatehouse.dev.yaml",
    ] {
        assert!(
            read(p) == generated,
            "{p} is stale: run `gatehouse operator crd > {p}`"
        );
    }
}

fn docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The images of each role, one name per role everywhere: the operator's
/// (every command), the proxies' (`gatehouse node` only) and the
/// connector's (`gatehouse tunnel` only), each built by the Dockerfile with
/// its features.
const PROXY_IMAGE: &str = "ghcr.io/gatehouse-dev/gatehouse-proxy:0.1.0";
const CONNECTOR_IMAGE: &str = "ghcr.io/gatehouse-dev/gatehouse-connector:0.1.0";

#[test]
fn one_image_name_per_role_everywhere() {
    let images = |n: &str| -> Vec<String> {
        read(n)
            .lines()
            .filter(|l| l.contains("ghcr.io/"))
            .map(|l| {
                l.rsplit([' ', '"'])
                    .find(|w| !w.is_empty())
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(images("deploy/operator.yaml"), [IMAGE, PROXY_IMAGE]);
    assert_eq!(images("deploy/connector.yaml"), [CONNECTOR_IMAGE]);
    let values = read("charts/gatehouse/values.yaml");
    for (key, image) in [
        ("image", IMAGE),
        ("proxyImage", PROXY_IMAGE),
        ("connectorImage", CONNECTOR_IMAGE),
    ] {
        assert!(
            values.contains(&format!("\n{key}: {image}\n")),
            "values.yaml {key}"
        );
    }
    let dockerfile = read("Dockerfile");
    for (features, image) in [
        ("", IMAGE),
        ("FEATURES=proxy", PROXY_IMAGE),
        ("FEATURES=connector", CONNECTOR_IMAGE),
    ] {
        let build = dockerfile
            .lines()
            .position(|l| l.contains(&format!("-t {image} .")))
            .unwrap_or_else(|| panic!("Dockerfile does not say how to build {image}"));
        // The --build-arg, when there is one, is on the line before.
        let lines: Vec<&str> = dockerfile.lines().collect();
        let said = format!("{}{}", lines[build.saturating_sub(1)], lines[build]);
        assert!(said.contains(features), "{image} built without {features}");
    }
    let docs = read("docs/operator.md");
    for image in [IMAGE, PROXY_IMAGE, CONNECTOR_IMAGE] {
        assert!(docs.contains(image), "docs/operator.md names {image}");
    }
}

fn validate(dir: &Path) {
    let out = std::process::Command::new(root().join("scripts/validate-manifests"))
        .args(["-k", "1.33.0"])
        .arg(dir)
        .output()
        .expect("scripts/validate-manifests (run scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deploy_manifests_validate_strictly() {
    validate(&root().join("deploy"));
}

/// Runs the operator over Ingresses that exercise every object it can
/// write, and validates each of them.
#[tokio::test]
async fn every_object_the_operator_writes_validates_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for cilium in [false, true] {
        let env = Env::new().await;
        if cilium {
            env.tracker.serve_group(
                "cilium.io/v2",
                &[("ciliumnetworkpolicies", "CiliumNetworkPolicy", true)],
            );
        }
        env.tracker.insert(json!({
            "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ProxyClass",
            "metadata": {"name": "default"},
            "spec": {
                "replicas": 2,
                "metrics": {"enabled": true},
                "statefulSet": {
                    "labels": {"team": "web"},
                    "annotations": {"note": "x"},
                    "pod": {
                        "labels": {"team": "web"},
                        "annotations": {"a": "b"},
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "priorityClassName": "high",
                        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
                        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                             "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "gatehouse-proxy"}}}}]}},
                        "container": {
                            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                            "env": [{"name": "RUST_LOG", "value": "debug"}],
                        },
                    },
                },
            },
        }));
        env.tracker
            .insert(service("blog", "blog", 80, json!("http")));
        env.tracker.insert(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "blog-1", "namespace": "blog", "labels": {"kubernetes.io/service-name": "blog"}},
            "addressType": "IPv4", "endpoints": [], "ports": [{"name": "http", "port": 2368}],
        }));
        env.tracker.insert(ingress(
            "blog",
            "blog",
            &["k8s-blog", "k8s-blog-admin"],
            json!({"gatehouse.dev/public-hostname": "blog.example.com", "gatehouse.dev/public-deny-paths": "/ghost"}),
        ));
        env.tracker
            .insert(service("grafana", "grafana", 80, json!(3000)));
        env.tracker
            .insert(ingress("grafana", "grafana", &["k8s-grafana"], json!({})));
        env.reconcile("blog", "blog").await;
        env.reconcile("grafana", "grafana").await;
        for (av, kind) in [
            ("apps/v1", "StatefulSet"),
            ("v1", "Secret"),
            ("v1", "ServiceAccount"),
            ("v1", "ConfigMap"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
            ("cilium.io/v2", "CiliumNetworkPolicy"),
            ("events.k8s.io/v1", "Event"),
        ] {
            for mut o in env.tracker.list(av, kind) {
                // What the operator sent: no fields the server sets.
                for f in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
                    o["metadata"].as_object_mut().unwrap().remove(f);
                }
                n += 1;
                // JSON, not YAML: a YAML loader turns an unquoted
                // timestamp (an Event's eventTime) into a date.
                std::fs::write(
                    dir.path().join(format!("{n}-{}.json", kind.to_lowercase())),
                    serde_json::to_string_pretty(&o).unwrap(),
                )
                .unwrap();
            }
        }
    }
    assert!(n >= 20, "{n} objects");
    validate(dir.path());
}

#[test]
fn doctor_finds_nothing_wrong_with_deploy() {
    let mut inputs = Vec::new();
    for e in std::fs::read_dir(root().join("deploy")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            inputs.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
    let refs: Vec<(&str, &str)> = inputs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let findings = gatehouse_operator::doctor::check_manifests(&refs);
    assert!(findings.is_empty(), "{findings:?}");
}

/// Every request the operator made in the reconcile scenarios below is
/// allowed by `deploy/rbac.yaml` (ClusterRole anywhere, Role only in the
/// operator's namespace), with create for an apply that created.
#[tokio::test]
async fn deploy_rbac_allows_every_call_the_operator_makes() {
    let rbac = docs(&read("deploy/rbac.yaml"));
    let rules = |kind: &str| -> Vec<Value> {
        rbac.iter()
            .filter(|d| d["kind"] == kind)
            .flat_map(|d| d["rules"].as_array().unwrap().clone())
            .collect()
    };
    let (cluster, ns_rules) = (rules("ClusterRole"), rules("Role"));
    let allows = |rules: &[Value], group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has = |k: &str, v: &str| r[k].as_array().unwrap().iter().any(|x| x == v);
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    let env = Env::new().await;
    env.tracker.serve_group(
        "cilium.io/v2",
        &[("ciliumnetworkpolicies", "CiliumNetworkPolicy", true)],
    );
    env.tracker.insert(json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "ProxyClass", "metadata": {"name": "default"}, "spec": {"replicas": 2}}));
    env.tracker
        .insert(service("blog", "blog", 80, json!("http")));
    env.tracker.insert(ingress(
        "blog",
        "blog",
        &["k8s-blog"],
        json!({"gatehouse.dev/public-hostname": "blog.example.com"}),
    ));
    let mut calls = Vec::new();
    env.reconcile("blog", "blog").await;
    calls.extend(env.tracker.requests());
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["spec"]["tls"] = json!([{"hosts": ["k8s-www"]}]);
    ing["metadata"]["annotations"] = json!({});
    env.tracker.insert(ing);
    env.reconcile("blog", "blog").await;
    calls.extend(env.tracker.requests());
    let mut ing = env
        .get("networking.k8s.io/v1", "Ingress", "blog", "blog")
        .unwrap();
    ing["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    env.tracker.insert(ing);
    env.reconcile("blog", "blog").await;
    calls.extend(env.tracker.requests());
    let mut checked = 0;
    for c in calls {
        let segs: Vec<&str> = c.path.trim_matches('/').split('/').collect();
        let (group, rest) = match segs.as_slice() {
            ["api", _, rest @ ..] => ("", rest),
            ["apis", g, _, rest @ ..] => (*g, rest),
            _ => continue,
        };
        let (ns, rest) = match rest {
            ["namespaces", n, r @ ..] if !r.is_empty() => (Some(*n), r),
            r => (None, r),
        };
        if rest.is_empty() {
            continue; // discovery: allowed to every authenticated client
        }
        let resource = match rest.get(2) {
            Some(sub) => format!("{}/{sub}", rest[0]),
            None => rest[0].to_string(),
        };
        let verbs: Vec<&str> = match (c.method.as_str(), rest.len()) {
            ("GET", 1) => vec!["list"],
            ("GET", _) => vec!["get"],
            ("POST", _) => vec!["create"],
            ("PATCH", _) if c.status == 201 => vec!["patch", "create"],
            ("PATCH", _) => vec!["patch"],
            ("PUT", _) => vec!["update"],
            ("DELETE", _) => vec!["delete"],
            _ => vec!["?"],
        };
        for v in verbs {
            let ok = allows(&cluster, group, &resource, v)
                || (ns == Some(common::NS) && allows(&ns_rules, group, &resource, v));
            assert!(
                ok,
                "deploy/rbac.yaml does not allow {v} {group}/{resource} in {ns:?} ({})",
                c.line()
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
    // What the controller's watches and the leader lease need.
    for (g, r) in [
        ("networking.k8s.io", "ingresses"),
        ("gatehouse.dev", "proxyclasses"),
    ] {
        assert!(allows(&cluster, g, r, "watch") && allows(&cluster, g, r, "list"));
    }
    assert!(allows(&ns_rules, "apps", "statefulsets", "watch"));
    for v in ["get", "create", "patch"] {
        assert!(allows(&ns_rules, "coordination.k8s.io", "leases", v));
    }
}
