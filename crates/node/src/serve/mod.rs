//! `serve`: an HTTPS reverse proxy on the node's mesh name. TLS with the
//! serving certificate from control (swapped in place on renewal), HTTP/1.1
//! and HTTP/2 by ALPN, routes by path to HTTP/1.1 or h2c backends. Bodies
//! are streamed frame by frame in both directions (nothing is buffered, so
//! server-sent events and large downloads flow), trailers pass (gRPC), and
//! HTTP/1.1 upgrades (WebSocket) are spliced through.
//!
//! Every request carries headers naming the caller from the map, which the
//! backend can trust because any header of that family sent by the client
//! is removed first; see [`identity`].

pub mod identity;
pub mod route;

use crate::certs::CertStore;
use crate::netmap::Caller;
use crate::plane::Stream;
use bytes::Bytes;
use gatehouse_limits::{Gate, Limits, ListenerMetrics, Slot};
use gatehouse_proto::headers::{is_upgrade, strip_hop_by_hop};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use route::{Route, Scheme};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// The body of responses.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long connecting to a backend may take.
const BACKEND_CONNECT: Duration = Duration::from_secs(10);

/// Why serve could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Routes.
    #[error(transparent)]
    Route(#[from] route::RouteError),
    /// Connection limits.
    #[error("serve limits: {0}")]
    Limits(#[from] gatehouse_limits::LimitsError),
}

/// Counters of serve.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Requests forwarded to a backend (whatever it answered).
    pub forwarded: Counter,
    /// Requests refused: caller unknown to the map.
    pub denied: Counter,
    /// Requests no route matched.
    pub not_found: Counter,
    /// Requests whose backend could not be reached.
    pub backend_errors: Counter,
    /// TLS handshakes that failed (timeouts included).
    pub tls_errors: Counter,
    /// Connections of the HTTPS and HTTP listeners: open, refused over
    /// the cap, closed by a timeout.
    pub listeners: ListenerMetrics,
}

/// What serve needs: name, routes, certificate, backend clients.
#[derive(Debug)]
pub struct ServeConfig {
    /// The node's DNS name.
    pub fqdn: String,
    /// Routes.
    pub routes: Vec<Route>,
    /// Counters.
    pub stats: ServeStats,
    /// Limits of the HTTPS listener (port 443).
    pub gate: Gate,
    /// Limits of the redirecting HTTP listener (port 80).
    pub redirect_gate: Gate,
    tls: Arc<rustls::ServerConfig>,
    http1: Client<HttpConnector, Incoming>,
    h2c: Client<HttpConnector, Incoming>,
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(BACKEND_CONNECT));
    c.set_nodelay(true);
    c
}

impl ServeConfig {
    /// A configuration serving `routes` as `fqdn` with the certificate in
    /// `certs`, each listener under `limits`.
    pub fn new(
        fqdn: String,
        routes: Vec<Route>,
        certs: Arc<CertStore>,
        limits: Limits,
    ) -> Result<Self, ServeError> {
        route::check_routes(&routes)?;
        limits.validate()?;
        let stats = ServeStats::default();
        let gate = Gate::with_metrics(limits.clone(), stats.listeners.gate("serve_https"));
        let redirect_gate =
            Gate::with_metrics(limits, stats.listeners.gate("serve_http")).http1_only();
        let provider = gatehouse_ops::tls::provider();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs as Arc<dyn rustls::server::ResolvesServerCert>);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let exec = TokioExecutor::new();
        Ok(ServeConfig {
            fqdn,
            routes,
            stats,
            gate,
            redirect_gate,
            tls: Arc::new(tls),
            http1: Client::builder(exec.clone()).build(connector()),
            h2c: Client::builder(exec).http2_only(true).build(connector()),
        })
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves one accepted connection on the HTTPS port: TLS, then HTTP/1.1
/// or HTTP/2, under the limits of [`ServeConfig::gate`] (`slot` is the
/// connection's place under its cap). `who` is the caller as the map names
/// it; requests from a caller the map does not know are refused.
pub async fn handle<S: Stream>(
    stream: S,
    slot: Slot,
    remote: SocketAddr,
    who: Option<Caller>,
    cfg: Arc<ServeConfig>,
) {
    let acceptor = TlsAcceptor::from(Arc::clone(&cfg.tls));
    let tls = match cfg.gate.handshake(&acceptor, stream).await {
        Ok(t) => t,
        Err(e) => {
            cfg.stats.tls_errors.inc();
            tracing::debug!(%remote, error = %gatehouse_ops::Chain(&e), "serve: TLS handshake");
            return;
        }
    };
    let who = Arc::new(who);
    let svc_cfg = Arc::clone(&cfg);
    let service = hyper::service::service_fn(move |req| {
        let cfg = Arc::clone(&svc_cfg);
        let who = Arc::clone(&who);
        async move { Ok::<_, Infallible>(proxy(req, remote, &who, &cfg).await) }
    });
    match cfg
        .gate
        .serve(tls, slot, service, std::future::pending())
        .await
    {
        Ok(ended) => tracing::debug!(%remote, ?ended, "serve: connection closed"),
        Err(e) => tracing::debug!(%remote, error = %e, "serve: connection"),
    }
}

/// Serves one connection on the HTTP port, under the limits of
/// [`ServeConfig::redirect_gate`]: every request is redirected to the same
/// path over HTTPS on the node's name.
pub async fn handle_redirect<S: Stream>(
    stream: S,
    slot: Slot,
    remote: SocketAddr,
    cfg: Arc<ServeConfig>,
) {
    let fqdn = cfg.fqdn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let target = format!(
            "https://{}{}",
            fqdn,
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        async move {
            let mut r = text(StatusCode::PERMANENT_REDIRECT, &target);
            if let Ok(v) = HeaderValue::from_str(&target) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok::<_, Infallible>(r)
        }
    });
    if let Err(e) = cfg
        .redirect_gate
        .serve(stream, slot, service, std::future::pending())
        .await
    {
        tracing::debug!(%remote, error = %e, "serve: redirect connection");
    }
}

