//! The `gatehouse policy` command-line contract: outputs and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out: Output = bin().args(args).output().expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn example_policy_passes_its_tests() {
    let policy = examples().join("policy.hujson");
    let inv = examples().join("inventory.yaml");
    let (code, out, err) = run(&["policy", "test", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("assertions passed"), "{out}");
    let (code, out, err) = run(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn failing_test_exits_1_and_names_the_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "p.hujson",
        r#"{
  "tagOwners": {"tag:web": []},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}],
  "tests": [
    {"src": "alice@example.com", "accept": ["tag:web:443"]},
    {"src": "bob@example.com", "accept": ["tag:web:443"]},
  ],
}"#,
    );
    let (code, out, _) = run(&["policy", "test", &p]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL tests[1] (line 6): src bob@example.com accept \"tag:web:443\""),
        "{out}"
    );
    assert!(out.contains("a device of bob@example.com"), "{out}");
    assert!(
        out.contains("opened only to other sources by acls[0] (line 3)"),
        "{out}"
    );
    assert!(out.contains("1 of 2 assertions failed"), "{out}");
    let (code, out, _) = run(&["policy", "test", &p, "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["failures"][0]["test"], 1);
    assert_eq!(v["failures"][0]["expect"], "accept");
}

#[test]
fn invalid_policy_exits_2_pointing_at_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "p.hujson",
        "{\n  \"acls\": [\n    {\"action\": \"deny\", \"src\": [\"*\"], \"dst\": [\"*:*\"]},\n  ],\n}\n",
    );
    let (code, out, err) = run(&["policy", "test", &p]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("acls[0].action (line 3, column 16): action=\"deny\" is not supported"),
        "{err}"
    );
    let p = write(&dir, "q.hujson", "{\"acls\": [}");
    let (code, _, err) = run(&["policy", "test", &p]);
    assert_eq!(code, 2);
    assert!(err.contains("line 1, column 11"), "{err}");
    let (code, _, err) = run(&["policy", "test", "/nonexistent/policy.hujson"]);
    assert_eq!(code, 2);
    assert!(err.contains("reading /nonexistent/policy.hujson"), "{err}");
}

#[test]
fn invalid_inventory_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "p.hujson", r#"{"tagOwners": {"tag:a": []}}"#);
    let inv = write(
        &dir,
        "n.yaml",
        "nodes: [{name: x, tags: [tag:a], addresses: [100.64.0.1]}, {name: y, tags: [tag:a], addresses: [100.64.0.1]}]",
    );
    let (code, _, err) = run(&["policy", "test", &p, "--inventory", &inv]);
    assert_eq!(code, 2);
    assert!(
        err.contains("address 100.64.0.1 used by more than one node"),
        "{err}"
    );
    // A tag the policy does not declare is kept (a warning, see policy_compat_cli.rs).
    let inv = write(
        &dir,
        "n.yaml",
        "nodes: [{name: x, tags: [tag:zzz], addresses: [100.64.0.1]}]",
    );
    let (code, _, err) = run(&["policy", "test", &p, "--inventory", &inv]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tag:zzz"), "{err}");
}

