//! The small operations HTTP server both ends run: `/ready`, `/healthz`,
//! `/metrics` (Prometheus text format).

use crate::stream::{TunnelBody, full};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the operations endpoints on `listener` until the task is dropped.
/// `ready` says whether at least one tunnel connection is live.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = answer(req.uri().path(), &registry, &*ready);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn answer(path: &str, registry: &Registry, ready: &dyn Fn() -> bool) -> Response<TunnelBody> {
    let (status, body, ctype) = match path {
        "/ready" | "/readyz" => {
            if ready() {
                (StatusCode::OK, "ready\n".to_owned(), "text/plain")
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no live tunnel connection\n".to_owned(),
                    "text/plain",
                )
            }
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/metrics" => {
            let mut s = String::new();
            match prometheus_client::encoding::text::encode(&mut s, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    s,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    String::new(),
                    "text/plain",
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}

/// Binds the operations listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
