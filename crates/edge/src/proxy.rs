//! The public request path: hostname → route, canonical path, path rules,
//! then one tunnel stream per request, streamed both ways.

use crate::config::Route;
use crate::path::{Action, canonicalize};
use crate::tunnels::Registry;
use bytes::Bytes;
use gatehouse_ops::Chain;
use gatehouse_proto::headers::{is_upgrade, strip_hop_by_hop};
use gatehouse_proto::{Frame, RequestHead, ResponseHead};
use gatehouse_tunnel_io::stream::{
    FrameReader, FrameWriter, TunnelBody, bridge, empty, full, pump_body,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tracing::{Instrument, debug, info, info_span, warn};

pub use gatehouse_proto::{CLIENT_IP_HEADER, REQUEST_ID_HEADER};

/// Metrics of the public side.
#[derive(Debug, Default, Clone)]
pub struct ProxyMetrics {
    /// Responses by status code (a fixed-size label set: no allocation per
    /// response).
    pub responses: Family<[(&'static str, u16); 1], Counter>,
    /// Requests forwarded over a tunnel (after host and path rules allowed them).
    pub forwarded: Counter,
}

/// Shared state of the public listeners.
#[derive(Debug)]
pub struct Public {
    /// Hostname → route.
    pub routes: RwLock<Arc<BTreeMap<String, Route>>>,
    /// Live tunnel connections.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: ProxyMetrics,
    /// Requests whose response has not ended yet.
    pub inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// Identity requirements (Access), when configured.
    pub access: Option<Arc<crate::access::Access>>,
}

/// A response body that counts as in flight until it ends or is dropped.
struct Tracked {
    inner: TunnelBody,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = gatehouse_tunnel_io::stream::BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn page(status: StatusCode, title: &str, detail: &str, request_id: &str) -> Response<TunnelBody> {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\n<body><h1>{code} {title}</h1>\n<p>{detail}</p>\n<p><small>gatehouse edge, request id {request_id}</small></p></body></html>\n",
        code = status.as_u16()
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert(REQUEST_ID, v);
    }
    r
}

/// `text` with the characters HTML gives a meaning to escaped.
fn html_text(text: &impl std::fmt::Display) -> String {
    let mut out = String::new();
    for c in text.to_string().chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// The host a request is for: `:authority` (HTTP/2) or `Host`, lower-cased,
/// without port.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let name = |host: &str| host.trim_end_matches('.').to_ascii_lowercase();
    match req.uri().authority() {
        Some(a) => Some(name(a.host())),
        None => {
            let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
            let auth: http::uri::Authority = h.parse().ok()?;
            Some(name(auth.host()))
        }
    }
}

/// Whether a request names its host ambiguously: more than one `Host`
/// field (RFC 9112 section 3.2 asks for a 400), or an HTTP/2
/// `:authority` with a `Host` naming something else (RFC 9113 section
/// 8.3.1: malformed). An HTTP/1.1 request in absolute form may carry a
/// different `Host`: its target wins (RFC 9112 section 3.2.2).
pub fn host_ambiguous<B>(req: &Request<B>) -> bool {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return true;
    }
    match (req.version(), req.uri().authority(), first) {
        (http::Version::HTTP_2, Some(a), Some(h)) => {
            !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
        }
        _ => false,
    }
}

fn request_id() -> String {
    let b: [u8; 8] = rand::random();
    hex::encode(b)
}

impl Public {
    /// Answers one public request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Response<TunnelBody> {
        let id = request_id();
        let host = request_host(&req).unwrap_or_default();
        let span = info_span!("request", id = %id, host = %host, method = %req.method(), path = %req.uri().path());
        let started = std::time::Instant::now();
        self.inflight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let count = self.inflight.clone();
        let resp = self
            .route(req, peer, scheme, &host, &id)
            .instrument(span.clone())
            .await;
        let status = resp.status().as_u16();
        self.metrics
            .responses
            .get_or_create(&[("code", status)])
            .inc();
        span.in_scope(|| {
            info!(
                status,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request"
            )
        });
        resp.map(|inner| http_body_util::BodyExt::boxed_unsync(Tracked { inner, count }))
    }

    async fn route(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
        host: &str,
        id: &str,
    ) -> Response<TunnelBody> {
        if host_ambiguous(&req) {
            debug!("refused: the request names its host more than once");
            return page(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "The request names its host more than once.",
                id,
            );
        }
        let routes = match self.routes.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let Some(route) = routes.get(host) else {
            return page(
                StatusCode::NOT_FOUND,
                "Not Found",
                "This hostname is not served here.",
                id,
            );
        };
        let canonical = match canonicalize(req.uri().path()) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %Chain(&e), "refused path");
                return page(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    &format!("The request path is not acceptable: {}.", html_text(&e)),
                    id,
                );
            }
        };
        if let Some(access) = &self.access
            && let Some(rest) = canonical.strip_prefix(crate::access::core::PREFIX)
        {
            let a = access
                .endpoint(rest, req.method(), req.headers(), req.uri().query(), host)
                .await;
            return answer(a, id);
        }
        let (action, identity) = route.rules.requirement(req.method(), &canonical);
        if action == Action::Deny {
            debug!(path = canonical, "denied by path rules");
            return page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Access to this path is not allowed.",
                id,
            );
        }
        let path = match req.uri().query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical,
        };
        let mut assertion = None;
        if let Some(access) = &self.access {
            if let Some(rule) = identity {
                match access.check(req.method(), req.headers(), host, &path, rule) {
                    crate::access::Verdict::Admit(v) => assertion = Some(v),
                    crate::access::Verdict::Answer(a) => return answer(a, id),
                }
            }
            crate::access::core::strip_cookies(req.headers_mut());
        } else if identity.is_some() {
            // A reload added identity rules to an edge started without
            // Access: nobody passes until it restarts with it.
            warn!("identity rule on an edge without access configured");
            return page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This path needs a sign-in, which this edge is not configured for.",
                id,
            );
        }
        self.forward(req, peer, scheme, host, &route.tunnel, path, id, assertion)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
        host: &str,
        tunnel: &str,
        path: String,
        id: &str,
        assertion: Option<HeaderValue>,
    ) -> Response<TunnelBody> {
        self.metrics.forwarded.inc();
        gatehouse_ops::heap::keep_freed_buffers();
        let upgrade = is_upgrade(req.headers());
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // An upgraded connection leaves hyper but stays under the cap.
        let slot = req.extensions().get::<gatehouse_limits::Slot>().cloned();
        let (parts, body) = req.into_parts();
        let retryable_method = is_idempotent(&parts.method);
        let mut head = tunnel_head(parts, upgrade, peer, scheme, host, path, id);
        if let (Some(v), Frame::RequestHead(h)) = (assertion, &mut head) {
            h.headers.insert(ASSERTION, v);
        }
        let no_body = upgrade || body.is_end_stream();
        let retryable = no_body && retryable_method;
        let mut body = Some(body);
        let attempts = if retryable { 3 } else { 1 };
        let mut last_err = String::new();
        // Connectors a stream of this request failed on: a retry goes to
        // another one (their other connections are likely dead too).
        let mut failed: Vec<String> = Vec::new();
        for attempt in 0..attempts {
            let Some(conn) = self.registry.pick_excluding(tunnel, &failed) else {
                if !failed.is_empty() {
                    break;
                }
                warn!(tunnel, "no live tunnel connection");
                return page(
                    StatusCode::BAD_GATEWAY,
                    "Bad Gateway",
                    "No tunnel connection is live for this hostname: its connector is not connected to this edge.",
                    id,
                );
            };
            if attempt > 0 {
                self.registry.count_retry();
            }
            let (mut w, mut r) = match self.registry.watch(&conn, conn.open()).await {
                Ok(x) => x,
                Err(e) => {
                    last_err = gatehouse_ops::chain(&e);
                    self.registry.stream_failed(&conn);
                    failed.push(conn.connector.clone());
                    continue;
                }
            };
            let sent = if upgrade {
                w.send(&head).await
            } else {
                // Without a body, head and end of stream leave in one write
                // (`finish`); otherwise the body pump flushes the head with
                // the first bytes.
                w.queue(&head)
            };
            if let Err(e) = sent {
                last_err = gatehouse_ops::chain(&e);
                self.registry.stream_failed(&conn);
                failed.push(conn.connector.clone());
                continue;
            }
            let w_keep = if upgrade {
                Some(w)
            } else if no_body {
                let _ = w.finish().await;
                None
            } else {
                if let Some(b) = body.take() {
                    tokio::spawn(
                        async move {
                            if let Err(e) = pump_body(b, &mut w).await {
                                debug!(error = %Chain(&e), "request body ended early");
                            }
                        }
                        .in_current_span(),
                    );
                }
                None
            };
            match self.registry.watch(&conn, r.next()).await {
                Ok(Some(Frame::ResponseHead(h))) => {
                    return respond(h, r, w_keep, (on_upgrade, slot), id);
                }
                Ok(Some(Frame::Reset(msg))) => {
                    warn!(reason = msg, "connector reset the stream");
                    return page(
                        StatusCode::BAD_GATEWAY,
                        "Bad Gateway",
                        "The connector could not serve this request.",
                        id,
                    );
                }
                Ok(Some(_)) => last_err = "unexpected frame".into(),
                Ok(None) => last_err = "stream closed before the response".into(),
                Err(e) => last_err = gatehouse_ops::chain(&e),
            }
            self.registry.stream_failed(&conn);
            failed.push(conn.connector.clone());
            debug!(
                attempt,
                conn = conn.id,
                error = last_err,
                "tunnel stream failed before the response"
            );
        }
        warn!(error = last_err, "tunnel stream failed");
        page(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway",
            "The tunnel connection failed before the origin answered.",
            id,
        )
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The head of a request as it goes through the tunnel: hop-by-hop fields
/// stripped, the authority in the head (the connector sets `Host`), the
/// forwarding headers set.
fn tunnel_head(
    parts: http::request::Parts,
    upgrade: bool,
    peer: SocketAddr,
    scheme: &'static str,
    host: &str,
    path: String,
    id: &str,
) -> Frame {
    let mut headers = parts.headers;
    // The Host value as hyper parsed it is shared, not copied.
    let client_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => headers.get(http::header::HOST).cloned(),
    }
    .or_else(|| HeaderValue::from_str(host).ok());
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(http::header::HOST);
    forwarded_headers(&mut headers, peer, scheme, client_host, id);
    Frame::RequestHead(RequestHead {
        request_id: id.to_owned(),
        method: parts.method,
        scheme: scheme.to_owned(),
        authority: host.to_owned(),
        path,
        client_addr: peer.to_string(),
        headers,
    })
}

