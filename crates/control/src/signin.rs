//! Sign-in through the organisation's OpenID provider
//! (`docs/decisions/0034-oidc-sign-in.md`): the person who signs in on a
//! waiting device's page owns that device.
//!
//! The flow: the device's page (`/register/<code>`) sets a browser cookie
//! and shows a "Sign in" button whose form carries the cookie's value; the
//! POST checks both agree (a cross-site form cannot), records the flow under
//! a random `state` with its nonce, PKCE verifier and a hash of the cookie,
//! and sends the browser to the provider. The provider sends it back to
//! `/oidc/callback`; the flow is taken (once), the cookie must be the one
//! that started it, the code is exchanged, the ID token verified, and the
//! device approved for the signed-in person.
//!
//! Access on public hostnames uses the same flow, started by the edge
//! (`/access/login`), and ends with a short grant signed by control's access
//! key, handed to the edge's callback (the decision's wire section).

use crate::App;
use crate::audit::audit;
use crate::pages::{esc, page};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use gatehouse_oidc::fetch::{ClientAuth, Http};
use gatehouse_oidc::idtoken::{self, Expect, IdClaims, LEEWAY};
use gatehouse_oidc::pkce::Pkce;
use gatehouse_oidc::{Jwks, Metadata, Token};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How control signs people in (`--oidc-*`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The provider's issuer identifier (its discovery document lives under it).
    pub issuer: String,
    /// Control's client id at the provider.
    pub client_id: String,
    /// Control's client secret.
    pub client_secret: String,
    /// Trust only this CA bundle for the provider (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// The claim that names the person (`email` by default); an `email` is
    /// taken only when `email_verified` is true.
    pub login_claim: String,
    /// Scopes asked for (`openid` is always first).
    pub scopes: Vec<String>,
    /// Only logins in these domains may sign in (empty: any).
    pub allowed_domains: Vec<String>,
    /// Only these logins may sign in (empty: any). With both lists, a
    /// login in either is allowed.
    pub allowed_users: Vec<String>,
    /// The claim holding the person's groups (handed to the edge for
    /// Access rules).
    pub groups_claim: String,
    /// Host names (`*.` matches one or more leading labels) whose edge may
    /// send people here to sign in for Access; empty: Access is off.
    pub access_hosts: Vec<String>,
}

impl OidcConfig {
    /// A provider with the default claim and scopes.
    pub fn new(issuer: &str, client_id: &str, client_secret: &str) -> OidcConfig {
        OidcConfig {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            ca_file: None,
            login_claim: "email".into(),
            scopes: vec!["email".into(), "profile".into()],
            allowed_domains: Vec::new(),
            allowed_users: Vec::new(),
            groups_claim: "groups".into(),
            access_hosts: Vec::new(),
        }
    }
}

/// The browser cookie binding a sign-in to the browser that started it.
const COOKIE: &str = "__Host-gatehouse-signin";
/// How long a started sign-in may take.
const FLOW_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Most sign-ins in progress at once.
const MAX_FLOWS: usize = 1024;
/// The provider's key set is fetched again for an unknown key id at most
/// this often.
const KEYS_REFRESH: Duration = Duration::from_secs(60);

/// How long a grant for the edge is valid.
const GRANT_LIFETIME: i64 = 120;
/// Control's Access signing key, in its state directory.
pub const ACCESS_KEY_FILE: &str = "access.key";

/// What a sign-in is for.
#[derive(Debug, Clone)]
enum Purpose {
    /// Approving the device waiting under this code.
    Device { code: String },
    /// A grant for the edge serving `host` (`name[:port]`), carrying its
    /// nonce and the path to return to.
    Access {
        host: String,
        nonce: String,
        rd: String,
    },
}

#[derive(Debug)]
struct Flow {
    nonce: String,
    verifier: String,
    browser: String,
    purpose: Purpose,
    since: Instant,
}

#[derive(Debug)]
struct Provider {
    http: Http,
    meta: Metadata,
    keys: Jwks,
    keys_at: Instant,
}

/// Sign-ins in progress, and what control knows of the provider.
#[derive(Debug, Default)]
pub(crate) struct SignIns {
    flows: Mutex<BTreeMap<String, Flow>>,
    provider: tokio::sync::Mutex<Option<Provider>>,
}

/// Why a sign-in did not finish.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    why: String,
}

fn refused(status: StatusCode, why: impl Into<String>) -> Refused {
    Refused {
        status,
        why: why.into(),
    }
}

