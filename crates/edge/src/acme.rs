//! Certificates from an ACME CA (RFC 8555) for hostnames without
//! certificate files, by HTTP-01 (answered on the HTTP listener) or
//! TLS-ALPN-01 (answered on the HTTPS listener). Issued certificates are
//! kept in `state_dir` and reused across restarts; they are renewed 60 days
//! after issue.

use crate::certs::CertStore;
use crate::config::{AcmeConfig, Challenge};
use gatehouse_ops::Chain;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{error, info};

/// Renew certificates this long after issue.
pub const RENEW_AFTER: Duration = Duration::from_secs(60 * 24 * 3600);

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME exchange failed.
    #[error("ACME")]
    Acme(#[from] instant_acme::Error),
    /// The CA did not offer the configured challenge.
    #[error("ACME: the CA offers no {0:?} challenge for {1}")]
    NoChallenge(Challenge, String),
    /// An authorization or order ended in a bad state.
    #[error("ACME: {0}")]
    State(String),
    /// Files could not be read or written.
    #[error("ACME state {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The issued certificate could not be installed.
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
}

/// Pending HTTP-01 answers: token → key authorization.
#[derive(Debug, Default)]
pub struct Http01 {
    tokens: RwLock<HashMap<String, String>>,
}

impl Http01 {
    /// The key authorization for `token`, if a challenge is pending.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.tokens.read().ok()?.get(token).cloned()
    }
    fn set(&self, token: String, ka: String) {
        if let Ok(mut g) = self.tokens.write() {
            g.insert(token, ka);
        }
    }
    fn clear(&self, token: &str) {
        if let Ok(mut g) = self.tokens.write() {
            g.remove(token);
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    issued: PathBuf,
}

fn files(dir: &Path, host: &str) -> Files {
    Files {
        cert: dir.join(format!("{host}.crt")),
        key: dir.join(format!("{host}.key")),
        issued: dir.join(format!("{host}.issued")),
    }
}

/// Loads the cached certificate of `host`; returns when it was issued.
pub fn load_cached(cfg: &AcmeConfig, host: &str, store: &CertStore) -> Option<u64> {
    let f = files(&cfg.state_dir, host);
    let issued: u64 = std::fs::read_to_string(&f.issued)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    store.load_files(host, &f.cert, &f.key).ok()?;
    Some(issued)
}

async fn account(cfg: &AcmeConfig) -> Result<Account, AcmeError> {
    let builder = || match &cfg.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = cfg.state_dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text) {
            if let Ok(acc) = builder()?.from_credentials(creds).await {
                return Ok(acc);
            }
        }
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (acc, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await?;
    if let Ok(text) = serde_json::to_string(&creds) {
        write_private(&path, text.as_bytes())?;
    }
    Ok(acc)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Orders a certificate for `host`, answers the challenge, installs and
/// stores the result.
pub async fn obtain(
    cfg: &AcmeConfig,
    host: &str,
    store: &CertStore,
    http01: &Http01,
) -> Result<(), AcmeError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(io_err(&cfg.state_dir))?;
    let acc = account(cfg).await?;
    let ids = [Identifier::Dns(host.to_owned())];
    let mut order = acc.new_order(&NewOrder::new(&ids)).await?;
    let mut tokens = Vec::new();
    {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(AcmeError::State(format!("authorization is {s:?}"))),
            }
            let ty = match cfg.challenge {
                Challenge::Http01 => ChallengeType::Http01,
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut ch = a
                .challenge(ty)
                .ok_or_else(|| AcmeError::NoChallenge(cfg.challenge, host.to_owned()))?;
            let ka = ch.key_authorization();
            match cfg.challenge {
                Challenge::Http01 => {
                    http01.set(ch.token.clone(), ka.as_str().to_owned());
                    tokens.push(ch.token.clone());
                }
                Challenge::TlsAlpn01 => store.set_challenge(host, ka.digest().as_ref())?,
            }
            ch.set_ready().await?;
        }
    }
    let retry = RetryPolicy::new().timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retry).await;
    for t in &tokens {
        http01.clear(t);
    }
    store.clear_challenge(host);
    let status = status?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::State(format!("order is {status:?}")));
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    let f = files(&cfg.state_dir, host);
    write_private(&f.key, key_pem.as_bytes())?;
    write_private(&f.cert, chain_pem.as_bytes())?;
    store.load_files(host, &f.cert, &f.key)?;
    write_private(&f.issued, now_unix().to_string().as_bytes())?;
    info!(host, "certificate obtained from ACME");
    Ok(())
}

/// Keeps the ACME hostnames' certificates present and fresh: loads cached
/// ones, orders missing ones (retrying with backoff on failure), and renews
/// each one [`RENEW_AFTER`] its issue.
pub async fn maintain(
    cfg: AcmeConfig,
    hosts: Vec<String>,
    store: Arc<CertStore>,
    http01: Arc<Http01>,
) {
    let mut issued: HashMap<String, u64> = HashMap::new();
    for h in &hosts {
        if let Some(t) = load_cached(&cfg, h, &store) {
            issued.insert(h.clone(), t);
        }
    }
    let mut failures = 0u32;
    loop {
        let mut all_ok = true;
        for h in &hosts {
            let due = issued
                .get(h)
                .is_none_or(|t| now_unix().saturating_sub(*t) >= RENEW_AFTER.as_secs());
            if !due {
                continue;
            }
            match obtain(&cfg, h, &store, &http01).await {
                Ok(()) => {
                    issued.insert(h.clone(), now_unix());
                }
                Err(e) => {
                    all_ok = false;
                    error!(host = h, error = %Chain(&e), "could not obtain a certificate");
                }
            }
        }
        let wait = if all_ok {
            failures = 0;
            Duration::from_secs(12 * 3600)
        } else {
            failures = failures.saturating_add(1);
            Duration::from_secs(5u64.saturating_mul(1 << failures.min(8)))
        };
        tokio::time::sleep(wait).await;
    }
}
