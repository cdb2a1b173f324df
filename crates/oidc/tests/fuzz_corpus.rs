//! Replays the committed fuzz corpus of `oidc_token` through the calls the
//! fuzz target makes, so every `cargo test` runs them: the corpus's good
//! token verifies against its key set, and everything else is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_oidc::idtoken::{self, Expect};
use gatehouse_oidc::{Jwks, Metadata, Token};
use std::path::Path;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/oidc_token");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn oidc_token_corpus() {
    let files = corpus();
    let keys = |name: &str| {
        let bytes = &files.iter().find(|(n, _)| n == name).unwrap().1;
        Jwks::parse(bytes).unwrap()
    };
    let rsa = keys("rs256-jwks");
    assert_eq!(rsa.keys.len(), 1);
    let want = Expect {
        issuer: "https://idp.example",
        client_id: "gh",
        nonce: Some("n1"),
        now: 1_700_000_100,
        leeway: 60,
    };
    let mut verified = Vec::new();
    for (name, bytes) in &files {
        let _ = Metadata::parse(bytes, "https://idp.example");
        if let Ok(s) = std::str::from_utf8(bytes)
            && let Ok(t) = Token::parse(s)
            && idtoken::verify(&t, &rsa, &want).is_ok()
        {
            verified.push(name.clone());
        }
    }
    assert_eq!(verified, ["rs256-token"]);
    assert!(
        Metadata::parse(
            &files.iter().find(|(n, _)| n == "discovery").unwrap().1,
            "https://idp.example"
        )
        .is_ok()
    );
    // The symmetric key is skipped; the two zero points stay as keys that
    // never verify anything (ring checks a point when it verifies).
    assert_eq!(keys("jwks-mixed").keys.len(), 2);
}
