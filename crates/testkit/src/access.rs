//! Control's side of Access on public hostnames, for tests and benchmarks
//! of an edge: a signer whose key set is served over HTTPS at
//! `/access/jwks`, and the grants control would sign with it
//! (`docs/decisions/0034-oidc-sign-in.md`).

use crate::pki::Pki;
use gatehouse_oidc::Signer;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// A response as `curl -D -` prints it (headers, blank line, body).
#[derive(Debug, Clone)]
pub struct CurlResponse {
    /// The status (0 when curl printed none).
    pub code: u16,
    /// The header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl CurlResponse {
    /// The first value of a header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every `Set-Cookie` value.
    pub fn cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value a `Set-Cookie` gives `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies().into_iter().find_map(|c| {
            c.strip_prefix(&format!("{name}="))
                .map(|v| v.split(';').next().unwrap_or("").to_owned())
        })
    }

    /// The value of a `key=value` line of the body (as the echo backends
    /// print what they received).
    pub fn line(&self, key: &str) -> Option<&str> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
    }
}

/// Parses what `curl -D -` printed.
pub fn parse_curl_response(stdout: &[u8]) -> CurlResponse {
    let text = String::from_utf8_lossy(stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    CurlResponse {
        code,
        headers,
        body: body.to_owned(),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Control as the edge sees it for Access: `url` (the edge's
/// `access.control`, the grants' `iss`) on a free loopback port, and the
/// key that signs grants. Its key set is not served until [`serve_jwks`].
///
/// [`serve_jwks`]: GrantSigner::serve_jwks
#[derive(Debug)]
pub struct GrantSigner {
    pub addr: SocketAddr,
    pub url: String,
    pub signer: Signer,
}

impl GrantSigner {
    pub fn new() -> GrantSigner {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        GrantSigner {
            addr,
            url: format!("https://{addr}"),
            signer: Signer::generate().expect("a signing key"),
        }
    }

    /// Serves the key set at `/access/jwks` over HTTPS on `addr`, with a
    /// certificate of `pki` for `127.0.0.1`, until the runtime ends.
    pub async fn serve_jwks(&self, pki: &Pki) {
        let cfg = pki.leaf(&["127.0.0.1"]).server_config(&[]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the key set's address");
        let jwks = self.signer.jwks_document().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, jwks) = (acceptor.clone(), jwks.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let body = if req.uri().path() == "/access/jwks" {
                            jwks.clone()
                        } else {
                            String::new()
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    }

    /// The claims of a grant for `email` (in group `staff`) on `host`,
    /// answering the browser's `nonce`, returning to `rd`; valid for two
    /// minutes, with a fresh `jti`.
    pub fn claims(&self, host: &str, email: &str, nonce: &str, rd: &str) -> Map<String, Value> {
        let t = unix_now();
        let jti = gatehouse_oidc::random_token(16).expect("randomness");
        json!({"iss": self.url, "aud": format!("https://{host}"), "sub": email,
            "email": email, "groups": ["staff"], "name": "A Person", "nonce": nonce, "rd": rd,
            "iat": t, "exp": t + 120, "jti": jti})
        .as_object()
        .cloned()
        .expect("a JSON object")
    }

    /// A signed grant with [`claims`](GrantSigner::claims).
    pub fn grant(&self, host: &str, email: &str, nonce: &str, rd: &str) -> String {
        self.signer
            .sign(&self.claims(host, email, nonce, rd))
            .expect("sign a grant")
    }
}

impl Default for GrantSigner {
    fn default() -> Self {
        GrantSigner::new()
    }
}
