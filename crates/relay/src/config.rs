//! The standalone relay's configuration file (`gatehouse relay --config
//! relay.yaml`), YAML. See docs/relay.md.

use crate::ratelimit::Rate;
use crate::server::{MIN_BURST, RelayConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Reading it.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its YAML.
    #[error("invalid relay configuration")]
    Yaml(#[source] serde_yaml_ng::Error),
    /// A value.
    #[error("invalid relay configuration: {0}")]
    Invalid(String),
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    gatehouse_ops::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 443))
}
fn default_stun() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], 3478)))
}
fn default_state() -> PathBuf {
    PathBuf::from("gatehouse-relay")
}
fn default_poll() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn default_max_clients() -> usize {
    100_000
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// HTTPS address (DERP and the probe paths). Default `0.0.0.0:443`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// STUN (UDP) address; `null` turns STUN off. Default `0.0.0.0:3478`.
    #[serde(default = "default_stun")]
    pub stun: Option<SocketAddr>,
    /// Operations endpoints (`/healthz`, `/readyz`, `/metrics`); none when
    /// absent.
    #[serde(default)]
    pub ops: Option<SocketAddr>,
    /// Directory for the relay's private key (`relay.key`) and a generated
    /// certificate.
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// The relay's DNS name (what clients verify).
    pub hostname: String,
    /// TLS certificate.
    pub tls: TlsFile,
    /// Where this relay sits in the relay map.
    pub region: Region,
    /// Where the admitted node keys come from.
    pub control: ControlFile,
    /// Per-client limit on what a client sends.
    #[serde(default)]
    pub rate_limit: Option<RateFile>,
    /// Keepalive interval (plus up to 5 s of jitter). Default `60s`.
    #[serde(default = "default_keepalive", deserialize_with = "duration")]
    pub keepalive: Duration,
    /// Connections open at once; more are closed at once. Default 100000.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

/// The certificate: files, or a self-signed one made in the state
/// directory (clients then pin it: `sha256-raw:<hex>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Make and keep a self-signed certificate for `hostname`.
    #[serde(default)]
    pub self_signed: bool,
}

/// A region of the relay map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Region id (900-999 are for self-hosted relays in Tailscale's maps).
    pub id: u32,
    /// Short code, e.g. `fra`.
    pub code: String,
    /// Human name.
    pub name: String,
}

/// How the relay learns the network's node keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    /// Control's join string (`https://host:port#sha256:<CA hash>`).
    pub join: String,
    /// An OAuth client secret with the `devices:read` scope (exchanged for
    /// short-lived tokens), or an access or admin token; `file:PATH` reads it
    /// from a file.
    pub credential: String,
    /// How often the node list is fetched. Default `10s`.
    #[serde(default = "default_poll", deserialize_with = "duration")]
    pub poll: Duration,
}

/// A rate limit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    /// Sustained bytes per second.
    pub bytes_per_second: u32,
    /// Bytes at once (at least one full packet, 65,578).
    pub burst: u32,
}

impl RelayFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigFileError> {
        let f: RelayFile = serde_yaml_ng::from_str(text).map_err(ConfigFileError::Yaml)?;
        let bad = |m: String| Err(ConfigFileError::Invalid(m));
        match (&f.tls.cert, &f.tls.key, f.tls.self_signed) {
            (Some(_), Some(_), false) | (None, None, true) => {}
            _ => return bad("tls: give cert and key, or self_signed: true".into()),
        }
        if f.hostname.trim().is_empty() {
            return bad("hostname is empty".into());
        }
        if f.control.poll.is_zero() {
            return bad("control.poll must be above 0".into());
        }
        if f.keepalive.is_zero() || f.keepalive > Duration::from_secs(100) {
            return bad(
                "keepalive must be between 1s and 100s (clients give up after 120s)".into(),
            );
        }
        if let Some(r) = f.rate_limit
            && (r.burst < MIN_BURST || r.bytes_per_second == 0)
        {
            return bad(format!(
                "rate_limit: bytes_per_second above 0 and burst at least {MIN_BURST}"
            ));
        }
        Ok(f)
    }

    /// The server settings it gives.
    pub fn server_config(&self) -> RelayConfig {
        RelayConfig {
            keepalive: self.keepalive,
            rate_limit: self.rate_limit.map(|r| Rate {
                per_sec: r.bytes_per_second,
                burst: r.burst,
            }),
            ..RelayConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
hostname: relay.example.net
tls: { self_signed: true }
region: { id: 900, code: own, name: Own }
control: { join: "https://c:8443#sha256:00", credential: "file:/x" }
"#;

    #[test]
    fn defaults_and_refusals() {
        let f = RelayFile::parse(OK).unwrap();
        assert_eq!(f.listen.port(), 443);
        assert_eq!(f.stun.map(|s| s.port()), Some(3478));
        assert_eq!(f.control.poll, Duration::from_secs(10));
        assert!(f.server_config().rate_limit.is_none());
        for (bad, why) in [
            (OK.replace("self_signed: true", "cert: /c"), "tls"),
            (format!("{OK}keepalive: 5m\n"), "keepalive"),
            (
                format!("{OK}rate_limit: {{ bytes_per_second: 10, burst: 100 }}\n"),
                "burst",
            ),
            (format!("{OK}unknown: 1\n"), "unknown"),
            (OK.replace("relay.example.net", "''"), "hostname"),
        ] {
            let e = RelayFile::parse(&bad).unwrap_err();
            assert!(
                format!("{e:#}").contains(why) || format!("{:?}", e).contains(why),
                "{bad}: {e:?}"
            );
        }
        let f = RelayFile::parse(&format!(
            "{OK}stun: null\nrate_limit: {{ bytes_per_second: 100000, burst: 131072 }}\n"
        ))
        .unwrap();
        assert!(f.stun.is_none());
        assert_eq!(
            f.server_config().rate_limit,
            Some(Rate {
                per_sec: 100_000,
                burst: 131_072
            })
        );
    }
}
