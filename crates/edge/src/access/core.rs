//! The pure half of Access: grants and sessions checked against key sets
//! and a clock given by the caller, cookies and redirect targets read from
//! untrusted bytes. No I/O here.

use gatehouse_oidc::{Jwks, Token};
use http::HeaderMap;
use serde_json::{Map, Value};

/// The edge's session cookie.
pub const SESSION_COOKIE: &str = "__Host-gatehouse-access";
/// The cookie holding the nonce of a sign-in in progress.
pub const NONCE_COOKIE: &str = "__Host-gatehouse-access-nonce";
/// How long a sign-in may take (the nonce cookie's lifetime), seconds.
pub const NONCE_LIFETIME: u64 = 600;
/// Clock skew tolerated on grants, seconds.
pub const SKEW: u64 = 60;
/// The header carrying the signed assertion to the origin.
pub const ASSERTION_HEADER: &str = "gatehouse-access-jwt-assertion";
/// A service token's id.
pub const CLIENT_ID_HEADER: &str = "gatehouse-access-client-id";
/// A service token's secret.
pub const CLIENT_SECRET_HEADER: &str = "gatehouse-access-client-secret";
/// Paths the edge answers itself on every hostname when Access is on.
pub const PREFIX: &str = "/.gatehouse/access/";

/// Why a grant or session is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The token does not parse or its signature does not verify.
    #[error("the token is not valid")]
    Token(#[source] gatehouse_oidc::Error),
    /// An algorithm other than ES256.
    #[error("the token is signed with {0:?}; only ES256 is accepted")]
    Algorithm(String),
    /// A claim does not hold.
    #[error("{0}")]
    Claim(&'static str),
}

/// A signed-in person, as a grant or a session names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The login.
    pub sub: String,
    /// The e-mail address.
    pub email: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Display name.
    pub name: Option<String>,
}

/// A verified grant from control.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who signed in.
    pub person: Person,
    /// The path to return to, as control passed it on (not yet checked).
    pub rd: Option<String>,
    /// The grant's id (single use).
    pub jti: String,
    /// Its expiry (unix seconds).
    pub exp: u64,
}

/// A verified session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub person: Person,
    /// Its audience (`https://<hostname>`).
    pub aud: String,
    /// Its expiry (unix seconds).
    pub exp: u64,
}

/// What a grant must say.
#[derive(Debug, Clone, Copy)]
pub struct GrantCheck<'a> {
    /// Control's URL.
    pub issuer: &'a str,
    /// `https://<hostname>`.
    pub audience: &'a str,
    /// The browser's nonce cookie.
    pub nonce: &'a str,
    /// Unix seconds.
    pub now: u64,
}

fn str_claim<'a>(c: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    c.get(name).and_then(Value::as_str)
}

fn time_claim(c: &Map<String, Value>, name: &str) -> Result<Option<u64>, Refusal> {
    match c.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or(Refusal::Claim("a time claim is not a whole number")),
    }
}

fn aud_holds(c: &Map<String, Value>, audience: &str) -> bool {
    match c.get("aud") {
        Some(Value::String(s)) => s == audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    }
}

fn person(c: &Map<String, Value>) -> Result<Person, Refusal> {
    let sub = str_claim(c, "sub")
        .filter(|s| !s.is_empty())
        .ok_or(Refusal::Claim("the token names nobody (sub)"))?;
    let groups = match c.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(Refusal::Claim("groups is not a list of strings"))?,
        Some(_) => return Err(Refusal::Claim("groups is not a list of strings")),
    };
    Ok(Person {
        sub: sub.to_owned(),
        email: str_claim(c, "email").map(str::to_owned),
        groups,
        name: str_claim(c, "name").map(str::to_owned),
    })
}

