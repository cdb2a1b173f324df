//! Access: identity requirements on public hostnames
//! (`docs/decisions/0034-oidc-sign-in.md`, "Access on public hostnames").
//! Browsers without a session are sent to control to sign in and come
//! back with a grant; the edge keeps its own session (an ES256 JWT in a
//! cookie), checks each request's rule and tells the origin who is asking
//! in a signed assertion. Machines use service tokens.
//!
//! [`core`] holds the pure checks; this module owns the keys, the caches and
//! the answers.

pub mod core;

use crate::config::AccessSettings;
use crate::path::{Identity, Who};
use core::Session;
use gatehouse_oidc::{Jwks, Signer, Token};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Why Access cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The signing key file cannot be read or written.
    #[error("access signing key {path}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no usable key, or none could be made.
    #[error("access signing key {path}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: gatehouse_oidc::Error,
    },
    /// The HTTP client for control could not be set up (its CA file).
    #[error("access: client for control's key set")]
    Client(#[source] gatehouse_oidc::fetch::FetchError),
}

/// Most sessions whose verification is remembered.
const SESSION_CACHE: usize = 10_000;
/// Most grant ids remembered (they expire within minutes).
const SEEN_GRANTS: usize = 100_000;
/// Shortest wait between two fetches of control's key set for an unknown key.
const REFETCH: Duration = Duration::from_secs(60);
/// Lifetime of a service token's assertion.
const TOKEN_ASSERTION: u64 = 300;

/// The outcome of checking a request against a rule's identity requirement.
#[derive(Debug)]
pub enum Verdict {
    /// Admitted: forward with this assertion.
    Admit(HeaderValue),
    /// Answer this instead.
    Answer(Answer),
}

/// An answer of the edge itself.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Title and explanation (plain text; escaped by the page).
    pub title: &'static str,
    /// Explanation.
    pub detail: String,
    /// Extra headers (`Location`, `Set-Cookie`, `Cache-Control`).
    pub headers: HeaderMap,
    /// A body that is not a page (the key set).
    pub json: Option<String>,
}

impl Answer {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        Answer {
            status,
            title,
            detail: detail.into(),
            headers,
            json: None,
        }
    }

    fn header(mut self, name: http::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.append(name, v);
        }
        self
    }
}

/// Control's key set as last fetched.
#[derive(Debug, Default)]
struct ControlKeys {
    keys: Option<Arc<Jwks>>,
    fetched: Option<Instant>,
}

/// Grant ids already used, with their expiry.
#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
    by_exp: Vec<(u64, String)>,
}

/// Access on one edge.
#[derive(Debug)]
pub struct Access {
    settings: AccessSettings,
    signer: Signer,
    own_keys: Jwks,
    certs: String,
    http: gatehouse_oidc::fetch::Http,
    control_keys: RwLock<ControlKeys>,
    fetching: tokio::sync::Mutex<()>,
    seen: Mutex<Seen>,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    token_assertions: Mutex<HashMap<(String, String), (HeaderValue, u64)>>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The edge's signing key: read from `path`, or made and written there
/// (mode 0600) on first start.
pub fn load_or_create_key(path: &Path) -> Result<Signer, AccessError> {
    let key_err = |source| AccessError::Key {
        path: path.to_owned(),
        source,
    };
    let file_err = |source| AccessError::KeyFile {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(der) => {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(m) = std::fs::metadata(path)
                && m.permissions().mode() & 0o077 != 0
            {
                warn!(path = %path.display(), "the access signing key is readable by others than its owner");
            }
            Signer::from_pkcs8(&der).map_err(key_err)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = Signer::generate().map_err(key_err)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(file_err)?;
            }
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(file_err)?;
            f.write_all(signer.pkcs8()).map_err(file_err)?;
            f.sync_all().map_err(file_err)?;
            info!(path = %path.display(), kid = signer.kid(), "access signing key created");
            Ok(signer)
        }
        Err(e) => Err(file_err(e)),
    }
}

