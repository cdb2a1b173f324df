//! Routes registered at run time (by the Kubernetes operator), next to the
//! ones in `edge.yaml`. A caller authenticates with a tunnel's token and may
//! register, for that tunnel only, host names matching the patterns
//! `route_api.hostnames` lists for it; it can neither take a host name of
//! the config file nor one another tunnel registered. Registrations are
//! kept in a JSON file (written atomically, mode 0600) and survive restarts
//! and config reloads.
//!
//! ```text
//! GET    /api/v1/routes          this tunnel's routes
//! PUT    /api/v1/routes/{host}   {"hostname", "owner", "default", "rules": [{"path", "action"}]}
//! DELETE /api/v1/routes/{host}
//! ```

use crate::certs::CertStore;
use crate::config::{CertFiles, Route};
use crate::path::{Action, PathRuleSpec, PathRules, RuleError};
use crate::tokens::TokenStore;
use bytes::Bytes;
use gatehouse_ops::Chain;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tracing::{info, warn};

/// `route_api:` in `edge.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteApiConfig {
    /// HTTPS address of the API (it presents the tunnel certificate).
    pub listen: SocketAddr,
    /// Where registrations are kept.
    pub store: PathBuf,
    /// Certificate for registered host names (for example a wildcard);
    /// without it they get theirs from ACME.
    #[serde(default)]
    pub tls: Option<CertFiles>,
    /// Tunnel name → host name patterns its token may register
    /// (`blog.example.com`, or `*.example.com` for any name below it).
    pub hostnames: BTreeMap<String, Vec<String>>,
}

/// One registered route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// Host name.
    pub hostname: String,
    /// Who registered it (free text, e.g. `ingress/blog/blog`).
    #[serde(default)]
    pub owner: String,
    /// Decision when no rule matches.
    pub default: Action,
    /// Path rules.
    #[serde(default)]
    pub rules: Vec<PathRuleSpec>,
    /// The tunnel (set by the edge from the caller's token).
    #[serde(default)]
    pub tunnel: String,
}

/// The API's state.
#[derive(Debug)]
pub struct RouteApi {
    cfg: RouteApiConfig,
    registered: RwLock<BTreeMap<String, Registered>>,
    statics: RwLock<Vec<String>>,
}

fn pattern_allows(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(base) => host.ends_with(&format!(".{base}")),
        None => pattern == host,
    }
}

/// Why a registration's rules are refused.
#[derive(Debug, thiserror::Error)]
enum CompileError {
    /// A path rule is invalid.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Identity requirements come only from the config file.
    #[error("identity requirements are set in the edge's config file, not through the route API")]
    Identity,
}

fn compile(r: &Registered) -> Result<Route, CompileError> {
    let rules = PathRules::new(&r.rules, r.default)?;
    if rules.needs_identity() {
        return Err(CompileError::Identity);
    }
    Ok(Route {
        tunnel: r.tunnel.clone(),
        rules,
    })
}

impl RouteApi {
    /// Loads the registrations kept in `cfg.store` (none when missing).
    ///
    /// # Errors
    /// When the file exists but is unreadable.
    pub fn load(cfg: RouteApiConfig, statics: Vec<String>) -> Result<Self, std::io::Error> {
        let registered: BTreeMap<String, Registered> = match std::fs::read(&cfg.store) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(RouteApi {
            cfg,
            registered: RwLock::new(registered),
            statics: RwLock::new(statics),
        })
    }

    /// The compiled registered routes (to merge with the config's).
    pub fn routes(&self) -> BTreeMap<String, Route> {
        let g = self.registered.read().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter_map(|(h, r)| compile(r).ok().map(|c| (h.clone(), c)))
            .collect()
    }

    /// Host names registered so far.
    pub fn hostnames(&self) -> Vec<String> {
        let g = self.registered.read().unwrap_or_else(|p| p.into_inner());
        g.keys().cloned().collect()
    }

    /// The certificate files for registered names, if configured.
    pub fn tls(&self) -> Option<&CertFiles> {
        self.cfg.tls.as_ref()
    }

    /// The listen address.
    pub fn listen(&self) -> SocketAddr {
        self.cfg.listen
    }

    /// Host names of the config file (which the API may not take).
    pub fn set_statics(&self, statics: Vec<String>) {
        *self.statics.write().unwrap_or_else(|p| p.into_inner()) = statics;
    }

