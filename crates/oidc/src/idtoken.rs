//! The checks on an ID token (OpenID Connect Core §3.1.3.7), after its
//! signature has been verified.

use crate::{Error, Jwks, Token};
use serde_json::{Map, Value};

/// Clock skew tolerated between us and the provider, in seconds.
pub const LEEWAY: i64 = 60;

/// What a token must say to be accepted.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The provider's issuer identifier, exactly.
    pub issuer: &'a str,
    /// Our client id, which must be an audience.
    pub client_id: &'a str,
    /// The nonce of the flow, when the token must carry one.
    pub nonce: Option<&'a str>,
    /// Now, in seconds since the Unix epoch.
    pub now: i64,
    /// Tolerated clock skew in seconds.
    pub leeway: i64,
}

/// The verified claims of an ID token.
#[derive(Debug, Clone)]
pub struct IdClaims {
    /// Subject: the provider's stable id for the person.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Every claim, for the ones a deployment chooses (login, groups).
    pub all: Map<String, Value>,
}

impl IdClaims {
    /// A claim's value when it is a string.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.all.get(name).and_then(Value::as_str)
    }

    /// A claim's value when it is `true` (a boolean, or the string `"true"`
    /// some providers send).
    pub fn is_true(&self, name: &str) -> bool {
        match self.all.get(name) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        }
    }

    /// A claim's values as strings: a list of strings, or one string.
    /// Anything else gives nothing.
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.all.get(name) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn claim(s: String) -> Error {
    Error::Claim(s)
}

fn number(m: &Map<String, Value>, name: &str) -> Result<Option<i64>, Error> {
    match m.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| claim(format!("claim {name} is not a number"))),
    }
}

/// Verifies `token` with `keys` and checks its claims against `want`.
pub fn verify(token: &Token, keys: &Jwks, want: &Expect<'_>) -> Result<IdClaims, Error> {
    let m = token.verify(keys)?;
    check(m, want)
}

/// The claim checks alone, on claims whose signature was verified.
pub fn check(m: &Map<String, Value>, want: &Expect<'_>) -> Result<IdClaims, Error> {
    let iss = m.get("iss").and_then(Value::as_str).unwrap_or_default();
    if iss != want.issuer {
        return Err(claim(format!(
            "the token was issued by {iss:?}, not by {:?}",
            want.issuer
        )));
    }
    let aud: Vec<&str> = match m.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !aud.contains(&want.client_id) {
        return Err(claim(format!(
            "the token is not meant for this client (aud {aud:?})"
        )));
    }
    let azp = m.get("azp").and_then(Value::as_str);
    if (aud.len() > 1 || azp.is_some()) && azp != Some(want.client_id) {
        return Err(claim(format!(
            "the token was requested by another party (azp {azp:?})"
        )));
    }
    let exp = number(m, "exp")?.ok_or_else(|| claim("the token has no expiry".into()))?;
    if want.now >= exp.saturating_add(want.leeway) {
        return Err(claim(format!(
            "the token expired {} s ago",
            want.now.saturating_sub(exp)
        )));
    }
    let iat = number(m, "iat")?.ok_or_else(|| claim("the token has no issue time".into()))?;
    if iat > want.now.saturating_add(want.leeway) {
        return Err(claim(format!(
            "the token was issued {} s in the future (clock skew?)",
            iat.saturating_sub(want.now)
        )));
    }
    if let Some(nbf) = number(m, "nbf")?
        && nbf > want.now.saturating_add(want.leeway)
    {
        return Err(claim(format!(
            "the token is not valid for another {} s",
            nbf.saturating_sub(want.now)
        )));
    }
    if let Some(n) = want.nonce {
        let got = m.get("nonce").and_then(Value::as_str);
        if got != Some(n) {
            return Err(claim("the token's nonce is not this sign-in's".into()));
        }
    }
    let sub = m
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| claim("the token names no subject".into()))?;
    Ok(IdClaims {
        sub: sub.to_string(),
        exp,
        all: m.clone(),
    })
}
