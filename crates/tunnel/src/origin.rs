//! Clients to the origins the ingress rules name: pooled HTTP/1.1 or
//! HTTP/2 (h2c or TLS) over TCP, HTTP/1.1 over Unix sockets.

use crate::ingress::{Ingress, OriginRequest, Service};
use crate::stream::TunnelBody;
use crate::tls;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::time::Duration;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, TunnelBody>;

/// Why an origin could not be reached or configured.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The TLS settings of a rule are unusable.
    #[error("rule #{rule}: {source}")]
    Tls {
        /// 0-based rule index.
        rule: usize,
        /// The cause.
        source: tls::TlsError,
    },
    /// `originServerName` is not a valid server name.
    #[error("rule #{0}: invalid originServerName")]
    ServerName(usize),
    /// Connecting or talking to the origin failed.
    #[error("origin: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// Talking to a Unix-socket origin failed.
    #[error("origin: {0}")]
    Hyper(#[from] hyper::Error),
    /// The connection could not be opened.
    #[error("origin connect: {0}")]
    Connect(#[from] std::io::Error),
    /// Connecting took longer than connectTimeout.
    #[error("origin connect timed out")]
    Timeout,
    /// `unix+tls:` is not supported.
    #[error("unix+tls origins are not supported")]
    UnixTls,
}

enum Client1 {
    Http(Box<HttpsClient>),
    Unix(PathBuf, Duration),
    None,
}

/// One client per ingress rule, built when the rules are (re)loaded.
pub struct Origins {
    clients: Vec<Client1>,
}

impl std::fmt::Debug for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origins")
            .field("rules", &self.clients.len())
            .finish()
    }
}

impl Origins {
    /// Builds the clients of every rule.
    pub fn build(ing: &Ingress) -> Result<Self, OriginError> {
        let clients = ing
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| match &r.service {
                Service::Http { .. } => {
                    http_client(i, &r.origin).map(|c| Client1::Http(Box::new(c)))
                }
                Service::Unix { tls: true, .. } => Err(OriginError::UnixTls),
                Service::Unix { path, tls: false } => {
                    Ok(Client1::Unix(path.clone(), r.origin.connect_timeout))
                }
                _ => Ok(Client1::None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { clients })
    }

    /// Sends a request (whose URI is already the origin's) for rule `idx`.
    pub async fn send(
        &self,
        idx: usize,
        req: Request<TunnelBody>,
    ) -> Result<Response<Incoming>, OriginError> {
        match self.clients.get(idx) {
            Some(Client1::Http(c)) => Ok(c.request(req).await?),
            Some(Client1::Unix(path, timeout)) => {
                let stream = tokio::time::timeout(*timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| OriginError::Timeout)??;
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "unix origin connection ended");
                    }
                });
                Ok(send.send_request(req).await?)
            }
            _ => Err(OriginError::Connect(std::io::Error::other(
                "rule has no HTTP origin",
            ))),
        }
    }
}

fn http_client(i: usize, o: &OriginRequest) -> Result<HttpsClient, OriginError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(o.connect_timeout));
    http.set_nodelay(true);
    let roots = if o.no_tls_verify {
        None
    } else if let Some(ca) = &o.ca_pool {
        Some(tls::load_roots(ca).map_err(|source| OriginError::Tls { rule: i, source })?)
    } else {
        Some(tls::system_roots())
    };
    // hyper-rustls sets ALPN itself from the enabled protocols.
    let cfg =
        tls::client_config(roots, &[]).map_err(|source| OriginError::Tls { rule: i, source })?;
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_or_http();
    let b = match &o.origin_server_name {
        Some(name) => {
            let sn = ServerName::try_from(name.clone()).map_err(|_| OriginError::ServerName(i))?;
            b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn))
        }
        None => b,
    };
    let conn = if o.http2_origin {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(o.keep_alive_timeout)
        .pool_max_idle_per_host(o.keep_alive_connections)
        .http2_only(o.http2_origin);
    Ok(builder.build(conn))
}