    fn save(&self, map: &BTreeMap<String, Registered>) -> Result<(), std::io::Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.cfg.store.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(map).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.cfg.store)
    }

    /// Answers one request from the holder of `tunnel`'s token.
    pub fn answer(
        &self,
        tunnel: &str,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> (StatusCode, String, Option<Registered>) {
        let err = |c: StatusCode, m: String| (c, serde_json::json!({"error": m}).to_string(), None);
        let host = match path.strip_prefix("/api/v1/routes") {
            Some("") | Some("/") => None,
            Some(rest) => Some(rest.trim_start_matches('/').to_ascii_lowercase()),
            None => return err(StatusCode::NOT_FOUND, "no such path".into()),
        };
        match (method, host) {
            (&Method::GET, None) => {
                let g = self.registered.read().unwrap_or_else(|p| p.into_inner());
                let mine: Vec<&Registered> = g.values().filter(|r| r.tunnel == tunnel).collect();
                (
                    StatusCode::OK,
                    serde_json::to_string(&mine).unwrap_or_default(),
                    None,
                )
            }
            (&Method::PUT, Some(host)) => {
                let mut r: Registered = match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid route: {e}")),
                };
                if r.hostname != host || !gatehouse_names::is_name(&host) {
                    return err(
                        StatusCode::BAD_REQUEST,
                        format!("{host:?}: the path and body must name one lower-case host name"),
                    );
                }
                let allowed = self
                    .cfg
                    .hostnames
                    .get(tunnel)
                    .is_some_and(|ps| ps.iter().any(|p| pattern_allows(p, &host)));
                if !allowed {
                    return err(
                        StatusCode::FORBIDDEN,
                        format!("tunnel {tunnel} may not register {host} (route_api.hostnames)"),
                    );
                }
                if self
                    .statics
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&host)
                {
                    return err(
                        StatusCode::CONFLICT,
                        format!("{host} is configured in the edge's config file"),
                    );
                }
                r.tunnel = tunnel.to_string();
                if let Err(e) = compile(&r) {
                    return err(StatusCode::BAD_REQUEST, gatehouse_ops::chain(&e));
                }
                let mut g = self.registered.write().unwrap_or_else(|p| p.into_inner());
                if let Some(cur) = g.get(&host) {
                    if cur.tunnel != tunnel {
                        return err(
                            StatusCode::CONFLICT,
                            format!("{host} is registered by another tunnel"),
                        );
                    }
                }
                let mut next = g.clone();
                next.insert(host.clone(), r.clone());
                if let Err(e) = self.save(&next) {
                    return err(StatusCode::INTERNAL_SERVER_ERROR, format!("saving: {e}"));
                }
                *g = next;
                info!(%host, tunnel, owner = %r.owner, "route registered");
                (
                    StatusCode::OK,
                    serde_json::to_string(&r).unwrap_or_default(),
                    Some(r),
                )
            }
            (&Method::DELETE, Some(host)) => {
                let mut g = self.registered.write().unwrap_or_else(|p| p.into_inner());
                match g.get(&host) {
                    None => return (StatusCode::NOT_FOUND, String::new(), None),
                    Some(cur) if cur.tunnel != tunnel => {
                        return err(
                            StatusCode::FORBIDDEN,
                            format!("{host} is registered by another tunnel"),
                        );
                    }
                    Some(_) => {}
                }
                let mut next = g.clone();
                next.remove(&host);
                if let Err(e) = self.save(&next) {
                    return err(StatusCode::INTERNAL_SERVER_ERROR, format!("saving: {e}"));
                }
                *g = next;
                info!(%host, tunnel, "route removed");
                (StatusCode::NO_CONTENT, String::new(), None)
            }
            _ => err(StatusCode::METHOD_NOT_ALLOWED, "unsupported".into()),
        }
    }
}

/// Called after every change of the registrations.
pub type OnChange = Arc<dyn Fn(Option<&Registered>) + Send + Sync>;

