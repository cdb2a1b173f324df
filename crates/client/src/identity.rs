//! A node's identity: keys generated here and never sent anywhere, the
//! certificates control issued for them, and what control assigned. Saved
//! in the node's state directory, readable only by its owner.

use base64::Engine as _;
use gatehouse_proto::control::RegisterResponse;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Why an identity could not be made, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or CSR generation.
    #[error("key generation")]
    Keys(#[from] rcgen::Error),
    /// Reading or writing the state file.
    #[error("{path}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The state file does not parse.
    #[error("{path}: not an identity file")]
    Corrupt {
        /// File.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Keys made before registering.
#[derive(Debug)]
pub struct PendingIdentity {
    machine_key: KeyPair,
    serving_key: KeyPair,
    wg_secret: [u8; 32],
}

fn csr(key: &KeyPair, cn: &str) -> Result<String, IdentityError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.pem()?)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl PendingIdentity {
    /// Generates the machine, serving and WireGuard keys.
    pub fn generate() -> Result<Self, IdentityError> {
        use rand::RngCore;
        let mut wg_secret = [0u8; 32];
        rand::rng().fill_bytes(&mut wg_secret);
        Ok(PendingIdentity {
            machine_key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            serving_key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            wg_secret,
        })
    }

    /// The WireGuard public key, base64.
    pub fn wireguard_public(&self) -> String {
        let secret = x25519_dalek::StaticSecret::from(self.wg_secret);
        b64(x25519_dalek::PublicKey::from(&secret).as_bytes())
    }

    /// CSR for the machine certificate.
    pub fn machine_csr(&self) -> Result<String, IdentityError> {
        csr(&self.machine_key, "gatehouse node")
    }

    /// CSR for the serving certificate.
    pub fn serving_csr(&self) -> Result<String, IdentityError> {
        csr(&self.serving_key, "gatehouse node")
    }

    /// The identity once control answered.
    pub fn complete(self, control_url: &str, r: RegisterResponse) -> Identity {
        Identity {
            control: control_url.to_string(),
            node_id: r.node_id,
            name: r.name,
            fqdn: r.fqdn,
            addresses: r.addresses,
            ca_cert: r.ca_cert,
            machine_cert: r.machine_cert,
            machine_key: self.machine_key.serialize_pem(),
            serving_cert: r.serving_cert,
            serving_key: self.serving_key.serialize_pem(),
            wireguard_private: b64(&self.wg_secret),
            key_expiry: r.key_expiry,
        }
    }
}

/// A registered node's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Control's URL.
    pub control: String,
    /// Node id.
    pub node_id: String,
    /// Host name.
    pub name: String,
    /// DNS name.
    pub fqdn: String,
    /// Mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// Control's CA (PEM): the only CA trusted for control and the mesh.
    pub ca_cert: String,
    /// Machine certificate (PEM).
    pub machine_cert: String,
    /// Machine key (PEM, PKCS#8).
    pub machine_key: String,
    /// Serving certificate (PEM).
    pub serving_cert: String,
    /// Serving key (PEM, PKCS#8).
    pub serving_key: String,
    /// WireGuard private key, base64.
    pub wireguard_private: String,
    /// Node key expiry (unix seconds).
    pub key_expiry: i64,
}

/// File name of the identity inside a state directory.
pub const IDENTITY_FILE: &str = "node.json";

impl Identity {
    /// Saves to `dir/node.json`, mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(IDENTITY_FILE);
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = serde_json::to_string_pretty(self).map_err(|source| IdentityError::Corrupt {
            path: path.display().to_string(),
            source,
        })?;
        let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Loads from `dir/node.json`, if present.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|source| IdentityError::Corrupt {
                        path: path.display().to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// A CSR for a new serving certificate with the existing serving key.
    pub fn serving_csr(&self) -> Result<String, IdentityError> {
        let key = KeyPair::from_pem(&self.serving_key)?;
        csr(&key, &self.fqdn)
    }
}
