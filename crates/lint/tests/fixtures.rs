//! Each fixture holds one trap; every line a finding must point at ends in
//! `# <- RULE`. The linter must report exactly those (rule, line) pairs.
//! The seed cluster rendered by `gatehouse render` must lint clean.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_lint::{RULES, lint};
use std::collections::BTreeSet;
use std::path::Path;

fn fixtures() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn expected(text: &str) -> BTreeSet<(String, usize)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let id = l.split("# <- ").nth(1)?;
            Some((id.trim().to_string(), i + 1))
        })
        .collect()
}

#[test]
fn every_fixture_yields_exactly_its_marked_findings() {
    let mut covered = BTreeSet::new();
    for (name, text) in fixtures() {
        let want = expected(&text);
        assert!(!want.is_empty(), "{name} marks no finding");
        let report = lint(&[(&name, &text)]);
        let got: BTreeSet<(String, usize)> = report
            .findings
            .iter()
            .map(|f| {
                assert_eq!(f.at.file, name);
                (f.rule.to_string(), f.at.line)
            })
            .collect();
        assert_eq!(got, want, "{name}: {:#?}", report.findings);
        covered.extend(want.into_iter().map(|(r, _)| r));
    }
    let all: BTreeSet<String> = RULES.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(covered, all, "every rule has a fixture");
}

#[test]
fn findings_carry_why_and_fix() {
    for (name, text) in fixtures() {
        for f in lint(&[(&name, &text)]).findings {
            assert!(!f.why.is_empty() && !f.fix.is_empty(), "{name}: {f:?}");
            assert!(!f.message.is_empty());
        }
    }
}

#[test]
fn fixing_the_trap_clears_the_finding() {
    let fixes: [(&str, &str, &str); 5] = [
        (
            "gh002-service-port.yaml",
            "port: \"80\" # <- GH002",
            "port: \"2368\"",
        ),
        (
            "gh007-integer-port.yaml",
            "port: 8080 # <- GH007",
            "port: \"8080\"",
        ),
        (
            "gh006-namespace-not-privileged.yaml",
            "enforce: baseline",
            "enforce: privileged",
        ),
        (
            "gh003-proxy-cannot-reach.yaml",
            "- fromEndpoints: [{matchLabels: {app: prometheus}}]",
            "- fromEndpoints: [{matchLabels: {app: prometheus}}, {matchLabels: {k8s:io.kubernetes.pod.namespace: tailscale}}]",
        ),
        (
            "gh009-talos-dns.yaml",
            "masquerade: true",
            "hostLegacyRouting: true",
        ),
    ];
    let all = fixtures();
    for (file, from, to) in fixes {
        let text = &all.iter().find(|(n, _)| n == file).unwrap().1;
        assert!(text.contains(from), "{file}");
        let fixed = text.replace(from, to);
        let r = lint(&[(file, &fixed)]);
        assert!(r.findings.is_empty(), "{file}: {:#?}", r.findings);
    }
}

#[test]
fn the_rendered_seed_cluster_lints_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalog = std::fs::read_to_string(root.join("examples/seed-cluster.yaml")).unwrap();
    let workloads = std::fs::read_to_string(root.join("examples/seed-workloads.yaml")).unwrap();
    let c = gatehouse_render::parse_catalog(&catalog).unwrap();
    for netpol in [
        gatehouse_render::NetpolKind::Cilium,
        gatehouse_render::NetpolKind::Kubernetes,
    ] {
        let files =
            gatehouse_render::render(&c, gatehouse_render::Target::Tailscale, netpol, "seed");
        let mut inputs: Vec<(&str, &str)> = files
            .iter()
            .filter(|(n, _)| !n.ends_with(".hujson"))
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        inputs.push(("seed-workloads.yaml", &workloads));
        let r = lint(&inputs);
        assert!(r.findings.is_empty(), "{netpol:?}: {:#?}", r.findings);
        // Drop the proxies' rule from one backend policy: GH003 must fire there.
        let key = match netpol {
            gatehouse_render::NetpolKind::Cilium => {
                "ciliumnetworkpolicy-monitoring-grafana-access.yaml"
            }
            gatehouse_render::NetpolKind::Kubernetes => {
                "networkpolicy-monitoring-grafana-access.yaml"
            }
        };
        let broken = files[key].replace("tailscale", "nobody");
        let mut inputs2: Vec<(&str, &str)> =
            inputs.iter().filter(|(n, _)| *n != key).copied().collect();
        inputs2.push((key, &broken));
        let r = lint(&inputs2);
        let ids: Vec<&str> = r.findings.iter().map(|f| f.rule).collect();
        assert_eq!(ids, vec!["GH003"], "{netpol:?}: {:#?}", r.findings);
        assert_eq!(
            r.findings[0].at.file,
            "ingress-monitoring-grafana-tailscale.yaml"
        );
    }
}

#[test]
fn every_rule_is_documented() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/lint.md"))
            .unwrap();
    for r in RULES {
        let heading = format!("### {} {} ({}", r.id, r.name, r.level.name());
        assert!(doc.contains(&heading), "docs/lint.md lacks `{heading}`");
    }
}

#[test]
fn the_connector_is_found_by_name_when_its_labels_differ() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cf, namespace: edge}\ndata:\n  config.yaml: |\n    tunnel: t\n    ingress:\n      - hostname: a.example.com\n        service: http://web.shop:80\n      - service: http_status:404\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cloudflared, namespace: edge}\nspec:\n  template:\n    metadata: {labels: {app.kubernetes.io/name: tunnel}}\n    spec: {containers: [{name: c, image: cloudflared}]}\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: edge}\nspec:\n  endpointSelector: {matchLabels: {app.kubernetes.io/name: tunnel}}\n  egress:\n  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: shop, app: web}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    assert!(lint(&[("cf.yaml", text)]).findings.is_empty());
    // The same policy on the wrong port: GH004 on the rule's line (8).
    let broken = text.replace("\"8080\"", "\"8081\"");
    let r = lint(&[("cf.yaml", &broken)]);
    let got: Vec<(&str, usize)> = r.findings.iter().map(|f| (f.rule, f.at.line)).collect();
    assert_eq!(got, vec![("GH004", 8)], "{:#?}", r.findings);
}
