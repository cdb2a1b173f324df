//! The operations endpoints of a long-running process, on a listener of
//! their own: `/healthz` (the process runs), `/readyz` (and cloudflared's
//! `/ready`: it serves), `/metrics` (Prometheus text format).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Whether the process serves (answers `/readyz`), and why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The process's metrics in the Prometheus text format, read per request.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// The metrics of a registry.
pub fn registry_metrics(registry: Arc<Registry>) -> Metrics {
    Arc::new(move || encode(&registry))
}

/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The answer to one request for `path`.
pub fn answer(path: &str, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    let (status, body, ctype) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/ready" | "/readyz" => match ready() {
            Ok(()) => (StatusCode::OK, "ready\n".to_owned(), "text/plain"),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => (StatusCode::OK, metrics(), METRICS_CONTENT_TYPE),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}

/// Serves the operations endpoints on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            () = &mut stop => return,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let resp = answer(req.uri().path(), &metrics, &ready);
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;

    async fn text(r: Response<Full<Bytes>>) -> (StatusCode, String) {
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn endpoints() {
        let mut registry = Registry::with_prefix("t");
        let c = Counter::<u64>::default();
        registry.register("hits", "Hits", c.clone());
        c.inc();
        let registry = registry_metrics(Arc::new(registry));
        let up: Readiness = Arc::new(|| Ok(()));
        let down: Readiness = Arc::new(|| Err("no live tunnel connection".into()));
        assert_eq!(
            text(answer("/healthz", &registry, &down)).await.0,
            StatusCode::OK
        );
        assert_eq!(
            text(answer("/readyz", &registry, &up)).await.0,
            StatusCode::OK
        );
        assert_eq!(
            text(answer("/ready", &registry, &down)).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no live tunnel connection\n".to_string()
            )
        );
        let (s, m) = text(answer("/metrics", &registry, &up)).await;
        assert_eq!(s, StatusCode::OK);
        assert!(m.contains("t_hits_total 1"), "{m}");
        assert_eq!(
            text(answer("/x", &registry, &up)).await.0,
            StatusCode::NOT_FOUND
        );
    }
}