fn hash(v: &str) -> String {
    hex::encode(sha2::Sha256::digest(v.as_bytes()))
}

/// The value of the sign-in cookie the request carries.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn set_cookie(value: &str, max_age: u64) -> String {
    format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

impl SignIns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Flow>> {
        self.flows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, state: String, flow: Flow) -> Result<(), Refused> {
        let mut flows = self.lock();
        flows.retain(|_, f| f.since.elapsed() < FLOW_LIFETIME);
        if flows.len() >= MAX_FLOWS {
            return Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins are in progress; try again in a few minutes",
            ));
        }
        flows.insert(state, flow);
        Ok(())
    }

    /// Takes the flow of `state`: it can be finished once.
    fn take(&self, state: &str) -> Option<Flow> {
        self.lock()
            .remove(state)
            .filter(|f| f.since.elapsed() < FLOW_LIFETIME)
    }

    /// The provider's metadata, discovered on first use (and again after
    /// a failure: nothing is cached until discovery works).
    async fn metadata(&self, cfg: &OidcConfig) -> Result<(Http, Metadata), Refused> {
        let mut p = self.provider.lock().await;
        if let Some(p) = p.as_ref() {
            return Ok((p.http.clone(), p.meta.clone()));
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            refused(
                StatusCode::BAD_GATEWAY,
                format!("the identity provider {} cannot be used: {e}", cfg.issuer),
            )
        };
        let http = Http::new(cfg.ca_file.as_deref()).map_err(|e| unreachable(&e))?;
        let meta = http
            .discover(&cfg.issuer)
            .await
            .map_err(|e| unreachable(&error_chain(&e)))?;
        let keys = http
            .jwks(&meta)
            .await
            .map_err(|e| unreachable(&error_chain(&e)))?;
        *p = Some(Provider {
            http: http.clone(),
            meta: meta.clone(),
            keys,
            keys_at: Instant::now(),
        });
        Ok((http, meta))
    }

    /// Verifies an ID token, fetching the key set again (at most once a
    /// minute) when the token names a key control does not know.
    async fn verify(
        &self,
        cfg: &OidcConfig,
        token: &Token,
        want: &Expect<'_>,
    ) -> Result<IdClaims, Refused> {
        let bad = |e: gatehouse_oidc::Error| {
            refused(
                StatusCode::FORBIDDEN,
                format!("the identity provider's token was refused: {e}"),
            )
        };
        let mut guard = self.provider.lock().await;
        let Some(p) = guard.as_mut() else {
            return Err(refused(
                StatusCode::BAD_GATEWAY,
                "the identity provider is not known yet; start again",
            ));
        };
        match idtoken::verify(token, &p.keys, want) {
            Err(gatehouse_oidc::Error::NoKey(_)) if p.keys_at.elapsed() >= KEYS_REFRESH => {
                let keys = p.http.jwks(&p.meta).await.map_err(|e| {
                    refused(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "the identity provider {} cannot be used: {}",
                            cfg.issuer,
                            error_chain(&e)
                        ),
                    )
                })?;
                p.keys = keys;
                p.keys_at = Instant::now();
                idtoken::verify(token, &p.keys, want).map_err(bad)
            }
            other => other.map_err(bad),
        }
    }
}

/// An error with its causes, for a page or a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The routes of sign-in (mounted whether or not a provider is configured:
/// without one they say so).
pub(crate) fn routes(router: axum::Router<Arc<App>>) -> axum::Router<Arc<App>> {
    router
        .route(
            "/register/{code}/sign-in",
            axum::routing::post(start_device),
        )
        .route("/oidc/callback", axum::routing::get(callback))
        .route("/access/login", axum::routing::get(access_login))
        .route("/access/jwks", axum::routing::get(access_jwks))
}

