//! The connector's answer to one tunnel stream: match the ingress rules and
//! proxy to the origin, streaming both ways.

use crate::connector::Shared;
use crate::ingress::{Ingress, Refusal, Service};
use crate::origin::Origins;
use gatehouse_ops::Chain;
use gatehouse_proto::headers::{is_upgrade, strip_hop_by_hop};
use gatehouse_proto::{Frame, RequestHead, ResponseHead};
use gatehouse_tunnel_io::stream::{FrameReader, FrameWriter, bridge, empty, pump_body};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tracing::{Instrument, debug, info, info_span, warn};

/// The running configuration: rules, their origin clients, the file text.
#[derive(Debug)]
pub struct Loaded {
    /// Validated rules.
    pub ingress: Ingress,
    /// One client per rule.
    pub origins: Arc<Origins>,
    /// The file text they came from.
    pub text: String,
}

impl Loaded {
    pub(crate) fn new(ingress: Ingress, origins: Origins, text: String) -> Self {
        Self {
            ingress,
            origins: Arc::new(origins),
            text,
        }
    }
}

/// Upgrade token of raw TCP streams (`gatehouse tunnel access tcp`).
pub const TCP_UPGRADE: &str = "gatehouse-tcp";

pub(crate) async fn handle_stream(shared: &Arc<Shared>, mut w: FrameWriter, mut r: FrameReader) {
    let head = match r.next().await {
        Ok(Some(Frame::RequestHead(h))) => h,
        Ok(_) | Err(_) => {
            let _ = w
                .send(&Frame::Reset("expected a request head".into()))
                .await;
            let _ = w.finish().await;
            return;
        }
    };
    let span = info_span!("request", id = %head.request_id, host = %head.authority, method = %head.method, path = %head.path);
    proxy(shared, head, w, r).instrument(span).await;
}

async fn respond(w: &mut FrameWriter, status: StatusCode, body: &str) {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let _ = w.queue(&Frame::ResponseHead(ResponseHead { status, headers }));
    if !body.is_empty() {
        let _ = w
            .queue_data(bytes::Bytes::copy_from_slice(body.as_bytes()))
            .await;
    }
    let _ = w.finish().await;
}

async fn proxy(shared: &Arc<Shared>, head: RequestHead, mut w: FrameWriter, r: FrameReader) {
    shared.metrics.requests.inc();
    let loaded = shared.current();
    let path_only = head.path.split('?').next().unwrap_or("/");
    let (idx, rule) = loaded.ingress.find(&head.authority, path_only);
    info!(rule = idx, service = %rule.service, "matched ingress rule");
    if let Some(why) = &rule.refusal {
        return Box::pin(refuse(shared, idx, rule, why, w)).await;
    }
    match &rule.service {
        Service::Status(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::NOT_FOUND);
            respond(&mut w, status, "").await;
        }
        Service::HelloWorld => {
            respond(&mut w, StatusCode::OK, "Hello from a gatehouse tunnel\n").await
        }
        // Boxed, as is every rare path below: the future of a stream is
        // moved whole into its task, so its size is paid on every request.
        Service::Tcp {
            address: Some(address),
            ..
        } => {
            Box::pin(tcp(
                shared,
                &head,
                address,
                rule.origin.connect_timeout,
                w,
                r,
            ))
            .await
        }
        Service::Http { .. } | Service::Unix { .. } => {
            let host = rule.origin.http_host_header.clone();
            http(shared, head, host, loaded.origins.clone(), idx, w, r).await;
        }
        // Refused above; never served whatever happens to the refusals.
        Service::Tcp { address: None, .. } | Service::Bastion | Service::SocksProxy => {
            respond(&mut w, StatusCode::NOT_IMPLEMENTED, "not served\n").await
        }
    }
}

/// Answers a request whose rule the connector does not serve: the status
/// and message of the reason; the log names the rule.
async fn refuse(
    shared: &Arc<Shared>,
    idx: usize,
    rule: &crate::ingress::Rule,
    why: &Refusal,
    mut w: FrameWriter,
) {
    shared.metrics.refused.inc();
    warn!(rule = idx, service = %rule.service, reason = %why, "ingress rule not served");
    let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    respond(&mut w, status, why.public_message()).await;
}

