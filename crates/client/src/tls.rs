//! Client TLS: trusting exactly control's CA, first through a pin.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

use crate::http::{ClientError, TlsError};
use crate::join::Join;

use gatehouse_ops::tls::provider;

/// SHA-256 of a PEM certificate, lowercase hex.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String, ClientError> {
    let der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|source| TlsError::Pem {
            what: "CA certificate",
            source,
        })?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

/// Accepts a server whose chain holds a certificate with the pinned hash,
/// and whose leaf verifies against that certificate alone (for the host).
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General("control's CA does not match the pinned hash".into())
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::Other(rustls::OtherError(Arc::new(e))))?;
        let ok = inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        if let Ok(mut f) = self.found.lock() {
            *f = Some(ca.clone().into_owned());
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn base() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, ClientError>
{
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Versions(e).into())
}

/// Connects once to control, checking its CA against the join string's pin,
/// and returns that CA (PEM) to trust from then on.
pub async fn fetch_pinned_ca(join: &Join) -> Result<String, ClientError> {
    let pin = join.ca_sha256.clone().ok_or(TlsError::NoPin)?;
    let verifier = Arc::new(PinVerifier {
        pin,
        found: Mutex::new(None),
    });
    let cfg = base()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let stream = crate::http::connect_tls(join, Arc::new(cfg)).await?;
    drop(stream);
    let ca = verifier
        .found
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .ok_or(TlsError::NoPinnedCa)?;
    Ok(pem_encode("CERTIFICATE", ca.as_ref()))
}

/// PEM text of one DER object.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A client configuration trusting only `ca_pem`, optionally presenting a
/// client certificate.
pub(crate) fn config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|source| TlsError::Pem { what: "CA", source })?;
        roots.add(c).map_err(TlsError::Root)?;
    }
    let b = base()?.with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|source| TlsError::Pem {
                        what: "machine certificate",
                        source,
                    })?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| {
                TlsError::Pem {
                    what: "machine key",
                    source,
                }
            })?;
            b.with_client_auth_cert(certs, key)
                .map_err(TlsError::ClientCert)?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
