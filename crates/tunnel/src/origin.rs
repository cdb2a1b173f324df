//! Clients to the origins the ingress rules name: pooled HTTP/1.1 or
//! HTTP/2 (h2c or TLS) over TCP, HTTP/1.1 over Unix sockets.
//!
//! Plain `http://` HTTP/1.1 origins take a shorter path: an idle
//! connection is leased from the rule's own pool and driven by the task of
//! the request that holds it, from sending the head to the last byte of the
//! response body, then handed back. No connection task and no channel to it
//! sit between the tunnel stream and the origin socket; with one small
//! request per tunnel stream those hops cost as much as the proxying itself.
//! Upgrades, TLS and HTTP/2 origins keep hyper-util's pooled client.
//!
//! An `https://` rule with `matchSNItoHost` sends the request's host name
//! as TLS server name and checks the origin's certificate against it: the
//! URI given to hyper-util names the request's host (so its pool keeps one
//! set of connections per host name), and the resolver sends every name
//! to the rule's origin.

use crate::ingress::{Ingress, OriginRequest, Service};
use gatehouse_ops::Chain;
use gatehouse_ops::tls;
use gatehouse_tunnel_io::stream::TunnelBody;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiAddrs, GaiFuture, GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

type Https<R> = hyper_rustls::HttpsConnector<HttpConnector<R>>;
type HttpsClient = Client<Https<GaiResolver>, TunnelBody>;
type SniClient = Client<Https<OriginResolver>, TunnelBody>;

