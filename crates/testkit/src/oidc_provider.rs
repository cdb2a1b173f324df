//! A real OpenID Connect provider for the sign-in tests: Ory Hydra
//! ([`OidcProvider`]), with a login and consent app of the harness's own
//! that signs in whichever test person the test chose
//! ([`OidcProvider::sign_in_as`]), or refuses ([`OidcProvider::refuse_login`]),
//! and a [`Browser`] that follows redirects by hand and keeps cookies.
//!
//! `hydra` is built by `scripts/install-test-deps` from the
//! `github.com/ory/hydra/v2` Go module at the version `interop/hydra/go.mod`
//! requires, into `~/.cache/gatehouse/hydra-<version>/` (or
//! `$GATEHOUSE_HYDRA_CACHE`), and located once per test binary
//! ([`installed`], [`hydra_or_skip`]).
//!
//! Each provider is one `hydra serve all` process on two free loopback
//! ports, public and admin, both HTTPS with a certificate from a test CA
//! ([`OidcProvider::ca_file`] is the file to trust), not in development
//! mode (so redirect URIs must be HTTPS or loopback, cookies are `Secure`,
//! the issuer is `https://127.0.0.1:<port>`), with its store in memory
//! (or in a SQLite file that outlives a restart: [`Options::persistent`]),
//! PKCE required by default, and Hydra's usage reporting switched off.
//!
//! Hydra has no user database: it sends the browser to a login app and a
//! consent app, which tell it through its admin API who signed in and what
//! to put into the tokens. The harness runs both on one HTTPS loopback
//! server: the login page accepts the chosen person's subject (never
//! remembered, so every sign-in asks again), the consent page grants the
//! requested scopes and audiences and puts the person's claims into the
//! ID token (and the userinfo answer): `email` and `email_verified` when
//! the `email` scope was granted, `name` when `profile` was, `groups`
//! always (a claim configured on the application, as Entra ID and Okta
//! do), and any extra claims of the [`Person`].
//!
//! Usage:
//!
//! ```no_run
//! # async fn f() {
//! use gatehouse_testkit::oidc_provider::{self, Browser, ClientSpec, OidcProvider, Person};
//! let Some(_) = oidc_provider::hydra_or_skip() else { return };
//! let idp = OidcProvider::start().await;
//! let client = idp
//!     .create_client(&ClientSpec::confidential("control", &["https://127.0.0.1:8443/oidc/callback"]))
//!     .await;
//! idp.sign_in_as(Person::new("alice-1", "alice@example.com").name("Alice").groups(&["eng"]));
//! // The product under test gets idp.issuer(), client.id, client.secret and
//! // trusts idp.ca_file(); the test's browser trusts the same CA (and the
//! // product's):
//! let browser = Browser::new(&[idp.ca_file()]);
//! // browser.follow(product_login_url, |_| false).await ...
//! # }
//! ```
//!
//! When a test fails, the provider's log is printed.

use crate::pki::{Leaf, Pki};
use crate::process::Proc;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long Hydra may take to start, report ready and make its signing keys
/// (RSA, 4096 bits: seconds each on a busy machine).
pub const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long one request of the harness to Hydra may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most redirects [`Browser::follow`] follows before giving up.
pub const MAX_REDIRECTS: usize = 20;

const INSTALL: &str = "scripts/install-test-deps";
/// Set (by `scripts/test`) to fail instead of skip when `hydra` is missing.
pub const REQUIRE_ENV: &str = "GATEHOUSE_REQUIRE_OIDC";

/// The Hydra version `interop/hydra/go.mod` requires (`v2.3.0`): the one
/// place it is recorded.
pub fn module_version() -> String {
    crate::gotools::required_version("interop/hydra/go.mod", "github.com/ory/hydra/v2")
}

/// Where the install script puts `hydra` (outside the repository):
/// `$GATEHOUSE_HYDRA_CACHE`, else `$XDG_CACHE_HOME/gatehouse/hydra-<version>`,
/// else `~/.cache/gatehouse/hydra-<version>`.
pub fn cache_dir() -> PathBuf {
    crate::gotools::cache_dir(
        "GATEHOUSE_HYDRA_CACHE",
        &format!("hydra-{}", module_version()),
    )
}

