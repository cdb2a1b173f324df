//! Credentials: random secrets shown once, stored as SHA-256, compared in
//! constant time. Format: `gh-<kind>-<id>-<secret>`, where `id` (12 hex
//! digits) is public and indexes the row, and `secret` (64 hex digits,
//! 256 bits) is never stored.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// What a credential is for; its name is part of the credential text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Pre-auth key.
    AuthKey,
    /// OAuth client secret.
    OAuth,
    /// OAuth access token.
    Token,
    /// Admin token.
    Admin,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AuthKey => "authkey",
            Kind::OAuth => "oauth",
            Kind::Token => "token",
            Kind::Admin => "admin",
        }
    }
}

/// A freshly minted credential: the text to show once, and what to store.
#[derive(Debug, Clone)]
pub struct Minted {
    /// Public id.
    pub id: String,
    /// The whole credential (shown once).
    pub text: String,
    /// SHA-256 of the secret part, hex.
    pub hash: String,
}

/// `bytes` random bytes, hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Mints a new credential of a kind.
pub fn mint(kind: Kind) -> Minted {
    let id = random_hex(6);
    let secret = random_hex(32);
    Minted {
        text: format!("gh-{}-{id}-{secret}", kind.name()),
        hash: hash(&secret),
        id,
    }
}

/// SHA-256 of a secret, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits a credential of the expected kind into `(id, secret)`.
pub fn parse(kind: Kind, text: &str) -> Option<(&str, &str)> {
    let rest = text
        .strip_prefix("gh-")?
        .strip_prefix(kind.name())?
        .strip_prefix('-')?;
    let (id, secret) = rest.split_once('-')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, 12) && hexish(secret, 64)).then_some((id, secret))
}

/// Whether `secret` hashes to `stored`, in constant time.
pub fn verify(secret: &str, stored: &str) -> bool {
    let h = hash(secret);
    let (a, b) = (h.as_bytes(), stored.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_parse_verify() {
        let m = mint(Kind::AuthKey);
        let (id, secret) = parse(Kind::AuthKey, &m.text).unwrap();
        assert_eq!(id, m.id);
        assert!(verify(secret, &m.hash));
        assert!(!verify(secret, &hash("other")));
        assert!(parse(Kind::OAuth, &m.text).is_none());
        assert!(parse(Kind::AuthKey, "gh-authkey-zz-yy").is_none());
        assert!(!m.text.contains(&m.hash));
        assert_ne!(mint(Kind::AuthKey).text, m.text);
    }
}
