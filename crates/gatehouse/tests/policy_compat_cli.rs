//! `gatehouse policy check|test|query|filter` on the points where the
//! policy file follows Tailscale's behaviour: `autogroup:self` with `*`,
//! `user:*@domain`, `autogroup:danger-all`, empty grants, refused default
//! routes and `tailscale.com` capabilities, prefixes in tests, nodes with
//! undeclared tags, and `via` grants through subnet routers and exit nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

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

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

const INVENTORY: &str = r#"
nodes:
  - {name: alice-laptop, user: alice@example.com, addresses: [100.64.0.1]}
  - {name: alice-desktop, user: alice@example.com, addresses: [100.64.0.2]}
  - {name: bob-laptop, user: bob@example.org, addresses: [100.64.0.3]}
  - {name: ci, user: alice@example.com, tags: [tag:ci], addresses: [100.64.0.4]}
  - {name: web, tags: [tag:web], addresses: [100.64.0.10]}
  - {name: office, tags: [tag:router], addresses: [100.64.0.20], routes: [10.33.0.0/16]}
  - {name: branch, tags: [tag:branch], addresses: [100.64.0.21], routes: [10.33.0.0/16]}
  - {name: egress, tags: [tag:exit], addresses: [100.64.0.30], routes: [0.0.0.0/0, "::/0"]}
"#;

const POLICY: &str = r#"{
  "groups": {"group:eng": ["alice@example.com"]},
  "tagOwners": {"tag:web": [], "tag:ci": [], "tag:router": [], "tag:branch": [], "tag:exit": []},
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["autogroup:self:22"]},
  ],
  "grants": [
    {"src": ["user:*@example.com"], "dst": ["tag:web"], "ip": ["tcp:443"]},
    {"src": ["autogroup:danger-all"], "dst": ["tag:web"], "ip": ["tcp:80"]},
    {"src": [], "dst": ["tag:web"], "ip": ["*"]},
    {"src": ["group:eng"], "dst": ["10.33.0.0/16"], "ip": ["tcp:5432"], "via": ["tag:router"]},
    {"src": ["autogroup:member"], "dst": ["autogroup:internet"], "ip": ["tcp:443"], "via": ["tag:exit"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["alice@example.com:22", "tag:web:443"], "deny": ["tag:ci:22", "bob@example.org:22"]},
    {"src": "bob@example.org", "accept": ["tag:web:80"], "deny": ["tag:web:443", "alice@example.com:22"]},
  ],
}"#;

