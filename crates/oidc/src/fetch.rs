//! The relying party's few HTTP exchanges with the provider: the discovery
//! document, the key set, and the code exchange. Bounded in size and time;
//! TLS verified against the system's CAs or a configured bundle.

use crate::{Error as TokenError, Jwks, Metadata, discovery, jwk};
use bytes::Bytes;
use gatehouse_ops::tls;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// Longest wait for one exchange with the provider.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the provider.
pub const MAX_BODY: usize = 1 << 20;

/// Why an exchange with the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// TLS set-up (the CA bundle) failed.
    #[error("TLS set-up for the provider failed")]
    Tls(#[source] tls::TlsError),
    /// A URL that cannot be requested.
    #[error("bad URL {url:?}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// The provider could not be reached.
    #[error("cannot reach the provider at {url}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport's error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer did not arrive in time.
    #[error("the provider did not answer {url} within {TIMEOUT:?}")]
    Timeout {
        /// The URL.
        url: String,
    },
    /// The answer's body could not be read (or was too large).
    #[error("cannot read the provider's answer from {url}: {why}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The provider answered with an error status.
    #[error("the provider answered {status} to {url}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: http::StatusCode,
        /// The start of its body.
        body: String,
    },
    /// The answer did not parse.
    #[error("the provider's answer from {url} is not usable")]
    Answer {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: TokenError,
    },
}

/// The answer of the token endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The ID token.
    #[serde(default)]
    pub id_token: Option<String>,
    /// The access token (unused by Gatehouse beyond the exchange).
    #[serde(default)]
    pub access_token: Option<String>,
    /// Its type.
    #[serde(default)]
    pub token_type: Option<String>,
}

/// How we authenticate at the token endpoint.
#[derive(Debug, Clone)]
pub struct ClientAuth<'a> {
    /// Client id.
    pub id: &'a str,
    /// Client secret.
    pub secret: &'a str,
    /// Send them in the form body instead of HTTP Basic authentication.
    pub in_body: bool,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP client for one provider.
#[derive(Debug, Clone)]
pub struct Http {
    client: HttpsClient,
}

impl Http {
    /// A client trusting the system's CAs, or only the bundle at `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Http, FetchError> {
        let roots = match ca_file {
            Some(p) => tls::load_roots(p).map_err(FetchError::Tls)?,
            None => tls::system_roots(),
        };
        let cfg = tls::client_config(Some(roots), &[]).map_err(FetchError::Tls)?;
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        Ok(Http { client })
    }

    async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Bytes, FetchError> {
        let url = req.uri().to_string();
        let exchange = async {
            let resp =
                self.client
                    .request(req)
                    .await
                    .map_err(|source| FetchError::Unreachable {
                        url: url.clone(),
                        source,
                    })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Body {
                    url: url.clone(),
                    why: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                return Err(FetchError::Status {
                    url: url.clone(),
                    status,
                    body: text,
                });
            }
            Ok(body)
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout { url }),
        }
    }

    /// GETs `url`.
    pub async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|source| FetchError::Url {
                url: url.to_string(),
                source,
            })?;
        self.send(req).await
    }

    /// The provider's discovery document, checked against `issuer`.
    pub async fn discover(&self, issuer: &str) -> Result<Metadata, FetchError> {
        let url = discovery::url(issuer);
        let body = self.get(&url).await?;
        Metadata::parse(&body, issuer).map_err(|source| FetchError::Answer { url, source })
    }

    /// The provider's key set.
    pub async fn jwks(&self, meta: &Metadata) -> Result<Jwks, FetchError> {
        let body = self.get(&meta.jwks_uri).await?;
        if body.len() > jwk::MAX_JWKS {
            return Err(FetchError::Body {
                url: meta.jwks_uri.clone(),
                why: "key set too large".into(),
            });
        }
        Jwks::parse(&body).map_err(|source| FetchError::Answer {
            url: meta.jwks_uri.clone(),
            source,
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier).
    pub async fn exchange(
        &self,
        meta: &Metadata,
        auth: &ClientAuth<'_>,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, FetchError> {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            enc(code),
            enc(redirect_uri),
            enc(verifier)
        );
        let mut req = http::Request::post(&meta.token_endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if auth.in_body {
            form.push_str(&format!(
                "&client_id={}&client_secret={}",
                enc(auth.id),
                enc(auth.secret)
            ));
        } else {
            // RFC 6749 §2.3.1: each part form-encoded, then Basic.
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(auth.id),
                enc(auth.secret)
            ));
            req = req.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
        }
        let req = req
            .body(Full::new(Bytes::from(form)))
            .map_err(|source| FetchError::Url {
                url: meta.token_endpoint.clone(),
                source,
            })?;
        let body = self.send(req).await?;
        serde_json::from_slice(&body).map_err(|source| FetchError::Answer {
            url: meta.token_endpoint.clone(),
            source: TokenError::Json {
                what: "token response",
                source,
            },
        })
    }
}
