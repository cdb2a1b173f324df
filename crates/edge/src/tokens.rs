//! Tunnels and their tokens. A token is random (8-byte id, 32-byte secret);
//! the edge keeps only the SHA-256 of the secret, in a JSON file written
//! atomically with mode 0600. Revoking a tunnel refuses its token from then
//! on and closes its live connections.

use gatehouse_proto::Token;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Why a tunnel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    /// The file cannot be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a tunnel store.
    #[error("{path}: not a tunnel store")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A tunnel of that name exists.
    #[error("a tunnel named {0:?} already exists (revoke it first to reissue)")]
    Exists(String),
    /// No tunnel of that name.
    #[error("no tunnel named {0:?}")]
    Unknown(String),
    /// The name is not a DNS label (`gatehouse_names::is_label`).
    #[error(
        "tunnel names are DNS labels: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    BadName,
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token at all.
    #[error("malformed token")]
    Malformed(#[from] gatehouse_proto::TokenError),
    /// No tunnel has this id.
    #[error("unknown token id {0}")]
    UnknownId(String),
    /// The secret does not match.
    #[error("wrong secret for token id {0}")]
    WrongSecret(String),
    /// The tunnel was revoked.
    #[error("tunnel {0:?} is revoked")]
    Revoked(String),
    /// The token's lifetime is over.
    #[error("the token of tunnel {0:?} has expired")]
    Expired(String),
}

/// One stored tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelRecord {
    /// Tunnel name, referenced by the edge config's hostnames.
    pub name: String,
    /// Public token id.
    pub id: String,
    /// Hex SHA-256 of the token secret.
    pub secret_sha256: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Revoked tunnels keep their record so the history stays visible.
    #[serde(default)]
    pub revoked: bool,
    /// End of the token's lifetime, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
}

impl TunnelRecord {
    fn valid_at(&self, now_unix: u64) -> bool {
        !self.revoked && self.expires_unix.is_none_or(|e| now_unix < e)
    }
}

/// The tunnel store file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenStore {
    /// Every tunnel ever created, in creation order.
    pub tunnels: Vec<TunnelRecord>,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash(secret: &[u8]) -> String {
    hex::encode(Sha256::digest(secret))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenStore {
    /// Loads the store; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, TokenStoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| TokenStoreError::Parse {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(TokenStoreError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the store atomically (temporary file, then rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), TokenStoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| TokenStoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|source| TokenStoreError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Creates a tunnel; `id` and `secret` are random bytes the caller drew;
    /// `lifetime_secs` bounds the token's life. Returns the token, which is
    /// shown once and never stored.
    pub fn create(
        &mut self,
        name: &str,
        id: [u8; 8],
        secret: [u8; 32],
        now_unix: u64,
        lifetime_secs: Option<u64>,
    ) -> Result<Token, TokenStoreError> {
        if !gatehouse_names::is_label(name) {
            return Err(TokenStoreError::BadName);
        }
        if self
            .tunnels
            .iter()
            .any(|t| t.name == name && t.valid_at(now_unix))
        {
            return Err(TokenStoreError::Exists(name.to_owned()));
        }
        let token = Token::from_random(id, secret);
        self.tunnels.push(TunnelRecord {
            name: name.to_owned(),
            id: token.id.clone(),
            secret_sha256: hash(&token.secret),
            created_unix: now_unix,
            revoked: false,
            expires_unix: lifetime_secs.map(|l| now_unix.saturating_add(l)),
        });
        Ok(token)
    }

    /// Revokes every live record of a tunnel.
    pub fn revoke(&mut self, name: &str) -> Result<(), TokenStoreError> {
        let mut found = false;
        for t in self
            .tunnels
            .iter_mut()
            .filter(|t| t.name == name && !t.revoked)
        {
            t.revoked = true;
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(TokenStoreError::Unknown(name.to_owned()))
        }
    }

    /// Checks a presented token at `now_unix`; returns the tunnel's name.
    pub fn verify(&self, presented: &str, now_unix: u64) -> Result<String, AuthError> {
        let token = Token::parse(presented)?;
        let rec = self
            .tunnels
            .iter()
            .find(|t| t.id == token.id)
            .ok_or_else(|| AuthError::UnknownId(token.id.clone()))?;
        if !ct_eq(hash(&token.secret).as_bytes(), rec.secret_sha256.as_bytes()) {
            return Err(AuthError::WrongSecret(token.id));
        }
        if rec.revoked {
            return Err(AuthError::Revoked(rec.name.clone()));
        }
        if !rec.valid_at(now_unix) {
            return Err(AuthError::Expired(rec.name.clone()));
        }
        Ok(rec.name.clone())
    }

    /// Names of tunnels with a valid token at `now_unix`.
    pub fn active(&self, now_unix: u64) -> impl Iterator<Item = &str> {
        self.tunnels
            .iter()
            .filter(move |t| t.valid_at(now_unix))
            .map(|t| t.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnels.json");
        let mut s = TokenStore::load(&path).unwrap();
        let t = s.create("prod", [1; 8], [2; 32], 10, None).unwrap();
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&t.encode()[20..]),
            "the secret is not stored"
        );
        let s2 = TokenStore::load(&path).unwrap();
        assert_eq!(s2.verify(&t.encode(), 20).unwrap(), "prod");
        let wrong = Token::from_random([1; 8], [3; 32]).encode();
        assert_eq!(
            s2.verify(&wrong, 20),
            Err(AuthError::WrongSecret(t.id.clone()))
        );
        let unknown = Token::from_random([9; 8], [2; 32]).encode();
        assert!(matches!(
            s2.verify(&unknown, 20),
            Err(AuthError::UnknownId(_))
        ));
        assert!(matches!(
            s2.verify("nonsense", 20),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            s.create("prod", [4; 8], [5; 32], 11, None),
            Err(TokenStoreError::Exists(_))
        ));
        assert!(matches!(
            s.create("Bad Name", [4; 8], [5; 32], 11, None),
            Err(TokenStoreError::BadName)
        ));
        s.revoke("prod").unwrap();
        assert_eq!(
            s.verify(&t.encode(), 20),
            Err(AuthError::Revoked("prod".into()))
        );
        assert!(matches!(s.revoke("prod"), Err(TokenStoreError::Unknown(_))));
        // A token with a lifetime is refused once it is over.
        let short = s.create("short", [6; 8], [7; 32], 100, Some(50)).unwrap();
        assert_eq!(s.verify(&short.encode(), 149).unwrap(), "short");
        assert_eq!(
            s.verify(&short.encode(), 150),
            Err(AuthError::Expired("short".into()))
        );
        assert!(!s.active(150).any(|n| n == "short"));
        let again = s.create("prod", [4; 8], [5; 32], 12, None).unwrap();
        assert_eq!(s.verify(&again.encode(), 20).unwrap(), "prod");
    }
}
