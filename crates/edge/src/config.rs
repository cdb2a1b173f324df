//! The edge's configuration file (YAML), validated whole before use.

use crate::path::{Action, PathRuleSpec, PathRules, RuleError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why an edge config is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML does not match the format.
    #[error("invalid edge config")]
    Yaml(#[from] serde_yaml_ng::Error),
    /// A semantic problem.
    #[error("invalid edge config: {0}")]
    Invalid(String),
    /// A path rule is invalid.
    #[error("invalid edge config: hostname {host}")]
    Rule {
        /// The hostname whose rule is wrong.
        host: String,
        /// The cause.
        source: RuleError,
    },
    /// The connection limits are invalid.
    #[error("invalid edge config: limits")]
    Limits(#[source] gatehouse_limits::LimitsConfigError),
    /// The heartbeat is not a duration.
    #[error("invalid edge config: heartbeat")]
    Heartbeat(#[source] gatehouse_ops::DurationError),
    /// The access section is invalid.
    #[error("invalid edge config: access: {0}")]
    Access(String),
    /// The access session lifetime is not a duration.
    #[error("invalid edge config: access: session_lifetime")]
    SessionLifetime(#[source] gatehouse_ops::DurationError),
}

/// One service token: machines present its id and secret in
/// `Gatehouse-Access-Client-Id` and `Gatehouse-Access-Client-Secret`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenConfig {
    /// The id rules name it by.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
}

/// Identity requirements on public hostnames (Access): where control signs
/// people in, and the edge's own sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Control's URL (`https://…`): where browsers sign in, and the `iss`
    /// of the grants control signs.
    pub control: String,
    /// Where control's access key set is fetched (default
    /// `<control>/access/jwks`).
    #[serde(default)]
    pub jwks: Option<String>,
    /// CA bundle to trust for control's HTTPS (default: the system's).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long a session lasts (default `24h`).
    #[serde(default)]
    pub session_lifetime: Option<String>,
    /// The edge's session signing key (PKCS#8, created on first start;
    /// default `access.key` beside the tunnel store).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Service tokens.
    #[serde(default)]
    pub service_tokens: Vec<ServiceTokenConfig>,
}

/// The access section, checked and resolved.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// Control's URL, without a trailing `/`.
    pub control: String,
    /// The URL of control's access key set.
    pub jwks: String,
    /// CA bundle for control's HTTPS.
    pub ca: Option<PathBuf>,
    /// Session lifetime.
    pub session_lifetime: Duration,
    /// The edge's signing key file.
    pub key: PathBuf,
    /// Service tokens: id and SHA-256 of the secret.
    pub service_tokens: Vec<(String, [u8; 32])>,
}

/// Default session lifetime.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn https_url(what: &str, url: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Access(format!("{what} {url:?} {why}"));
    let uri: http::Uri = url.parse().map_err(|_parse| bad("is not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(bad("must be an https:// URL"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(())
}

impl AccessConfig {
    /// Checks the section; `tokens` is the tunnel store (the key's
    /// default directory).
    pub fn resolve(&self, tokens: &std::path::Path) -> Result<AccessSettings, ConfigError> {
        https_url("control", &self.control)?;
        let control = self.control.trim_end_matches('/').to_owned();
        let jwks = match &self.jwks {
            Some(u) => {
                https_url("jwks", u)?;
                u.clone()
            }
            None => format!("{control}/access/jwks"),
        };
        let session_lifetime = match &self.session_lifetime {
            None => DEFAULT_SESSION_LIFETIME,
            Some(s) => {
                let d = gatehouse_ops::parse_duration(s).map_err(ConfigError::SessionLifetime)?;
                if d < Duration::from_secs(60) || d > Duration::from_secs(366 * 24 * 3600) {
                    return Err(ConfigError::Access(
                        "session_lifetime must be between 1m and 366d".into(),
                    ));
                }
                d
            }
        };
        let mut service_tokens: Vec<(String, [u8; 32])> = Vec::new();
        for t in &self.service_tokens {
            let id = &t.id;
            if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Access(format!(
                    "service token id {id:?} must be 1 to 128 printable ASCII characters"
                )));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(t.secret_sha256.trim(), &mut hash).map_err(|e| {
                ConfigError::Access(format!(
                    "service token {id}: secret_sha256 must be 64 hex digits ({e})"
                ))
            })?;
            if service_tokens.iter().any(|(have, _)| have == id) {
                return Err(ConfigError::Access(format!(
                    "service token {id} is listed twice"
                )));
            }
            service_tokens.push((id.clone(), hash));
        }
        let key = match &self.key {
            Some(k) => k.clone(),
            None => tokens
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("access.key"),
        };
        Ok(AccessSettings {
            control,
            jwks,
            ca: self.ca.clone(),
            session_lifetime,
            key,
            service_tokens,
        })
    }
}

/// Listening addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Public HTTPS (default port 443).
    pub https: SocketAddr,
    /// Public HTTP: redirects to HTTPS and answers ACME HTTP-01.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Tunnel endpoint: QUIC on UDP and the TLS fallback on TCP, same port.
    pub tunnel: SocketAddr,
    /// `/ready` and `/metrics`.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Challenge {
    /// HTTP-01, answered on the `http` listener.
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01, answered on the `https` listener.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// ACME settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Directory URL of the CA.
    pub directory: String,
    /// Contact URLs (`mailto:`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Extra root to trust for the CA's own HTTPS (test CAs such as pebble).
    #[serde(default)]
    pub directory_ca: Option<PathBuf>,
    /// Challenge to answer.
    pub challenge: Challenge,
    /// Where issued certificates are kept.
    pub state_dir: PathBuf,
}

