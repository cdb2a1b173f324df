//! The OpenID Connect relying party pieces Gatehouse needs
//! (`docs/decisions/0034-oidc-sign-in.md`): the provider's discovery
//! document, its key set (JWKS), compact JWS tokens verified against it,
//! the checks on an ID token, PKCE, and tokens Gatehouse signs itself
//! (ES256) with the key set that lets others verify them.
//!
//! Everything but [`fetch`] is pure: bytes and times in, values or errors
//! out. Signatures are `ring`'s; `none` and HMAC algorithms are refused.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

pub mod discovery;
pub mod fetch;
pub mod idtoken;
pub mod jwk;
pub mod jwt;
pub mod pkce;
pub mod signer;

pub use discovery::Metadata;
pub use idtoken::{Expect, IdClaims};
pub use jwk::{Jwk, Jwks};
pub use jwt::Token;
pub use signer::Signer;

use base64::Engine as _;

/// Why a token, key set or document was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not what the format requires.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// JSON that does not parse or has the wrong shape.
    #[error("malformed {what}")]
    Json {
        /// What was being read.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A signature algorithm that is never accepted (`none`, `HS*`) or
    /// unknown.
    #[error("signature algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// No key of the set can verify the token.
    #[error("no key of the provider's key set matches the token (kid {0:?})")]
    NoKey(Option<String>),
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    Signature,
    /// A claim does not hold.
    #[error("{0}")]
    Claim(String),
    /// A random number could not be drawn, or signing failed.
    #[error("crypto failure: {what}")]
    Crypto {
        /// What failed.
        what: &'static str,
        /// ring's error.
        #[source]
        source: ring::error::Unspecified,
    },
    /// A stored signing key was refused.
    #[error("the signing key was refused")]
    Key(#[source] ring::error::KeyRejected),
}

/// Longest token accepted (ID tokens are a few KiB; a bound keeps a
/// hostile provider or client from making us decode megabytes).
pub const MAX_TOKEN: usize = 16 * 1024;

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn unb64(what: &'static str, s: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| Error::Malformed {
            what,
            why: format!("bad base64url: {e}"),
        })
}

/// A random URL-safe string carrying `bytes` random bytes (state, nonce,
/// PKCE verifier, cookie values).
pub fn random_token(bytes: usize) -> Result<String, Error> {
    use ring::rand::SecureRandom as _;
    let mut b = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|source| Error::Crypto {
            what: "no randomness",
            source,
        })?;
    Ok(b64(&b))
}