/// Loads control's Access signing key (PKCS#8, hex, 0600), made on first
/// start.
pub(crate) fn load_access_key(
    state_dir: &std::path::Path,
) -> Result<gatehouse_oidc::Signer, crate::ControlError> {
    let path = state_dir.join(ACCESS_KEY_FILE);
    let bad = |why: String| crate::ControlError::State(format!("{}: {why}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let der = hex::decode(text.trim()).map_err(|e| bad(e.to_string()))?;
            gatehouse_oidc::Signer::from_pkcs8(&der).map_err(|e| bad(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = gatehouse_oidc::Signer::generate().map_err(|e| bad(e.to_string()))?;
            crate::ca::write_private(&path, &hex::encode(signer.pkcs8())).map_err(|source| {
                crate::ControlError::Io {
                    what: format!("writing {}", path.display()),
                    source,
                }
            })?;
            Ok(signer)
        }
        Err(source) => Err(crate::ControlError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// `GET /access/jwks`: the keys that verify control's grants.
async fn access_jwks(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.access_key.jwks_document().to_string(),
    )
        .into_response()
}

/// Whether `hostname` matches a pattern of `--access-hosts`.
fn access_host_allowed(patterns: &[String], hostname: &str) -> bool {
    let h = hostname.to_ascii_lowercase();
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => h.len() > suffix.len() + 1 && h.ends_with(&format!(".{suffix}")),
            None => h == p,
        }
    })
}

/// `name` or `name:port`, a DNS name and a port number.
fn split_authority(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)),
        None => (host, None),
    };
    (gatehouse_names::is_name(name) && name.contains('.') || name == "localhost")
        .then_some((name, port))
}

/// A local path to return to: one leading `/`, no scheme, no `//` or `/\`.
fn local_path(rd: &str) -> bool {
    rd.starts_with('/')
        && !rd.starts_with("//")
        && !rd.starts_with("/\\")
        && rd.len() <= 2048
        && !rd.chars().any(|c| c.is_control() || c == '\\')
}

#[derive(serde::Deserialize)]
struct AccessLogin {
    #[serde(default)]
    host: String,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    rd: String,
}

/// `GET /access/login`: the edge sends a browser here to sign in.
async fn access_login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<AccessLogin>,
) -> Response {
    match start_access(&app, &headers, q).await {
        Ok((url, cookie)) => {
            let mut r = Redirect::to(&url).into_response();
            if let Some(c) = cookie
                && let Ok(v) = axum::http::HeaderValue::from_str(&c)
            {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(r) => error_page(&r),
    }
}

async fn start_access(
    app: &App,
    headers: &HeaderMap,
    q: AccessLogin,
) -> Result<(String, Option<String>), Refused> {
    let Some(cfg) = app.config.oidc.as_ref() else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "this network has no identity provider",
        ));
    };
    let Some((name, _)) = split_authority(&q.host) else {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "the sign-in names no valid host",
        ));
    };
    if !access_host_allowed(&cfg.access_hosts, name) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!("{name} is not a host this network signs people in for"),
        ));
    }
    if q.nonce.len() < 16
        || q.nonce.len() > 128
        || !q
            .nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "the sign-in carries no valid nonce",
        ));
    }
    let rd = if local_path(&q.rd) {
        q.rd
    } else {
        "/".to_string()
    };
    let (browser, new_cookie) = match cookie(headers) {
        Some(v) => (v, None),
        None => {
            let v = gatehouse_oidc::random_token(32)
                .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            (v.clone(), Some(set_cookie(&v, 1800)))
        }
    };
    let url = begin(
        app,
        cfg,
        &browser,
        Purpose::Access {
            host: q.host.to_ascii_lowercase(),
            nonce: q.nonce,
            rd,
        },
    )
    .await?;
    Ok((url, new_cookie))
}

/// What the device page adds when a provider is configured: the cookie to
/// set (if the browser has none) and the sign-in form.
pub(crate) fn device_form(
    app: &App,
    headers: &HeaderMap,
    code: &str,
) -> Option<(Option<String>, String)> {
    app.config.oidc.as_ref()?;
    let (value, new) = match cookie(headers) {
        Some(v) => (v, None),
        None => {
            let v = gatehouse_oidc::random_token(32).ok()?;
            (v.clone(), Some(set_cookie(&v, 1800)))
        }
    };
    let form = format!(
        "<form method=post action=\"/register/{code}/sign-in\">\
         <input type=hidden name=csrf value=\"{value}\">\
         <p><button type=submit>Sign in to add this device to your account</button></p></form>\
         <p>Only sign in if you started this on your own device: the device will belong to you.</p>",
        code = esc(code),
        value = esc(&value),
    );
    Some((new, form))
}

#[derive(serde::Deserialize)]
struct StartForm {
    #[serde(default)]
    csrf: String,
}

fn error_page(r: &Refused) -> Response {
    page(
        r.status,
        "sign-in did not complete",
        &format!("<p>{}</p><p>Nothing was approved.</p>", esc(&r.why)),
    )
}