/// One public hostname.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The hostname (lower case, no port).
    pub hostname: String,
    /// Tunnel whose connections carry its requests.
    pub tunnel: String,
    /// Certificate files; without them the certificate comes from ACME.
    #[serde(default)]
    pub tls: Option<CertFiles>,
    /// Decision when no path rule matches (default: deny).
    #[serde(default)]
    pub default: Option<Action>,
    /// Path rules.
    #[serde(default)]
    pub rules: Vec<PathRuleSpec>,
}

/// The edge configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Listening addresses.
    pub listen: Listen,
    /// Certificate the tunnel endpoint presents to connectors.
    pub tunnel_tls: CertFiles,
    /// The tunnel store (see `gatehouse edge tunnel create`).
    pub tokens: PathBuf,
    /// Heartbeat interval asked of connectors (default `2s`).
    #[serde(default)]
    pub heartbeat: Option<String>,
    /// ACME, for hostnames without `tls` files.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// Public hostnames.
    pub hostnames: Vec<HostConfig>,
    /// Routes registered at run time through the route API.
    #[serde(default)]
    pub route_api: Option<crate::routes_api::RouteApiConfig>,
    /// Connection limits of the public and route API listeners.
    #[serde(default)]
    pub limits: gatehouse_limits::LimitsConfig,
    /// Identity requirements (Access): needed by any rule with `identity`.
    #[serde(default)]
    pub access: Option<AccessConfig>,
}

/// A hostname's compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The tunnel.
    pub tunnel: String,
    /// Compiled path rules.
    pub rules: PathRules,
}

