//! The command-line contract of `gatehouse tunnel ingress` (cloudflared's
//! output) and `gatehouse edge tunnel`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn run(args: &[&str]) -> (i32, String) {
    let (code, out, err) = run3(args);
    (code, out + &err)
}

/// Exit code, stdout, stderr.
fn run3(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes an ingress config `name` into `dir`; its path.
fn config(dir: &std::path::Path, name: &str, yaml: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p.to_str().unwrap().to_owned()
}

/// `gatehouse tunnel ingress validate --config <config>`: exit code and
/// output (stdout, then stderr).
fn validate(config: &str) -> (i32, String) {
    run(&["tunnel", "ingress", "validate", "--config", config])
}

/// `gatehouse tunnel ingress rule` for `url`: the rule number and the
/// lines after it.
fn matched(config: &str, url: &str) -> (usize, Vec<String>) {
    let (code, out, err) = run3(&["tunnel", "ingress", "rule", "--config", config, url]);
    assert_eq!(code, 0, "{url}: {out}{err}");
    let mut lines = out.lines().skip_while(|l| !l.starts_with("Matched rule #"));
    let n = lines
        .next()
        .and_then(|l| l.strip_prefix("Matched rule #"))
        .unwrap_or_else(|| panic!("{url}: {out}"))
        .parse()
        .unwrap();
    (n, lines.map(str::to_owned).collect())
}

/// The services cloudflared accepts without an origin URL, any URL scheme,
/// bastion mode: they validate (`OK` on stdout, as cloudflared prints it);
/// the ones the connector will not serve are named on stderr.
#[test]
fn ingress_validate_accepts_what_cloudflared_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "special.yml",
        "ingress:\n  - hostname: bastion.example.com\n    service: bastion\n  - hostname: socks.example.com\n    service: socks-proxy\n    originRequest:\n      ipRules:\n        - prefix: 10.0.0.0/8\n          ports: [80, 443]\n          allow: true\n  - hostname: jump.example.com\n    originRequest:\n      bastionMode: true\n  - hostname: jump2.example.com\n    service: http://127.0.0.1:8080\n    originRequest:\n      bastionMode: true\n  - hostname: ftp.example.com\n    service: ftp://127.0.0.1\n  - hostname: ftp2.example.com\n    service: ftp://127.0.0.1:21\n  - hostname: web.example.com\n    service: http://127.0.0.1:8080\n  - service: http_status:404\n",
    );
    let c = cfg.as_str();
    let (code, out, err) = run3(&["tunnel", "ingress", "validate", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!("Validating rules from {c}\nOK\n"),
        "stdout is cloudflared's"
    );
    for (n, what) in [
        (1, "service bastion"),
        (2, "service socks-proxy"),
        (3, "service bastion"),
        (4, "service bastion"),
        (5, "service ftp://127.0.0.1)"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("warning: Rule #{n} (")) && l.contains(what)),
            "rule {n}: {err}"
        );
    }
    assert_eq!(err.lines().count(), 5, "{err}");
    let (n, lines) = matched(c, "https://jump2.example.com/");
    assert_eq!(n, 3);
    assert_eq!(
        lines,
        ["\thostname: jump2.example.com", "\tservice: bastion"]
    );
    let (n, lines) = matched(c, "https://ftp.example.com/");
    assert_eq!((n, lines[1].as_str()), (4, "\tservice: ftp://127.0.0.1"));
    let (n, lines) = matched(c, "https://ftp2.example.com/");
    assert_eq!((n, lines[1].as_str()), (5, "\tservice: ftp://127.0.0.1:21"));
    // An ipRules entry cloudflared refuses is refused, naming the rule.
    let bad = config(
        dir.path(),
        "bad-iprule.yml",
        "ingress:\n  - hostname: socks.example.com\n    service: socks-proxy\n    originRequest: {ipRules: [{prefix: 10.0.0.0/33}]}\n  - service: http_status:404\n",
    );
    let (code, out) = validate(&bad);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "Rule #1: unable to create ip rule for socks-proxy: unable to parse cidr: 10.0.0.0/33"
        ),
        "{out}"
    );
}

