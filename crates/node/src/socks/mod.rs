//! The local proxy: SOCKS5 (RFC 1928, no authentication, CONNECT only) and
//! HTTP CONNECT on one port, told apart by the first byte. Names are
//! resolved by the node from the map (SOCKS5 "remote DNS", as
//! `socks5h://` clients ask), so mesh names need no resolver on the client.
//! Only mesh destinations are served: a name outside the mesh, or an
//! address no mesh node has, is refused (SOCKS5 "not allowed by ruleset",
//! HTTP 403); the node never dials out to the internet on a client's behalf.

pub mod connect;
pub mod socks5;

use crate::netmap::{Lookup, Names};
use crate::plane::{Dial, Stream};
use prometheus_client::metrics::counter::Counter;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a client may take to send its request (the dial that follows
/// has its own limit).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening the mesh connection may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Which protocol a client spoke: how to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Socks5,
    Http,
}

/// Counters of the local proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Tunnels opened.
    pub opened: Counter,
    /// Requests refused: not a mesh destination, or unsupported.
    pub refused: Counter,
    /// Mesh connections that failed.
    pub failed: Counter,
    /// Malformed requests.
    pub malformed: Counter,
}

/// What the proxy needs: a dialer into the mesh and the map's names.
#[derive(Debug, Clone)]
pub struct ProxyContext {
    /// Opens mesh connections.
    pub dialer: Arc<dyn Dial>,
    /// Resolves mesh names.
    pub names: Arc<dyn Names>,
    /// Counters.
    pub stats: Arc<ProxyStats>,
}

/// Why a destination was not reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NotMesh,
    NoSuchHost,
    NotReady,
    Refused,
    Unreachable,
    TimedOut,
    Other,
}

impl Failure {
    fn socks(self) -> socks5::Reply {
        use socks5::Reply;
        match self {
            Failure::NotMesh => Reply::NotAllowed,
            Failure::NoSuchHost | Failure::Unreachable => Reply::HostUnreachable,
            Failure::NotReady | Failure::Other => Reply::GeneralFailure,
            Failure::Refused => Reply::ConnectionRefused,
            Failure::TimedOut => Reply::TtlExpired,
        }
    }

    fn http(self) -> &'static str {
        match self {
            Failure::NotMesh => "403 Forbidden",
            Failure::NoSuchHost => "404 Not Found",
            Failure::NotReady => "503 Service Unavailable",
            Failure::TimedOut => "504 Gateway Timeout",
            Failure::Refused | Failure::Unreachable | Failure::Other => "502 Bad Gateway",
        }
    }

    fn from_io(e: &std::io::Error) -> Failure {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Failure::Refused,
            std::io::ErrorKind::TimedOut => Failure::TimedOut,
            std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::AddrNotAvailable => {
                Failure::Unreachable
            }
            _ => Failure::Other,
        }
    }
}

/// The addresses to try for a name, in order: its IPv4 addresses (one per
/// replica for a shared name), or else all of them.
fn resolve_name(names: &dyn Names, name: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    match names.lookup(name) {
        Lookup::Found(addrs) => {
            let v4: Vec<SocketAddr> = addrs
                .iter()
                .filter(|a| a.is_ipv4())
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
            let all = if v4.is_empty() {
                addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
            } else {
                v4
            };
            if all.is_empty() {
                Err(Failure::NoSuchHost)
            } else {
                Ok(all)
            }
        }
        Lookup::NoSuchHost => Err(Failure::NoSuchHost),
        Lookup::NotMesh => Err(Failure::NotMesh),
        Lookup::NotReady => Err(Failure::NotReady),
    }
}

fn resolve_ip(names: &dyn Names, ip: IpAddr, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    match names.reverse(ip) {
        Some(_) => Ok(vec![SocketAddr::new(ip, port)]),
        None => Err(Failure::NotMesh),
    }
}