/// The `hydra` program, or why it cannot be used (located once per test
/// binary).
pub fn installed() -> Result<&'static Path, String> {
    static HYDRA: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HYDRA
        .get_or_init(|| {
            let p = cache_dir().join("hydra");
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "hydra (Ory Hydra {}, the test OpenID provider) missing at {}: run {INSTALL} (it builds it from interop/hydra/, once; CI always runs it)",
                    module_version(),
                    p.display()
                ))
            }
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// `hydra`, or `None` after printing `skipped: …` when it is missing;
/// panics instead when `GATEHOUSE_REQUIRE_OIDC` is set (as `scripts/test`
/// sets it, after installing it).
pub fn hydra_or_skip() -> Option<&'static Path> {
    match installed() {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os(REQUIRE_ENV).is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// A test person: who the login page says signed in, and the claims the
/// consent page puts into the ID token.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// The `sub` claim.
    pub subject: String,
    /// The `email` claim (with the `email` scope); none when `None`.
    pub email: Option<String>,
    /// The `email_verified` claim (with the `email` scope).
    pub email_verified: bool,
    /// The `name` claim (with the `profile` scope); none when `None`.
    pub name: Option<String>,
    /// The `groups` claim (always, even when empty).
    pub groups: Vec<String>,
    /// More claims for the ID token (they cannot replace Hydra's own:
    /// `iss`, `sub`, `aud`, `exp`, `iat`, `nonce`, …).
    pub extra: Map<String, Value>,
}

impl Person {
    /// A person with a verified email address, no name and no groups.
    pub fn new(subject: &str, email: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            email: Some(email.to_owned()),
            email_verified: true,
            name: None,
            groups: Vec::new(),
            extra: Map::new(),
        }
    }

    /// With this `name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// With these `groups`.
    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    /// With `email_verified: false`.
    pub fn unverified(mut self) -> Self {
        self.email_verified = false;
        self
    }

    /// Without an `email` claim.
    pub fn without_email(mut self) -> Self {
        self.email = None;
        self
    }

    /// With one more claim.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.extra.insert(name.to_owned(), value);
        self
    }

    /// The ID token claims for the granted `scopes`.
    fn id_token_claims(&self, scopes: &[String]) -> Map<String, Value> {
        let has = |s: &str| scopes.iter().any(|g| g == s);
        let mut c = self.extra.clone();
        if has("email") {
            if let Some(e) = &self.email {
                c.insert("email".into(), json!(e));
                c.insert("email_verified".into(), json!(self.email_verified));
            }
        }
        if has("profile") {
            if let Some(n) = &self.name {
                c.insert("name".into(), json!(n));
            }
        }
        c.insert("groups".into(), json!(self.groups));
        c
    }
}

/// What the login page does with the next sign-ins.
#[derive(Debug, Clone)]
enum LoginOutcome {
    /// No person chosen yet: the page answers 500 and records an error.
    Unset,
    Accept(Person),
    Refuse {
        error: String,
        description: String,
    },
}

/// What the provider's login, consent and error pages saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A person signed in for a client.
    Login {
        /// The person's subject.
        subject: String,
        /// The client that asked.
        client_id: String,
        /// The scopes the client asked for.
        requested_scopes: Vec<String>,
        /// The authorization request as the client sent it.
        request_url: String,
    },
    /// The login page refused (as chosen with [`OidcProvider::refuse_login`]).
    LoginRefused {
        /// The client that asked.
        client_id: String,
    },
    /// Consent given: the claims went into the ID token.
    Consent {
        /// The person's subject.
        subject: String,
        /// The client that asked.
        client_id: String,
        /// The scopes granted (all that were asked for).
        granted_scopes: Vec<String>,
    },
    /// Consent refused (as chosen with [`OidcProvider::refuse_consent`]).
    ConsentRefused {
        /// The client that asked.
        client_id: String,
    },
    /// Hydra showed its error page (for example for a redirect URI the
    /// client does not have), or the login app failed.
    Error {
        /// The OAuth error code.
        error: String,
        /// Hydra's description (with its hint).
        description: String,
    },
}

/// State shared by the provider and its login and consent app.
#[derive(Debug)]
struct AppState {
    admin_url: String,
    login: LoginOutcome,
    consent_refused: bool,
    events: Vec<Event>,
}

