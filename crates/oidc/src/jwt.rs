//! Compact JWS tokens (RFC 7515 §7.1): `header.payload.signature`, each
//! part base64url without padding. Parsing checks only the shape; a
//! token's claims mean nothing until [`Token::verify`] has checked its
//! signature against a key set.

use crate::{Error, Jwks, MAX_TOKEN, unb64};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The header fields that matter to a verifier.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    /// Signature algorithm.
    pub alg: String,
    /// Key id, naming a key of the signer's key set.
    #[serde(default)]
    pub kid: Option<String>,
    /// Media type (`JWT`), when given.
    #[serde(default)]
    pub typ: Option<String>,
    /// Critical extensions: any at all makes the token unusable to us.
    #[serde(default)]
    pub crit: Option<Value>,
}

/// A parsed, not yet verified token.
#[derive(Debug, Clone)]
pub struct Token {
    /// The header.
    pub header: Header,
    claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

/// Signature algorithms accepted from a provider.
pub const ACCEPTED: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl Token {
    /// Reads a compact token. Refuses a wrong shape, an oversized token,
    /// `none` and HMAC algorithms, critical extensions, and a payload that
    /// is not a JSON object.
    pub fn parse(s: &str) -> Result<Token, Error> {
        let bad = |why: &str| Error::Malformed {
            what: "token",
            why: why.to_string(),
        };
        if s.len() > MAX_TOKEN {
            return Err(bad("too long"));
        }
        let mut parts = s.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three dot-separated parts"));
        };
        let header: Header =
            serde_json::from_slice(&unb64("token header", h)?).map_err(|source| Error::Json {
                what: "token header",
                source,
            })?;
        if !ACCEPTED.contains(&header.alg.as_str()) {
            return Err(Error::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(bad("critical header extensions are not supported"));
        }
        let claims: Map<String, Value> = serde_json::from_slice(&unb64("token payload", p)?)
            .map_err(|source| Error::Json {
                what: "token payload",
                source,
            })?;
        let signature = unb64("token signature", sig)?;
        if signature.is_empty() {
            return Err(bad("empty signature"));
        }
        Ok(Token {
            header,
            claims,
            signing_input: format!("{h}.{p}"),
            signature,
        })
    }

    /// Checks the signature with the key the header names (or, without a
    /// `kid`, any key of the set for the algorithm) and returns the claims.
    pub fn verify(&self, keys: &Jwks) -> Result<&Map<String, Value>, Error> {
        keys.verify(
            &self.header.alg,
            self.header.kid.as_deref(),
            self.signing_input.as_bytes(),
            &self.signature,
        )?;
        Ok(&self.claims)
    }

    /// The claims, unverified: only for choosing what to verify with (for
    /// example the issuer of a token before its keys are fetched).
    pub fn unverified_claims(&self) -> &Map<String, Value> {
        &self.claims
    }
}
