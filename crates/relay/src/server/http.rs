//! The relay's HTTP paths: `/derp` (the `Upgrade: DERP` form, with fast
//! start on a listener of its own, and the WebSocket form), `/derp/probe`
//! and `/derp/latency-check` (latency probes) and `/generate_204` (captive
//! portal detection).

use super::{RelayServer, conn};
use crate::frame::PROTOCOL_VERSION;
use crate::wire::{BoxIo, Io, Rewind, Wire, websocket_config};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The paths the relay answers (mount each on a server that embeds it).
pub const PATHS: [&str; 4] = [
    "/derp",
    "/derp/probe",
    "/derp/latency-check",
    "/generate_204",
];

/// Largest HTTP request head read on the relay's own listener before
/// handing the connection to the HTTP server.
const MAX_HEAD: usize = 8 << 10;

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn header_has(h: &HeaderMap, name: &str, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The answer of `/derp/probe` and `/derp/latency-check`.
fn probe(method: &Method) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "bogus probe method\n");
    }
    let mut r = text(StatusCode::OK, "");
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// The challenge of `/generate_204`, echoed when it is at most 64 of
/// `[A-Za-z0-9._:-]`.
fn generate_204(h: &HeaderMap) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::NO_CONTENT, "");
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate, no-transform, max-age=0"),
    );
    if let Some(c) = h.get("X-Tailscale-Challenge").and_then(|v| v.to_str().ok())
        && !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && let Ok(v) = HeaderValue::from_str(&format!("response {c}"))
    {
        r.headers_mut().insert("X-Tailscale-Response", v);
    }
    r
}

fn websocket_wanted(h: &HeaderMap) -> bool {
    header_has(h, "upgrade", "websocket") && header_has(h, "sec-websocket-protocol", "derp")
}

