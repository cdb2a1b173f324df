//! The mesh CA: created on first start, it issues control's own serving
//! certificate, nodes' machine (client) certificates from their CSRs, and
//! nodes' serving certificates for exactly their DNS names. It is
//! name-constrained to the mesh domain, so trusting it trusts nothing else.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the CA files.
    #[error("CA files in {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A certificate operation failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A CSR was refused.
    #[error("invalid certificate request: {0}")]
    BadCsr(String),
}

/// The mesh CA with its key.
#[derive(Debug)]
pub struct MeshCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())
}

impl MeshCa {
    /// Loads the CA from `dir` (`ca.crt`, `ca.key`), creating it on first
    /// start for the mesh `domain` plus `extra_dns` names control answers to.
    pub fn load_or_create(dir: &Path, domain: &str, extra_dns: &[String]) -> Result<Self, CaError> {
        let crt = dir.join("ca.crt");
        let key = dir.join("ca.key");
        if crt.exists() {
            let cert_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
            let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
            let kp = KeyPair::from_pem(&key_pem)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, kp)?;
            let cert_der =
                pem_to_der(&cert_pem).ok_or_else(|| CaError::BadCsr("ca.crt is not PEM".into()))?;
            return Ok(MeshCa {
                cert_pem,
                cert_der,
                issuer,
            });
        }
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Gatehouse mesh CA ({domain})"));
        dn.push(DnType::OrganizationName, "Gatehouse");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut permitted = vec![GeneralSubtree::DnsName(domain.to_string())];
        for n in extra_dns {
            if !n.ends_with(domain) {
                permitted.push(GeneralSubtree::DnsName(n.clone()));
            }
        }
        // IP addresses of control (loopback or its public address) stay allowed.
        permitted.push(GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4(
            [0; 4], [0; 4],
        )));
        permitted.push(GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6(
            [0; 16], [0; 16],
        )));
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        });
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&kp)?;
        let cert_pem = cert.pem();
        std::fs::write(&crt, &cert_pem).map_err(io(&crt))?;
        write_private(&key, &kp.serialize_pem()).map_err(io(&key))?;
        let issuer = Issuer::new(params, kp);
        Ok(MeshCa {
            cert_der: cert.der().to_vec(),
            cert_pem,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate (DER), hex: the pin in join strings.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// A serving certificate and key for control itself.
    pub fn control_cert(
        &self,
        dns: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(String, String), CaError> {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Gatehouse control");
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for d in dns {
            sans.push(SanType::DnsName(d.clone().try_into()?));
        }
        for ip in ips {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.serial_number = Some(random_serial());
        params.not_after = now + Duration::days(365);
        let cert = params.signed_by(&kp, &self.issuer)?;
        Ok((cert.pem(), kp.serialize_pem()))
    }

    fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, CaError> {
        CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))
    }

    /// Signs a node's machine CSR: a client certificate naming the node id,
    /// valid until `not_after`. Only the CSR's public key is used.
    pub fn sign_machine(
        &self,
        csr_pem: &str,
        node_id: &str,
        not_after: OffsetDateTime,
    ) -> Result<String, CaError> {
        let mut csr = Self::parse_csr(csr_pem)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("node {node_id}"));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
        params.serial_number = Some(random_serial());
        params.not_after = not_after;
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// Signs a node's serving CSR for exactly `names` (the first is the
    /// subject), valid `lifetime`.
    /// Whatever names the CSR asks for are ignored.
    pub fn sign_serving(
        &self,
        csr_pem: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let mut csr = Self::parse_csr(csr_pem)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().map_or("", String::as_str));
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
            .collect::<Result<_, CaError>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.serial_number = Some(random_serial());
        params.not_after = now + lifetime;
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// A random serial number (RFC 5280: unique per issuer; a renewed
/// certificate for the same key must not repeat its predecessor's).
fn random_serial() -> rcgen::SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&b)
}

/// The DER of the first PEM block.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// SHA-256 of a DER certificate, hex.
pub fn der_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}