#[test]
fn query_prints_verdict_first_and_explains() {
    let policy = examples().join("policy.hujson");
    let inv = examples().join("inventory.yaml");
    let base = [
        "policy",
        "query",
        policy.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
    ];
    let q = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        run(&a)
    };
    let (code, out, _) = q(&["--src", "bob@example.com", "--dst", "k8s-grafana:443"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().next(), Some("accept"));
    let (code, out, _) = q(&[
        "--src",
        "bob-laptop",
        "--dst",
        "k8s-grafana:22",
        "--explain",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().next(), Some("deny"));
    assert!(
        out.contains("opened only to other sources by acls[1]"),
        "{out}"
    );
    let (_, out, _) = q(&[
        "--src",
        "group:admins",
        "--dst",
        "k8s-grafana:22",
        "--explain",
    ]);
    assert_eq!(out.lines().next(), Some("accept"));
    assert!(out.contains("by acls[1] (line"), "{out}");
    let (_, out, _) = q(&[
        "--src",
        "100.64.0.4",
        "--dst",
        "100.64.0.12:9090",
        "--proto",
        "tcp",
    ]);
    assert_eq!(out.lines().next(), Some("accept"));
    let (_, out, _) = q(&[
        "--src",
        "100.64.0.4",
        "--dst",
        "100.64.0.12:9090",
        "--proto",
        "udp",
    ]);
    assert_eq!(out.lines().next(), Some("deny"));
    let (_, out, _) = q(&["--src", "alice@example.com", "--dst", "kube-api:6443"]);
    assert_eq!(out.lines().next(), Some("accept"));
    let (_, out, _) = q(&[
        "--src",
        "tag:monitoring",
        "--dst",
        "[fd7a:115c:a1e0::c]:9090",
    ]);
    assert_eq!(out.lines().next(), Some("accept"));
    let (_, out, _) = q(&[
        "--src",
        "bob@example.com",
        "--dst",
        "k8s-grafana:443",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.split_once('\n').unwrap().1).unwrap();
    assert_eq!(v["accept"], true);
    let (code, _, err) = q(&["--src", "nobody", "--dst", "k8s-grafana:443"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown source"), "{err}");
    let (code, _, err) = q(&["--src", "bob-laptop", "--dst", "k8s-grafana"]);
    assert_eq!(code, 2);
    assert!(err.contains("DST:PORT"), "{err}");
}

#[test]
fn filter_prints_the_compiled_inbound_filter() {
    let policy = examples().join("policy.hujson");
    let inv = examples().join("inventory.yaml");
    let args = [
        "policy",
        "filter",
        policy.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
        "--node",
        "k8s-grafana",
    ];
    let (code, out, _) = run(&args);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("node k8s-grafana (100.64.0.12, fd7a:115c:a1e0::c)"),
        "{out}"
    );
    assert!(out.contains("acls[2]: from 100.64.0.4,fd7a:115c:a1e0::4 to 100.64.0.12:9090,[fd7a:115c:a1e0::c]:9090 proto tcp"), "{out}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (code, out, _) = run(&json_args);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node"], "k8s-grafana");
    assert_eq!(v["rules"][2]["origin"], "acls[2]");
    assert_eq!(v["rules"][2]["ipProto"], serde_json::json!(["tcp"]));
    assert_eq!(
        v["rules"][2]["dstPorts"][0],
        serde_json::json!({"ip": "100.64.0.12", "ports": {"first": 9090, "last": 9090}})
    );
    // Deterministic: the same input prints the same bytes.
    assert_eq!(run(&json_args).1, out);
    let (code, _, err) = run(&[
        "policy",
        "filter",
        policy.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
        "--node",
        "nope",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no node named \"nope\""), "{err}");
}

/// `--format tailscale` prints the node's rules as Tailscale's control
/// sends them to a Tailscale client. The expectations are what Tailscale's
/// own control sent for the same policy and devices (captured from a
/// tailnet: an ACL from a group to two tagged ports, and a grant of three
/// protocol:port entries), with two documented differences: sources are
/// written as merged prefixes in address order (Tailscale lists each
/// address, sorted as text), and `*` stays `*` (Tailscale expands it to the
/// tailnet's ranges).
#[test]
fn filter_prints_what_tailscale_control_sends() {
    let dir = tempfile::tempdir().unwrap();
    let inv = write(
        &dir,
        "nodes.yaml",
        r#"nodes:
  - {name: beedrill, tags: [tag:server], addresses: [100.73.37.123, "fd7a:115c:a1e0::7537:257b"]}
  - {name: bulbasaur, user: odin@example.com, addresses: [100.99.246.35, "fd7a:115c:a1e0::5737:f623"]}
  - {name: ivysaur, user: thor@example.org, addresses: [100.117.74.2, "fd7a:115c:a1e0::f837:4a02"]}
  - {name: kakuna, tags: [tag:prod], addresses: [100.95.68.35, "fd7a:115c:a1e0::7637:4423"]}
  - {name: venusaur, user: freya@example.com, addresses: [100.78.38.64, "fd7a:115c:a1e0::f937:2640"]}
  - {name: weedle, tags: [tag:client], addresses: [100.88.172.39, "fd7a:115c:a1e0::b937:ac27"]}
"#,
    );
    let owners = r#""tagOwners": {"tag:server": ["odin@example.com"], "tag:prod": ["odin@example.com"], "tag:client": ["odin@example.com"]}"#;
    let acl = write(
        &dir,
        "acl.hujson",
        &format!(
            r#"{{"groups": {{"group:developers": ["thor@example.org", "odin@example.com"]}}, {owners},
  "acls": [{{"action": "accept", "src": ["group:developers"], "dst": ["tag:server:22", "tag:prod:5432"]}}]}}"#
        ),
    );
    let filter = |policy: &str, node: &str| -> serde_json::Value {
        let (code, out, err) = run(&[
            "policy",
            "filter",
            policy,
            "--inventory",
            &inv,
            "--node",
            node,
            "--format",
            "tailscale",
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    // Captured from Tailscale's control for beedrill and kakuna.
    let developers = [
        "100.117.74.2",
        "100.99.246.35",
        "fd7a:115c:a1e0::5737:f623",
        "fd7a:115c:a1e0::f837:4a02",
    ];
    for (node, v4, v6, port) in [
        ("beedrill", "100.73.37.123", "fd7a:115c:a1e0::7537:257b", 22),
        ("kakuna", "100.95.68.35", "fd7a:115c:a1e0::7637:4423", 5432),
    ] {
        let got = filter(&acl, node);
        let rules = got.as_array().unwrap();
        assert_eq!(rules.len(), 1, "{got:#}");
        let mut src: Vec<&str> = rules[0]["SrcIPs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        src.sort();
        assert_eq!(src, developers);
        assert_eq!(
            rules[0]["DstPorts"],
            serde_json::json!([
                {"IP": v4, "Ports": {"First": port, "Last": port}},
                {"IP": v6, "Ports": {"First": port, "Last": port}}
            ])
        );
        // The default protocols: no IPProto, as Tailscale's control sends it.
        assert!(rules[0].get("IPProto").is_none(), "{got:#}");
    }
    // A node no rule reaches gets an empty list: the client drops everything.
    assert_eq!(filter(&acl, "venusaur"), serde_json::json!([]));

    let grant = write(
        &dir,
        "grant.hujson",
        &format!(
            r#"{{{owners}, "grants": [{{"src": ["*"], "dst": ["tag:server"], "ip": ["tcp:80", "udp:53", "tcp:443"]}}]}}"#
        ),
    );
    let (v4, v6) = ("100.73.37.123", "fd7a:115c:a1e0::7537:257b");
    let port = |ip: &str, p: u16| serde_json::json!({"IP": ip, "Ports": {"First": p, "Last": p}});
    assert_eq!(
        filter(&grant, "beedrill"),
        serde_json::json!([
            {"SrcIPs": ["*"], "DstPorts": [port(v4, 80), port(v4, 443), port(v6, 80), port(v6, 443)], "IPProto": [6]},
            {"SrcIPs": ["*"], "DstPorts": [port(v4, 53), port(v6, 53)], "IPProto": [17]}
        ])
    );
    // --json and --format together are refused.
    let (code, _, err) = run(&[
        "policy",
        "filter",
        &grant,
        "--inventory",
        &inv,
        "--node",
        "beedrill",
        "--json",
        "--format",
        "text",
    ]);
    assert_eq!(code, 2, "{err}");
}

/// `gatehouse … | head -1` closes the pipe early: the program ends quietly
/// and successfully, as other command-line tools do, with no panic message.
#[test]
fn a_closed_stdout_ends_the_program_quietly() {
    let policy = examples().join("policy.hujson");
    let inv = examples().join("inventory.yaml");
    let (reader, writer) = std::io::pipe().unwrap();
    // Nobody reads: every write to stdout fails with a broken pipe.
    drop(reader);
    let out = bin()
        .args(["policy", "filter", policy.to_str().unwrap(), "--inventory"])
        .arg(&inv)
        .args(["--node", "k8s-grafana"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn failing_ssh_test_exits_1_and_names_the_login() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "p.hujson",
        r#"{
  "tagOwners": {"tag:web": []},
  "ssh": [{"action": "check", "src": ["alice@example.com"], "dst": ["tag:web"], "users": ["root"]}],
  "sshTests": [
    {"src": "alice@example.com", "dst": ["tag:web"], "check": ["root"], "deny": ["ubuntu"]},
    {"src": "bob@example.com", "dst": ["tag:web"], "accept": ["root"]},
  ],
}"#,
    );
    let (code, out, _) = run(&["policy", "test", &p]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "FAIL sshTests[1] (line 6): src bob@example.com accept \"root\" on \"tag:web\""
        ),
        "{out}"
    );
    assert!(
        out.contains("\"root\" is allowed only from other sources by ssh[0] (line 3)"),
        "{out}"
    );
    assert!(out.contains("1 of 3 assertions failed"), "{out}");
    let (code, out, _) = run(&["policy", "test", &p, "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ssh_failures"][0]["test"], 1);
    assert_eq!(v["ssh_failures"][0]["expect"], "accept");
    assert_eq!(v["ssh_failures"][0]["user"], "root");
    // Fixed, the policy passes.
    let fixed = write(
        &dir,
        "fixed.hujson",
        &std::fs::read_to_string(&p)
            .unwrap()
            .replace(r#""accept": ["root"]"#, r#""deny": ["root"]"#),
    );
    let (code, out, _) = run(&["policy", "test", &fixed]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 tests, 2 sshTests, 3 assertions passed"),
        "{out}"
    );
}
