//! The seed cluster's catalog rendered for every target and policy API:
//! strict schema validation of every object, and reachability proofs over the
//! rendered policies (with the workloads of `examples/seed-workloads.yaml`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_reach::{Analysis, Endpoint, Proto};
use gatehouse_render::catalog::{PortRef, mesh_hostname};
use gatehouse_render::{Catalog, Files, NetpolKind, Target, parse_catalog, render};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn catalog() -> Catalog {
    let text = std::fs::read_to_string(root().join("examples/seed-cluster.yaml")).unwrap();
    parse_catalog(&text).unwrap()
}

const COMBOS: [(Target, NetpolKind); 4] = [
    (Target::Tailscale, NetpolKind::Cilium),
    (Target::Tailscale, NetpolKind::Kubernetes),
    (Target::Gatehouse, NetpolKind::Cilium),
    (Target::Gatehouse, NetpolKind::Kubernetes),
];

fn write(files: &Files) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn validate(paths: &[&Path]) -> (bool, String) {
    let out = Command::new(root().join("scripts/validate-manifests"))
        .args(paths)
        .output()
        .expect("scripts/validate-manifests (run scripts/install-test-deps first)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_rendered_object_passes_strict_schema_validation() {
    let c = catalog();
    for (target, netpol) in COMBOS {
        let files = render(&c, target, netpol, "seed-cluster.yaml");
        let objects = files
            .keys()
            .filter(|f| {
                f.ends_with(".yaml") && f.contains('-') && !f.starts_with("gatehouse-connector")
            })
            .count();
        let dir = write(&files);
        let (ok, out) = validate(&[dir.path()]);
        assert!(ok, "{target:?}/{netpol:?}: {out}");
        assert!(
            out.contains(&format!("validated {objects} files, 0 failing")),
            "{target:?}/{netpol:?}: expected {objects} objects: {out}"
        );
    }
}

#[test]
fn the_validator_rejects_what_the_api_server_would_drop_or_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let cnp = dir.path().join("cnp.yaml");
    // `toPort` (typo) would be dropped by the API server and open every port.
    std::fs::write(
        &cnp,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: a}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPort: [{ports: [{port: '80'}]}]\n",
    )
    .unwrap();
    let (ok, out) = validate(&[&cnp]);
    assert!(!ok && out.contains("toPort"), "{out}");
    // An integer port where Cilium's schema wants a string.
    std::fs::write(
        &cnp,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: a}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: 80}]}]\n",
    )
    .unwrap();
    let (ok, out) = validate(&[&cnp]);
    assert!(!ok, "{out}");
    let ing = dir.path().join("ing.yaml");
    std::fs::write(
        &ing,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a, namespace: a}\nspec: {ingressClass: tailscale}\n",
    )
    .unwrap();
    let (ok, out) = validate(&[&ing]);
    assert!(!ok && out.contains("ingressClass"), "{out}");
}

/// The workloads for `reach`: the example file, plus Gatehouse's own proxy
/// and connector pods for the gatehouse target.
fn workloads(target: Target) -> String {
    let mut w = std::fs::read_to_string(root().join("examples/seed-workloads.yaml")).unwrap();
    if target == Target::Gatehouse {
        w.push_str(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: gatehouse}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: proxies, namespace: gatehouse}\nspec:\n  template:\n    metadata: {labels: {app.kubernetes.io/name: gatehouse-proxy}}\n    spec: {containers: [{name: node, image: gatehouse}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: connector, namespace: gatehouse}\nspec:\n  template:\n    metadata: {labels: {app.kubernetes.io/name: gatehouse-connector}}\n    spec: {containers: [{name: tunnel, image: gatehouse}]}\n",
        );
    }
    w
}

fn analysis(files: &Files, target: Target) -> Analysis {
    let w = workloads(target);
    let mut inputs: Vec<(&str, &str)> = files
        .iter()
        .filter(|(n, _)| n.ends_with(".yaml") || n.ends_with(".yml"))
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    inputs.push(("seed-workloads.yaml", &w));
    Analysis::load(&inputs).unwrap()
}