async fn dial(ctx: &ProxyContext, dst: SocketAddr) -> Result<crate::plane::BoxStream, Failure> {
    match tokio::time::timeout(DIAL_TIMEOUT, ctx.dialer.dial(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            tracing::debug!(%dst, error = %e, "proxy: mesh connection");
            Err(Failure::from_io(&e))
        }
        Err(_) => Err(Failure::TimedOut),
    }
}

/// How long a connection attempt to one replica of a shared name runs
/// before the next replica is tried beside it.
const STAGGER: Duration = Duration::from_millis(250);

/// Connects to the first of `dsts` that answers, the way Happy Eyeballs
/// (RFC 8305) races addresses: the next attempt starts when the previous
/// one fails or after [`STAGGER`] without an answer; the first connection
/// made wins and the others are dropped. With one address it is a plain
/// dial. A shared name's replicas are several addresses, so a replica that
/// is down costs a new connection at most [`STAGGER`].
async fn dial_any(
    ctx: &ProxyContext,
    dsts: Vec<SocketAddr>,
) -> Result<(crate::plane::BoxStream, SocketAddr), Failure> {
    use futures::StreamExt;
    let mut next = dsts.into_iter();
    let mut attempts = futures::stream::FuturesUnordered::new();
    let start = |dst: SocketAddr| async move { (dst, dial(ctx, dst).await) };
    let Some(first) = next.next() else {
        return Err(Failure::NoSuchHost);
    };
    attempts.push(start(first));
    let mut last = Failure::NoSuchHost;
    loop {
        let more = next.len() > 0;
        tokio::select! {
            done = attempts.next(), if !attempts.is_empty() => match done {
                Some((dst, Ok(s))) => return Ok((s, dst)),
                Some((_, Err(f))) => {
                    last = f;
                    match next.next() {
                        Some(d) => attempts.push(start(d)),
                        None if attempts.is_empty() => return Err(last),
                        None => {}
                    }
                }
                None => return Err(last),
            },
            () = tokio::time::sleep(STAGGER), if more => {
                if let Some(d) = next.next() {
                    attempts.push(start(d));
                }
            }
        }
    }
}

/// Reads more bytes into `buf`; `false` on end of stream or error.
async fn fill<S: Stream>(s: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Serves one local client.
pub async fn handle<S: Stream>(mut stream: S, from: SocketAddr, ctx: ProxyContext) {
    let mut buf = Vec::with_capacity(512);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        if !fill(&mut stream, &mut buf).await {
            return None;
        }
        match buf.first() {
            Some(&socks5::VERSION) => socks5_request(&mut stream, &mut buf, &ctx)
                .await
                .map(|d| (Proto::Socks5, d)),
            Some(b) if b.is_ascii_uppercase() => http_request(&mut stream, &mut buf, &ctx)
                .await
                .map(|d| (Proto::Http, d)),
            _ => {
                ctx.stats.malformed.inc();
                None
            }
        }
    })
    .await;
    let Ok(Some((proto, dst))) = head else {
        return;
    };
    let result = match dst {
        Ok(dsts) => dial_any(&ctx, dsts).await,
        Err(f) => Err(f),
    };
    let answered = match (&result, proto) {
        (Ok(_), Proto::Socks5) => stream
            .write_all(&socks5::encode_reply(socks5::Reply::Succeeded))
            .await
            .is_ok(),
        (Ok(_), Proto::Http) => stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_ok(),
        (Err(f), Proto::Socks5) => {
            count_failure(&ctx, *f);
            let _ = stream.write_all(&socks5::encode_reply(f.socks())).await;
            false
        }
        (Err(f), Proto::Http) => {
            count_failure(&ctx, *f);
            http_reply(&mut stream, f.http(), "no tunnel to that destination\n").await;
            false
        }
    };
    let Ok((mut upstream, dst)) = result else {
        return;
    };
    if !answered {
        return;
    }
    ctx.stats.opened.inc();
    tracing::debug!(%from, %dst, "proxy: tunnel open");
    if !buf.is_empty() && upstream.write_all(&buf).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
}