/// Parses and verifies an ES256 token's signature with `keys`.
fn verified<'t>(token: &'t Token, keys: &Jwks) -> Result<&'t Map<String, Value>, Refusal> {
    if token.header.alg != "ES256" {
        return Err(Refusal::Algorithm(token.header.alg.clone()));
    }
    token.verify(keys).map_err(Refusal::Token)
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a grant of control: its signature (ES256, a key of `keys`),
/// `iss`, `aud`, `exp` and `iat` (with [`SKEW`]), `nonce`, and that it has a
/// `jti` and names somebody. Single use is the caller's business.
pub fn verify_grant(token: &Token, keys: &Jwks, want: GrantCheck<'_>) -> Result<Grant, Refusal> {
    let c = verified(token, keys)?;
    if str_claim(c, "iss").map(|i| i.trim_end_matches('/')) != Some(want.issuer) {
        return Err(Refusal::Claim(
            "the grant is not from this edge's control (iss)",
        ));
    }
    if !aud_holds(c, want.audience) {
        return Err(Refusal::Claim("the grant is for another hostname (aud)"));
    }
    let exp = time_claim(c, "exp")?.ok_or(Refusal::Claim("the grant has no expiry"))?;
    if want.now > exp.saturating_add(SKEW) {
        return Err(Refusal::Claim("the grant has expired"));
    }
    for name in ["iat", "nbf"] {
        if time_claim(c, name)?.is_some_and(|t| t > want.now.saturating_add(SKEW)) {
            return Err(Refusal::Claim("the grant is not valid yet"));
        }
    }
    let nonce = str_claim(c, "nonce").unwrap_or("");
    if want.nonce.is_empty() || !same(nonce.as_bytes(), want.nonce.as_bytes()) {
        return Err(Refusal::Claim(
            "the grant was not asked for by this browser (nonce)",
        ));
    }
    let jti = str_claim(c, "jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(Refusal::Claim("the grant has no id (jti)"))?;
    Ok(Grant {
        person: person(c)?,
        rd: str_claim(c, "rd").map(str::to_owned),
        jti: jti.to_owned(),
        exp,
    })
}

/// Checks a session the edge signed: signature with the edge's own key,
/// `iss` and `aud` equal to `audience`, and not expired at `now`.
pub fn verify_session(
    token: &Token,
    keys: &Jwks,
    audience: &str,
    now: u64,
) -> Result<Session, Refusal> {
    let c = verified(token, keys)?;
    if str_claim(c, "iss") != Some(audience) || !aud_holds(c, audience) {
        return Err(Refusal::Claim("the session is for another hostname"));
    }
    let exp = time_claim(c, "exp")?.ok_or(Refusal::Claim("the session has no expiry"))?;
    if now >= exp {
        return Err(Refusal::Claim("the session has expired"));
    }
    Ok(Session {
        person: person(c)?,
        aud: audience.to_owned(),
        exp,
    })
}

/// The claims of a session for `person` on `audience`.
pub fn session_claims(
    person: &Person,
    audience: &str,
    now: u64,
    lifetime: u64,
) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("iss".into(), audience.into());
    c.insert("aud".into(), audience.into());
    c.insert("sub".into(), person.sub.clone().into());
    if let Some(e) = &person.email {
        c.insert("email".into(), e.clone().into());
    }
    if !person.groups.is_empty() {
        c.insert("groups".into(), person.groups.clone().into());
    }
    if let Some(n) = &person.name {
        c.insert("name".into(), n.clone().into());
    }
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), now.saturating_add(lifetime).into());
    c
}

/// The claims of the assertion naming a service token.
pub fn service_token_claims(
    id: &str,
    audience: &str,
    now: u64,
    lifetime: u64,
) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("iss".into(), audience.into());
    c.insert("aud".into(), audience.into());
    c.insert("sub".into(), id.into());
    c.insert("service_token".into(), id.into());
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), now.saturating_add(lifetime).into());
    c
}

/// The value of cookie `name` in the request's `Cookie` fields (the first
/// one, when several carry it).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Removes the edge's own cookies from the request: the origin never sees
/// a session. A `Cookie` field left empty is dropped.
pub fn strip_cookies(headers: &mut HeaderMap) {
    let ours = |pair: &str| {
        let n = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        n == SESSION_COOKIE || n == NONCE_COOKIE
    };
    let values: Vec<http::HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .cloned()
        .collect();
    if !values.iter().any(|v| {
        v.as_bytes()
            .windows(SESSION_COOKIE.len())
            .any(|w| w == SESSION_COOKIE.as_bytes())
    }) {
        return;
    }
    headers.remove(http::header::COOKIE);
    for v in values {
        let Ok(text) = v.to_str() else {
            // Not text: it cannot be one of ours; keep it as it came.
            headers.append(http::header::COOKIE, v);
            continue;
        };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty() && !ours(p))
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(nv) = http::HeaderValue::from_str(&kept.join("; ")) {
            headers.append(http::header::COOKIE, nv);
        }
    }
}

/// `rd` when it is a path on this host (one leading `/`, not `//` or
/// `/\`, no control characters); `/` otherwise.
pub fn local_target(rd: Option<&str>) -> &str {
    match rd {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            p
        }
        _ => "/",
    }
}

