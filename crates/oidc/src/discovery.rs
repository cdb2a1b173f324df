//! The provider's discovery document (OpenID Connect Discovery 1.0):
//! `<issuer>/.well-known/openid-configuration`.

use crate::Error;
use serde::Deserialize;

/// The fields of the discovery document Gatehouse uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// The issuer identifier; must equal the configured one.
    pub issuer: String,
    /// Where browsers are sent to sign in.
    pub authorization_endpoint: String,
    /// Where codes are exchanged for tokens.
    pub token_endpoint: String,
    /// The provider's key set.
    pub jwks_uri: String,
    /// PKCE methods the provider announces (absent: not announced).
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// Signature algorithms of ID tokens.
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Option<Vec<String>>,
    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Largest discovery document accepted.
pub const MAX_DOCUMENT: usize = 256 * 1024;

/// The discovery document's URL for an issuer.
pub fn url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

fn https_or_loopback(what: &str, u: &str) -> Result<(), Error> {
    let ok = u.starts_with("https://")
        || u.starts_with("http://127.0.0.1")
        || u.starts_with("http://[::1]")
        || u.starts_with("http://localhost");
    if ok {
        Ok(())
    } else {
        Err(Error::Malformed {
            what: "discovery document",
            why: format!("{what} {u:?} is not an https URL"),
        })
    }
}

impl Metadata {
    /// Reads a discovery document and checks it belongs to `issuer`
    /// (Discovery §4.3: the `issuer` inside must be identical), that its
    /// endpoints are HTTPS (or loopback), and that the provider can do
    /// what a sign-in needs (S256 PKCE when it announces methods).
    pub fn parse(bytes: &[u8], issuer: &str) -> Result<Metadata, Error> {
        if bytes.len() > MAX_DOCUMENT {
            return Err(Error::Malformed {
                what: "discovery document",
                why: "too large".into(),
            });
        }
        let m: Metadata = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "discovery document",
            source,
        })?;
        if m.issuer != issuer {
            return Err(Error::Malformed {
                what: "discovery document",
                why: format!(
                    "it names the issuer {:?}, not the configured {issuer:?}",
                    m.issuer
                ),
            });
        }
        https_or_loopback("authorization_endpoint", &m.authorization_endpoint)?;
        https_or_loopback("token_endpoint", &m.token_endpoint)?;
        https_or_loopback("jwks_uri", &m.jwks_uri)?;
        if let Some(methods) = &m.code_challenge_methods_supported
            && !methods.iter().any(|x| x == "S256")
        {
            return Err(Error::Malformed {
                what: "discovery document",
                why: "the provider does not support PKCE with S256".into(),
            });
        }
        Ok(m)
    }

    /// Whether the provider takes the client secret in the form body
    /// rather than in HTTP Basic authentication (the default).
    pub fn wants_secret_in_body(&self) -> bool {
        self.token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|m| {
                !m.iter().any(|x| x == "client_secret_basic")
                    && m.iter().any(|x| x == "client_secret_post")
            })
    }

    /// The URL a browser is sent to: authorization code flow with PKCE.
    pub fn authorize_url(&self, p: &AuthorizeParams<'_>) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let sep = if self.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            self.authorization_endpoint,
            enc(p.client_id),
            enc(p.redirect_uri),
            enc(p.scope),
            enc(p.state),
            enc(p.nonce),
            enc(p.code_challenge),
        )
    }
}

/// The parameters of an authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizeParams<'a> {
    /// Our client id.
    pub client_id: &'a str,
    /// Where the provider sends the browser back.
    pub redirect_uri: &'a str,
    /// Scopes, space-separated (`openid` first).
    pub scope: &'a str,
    /// The flow's state.
    pub state: &'a str,
    /// The flow's nonce.
    pub nonce: &'a str,
    /// The PKCE challenge.
    pub code_challenge: &'a str,
}