/// `POST /register/<code>/sign-in`: starts a sign-in for the device.
async fn start_device(
    State(app): State<Arc<App>>,
    Path(code): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<StartForm>,
) -> Response {
    match start(&app, &code, &headers, &form.csrf).await {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(r) => error_page(&r),
    }
}

async fn start(app: &App, code: &str, headers: &HeaderMap, csrf: &str) -> Result<String, Refused> {
    let Some(cfg) = app.config.oidc.as_ref() else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "this network has no identity provider: an administrator approves devices",
        ));
    };
    let browser = cookie(headers).filter(|c| c == csrf).ok_or_else(|| {
        refused(
            StatusCode::FORBIDDEN,
            "this sign-in was not started from the device's page in this browser; open the device's link again",
        )
    })?;
    if app.pending.get(code).is_none() {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "no device waits under this code (codes expire after 30 minutes); start again on the device",
        ));
    }
    begin(
        app,
        cfg,
        &browser,
        Purpose::Device {
            code: code.to_string(),
        },
    )
    .await
}

/// Records a flow for `purpose`, bound to the browser's cookie value, and
/// returns the provider's URL to send the browser to.
async fn begin(
    app: &App,
    cfg: &OidcConfig,
    browser: &str,
    purpose: Purpose,
) -> Result<String, Refused> {
    let (_, meta) = app.signins.metadata(cfg).await?;
    let internal =
        |e: gatehouse_oidc::Error| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let state = gatehouse_oidc::random_token(32).map_err(internal)?;
    let nonce = gatehouse_oidc::random_token(32).map_err(internal)?;
    let pkce = Pkce::new().map_err(internal)?;
    let scope = std::iter::once("openid")
        .chain(
            cfg.scopes
                .iter()
                .map(String::as_str)
                .filter(|s| *s != "openid"),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let redirect_uri = format!("{}/oidc/callback", app.url());
    let url = meta.authorize_url(&gatehouse_oidc::discovery::AuthorizeParams {
        client_id: &cfg.client_id,
        redirect_uri: &redirect_uri,
        scope: &scope,
        state: &state,
        nonce: &nonce,
        code_challenge: &pkce.challenge,
    });
    app.signins.insert(
        state,
        Flow {
            nonce,
            verifier: pkce.verifier,
            browser: hash(browser),
            purpose,
            since: Instant::now(),
        },
    )?;
    Ok(url)
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /oidc/callback`: the provider sends the browser back.
async fn callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<CallbackQuery>,
) -> Response {
    let clear = [(header::SET_COOKIE, set_cookie("", 0))];
    match finish(&app, &headers, q).await {
        Ok(done) => (clear, done).into_response(),
        Err(r) => {
            audit(&app, "oidc", "signin", "-", false, &r.why).await;
            (clear, error_page(&r)).into_response()
        }
    }
}

async fn finish(app: &App, headers: &HeaderMap, q: CallbackQuery) -> Result<Response, Refused> {
    let Some(cfg) = app.config.oidc.as_ref() else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "this network has no identity provider",
        ));
    };
    let flow = q
        .state
        .as_deref()
        .and_then(|s| app.signins.take(s))
        .ok_or_else(|| {
            refused(
                StatusCode::BAD_REQUEST,
                "this sign-in is unknown, expired or already finished; start again from the device's page",
            )
        })?;
    if cookie(headers).map(|c| hash(&c)) != Some(flow.browser.clone()) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "this sign-in was started in another browser; start again from the device's page",
        ));
    }
    if let Some(e) = q.error {
        let desc = q.error_description.unwrap_or_default();
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!("the identity provider did not sign you in: {e} {desc}"),
        ));
    }
    let code = q
        .code
        .ok_or_else(|| refused(StatusCode::BAD_REQUEST, "the provider sent no code"))?;
    let (http, meta) = app.signins.metadata(cfg).await?;
    let redirect_uri = format!("{}/oidc/callback", app.url());
    let auth = ClientAuth {
        id: &cfg.client_id,
        secret: &cfg.client_secret,
        in_body: meta.wants_secret_in_body(),
    };
    let tokens = http
        .exchange(&meta, &auth, &code, &flow.verifier, &redirect_uri)
        .await
        .map_err(|e| {
            refused(
                StatusCode::BAD_GATEWAY,
                format!("the code could not be exchanged: {}", error_chain(&e)),
            )
        })?;
    let raw = tokens
        .id_token
        .ok_or_else(|| refused(StatusCode::BAD_GATEWAY, "the provider sent no ID token"))?;
    let token = Token::parse(&raw).map_err(|e| {
        refused(
            StatusCode::FORBIDDEN,
            format!("the identity provider's token was refused: {e}"),
        )
    })?;
    let want = Expect {
        issuer: &cfg.issuer,
        client_id: &cfg.client_id,
        nonce: Some(&flow.nonce),
        now: app.now(),
        leeway: LEEWAY,
    };
    let claims = app.signins.verify(cfg, &token, &want).await?;
    match flow.purpose {
        Purpose::Device { code } => {
            let login = login_of(cfg, &claims, true)?;
            approve_device(app, &code, &login, &claims.sub).await
        }
        Purpose::Access { host, nonce, rd } => {
            // Who may pass is the edge's rules' business, not the joining
            // lists'.
            let login = login_of(cfg, &claims, false)?;
            grant(app, cfg, &claims, &login, &host, &nonce, &rd)
        }
    }
}

/// The edge's callback URL with a grant for `login`.
fn grant(
    app: &App,
    cfg: &OidcConfig,
    claims: &IdClaims,
    login: &str,
    host: &str,
    nonce: &str,
    rd: &str,
) -> Result<Response, Refused> {
    let now = app.now();
    let internal =
        |e: gatehouse_oidc::Error| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut c = serde_json::Map::new();
    c.insert("iss".into(), app.url().into());
    c.insert("aud".into(), format!("https://{host}").into());
    c.insert("sub".into(), login.into());
    c.insert("email".into(), login.into());
    c.insert("groups".into(), claims.strings(&cfg.groups_claim).into());
    if let Some(name) = claims.string("name") {
        c.insert("name".into(), name.into());
    }
    c.insert("nonce".into(), nonce.into());
    c.insert("rd".into(), rd.into());
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), (now + GRANT_LIFETIME).into());
    c.insert(
        "jti".into(),
        gatehouse_oidc::random_token(16).map_err(internal)?.into(),
    );
    let jwt = app.access_key.sign(&c).map_err(internal)?;
    tracing::info!(%login, %host, "signed in for Access");
    Ok(Redirect::to(&format!(
        "https://{host}/.gatehouse/access/callback?grant={jwt}"
    ))
    .into_response())
}

/// The login the claims name, if this network lets that person in.
fn login_of(cfg: &OidcConfig, c: &IdClaims, joining: bool) -> Result<String, Refused> {
    let claim = cfg.login_claim.as_str();
    let login = c
        .string(claim)
        .map(str::to_ascii_lowercase)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            refused(
                StatusCode::FORBIDDEN,
                format!("the provider's token has no {claim} claim to name you by"),
            )
        })?;
    if claim == "email" && !c.is_true("email_verified") {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!("the provider has not verified the e-mail address {login}"),
        ));
    }
    if !crate::admin::valid_login(&login) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!("{login:?} is not a usable login (expected name@domain)"),
        ));
    }
    let restricted = joining && (!cfg.allowed_domains.is_empty() || !cfg.allowed_users.is_empty());
    let domain = login.rsplit_once('@').map_or("", |(_, d)| d);
    let allowed = cfg
        .allowed_users
        .iter()
        .any(|u| u.eq_ignore_ascii_case(&login))
        || cfg
            .allowed_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
    if restricted && !allowed {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!("{login} may not join this network"),
        ));
    }
    Ok(login)
}

async fn approve_device(
    app: &App,
    code: &str,
    login: &str,
    sub: &str,
) -> Result<Response, Refused> {
    let actor = format!("oidc:{login}");
    match app.store.create_user(login).await {
        Ok(true) => {
            audit(
                app,
                &actor,
                "user.create",
                login,
                true,
                &format!("first sign-in (subject {sub})"),
            )
            .await;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot store a signed-in user");
            return Err(refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "control could not store the user",
            ));
        }
    }
    let row = crate::waiting::approve(app, code, login, &actor)
        .await
        .map_err(|e| {
            let status = StatusCode::from(&e);
            refused(status, format!("the device could not be added: {e}"))
        })?;
    Ok(page(
        StatusCode::OK,
        "device added",
        &format!(
            "<p><b>{host}</b> joined {network} as <b>{login}</b>.</p><p>You can close this page.</p>",
            host = esc(&row.name),
            network = esc(&app.config.domain()),
            login = esc(login),
        ),
    ))
}
