//! The Curve25519 keys of the wire: a node's public key (its WireGuard key,
//! the address of a relay client) and disco keys (the per-node key pair that
//! seals disco messages, separate from the WireGuard key).

use base64::Engine as _;
use crypto_box::SalsaBox;
use crypto_box::aead::Aead;
use std::fmt;
use std::str::FromStr;

/// A key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 32 bytes in hex (with or without its `nodekey:`/`discokey:`
    /// prefix) or base64.
    #[error("invalid key {0:?}: expected 32 bytes as 64 hex digits or base64")]
    Malformed(String),
}

fn parse32(s: &str, prefix: &str) -> Result<[u8; 32], KeyError> {
    let bad = || KeyError::Malformed(s.chars().take(80).collect());
    let t = s.trim();
    let hex_part = t.strip_prefix(prefix).unwrap_or(t);
    let mut out = [0u8; 32];
    if hex_part.len() == 64 && hex::decode_to_slice(hex_part, &mut out).is_ok() {
        return Ok(out);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|_| bad())?;
    raw.try_into().map_err(|_| bad())
}

/// A node's public key: its WireGuard key, and its address on a relay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePublicKey(pub [u8; 32]);

impl NodePublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Tailscale's text form, `nodekey:<64 hex digits>`.
    pub fn to_nodekey_string(self) -> String {
        format!("nodekey:{}", hex::encode(self.0))
    }

    /// Base64, as Gatehouse's control API shows WireGuard keys.
    pub fn to_base64(self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl FromStr for NodePublicKey {
    type Err = KeyError;
    /// Accepts `nodekey:<hex>`, bare hex, or base64.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse32(s, "nodekey:").map(Self)
    }
}

impl fmt::Display for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePublicKey({})", self.to_base64())
    }
}

/// A disco public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiscoPublicKey(pub [u8; 32]);

impl DiscoPublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for DiscoPublicKey {
    type Err = KeyError;
    /// Accepts `discokey:<hex>`, bare hex, or base64.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse32(s, "discokey:").map(Self)
    }
}

impl fmt::Display for DiscoPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "discokey:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for DiscoPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiscoPublicKey({self})")
    }
}

/// A disco private key. Never printed.
#[derive(Clone)]
pub struct DiscoPrivateKey(crypto_box::SecretKey);

impl DiscoPrivateKey {
    /// A new random key from the OS's generator.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        Self::from_bytes(b)
    }

    /// The key with these bytes (clamped as X25519 does).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(crypto_box::SecretKey::from(bytes))
    }

    /// The raw bytes (to store the key).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Its public key.
    pub fn public(&self) -> DiscoPublicKey {
        DiscoPublicKey(*self.0.public_key().as_bytes())
    }

    /// The shared key with `peer`: what seals and opens every disco message
    /// between the two (NaCl's precomputed box key). Compute it once per
    /// peer; it costs a Curve25519 multiplication.
    pub fn shared(&self, peer: &DiscoPublicKey) -> DiscoShared {
        let peer_pub = crypto_box::PublicKey::from(peer.0);
        DiscoShared(SalsaBox::new(&peer_pub, &self.0))
    }
}

impl fmt::Debug for DiscoPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiscoPrivateKey(public {})", self.public())
    }
}

/// The precomputed box key between two disco keys.
pub struct DiscoShared(SalsaBox);

impl DiscoShared {
    /// `tag || ciphertext` of `plain` under `nonce`.
    pub(crate) fn seal(&self, nonce: &[u8; 24], plain: &[u8]) -> Vec<u8> {
        // Encryption with an in-memory buffer cannot fail.
        self.0
            .encrypt(nonce.into(), plain)
            .unwrap_or_else(|_| Vec::new())
    }

    /// The plaintext of `tag || ciphertext`, if it authenticates.
    pub(crate) fn open(&self, nonce: &[u8; 24], sealed: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(nonce.into(), sealed).ok()
    }
}

impl fmt::Debug for DiscoShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DiscoShared(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        let k = NodePublicKey([0xab; 32]);
        assert_eq!(
            k.to_nodekey_string(),
            format!("nodekey:{}", "ab".repeat(32))
        );
        assert_eq!(k.to_nodekey_string().parse::<NodePublicKey>(), Ok(k));
        assert_eq!(k.to_base64().parse::<NodePublicKey>(), Ok(k));
        assert_eq!("ab".repeat(32).parse::<NodePublicKey>(), Ok(k));
        for bad in ["", "nodekey:ab", "zz", &"ab".repeat(31)] {
            assert!(bad.parse::<NodePublicKey>().is_err(), "{bad}");
        }
        let d = DiscoPublicKey([1; 32]);
        assert_eq!(d.to_string().parse::<DiscoPublicKey>(), Ok(d));
        let p = DiscoPrivateKey::from_bytes([7; 32]);
        assert!(!format!("{p:?}").contains("0707"));
    }

    #[test]
    fn shared_keys_agree() {
        let (a, b) = (DiscoPrivateKey::generate(), DiscoPrivateKey::generate());
        let nonce = [9u8; 24];
        let sealed = a.shared(&b.public()).seal(&nonce, b"hello");
        assert_eq!(sealed.len(), 16 + 5);
        assert_eq!(
            b.shared(&a.public()).open(&nonce, &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        let c = DiscoPrivateKey::generate();
        assert!(c.shared(&a.public()).open(&nonce, &sealed).is_none());
    }
}
