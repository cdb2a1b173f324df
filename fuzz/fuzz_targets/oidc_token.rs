//! What an OpenID provider (or a browser, for tokens handed back) sends a
//! relying party: compact tokens, key sets and discovery documents.
//! Arbitrary bytes are an error or a value, never a panic; a token that
//! parses is checked against a key set read from the same bytes.
#![no_main]

use gatehouse_oidc::idtoken::{self, Expect};
use gatehouse_oidc::{Jwks, Metadata, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = Jwks::parse(data).unwrap_or_default();
    let _ = Metadata::parse(data, "https://idp.example");
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(t) = Token::parse(s)
    {
        let want = Expect {
            issuer: "https://idp.example",
            client_id: "gh",
            nonce: Some("n"),
            now: 1_700_000_000,
            leeway: 60,
        };
        let _ = idtoken::verify(&t, &keys, &want);
        let _ = idtoken::check(t.unverified_claims(), &want);
    }
});
