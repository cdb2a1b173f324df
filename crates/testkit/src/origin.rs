//! Real origins on loopback sockets.
//!
//! The HTTP origin answers:
//! - `/sse`: `text/event-stream`; sends `data: first`, then waits until the
//!   test calls [`HttpOrigin::release_sse`], then `data: second` and ends;
//! - `/bulk/N`: N bytes, streamed in 64 KiB chunks;
//! - `/upload`: reads the whole request body and answers its length;
//! - `/ws`: WebSocket echo;
//! - anything else: a text echo of what it received (one `key=value` a line,
//!   including the Access assertion and the cookies).
//!
//! Every request's raw target is recorded for the path-bypass tests.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Body = BoxBody<Bytes, std::io::Error>;

/// A running HTTP origin.
#[derive(Debug, Clone)]
pub struct HttpOrigin {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    sse: Arc<Notify>,
    /// Name it puts in every echo (to tell origins apart).
    pub name: String,
}

impl HttpOrigin {
    fn new(name: &str, addr: SocketAddr) -> Self {
        Self {
            addr,
            seen: Arc::default(),
            sse: Arc::new(Notify::new()),
            name: name.to_owned(),
        }
    }

    fn serve<IO>(&self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let me = me.clone();
                async move { Ok::<_, std::convert::Infallible>(me.answer(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .await;
        });
    }

    /// Starts an origin on 127.0.0.1.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let o = Self::new(name, listener.local_addr().unwrap());
        let me = o.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                me.serve(tcp);
            }
        });
        o
    }

    /// Starts an HTTPS origin on 127.0.0.1 with the given certificate.
    pub async fn start_tls(name: &str, leaf: &crate::pki::Leaf) -> Self {
        let cfg = leaf.server_config(&[]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let o = Self::new(name, listener.local_addr().unwrap());
        let me = o.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    me.serve(tls);
                }
            }
        });
        o
    }

    /// Starts an origin on a Unix socket.
    pub async fn start_unix(name: &str, path: &std::path::Path) -> Self {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let o = Self::new(name, SocketAddr::from(([127, 0, 0, 1], 0)));
        let me = o.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                me.serve(s);
            }
        });
        o
    }

    /// Request targets received so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Lets the pending `/sse` responses send their second event and end.
    pub fn release_sse(&self) {
        self.sse.notify_waiters();
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        self.seen.lock().unwrap().push(target.clone());
        let path = req.uri().path().to_owned();
        if path == "/sse" {
            return self.sse();
        }
        if let Some(n) = path.strip_prefix("/bulk/") {
            return bulk(n.parse().unwrap_or(0));
        }
        if path == "/upload" {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "body error".into()),
                }
            }
            return text(StatusCode::OK, format!("received={n}\n"));
        }
        if path == "/ws" {
            return ws_echo(req);
        }
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let body = format!(
            "origin={}\nmethod={}\ntarget={}\nhost={}\nx-forwarded-for={}\nx-forwarded-proto={}\nx-forwarded-host={}\nclient-ip={}\nrequest-id={}\nuser-login={}\naccess-assertion={}\ncookie={}\n",
            self.name,
            req.method(),
            target,
            h("host"),
            h("x-forwarded-for"),
            h("x-forwarded-proto"),
            h("x-forwarded-host"),
            h("gatehouse-client-ip"),
            h("gatehouse-request-id"),
            h("gatehouse-user-login"),
            h("gatehouse-access-jwt-assertion"),
            req.headers()
                .get_all("cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(" | "),
        );
        text(StatusCode::OK, body)
    }

    fn sse(&self) -> Response<Body> {
        let notify = self.sse.clone();
        let (tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        tokio::spawn(async move {
            let mut tx = tx;
            let released = notify.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                .await;
            released.await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
                .await;
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(rx)));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        r
    }
}

fn text(status: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    r
}

fn bulk(n: usize) -> Response<Body> {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let s = futures::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let k = left.min(chunk.len());
            Some((Ok(Frame::data(chunk.slice(..k))), left - k))
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(s)));
    r.headers_mut()
        .insert("content-length", n.to_string().parse().unwrap());
    r
}

fn ws_echo(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket request\n".into());
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    r.headers_mut()
        .insert("upgrade", "websocket".parse().unwrap());
    r.headers_mut()
        .insert("sec-websocket-accept", accept.parse().unwrap());
    r
}

/// A TCP echo server; returns its address.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A minimal HTTP/1.1 backend on `addr` answering every request with
/// `hello <login><tail>\n`, where `<login>` is the `Gatehouse-User-Login`
/// header serve added (`nobody` without one); one request per connection.
pub async fn hello(addr: SocketAddr, tail: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
                let who = head
                    .lines()
                    .find_map(|l| l.strip_prefix("gatehouse-user-login: "))
                    .unwrap_or("nobody")
                    .trim()
                    .to_string();
                let body = format!("hello {who}{tail}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}