/// Why an origin could not be reached or configured.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The TLS settings of a rule are unusable.
    #[error("rule #{rule}: TLS settings")]
    Tls {
        /// 0-based rule index.
        rule: usize,
        /// The cause.
        source: tls::TlsError,
    },
    /// `originServerName` is not a valid server name.
    #[error("rule #{rule}: invalid originServerName")]
    ServerName {
        /// 0-based rule index.
        rule: usize,
        /// Why.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// Connecting or talking to the origin failed.
    #[error("origin")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// Talking to a Unix-socket origin failed.
    #[error("origin")]
    Hyper(#[from] hyper::Error),
    /// The connection could not be opened.
    #[error("origin connect")]
    Connect(#[from] std::io::Error),
    /// Connecting took longer than connectTimeout.
    #[error("origin connect timed out")]
    Timeout,
    /// The request target does not make a valid URI on the origin.
    #[error("origin: invalid request target")]
    Target(#[source] http::uri::InvalidUri),
    /// With `matchSNItoHost`, the request's host is not a DNS name (an IP
    /// address would be dialled instead of the origin).
    #[error("matchSNItoHost: the request's host {0:?} is not a DNS name")]
    SniHost(String),
    /// The origin's host name cannot be resolved.
    #[error("rule #{rule}: invalid origin host name")]
    Name {
        /// 0-based rule index.
        rule: usize,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::connect::dns::InvalidNameError,
    },
}

enum Client1 {
    /// hyper-util's client with the `scheme://authority` it is for, and
    /// the leased connections of a plain HTTP/1.1 origin.
    Http(Box<HttpsClient>, String, Option<Arc<H1Pool>>),
    /// `matchSNItoHost`: the client and the origin's port.
    HttpSni(Box<SniClient>, u16),
    Unix(PathBuf, Duration),
    None,
}

/// One client per ingress rule, built when the rules are (re)loaded.
pub struct Origins {
    clients: Vec<Client1>,
}

impl std::fmt::Debug for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origins")
            .field("rules", &self.clients.len())
            .finish()
    }
}

impl Origins {
    /// Builds the clients of every rule the connector serves (none for a
    /// rule it refuses).
    pub fn build(ing: &Ingress) -> Result<Self, OriginError> {
        let clients = ing
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| match &r.service {
                _ if r.refusal.is_some() => Ok(Client1::None),
                Service::Http {
                    scheme,
                    authority: Some(authority),
                    ..
                } if scheme == "https" && r.origin.match_sni_to_host => {
                    sni_client(i, &r.origin, authority)
                        .map(|(c, port)| Client1::HttpSni(Box::new(c), port))
                }
                Service::Http {
                    scheme,
                    authority: Some(authority),
                    ..
                } => {
                    let plain = (scheme == "http" && !r.origin.http2_origin)
                        .then(|| Arc::new(H1Pool::new(authority, &r.origin)));
                    let base = format!("{scheme}://{authority}");
                    http_client(i, &r.origin).map(|c| Client1::Http(Box::new(c), base, plain))
                }
                Service::Unix { path, tls: false } => {
                    Ok(Client1::Unix(path.clone(), r.origin.connect_timeout))
                }
                _ => Ok(Client1::None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { clients })
    }

    /// Idle connections kept for rule `idx`.
    #[cfg(test)]
    fn idle_len(&self, idx: usize) -> usize {
        match self.clients.get(idx) {
            Some(Client1::Http(_, _, Some(pool))) => pool.idle.lock().unwrap().len(),
            _ => 0,
        }
    }

    /// Sends a request (its URI in origin form) for rule `idx`.
    /// The response body must be read inside [`Lease::drive`]; a request
    /// that asks for an upgrade never gets a leased connection.
    pub async fn send(
        &self,
        idx: usize,
        req: Request<TunnelBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Lease), OriginError> {
        match self.clients.get(idx) {
            Some(Client1::Http(_, _, Some(pool))) if !upgrade => pool.send(req).await,
            Some(Client1::Http(c, base, _)) => {
                let req = absolute(base, req)?;
                Ok((Box::pin(c.request(req)).await?, Lease::none()))
            }
            Some(Client1::HttpSni(c, port)) => {
                let req = sni_target(*port, req)?;
                Ok((Box::pin(c.request(req)).await?, Lease::none()))
            }
            Some(Client1::Unix(path, timeout)) => Box::pin(unix(path, *timeout, req)).await,
            _ => Err(OriginError::Connect(std::io::Error::other(
                "rule has no HTTP origin",
            ))),
        }
    }
}

/// The request with its origin-form target made absolute on `base`, as
/// hyper-util's client wants it.
fn absolute(base: &str, mut req: Request<TunnelBody>) -> Result<Request<TunnelBody>, OriginError> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = format!("{base}{target}")
        .parse()
        .map_err(OriginError::Target)?;
    Ok(req)
}

/// The request with an absolute `https://` target on its own host name
/// (from the `Host` header the proxy set) and the origin's port.
fn sni_target(port: u16, mut req: Request<TunnelBody>) -> Result<Request<TunnelBody>, OriginError> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let host = crate::ingress::url::split_host_port_strict(host).map_or(host, |(h, _)| h);
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() || host.contains(['[', ']']) {
        return Err(OriginError::SniHost(host.to_owned()));
    }
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = format!("https://{host}:{port}{target}")
        .parse()
        .map_err(OriginError::Target)?;
    Ok(req)
}

/// Resolves every name to the rule's origin host (see the module's notes
/// on `matchSNItoHost`).
#[derive(Clone, Debug)]
struct OriginResolver {
    origin: Name,
    gai: GaiResolver,
}

impl tower::Service<Name> for OriginResolver {
    type Response = GaiAddrs;
    type Error = std::io::Error;
    type Future = GaiFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.gai.poll_ready(cx)
    }

    fn call(&mut self, _requested: Name) -> Self::Future {
        self.gai.call(self.origin.clone())
    }
}

async fn unix(
    path: &std::path::Path,
    timeout: Duration,
    req: Request<TunnelBody>,
) -> Result<(Response<Incoming>, Lease), OriginError> {
    let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
        .await
        // `Elapsed` says only that the deadline passed, as `Timeout` does.
        .map_err(|_elapsed| OriginError::Timeout)??;
    let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %Chain(&e), "unix origin connection ended");
        }
    });
    Ok((send.send_request(req).await?, Lease::none()))
}

fn http_client(i: usize, o: &OriginRequest) -> Result<HttpsClient, OriginError> {
    let conn = https_connector(i, o, HttpConnector::new(), o.origin_server_name.as_deref())?;
    Ok(pool_builder(o).build(conn))
}