#[allow(clippy::too_many_arguments)]
async fn http(
    shared: &Arc<Shared>,
    head: RequestHead,
    host_override: Option<String>,
    origins: Arc<Origins>,
    idx: usize,
    mut w: FrameWriter,
    r: FrameReader,
) {
    let upgrade = is_upgrade(&head.headers);
    let (body, keep_r) = if upgrade {
        (empty(), Some(r))
    } else {
        (r.into_body(), None)
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    // Origin form; `Origins` makes it absolute where its client needs that.
    match head.path.parse() {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return respond(&mut w, StatusCode::BAD_REQUEST, "bad request target\n").await,
    }
    *req.headers_mut() = head.headers;
    let host = host_override.unwrap_or(head.authority);
    if let Ok(v) = HeaderValue::from_str(&host) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let (resp, mut lease) = match origins.send(idx, req, upgrade).await {
        Ok(sent) => sent,
        Err(e) => {
            shared.metrics.origin_errors.inc();
            warn!(error = %Chain(&e), "origin request failed");
            return respond(&mut w, StatusCode::BAD_GATEWAY, "origin unreachable\n").await;
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(r) = keep_r else {
            return respond(&mut w, StatusCode::BAD_GATEWAY, "unexpected upgrade\n").await;
        };
        let mut headers = resp.headers().clone();
        strip_hop_by_hop(&mut headers, true);
        let head = ResponseHead {
            status: resp.status(),
            headers,
        };
        if w.send(&Frame::ResponseHead(head)).await.is_err() {
            return;
        }
        return Box::pin(upgraded(resp, r, w)).await;
    }
    let (parts, body) = resp.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, false);
    let head = ResponseHead {
        status: parts.status,
        headers,
    };
    if w.queue(&Frame::ResponseHead(head)).is_err() {
        return;
    }
    match lease.drive(pump_body(body, &mut w)).await {
        Ok(()) => lease.release(),
        Err(e) => debug!(error = %Chain(&e), "response body ended early"),
    }
}

async fn upgraded(resp: http::Response<hyper::body::Incoming>, r: FrameReader, w: FrameWriter) {
    match hyper::upgrade::on(resp).await {
        Ok(up) => {
            if let Err(e) = bridge(TokioIo::new(up), r, w).await {
                debug!(error = %Chain(&e), "upgraded stream ended");
            }
        }
        Err(e) => warn!(error = %Chain(&e), "origin upgrade failed"),
    }
}

async fn tcp(
    shared: &Arc<Shared>,
    head: &RequestHead,
    address: &str,
    timeout: std::time::Duration,
    mut w: FrameWriter,
    r: FrameReader,
) {
    let wants_tcp = head
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(TCP_UPGRADE));
    if !wants_tcp {
        return respond(
            &mut w,
            StatusCode::BAD_REQUEST,
            "this hostname serves raw TCP: connect with `gatehouse tunnel access tcp`\n",
        )
        .await;
    }
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.origin_errors.inc();
            warn!(error = %Chain(&e), address, "TCP origin unreachable");
            return respond(&mut w, StatusCode::BAD_GATEWAY, "origin unreachable\n").await;
        }
        Err(_) => {
            shared.metrics.origin_errors.inc();
            return respond(
                &mut w,
                StatusCode::GATEWAY_TIMEOUT,
                "origin connect timed out\n",
            )
            .await;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    headers.insert(http::header::UPGRADE, HeaderValue::from_static(TCP_UPGRADE));
    let head = ResponseHead {
        status: StatusCode::SWITCHING_PROTOCOLS,
        headers,
    };
    if w.send(&Frame::ResponseHead(head)).await.is_err() {
        return;
    }
    if let Err(e) = bridge(stream, r, w).await {
        debug!(error = %Chain(&e), "TCP stream ended");
    }
}
