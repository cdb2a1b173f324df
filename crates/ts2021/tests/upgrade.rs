//! The whole path a Tailscale client takes, over TCP on loopback: `POST
//! /ts2021` with the initiation in its header, `101 Switching Protocols`
//! from a hyper server, the handshake response and an early payload on the
//! upgraded connection, then HTTP/2 (hyper at both ends) inside the
//! session, the server knowing the client by its machine key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use gatehouse_ts2021::upgrade::{
    HANDSHAKE_HEADER, UPGRADE_PATH, UPGRADE_PROTOCOL, decode_handshake_header,
    encode_handshake_header, is_upgrade_protocol,
};
use gatehouse_ts2021::{
    ClientHandshake, ClientInfo, MachinePrivateKey, MachinePublicKey, accept_with_early_payload,
};
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

const VERSION: u16 = 142;
const CHALLENGE: &[u8] = br#"{"nodeKeyChallenge":"chalpub:1111111111111111111111111111111111111111111111111111111111111111"}"#;
/// Fails a test that would otherwise hang; nothing here is timed.
const DEADLINE: Duration = Duration::from_secs(60);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("deadline")
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn hex(k: &MachinePublicKey) -> String {
    k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The upgrade handler, as control mounts it.
async fn upgrade(
    mut req: Request<Incoming>,
    key: Arc<MachinePrivateKey>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let asks = req
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| is_upgrade_protocol(v.as_bytes()));
    if req.method() != Method::POST || req.uri().path() != UPGRADE_PATH || !asks {
        return Ok(text(StatusCode::BAD_REQUEST, "not an upgrade".into()));
    }
    let header = req
        .headers()
        .get(HANDSHAKE_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let init = match decode_handshake_header(header) {
        Ok(init) => init,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = TokioIo::new(on_upgrade.await.unwrap());
        let Ok((stream, client)) = accept_with_early_payload(io, &init, &key, CHALLENGE).await
        else {
            return;
        };
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| machine(req, client)),
            )
            .await;
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, UPGRADE_PROTOCOL)
        .header(CONNECTION, "upgrade")
        .body(Full::default())
        .unwrap())
}

/// A handler inside the session: answers with who asked and what they sent.
async fn machine(
    req: Request<Incoming>,
    client: ClientInfo,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    Ok(text(
        StatusCode::OK,
        format!(
            "{path} {} {} {}",
            hex(&client.machine_key),
            client.version,
            String::from_utf8_lossy(&body)
        ),
    ))
}

async fn start() -> (SocketAddr, MachinePublicKey) {
    let key = Arc::new(MachinePrivateKey::generate());
    let public = key.public();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let key = key.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| upgrade(req, key.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, public)
}

async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

fn upgrade_request(header: &str) -> Request<Empty<Bytes>> {
    Request::post(UPGRADE_PATH)
        .header(HOST, "control.test")
        .header(UPGRADE, UPGRADE_PROTOCOL)
        .header(CONNECTION, "upgrade")
        .header(HANDSHAKE_HEADER, header)
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn http2_inside_an_upgraded_session() {
    within(async {
        let (addr, server) = start().await;
        let machine_key = MachinePrivateKey::generate();
        let (hs, init) =
            ClientHandshake::new(&machine_key, server, VERSION, MachinePrivateKey::generate())
                .unwrap();
        let mut sender = http1(addr).await;
        let resp = sender
            .send_request(upgrade_request(&encode_handshake_header(&init)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()[UPGRADE], UPGRADE_PROTOCOL);
        let upgraded = hyper::upgrade::on(resp).await.unwrap();
        let mut stream = hs.complete(TokioIo::new(upgraded)).await.unwrap();
        assert_eq!(stream.peer(), server);
        assert_eq!(
            stream.early_payload().await.unwrap().as_deref(),
            Some(CHALLENGE)
        );

        let (h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        // Several requests at once on the one session.
        let asks: Vec<_> = (0..3)
            .map(|i| {
                let mut h2 = h2.clone();
                tokio::spawn(async move {
                    let req = Request::post(format!("http://control.test/machine/map{i}"))
                        .body(Full::new(Bytes::from(format!("body {i}"))))
                        .unwrap();
                    let resp = h2.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8(body.to_vec()).unwrap()
                })
            })
            .collect();
        let mut answers = Vec::new();
        for ask in asks {
            answers.push(ask.await.unwrap());
        }
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(
                answer,
                &format!(
                    "/machine/map{i} {} {VERSION} body {i}",
                    hex(&machine_key.public())
                )
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_bad_handshake_header_is_a_400() {
    within(async {
        let (addr, _) = start().await;
        let mut sender = http1(addr).await;
        let resp = sender
            .send_request(upgrade_request("not*base64"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("not valid base64"),
            "{body:?}"
        );
    })
    .await;
}
