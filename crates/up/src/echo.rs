//! `builtin:echo`: a small HTTP backend on a loopback port that answers
//! every request with what it received, one `key=value` a line: the
//! service's name, the method, the path (with the query), and every
//! identity header the serve node or the edge added (`gatehouse-*`,
//! `x-forwarded-*`). It counts the requests it answered.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running echo backend.
#[derive(Debug)]
pub struct Echo {
    /// Its address.
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// The answer to one request.
pub fn answer<B>(service: &str, req: &Request<B>) -> String {
    let mut out = format!(
        "service={service}\nmethod={}\npath={}\n",
        req.method(),
        req.uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), ToString::to_string)
    );
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k.starts_with("gatehouse-") || k.starts_with("x-forwarded-") || k == "host"
        })
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    for (k, v) in headers {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

impl Echo {
    /// Starts an echo backend for `service` on `127.0.0.1:0`.
    pub async fn start(service: &str) -> std::io::Result<Echo> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let name: Arc<str> = Arc::from(service);
        let count = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let name = Arc::clone(&name);
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        count.fetch_add(1, Ordering::Relaxed);
                        let body = answer(&name, &req);
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = StatusCode::OK;
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; charset=utf-8"),
                        );
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Echo {
            addr,
            requests,
            task,
        })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops listening (connections being served finish on their own).
    pub fn stop(&self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_method_path_and_identity_headers() {
        let req = Request::builder()
            .method("POST")
            .uri("/a/b?x=1")
            .header("Gatehouse-User-Login", "alice@example.com")
            .header("X-Forwarded-For", "100.64.0.2")
            .header("Cookie", "secret")
            .body(())
            .unwrap();
        assert_eq!(
            answer("blog", &req),
            "service=blog\nmethod=POST\npath=/a/b?x=1\ngatehouse-user-login=alice@example.com\nx-forwarded-for=100.64.0.2\n"
        );
    }
}