#[test]
fn reach_proves_each_backend_is_reachable_only_from_the_proxies_and_connector() {
    for (target, netpol) in COMBOS {
        let mut c = catalog();
        if target == Target::Gatehouse {
            // The example pins the seed's namespaces; Gatehouse's defaults apply here.
            c.settings = gatehouse_render::catalog::Settings::default();
        }
        let files = render(&c, target, netpol, "seed-cluster.yaml");
        let a = analysis(&files, target);
        let (proxy, connector) = match target {
            Target::Tailscale => (
                "tailscale/ts-proxies[StatefulSet]",
                "cloudflared/cloudflared[Deployment]",
            ),
            Target::Gatehouse => (
                "gatehouse/proxies[StatefulSet]",
                "gatehouse/connector[Deployment]",
            ),
        };
        let lines = a.engine.list();
        let mut into: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
        for l in &lines {
            into.entry(&*l.dst)
                .or_default()
                .insert(&*l.src, l.conns.to_string());
        }
        for e in &c.services {
            let dst = format!("{}/{}[Deployment]", e.namespace, e.name);
            let PortRef::Number(port) = e.backend.port else {
                panic!("seed ports are numbers")
            };
            let mut expected = BTreeMap::new();
            if e.private.is_some() {
                expected.insert(proxy, format!("TCP {port}"));
            }
            if e.public.is_some() {
                expected.insert(connector, format!("TCP {port}"));
            }
            let got = into.get(dst.as_str()).cloned().unwrap_or_default();
            assert_eq!(got, expected, "{target:?}/{netpol:?}: who reaches {dst}");
        }
        // The connector dials exactly the public backends, DNS and the edge.
        let out: BTreeSet<&str> = lines
            .iter()
            .filter(|l| &*l.src == connector)
            .map(|l| &*l.dst)
            .collect();
        let mut expected: BTreeSet<String> = c
            .services
            .iter()
            .filter(|e| e.public.is_some())
            .map(|e| format!("{}/{}[Deployment]", e.namespace, e.name))
            .collect();
        expected.insert("kube-system/coredns[Deployment]".into());
        let edge = lines
            .iter()
            .filter(|l| &*l.src == connector && l.dst.starts_with(|c: char| c.is_ascii_digit()))
            .map(|l| l.dst.to_string())
            .collect::<Vec<_>>();
        assert_eq!(edge.len(), 1, "{target:?}/{netpol:?}: {edge:?}");
        expected.insert(edge[0].clone());
        let out: BTreeSet<String> = out.into_iter().map(str::to_string).collect();
        assert_eq!(out, expected, "{target:?}/{netpol:?}: connector egress");
        if target == Target::Tailscale {
            assert_eq!(
                edge[0], "198.41.192.0-198.41.192.255,198.41.200.0-198.41.200.255",
                "{netpol:?}"
            );
        }
        // Nothing connects to the connector.
        assert!(
            !lines.iter().any(|l| &*l.dst == connector),
            "{target:?}/{netpol:?}: something reaches the connector"
        );
    }
}

#[test]
fn the_service_port_is_not_the_container_port() {
    let c = catalog();
    let files = render(
        &c,
        Target::Tailscale,
        NetpolKind::Cilium,
        "seed-cluster.yaml",
    );
    let a = analysis(&files, Target::Tailscale);
    let cf = a.endpoint("cloudflared/cloudflared").unwrap();
    let blog = a.endpoint("blog/blog").unwrap();
    let intruder = a.endpoint("default/intruder").unwrap();
    assert!(a.engine.query(cf, blog, Proto::Tcp, 2368).allowed);
    assert!(!a.engine.query(cf, blog, Proto::Tcp, 80).allowed);
    assert!(!a.engine.query(cf, blog, Proto::Udp, 2368).allowed);
    assert!(!a.engine.query(intruder, blog, Proto::Tcp, 2368).allowed);
    let grafana = a.endpoint("monitoring/grafana").unwrap();
    assert!(!a.engine.query(cf, grafana, Proto::Tcp, 3000).allowed);
    let world = Endpoint::External(0, u32::MAX);
    assert!(!a.engine.query(world, blog, Proto::Tcp, 2368).allowed);
    // Through the Service: port 80 maps to the named target port `http`.
    let backends = a.service_backends("blog", "blog", 80, Proto::Tcp).unwrap();
    assert_eq!(backends, vec![(blog_index(&a), 2368)]);
}