impl EdgeConfig {
    /// Parses and validates the YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: EdgeConfig = serde_yaml_ng::from_str(text)?;
        if cfg
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == Challenge::Http01)
            && cfg.listen.http.is_none()
        {
            return Err(ConfigError::Invalid(
                "acme challenge http-01 needs listen.http (port 80)".into(),
            ));
        }
        cfg.access()?;
        cfg.routes()?;
        cfg.heartbeat()?;
        cfg.limits()?;
        Ok(cfg)
    }

    /// The connection limits of the public and route API listeners.
    pub fn limits(&self) -> Result<gatehouse_limits::Limits, ConfigError> {
        self.limits
            .resolve(&gatehouse_limits::Limits::default())
            .map_err(ConfigError::Limits)
    }

    /// Reads and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The access section, resolved (`None` without one).
    pub fn access(&self) -> Result<Option<AccessSettings>, ConfigError> {
        self.access
            .as_ref()
            .map(|a| a.resolve(&self.tokens))
            .transpose()
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Result<Duration, ConfigError> {
        match &self.heartbeat {
            None => Ok(Duration::from_secs(2)),
            Some(s) => {
                let d = gatehouse_ops::parse_duration(s).map_err(ConfigError::Heartbeat)?;
                if d < Duration::from_millis(100) {
                    return Err(ConfigError::Invalid(
                        "heartbeat must be at least 100ms".into(),
                    ));
                }
                Ok(d)
            }
        }
    }

    /// Compiles hostname → route, checking names, duplicates and TLS sources.
    pub fn routes(&self) -> Result<BTreeMap<String, Route>, ConfigError> {
        let mut out = BTreeMap::new();
        for h in &self.hostnames {
            let name = &h.hostname;
            if !gatehouse_names::is_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "hostname {name:?} must be a lower-case DNS name without port or wildcard"
                )));
            }
            if h.tls.is_none() && self.acme.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "hostname {name}: give tls files or configure acme"
                )));
            }
            let rules =
                PathRules::new(&h.rules, h.default.unwrap_or(Action::Deny)).map_err(|source| {
                    ConfigError::Rule {
                        host: name.clone(),
                        source,
                    }
                })?;
            self.check_identities(name, &rules)?;
            let route = Route {
                tunnel: h.tunnel.clone(),
                rules,
            };
            if out.insert(name.clone(), route).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "hostname {name} is listed twice"
                )));
            }
        }
        Ok(out)
    }
}

