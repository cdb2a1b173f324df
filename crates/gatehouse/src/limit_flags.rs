//! The connection-limit flags every HTTP listener's command takes (edge,
//! control): each replaces the config's value; durations like `30s`.

use clap::Args;
use gatehouse_limits::LimitsConfig;

/// Connection limits of a command's listeners.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitFlags {
    /// Connections open at once per listener; more are closed at once.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Time for a TLS handshake (e.g. 10s).
    #[arg(long)]
    pub handshake_timeout: Option<String>,
    /// Time for a whole request head (e.g. 30s).
    #[arg(long)]
    pub header_read_timeout: Option<String>,
    /// Time a connection may stay with no request in flight (e.g. 60s).
    #[arg(long)]
    pub idle_timeout: Option<String>,
}

impl LimitFlags {
    /// `base` with every flag given replacing its value.
    pub fn over(self, mut base: LimitsConfig) -> LimitsConfig {
        if let Some(n) = self.max_connections {
            base.max_connections = Some(n);
        }
        for (flag, slot) in [
            (self.handshake_timeout, &mut base.handshake_timeout),
            (self.header_read_timeout, &mut base.header_read_timeout),
            (self.idle_timeout, &mut base.idle_timeout),
        ] {
            if flag.is_some() {
                *slot = flag;
            }
        }
        base
    }
}
