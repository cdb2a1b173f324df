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