/// The `matchSNItoHost` client of an origin `authority`, and its port.
fn sni_client(
    i: usize,
    o: &OriginRequest,
    authority: &str,
) -> Result<(SniClient, u16), OriginError> {
    let (host, port) = crate::ingress::url::split_host_port_strict(authority)
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .unwrap_or((authority, 443));
    let origin = host
        .parse()
        .map_err(|source| OriginError::Name { rule: i, source })?;
    let resolver = OriginResolver {
        origin,
        gai: GaiResolver::new(),
    };
    let conn = https_connector(i, o, HttpConnector::new_with_resolver(resolver), None)?;
    Ok((pool_builder(o).build(conn), port))
}

fn https_connector<R>(
    i: usize,
    o: &OriginRequest,
    mut http: HttpConnector<R>,
    server_name: Option<&str>,
) -> Result<Https<R>, OriginError> {
    http.enforce_http(false);
    http.set_connect_timeout(Some(o.connect_timeout));
    http.set_nodelay(true);
    let roots = if o.no_tls_verify {
        None
    } else if let Some(ca) = &o.ca_pool {
        Some(tls::load_roots(ca).map_err(|source| OriginError::Tls { rule: i, source })?)
    } else {
        Some(tls::system_roots())
    };
    // hyper-rustls sets ALPN itself from the enabled protocols.
    let cfg =
        tls::client_config(roots, &[]).map_err(|source| OriginError::Tls { rule: i, source })?;
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_or_http();
    let b = match server_name {
        Some(name) => {
            let sn = ServerName::try_from(name.to_owned())
                .map_err(|source| OriginError::ServerName { rule: i, source })?;
            b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn))
        }
        None => b,
    };
    Ok(if o.http2_origin {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    })
}

fn pool_builder(o: &OriginRequest) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(o.keep_alive_timeout)
        .pool_max_idle_per_host(o.keep_alive_connections)
        .http2_only(o.http2_origin);
    builder
}

type H1Send = http1::SendRequest<TunnelBody>;
/// Boxed: the connection's state is large and moves between the pool and
/// the requests that lease it.
type H1Conn = Box<http1::Connection<TokioIo<TcpStream>, TunnelBody>>;

/// An idle keep-alive connection and when it became idle.
struct Idle {
    send: H1Send,
    conn: H1Conn,
    since: Instant,
}

/// The idle connections to one plain HTTP/1.1 origin, most recent last.
struct H1Pool {
    authority: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<VecDeque<Idle>>,
}

