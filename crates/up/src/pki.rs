//! The local public CA: no ACME CA can be reached from a machine offline, so
//! the stack makes its own CA for the public hostnames and the edge's tunnel
//! name, name-constrained to exactly those names (trusting it trusts nothing
//! else), and issues the edge's certificates from it. The CA and the
//! certificates are kept in the state directory and reused; a certificate
//! is issued again when it has less than a third of its life left, and the
//! CA is made again when the public names change.

use crate::UpError;
use crate::state::{write, write_private};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The name in the edge's tunnel certificate (connectors check it).
pub const TUNNEL_NAME: &str = "tunnel.localhost";
/// Lifetime of issued certificates (as a public ACME CA's).
const LEAF_DAYS: i64 = 90;

/// The local public CA.
pub struct PublicCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file) clients pass to `curl --cacert`.
    pub cert: PathBuf,
    /// Whether this start made it (earlier certificates are then stale).
    pub created: bool,
}

impl std::fmt::Debug for PublicCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicCa")
            .field("cert", &self.cert)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key (0600).
    pub key: PathBuf,
    /// End of validity (unix seconds).
    pub not_after: i64,
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> UpError + '_ {
    move |e| UpError::state(what, e)
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// End of validity (unix seconds) of the first certificate of a PEM text.
pub fn pem_not_after(pem: &str) -> Option<i64> {
    let der = gatehouse_control::ca::pem_to_der(pem)?;
    let info = gatehouse_node::certs::cert_info(&der).ok()?;
    let secs = info
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    i64::try_from(secs).ok()
}

impl PublicCa {
    /// Loads the CA from `dir`, or makes it when missing or when `names`
    /// are not all among those it was made for.
    pub fn load_or_create(dir: &Path, names: &BTreeSet<String>) -> Result<Self, UpError> {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca.key");
        let names_file = dir.join("ca-names.json");
        let known: BTreeSet<String> = read(&names_file)
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if names.is_subset(&known)
            && let (Some(c), Some(k)) = (read(&cert), read(&key))
        {
            let kp = KeyPair::from_pem(&k).map_err(cert_err("public CA key"))?;
            let issuer = Issuer::from_ca_cert_pem(&c, kp).map_err(cert_err("public CA"))?;
            return Ok(PublicCa {
                issuer,
                cert,
                created: false,
            });
        }
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("public CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            "Gatehouse local public CA (gatehouse up; not a public CA)",
        );
        dn.push(DnType::OrganizationName, "Gatehouse");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: names
                .iter()
                .map(|n| GeneralSubtree::DnsName(n.clone()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let ca = params.self_signed(&kp).map_err(cert_err("public CA"))?;
        write_private(&key, &kp.serialize_pem())?;
        write(&cert, &ca.pem())?;
        let list = serde_json::to_string(names)
            .map_err(|e| UpError::state("the certificate's names", e))?;
        write(&names_file, &format!("{list}\n"))?;
        Ok(PublicCa {
            issuer: Issuer::new(params, kp),
            cert,
            created: true,
        })
    }

    /// The certificate for `name` in `dir` (`<name>.pem`, `<name>.key`),
    /// issued again when missing, from an earlier CA, or past two thirds
    /// of its life.
    pub fn leaf(&self, dir: &Path, name: &str) -> Result<Leaf, UpError> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if !self.created
            && key.exists()
            && let Some(not_after) = read(&cert).as_deref().and_then(pem_not_after)
            && not_after - now > LEAF_DAYS * 86_400 / 3
        {
            return Ok(Leaf {
                cert,
                key,
                not_after,
            });
        }
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("certificate key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            name.to_string().try_into().map_err(cert_err(name))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let start = OffsetDateTime::now_utc();
        params.not_before = start - Duration::minutes(5);
        params.not_after = start + Duration::days(LEAF_DAYS);
        params.serial_number = Some(random_serial());
        let c = params
            .signed_by(&kp, &self.issuer)
            .map_err(cert_err(name))?;
        write_private(&key, &kp.serialize_pem())?;
        write(&cert, &c.pem())?;
        Ok(Leaf {
            cert,
            key,
            not_after: params.not_after.unix_timestamp(),
        })
    }
}

fn random_serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_until_the_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let names: BTreeSet<String> = ["a.example.com".to_string(), TUNNEL_NAME.to_string()].into();
        let ca = PublicCa::load_or_create(dir.path(), &names).unwrap();
        assert!(ca.created);
        let l = ca.leaf(dir.path(), "a.example.com").unwrap();
        let first = std::fs::read_to_string(&l.cert).unwrap();
        let ca = PublicCa::load_or_create(dir.path(), &names).unwrap();
        assert!(!ca.created);
        let l2 = ca.leaf(dir.path(), "a.example.com").unwrap();
        assert_eq!(std::fs::read_to_string(&l2.cert).unwrap(), first);
        assert!(l2.not_after > OffsetDateTime::now_utc().unix_timestamp() + 80 * 86_400);
        let more: BTreeSet<String> = ["b.example.com".to_string()]
            .into_iter()
            .chain(names)
            .collect();
        let ca = PublicCa::load_or_create(dir.path(), &more).unwrap();
        assert!(ca.created);
        let l3 = ca.leaf(dir.path(), "a.example.com").unwrap();
        assert_ne!(std::fs::read_to_string(&l3.cert).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&l3.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
