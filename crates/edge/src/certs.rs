//! Certificates the public listener presents: one per configured hostname
//! (from files or ACME), chosen by SNI, plus short-lived TLS-ALPN-01
//! challenge certificates. A ClientHello for any other name gets no
//! certificate and the handshake fails.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Why a certificate could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The PEM files are unusable.
    #[error(transparent)]
    Tls(#[from] gatehouse_ops::tls::TlsError),
    /// The key type is not supported.
    #[error("unsupported private key")]
    Key(#[from] rustls::Error),
    /// A certificate could not be generated.
    #[error("certificate generation")]
    Rcgen(#[from] rcgen::Error),
}

/// SNI → certificate.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

/// Builds a certified key from DER parts.
pub fn certified(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, CertError> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl CertStore {
    /// Installs the certificate of `host` from PEM files.
    pub fn load_files(&self, host: &str, cert: &Path, key: &Path) -> Result<(), CertError> {
        let chain = gatehouse_ops::tls::load_certs(cert)?;
        let key = gatehouse_ops::tls::load_key(key)?;
        self.set(host, certified(chain, &key)?);
        Ok(())
    }

    /// Installs a certificate for `host`.
    pub fn set(&self, host: &str, ck: Arc<CertifiedKey>) {
        if let Ok(mut g) = self.certs.write() {
            g.insert(host.to_owned(), ck);
        }
    }

    /// Whether `host` has a certificate.
    pub fn has(&self, host: &str) -> bool {
        self.certs.read().is_ok_and(|g| g.contains_key(host))
    }

    /// Installs a TLS-ALPN-01 challenge certificate for `host` carrying the
    /// SHA-256 of the key authorization.
    pub fn set_challenge(&self, host: &str, digest: &[u8]) -> Result<(), CertError> {
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let ck = certified(vec![cert.der().clone()], &der)?;
        if let Ok(mut g) = self.challenges.write() {
            g.insert(host.to_owned(), ck);
        }
        Ok(())
    }

    /// Removes a challenge certificate.
    pub fn clear_challenge(&self, host: &str) {
        if let Ok(mut g) = self.challenges.write() {
            g.remove(host);
        }
    }
}

/// The rustls resolver over a [`CertStore`].
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let acme = hello
            .alpn()
            .is_some_and(|mut it| it.any(|p| p == ACME_TLS_ALPN));
        if acme {
            return self.0.challenges.read().ok()?.get(&name).cloned();
        }
        self.0.certs.read().ok()?.get(&name).cloned()
    }
}

/// The public listener's TLS configuration.
pub fn server_config(store: Arc<CertStore>) -> Result<rustls::ServerConfig, CertError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(gatehouse_ops::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(cfg)
}
