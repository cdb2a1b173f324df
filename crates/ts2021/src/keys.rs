//! Curve25519 keys of the control protocol: the server's key and the
//! clients' machine keys are the same kind of key (Tailscale's
//! `key.MachinePrivate`), and so are the handshake's ephemeral keys.

use rand::RngCore;
use std::fmt;
use x25519_dalek::{PublicKey, StaticSecret};

/// A Curve25519 private key: the server's static key, a client's machine
/// key, or a handshake's ephemeral key.
#[derive(Clone)]
pub struct MachinePrivateKey(StaticSecret);

impl MachinePrivateKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The key with these 32 bytes (clamped when used, as X25519 does).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    /// The key's 32 bytes, for storing it.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> MachinePublicKey {
        MachinePublicKey(PublicKey::from(&self.0).to_bytes())
    }

    /// X25519 with `peer`; `None` when the result is all zeros (a
    /// low-order peer key), which the protocol refuses as Go's
    /// `curve25519.X25519` does.
    pub(crate) fn dh(&self, peer: &MachinePublicKey) -> Option<[u8; 32]> {
        let shared = self.0.diffie_hellman(&PublicKey::from(peer.0));
        shared.was_contributory().then(|| shared.to_bytes())
    }
}

impl fmt::Debug for MachinePrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MachinePrivateKey")
            .field(&self.public())
            .finish()
    }
}

/// A Curve25519 public key as it travels: 32 bytes. Its text forms
/// (`mkey:…`) belong to the message layer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachinePublicKey(pub [u8; 32]);

impl MachinePublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for MachinePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachinePublicKey(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}