/// Whether the client is a browser that can follow a sign-in: `GET` or
/// `HEAD` accepting `text/html`.
pub fn wants_html(method: &http::Method, headers: &HeaderMap) -> bool {
    (method == http::Method::GET || method == http::Method::HEAD)
        && headers.get_all(http::header::ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
        })
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Characters kept raw in a query value: RFC 3986 unreserved.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where a browser goes to sign in.
pub fn login_url(control: &str, host: &str, nonce: &str, rd: &str) -> String {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string();
    format!(
        "{control}/access/login?host={}&nonce={}&rd={}",
        enc(host),
        enc(nonce),
        enc(rd)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_oidc::Signer;
    use serde_json::json;

    const AUD: &str = "https://app.test";
    const ISS: &str = "https://control.test";

    fn grant_claims(now: u64) -> Map<String, Value> {
        let v = json!({"iss": ISS, "aud": AUD, "sub": "alice@corp.test", "email": "alice@corp.test",
            "groups": ["ops"], "nonce": "n1", "rd": "/x?y=1", "iat": now, "exp": now + 120, "jti": "j1"});
        v.as_object().cloned().unwrap()
    }

    fn check(
        s: &Signer,
        keys: &Jwks,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<Grant, Refusal> {
        let t = Token::parse(&s.sign(claims).unwrap()).unwrap();
        verify_grant(
            &t,
            keys,
            GrantCheck {
                issuer: ISS,
                audience: AUD,
                nonce: "n1",
                now,
            },
        )
    }

    #[test]
    fn grants_are_checked_strictly() {
        let s = Signer::generate().unwrap();
        let keys = s.jwks().unwrap();
        let now = 1_700_000_000;
        let g = check(&s, &keys, &grant_claims(now), now).unwrap();
        assert_eq!(g.person.sub, "alice@corp.test");
        assert_eq!(g.person.groups, ["ops"]);
        assert_eq!(g.rd.as_deref(), Some("/x?y=1"));
        assert!(check(&s, &keys, &grant_claims(now), now + 120 + SKEW).is_ok());
        let e = check(&s, &keys, &grant_claims(now), now + 121 + SKEW).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        for (k, v, says) in [
            ("iss", json!("https://other.test"), "iss"),
            ("aud", json!("https://other.test"), "aud"),
            ("aud", json!(["https://other.test"]), "aud"),
            ("nonce", json!("n2"), "nonce"),
            ("nonce", json!(null), "nonce"),
            ("jti", json!(""), "jti"),
            ("sub", json!(""), "sub"),
            ("groups", json!("ops"), "groups"),
            ("exp", json!(-1), "whole number"),
            ("iat", json!(now + 3600), "not valid yet"),
        ] {
            let mut c = grant_claims(now);
            c.insert(k.into(), v);
            let e = check(&s, &keys, &c, now).unwrap_err();
            assert!(e.to_string().contains(says), "{k}: {e}");
        }
        let other = Signer::generate().unwrap();
        let e = check(&other, &keys, &grant_claims(now), now).unwrap_err();
        assert!(matches!(e, Refusal::Token(_)), "{e}");
        // An empty nonce cookie matches nothing, not even an empty claim.
        let mut c = grant_claims(now);
        c.insert("nonce".into(), json!(""));
        let t = Token::parse(&s.sign(&c).unwrap()).unwrap();
        assert!(
            verify_grant(
                &t,
                &keys,
                GrantCheck {
                    issuer: ISS,
                    audience: AUD,
                    nonce: "",
                    now
                }
            )
            .is_err()
        );
    }

    #[test]
    fn sessions_are_bound_to_their_hostname() {
        let s = Signer::generate().unwrap();
        let keys = s.jwks().unwrap();
        let p = Person {
            sub: "a".into(),
            email: Some("a@b.test".into()),
            groups: vec![],
            name: None,
        };
        let t = Token::parse(&s.sign(&session_claims(&p, AUD, 100, 50)).unwrap()).unwrap();
        let got = verify_session(&t, &keys, AUD, 149).unwrap();
        assert_eq!(got.person, p);
        assert!(verify_session(&t, &keys, AUD, 150).is_err());
        assert!(verify_session(&t, &keys, "https://other.test", 120).is_err());
    }

    #[test]
    fn cookies_targets_and_urls() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; __Host-gatehouse-access=s1; b=2".parse().unwrap(),
        );
        h.append(
            http::header::COOKIE,
            "__Host-gatehouse-access-nonce=n".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("s1"));
        assert_eq!(cookie(&h, NONCE_COOKIE), Some("n"));
        assert_eq!(cookie(&h, "c"), None);
        strip_cookies(&mut h);
        let left: Vec<_> = h.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2"]);
        for (rd, want) in [
            (Some("/a?b=1"), "/a?b=1"),
            (Some("//evil.test/"), "/"),
            (Some("/\\evil.test/"), "/"),
            (Some("https://evil.test/"), "/"),
            (Some("/a\r\nSet-Cookie: x"), "/"),
            (Some(""), "/"),
            (None, "/"),
        ] {
            assert_eq!(local_target(rd), want, "{rd:?}");
        }
        assert_eq!(
            login_url(ISS, "app.test", "n", "/a?b=1&c"),
            "https://control.test/access/login?host=app.test&nonce=n&rd=%2Fa%3Fb%3D1%26c"
        );
        assert_eq!(
            query_param(Some("x=1&grant=a%2Eb"), "grant").as_deref(),
            Some("a.b")
        );
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, "text/HTML,*/*".parse().unwrap());
        assert!(wants_html(&http::Method::GET, &h));
        assert!(!wants_html(&http::Method::POST, &h));
        assert!(!wants_html(&http::Method::GET, &HeaderMap::new()));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
