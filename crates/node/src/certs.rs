//! The node's serving certificate: held for TLS handshakes (swapped in place
//! when renewed, so open listeners never restart), its validity, and when to
//! renew it (two thirds into its lifetime).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a certificate was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The PEM text holds no certificate or no key.
    #[error("PEM: {0}")]
    Pem(String),
    /// The certificate does not parse.
    #[error("certificate: {0}")]
    Parse(String),
    /// The key does not belong to the certificate, or is not usable.
    #[error("certificate and key: {0}")]
    Key(#[from] rustls::Error),
}

/// What the node knows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// When to renew: two thirds of the way from `not_before` to `not_after`.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

fn unix(t: i64) -> SystemTime {
    match u64::try_from(t) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

/// Reads serial and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let v = cert.validity();
    Ok(CertInfo {
        serial: cert.tbs_certificate.raw_serial_as_string(),
        not_before: unix(v.not_before.timestamp()),
        not_after: unix(v.not_after.timestamp()),
    })
}

/// The common name of a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Certificates of a PEM text.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::Pem("no certificate".into()));
    }
    Ok(certs)
}

/// A certificate and key made ready for rustls.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, CertError> {
    let certs = pem_certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?;
    let provider = gatehouse_ops::tls::provider();
    Ok(CertifiedKey::from_der(certs, key, &provider)?)
}

/// The serving certificate in use, swappable while handshakes go on.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<(Arc<CertifiedKey>, CertInfo)>>,
}

impl CertStore {
    /// An empty store (handshakes fail until a certificate is set).
    pub fn new() -> Arc<Self> {
        Arc::new(CertStore::default())
    }

    /// Puts a certificate (PEM) and its key (PEM) in use. Refused, leaving
    /// the current one in place, if they do not match.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<CertInfo, CertError> {
        let ck = certified_key(cert_pem, key_pem)?;
        let info = cert_info(ck.end_entity_cert()?.as_ref())?;
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        *cur = Some((Arc::new(ck), info.clone()));
        Ok(info)
    }

    /// The certificate in use.
    pub fn info(&self) -> Option<CertInfo> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().map(|(_, i)| i.clone())
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().map(|(k, _)| Arc::clone(k))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// When the next renewal is due: at `renew_at`, but if that has passed
/// although the certificate was just issued (a lifetime so short that two
/// thirds of it are gone on arrival), halfway through what is left, so
/// renewals never spin.
pub fn next_renewal(info: &CertInfo, now: SystemTime, just_renewed: bool) -> SystemTime {
    let at = info.renew_at();
    if at > now || !just_renewed {
        return at;
    }
    let left = info.not_after.duration_since(now).unwrap_or_default();
    now + (left / 2).max(Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_times() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            serial: "01".into(),
            not_before: t0,
            not_after: t0 + Duration::from_secs(3000),
        };
        assert_eq!(info.renew_at(), t0 + Duration::from_secs(2000));
        let early = t0 + Duration::from_secs(10);
        assert_eq!(
            next_renewal(&info, early, true),
            t0 + Duration::from_secs(2000)
        );
        let late = t0 + Duration::from_secs(2800);
        assert_eq!(next_renewal(&info, late, false), info.renew_at());
        assert_eq!(
            next_renewal(&info, late, true),
            late + Duration::from_secs(100)
        );
    }

    #[test]
    fn store_refuses_mismatched_key() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let store = CertStore::new();
        let info = store
            .set(&a.cert.pem(), &a.signing_key.serialize_pem())
            .unwrap();
        assert!(info.not_after > info.not_before);
        assert!(
            store
                .set(&b.cert.pem(), &a.signing_key.serialize_pem())
                .is_err()
        );
        assert_eq!(store.info(), Some(info));
        assert_eq!(
            common_name(a.cert.der()),
            Some("rcgen self signed cert".into())
        );
    }
}