/// Settings of an [`OidcProvider`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Keep the store in a SQLite file in the provider's directory instead
    /// of memory, so that clients, signing keys and grants outlive
    /// [`OidcProvider::restart`]. With the store in memory a restart
    /// creates the clients made with [`OidcProvider::create_client`] again
    /// (same id and secret), but the signing keys are new.
    pub persistent: bool,
    /// Refuse authorization requests without PKCE (`oauth2.pkce.enforced`).
    pub require_pkce: bool,
    /// Lifetime of ID tokens (`ttl.id_token`; Hydra's default is an hour).
    pub id_token_ttl: Option<Duration>,
    /// Lifetime of access tokens (`ttl.access_token`; default an hour).
    pub access_token_ttl: Option<Duration>,
    /// Lifetime of authorization codes (`ttl.auth_code`; default 10 minutes).
    pub auth_code_ttl: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            persistent: false,
            require_pkce: true,
            id_token_ttl: None,
            access_token_ttl: None,
            auth_code_ttl: None,
        }
    }
}

/// An OAuth 2 client to create with [`OidcProvider::create_client`].
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// The `client_id`.
    pub id: String,
    /// The secret, for a confidential client (`client_secret_basic`); a
    /// public client (`None`) authenticates with nothing but PKCE.
    pub secret: Option<String>,
    /// Where the provider may send the browser back with a code.
    pub redirect_uris: Vec<String>,
    /// Where the provider may send the browser after a logout.
    pub post_logout_redirect_uris: Vec<String>,
    /// The scopes the client may ask for.
    pub scopes: Vec<String>,
    /// `client_secret_basic` (default) or `client_secret_post` for a
    /// confidential client.
    pub token_endpoint_auth_method: String,
}

impl ClientSpec {
    /// A confidential client with a random secret, allowed `openid email
    /// profile groups offline_access`.
    pub fn confidential(id: &str, redirect_uris: &[&str]) -> Self {
        let secret: [u8; 24] = rand::random();
        Self {
            id: id.to_owned(),
            secret: Some(base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                secret,
            )),
            redirect_uris: redirect_uris.iter().map(|u| u.to_string()).collect(),
            post_logout_redirect_uris: Vec::new(),
            scopes: ["openid", "email", "profile", "groups", "offline_access"]
                .map(String::from)
                .to_vec(),
            token_endpoint_auth_method: "client_secret_basic".into(),
        }
    }

    /// A public client (no secret; PKCE only).
    pub fn public(id: &str, redirect_uris: &[&str]) -> Self {
        Self {
            secret: None,
            token_endpoint_auth_method: "none".into(),
            ..Self::confidential(id, redirect_uris)
        }
    }
}

/// A client the provider knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// `client_id`.
    pub id: String,
    /// `client_secret` (none for a public client).
    pub secret: Option<String>,
}

/// A running Ory Hydra with the harness's login and consent app.
pub struct OidcProvider {
    hydra: Option<Proc>,
    program: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
    ca: PathBuf,
    public_port: u16,
    admin_port: u16,
    app_addr: std::net::SocketAddr,
    state: Arc<Mutex<AppState>>,
    clients: Mutex<Vec<ClientSpec>>,
    admin: reqwest::Client,
    options: Options,
    app: tokio::task::JoinHandle<()>,
    // The CA of a provider that made its own.
    own_pki: Option<Pki>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer())
            .field("admin", &self.admin_url())
            .field("app", &self.app_addr)
            .finish()
    }
}

impl OidcProvider {
    /// Starts a provider with a CA of its own and the default [`Options`].
    /// Panics, naming the install script, when `hydra` is missing.
    pub async fn start() -> Self {
        let pki = Pki::new();
        let mut p = Self::start_with(&pki, Options::default()).await;
        p.own_pki = Some(pki);
        p
    }