fn cookie_header(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

impl Access {
    /// Sets Access up: the signing key (made on first start) and the client
    /// for control's key set (fetched when first needed).
    pub fn new(settings: AccessSettings) -> Result<Access, AccessError> {
        let signer = load_or_create_key(&settings.key)?;
        let own_keys = signer.jwks().map_err(|source| AccessError::Key {
            path: settings.key.clone(),
            source,
        })?;
        let http = gatehouse_oidc::fetch::Http::new(settings.ca.as_deref())
            .map_err(AccessError::Client)?;
        Ok(Access {
            certs: signer.jwks_document().to_string(),
            signer,
            own_keys,
            http,
            settings,
            control_keys: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
            seen: Mutex::default(),
            sessions: RwLock::default(),
            token_assertions: Mutex::default(),
        })
    }

    /// The edge's key id.
    pub fn kid(&self) -> &str {
        self.signer.kid()
    }

    /// Checks a request against a rule's requirement.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        host: &str,
        target: &str,
        rule: &Identity,
    ) -> Verdict {
        let now = now_unix();
        let audience = format!("https://{host}");
        if headers.contains_key(core::CLIENT_ID_HEADER) {
            return self.check_service_token(headers, &audience, rule, now);
        }
        if let Some(value) = core::cookie(headers, core::SESSION_COOKIE)
            && let Some(session) = self.session(value, &audience, now)
        {
            let who = Who::Person {
                email: session.person.email.as_deref(),
                groups: &session.person.groups,
            };
            if !rule.admits(who) {
                debug!(sub = session.person.sub, "signed in but not admitted");
                return Verdict::Answer(Answer::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "You are signed in as {}, who may not use this path.",
                        session
                            .person
                            .email
                            .as_deref()
                            .unwrap_or(&session.person.sub)
                    ),
                ));
            }
            return match HeaderValue::from_str(value) {
                Ok(v) => Verdict::Admit(v),
                Err(_) => Verdict::Answer(Answer::new(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    "The session cookie is not usable.",
                )),
            };
        }
        if !core::wants_html(method, headers) {
            return Verdict::Answer(Answer::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "This path needs a signed-in session or a service token.",
            ));
        }
        let nonce = match gatehouse_oidc::random_token(24) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %gatehouse_ops::Chain(&e), "no randomness for a sign-in");
                return Verdict::Answer(Answer::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    "The sign-in could not be started.",
                ));
            }
        };
        let url = core::login_url(&self.settings.control, host, &nonce, target);
        Verdict::Answer(
            Answer::new(
                StatusCode::FOUND,
                "Sign-in required",
                "Redirecting to sign in.",
            )
            .header(http::header::LOCATION, &url)
            .header(
                http::header::SET_COOKIE,
                &cookie_header(core::NONCE_COOKIE, &nonce, core::NONCE_LIFETIME),
            ),
        )
    }

    fn check_service_token(
        &self,
        headers: &HeaderMap,
        audience: &str,
        rule: &Identity,
        now: u64,
    ) -> Verdict {
        let id = headers
            .get(core::CLIENT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let secret = headers
            .get(core::CLIENT_SECRET_HEADER)
            .map_or(&[][..], HeaderValue::as_bytes);
        let presented: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, secret)
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        // Every listed token is compared, so the time taken does not say
        // which id exists.
        let mut valid = false;
        for (have, hash) in &self.settings.service_tokens {
            let ok = core::same(&presented, hash);
            valid |= ok && have == id;
        }
        if !valid {
            debug!("service token refused");
            return Verdict::Answer(Answer::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "The service token is not valid.",
            ));
        }
        if !rule.admits(Who::ServiceToken(id)) {
            return Verdict::Answer(Answer::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This service token may not use this path.",
            ));
        }
        match self.token_assertion(id, audience, now) {
            Some(v) => Verdict::Admit(v),
            None => Verdict::Answer(Answer::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "The assertion could not be signed.",
            )),
        }
    }

    /// A signed assertion naming a service token, reused while it has more
    /// than a minute left.
    fn token_assertion(&self, id: &str, audience: &str, now: u64) -> Option<HeaderValue> {
        let key = (audience.to_owned(), id.to_owned());
        let mut g = self
            .token_assertions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((v, exp)) = g.get(&key)
            && *exp > now + 60
        {
            return Some(v.clone());
        }
        let claims = core::service_token_claims(id, audience, now, TOKEN_ASSERTION);
        let jwt = self
            .signer
            .sign(&claims)
            .inspect_err(|e| warn!(error = %gatehouse_ops::Chain(e), "signing an assertion"))
            .ok()?;
        let v = HeaderValue::from_str(&jwt).ok()?;
        if g.len() >= SESSION_CACHE {
            g.clear();
        }
        g.insert(key, (v.clone(), now + TOKEN_ASSERTION));
        Some(v)
    }

    /// The verified session of a cookie value, from the cache when seen.
    fn session(&self, value: &str, audience: &str, now: u64) -> Option<Arc<Session>> {
        if let Some(s) = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(value)
        {
            return (s.aud == audience && now < s.exp).then(|| s.clone());
        }
        let token = Token::parse(value).ok()?;
        let s = match core::verify_session(&token, &self.own_keys, audience, now) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                debug!(error = %gatehouse_ops::Chain(&e), "session refused");
                return None;
            }
        };
        let mut g = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        if g.len() >= SESSION_CACHE {
            g.retain(|_, s| s.exp > now);
            if g.len() >= SESSION_CACHE {
                g.clear();
            }
        }
        g.insert(value.to_owned(), s.clone());
        Some(s)
    }

    /// Answers `/.gatehouse/access/<rest>`.
    pub async fn endpoint(
        &self,
        rest: &str,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        host: &str,
    ) -> Answer {
        match rest {
            "certs" => {
                let mut a = Answer::new(StatusCode::OK, "Keys", "");
                a.headers.insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=300"),
                );
                a.json = Some(self.certs.clone());
                a
            }
            "logout" => Answer::new(
                StatusCode::OK,
                "Signed out",
                "You are signed out of this site.",
            )
            .header(
                http::header::SET_COOKIE,
                &cookie_header(core::SESSION_COOKIE, "", 0),
            ),
            "callback" if method == Method::GET => self.callback(headers, query, host).await,
            "callback" => Answer::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "Use GET.",
            ),
            _ => Answer::new(StatusCode::NOT_FOUND, "Not Found", "No such page."),
        }
    }

    /// Control's key set, fetched when never fetched or when it lacks `kid`
    /// (at most once a [`REFETCH`]).
    async fn control_keys(&self, kid: Option<&str>) -> Result<Arc<Jwks>, Answer> {
        let fresh_enough = |k: &ControlKeys| match (&k.keys, kid) {
            (Some(keys), Some(kid)) if keys.has_kid(kid) => Some(keys.clone()),
            (Some(keys), _) if k.fetched.is_some_and(|t| t.elapsed() < REFETCH) => {
                Some(keys.clone())
            }
            (Some(keys), None) => Some(keys.clone()),
            _ => None,
        };
        if let Some(k) = fresh_enough(&self.control_keys.read().unwrap_or_else(|p| p.into_inner()))
        {
            return Ok(k);
        }
        let _one = self.fetching.lock().await;
        if let Some(k) = fresh_enough(&self.control_keys.read().unwrap_or_else(|p| p.into_inner()))
        {
            return Ok(k);
        }
        let url = &self.settings.jwks;
        let fetched = match self.http.get(url).await {
            Ok(body) => Jwks::parse(&body).map_err(|e| gatehouse_ops::chain(&e)),
            Err(e) => Err(gatehouse_ops::chain(&e)),
        };
        let mut g = self.control_keys.write().unwrap_or_else(|p| p.into_inner());
        g.fetched = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                info!(url, keys = keys.keys.len(), "control's access keys fetched");
                let keys = Arc::new(keys);
                g.keys = Some(keys.clone());
                Ok(keys)
            }
            Err(why) => {
                warn!(url, error = why, "control's access keys unavailable");
                match &g.keys {
                    // Keys we had still verify what they signed.
                    Some(k) => Ok(k.clone()),
                    None => Err(Answer::new(
                        StatusCode::BAD_GATEWAY,
                        "Bad Gateway",
                        "The sign-in cannot be checked: control's keys cannot be fetched. Try again later.",
                    )),
                }
            }
        }
    }

    /// `/.gatehouse/access/callback?grant=…`: checks control's grant, starts
    /// the session and sends the browser where it was going.
    async fn callback(&self, headers: &HeaderMap, query: Option<&str>, host: &str) -> Answer {
        let refused = |why: String| Answer::new(StatusCode::FORBIDDEN, "Sign-in refused", why);
        let Some(grant) = core::query_param(query, "grant") else {
            return Answer::new(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "The sign-in carries no grant.",
            );
        };
        let Some(nonce) = core::cookie(headers, core::NONCE_COOKIE) else {
            return refused(
                "This browser did not start a sign-in here (or it took more than 10 minutes)."
                    .into(),
            );
        };
        let token = match Token::parse(&grant) {
            Ok(t) => t,
            Err(e) => {
                return refused(format!(
                    "The grant is not valid: {}.",
                    gatehouse_ops::chain(&e)
                ));
            }
        };
        let keys = match self.control_keys(token.header.kid.as_deref()).await {
            Ok(k) => k,
            Err(a) => return a,
        };
        let now = now_unix();
        let audience = format!("https://{host}");
        let check = core::GrantCheck {
            issuer: &self.settings.control,
            audience: &audience,
            nonce,
            now,
        };
        let g = match core::verify_grant(&token, &keys, check) {
            Ok(g) => g,
            Err(e) => {
                debug!(error = %gatehouse_ops::Chain(&e), "grant refused");
                return refused(format!(
                    "The grant is not valid: {}.",
                    gatehouse_ops::chain(&e)
                ));
            }
        };
        if let Err(a) = self.use_once(&g.jti, g.exp, now) {
            return *a;
        }
        let lifetime = self.settings.session_lifetime.as_secs();
        let session = match self
            .signer
            .sign(&core::session_claims(&g.person, &audience, now, lifetime))
        {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %gatehouse_ops::Chain(&e), "signing a session");
                return Answer::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    "The session could not be signed.",
                );
            }
        };
        info!(sub = g.person.sub, "signed in");
        let target = core::local_target(g.rd.as_deref());
        Answer::new(StatusCode::FOUND, "Signed in", "Redirecting.")
            .header(http::header::LOCATION, target)
            .header(
                http::header::SET_COOKIE,
                &cookie_header(core::SESSION_COOKIE, &session, lifetime),
            )
            .header(
                http::header::SET_COOKIE,
                &cookie_header(core::NONCE_COOKIE, "", 0),
            )
    }

    /// Records a grant id; refuses one seen before. When the set is full of
    /// ids that have not expired, grants are refused until room is made.
    fn use_once(&self, jti: &str, exp: u64, now: u64) -> Result<(), Box<Answer>> {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if s.ids.contains(jti) {
            return Err(Box::new(Answer::new(
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                "This grant has already been used.",
            )));
        }
        if s.ids.len() >= SEEN_GRANTS {
            let cutoff = now.saturating_sub(core::SKEW);
            let Seen { ids, by_exp } = &mut *s;
            by_exp.retain(|(e, id)| {
                let keep = *e >= cutoff;
                if !keep {
                    ids.remove(id);
                }
                keep
            });
            if ids.len() >= SEEN_GRANTS {
                return Err(Box::new(Answer::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                    "Too many sign-ins at once; try again in a minute.",
                )));
            }
        }
        s.ids.insert(jti.to_owned());
        s.by_exp.push((exp, jti.to_owned()));
        Ok(())
    }
}