/// The SOCKS5 exchange up to the request: the destination it names (or
/// why it cannot be served), `None` when the client was answered already or
/// went away. Leaves in `buf` what the client sent after its request.
async fn socks5_request<S: Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    ctx: &ProxyContext,
) -> Option<Result<Vec<SocketAddr>, Failure>> {
    let malformed = || {
        ctx.stats.malformed.inc();
    };
    let greeting = loop {
        match socks5::parse_greeting(buf) {
            Ok(Some((g, used))) => {
                buf.drain(..used);
                break g;
            }
            Ok(None) if fill(stream, buf).await => {}
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "socks5: greeting");
                malformed();
                return None;
            }
        }
    };
    if !greeting.offers_no_auth() {
        ctx.stats.refused.inc();
        let _ = stream
            .write_all(&[socks5::VERSION, socks5::METHOD_NONE_ACCEPTABLE])
            .await;
        return None;
    }
    stream
        .write_all(&[socks5::VERSION, socks5::METHOD_NO_AUTH])
        .await
        .ok()?;
    let request = loop {
        match socks5::parse_request(buf) {
            Ok(Some((r, used))) => {
                buf.drain(..used);
                break r;
            }
            Ok(None) if fill(stream, buf).await => {}
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "socks5: request");
                malformed();
                let _ = stream
                    .write_all(&socks5::encode_reply(socks5::Reply::GeneralFailure))
                    .await;
                return None;
            }
        }
    };
    let reply = |r| socks5::encode_reply(r);
    if request.command != socks5::Command::Connect {
        ctx.stats.refused.inc();
        let _ = stream
            .write_all(&reply(socks5::Reply::CommandNotSupported))
            .await;
        return None;
    }
    match &request.target {
        Ok(socks5::Target::Name(n)) => Some(resolve_name(ctx.names.as_ref(), n, request.port)),
        Ok(socks5::Target::Ip(ip)) => Some(resolve_ip(ctx.names.as_ref(), *ip, request.port)),
        Err(_) => {
            ctx.stats.refused.inc();
            let _ = stream
                .write_all(&reply(socks5::Reply::AddressTypeNotSupported))
                .await;
            None
        }
    }
}

fn count_failure(ctx: &ProxyContext, f: Failure) {
    let c = match f {
        Failure::NotMesh => &ctx.stats.refused,
        _ => &ctx.stats.failed,
    };
    c.inc();
}

async fn http_reply<S: Stream>(stream: &mut S, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes()).await;
}

/// The HTTP CONNECT exchange up to the request head: the destination it
/// names (or why it cannot be served), `None` when the client was answered
/// already or went away. Leaves in `buf` what the client sent after its head.
async fn http_request<S: Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    ctx: &ProxyContext,
) -> Option<Result<Vec<SocketAddr>, Failure>> {
    let head = loop {
        match connect::parse_head(buf) {
            Ok(Some((h, used))) => {
                buf.drain(..used);
                break h;
            }
            Ok(None) if fill(stream, buf).await => {}
            Ok(None) => return None,
            Err(e) => {
                ctx.stats.malformed.inc();
                http_reply(stream, "400 Bad Request", &format!("{e}\n")).await;
                return None;
            }
        }
    };
    if head.method != "CONNECT" {
        ctx.stats.refused.inc();
        http_reply(
            stream,
            "405 Method Not Allowed",
            "this proxy serves CONNECT only\n",
        )
        .await;
        return None;
    }
    let target = match head.connect_target() {
        Ok(t) => t,
        Err(e) => {
            ctx.stats.malformed.inc();
            http_reply(stream, "400 Bad Request", &format!("{e}\n")).await;
            return None;
        }
    };
    Some(match &target.host {
        connect::Host::Name(n) => resolve_name(ctx.names.as_ref(), n, target.port),
        connect::Host::Ip(ip) => resolve_ip(ctx.names.as_ref(), *ip, target.port),
    })
}