impl RelayServer {
    /// Answers one HTTP request on a relay path ([`PATHS`]); anything else
    /// is 404. Mount it on a hyper server that serves upgrades
    /// (`serve_connection_with_upgrades`): `/derp` upgrades to DERP or to a
    /// WebSocket and the connection then runs here, on its own task.
    /// `remote` is the client's address (for logs). The request's extensions
    /// are kept until the relay connection ends, so a connection-limit slot
    /// the server attached keeps counting it.
    pub async fn handle<B: Send + 'static>(
        self: &Arc<Self>,
        mut req: Request<B>,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/derp/probe" | "/derp/latency-check" => return probe(req.method()),
            "/generate_204" => return generate_204(req.headers()),
            "/derp" => {}
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        }
        let h = req.headers();
        if websocket_wanted(h) {
            let Some(key) = h.get("sec-websocket-key") else {
                return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
            };
            let accept = derive_accept_key(key.as_bytes());
            let on_upgrade = hyper::upgrade::on(&mut req);
            let extensions = std::mem::take(req.extensions_mut());
            let server = Arc::clone(self);
            tokio::spawn(async move {
                // Whatever the embedding server put in the request (a
                // connection-limit slot) lives as long as the connection.
                let _extensions = extensions;
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let io: BoxIo = Box::new(TokioIo::new(upgraded));
                let ws =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(websocket_config()))
                        .await;
                conn::serve(
                    server,
                    Wire::WebSocket(Box::new(ws)),
                    remote,
                    BytesMut::new(),
                )
                .await;
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
            let hs = r.headers_mut();
            hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            hs.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("derp"),
            );
            if let Ok(v) = HeaderValue::from_str(&accept) {
                hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            return r;
        }
        // Legacy clients sent `Upgrade: WebSocket` but spoke plain DERP.
        if !header_has(h, "upgrade", "derp") && !header_has(h, "upgrade", "websocket") {
            return text(
                StatusCode::UPGRADE_REQUIRED,
                "DERP requires connection upgrade\n",
            );
        }
        if h.get("derp-fast-start").is_some_and(|v| v == "1") {
            // A fast-start client reads no response; only the relay's own
            // listener (which never sends one) can serve it. Clients ask
            // for it only where the relay's meta certificate is served.
            return text(
                StatusCode::BAD_REQUEST,
                "Derp-Fast-Start is served on the relay's own listener only\n",
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let extensions = std::mem::take(req.extensions_mut());
        let server = Arc::clone(self);
        tokio::spawn(async move {
            let _extensions = extensions;
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io: BoxIo = Box::new(TokioIo::new(upgraded));
            conn::serve(server, Wire::Stream(io), remote, BytesMut::new()).await;
        });
        let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
        let hs = r.headers_mut();
        hs.insert(header::UPGRADE, HeaderValue::from_static("DERP"));
        hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        hs.insert("Derp-Version", HeaderValue::from(PROTOCOL_VERSION));
        if let Ok(v) = HeaderValue::from_str(&hex::encode(self.public_key().as_bytes())) {
            hs.insert("Derp-Public-Key", v);
        }
        r
    }

    /// Serves one connection of a listener dedicated to the relay (after
    /// TLS): the `Upgrade: DERP` request is answered here directly, which
    /// lets fast-start clients skip the response; every other request goes
    /// to an HTTP/1.1 server answering [`RelayServer::handle`].
    pub async fn serve_connection<S: Io + 'static>(self: Arc<Self>, mut io: S, remote: SocketAddr) {
        let mut head = BytesMut::with_capacity(1024);
        let read_head = async {
            loop {
                if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD {
                    return true;
                }
                match io.read_buf(&mut head).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        };
        match tokio::time::timeout(self.config.handshake_timeout, read_head).await {
            Ok(true) => {}
            _ => return,
        }
        let raw_derp = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&head) {
                Ok(httparse::Status::Complete(len)) if req.path == Some("/derp") => {
                    let mut map = HeaderMap::new();
                    for hd in req.headers.iter() {
                        if let (Ok(n), Ok(v)) = (
                            http::HeaderName::from_bytes(hd.name.as_bytes()),
                            HeaderValue::from_bytes(hd.value),
                        ) {
                            map.append(n, v);
                        }
                    }
                    let plain = header_has(&map, "upgrade", "derp")
                        || (header_has(&map, "upgrade", "websocket") && !websocket_wanted(&map));
                    let fast = map.get("derp-fast-start").is_some_and(|v| v == "1");
                    plain.then_some((len, fast))
                }
                _ => None,
            }
        };
        if let Some((len, fast)) = raw_derp {
            let rest = head.split_off(len);
            if !fast {
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\
                     Derp-Version: {PROTOCOL_VERSION}\r\nDerp-Public-Key: {}\r\n\r\n",
                    hex::encode(self.public_key().as_bytes())
                );
                if io.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            conn::serve(self, Wire::Stream(Box::new(io)), remote, rest).await;
            return;
        }
        let io = TokioIo::new(Rewind::new(head.freeze(), io));
        let server = Arc::clone(&self);
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let server = Arc::clone(&server);
            async move { Ok::<_, Infallible>(server.handle(req, remote).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.handshake_timeout)
            .serve_connection(io, svc)
            .with_upgrades()
            .await;
    }
}

/// The relay's "meta certificate": a self-signed certificate whose common
/// name carries the relay's public key (`derpkey<hex>`) and whose serial
/// number is the protocol version. Appended to the TLS chain of a listener
/// that runs [`RelayServer::serve_connection`], it lets Tailscale clients
/// on TLS 1.3 learn the key from the handshake and send their ClientInfo
/// without waiting for the HTTP response (fast start). Never add it to a
/// listener that serves the relay through [`RelayServer::handle`].
pub fn meta_certificate(
    server: &gatehouse_disco::NodePublicKey,
) -> Result<rustls::pki_types::CertificateDer<'static>, rcgen::Error> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("derpkey{}", hex::encode(server.as_bytes())),
    );
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[PROTOCOL_VERSION as u8]));
    Ok(p.self_signed(&kp)?.der().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_echo() {
        let mut h = HeaderMap::new();
        h.insert(
            "X-Tailscale-Challenge",
            HeaderValue::from_static("ts_192.0.2.1"),
        );
        let r = generate_204(&h);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["X-Tailscale-Response"], "response ts_192.0.2.1");
        h.insert(
            "X-Tailscale-Challenge",
            HeaderValue::from_static("bad value!"),
        );
        assert!(
            generate_204(&h)
                .headers()
                .get("X-Tailscale-Response")
                .is_none()
        );
        assert_eq!(
            probe(&Method::POST).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            probe(&Method::HEAD).headers()["access-control-allow-origin"],
            "*"
        );
    }

    #[test]
    fn meta_cert_names_the_key() {
        let key = gatehouse_disco::NodePublicKey([0xab; 32]);
        let der = meta_certificate(&key).unwrap();
        let needle = format!("derpkey{}", "ab".repeat(32));
        assert!(der.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
}
