//! Public routes at the edge: the operator registers, for each public
//! Ingress, the host name and its path rules (default deny, published
//! prefixes allowed, denied prefixes refused) through the edge's route API
//! (`docs/public-tier.md`, "Routes registered by the operator"), with the
//! tunnel token the connector uses. Each route names its owner (the
//! Ingress) so that removing the annotation removes exactly its route.

use crate::annotations::PublicSpec;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// Why the edge could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The edge refused (host not allowed for this tunnel, bad rules, …).
    #[error("edge refused: {0}")]
    Refused(String),
    /// The edge answered with a server error.
    #[error("edge unavailable: {0}")]
    Status(http::StatusCode),
    /// The edge could not be reached.
    #[error("edge unavailable")]
    Unavailable(#[source] hyper_util::client::legacy::Error),
    /// The edge did not answer in time.
    #[error("edge unavailable: timed out")]
    Timeout,
    /// The answer broke off.
    #[error("edge unavailable: reading the answer")]
    Body(#[source] hyper::Error),
    /// The answer does not parse.
    #[error("edge unavailable: unexpected answer")]
    Decode(#[source] serde_json::Error),
    /// The request could not be built (a base URL that is not one).
    #[error("building the request to the edge")]
    Request(#[source] http::Error),
    /// The edge's CA is unusable.
    #[error("edge CA")]
    Ca(#[source] std::io::Error),
    /// The edge's CA was refused as a trust root.
    #[error("edge CA")]
    Root(#[source] rustls::Error),
    /// The TLS provider offers none of the protocol versions asked for.
    #[error("TLS")]
    Tls(#[source] rustls::Error),
}

/// One path rule of a registered route (the edge's `rules:` syntax).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteRule {
    /// `/x` (exactly) or `/x/*` (everything below).
    pub path: String,
    /// `allow` or `deny`.
    pub action: String,
}

/// A route registered with the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRoute {
    /// Public host name.
    pub hostname: String,
    /// Who registered it (`ingress/<namespace>/<name>`).
    pub owner: String,
    /// Decision when no rule matches: always `deny` from the operator.
    pub default: String,
    /// Path rules.
    pub rules: Vec<RouteRule>,
}

/// The owner string of an Ingress's route.
pub fn owner(ns: &str, name: &str) -> String {
    format!("ingress/{ns}/{name}")
}

fn covered(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.starts_with(&format!("{prefix}/"))
    }
}

fn patterns(prefix: &str) -> Vec<String> {
    if prefix == "/" {
        vec!["/*".into()]
    } else if prefix.ends_with('/') {
        vec![format!("{prefix}*")]
    } else {
        vec![prefix.to_string(), format!("{prefix}/*")]
    }
}

/// The route for a public spec. Prefixes are on segment boundaries
/// (`docs/exposures.md`); a published prefix under a denied one is left
/// out, since denied paths win.
pub fn route_for(owner: String, p: &PublicSpec) -> EdgeRoute {
    let mut rules = Vec::new();
    for d in &p.deny_paths {
        for path in patterns(d) {
            rules.push(RouteRule {
                path,
                action: "deny".into(),
            });
        }
    }
    for a in &p.paths {
        if p.deny_paths.iter().any(|d| covered(d, a)) {
            continue;
        }
        for path in patterns(a) {
            rules.push(RouteRule {
                path,
                action: "allow".into(),
            });
        }
    }
    rules.sort();
    rules.dedup();
    EdgeRoute {
        hostname: p.hostname.clone(),
        owner,
        default: "deny".into(),
        rules,
    }
}

/// The edge as the operator sees it.
pub trait EdgeRoutes: Send + Sync + std::fmt::Debug {
    /// Routes registered with this tunnel's token.
    fn routes(&self) -> BoxFuture<'_, Result<Vec<EdgeRoute>, EdgeError>>;
    /// Registers or replaces a route.
    fn put(&self, route: &EdgeRoute) -> BoxFuture<'_, Result<(), EdgeError>>;
    /// Removes a route (absent is fine).
    fn delete(&self, hostname: &str) -> BoxFuture<'_, Result<(), EdgeError>>;
}

/// The edge's route API over HTTPS, authenticated with the tunnel token.
pub struct HttpEdge {
    base: String,
    token: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEdge")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpEdge {
    /// A client of the route API at `base` (`https://edge:9443`), trusting
    /// `ca_pem` (or the system's roots when `None`), sending `token`.
    ///
    /// # Errors
    /// When the CA cannot be read.
    pub fn new(base: &str, ca_pem: Option<&str>, token: &str) -> Result<Self, EdgeError> {
        let provider = gatehouse_ops::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(EdgeError::Tls)?;
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
                    let c = c.map_err(EdgeError::Ca)?;
                    roots.add(c).map_err(EdgeError::Root)?;
                }
            }
            None => {
                roots = gatehouse_ops::tls::system_roots();
            }
        }
        let tls = builder.with_root_certificates(roots).with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(HttpEdge {
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, EdgeError> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(EdgeError::Request)?;
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.client.request(req))
                .await
                // `Elapsed` says only that the deadline passed, as `Timeout` does.
                .map_err(|_elapsed| EdgeError::Timeout)?
                .map_err(EdgeError::Unavailable)?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(EdgeError::Body)?
            .to_bytes();
        if status.is_success() || status == http::StatusCode::NOT_FOUND && bytes.is_empty() {
            Ok(bytes)
        } else if status.is_client_error() {
            Err(EdgeError::Refused(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )))
        } else {
            Err(EdgeError::Status(status))
        }
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl EdgeRoutes for HttpEdge {
    fn routes(&self) -> BoxFuture<'_, Result<Vec<EdgeRoute>, EdgeError>> {
        Box::pin(async move {
            let b = self.call(http::Method::GET, "/api/v1/routes", None).await?;
            serde_json::from_slice(&b).map_err(EdgeError::Decode)
        })
    }

    fn put(&self, route: &EdgeRoute) -> BoxFuture<'_, Result<(), EdgeError>> {
        let path = format!("/api/v1/routes/{}", enc(&route.hostname));
        let body = serde_json::to_vec(route).unwrap_or_default();
        Box::pin(async move {
            self.call(http::Method::PUT, &path, Some(body)).await?;
            Ok(())
        })
    }

    fn delete(&self, hostname: &str) -> BoxFuture<'_, Result<(), EdgeError>> {
        let path = format!("/api/v1/routes/{}", enc(hostname));
        Box::pin(async move {
            self.call(http::Method::DELETE, &path, None).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_segment_prefixes_and_deny_wins() {
        let r = route_for(
            "o".into(),
            &PublicSpec {
                hostname: "blog.example.com".into(),
                paths: vec!["/".into(), "/ghost/api".into(), "/js/".into()],
                deny_paths: vec!["/ghost".into()],
            },
        );
        let text: Vec<String> = r
            .rules
            .iter()
            .map(|x| format!("{} {}", x.action, x.path))
            .collect();
        assert_eq!(
            text,
            vec!["allow /*", "deny /ghost", "deny /ghost/*", "allow /js/*"]
        );
        assert_eq!(r.default, "deny");
    }
}
