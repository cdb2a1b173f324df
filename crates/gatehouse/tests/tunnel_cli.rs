//! The command-line contract of `gatehouse tunnel ingress` (cloudflared's
//! output) and `gatehouse edge tunnel`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn ingress_validate_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        "ingress:\n  - hostname: app.example.com\n    service: http://127.0.0.1:8080\n  - hostname: \"*.example.com\"\n    path: ^/api/\n    service: https://api.internal\n  - service: http_status:404\n",
    )
    .unwrap();
    let g = good.to_str().unwrap();
    let (code, out) = run(&["tunnel", "ingress", "validate", "--config", g]);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "OK"), "{out}");
    for (url, n) in [
        ("https://app.example.com/x", 0),
        ("https://app.example.com:8443/x", 0),
        ("https://a.b.example.com/api/v1", 1),
        ("https://example.com/api/v1", 2),
        ("http://other.org/", 2),
    ] {
        let (code, out) = run(&["tunnel", "ingress", "rule", "--config", g, url]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.lines().any(|l| l == format!("Matched rule #{n}")),
            "{url}: {out}"
        );
    }
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "ingress:\n  - hostname: a.example.com\n    service: http://x:1\n",
    )
    .unwrap();
    let (code, out) = run(&[
        "tunnel",
        "ingress",
        "validate",
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("The last ingress rule must match all URLs"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l == "OK"));
    let (code, out) = run(&[
        "tunnel",
        "ingress",
        "validate",
        "--config",
        "/nonexistent.yml",
    ]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn edge_tunnel_create_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("t.json");
    let s = store.to_str().unwrap();
    let (code, token) = run(&["edge", "tunnel", "create", "prod", "--tokens", s]);
    assert_eq!(code, 0, "{token}");
    let token = token.trim();
    assert!(token.starts_with("gh1.") && token.len() > 50, "{token}");
    let stored = std::fs::read_to_string(&store).unwrap();
    let secret = token.rsplit('.').next().unwrap();
    assert!(!stored.contains(secret), "the secret must not be stored");
    let (code, out) = run(&["edge", "tunnel", "create", "prod", "--tokens", s]);
    assert_eq!(code, 2);
    assert!(out.contains("already exists"), "{out}");
    let (_, out) = run(&["edge", "tunnel", "list", "--tokens", s]);
    assert!(out.contains("prod") && out.contains("active"), "{out}");
    let (code, _) = run(&["edge", "tunnel", "revoke", "prod", "--tokens", s]);
    assert_eq!(code, 0);
    let (_, out) = run(&["edge", "tunnel", "list", "--tokens", s]);
    assert!(out.contains("revoked"), "{out}");
}
