//! Replays the committed fuzz corpus of the ingress reader
//! (`fuzz/corpus/ingress`) through the checks of the fuzz target, so every
//! `cargo test` runs them. `GATEHOUSE_WRITE_CORPUS=1` (re)writes the seeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_tunnel::fuzzing::ingress;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ingress")
}

const SEEDS: &[(&str, &str)] = &[
    (
        "rules.yaml",
        "tunnel: prod\noriginRequest:\n  connectTimeout: 10s\ningress:\n  - hostname: app.example.com\n    service: http://127.0.0.1:8080\n  - hostname: \"*.example.com\"\n    path: ^/api/\n    service: https://api.internal\n    originRequest: {noTLSVerify: true, httpHostHeader: api.internal}\n  - hostname: ssh.example.com\n    service: ssh://10.0.0.5\n  - service: http_status:404\n",
    ),
    (
        "special.yaml",
        "ingress:\n  - hostname: b.example.com\n    service: bastion\n  - hostname: s.example.com\n    service: socks-proxy\n    originRequest: {ipRules: [{prefix: 10.0.0.0/8, ports: [80], allow: yes}]}\n  - hostname: j.example.com\n    originRequest: {bastionMode: true}\n  - hostname: f.example.com\n    service: ftp://127.0.0.1\n  - hostname: u.example.com\n    service: unix+tls:/run/x.sock\n  - hostname: a.example.com\n    service: http://x\n    originRequest: {access: {required: true, teamName: t, audTag: [a]}}\n  - service: hello_world\n",
    ),
    (
        "idn.yaml",
        "ingress:\n  - hostname: môô.cloudflare.com\n    service: http_status:201\n  - hostname: \"*.bücher.example\"\n    service: http_status:202\n  - hostname: \"*example.com\"\n    service: http_status:203\n  - service: http_status:404\n",
    ),
    (
        "merge.yaml",
        "x: &o {noTLSVerify: on, connectTimeout: 1.5s}\ningress:\n  - service: http://x\n    originRequest:\n      <<: *o\n",
    ),
    (
        "bad-url.yaml",
        "ingress:\n  - hostname: a.example.com\n    service: \"https://local host:8000\"\n  - service: http_status:404\n",
    ),
    (
        "bad-wildcard.yaml",
        "ingress:\n  - hostname: a.*.com\n    service: http://x\n  - service: http_status:404\n",
    ),
    ("not-a-mapping.yaml", "- 1\n- 2\n"),
    ("url-http", "HTTP://u:p@Foo.Example:8080?a=1#f"),
    ("url-ipv6-zone", "http://[fe80::1%25eth0]:8080"),
    ("url-unicode", "https://b%C3%BCcher.example"),
    ("url-opaque", "mailto:x@example.com"),
    ("service-ssh", "ssh://[::1]"),
    ("service-ftp", "ftp://127.0.0.1"),
    ("service-status", "http_status:+404"),
    ("service-unix", "unix:/run/x.sock"),
    ("bad-escape", "http://b%41"),
    ("bad-port", "http://a:b:80"),
];

#[test]
fn ingress_corpus() {
    let dir = dir();
    if std::env::var_os("GATEHOUSE_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in SEEDS {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= SEEDS.len(), "{}", dir.display());
    let (mut rules, mut refused, mut services, mut urls) = (0, 0, 0, 0);
    for f in files {
        let out = ingress(&std::fs::read(&f).unwrap());
        if out.rules {
            rules += 1;
        } else {
            refused += 1;
        }
        services += usize::from(out.service);
        urls += usize::from(out.url);
    }
    assert!(rules > 0 && refused > 0 && services > 0 && urls > 0);
}
