//! Proof Key for Code Exchange (RFC 7636), S256 only.

use crate::{Error, b64, random_token};

/// A verifier (kept by us) and its challenge (sent with the authorization
/// request).
#[derive(Debug, Clone)]
pub struct Pkce {
    /// The secret sent with the code exchange.
    pub verifier: String,
    /// `BASE64URL(SHA256(verifier))`.
    pub challenge: String,
}

/// The S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

impl Pkce {
    /// A fresh verifier of 43 characters (32 random bytes).
    pub fn new() -> Result<Pkce, Error> {
        let verifier = random_token(32)?;
        let challenge = challenge(&verifier);
        Ok(Pkce {
            verifier,
            challenge,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(
            super::challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
