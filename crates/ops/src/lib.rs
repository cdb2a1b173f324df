//! What every long-running Gatehouse process shares, whatever its role:
//! the operations endpoints (`/healthz`, `/readyz`, `/metrics`), backoff
//! for reconnecting, TLS plumbing (the provider, PEM loading, root stores),
//! heap settings for bulk relaying, and the duration syntax of config files
//! and flags.
//!
//! Protocol logic stays with the components; this crate holds only the
//! plumbing they would otherwise each write again.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

pub mod backoff;
mod duration;
pub mod error;
pub mod heap;
pub mod server;
pub mod tls;

pub use backoff::{Backoff, Retries};
pub use duration::{DurationError, parse_duration};
pub use error::{Chain, chain};
