//! Tokens signed by our own ES256 signer and by an RSA key made with
//! `openssl` (the fixture), verified and refused as a relying party must.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use gatehouse_oidc::idtoken::{self, Expect, LEEWAY};
use gatehouse_oidc::{Error, Jwks, Signer, Token};
use serde_json::{Map, Value, json};

const ISS: &str = "https://idp.example";
const NOW: i64 = 1_700_000_100;

fn claims(extra: Value) -> Map<String, Value> {
    let mut m = json!({
        "iss": ISS, "aud": "gh", "sub": "u1", "iat": NOW - 10, "exp": NOW + 3600,
        "nonce": "n1", "email": "alice@example.com", "email_verified": true,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if v.is_null() {
            m.as_object_mut().unwrap().remove(&k);
        } else {
            m[k] = v;
        }
    }
    m.as_object().unwrap().clone()
}

fn want(nonce: Option<&str>) -> Expect<'_> {
    Expect {
        issuer: ISS,
        client_id: "gh",
        nonce,
        now: NOW,
        leeway: LEEWAY,
    }
}

fn check(tok: &str, keys: &Jwks) -> Result<idtoken::IdClaims, Error> {
    idtoken::verify(&Token::parse(tok)?, keys, &want(Some("n1")))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn a_signed_token_verifies_and_its_claims_are_read() {
    let s = Signer::generate().unwrap();
    let keys = s.jwks().unwrap();
    let c = check(
        &s.sign(&claims(json!({"groups": ["ops", "dev"]}))).unwrap(),
        &keys,
    )
    .unwrap();
    assert_eq!(c.sub, "u1");
    assert_eq!(c.string("email"), Some("alice@example.com"));
    assert!(c.is_true("email_verified"));
    assert_eq!(c.strings("groups"), ["ops", "dev"]);
    // A stored key signs the same way and keeps its id.
    let again = Signer::from_pkcs8(s.pkcs8()).unwrap();
    assert_eq!(again.kid(), s.kid());
    check(&again.sign(&claims(json!({}))).unwrap(), &keys).unwrap();
}

#[test]
fn rs256_from_openssl_verifies() {
    let f: Value =
        serde_json::from_str(include_str!("fixtures/rs256.json")).expect("fixture parses");
    let keys = Jwks::parse(f["jwks"].to_string().as_bytes()).unwrap();
    let tok = Token::parse(f["token"].as_str().unwrap()).unwrap();
    let w = Expect {
        now: 1_700_000_100,
        ..want(Some("n1"))
    };
    let c = idtoken::verify(&tok, &keys, &w).unwrap();
    assert_eq!(c.string("email"), Some("alice@example.com"));
    // One changed bit of the payload and it no longer verifies.
    let t = f["token"].as_str().unwrap();
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    let mut payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&parts[1])
        .unwrap();
    let at = payload.iter().position(|b| *b == b'a').unwrap();
    payload[at] = b'b';
    parts[1] = b64(&payload);
    let forged = Token::parse(&parts.join(".")).unwrap();
    assert!(matches!(
        idtoken::verify(&forged, &keys, &w),
        Err(Error::Signature)
    ));
}

#[test]
fn forged_and_foreign_tokens_are_refused() {
    let s = Signer::generate().unwrap();
    let keys = s.jwks().unwrap();
    let other = Signer::generate().unwrap();
    let good = s.sign(&claims(json!({}))).unwrap();

    // Signed by a key that is not the provider's (it names its own kid).
    let e = check(&other.sign(&claims(json!({}))).unwrap(), &keys).unwrap_err();
    assert!(matches!(e, Error::NoKey(_)), "{e}");
    // The provider's kid on a token signed by another key.
    let mut parts: Vec<&str> = good.split('.').collect();
    let o = other.sign(&claims(json!({}))).unwrap();
    let osig = o.rsplit('.').next().unwrap();
    parts[2] = osig;
    assert!(matches!(
        check(&parts.join("."), &keys),
        Err(Error::Signature)
    ));
    // alg none, with and without a signature; HMAC with any secret.
    let p = good.split('.').nth(1).unwrap();
    for alg in ["none", "None", "HS256", "HS512", "XS256"] {
        let h = b64(json!({"alg": alg, "kid": s.kid()}).to_string().as_bytes());
        for sig in ["", "AAAA"] {
            let e = Token::parse(&format!("{h}.{p}.{sig}")).unwrap_err();
            assert!(matches!(e, Error::Algorithm(_)), "{alg}: {e}");
        }
    }
    // A header with critical extensions, wrong shapes, oversized tokens.
    let h = b64(json!({"alg": "ES256", "crit": ["exp"]})
        .to_string()
        .as_bytes());
    assert!(Token::parse(&format!("{h}.{p}.AAAA")).is_err());
    for bad in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", &"a".repeat(20_000)] {
        assert!(Token::parse(bad).is_err(), "{bad:.20}");
    }
}