impl H1Pool {
    fn new(authority: &str, o: &OriginRequest) -> Self {
        Self {
            authority: authority.to_owned(),
            connect_timeout: o.connect_timeout,
            idle_timeout: o.keep_alive_timeout,
            max_idle: o.keep_alive_connections,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    async fn send(
        self: &Arc<Self>,
        mut req: Request<TunnelBody>,
    ) -> Result<(Response<Incoming>, Lease), OriginError> {
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(v) = http::HeaderValue::from_str(&self.authority)
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
        loop {
            let (mut send, conn, reused) = match self.take_idle() {
                Some((send, conn)) => (send, conn, true),
                None => {
                    let (send, conn) = Box::pin(self.connect()).await?;
                    (send, conn, false)
                }
            };
            let mut conn = Some(conn);
            match Drive::new(Some(&mut conn), send.try_send_request(req)).await {
                Ok(resp) => {
                    let held = Held {
                        send,
                        conn,
                        pool: self.clone(),
                    };
                    return Ok((resp, Lease(Some(held))));
                }
                Err(mut e) => match e.take_message() {
                    // The idle connection closed before the request was
                    // written: nothing reached the origin, so try again.
                    Some(r) if reused => req = r,
                    _ => return Err(OriginError::Hyper(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<(H1Send, H1Conn)> {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_back()?;
            if idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            // One poll reads a close (or anything unexpected) that arrived
            // while the connection sat idle.
            if Pin::new(&mut idle.conn).poll(&mut cx).is_ready() || !idle.send.is_ready() {
                continue;
            }
            return Some((idle.send, idle.conn));
        }
    }

    fn put(&self, send: H1Send, mut conn: H1Conn) {
        let mut cx = Context::from_waker(Waker::noop());
        if self.max_idle == 0 || Pin::new(&mut conn).poll(&mut cx).is_ready() || !send.is_ready() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Connections leave from the back, so the front is the oldest.
        let mut dropped = Vec::new();
        while let Some(front) = idle.front()
            && (idle.len() >= self.max_idle || now - front.since >= self.idle_timeout)
        {
            dropped.extend(idle.pop_front());
        }
        idle.push_back(Idle {
            send,
            conn,
            since: now,
        });
        drop(idle);
        drop(dropped);
    }

    async fn connect(&self) -> Result<(H1Send, H1Conn), OriginError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        // `Elapsed` says only that the deadline passed, as `Timeout` does.
        .map_err(|_elapsed| OriginError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        Ok((send, Box::new(conn)))
    }
}

/// The origin connection a response is read from, when the request's task
/// drives it (plain HTTP/1.1 origins); empty for the other clients.
#[must_use = "a leased connection is closed unless released"]
pub struct Lease(Option<Held>);

struct Held {
    send: H1Send,
    conn: Option<H1Conn>,
    pool: Arc<H1Pool>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lease").field(&self.0.is_some()).finish()
    }
}

impl Lease {
    fn none() -> Self {
        Self(None)
    }

    /// Runs `f` (which reads the response body) while driving the leased
    /// connection, which is what moves the body from the socket.
    pub fn drive<F: Future>(&mut self, f: F) -> Drive<'_, F> {
        Drive::new(self.0.as_mut().map(|h| &mut h.conn), f)
    }

    /// Hands the connection back for the next request once the response
    /// has been read whole; a lease dropped instead closes it.
    pub fn release(mut self) {
        if let Some(Held {
            send,
            conn: Some(conn),
            pool,
        }) = self.0.take()
        {
            pool.put(send, conn);
        }
    }
}

pin_project_lite::pin_project! {
    /// Polls `f` to completion, polling the connection first each time; a
    /// connection that ends is dropped (its requests and bodies see why).
    /// A plain struct rather than an `async fn`, which would hold `f` twice.
    #[must_use = "futures do nothing unless polled"]
    pub struct Drive<'a, F> {
        conn: Option<&'a mut Option<H1Conn>>,
        #[pin]
        f: F,
    }
}

impl<'a, F> Drive<'a, F> {
    fn new(conn: Option<&'a mut Option<H1Conn>>, f: F) -> Self {
        Self { conn, f }
    }
}

impl<F: Future> Future for Drive<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        if let Some(slot) = this.conn.as_deref_mut()
            && let Some(c) = slot
            && Pin::new(&mut **c).poll(cx).is_ready()
        {
            *slot = None;
        }
        this.f.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    /// A keep-alive origin on a real socket that answers each request with
    /// its connection's number and request line. It reports each accepted
    /// connection and each connection it has closed; `close` makes it close
    /// its idle connections without a word, as an idle timeout would.
    async fn origin() -> (
        String,
        mpsc::UnboundedReceiver<&'static str>,
        Arc<tokio::sync::Notify>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let close = Arc::new(tokio::sync::Notify::new());
        let closer = close.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut tcp, _)) = listener.accept().await {
                n += 1;
                let _ = tx.send("accepted");
                let (tx, close) = (tx.clone(), closer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let k = tokio::select! {
                            r = tcp.read(&mut chunk) => match r {
                                Ok(0) | Err(_) => break,
                                Ok(k) => k,
                            },
                            _ = close.notified() => break,
                        };
                        buf.extend_from_slice(&chunk[..k]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let line = head.lines().next().unwrap_or_default().to_owned();
                            let body = format!("conn {n} {line}");
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            tcp.write_all(resp.as_bytes()).await.unwrap();
                        }
                    }
                    drop(tcp);
                    let _ = tx.send("closed");
                });
            }
        });
        (addr, rx, close)
    }

    fn origins(addr: &str) -> Origins {
        let ing = Ingress::parse(&format!("ingress:\n  - service: http://{addr}\n")).unwrap();
        Origins::build(&ing).unwrap()
    }

    /// One request through rule 0, its whole body read inside the lease.
    async fn get(o: &Origins, path: &str, release: bool) -> String {
        let req = Request::get(path)
            .body(gatehouse_tunnel_io::stream::empty())
            .unwrap();
        let (resp, mut lease) = o.send(0, req, false).await.unwrap();
        let body = lease.drive(resp.into_body().collect()).await.unwrap();
        if release {
            lease.release();
        }
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn match_sni_to_host_targets_the_request_host() {
        let req = |host: &str| {
            Request::get("/x?y=1")
                .header(http::header::HOST, host)
                .body(gatehouse_tunnel_io::stream::empty())
                .unwrap()
        };
        let r = sni_target(8443, req("App.Example:443")).unwrap();
        assert_eq!(r.uri().to_string(), "https://App.Example:8443/x?y=1");
        // An address would be dialled directly instead of the origin.
        for host in ["10.0.0.5", "10.0.0.5:443", "[::1]:443", "::1", ""] {
            assert!(
                matches!(sni_target(443, req(host)), Err(OriginError::SniHost(_))),
                "{host}"
            );
        }
    }

    #[tokio::test]
    async fn a_released_connection_serves_the_next_request() {
        let (addr, mut events, _) = origin().await;
        let o = origins(&addr);
        for i in 0..5 {
            let body = get(&o, &format!("/r{i}?q=1"), true).await;
            // Sent in origin form, all on the first connection.
            assert_eq!(body, format!("conn 1 GET /r{i}?q=1 HTTP/1.1"));
        }
        assert_eq!(events.try_recv(), Ok("accepted"));
        assert!(events.try_recv().is_err(), "one connection only");
    }

    #[tokio::test]
    async fn a_lease_dropped_unreleased_closes_its_connection() {
        let (addr, mut events, _) = origin().await;
        let o = origins(&addr);
        assert_eq!(get(&o, "/a", false).await, "conn 1 GET /a HTTP/1.1");
        assert_eq!(events.recv().await, Some("accepted"));
        assert_eq!(events.recv().await, Some("closed"));
        assert_eq!(get(&o, "/b", true).await, "conn 2 GET /b HTTP/1.1");
    }

    #[tokio::test]
    async fn a_connection_the_origin_closed_while_idle_is_not_reused() {
        let (addr, mut events, close) = origin().await;
        let o = origins(&addr);
        for i in 1..=3 {
            assert_eq!(get(&o, "/", true).await, format!("conn {i} GET / HTTP/1.1"));
            assert_eq!(o.idle_len(0), 1);
            assert_eq!(events.recv().await, Some("accepted"));
            close.notify_waiters();
            assert_eq!(events.recv().await, Some("closed"));
            // The close is on our socket now; let the reactor see it.
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn idle_connections_expire_and_are_bounded() {
        let (addr, mut events, _) = origin().await;
        let ing = Ingress::parse(&format!(
            "originRequest: {{keepAliveConnections: 1, keepAliveTimeout: 0s}}\ningress:\n  - service: http://{addr}\n"
        ))
        .unwrap();
        let o = Origins::build(&ing).unwrap();
        // A zero idle timeout keeps nothing: every request dials.
        assert_eq!(get(&o, "/", true).await, "conn 1 GET / HTTP/1.1");
        assert_eq!(get(&o, "/", true).await, "conn 2 GET / HTTP/1.1");
        let _ = events.recv().await;
        let _ = events.recv().await;
        // Two leases at once, both released: one stays idle, one closes.
        let ing = Ingress::parse(&format!(
            "originRequest: {{keepAliveConnections: 1}}\ningress:\n  - service: http://{addr}\n"
        ))
        .unwrap();
        let o = Origins::build(&ing).unwrap();
        let req = || {
            Request::get("/")
                .body(gatehouse_tunnel_io::stream::empty())
                .unwrap()
        };
        let (r1, mut l1) = o.send(0, req(), false).await.unwrap();
        let (r2, mut l2) = o.send(0, req(), false).await.unwrap();
        l1.drive(r1.into_body().collect()).await.unwrap();
        l2.drive(r2.into_body().collect()).await.unwrap();
        l1.release();
        l2.release();
        assert_eq!(o.idle_len(0), 1);
    }
}