fn blog_index(a: &Analysis) -> usize {
    match a.endpoint("blog/blog").unwrap() {
        Endpoint::Workload(i) => i,
        Endpoint::External(..) => panic!(),
    }
}

#[test]
fn tunnel_rules_put_denied_paths_first_and_the_catch_all_last() {
    let c = catalog();
    for target in [Target::Tailscale, Target::Gatehouse] {
        let files = render(&c, target, NetpolKind::Cilium, "seed-cluster.yaml");
        let name = match target {
            Target::Tailscale => "cloudflared-config.yml",
            Target::Gatehouse => "gatehouse-connector.yaml",
        };
        let cfg: serde_json::Value = serde_yaml_ng::from_str(&files[name]).unwrap();
        let rules = cfg["ingress"].as_array().unwrap();
        let last = rules.last().unwrap();
        assert!(last.get("hostname").is_none() && last.get("path").is_none());
        assert_eq!(last["service"], "http_status:404");
        for r in &rules[..rules.len() - 1] {
            assert!(
                r["hostname"].is_string(),
                "only the last rule is a catch-all"
            );
            if let Some(p) = r["path"].as_str() {
                assert!(p.starts_with("^/"), "unanchored path {p}");
            }
        }
        for e in c.services.iter().filter(|e| e.public.is_some()) {
            let p = e.public.as_ref().unwrap();
            let host_rules: Vec<&serde_json::Value> = rules
                .iter()
                .filter(|r| r["hostname"] == p.hostname.as_str())
                .collect();
            let first_allow = host_rules
                .iter()
                .position(|r| r["service"] != "http_status:404")
                .unwrap();
            assert_eq!(first_allow, p.deny_paths.len(), "{}", p.hostname);
            assert!(
                host_rules[first_allow..]
                    .iter()
                    .all(|r| r["service"] == e.origin_url().as_str())
            );
        }
    }
}

#[test]
fn acl_snippet_is_a_valid_policy_that_lets_members_reach_proxies() {
    let c = catalog();
    let files = render(
        &c,
        Target::Tailscale,
        NetpolKind::Cilium,
        "seed-cluster.yaml",
    );
    let text = &files["tailscale-acl.hujson"];
    let policy = gatehouse_policy::parse_policy(text).unwrap();
    assert_eq!(
        policy.tag_owners.get("tag:k8s").map(|o| o.len()),
        Some(1),
        "{text}"
    );
    let nodes = gatehouse_policy::parse_inventory(
        "nodes:\n- {name: laptop, user: a@example.com, addresses: [100.64.0.1]}\n- {name: k8s-grafana, tags: ['tag:k8s'], addresses: [100.64.0.2]}\n",
    )
    .unwrap();
    let engine = gatehouse_policy::Engine::new(std::sync::Arc::new(policy), nodes).unwrap();
    let q = engine
        .query(
            "laptop",
            "k8s-grafana",
            443,
            gatehouse_policy::QueryProto::Tcp,
        )
        .unwrap();
    assert!(q.accept);
    let q = engine
        .query(
            "k8s-grafana",
            "laptop",
            22,
            gatehouse_policy::QueryProto::Tcp,
        )
        .unwrap();
    assert!(!q.accept);
}

#[test]
fn tailscale_ingresses_match_the_seed_pattern() {
    let c = catalog();
    let files = render(
        &c,
        Target::Tailscale,
        NetpolKind::Cilium,
        "seed-cluster.yaml",
    );
    for e in &c.services {
        let p = e.private.as_ref().unwrap();
        let f = format!("ingress-{}-{}-tailscale.yaml", e.namespace, e.name);
        let v: serde_json::Value = serde_yaml_ng::from_str(&files[&f]).unwrap();
        assert_eq!(v["spec"]["ingressClassName"], "tailscale");
        assert_eq!(
            v["metadata"]["annotations"]["tailscale.com/proxy-class"],
            "default"
        );
        assert_eq!(
            v["spec"]["tls"][0]["hosts"][0],
            mesh_hostname(e, p).as_str()
        );
        assert_eq!(
            v["spec"]["defaultBackend"]["service"]["port"]["number"],
            u64::from(e.service.port)
        );
    }
}