#[test]
fn claims_that_do_not_hold_are_refused_with_a_reason() {
    let s = Signer::generate().unwrap();
    let keys = s.jwks().unwrap();
    let cases = [
        (json!({"iss": "https://evil.example"}), "issued by"),
        (json!({"iss": null}), "issued by"),
        (json!({"aud": "someone-else"}), "not meant for this client"),
        (json!({"aud": ["gh", "other"]}), "another party"),
        (
            json!({"aud": ["gh", "other"], "azp": "other"}),
            "another party",
        ),
        (json!({"exp": NOW - LEEWAY - 1}), "expired"),
        (json!({"exp": null}), "no expiry"),
        (json!({"exp": "soon"}), "not a number"),
        (json!({"iat": NOW + LEEWAY + 5}), "in the future"),
        (json!({"nbf": NOW + LEEWAY + 5}), "not valid for another"),
        (json!({"nonce": "n2"}), "nonce"),
        (json!({"nonce": null}), "nonce"),
        (json!({"sub": ""}), "no subject"),
    ];
    for (extra, why) in cases {
        let e = check(&s.sign(&claims(extra.clone())).unwrap(), &keys).unwrap_err();
        assert!(e.to_string().contains(why), "{extra}: {e}");
    }
    // Within the tolerated skew both ways, and several audiences with our azp.
    for extra in [
        json!({"exp": NOW - LEEWAY + 1}),
        json!({"iat": NOW + LEEWAY - 1, "nbf": NOW + LEEWAY - 1}),
        json!({"aud": ["gh", "other"], "azp": "gh"}),
    ] {
        check(&s.sign(&claims(extra.clone())).unwrap(), &keys)
            .unwrap_or_else(|e| panic!("{extra}: {e}"));
    }
}

#[test]
fn key_sets_skip_what_they_cannot_use_and_refuse_broken_keys() {
    let s = Signer::generate().unwrap();
    let mut doc = s.jwks_document();
    doc["keys"].as_array_mut().unwrap().extend([
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
        json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
        json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}),
        json!({"kty": 7}),
    ]);
    let keys = Jwks::parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(keys.keys.len(), 1);
    assert!(keys.has_kid(s.kid()));
    for broken in [
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]}),
        json!({"keys": [{"kty": "RSA", "n": "", "e": "AQAB"}]}),
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "***"}]}),
        json!({"keys": "none"}),
        json!([]),
    ] {
        assert!(
            Jwks::parse(broken.to_string().as_bytes()).is_err(),
            "{broken}"
        );
    }
}

#[test]
fn discovery_documents_must_belong_to_the_issuer() {
    use gatehouse_oidc::Metadata;
    let doc = |iss: &str, extra: Value| {
        let mut d = json!({
            "issuer": iss,
            "authorization_endpoint": "https://idp.example/auth",
            "token_endpoint": "https://idp.example/token",
            "jwks_uri": "https://idp.example/jwks",
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            d[k] = v;
        }
        d.to_string()
    };
    let m = Metadata::parse(doc(ISS, json!({})).as_bytes(), ISS).unwrap();
    let url = m.authorize_url(&gatehouse_oidc::discovery::AuthorizeParams {
        client_id: "gh",
        redirect_uri: "https://control.example/oidc/callback",
        scope: "openid email",
        state: "s",
        nonce: "n",
        code_challenge: "c",
    });
    assert!(url.starts_with("https://idp.example/auth?response_type=code&client_id=gh&redirect_uri=https%3A%2F%2Fcontrol%2Eexample%2Foidc%2Fcallback&scope=openid%20email&"));
    assert!(url.ends_with("&code_challenge_method=S256"));
    for (iss, extra) in [
        ("https://evil.example", json!({})),
        (ISS, json!({"token_endpoint": "http://idp.example/token"})),
        (ISS, json!({"code_challenge_methods_supported": ["plain"]})),
        (ISS, json!({"jwks_uri": 5})),
    ] {
        assert!(
            Metadata::parse(doc(iss, extra.clone()).as_bytes(), ISS).is_err(),
            "{iss} {extra}"
        );
    }
}
