//! gRPC through `serve`: a tonic client (HTTP/2 over TLS, through laptop's
//! SOCKS5 proxy) calls a tonic server behind blog's `h2c://` route. Unary
//! and server-streaming calls; the gRPC status and custom metadata travel
//! in HTTP/2 trailers, so they arrive only if serve forwards trailers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Buf, BufMut};
use common::*;
use gatehouse_node::serve::route::parse_route;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Messages are raw bytes: no code generation needed.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

fn login(md: &MetadataMap) -> String {
    md.get("gatehouse-user-login")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// A gRPC server on plain HTTP/2: `Unary` answers `<request>|<caller>`,
/// `Stream` sends N messages then a status (and metadata) in trailers.
async fn grpc_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let resp = match req.uri().path() {
                        "/test.Echo/Unary" => {
                            let svc = tower::service_fn(|r: tonic::Request<Vec<u8>>| async move {
                                let mut out = r.get_ref().clone();
                                out.push(b'|');
                                out.extend_from_slice(login(r.metadata()).as_bytes());
                                Ok::<_, Status>(tonic::Response::new(out))
                            });
                            tonic::server::Grpc::new(Raw).unary(svc, req).await
                        }
                        "/test.Echo/Stream" => {
                            let svc = tower::service_fn(|r: tonic::Request<Vec<u8>>| async move {
                                let spec = String::from_utf8_lossy(r.get_ref()).into_owned();
                                let (n, fail) = spec.split_once(',').unwrap_or((&spec, ""));
                                let n: usize = n.parse().unwrap_or(0);
                                let mut items: Vec<Result<Vec<u8>, Status>> = (0..n)
                                    .map(|i| Ok(format!("msg {i}").into_bytes()))
                                    .collect();
                                let mut md = MetadataMap::new();
                                md.insert("x-sent", n.to_string().parse().unwrap());
                                let end = if fail == "fail" {
                                    Status::with_metadata(
                                        Code::FailedPrecondition,
                                        "stopped on purpose",
                                        md,
                                    )
                                } else {
                                    Status::with_metadata(Code::Ok, "", md)
                                };
                                items.push(Err(end));
                                Ok::<_, Status>(tonic::Response::new(tokio_stream::iter(items)))
                            });
                            tonic::server::Grpc::new(Raw)
                                .server_streaming(svc, req)
                                .await
                        }
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, Infallible>(resp)
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(executor())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_with_trailers() {
    let control = control().await;
    let dir = tempfile::tempdir().unwrap();
    let grpc = grpc_backend().await;
    let key = control.key(None, &["tag:k8s", "tag:blog"], false).await;
    let mut cfg = node_config(&control, &key, "blog", dir.path().join("blog"));
    cfg.routes = vec![parse_route(&format!("/=h2c://{grpc}")).unwrap()];
    let blog = start(cfg).await;
    let key = control.key(Some("alice@example.com"), &[], false).await;
    let mut cfg = node_config(&control, &key, "laptop", dir.path().join("laptop"));
    cfg.socks5 = Some("127.0.0.1:0".parse().unwrap());
    let laptop = start(cfg).await;
    wait_for("laptop knows blog's endpoint", async || {
        laptop
            .status()
            .peers
            .iter()
            .any(|p| p.name == "blog" && !p.endpoints.is_empty())
    })
    .await;

    let socks = laptop.bound.socks5.unwrap();
    let host = blog.identity.fqdn.clone();
    let ca = control.ca.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (host, ca) = (host.clone(), ca.clone());
        async move {
            let tls = mesh_tls(socks, &host, &ca, &[b"h2"]).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", blog.identity.fqdn))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);

    client.ready().await.unwrap();
    let resp = client
        .unary(
            tonic::Request::new(b"ping".to_vec()),
            PathAndQuery::from_static("/test.Echo/Unary"),
            Raw,
        )
        .await
        .unwrap();
    assert_eq!(resp.into_inner(), b"ping|alice@example.com");

    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            tonic::Request::new(b"3".to_vec()),
            PathAndQuery::from_static("/test.Echo/Stream"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(String::from_utf8(m).unwrap());
    }
    assert_eq!(got, ["msg 0", "msg 1", "msg 2"]);
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("x-sent").unwrap(), "3");

    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            tonic::Request::new(b"2,fail".to_vec()),
            PathAndQuery::from_static("/test.Echo/Stream"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap(), b"msg 0");
    assert_eq!(stream.message().await.unwrap().unwrap(), b"msg 1");
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "stopped on purpose");
    assert_eq!(status.metadata().get("x-sent").unwrap(), "2");

    client.ready().await.unwrap();
    let err = client
        .unary(
            tonic::Request::new(Vec::new()),
            PathAndQuery::from_static("/test.Echo/Nope"),
            Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}