/// What the server needs besides the API state.
#[derive(Clone)]
pub struct Shared {
    /// The API.
    pub api: Arc<RouteApi>,
    /// Tunnel tokens.
    pub tokens: Arc<RwLock<TokenStore>>,
    /// Called after every change (rebuilds the route table, installs
    /// certificates).
    pub changed: OnChange,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

async fn handle(s: Shared, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |c: StatusCode, body: String| {
        Response::builder()
            .status(c)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let tunnel = {
        let g = s.tokens.read().unwrap_or_else(|p| p.into_inner());
        g.verify(&token, crate::tokens::now_unix())
    };
    let tunnel = match tunnel {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %Chain(&e), "route API: refused credentials");
            return reply(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "a valid tunnel token is required"}).to_string(),
            );
        }
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, String::new()),
    };
    let (code, out, reg) = s.api.answer(&tunnel, &method, &path, &body);
    if code.is_success() && method != Method::GET {
        (s.changed)(reg.as_ref());
    }
    reply(code, out)
}

/// Serves the API over TLS until the task is dropped, under `gate`'s limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gate: gatehouse_limits::Gate,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Shared,
) {
    loop {
        let (tcp, _, slot) = gate.accept(&listener).await;
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let Ok(tls) = gate.handshake(&acceptor, tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let s = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(s, req).await) }
            });
            let _ = gate.serve(tls, slot, svc, std::future::pending()).await;
        });
    }
}

/// Installs the certificate files for `host` when configured.
pub fn install_cert(
    api: &RouteApi,
    store: &CertStore,
    host: &str,
) -> Result<(), crate::certs::CertError> {
    if let Some(t) = api.tls() {
        store.load_files(host, &t.cert, &t.key)?;
    }
    Ok(())
}

/// The store path, for messages.
pub fn store_path(api: &RouteApi) -> &Path {
    &api.cfg.store
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn api(dir: &Path) -> RouteApi {
        RouteApi::load(
            RouteApiConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                store: dir.join("routes.json"),
                tls: None,
                hostnames: BTreeMap::from([
                    ("prod".to_string(), vec!["*.example.com".to_string()]),
                    ("other".to_string(), vec!["*.example.com".to_string()]),
                ]),
            },
            vec!["static.example.com".into()],
        )
        .unwrap()
    }

    const BODY: &str = r#"{"hostname":"blog.example.com","owner":"ingress/blog/blog","default":"deny","rules":[{"path":"/*","action":"allow"},{"path":"/ghost/*","action":"deny"}]}"#;

    #[test]
    fn scoped_registration_persists_and_refuses_what_it_must() {
        let dir = tempfile::tempdir().unwrap();
        let a = api(dir.path());
        let put = |t: &str, h: &str, b: &str| {
            a.answer(
                t,
                &Method::PUT,
                &format!("/api/v1/routes/{h}"),
                b.as_bytes(),
            )
            .0
        };
        assert_eq!(put("prod", "blog.example.com", BODY), StatusCode::OK);
        assert_eq!(put("other", "blog.example.com", BODY), StatusCode::CONFLICT);
        assert_eq!(
            put("nobody", "blog.example.com", BODY),
            StatusCode::FORBIDDEN
        );
        let evil = BODY.replace("blog.example.com", "blog.example.org");
        assert_eq!(
            put("prod", "blog.example.org", &evil),
            StatusCode::FORBIDDEN
        );
        let st = BODY.replace("blog.example.com", "static.example.com");
        assert_eq!(put("prod", "static.example.com", &st), StatusCode::CONFLICT);
        let bad = BODY.replace("/ghost/*", "/gh*st");
        assert_eq!(
            put("prod", "blog.example.com", &bad),
            StatusCode::BAD_REQUEST
        );
        let (c, out, _) = a.answer("other", &Method::GET, "/api/v1/routes", b"");
        assert_eq!((c, out.as_str()), (StatusCode::OK, "[]"));
        // Another edge process reads the same registrations.
        let b = api(dir.path());
        assert_eq!(b.hostnames(), vec!["blog.example.com"]);
        assert_eq!(b.routes()["blog.example.com"].tunnel, "prod");
        assert_eq!(
            a.answer(
                "other",
                &Method::DELETE,
                "/api/v1/routes/blog.example.com",
                b""
            )
            .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            a.answer(
                "prod",
                &Method::DELETE,
                "/api/v1/routes/blog.example.com",
                b""
            )
            .0,
            StatusCode::NO_CONTENT
        );
        assert!(api(dir.path()).hostnames().is_empty());
    }
}