/// A `*` glued to a label is a literal character, valid as in cloudflared:
/// it matches only a host spelled with the `*`; `*.` is the wildcard.
#[test]
fn ingress_glued_star_is_literal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "star.yml",
        "ingress:\n  - hostname: \"*example.com\"\n    service: http_status:201\n  - hostname: \"*.example.com\"\n    service: http_status:202\n  - service: http_status:404\n",
    );
    let c = cfg.as_str();
    let (code, out) = validate(c);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "OK"), "{out}");
    for (url, n) in [
        ("https://xexample.com/", 2),
        ("https://example.com/", 2),
        ("https://www.example.com/", 1),
        ("https://a.b.example.com/", 1),
        ("https://*example.com/", 0),
    ] {
        assert_eq!(matched(c, url).0, n, "{url}");
    }
    // Anywhere after the first character, a `*` is still refused.
    let bad = config(
        dir.path(),
        "bad.yml",
        "ingress:\n  - hostname: \"a*.example.com\"\n    service: http_status:201\n  - service: http_status:404\n",
    );
    let (code, out) = validate(&bad);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Rule #1: Hostname patterns can have at most one wildcard"),
        "{out}"
    );
}

/// Internationalised host names: a rule written in Unicode matches the URL
/// in Unicode and in punycode (cloudflared converts rule hostnames with
/// UTS #46); a wildcard pattern is not converted, as in cloudflared.
#[test]
fn ingress_rule_takes_internationalised_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "idn.yml",
        "ingress:\n  - hostname: môô.cloudflare.com\n    service: http_status:201\n  - hostname: \"*.bücher.example\"\n    service: http_status:202\n  - hostname: xn--strae-oqa.de\n    service: http_status:203\n  - service: http_status:404\n",
    );
    let c = cfg.as_str();
    let (n, lines) = matched(c, "https://môô.cloudflare.com");
    assert_eq!(n, 0);
    assert_eq!(
        lines,
        [
            "\thostname: môô.cloudflare.com",
            "\tservice: http_status:201"
        ]
    );
    for (url, n) in [
        ("https://xn--m-xgaa.cloudflare.com/", 0),
        ("https://m%C3%B4%C3%B4.cloudflare.com/", 0),
        ("https://a.bücher.example/", 1),
        ("https://a.xn--bcher-kva.example/", 3),
        ("https://xn--strae-oqa.de/", 2),
        ("https://moo.cloudflare.com/", 3),
    ] {
        assert_eq!(matched(c, url).0, n, "{url}");
    }
}

/// A service URL that does not parse fails validation, naming the rule
/// and the reason.
#[test]
fn ingress_unparsable_service_url_names_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "bad-url.yml",
        "ingress:\n  - hostname: a.example.com\n    service: http://127.0.0.1:1\n  - hostname: b.example.com\n    service: \"https://local host:8000\"\n  - service: http_status:404\n",
    );
    let c = cfg.as_str();
    let (code, out, _) = run3(&["tunnel", "ingress", "validate", "--config", c]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Rule #2: \"https://local host:8000\" is not a valid URL: invalid character \" \" in host name"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l == "OK"), "{out}");
    let (code, out, _) = run3(&[
        "tunnel",
        "ingress",
        "rule",
        "--config",
        c,
        "https://a.example.com/",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Validation failed: Rule #2: "), "{out}");
}

#[test]
fn ingress_validate_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(
        dir.path(),
        "good.yml",
        "ingress:\n  - hostname: app.example.com\n    service: http://127.0.0.1:8080\n  - hostname: \"*.example.com\"\n    path: ^/api/\n    service: https://api.internal\n  - service: http_status:404\n",
    );
    let g = good.as_str();
    let (code, out) = validate(g);
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
    let bad = config(
        dir.path(),
        "bad.yml",
        "ingress:\n  - hostname: a.example.com\n    service: http://x:1\n",
    );
    let (code, out) = validate(&bad);
    assert_eq!(code, 1);
    assert!(
        out.contains("The last ingress rule must match all URLs"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l == "OK"));
    let (code, out) = validate("/nonexistent.yml");
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