#[test]
fn gatehouse_ingresses_carry_the_public_side_in_annotations() {
    let c = catalog();
    let files = render(
        &c,
        Target::Gatehouse,
        NetpolKind::Cilium,
        "seed-cluster.yaml",
    );
    let v: serde_json::Value =
        serde_yaml_ng::from_str(&files["ingress-analytics-analytics-gatehouse.yaml"]).unwrap();
    let ann = &v["metadata"]["annotations"];
    assert_eq!(v["spec"]["ingressClassName"], "gatehouse");
    assert_eq!(
        ann["gatehouse.dev/public-hostname"],
        "analytics.example.com"
    );
    assert_eq!(ann["gatehouse.dev/public-paths"], "/api/event,/js/");
    assert_eq!(ann["gatehouse.dev/backend-port"], "8000");
    let v: serde_json::Value =
        serde_yaml_ng::from_str(&files["ingress-blog-blog-gatehouse.yaml"]).unwrap();
    assert_eq!(
        v["metadata"]["annotations"]["gatehouse.dev/public-deny-paths"],
        "/ghost"
    );
    assert!(
        v["metadata"]["annotations"]
            .get("gatehouse.dev/public-paths")
            .is_none()
    );
    let v: serde_json::Value =
        serde_yaml_ng::from_str(&files["ingress-monitoring-grafana-gatehouse.yaml"]).unwrap();
    assert!(
        v["metadata"]["annotations"]
            .get("gatehouse.dev/public-hostname")
            .is_none()
    );
}

#[test]
fn rendering_is_deterministic() {
    let c = catalog();
    for (target, netpol) in COMBOS {
        let a = render(&c, target, netpol, "x");
        let b = render(&c, target, netpol, "x");
        assert_eq!(a, b);
    }
}

/// The backend policy the seed's author wrote by hand for a web application
/// on container port 8080 (public through cloudflared, private through the
/// Tailscale namespace), transcribed for pdf-tools.
const HAND_WRITTEN: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pdf-tools, namespace: pdf-tools}
spec:
  endpointSelector:
    matchLabels: {app: pdf-tools}
  ingress:
    - fromEndpoints:
        - matchLabels:
            k8s:io.kubernetes.pod.namespace: cloudflared
            app: cloudflared
      toPorts:
        - ports:
            - port: \"8080\"
              protocol: TCP
    - fromEndpoints:
        - matchLabels:
            k8s:io.kubernetes.pod.namespace: tailscale
      toPorts:
        - ports:
            - port: \"8080\"
              protocol: TCP
";

#[test]
fn rendered_backend_policy_is_equivalent_to_the_hand_written_one() {
    let c = catalog();
    let w = workloads(Target::Tailscale);
    let dst = "pdf-tools/pdf-tools[Deployment]";
    let into = |a: &Analysis| -> Vec<String> {
        a.engine
            .list()
            .into_iter()
            .filter(|l| &*l.dst == dst)
            .map(|l| l.to_string())
            .collect()
    };
    for netpol in [NetpolKind::Cilium, NetpolKind::Kubernetes] {
        let files = render(&c, Target::Tailscale, netpol, "seed-cluster.yaml");
        let rendered = analysis(&files, Target::Tailscale);
        let key = match netpol {
            NetpolKind::Cilium => "ciliumnetworkpolicy-pdf-tools-pdf-tools-access.yaml",
            NetpolKind::Kubernetes => "networkpolicy-pdf-tools-pdf-tools-access.yaml",
        };
        let mut inputs: Vec<(&str, &str)> = files
            .iter()
            .filter(|(n, _)| n.ends_with(".yaml") && n.as_str() != key)
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        inputs.push(("hand-written.yaml", HAND_WRITTEN));
        inputs.push(("seed-workloads.yaml", &w));
        let by_hand = Analysis::load(&inputs).unwrap();
        let (r, h) = (into(&rendered), into(&by_hand));
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r, h, "{netpol:?}");
    }
}
