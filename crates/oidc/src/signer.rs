//! Tokens Gatehouse signs itself (ES256), and the key set that lets others
//! verify them.

use crate::{Error, Jwks, b64};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value, json};

/// An ES256 signing key.
#[derive(Debug)]
pub struct Signer {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    kid: String,
    rng: SystemRandom,
}

impl Signer {
    /// A new random key.
    pub fn generate() -> Result<Signer, Error> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(
            |source| Error::Crypto {
                what: "cannot generate a P-256 key",
                source,
            },
        )?;
        Signer::from_pkcs8(pkcs8.as_ref())
    }

    /// A key kept as PKCS#8 DER (see [`Signer::pkcs8`]).
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, Error> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(Error::Key)?;
        let kid = thumbprint(pair.public_key().as_ref());
        Ok(Signer {
            pair,
            pkcs8: der.to_vec(),
            kid,
            rng,
        })
    }

    /// The key as PKCS#8 DER, to be stored.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(&p[1..33]),
            "y": b64(&p[33..65]),
            "use": "sig",
            "alg": "ES256",
            "kid": self.kid,
        })
    }

    /// The key set document with this key.
    pub fn jwks_document(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    /// The key set with this key, for verifying in-process.
    pub fn jwks(&self) -> Result<Jwks, Error> {
        Jwks::parse(self.jwks_document().to_string().as_bytes())
    }

    /// Signs `claims` as a compact JWT.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, Error> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(Value::Object(claims.clone()).to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|source| Error::Crypto {
                what: "signing failed",
                source,
            })?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

/// RFC 7638 thumbprint of an uncompressed P-256 point.
fn thumbprint(point: &[u8]) -> String {
    let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}
