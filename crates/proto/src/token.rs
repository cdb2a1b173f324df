//! Tunnel tokens: `gh1.<id>.<secret>`, an 8-byte id in hex and a 32-byte
//! secret in unpadded base64url. The edge stores only a hash of the secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "gh1";

/// A parsed tunnel token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Public identifier (16 lowercase hex digits).
    pub id: String,
    /// The secret bytes.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three dot-separated parts starting with `gh1`.
    #[error("a token has the form gh1.<id>.<secret>")]
    Shape,
    /// The id is not 16 lowercase hex digits.
    #[error("the token id is not 16 hex digits")]
    Id,
    /// The secret is not 32 bytes of base64url.
    #[error("the token secret is not 32 bytes of base64url")]
    Secret,
}

impl Token {
    /// Builds a token from random bytes the caller drew.
    pub fn from_random(id: [u8; 8], secret: [u8; 32]) -> Self {
        Self {
            id: hex::encode(id),
            secret,
        }
    }

    /// Parses `gh1.<id>.<secret>`.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Shape);
        };
        if id.len() != 16
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TokenError::Id);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| TokenError::Secret)?;
        let secret: [u8; 32] = bytes.try_into().map_err(|_| TokenError::Secret)?;
        Ok(Self {
            id: id.to_owned(),
            secret,
        })
    }

    /// The printable form.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}.{}.{}",
            self.id,
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = Token::from_random([1, 2, 3, 4, 5, 6, 7, 8], [9; 32]);
        let s = t.encode();
        assert_eq!(Token::parse(&s).unwrap(), t);
        assert_eq!(Token::parse("x.y"), Err(TokenError::Shape));
        assert_eq!(
            Token::parse(&s.replace("gh1", "gh2")),
            Err(TokenError::Shape)
        );
        assert_eq!(Token::parse("gh1.0102.AAAA"), Err(TokenError::Id));
        assert_eq!(
            Token::parse("gh1.0102030405060708.AAAA"),
            Err(TokenError::Secret)
        );
        assert!(
            !format!("{t:?}").contains("CQkJ"),
            "debug output must not show the secret"
        );
    }
}
