//! A throwaway certificate authority and leaf certificates as PEM files.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};

/// A CA whose files live in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// PEM file of the CA certificate.
    pub ca: PathBuf,
    /// Leaves made so far: each gets files of its own.
    leaves: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca", &self.ca).finish()
    }
}

/// Certificate and key files of one leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
}

impl Leaf {
    /// A rustls server configuration serving this certificate, offering
    /// `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }
}

impl Pki {
    /// Creates a CA.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Self {
            dir,
            issuer: Issuer::new(params, key),
            ca,
            leaves: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Issues a leaf for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = CertificateParams::new(names.clone()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Numbered, so that a second leaf for the same name never rewrites
        // the files a running process may be reading.
        let n = self
            .leaves
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = format!("{}-{n}", names[0].replace(['*', ':'], "_"));
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{base}.pem")),
            key: self.dir.path().join(format!("{base}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A rustls client configuration trusting this CA.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let pem = std::fs::read(&self.ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile_certs(&pem) {
            roots.add(c).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}
