//! The tracker over plain HTTP on a loopback port, watches included.

use super::request::{parse_path, query_param, selector_matches};
use super::{Tracker, WatchEvent};
use bytes::Bytes;
use http::{Method, Request, Response};
use serde_json::{Map, json};
use std::net::SocketAddr;
use tokio::sync::broadcast;

impl Tracker {
    /// Serves the tracker over plain HTTP/1.1 on 127.0.0.1 (watches stream
    /// newline-delimited events). The server runs until the runtime ends.
    pub async fn serve(&self) -> SocketAddr {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // As the API server (Go sets TCP_NODELAY on every connection).
                let _ = tcp.set_nodelay(true);
                let me = me.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let query = parts.uri.query().unwrap_or("").to_string();
                                if parts.method == Method::GET
                                    && query_param(&query, "watch").as_deref() == Some("true")
                                {
                                    return Ok::<_, std::convert::Infallible>(
                                        me.watch(parts.uri.path(), &query),
                                    );
                                }
                                let resp = me.handle(Request::from_parts(parts, bytes));
                                let (p, b) = resp.into_parts();
                                Ok(Response::from_parts(
                                    p,
                                    http_body_util::Either::Left(http_body_util::Full::new(b)),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// Streams the watch events of the resource `path` names, from the
    /// resource version the query gives, then live.
    fn watch(&self, path: &str, query: &str) -> Response<WatchBody> {
        use futures::StreamExt;
        let Some(Ok(t)) = parse_path(path) else {
            return Response::builder()
                .status(404)
                .body(http_body_util::Either::Left(http_body_util::Full::new(
                    Bytes::new(),
                )))
                .unwrap();
        };
        let from: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let sel = query_param(query, "labelSelector").unwrap_or_default();
        let rx = self.events.subscribe();
        let backlog: Vec<WatchEvent> = {
            let s = self.state.lock().unwrap();
            s.history.iter().filter(|e| e.rv > from).cloned().collect()
        };
        let last = backlog.last().map_or(from, |e| e.rv);
        let matches = move |e: &WatchEvent| {
            e.group == t.group
                && e.plural == t.plural
                && t.namespace
                    .as_ref()
                    .is_none_or(|n| e.object["metadata"]["namespace"].as_str() == Some(n))
                && selector_matches(
                    &sel,
                    e.object["metadata"]["labels"]
                        .as_object()
                        .unwrap_or(&Map::new()),
                )
        };
        let m2 = matches.clone();
        let frame = |e: WatchEvent| {
            Ok(hyper::body::Frame::data(Bytes::from(format!(
                "{}\n",
                json!({"type": e.kind, "object": e.object})
            ))))
        };
        let head =
            futures::stream::iter(backlog.into_iter().filter(move |e| matches(e)).map(frame));
        let live = tokio_stream_from(rx)
            .filter(move |e| futures::future::ready(e.rv > last && m2(e)))
            .map(frame);
        let body = http_body_util::StreamBody::new(head.chain(live).boxed());
        Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Either::Right(body))
            .unwrap()
    }
}

/// A plain answer or a stream of watch events.
type WatchBody = http_body_util::Either<
    http_body_util::Full<Bytes>,
    http_body_util::StreamBody<
        futures::stream::BoxStream<
            'static,
            Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
        >,
    >,
>;

fn tokio_stream_from(
    rx: broadcast::Receiver<WatchEvent>,
) -> impl futures::Stream<Item = WatchEvent> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
