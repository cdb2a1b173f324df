//! Replays the committed fuzz corpus of the path canonicaliser through the
//! same checks the fuzz target makes, so every `cargo test` runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_edge::path::canonicalize;
use std::path::Path;

#[test]
fn path_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/path");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let (mut ok, mut refused) = (0, 0);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        match canonicalize(text) {
            Ok(c) => {
                ok += 1;
                assert_eq!(
                    canonicalize(&c).as_deref(),
                    Ok(c.as_str()),
                    "{}",
                    f.display()
                );
            }
            Err(_) => refused += 1,
        }
    }
    assert!(ok > 0 && refused > 0);
}

/// The Access corpus: cookies, callback queries, return targets and tokens
/// are read without panicking, and no return target leaves the host.
#[test]
fn access_corpus() {
    use gatehouse_edge::access::core;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/access");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let Ok(s) = std::str::from_utf8(&bytes) else {
            continue;
        };
        n += 1;
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
            h.insert(http::header::COOKIE, v);
        }
        let _ = core::cookie(&h, core::SESSION_COOKIE);
        core::strip_cookies(&mut h);
        assert!(core::cookie(&h, core::SESSION_COOKIE).is_none());
        let t = core::local_target(Some(s));
        assert!(t.starts_with('/') && !t.starts_with("//"), "{t}");
        if let Some(g) = core::query_param(Some(s), "grant")
            && let Ok(tok) = gatehouse_oidc::Token::parse(&g)
        {
            let want = core::GrantCheck {
                issuer: "https://control.example",
                audience: "https://app.example",
                nonce: "n",
                now: 1_700_000_000,
            };
            assert!(core::verify_grant(&tok, &gatehouse_oidc::Jwks::default(), want).is_err());
        }
    }
    assert!(n >= 4);
}