/// Sets the forwarding headers. Every header the client sent whose name is
/// reserved ([`gatehouse_proto::headers`]: `Gatehouse-*`, `Forwarded`,
/// `X-Forwarded-*`, `X-Real-IP`, in any spelling that folds to them, such
/// as `Gatehouse_User_Login`) is dropped first: those names carry
/// identities (the mesh's serve adds `Gatehouse-User-Login` and friends,
/// the edge its client address and request id) and where the request came
/// from, and a backend that is also served on the mesh must not receive
/// them forged from the internet. Only the client's `X-Forwarded-For`, in
/// exactly that spelling, is kept, with the client's address appended.
fn forwarded_headers(
    h: &mut HeaderMap,
    peer: SocketAddr,
    scheme: &'static str,
    host: Option<HeaderValue>,
    id: &str,
) {
    let prev_xff = client_xff(h);
    let dropped = gatehouse_proto::headers::strip_reserved(h);
    if dropped > 0 {
        debug!(dropped, "reserved request headers dropped");
    }
    // An address as text fits in 45 bytes (IPv6 with an embedded IPv4
    // address): formatted on the stack, copied once into its value.
    let mut buf = [0u8; 48];
    let ip = {
        let mut w = &mut buf[..];
        let _ = write!(w, "{}", peer.ip().to_canonical());
        let room = w.len();
        HeaderValue::from_bytes(&buf[..buf.len() - room]).ok()
    };
    let xff = match (prev_xff, &ip) {
        (Some(mut v), Some(ip)) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => ip.clone(),
    };
    let mut set = |name: &http::HeaderName, v: Option<HeaderValue>| {
        if let Some(v) = v {
            h.insert(name, v);
        }
    };
    set(&X_FORWARDED_FOR, xff);
    set(&X_FORWARDED_PROTO, Some(HeaderValue::from_static(scheme)));
    set(&X_FORWARDED_HOST, host);
    set(&CLIENT_IP, ip);
    set(&REQUEST_ID, HeaderValue::from_str(id).ok());
}