fn wants_upgrade(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !is_upgrade(req.headers()) {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

fn wants_trailers(h: &HeaderMap) -> bool {
    h.get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

async fn proxy(
    mut req: Request<Incoming>,
    remote: SocketAddr,
    who: &Option<Caller>,
    cfg: &ServeConfig,
) -> Response<Body> {
    let Some(caller) = who else {
        cfg.stats.denied.inc();
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: caller unknown to the mesh",
        );
    };
    // Routes match, and the backend receives, the one canonical form the
    // edge uses too (`gatehouse-paths`); a path without one is refused.
    let path = match gatehouse_paths::canonicalize(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad request path: {e}")),
    };
    let Some(route) = route::select(&cfg.routes, &path) else {
        cfg.stats.not_found.inc();
        return text(StatusCode::NOT_FOUND, "no route for this path");
    };
    let upgrade = wants_upgrade(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    // An upgraded connection leaves hyper but stays under the cap.
    let slot = req.extensions().get::<Slot>().cloned();
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let uri: Uri = match format!("http://{}{}", route.backend.authority, path_and_query).parse() {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad request target"),
    };
    let (mut parts, body) = req.into_parts();
    let trailers = wants_trailers(&parts.headers);
    parts.uri = uri;
    parts.extensions = http::Extensions::new();
    let h = &mut parts.headers;
    strip_hop_by_hop(h, false);
    identity::strip(h);
    identity::add(h, caller, host.as_ref());
    match route.backend.scheme {
        Scheme::Http => {
            parts.version = Version::HTTP_11;
            // Trailers are asked for only from h2c backends (gRPC).
            h.remove(header::TE);
            if let Some(host) = host {
                h.insert(header::HOST, host);
            }
            if let Some(u) = &upgrade {
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, u.clone());
            }
        }
        Scheme::H2c => {
            parts.version = Version::HTTP_2;
            h.remove(header::HOST);
            if trailers {
                h.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    let client = match route.backend.scheme {
        Scheme::Http => &cfg.http1,
        Scheme::H2c => &cfg.h2c,
    };
    cfg.stats.forwarded.inc();
    let mut resp = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            cfg.stats.backend_errors.inc();
            tracing::warn!(%remote, backend = %route.backend, error = %e, "serve: backend");
            return text(StatusCode::BAD_GATEWAY, "backend unavailable");
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::try_join!(client_upgrade, backend_upgrade) {
                Ok((c, b)) => {
                    let mut c = TokioIo::new(c);
                    let mut b = TokioIo::new(b);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                }
                Err(e) => tracing::debug!(%remote, error = %e, "serve: upgrade"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(
            parts,
            Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
        );
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, body.boxed())
}