fn query(f: &Files, src: &str, dst: &str, proto: &str) -> (String, String) {
    let (p, i) = (f.write("p.hujson", POLICY), f.write("i.yaml", INVENTORY));
    let (code, out, err) = run(&[
        "policy",
        "query",
        &p,
        "--inventory",
        &i,
        "--src",
        src,
        "--dst",
        dst,
        "--proto",
        proto,
        "--explain",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let verdict = out.lines().next().unwrap_or_default().to_string();
    (verdict, out)
}

#[test]
fn the_compat_policy_is_valid_and_its_tests_hold() {
    let f = Files::new();
    let (p, i) = (f.write("p.hujson", POLICY), f.write("i.yaml", INVENTORY));
    for args in [
        vec!["policy", "test", &p],
        vec!["policy", "test", &p, "--inventory", &i],
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("ok: policy is valid; 2 tests"), "{out}");
    }
}

#[test]
fn self_with_star_reaches_only_the_users_own_devices() {
    let f = Files::new();
    assert_eq!(
        query(&f, "alice-laptop", "alice-desktop:22", "tcp").0,
        "accept"
    );
    assert_eq!(query(&f, "bob-laptop", "alice-desktop:22", "tcp").0, "deny");
    // A tagged device of alice's gains nothing.
    assert_eq!(query(&f, "ci", "alice-desktop:22", "tcp").0, "deny");
    assert_eq!(query(&f, "alice-laptop", "ci:22", "tcp").0, "deny");
    let (p, i) = (f.write("p.hujson", POLICY), f.write("i.yaml", INVENTORY));
    let (code, out, _) = run(&[
        "policy",
        "filter",
        &p,
        "--inventory",
        &i,
        "--node",
        "alice-desktop",
        "--format",
        "tailscale",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0]["SrcIPs"],
        serde_json::json!(["100.64.0.1", "100.64.0.2"])
    );
    assert_eq!(v[0]["DstPorts"][0]["IP"], "100.64.0.2");
    // Grants, as in Tailscale, refuse "*" with autogroup:self.
    let bad = f.write(
        "g.hujson",
        r#"{"grants": [{"src": ["*"], "dst": ["autogroup:self"], "ip": ["tcp:22"]}]}"#,
    );
    let (code, _, err) = run(&["policy", "test", &bad]);
    assert_eq!(code, 2);
    assert!(
        err.contains("grants[0] (line 1, column 13): autogroup:self can only be used with users, groups, or supported autogroups"),
        "{err}"
    );
}

#[test]
fn domain_and_danger_all_sources() {
    let f = Files::new();
    assert_eq!(query(&f, "alice-laptop", "web:443", "tcp").0, "accept");
    assert_eq!(query(&f, "bob-laptop", "web:443", "tcp").0, "deny");
    assert_eq!(query(&f, "ci", "web:443", "tcp").0, "deny");
    // danger-all: any address, in or out of the mesh.
    let (v, out) = query(&f, "198.51.100.7", "web:80", "tcp");
    assert_eq!(v, "accept", "{out}");
    assert!(
        out.contains("grants[1] (line 9): autogroup:danger-all -> tag:web:80/tcp"),
        "{out}"
    );
    let (p, i) = (f.write("p.hujson", POLICY), f.write("i.yaml", INVENTORY));
    let (_, out, _) = run(&[
        "policy",
        "filter",
        &p,
        "--inventory",
        &i,
        "--node",
        "web",
        "--format",
        "tailscale",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{out}");
    assert_eq!(v[1]["SrcIPs"], serde_json::json!(["*"]));
}

#[test]
fn via_grants_through_routers_and_exit_nodes() {
    let f = Files::new();
    let (v, out) = query(&f, "alice-laptop", "10.33.7.7:5432", "tcp");
    assert_eq!(v, "accept", "{out}");
    assert!(out.contains("via tag:router"), "{out}");
    assert!(out.contains("through office"), "{out}");
    assert_eq!(query(&f, "bob-laptop", "10.33.7.7:5432", "tcp").0, "deny");
    assert_eq!(query(&f, "alice-laptop", "10.34.0.1:5432", "tcp").0, "deny");
    let (v, out) = query(&f, "bob-laptop", "1.1.1.1:443", "tcp");
    assert_eq!(v, "accept", "{out}");
    assert!(out.contains("through egress"), "{out}");
    assert_eq!(query(&f, "web", "1.1.1.1:443", "tcp").0, "deny");
    let (p, i) = (f.write("p.hujson", POLICY), f.write("i.yaml", INVENTORY));
    // The router with the via tag carries the rule; the other router of
    // the same subnet does not.
    let (code, out, _) = run(&[
        "policy",
        "filter",
        &p,
        "--inventory",
        &i,
        "--node",
        "office",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "grants[3]: from 100.64.0.1,100.64.0.2 forwarded to 10.33.0.0/16:5432 proto tcp"
        ),
        "{out}"
    );
    let (_, out, _) = run(&[
        "policy",
        "filter",
        &p,
        "--inventory",
        &i,
        "--node",
        "branch",
    ]);
    assert!(out.contains("(no rule"), "{out}");
    let (_, out, _) = run(&[
        "policy",
        "filter",
        &p,
        "--inventory",
        &i,
        "--node",
        "office",
        "--format",
        "tailscale",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{
            "SrcIPs": ["100.64.0.1", "100.64.0.2"],
            "DstPorts": [{"IP": "10.33.0.0/16", "Ports": {"First": 5432, "Last": 5432}}],
            "IPProto": [6]
        }])
    );
    let (_, out, _) = run(&[
        "policy",
        "filter",
        &p,
        "--inventory",
        &i,
        "--node",
        "egress",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nets = v["rules"][0]["routed"][0]["nets"].as_array().unwrap();
    assert!(nets.contains(&serde_json::json!("2000::/3")), "{out}");
    assert!(
        !nets.iter().any(|n| n.as_str().unwrap().starts_with("10.")),
        "{out}"
    );
}

#[test]
fn refusals_name_the_value_as_tailscale_does() {
    let f = Files::new();
    let cases = [
        (
            r#"{"grants": [{"src": ["*"], "dst": ["0.0.0.0/0"], "ip": ["*"]}]}"#,
            r#"grants[0].dst[0] (line 1, column 36): dst "0.0.0.0/0": to allow all IP addresses, use "*" or "autogroup:internet""#,
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["::/0"], "ip": ["*"]}]}"#,
            r#"dst "::/0": to allow all IP addresses, use "*" or "autogroup:internet""#,
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"], "app": {"tailscale.com/cap/ingress": [{}]}}]}"#,
            "capability name must not be in the tailscale.com domain",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["autogroup:danger-all"], "ip": ["*"]}]}"#,
            "cannot use autogroup:danger-all as a dst",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}], "tests": [{"src": "a@example.com", "accept": ["100.64.0.16/32:22"]}]}"#,
            r#"tests[0].accept[0] (line 1, column 103): "100.64.0.16/32": tests take single addresses, not prefixes"#,
        ),
    ];
    for (text, want) in cases {
        let p = f.write("bad.hujson", text);
        let (code, out, err) = run(&["policy", "test", &p]);
        assert_eq!(code, 2, "{text}: {out}");
        assert!(err.contains(want), "{text}: {err}");
    }
    // Empty lists are valid and grant nothing.
    let p = f.write(
        "empty.hujson",
        r#"{"tagOwners": {"tag:web": []}, "grants": [{"src": [], "dst": ["tag:web"], "ip": ["*"]}, {"src": ["*"], "dst": [], "ip": ["*"]}],
            "tests": [{"src": "alice@example.com", "deny": ["tag:web:22"]}]}"#,
    );
    let i = f.write("i.yaml", INVENTORY);
    let (code, out, err) = run(&["policy", "test", &p, "--inventory", &i]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn undeclared_tags_on_nodes_are_a_warning() {
    let f = Files::new();
    // tag:ci is carried by `ci` but no longer declared.
    let p = f.write(
        "p.hujson",
        &POLICY.replace(r#""tag:ci": [], "#, "").replace(
            r#""deny": ["tag:ci:22", "bob@example.org:22"]"#,
            r#""deny": ["bob@example.org:22"]"#,
        ),
    );
    let i = f.write("i.yaml", INVENTORY);
    let (code, out, err) = run(&["policy", "test", &p, "--inventory", &i]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: node \"ci\" carries tag:ci, not declared in tagOwners"),
        "{err}"
    );
    let (code, out, _) = run(&["policy", "test", &p, "--inventory", &i, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
    // The node keeps its tag identity: alice's autogroup:self does not reach it.
    let (code, out, err) = run(&[
        "policy",
        "query",
        &p,
        "--inventory",
        &i,
        "--src",
        "alice-laptop",
        "--dst",
        "ci:22",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("deny"), "{out}");
    let (code, _, err) = run(&["policy", "filter", &p, "--inventory", &i, "--node", "ci"]);
    assert_eq!(code, 0, "{err}");
}
