//! Log setup and shutdown signals for the long-running commands.

use tracing_subscriber::EnvFilter;

/// Structured logs on stderr: JSON when `GATEHOUSE_LOG_FORMAT=json`, text
/// otherwise; the level comes from `RUST_LOG` (default `info`).
pub fn init() {
    init_default("info");
}

/// [`init`] with another default level (when `RUST_LOG` is unset).
pub fn init_default(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("GATEHOUSE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().with_current_span(true).with_span_list(true).init();
    } else {
        b.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
