//! What a browser or a client sends the edge's Access: cookies, the
//! callback's query, grants and session tokens, and a return target.
//! Arbitrary bytes are an error or a value, never a panic.
#![no_main]

use gatehouse_edge::access::core;
use gatehouse_oidc::{Jwks, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut h = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        h.insert(http::header::COOKIE, v.clone());
        h.insert(http::header::ACCEPT, v);
    }
    let _ = core::cookie(&h, core::SESSION_COOKIE);
    let _ = core::wants_html(&http::Method::GET, &h);
    core::strip_cookies(&mut h);
    let _ = core::local_target(Some(s));
    let grant = core::query_param(Some(s), "grant");
    let keys = Jwks::parse(data).unwrap_or_default();
    for text in [Some(s.to_owned()), grant].into_iter().flatten() {
        if let Ok(t) = Token::parse(&text) {
            let want = core::GrantCheck {
                issuer: "https://control.example",
                audience: "https://app.example",
                nonce: "n",
                now: 1_700_000_000,
            };
            let _ = core::verify_grant(&t, &keys, want);
            let _ = core::verify_session(&t, &keys, "https://app.example", 1_700_000_000);
        }
    }
});