/// The client's `X-Forwarded-For` fields (this spelling only), joined as
/// one list; `None` when absent, blank or not text.
fn client_xff(h: &HeaderMap) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in h.get_all(&X_FORWARDED_FOR) {
        let t = v.to_str().ok()?.trim();
        if t.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(t.as_bytes());
    }
    (!out.is_empty()).then_some(out)
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
const CLIENT_IP: http::HeaderName = http::HeaderName::from_static(CLIENT_IP_HEADER);
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);
const ASSERTION: http::HeaderName =
    http::HeaderName::from_static(crate::access::core::ASSERTION_HEADER);

/// The edge's own answer (Access): a page, or the key set.
fn answer(a: crate::access::Answer, id: &str) -> Response<TunnelBody> {
    let mut r = match a.json {
        Some(json) => {
            let mut r = Response::new(full(json));
            *r.status_mut() = a.status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => page(a.status, a.title, &html_text(&a.detail), id),
    };
    for (name, value) in &a.headers {
        r.headers_mut().append(name, value.clone());
    }
    r
}

fn respond(
    head: ResponseHead,
    r: FrameReader,
    w_keep: Option<FrameWriter>,
    (on_upgrade, slot): (
        Option<hyper::upgrade::OnUpgrade>,
        Option<gatehouse_limits::Slot>,
    ),
    id: &str,
) -> Response<TunnelBody> {
    let mut headers = head.headers;
    let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let body = match (switching, on_upgrade, w_keep) {
        (true, Some(on_up), Some(w)) => {
            tokio::spawn(
                async move {
                    let _slot = slot;
                    match on_up.await {
                        Ok(up) => {
                            if let Err(e) = bridge(TokioIo::new(up), r, w).await {
                                debug!(error = %Chain(&e), "upgraded stream ended");
                            }
                        }
                        Err(e) => debug!(error = %Chain(&e), "client upgrade failed"),
                    }
                }
                .in_current_span(),
            );
            strip_hop_by_hop(&mut headers, true);
            empty()
        }
        (true, _, _) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                "Unexpected protocol switch from the origin.",
                id,
            );
        }
        _ => {
            strip_hop_by_hop(&mut headers, false);
            r.into_body()
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = headers;
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// The plain-HTTP listener: ACME HTTP-01 answers, and a permanent redirect
/// to HTTPS for configured hostnames; everything else is 404.
pub fn http_answer(
    public: &Public,
    http01: &crate::acme::Http01,
    req: &Request<Incoming>,
) -> Response<TunnelBody> {
    if host_ambiguous(req) {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "The request names its host more than once.",
            "-",
        );
    }
    let host = request_host(req).unwrap_or_default();
    if let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")
    {
        if let Some(ka) = http01.answer(token) {
            let mut r = Response::new(full(ka));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return r;
        }
    }
    let known = public.routes.read().is_ok_and(|g| g.contains_key(&host));
    if !known {
        return page(
            StatusCode::NOT_FOUND,
            "Not Found",
            "This hostname is not served here.",
            "-",
        );
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusal_reasons_are_escaped_in_the_page() {
        assert_eq!(
            super::html_text(&"a <b> & \"c\" 'ı'"),
            "a &lt;b&gt; &amp; &quot;c&quot; 'ı'"
        );
    }

    use super::*;

    fn forwarded(prev_xff: Option<&str>, peer: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(p) = prev_xff {
            h.insert(&X_FORWARDED_FOR, HeaderValue::from_str(p).unwrap());
        }
        h.insert(CLIENT_IP_HEADER, HeaderValue::from_static("6.6.6.6"));
        h.insert("gatehouse-user-login", HeaderValue::from_static("forged"));
        h.insert("gatehouse_user_login", HeaderValue::from_static("forged"));
        h.insert("gatehouse_node_tags", HeaderValue::from_static("tag:admin"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/admin"));
        let host = Some(HeaderValue::from_static("app.example.com:8443"));
        forwarded_headers(&mut h, peer.parse().unwrap(), "https", host, "abc123");
        h
    }

    #[test]
    fn forwarding_headers_name_the_client_and_replace_forged_identities() {
        let h = forwarded(None, "192.0.2.7:5000");
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[CLIENT_IP_HEADER], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example.com:8443");
        assert_eq!(h[REQUEST_ID_HEADER], "abc123");
        for forged in [
            "gatehouse-user-login",
            "gatehouse_user_login",
            "gatehouse_node_tags",
            "forwarded",
            "x-real-ip",
            "x_forwarded_for",
            "x-forwarded-prefix",
        ] {
            assert!(!h.contains_key(forged), "{forged} reached the origin");
        }
        assert_eq!(h.len(), 5, "{h:?}");

        let h = forwarded(Some("203.0.113.1"), "[::ffff:192.0.2.7]:5000");
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.1, 192.0.2.7");
        assert_eq!(h[CLIENT_IP_HEADER], "192.0.2.7");

        let mut two = HeaderMap::new();
        two.append(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
        two.append(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
        forwarded_headers(&mut two, "192.0.2.7:1".parse().unwrap(), "https", None, "x");
        assert_eq!(
            two[&X_FORWARDED_FOR],
            "203.0.113.1, 198.51.100.2, 192.0.2.7"
        );

        let h = forwarded(Some(" "), "[2001:db8::1]:5000");
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::1");
        let long = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1";
        assert_eq!(
            forwarded(None, long)[CLIENT_IP_HEADER],
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }

    #[test]
    fn a_host_named_twice_is_ambiguous() {
        let req = |v: http::Version, uri: &str, hosts: &[&'static str]| {
            let mut b = Request::builder().version(v).uri(uri);
            for h in hosts {
                b = b.header(http::header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        use http::Version;
        assert!(!host_ambiguous(&req(Version::HTTP_11, "/", &["a.test"])));
        assert!(!host_ambiguous(&req(Version::HTTP_11, "/", &[])));
        assert!(host_ambiguous(&req(
            Version::HTTP_11,
            "/",
            &["a.test", "b.test"]
        )));
        assert!(host_ambiguous(&req(
            Version::HTTP_11,
            "/",
            &["a.test", "a.test"]
        )));
        // Absolute form: the target wins over a single Host.
        assert!(!host_ambiguous(&req(
            Version::HTTP_11,
            "https://a.test/",
            &["b.test"]
        )));
        assert!(!host_ambiguous(&req(
            Version::HTTP_2,
            "https://a.test:8443/",
            &["A.test:8443"]
        )));
        assert!(host_ambiguous(&req(
            Version::HTTP_2,
            "https://a.test/",
            &["b.test"]
        )));
        assert!(!host_ambiguous(&req(
            Version::HTTP_2,
            "https://a.test/",
            &[]
        )));
    }
}
