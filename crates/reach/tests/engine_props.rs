//! Property tests: on generated clusters, the compiled `list` agrees with the
//! uncompiled baseline for every workload pair and every external range, and
//! the output does not depend on the order of the manifests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_reach::{Analysis, Endpoint, Engine};
use proptest::prelude::*;

const NS: [&str; 2] = ["a", "b"];
const APPS: [&str; 3] = ["web", "db", "cli"];

fn workload(i: usize, ns: usize, app: usize, port: u16, named: bool) -> String {
    let pname = if named { "name: http, " } else { "" };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: w{i}, namespace: {}, labels: {{app: {}}}}}\nspec: {{containers: [{{name: c, image: x, ports: [{{{pname}containerPort: {port}}}]}}]}}\n",
        NS[ns], APPS[app]
    )
}

fn k8s_peer(kind: usize, ns: usize, app: usize) -> String {
    match kind {
        0 => format!("{{podSelector: {{matchLabels: {{app: {}}}}}}}", APPS[app]),
        1 => format!(
            "{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}",
            NS[ns]
        ),
        2 => format!(
            "{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}, podSelector: {{matchLabels: {{app: {}}}}}}}",
            NS[ns], APPS[app]
        ),
        _ => "{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}".to_string(),
    }
}

fn cilium_peer(kind: usize, ns: usize, app: usize) -> String {
    match kind {
        0 => format!("fromEndpoints: [{{matchLabels: {{app: {}}}}}]", APPS[app]),
        1 => format!(
            "fromEndpoints: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: {}}}}}]",
            NS[ns]
        ),
        2 => "fromEntities: [world]".to_string(),
        _ => "fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.2.0.0/16]}]".to_string(),
    }
}

fn port(kind: usize, p: u16) -> (String, String) {
    match kind {
        0 => (
            format!("{{port: {p}}}"),
            format!("{{port: \"{p}\", protocol: TCP}}"),
        ),
        1 => ("{port: http}".into(), "{port: http}".into()),
        2 => (
            format!("{{port: {p}, protocol: UDP}}"),
            format!("{{port: \"{p}\", protocol: UDP}}"),
        ),
        _ => (
            format!("{{port: {p}, endPort: {}}}", p + 10),
            format!("{{port: \"{p}\", endPort: {}}}", p + 10),
        ),
    }
}

type PolicyGen = (
    bool,
    usize,
    usize,
    bool,
    Vec<(usize, usize, usize, Option<(usize, u16)>)>,
    bool,
);

fn policy(i: usize, g: &PolicyGen) -> String {
    let (cilium, ns, app, egress, rules, deny) = g;
    let section = if *egress { "egress" } else { "ingress" };
    if *cilium {
        let dir_rules: Vec<String> = rules
            .iter()
            .map(|(k, rns, rapp, p)| {
                let mut peer = cilium_peer(*k, *rns, *rapp);
                if *egress {
                    peer = peer.replacen("from", "to", 1);
                }
                match p {
                    Some((pk, pp)) => format!(
                        "  - {peer}\n    toPorts: [{{ports: [{}]}}]\n",
                        port(*pk, *pp).1
                    ),
                    None => format!("  - {peer}\n"),
                }
            })
            .collect();
        let section = if *deny {
            format!("{section}Deny")
        } else {
            section.to_string()
        };
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: {}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {}}}}}\n  {section}:\n{}",
            NS[*ns],
            APPS[*app],
            if dir_rules.is_empty() {
                "  - {}\n".to_string()
            } else {
                dir_rules.concat()
            }
        )
    } else {
        let key = if *egress { "to" } else { "from" };
        let dir_rules: Vec<String> = rules
            .iter()
            .map(|(k, rns, rapp, p)| {
                let peer = k8s_peer(*k, *rns, *rapp);
                match p {
                    Some((pk, pp)) => {
                        format!("  - {key}: [{peer}]\n    ports: [{}]\n", port(*pk, *pp).0)
                    }
                    None => format!("  - {key}: [{peer}]\n"),
                }
            })
            .collect();
        let types = if *egress { "[Egress]" } else { "[Ingress]" };
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: {}}}\nspec:\n  podSelector: {{matchLabels: {{app: {}}}}}\n  policyTypes: {types}\n  {section}:\n{}",
            NS[*ns],
            APPS[*app],
            if dir_rules.is_empty() { "  []\n".to_string() } else { dir_rules.concat() }
        )
        .replace(&format!("  {section}:\n  []\n"), &format!("  {section}: []\n"))
    }
}

fn arb_cluster() -> impl Strategy<Value = Vec<String>> {
    let w = proptest::collection::vec((0usize..2, 0usize..3, 79u16..83, any::<bool>()), 1..6);
    let rule = (
        0usize..4,
        0usize..2,
        0usize..3,
        proptest::option::of((0usize..4, 79u16..83)),
    );
    let p = (
        any::<bool>(),
        0usize..2,
        0usize..3,
        any::<bool>(),
        proptest::collection::vec(rule, 0..3),
        proptest::bool::weighted(0.2),
    );
    (w, proptest::collection::vec(p, 0..5)).prop_map(|(ws, ps)| {
        let mut docs: Vec<String> = ws
            .iter()
            .enumerate()
            .map(|(i, (ns, app, port, named))| workload(i, *ns, *app, *port, *named))
            .collect();
        docs.extend(ps.iter().enumerate().map(|(i, g)| policy(i, g)));
        docs
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn compiled_list_equals_the_baseline(docs in arb_cluster()) {
        let text = docs.join("---\n");
        let a = Analysis::load(&[("gen.yaml", &text)]).unwrap();
        let c = a.engine.cluster();
        let n = c.workloads.len();
        let mut expected = Vec::new();
        for s in 0..n {
            for d in 0..n {
                let conns = Engine::naive_conns(c, Endpoint::Workload(s), Endpoint::Workload(d));
                if !conns.is_empty() {
                    expected.push(format!("{} => {} : {conns}", c.workloads[s].display(), c.workloads[d].display()));
                }
            }
        }
        let got: Vec<String> = a
            .engine
            .list()
            .iter()
            .filter(|l| !l.src.starts_with(|ch: char| ch.is_ascii_digit()) && !l.dst.starts_with(|ch: char| ch.is_ascii_digit()))
            .map(ToString::to_string)
            .collect();
        expected.sort();
        prop_assert_eq!(got, expected, "{}", text);
        for (lo, hi) in a.engine.external_ranges() {
            for w in 0..n {
                let (e, w) = (Endpoint::External(lo, hi), Endpoint::Workload(w));
                prop_assert_eq!(a.engine.conns(e, w), Engine::naive_conns(c, e, w));
                prop_assert_eq!(a.engine.conns(w, e), Engine::naive_conns(c, w, e));
            }
        }
    }

    #[test]
    fn order_of_manifests_does_not_matter(docs in arb_cluster()) {
        let a = Analysis::load(&[("gen.yaml", &docs.join("---\n"))]).unwrap();
        let mut rev = docs.clone();
        rev.reverse();
        let b = Analysis::load(&[("gen.yaml", &rev.join("---\n"))]).unwrap();
        prop_assert_eq!(a.engine.list(), b.engine.list());
    }
}