    /// Starts a provider whose certificates `pki` issues (the CA the
    /// product under test already trusts).
    pub async fn start_with(pki: &Pki, options: Options) -> Self {
        let program = installed().unwrap_or_else(|e| panic!("{e}")).to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-hydra-")
            .tempdir()
            .unwrap();
        // The files live with the provider, whatever becomes of `pki`.
        let leaf = pki.leaf(&["127.0.0.1", "localhost"]);
        let ca = dir.path().join("ca.pem");
        std::fs::copy(&pki.ca, &ca).unwrap();
        let tls = Leaf {
            cert: dir.path().join("tls.pem"),
            key: dir.path().join("tls.key"),
        };
        std::fs::copy(&leaf.cert, &tls.cert).unwrap();
        std::fs::copy(&leaf.key, &tls.key).unwrap();

        let admin = http_client(pki);
        let state = Arc::new(Mutex::new(AppState {
            admin_url: String::new(),
            login: LoginOutcome::Unset,
            consent_refused: false,
            events: Vec::new(),
        }));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = listener.local_addr().unwrap();
        let app = tokio::spawn(login_app::serve(
            listener,
            tls.server_config(&[b"http/1.1"]),
            login_app::App {
                admin: admin.clone(),
                state: state.clone(),
            },
        ));
        let mut p = Self {
            hydra: None,
            program,
            config: dir.path().join("hydra.json"),
            dir,
            ca,
            public_port: 0,
            admin_port: 0,
            app_addr,
            state,
            clients: Mutex::new(Vec::new()),
            admin,
            options,
            app,
            own_pki: None,
        };
        // Ports are chosen free, then bound by Hydra: another process may
        // take one in between, and Hydra then exits. Before anyone has seen
        // the issuer, choosing again is harmless.
        for attempt in 1..=5 {
            p.public_port = crate::free_port();
            p.admin_port = crate::free_port();
            p.state.lock().unwrap().admin_url = p.admin_url();
            p.write_config(&tls);
            if p.options.persistent {
                p.migrate();
            }
            if p.launch().await {
                return p;
            }
            eprintln!("hydra exited before it was ready (attempt {attempt}); choosing other ports");
        }
        p.dump();
        panic!("hydra did not start; its log is above");
    }

