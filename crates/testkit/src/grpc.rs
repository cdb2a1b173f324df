//! gRPC on the wire (HTTP/2, length-prefixed messages, status in trailers):
//! an h2c origin with a unary and a bidirectional-streaming method, and a
//! client over TLS.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::SinkExt;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;
type Tx = futures::channel::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// Encodes one gRPC message.
pub fn message(payload: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload.as_bytes());
    b.freeze()
}

/// Takes every complete message off the front of `buf`.
pub fn parse(buf: &mut BytesMut) -> Vec<String> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        let m = buf.split_to(len);
        out.push(String::from_utf8_lossy(&m).into_owned());
    }
    out
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("grpc-message", "done".parse().unwrap());
    t
}

/// Starts the h2c origin; returns its address.
pub async fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(answer(req))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn answer(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let (tx, rx) = futures::channel::mpsc::channel(16);
    let body = req.into_body();
    tokio::spawn(async move {
        let streaming = path.ends_with("/Stream");
        run(body, tx, streaming).await;
    });
    let mut r = Response::new(StreamBody::new(rx).boxed());
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    r
}

async fn run(mut body: Incoming, mut tx: Tx, streaming: bool) {
    let mut buf = BytesMut::new();
    let mut all = Vec::new();
    while let Some(Ok(f)) = body.frame().await {
        if let Some(d) = f.data_ref() {
            buf.extend_from_slice(d);
        }
        for m in parse(&mut buf) {
            if streaming {
                let _ = tx
                    .send(Ok(Frame::data(message(&format!("echo {m}")))))
                    .await;
            } else {
                all.push(m);
            }
        }
    }
    if !streaming {
        let reply = format!("hello {}", all.join(","));
        let _ = tx.send(Ok(Frame::data(message(&reply)))).await;
    }
    let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
}

/// A gRPC client over TLS (HTTP/2) to one address.
pub struct Client {
    sender: hyper::client::conn::http2::SendRequest<Body>,
    host: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("host", &self.host).finish()
    }
}

/// One open bidirectional call.
pub struct Call {
    tx: Tx,
    body: Incoming,
    buf: BytesMut,
    pending: std::collections::VecDeque<String>,
    /// Trailers, once the response ended.
    pub trailers: Option<HeaderMap>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with TLS (ALPN h2) to `addr`, naming `host`.
    pub async fn connect(addr: SocketAddr, host: &str, tls: rustls::ClientConfig) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let s = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        Self {
            sender,
            host: host.to_owned(),
        }
    }

    /// Starts a call of `method` (`/pkg.Service/Method`).
    pub async fn call(&mut self, method: &str) -> (Response<()>, Call) {
        let (tx, rx) = futures::channel::mpsc::channel(16);
        let req = Request::post(format!("https://{}{method}", self.host))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(rx).boxed())
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (
            Response::from_parts(parts, ()),
            Call {
                tx,
                body,
                buf: BytesMut::new(),
                pending: Default::default(),
                trailers: None,
            },
        )
    }
}

impl Call {
    /// Sends one message.
    pub async fn send(&mut self, m: &str) {
        self.tx.send(Ok(Frame::data(message(m)))).await.unwrap();
    }

    /// Ends the request stream.
    pub fn close(&mut self) {
        self.tx.close_channel();
    }

    /// The next response message; `None` at the end (trailers then set).
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            let f = self.body.frame().await?.ok()?;
            if let Some(d) = f.data_ref() {
                self.buf.extend_from_slice(d);
                self.pending.extend(parse(&mut self.buf));
            } else if let Ok(t) = f.into_trailers() {
                self.trailers = Some(t);
            }
        }
    }
}