impl EdgeConfig {
    /// Identity requirements need the access section, and name only its
    /// service tokens.
    fn check_identities(&self, host: &str, rules: &PathRules) -> Result<(), ConfigError> {
        if !rules.needs_identity() {
            return Ok(());
        }
        let Some(access) = &self.access else {
            return Err(ConfigError::Invalid(format!(
                "hostname {host}: a rule has an identity requirement but the edge has no access section"
            )));
        };
        for id in rules.identities() {
            for t in &id.service_tokens {
                if !access.service_tokens.iter().any(|have| &have.id == t) {
                    return Err(ConfigError::Invalid(format!(
                        "hostname {host}: a rule names service token {t:?}, which access.service_tokens does not list"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen: {https: 127.0.0.1:8443, tunnel: 127.0.0.1:7844}\ntunnel_tls: {cert: c, key: k}\ntokens: t.json\n";

    #[test]
    fn validates_whole() {
        let ok = format!(
            "{BASE}hostnames:\n  - hostname: app.example.com\n    tunnel: prod\n    tls: {{cert: c, key: k}}\n    rules: [{{path: /admin/*, action: deny}}]\n"
        );
        let cfg = EdgeConfig::parse(&ok).unwrap();
        assert_eq!(cfg.heartbeat().unwrap(), Duration::from_secs(2));
        let dup = format!(
            "{ok}  - hostname: app.example.com\n    tunnel: x\n    tls: {{cert: c, key: k}}\n"
        );
        assert!(
            EdgeConfig::parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let upper = ok.replace("app.example.com", "App.example.com");
        assert!(EdgeConfig::parse(&upper).is_err());
        let no_tls = format!("{BASE}hostnames:\n  - hostname: a.b\n    tunnel: prod\n");
        assert!(
            EdgeConfig::parse(&no_tls)
                .unwrap_err()
                .to_string()
                .contains("acme")
        );
        let bad_rule = ok.replace("/admin/*", "/admin*");
        assert!(
            gatehouse_ops::chain(&EdgeConfig::parse(&bad_rule).unwrap_err())
                .contains("path pattern")
        );
        let acme = format!(
            "{BASE}acme: {{directory: https://ca/dir, challenge: http-01, state_dir: s}}\nhostnames: []\n"
        );
        assert!(
            EdgeConfig::parse(&acme)
                .unwrap_err()
                .to_string()
                .contains("listen.http")
        );
        let typo = ok.replace("rules:", "rulez:");
        assert!(EdgeConfig::parse(&typo).is_err());
    }

    #[test]
    fn access_section() {
        let host = |rules: &str| {
            format!(
                "hostnames:\n  - hostname: a.test\n    tunnel: t\n    tls: {{cert: c, key: k}}\n    rules: [{rules}]\n"
            )
        };
        let who =
            "{path: /*, action: allow, identity: {domains: [corp.test], service_tokens: [ci]}}";
        let access = format!(
            "access:\n  control: https://control.test/\n  service_tokens: [{{id: ci, secret_sha256: {}}}]\n",
            "ab".repeat(32)
        );
        let cfg = EdgeConfig::parse(&format!("{BASE}{access}{}", host(who))).unwrap();
        let a = cfg.access().unwrap().unwrap();
        assert_eq!(a.control, "https://control.test");
        assert_eq!(a.jwks, "https://control.test/access/jwks");
        assert_eq!(a.session_lifetime, DEFAULT_SESSION_LIFETIME);
        assert_eq!(a.key, std::path::Path::new("access.key"));
        assert_eq!(a.service_tokens, vec![("ci".to_string(), [0xab; 32])]);

        let refused = |text: String, says: &str| {
            let e = gatehouse_ops::chain(&EdgeConfig::parse(&text).unwrap_err());
            assert!(e.contains(says), "{text}\n{e}");
        };
        refused(
            format!("{BASE}{}", host(who)),
            "hostname a.test: a rule has an identity requirement but the edge has no access section",
        );
        refused(
            format!(
                "{BASE}{access}{}",
                host("{path: /x, action: deny, identity: {any: true}}")
            ),
            "rule /x: an identity requirement needs action: allow",
        );
        refused(
            format!(
                "{BASE}{access}{}",
                host("{path: /x, action: allow, identity: {service_tokens: [cd]}}")
            ),
            "service token \"cd\"",
        );
        refused(
            format!(
                "{BASE}{}{}",
                access.replace("https://control.test/", "http://control.test"),
                host(who)
            ),
            "must be an https:// URL",
        );
        refused(
            format!(
                "{BASE}{}{}",
                access.replace(&"ab".repeat(32), "abc"),
                host(who)
            ),
            "64 hex digits",
        );
        refused(
            format!("{BASE}{access}  session_lifetime: 10s\n{}", host(who)),
            "between 1m and 366d",
        );
        refused(
            format!("{BASE}{access}  session: 1h\n{}", host(who)),
            "unknown field",
        );
        refused(
            format!(
                "{BASE}{}{}",
                access.replace(
                    "[{id: ci",
                    &format!("[{{id: ci, secret_sha256: {}}}, {{id: ci", "0".repeat(64))
                ),
                host(who)
            ),
            "service token ci is listed twice",
        );
    }

    #[test]
    fn limits_from_the_file() {
        let host = "hostnames:\n  - hostname: a.test\n    tunnel: t\n    tls: {cert: c, key: k}\n";
        let cfg = EdgeConfig::parse(&format!("{BASE}{host}")).unwrap();
        assert_eq!(cfg.limits().unwrap(), gatehouse_limits::Limits::default());
        let cfg = EdgeConfig::parse(&format!(
            "{BASE}{host}limits: {{max_connections: 10, handshake_timeout: 2s, header_read_timeout: 1500ms, idle_timeout: 1m, h2_keep_alive_interval: \"off\", h2_max_concurrent_streams: 8}}\n"
        ))
        .unwrap();
        let l = cfg.limits().unwrap();
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.handshake_timeout, Duration::from_secs(2));
        assert_eq!(l.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(l.h2_keep_alive_interval, None);
        assert_eq!(l.h2_max_concurrent_streams, 8);
        for (bad, says) in [
            ("{max_connections: 0}", "max_connections"),
            ("{idle_timeout: 0}", "idle_timeout"),
            (
                "{idle_timeout: soon}",
                "limits: idle_timeout: invalid duration",
            ),
            ("{idle: 1s}", "unknown field"),
        ] {
            let e = EdgeConfig::parse(&format!("{BASE}{host}limits: {bad}\n")).unwrap_err();
            let e = gatehouse_ops::chain(&e);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