    /// The issuer (`https://127.0.0.1:<port>`): the `iss` of its tokens and
    /// the base of `/.well-known/openid-configuration`.
    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.public_port)
    }

    /// The discovery document's URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    /// The admin API's base URL.
    pub fn admin_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.admin_port)
    }

    /// The login and consent app's base URL (`/login`, `/consent`,
    /// `/error`).
    pub fn app_url(&self) -> String {
        format!("https://{}", self.app_addr)
    }

    /// The PEM file of the CA whose certificates the provider and its
    /// login app serve: what a client of the provider must trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// The provider's directory (configuration, log, database).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// From now on, sign-ins succeed as `person` (until changed).
    pub fn sign_in_as(&self, person: Person) {
        self.state.lock().unwrap().login = LoginOutcome::Accept(person);
    }

    /// From now on, the login page refuses (`access_denied` with this
    /// description at the client's redirect URI), until
    /// [`OidcProvider::sign_in_as`].
    pub fn refuse_login(&self, description: &str) {
        self.state.lock().unwrap().login = LoginOutcome::Refuse {
            error: "access_denied".into(),
            description: description.to_owned(),
        };
    }

    /// From now on, the consent page refuses (or no longer, with `false`).
    pub fn refuse_consent(&self, refuse: bool) {
        self.state.lock().unwrap().consent_refused = refuse;
    }

    /// What the login, consent and error pages saw so far.
    pub fn events(&self) -> Vec<Event> {
        self.state.lock().unwrap().events.clone()
    }

    /// Creates an OAuth 2 client through the admin API (again after a
    /// restart of an in-memory provider).
    pub async fn create_client(&self, spec: &ClientSpec) -> Client {
        let client = self.register(spec).await;
        self.clients.lock().unwrap().push(spec.clone());
        client
    }

    async fn register(&self, spec: &ClientSpec) -> Client {
        let mut body = json!({
            "client_id": spec.id,
            "client_name": spec.id,
            "redirect_uris": spec.redirect_uris,
            "post_logout_redirect_uris": spec.post_logout_redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": spec.scopes.join(" "),
            "token_endpoint_auth_method": spec.token_endpoint_auth_method,
        });
        if let Some(s) = &spec.secret {
            body["client_secret"] = json!(s);
        }
        let r = self
            .admin
            .post(format!("{}/admin/clients", self.admin_url()))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating client {}: {e}", spec.id));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "creating client {}: {text}",
            spec.id
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        Client {
            id: v["client_id"].as_str().unwrap().to_owned(),
            secret: spec.secret.clone(),
        }
    }

    /// Deletes a client through the admin API.
    pub async fn delete_client(&self, id: &str) {
        let r = self
            .admin
            .delete(format!("{}/admin/clients/{id}", self.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "deleting client {id}");
        self.clients.lock().unwrap().retain(|c| c.id != id);
    }

    /// Whether Hydra is running.
    pub fn running(&mut self) -> bool {
        self.hydra.as_mut().is_some_and(Proc::running)
    }

    /// Stops Hydra (SIGTERM) and waits for it: the issuer refuses
    /// connections until [`OidcProvider::restart`]. The login app keeps
    /// running.
    pub fn stop(&mut self) {
        if let Some(mut h) = self.hydra.take() {
            h.signal("TERM");
            h.wait();
        }
    }

    /// Kills Hydra outright (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        // Dropping a `Proc` kills and reaps it.
        self.hydra.take();
    }

    /// Starts Hydra again on the same ports, with the same issuer and
    /// certificate, and waits until it is ready. An in-memory provider
    /// starts empty: its clients are created again, with new signing keys.
    pub async fn restart(&mut self) {
        self.stop();
        if !self.launch().await {
            self.dump();
            panic!(
                "hydra did not start again on ports {} and {}; its log is above",
                self.public_port, self.admin_port
            );
        }
        if !self.options.persistent {
            let specs = self.clients.lock().unwrap().clone();
            for spec in &specs {
                self.register(spec).await;
            }
        }
    }

    /// Hydra's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hydra.log")).unwrap_or_default()
    }

    fn dump(&self) {
        let log = self.log();
        // Hydra logs every request with its challenges: the tail, each
        // line cut short.
        let lines: Vec<String> = log
            .lines()
            .map(|l| match l.char_indices().nth(600) {
                Some((i, _)) => format!("{}…", &l[..i]),
                None => l.to_owned(),
            })
            .collect();
        eprintln!(
            "----- hydra (last lines of {}) -----\n{}",
            self.dir.path().join("hydra.log").display(),
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
    }

    fn dsn(&self) -> String {
        if self.options.persistent {
            format!(
                "sqlite://{}?_fk=true&_journal_mode=WAL",
                self.dir.path().join("hydra.sqlite").display()
            )
        } else {
            "memory".into()
        }
    }

    fn write_config(&self, tls: &Leaf) {
        let app = self.app_url();
        let mut ttl = Map::new();
        for (key, d) in [
            ("id_token", self.options.id_token_ttl),
            ("access_token", self.options.access_token_ttl),
            ("auth_code", self.options.auth_code_ttl),
        ] {
            if let Some(d) = d {
                ttl.insert(key.into(), json!(format!("{}ms", d.as_millis())));
            }
        }
        let secret: [u8; 32] = rand::random();
        let config = json!({
            "dsn": self.dsn(),
            "serve": {
                "public": { "host": "127.0.0.1", "port": self.public_port },
                "admin": { "host": "127.0.0.1", "port": self.admin_port },
                "tls": {
                    "enabled": true,
                    "cert": { "path": tls.cert },
                    "key": { "path": tls.key },
                },
            },
            "urls": {
                "self": { "issuer": self.issuer() },
                "login": format!("{app}/login"),
                "consent": format!("{app}/consent"),
                "error": format!("{app}/error"),
            },
            "secrets": { "system": [hex(&secret)] },
            "oauth2": { "pkce": { "enforced": self.options.require_pkce } },
            "ttl": ttl,
            "webfinger": {
                "oidc_discovery": {
                    "supported_scope": ["email", "profile", "groups"],
                    "supported_claims": ["email", "email_verified", "name", "groups"],
                },
            },
            "log": { "level": "info", "leak_sensitive_values": true },
        });
        std::fs::write(&self.config, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .args(["--config", &self.config.display().to_string()])
            // Hydra reads its settings from the environment too: only ours.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            // No usage reports to Ory.
            .env("SQA_OPT_OUT", "true");
        cmd
    }

    /// Creates the tables of a persistent store (once; a no-op after).
    fn migrate(&self) {
        let out = self
            .command(&["migrate", "sql", "up", "--read-from-env", "--yes"])
            .env("DSN", self.dsn())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hydra migrate sql up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `hydra serve all`; `false` when it exited before it was ready.
    async fn launch(&mut self) -> bool {
        let mut cmd = self.command(&["serve", "all", "--sqa-opt-out"]);
        cmd.current_dir(self.dir.path());
        let mut proc = Proc::start("hydra", self.dir.path(), cmd);
        // Ready, and the signing keys made: Hydra makes its RSA keys (4096
        // bits) on first use, which on a busy machine takes longer than its
        // 10 s limit for an answer, and that first answer is then cut off.
        // The discovery document makes the ID token key, the key set the
        // access token key; both are kept (in the store) once made.
        let ready = [
            format!("{}/health/ready", self.admin_url()),
            format!("{}/health/ready", self.issuer()),
            self.discovery_url(),
            format!("{}/.well-known/jwks.json", self.issuer()),
        ];
        let end = Instant::now() + START_DEADLINE;
        loop {
            let mut all = true;
            for url in &ready {
                all = all
                    && match self.admin.get(url).send().await {
                        Ok(r) => r.status() == StatusCode::OK,
                        Err(_) => false,
                    };
            }
            if all {
                self.hydra = Some(proc);
                return true;
            }
            if !proc.running() {
                return false;
            }
            if Instant::now() > end {
                self.hydra = Some(proc);
                self.dump();
                panic!("hydra not ready after {START_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.app.abort();
        if std::thread::panicking() {
            self.dump();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP client trusting only `pki`'s CA, never following redirects.
fn http_client(pki: &Pki) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(pki.client_config(&[b"http/1.1"]))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// A browser for the sign-in tests: HTTPS trusting the given CAs only,
/// cookies kept per site, redirects followed by hand so that a test sees
/// (and may stop at) each one.
#[derive(Debug, Clone)]
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

/// Where [`Browser::follow`] ended.
#[derive(Debug)]
pub struct Followed {
    /// Every URL requested, in order.
    pub visited: Vec<Url>,
    /// The redirect target the stop condition matched (not requested).
    pub stopped_at: Option<Url>,
    /// Status of the last response (a redirect when stopped).
    pub status: StatusCode,
    /// Body of the last response.
    pub body: String,
}

impl Followed {
    /// The query parameter `name` of the URL stopped at.
    pub fn param(&self, name: &str) -> Option<String> {
        let u = self.stopped_at.as_ref()?;
        u.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl Browser {
    /// A browser trusting the CAs in these PEM files.
    pub fn new(ca_files: &[&Path]) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for f in ca_files {
            for c in rustls::pki_types::CertificateDer::pem_file_iter(f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone())
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap();
        Self { client, jar }
    }

    /// The HTTP client (cookies kept, no redirects followed), for requests
    /// of the test's own.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The `Cookie` header this browser would send to `url`.
    pub fn cookies(&self, url: &str) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let v = self.jar.cookies(&Url::parse(url).unwrap())?;
        Some(v.to_str().unwrap().to_owned())
    }

    /// GETs `url`, then each `Location` it is redirected to, until a
    /// redirect's target satisfies `stop` (it is not requested: a client's
    /// redirect URI need not be served) or an answer is not a redirect.
    /// Panics after [`MAX_REDIRECTS`] redirects or on a connection error.
    pub async fn follow(&self, url: &str, stop: impl Fn(&Url) -> bool) -> Followed {
        let mut next = Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut visited = Vec::new();
        for _ in 0..=MAX_REDIRECTS {
            visited.push(next.clone());
            let r = self
                .client
                .get(next.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {next}: {e} (visited {visited:?})"));
            let status = r.status();
            let location = r
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|l| l.to_str().unwrap().to_owned());
            let target = match location {
                Some(l) if status.is_redirection() => next
                    .join(&l)
                    .unwrap_or_else(|e| panic!("bad Location {l:?} from {next}: {e}")),
                _ => {
                    let body = r.text().await.unwrap_or_default();
                    return Followed {
                        visited,
                        stopped_at: None,
                        status,
                        body,
                    };
                }
            };
            if stop(&target) {
                return Followed {
                    visited,
                    stopped_at: Some(target),
                    status,
                    body: r.text().await.unwrap_or_default(),
                };
            }
            next = target;
        }
        panic!("more than {MAX_REDIRECTS} redirects: {visited:?}");
    }

    /// Opens a waiting device's page at control (`url`, as the device
    /// printed it) and presses its Sign-in button: the answer to the
    /// form's POST (a redirect to the provider, or a refusal).
    pub async fn press_device_sign_in(&self, url: &str) -> reqwest::Response {
        let page = self.client.get(url).send().await.unwrap();
        assert_eq!(page.status(), 200, "the device's page");
        let html = page.text().await.unwrap();
        let csrf = form_field(&html, "csrf").unwrap_or_else(|| panic!("no sign-in form: {html}"));
        self.client
            .post(format!("{url}/sign-in"))
            .form(&[("csrf", csrf)])
            .send()
            .await
            .unwrap()
    }

    /// The whole sign-in on a device's page, up to the provider's redirect
    /// back to control at `control_url` (not requested): the callback URL.
    pub async fn device_sign_in_until_callback(&self, url: &str, control_url: &str) -> String {
        let r = self.press_device_sign_in(url).await;
        let status = r.status();
        let to = r
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let Some(to) = to.filter(|_| status == StatusCode::SEE_OTHER) else {
            panic!("{status}: {}", r.text().await.unwrap_or_default());
        };
        let cb = format!("{control_url}/oidc/callback");
        let f = self.follow(&to, |u| u.as_str().starts_with(&cb)).await;
        f.stopped_at
            .unwrap_or_else(|| {
                panic!(
                    "the provider did not send the browser back: {} {}",
                    f.status, f.body
                )
            })
            .to_string()
    }
}

/// The value of the hidden form field `name` of one of control's pages.
pub fn form_field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name={name} value=\""))?;
    let rest = &html[at + name.len() + 13..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The provider's discovery document (the fields the tests use).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// `issuer`.
    pub issuer: String,
    /// `authorization_endpoint`.
    pub authorization_endpoint: String,
    /// `token_endpoint`.
    pub token_endpoint: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
    /// `userinfo_endpoint`.
    pub userinfo_endpoint: String,
    /// `end_session_endpoint`.
    pub end_session_endpoint: String,
}

mod login_app {
    //! The login, consent and error pages Hydra sends the browser to
    //! (`urls.login`, `urls.consent`, `urls.error`). Logins are never
    //! remembered, so an RP-initiated logout has no session to end and
    //! Hydra sends the browser straight back: no logout page.

    use super::{AppState, Event, LoginOutcome};
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use reqwest::{Method, Url};
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    pub(super) struct App {
        pub(super) admin: reqwest::Client,
        pub(super) state: Arc<Mutex<AppState>>,
    }

    pub(super) async fn serve(
        listener: tokio::net::TcpListener,
        tls: rustls::ServerConfig,
        app: App,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(app.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    }

    fn page(status: StatusCode, text: String) -> Response<Full<Bytes>> {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(text)))
            .unwrap()
    }

    fn redirect(to: &str) -> Response<Full<Bytes>> {
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", to)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    impl App {
        async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
            let query: Vec<(String, String)> = Url::parse(&format!("https://app{}", req.uri()))
                .map(|u| u.query_pairs().into_owned().collect())
                .unwrap_or_default();
            let param = |name: &str| {
                query
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let result = match req.uri().path() {
                "/login" => match param("login_challenge") {
                    Some(c) => self.login(&c).await,
                    None => Err("no login_challenge".into()),
                },
                "/consent" => match param("consent_challenge") {
                    Some(c) => self.consent(&c).await,
                    None => Err("no consent_challenge".into()),
                },
                "/error" => {
                    let error = param("error").unwrap_or_default();
                    let description = [param("error_description"), param("error_hint")]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ");
                    self.record(Event::Error {
                        error: error.clone(),
                        description: description.clone(),
                    });
                    return page(
                        StatusCode::BAD_REQUEST,
                        format!("provider error: {error}: {description}\n"),
                    );
                }
                _ => return page(StatusCode::NOT_FOUND, "not found\n".into()),
            };
            match result {
                Ok(to) => redirect(&to),
                Err(e) => {
                    self.record(Event::Error {
                        error: "login_app".into(),
                        description: e.clone(),
                    });
                    page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("test login app: {e}\n"),
                    )
                }
            }
        }

        fn record(&self, e: Event) {
            self.state.lock().unwrap().events.push(e);
        }

        /// Calls `/admin/oauth2/auth/requests/<path>?<kind>_challenge=<challenge>`.
        async fn admin(
            &self,
            method: Method,
            path: &str,
            (kind, challenge): (&str, &str),
            body: Option<Value>,
        ) -> Result<Value, String> {
            let base = self.state.lock().unwrap().admin_url.clone();
            let mut url = Url::parse(&format!("{base}/admin/oauth2/auth/requests/{path}"))
                .map_err(|e| format!("{base}: {e}"))?;
            url.query_pairs_mut()
                .append_pair(&format!("{kind}_challenge"), challenge);
            let mut r = self.admin.request(method.clone(), url.clone());
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
            let status = r.status();
            let text = r.text().await.map_err(|e| format!("{method} {url}: {e}"))?;
            if !status.is_success() {
                return Err(format!("{method} {url}: {status}: {text}"));
            }
            serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}: {text}"))
        }

        fn redirect_to(v: &Value) -> Result<String, String> {
            v["redirect_to"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("no redirect_to in {v}"))
        }

        async fn login(&self, challenge: &str) -> Result<String, String> {
            let q = ("login", challenge);
            let req = self.admin(Method::GET, "login", q, None).await?;
            let client_id = req["client"]["client_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let outcome = self.state.lock().unwrap().login.clone();
            match outcome {
                LoginOutcome::Unset => Err(
                    "no test person chosen: call OidcProvider::sign_in_as before signing in".into(),
                ),
                LoginOutcome::Refuse { error, description } => {
                    let v = self
                        .admin(
                            Method::PUT,
                            "login/reject",
                            q,
                            Some(json!({
                                "error": error,
                                "error_description": description,
                                "status_code": 403,
                            })),
                        )
                        .await?;
                    self.record(Event::LoginRefused { client_id });
                    Self::redirect_to(&v)
                }
                LoginOutcome::Accept(person) => {
                    // A remembered session (never made here) must keep its
                    // subject.
                    if req["skip"].as_bool() == Some(true)
                        && req["subject"].as_str() != Some(person.subject.as_str())
                    {
                        return Err(format!(
                            "provider remembers subject {} but {} was chosen",
                            req["subject"], person.subject
                        ));
                    }
                    let v = self
                        .admin(
                            Method::PUT,
                            "login/accept",
                            q,
                            Some(json!({ "subject": person.subject, "remember": false })),
                        )
                        .await?;
                    self.record(Event::Login {
                        subject: person.subject.clone(),
                        client_id,
                        requested_scopes: strings(&req["requested_scope"]),
                        request_url: req["request_url"].as_str().unwrap_or_default().to_owned(),
                    });
                    Self::redirect_to(&v)
                }
            }
        }

        async fn consent(&self, challenge: &str) -> Result<String, String> {
            let q = ("consent", challenge);
            let req = self.admin(Method::GET, "consent", q, None).await?;
            let client_id = req["client"]["client_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let subject = req["subject"].as_str().unwrap_or_default().to_owned();
            let (refused, person) = {
                let s = self.state.lock().unwrap();
                let person = match &s.login {
                    LoginOutcome::Accept(p) if p.subject == subject => Some(p.clone()),
                    _ => None,
                };
                (s.consent_refused, person)
            };
            if refused {
                let v = self
                    .admin(
                        Method::PUT,
                        "consent/reject",
                        q,
                        Some(json!({
                            "error": "access_denied",
                            "error_description": "consent refused",
                            "status_code": 403,
                        })),
                    )
                    .await?;
                self.record(Event::ConsentRefused { client_id });
                return Self::redirect_to(&v);
            }
            let person = person.ok_or_else(|| {
                format!("consent for subject {subject}, who is no longer the chosen person")
            })?;
            let scopes = strings(&req["requested_scope"]);
            let claims = person.id_token_claims(&scopes);
            let v = self
                .admin(
                    Method::PUT,
                    "consent/accept",
                    q,
                    Some(json!({
                        "grant_scope": scopes,
                        "grant_access_token_audience": strings(&req["requested_access_token_audience"]),
                        "remember": false,
                        "session": { "id_token": claims },
                    })),
                )
                .await?;
            self.record(Event::Consent {
                subject,
                client_id,
                granted_scopes: scopes,
            });
            Self::redirect_to(&v)
        }
    }
}
