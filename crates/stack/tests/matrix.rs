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

/// Identity rules on a public side (Access): the matrix answers each row
/// as the person, group or machine it signs in as, the internet (nobody
/// signed in) and tagged devices are refused, and the rows include the
/// people and service tokens the rules name.
#[test]
fn identity_rules_decide_public_cells_per_row() {
    use gatehouse_reach::matrix::{MatrixPublic, MatrixService};
    let mut cfg = StackConfig::demo();
    cfg.sign_in = Some(gatehouse_stack::SignIn {
        issuer: "https://id.example.com".into(),
        client_id: "gatehouse".into(),
        client_secret_file: "secret".into(),
        ca_file: None,
        login_claim: None,
        allowed_domains: Vec::new(),
        allowed_users: Vec::new(),
        groups_claim: None,
    });
    let blog = cfg.services.iter_mut().find(|s| s.name == "blog").unwrap();
    let public = blog.public.as_mut().unwrap();
    public.identity = Some(gatehouse_paths::Identity {
        groups: vec!["admins".into()],
        emails: vec!["carol@partner.test".into()],
        ..Default::default()
    });
    let text = serde_yaml_ng::to_string(&cfg).unwrap();
    let cfg = StackConfig::parse(&text).unwrap();
    let mut input = cfg.matrix_input();
    // A machine's way in: a public side only `gatehouse edge` serves, with
    // a service token (gatehouse.yaml defines none).
    input.services.push(MatrixService {
        name: "ci".into(),
        tags: Vec::new(),
        mesh_hostname: None,
        public: Some(MatrixPublic {
            hostname: "ci.example.com".into(),
            paths: vec!["/hooks/x".into(), "/".into()],
            rules: serde_yaml_ng::from_str(
                "- {path: /hooks/*, action: allow, identity: {service_tokens: [deploy], domains: [example.com]}}\n- {path: /*, action: allow}\n",
            )
            .unwrap(),
        }),
        placement: None,
    });
    let policy = Arc::new(parse_policy(gatehouse_stack::DEMO_POLICY).unwrap());
    let m = compute(&input, policy, None).unwrap();
    let allow = |r: &str, c: &str| m.cell(r, c).unwrap_or_else(|| panic!("{r} {c}")).allow;
    assert!(m.rows.contains(&"carol@partner.test".to_string()));
    assert!(m.rows.contains(&"service-token:deploy".to_string()));
    // alice is in group:admins, the provider's `admins`; carol is listed
    // by address; bob is neither.
    assert!(allow("alice@example.com", "blog.example.com/"));
    assert!(allow("group:admins", "blog.example.com/"));
    assert!(allow("carol@partner.test", "blog.example.com/"));
    assert!(!allow("bob@example.com", "blog.example.com/"));
    assert!(!allow("internet", "blog.example.com/"));
    assert!(!allow("tag:k8s", "blog.example.com/"));
    assert!(!allow("service-token:deploy", "blog.example.com/"));
    // A denied path stays denied for everybody, and other hosts are open.
    assert!(!allow("alice@example.com", "blog.example.com/ghost"));
    assert!(allow("internet", "vault.example.com/"));
    // By domain, by token; an open path for every row.
    assert!(allow("bob@example.com", "ci.example.com/hooks/x"));
    assert!(allow("service-token:deploy", "ci.example.com/hooks/x"));
    assert!(!allow("carol@partner.test", "ci.example.com/hooks/x"));
    assert!(!allow("internet", "ci.example.com/hooks/x"));
    assert!(allow("internet", "ci.example.com/"));
    assert!(allow("service-token:deploy", "ci.example.com/"));
    // A token is no mesh identity.
    assert!(!allow("service-token:deploy", "blog (mesh)"));
    // The explanation names the requirement and who signed in.
    let why = &m
        .cell("bob@example.com", "blog.example.com/")
        .unwrap()
        .layers[0]
        .reason;
    assert!(
        why.contains("allow for emails carol@partner.test or groups admins")
            && why.contains("bob@example.com signed in: 403"),
        "{why}"
    );
    let why = &m.cell("internet", "blog.example.com/").unwrap().layers[0].reason;
    assert!(why.contains("sent to sign in"), "{why}");
}
