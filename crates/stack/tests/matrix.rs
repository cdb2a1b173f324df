//! The access matrix of stack configs: the demo answers the seed's
//! questions, diffs list exactly the changed cells, bad tags are refused.

#![allow(clippy::unwrap_used, clippy::panic)]

use gatehouse_policy::parse_policy;
use gatehouse_reach::matrix::{ColumnKind, Matrix, MatrixError, compute};
use gatehouse_stack::StackConfig;
use std::sync::Arc;

fn demo() -> Matrix {
    let cfg = StackConfig::demo();
    let policy = Arc::new(parse_policy(gatehouse_stack::DEMO_POLICY).unwrap());
    compute(&cfg.matrix_input(), policy, None).unwrap()
}

#[test]
fn demo_matrix_answers_the_seed_questions() {
    let m = demo();
    let allow = |r: &str, c: &str| m.cell(r, c).unwrap_or_else(|| panic!("{r} {c}")).allow;
    // Private: people reach service proxies; only admins the dashboards.
    assert!(allow("bob@example.com", "blog (mesh)"));
    assert!(!allow("bob@example.com", "grafana (mesh)"));
    assert!(allow("alice@example.com", "grafana (mesh)"));
    assert!(allow("group:admins", "dashboard (mesh)"));
    assert!(!allow("internet", "grafana (mesh)"));
    // Public: path rules, for everybody alike.
    assert!(allow("internet", "blog.example.com/"));
    assert!(!allow("internet", "blog.example.com/ghost"));
    assert!(allow("internet", "analytics.example.com/api/event"));
    assert!(allow("bob@example.com", "analytics.example.com/js/"));
    assert!(!allow("internet", "links.example.com/api"));
    // Grafana has no public column at all.
    assert!(
        !m.columns
            .iter()
            .any(|c| c.service == "grafana" && matches!(c.kind, ColumnKind::Public { .. }))
    );
    // Explanations name the deciding rules.
    let c = m.cell("bob@example.com", "grafana (mesh)").unwrap();
    assert!(c.layers[0].reason.contains("acls[1]"), "{:?}", c.layers);
    let c = m.cell("internet", "blog.example.com/ghost").unwrap();
    assert!(
        c.layers[0].reason.contains("rule /ghost deny"),
        "{:?}",
        c.layers
    );
}

#[test]
fn diff_lists_exactly_the_changed_cells() {
    let m = demo();
    let cfg = StackConfig::demo();
    let opened = gatehouse_stack::DEMO_POLICY.replace(
        r#"{"action": "accept", "src": ["group:admins"], "dst": ["tag:admin-ui:443"]},"#,
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:admin-ui:443"]},"#,
    );
    let opened = opened.replace(
        r#""accept": ["tag:k8s:443"], "deny": ["tag:admin-ui:443"]"#,
        r#""accept": ["tag:k8s:443", "tag:admin-ui:443"]"#,
    );
    let n = compute(
        &cfg.matrix_input(),
        Arc::new(parse_policy(&opened).unwrap()),
        None,
    )
    .unwrap();
    let d = Matrix::diff(&m, &n);
    assert!(!d.is_empty());
    assert!(
        d.iter()
            .all(|c| c.before == Some(false) && c.after == Some(true)),
        "{d:#?}"
    );
    assert!(
        d.iter()
            .any(|c| c.row == "bob@example.com" && c.column == "grafana (mesh)")
    );
    assert!(
        d.iter()
            .all(|c| c.column == "grafana (mesh)" || c.column == "dashboard (mesh)"),
        "{d:#?}"
    );
    assert!(Matrix::diff(&m, &m).is_empty());
}

#[test]
fn undeclared_service_tag_is_an_error() {
    let mut cfg = StackConfig::demo();
    cfg.services[0].tags = vec!["tag:nope".into()];
    let policy = Arc::new(parse_policy(gatehouse_stack::DEMO_POLICY).unwrap());
    assert!(matches!(
        compute(&cfg.matrix_input(), policy, None),
        Err(MatrixError::UndeclaredTag { .. })
    ));
}
