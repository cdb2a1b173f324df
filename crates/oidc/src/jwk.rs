//! JSON Web Key sets (RFC 7517): the public keys a provider signs with.
//! Keys of kinds we cannot use (symmetric keys, unknown curves, encryption
//! keys) are skipped, not refused: providers publish several kinds.

use crate::{Error, unb64};
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

/// One usable public key.
#[derive(Debug, Clone)]
pub struct Jwk {
    /// Key id.
    pub kid: Option<String>,
    /// The algorithm the set pins the key to, if any.
    pub alg: Option<String>,
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// A provider's key set.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    /// The usable keys, in the order published.
    pub keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Largest key set document accepted.
pub const MAX_JWKS: usize = 256 * 1024;

fn coord(what: &'static str, v: Option<&String>, len: usize) -> Result<Vec<u8>, Error> {
    let b = unb64(what, v.map_or("", String::as_str))?;
    if b.len() != len {
        return Err(Error::Malformed {
            what,
            why: format!("{} bytes, expected {len}", b.len()),
        });
    }
    Ok(b)
}

impl Jwk {
    fn from_raw(k: RawKey) -> Result<Option<Jwk>, Error> {
        if k.use_.as_deref().is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let material = match (k.kty.as_str(), k.crv.as_deref()) {
            ("RSA", _) => {
                let n = unb64("RSA modulus", k.n.as_deref().unwrap_or(""))?;
                let e = unb64("RSA exponent", k.e.as_deref().unwrap_or(""))?;
                if n.is_empty() || e.is_empty() {
                    return Err(Error::Malformed {
                        what: "RSA key",
                        why: "missing n or e".into(),
                    });
                }
                Material::Rsa { n, e }
            }
            ("EC", Some("P-256")) => {
                let mut p = vec![4u8];
                p.extend(coord("EC x", k.x.as_ref(), 32)?);
                p.extend(coord("EC y", k.y.as_ref(), 32)?);
                Material::P256(p)
            }
            ("EC", Some("P-384")) => {
                let mut p = vec![4u8];
                p.extend(coord("EC x", k.x.as_ref(), 48)?);
                p.extend(coord("EC y", k.y.as_ref(), 48)?);
                Material::P384(p)
            }
            ("OKP", Some("Ed25519")) => Material::Ed25519(coord("Ed25519 x", k.x.as_ref(), 32)?),
            _ => return Ok(None),
        };
        Ok(Some(Jwk {
            kid: k.kid,
            alg: k.alg,
            material,
        }))
    }

    /// Whether this key can verify `alg`.
    fn fits(&self, alg: &str) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (&self.material, alg),
            (
                Material::Rsa { .. },
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
            ) | (Material::P256(_), "ES256")
                | (Material::P384(_), "ES384")
                | (Material::Ed25519(_), "EdDSA")
        )
    }

    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> Result<(), Error> {
        let ok = match &self.material {
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    other => return Err(Error::Algorithm(other.to_string())),
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Material::P256(p) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                .verify(msg, sig)
                .is_ok(),
            Material::P384(p) => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                .verify(msg, sig)
                .is_ok(),
            Material::Ed25519(p) => UnparsedPublicKey::new(&signature::ED25519, p)
                .verify(msg, sig)
                .is_ok(),
        };
        if ok { Ok(()) } else { Err(Error::Signature) }
    }
}

impl Jwks {
    /// Reads a key set document. A key of a known kind with broken
    /// material refuses the whole set (the provider is misconfigured);
    /// keys of other kinds are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, Error> {
        if bytes.len() > MAX_JWKS {
            return Err(Error::Malformed {
                what: "key set",
                why: "too large".into(),
            });
        }
        let raw: RawSet = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "key set",
            source,
        })?;
        let mut keys = Vec::new();
        for v in raw.keys {
            // A key whose fields are not even strings is of no kind we use.
            let Ok(k) = serde_json::from_value::<RawKey>(v) else {
                continue;
            };
            if let Some(k) = Jwk::from_raw(k)? {
                keys.push(k);
            }
        }
        Ok(Jwks { keys })
    }

    /// Whether a key with this id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Verifies `sig` over `msg` with the key named `kid` (or, without a
    /// kid, any key that fits the algorithm).
    pub fn verify(
        &self,
        alg: &str,
        kid: Option<&str>,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), Error> {
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.fits(alg))
            .peekable();
        if candidates.peek().is_none() {
            return Err(Error::NoKey(kid.map(str::to_string)));
        }
        if candidates.any(|k| k.verify(alg, msg, sig).is_ok()) {
            Ok(())
        } else {
            Err(Error::Signature)
        }
    }
}
