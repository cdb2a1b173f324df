//! Limits as config files and flags write them.

use crate::{Limits, LimitsError};
use serde::Deserialize;
use std::time::Duration;

/// Limits as a config file or flags give them: absent values take the
/// defaults the caller passes. Durations are written like `30s`, `500ms`,
/// `1m` (`gatehouse_ops::parse_duration`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections open at once per listener; more are closed at once.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Time for a TLS handshake.
    #[serde(default)]
    pub handshake_timeout: Option<String>,
    /// Time for a whole request head.
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    /// Time a connection may stay with no request in flight.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// HTTP/2 keep-alive ping interval (`off`: none).
    #[serde(default)]
    pub h2_keep_alive_interval: Option<String>,
    /// How long an HTTP/2 ping may go unanswered.
    #[serde(default)]
    pub h2_keep_alive_timeout: Option<String>,
    /// HTTP/2 streams open at once per connection.
    #[serde(default)]
    pub h2_max_concurrent_streams: Option<u32>,
}

/// Why configured limits are refused: the field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsConfigError {
    /// A duration that does not parse.
    #[error("{field}")]
    Duration {
        /// The field.
        field: &'static str,
        /// Why.
        source: gatehouse_ops::DurationError,
    },
    /// Limits that could serve nothing.
    #[error(transparent)]
    Invalid(#[from] LimitsError),
}

impl LimitsConfig {
    /// The limits these values give over `defaults`, checked.
    pub fn resolve(&self, defaults: &Limits) -> Result<Limits, LimitsConfigError> {
        let dur = |field: &'static str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => gatehouse_ops::parse_duration(s)
                .map_err(|source| LimitsConfigError::Duration { field, source }),
        };
        let d = defaults;
        let limits = Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            handshake_timeout: dur(
                "handshake_timeout",
                &self.handshake_timeout,
                d.handshake_timeout,
            )?,
            header_read_timeout: dur(
                "header_read_timeout",
                &self.header_read_timeout,
                d.header_read_timeout,
            )?,
            idle_timeout: dur("idle_timeout", &self.idle_timeout, d.idle_timeout)?,
            h2_keep_alive_interval: match self.h2_keep_alive_interval.as_deref() {
                None => d.h2_keep_alive_interval,
                Some("off") => None,
                Some(_) => Some(dur(
                    "h2_keep_alive_interval",
                    &self.h2_keep_alive_interval,
                    Duration::ZERO,
                )?),
            },
            h2_keep_alive_timeout: dur(
                "h2_keep_alive_timeout",
                &self.h2_keep_alive_timeout,
                d.h2_keep_alive_timeout,
            )?,
            h2_max_concurrent_streams: self
                .h2_max_concurrent_streams
                .unwrap_or(d.h2_max_concurrent_streams),
        };
        limits.validate()?;
        Ok(limits)
    }
}
