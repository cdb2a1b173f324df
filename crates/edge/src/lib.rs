//! The Gatehouse edge (`gatehouse edge`): it owns the public side of the
//! public tier. It terminates HTTPS for the configured hostnames
//! (certificates from files or from ACME), answers only those hostnames,
//! enforces per-hostname path rules on one canonical form of the path, and
//! forwards each allowed request over a tunnel connection that a connector
//! dialled in. It also keeps the tunnels' tokens (hashed) and the routes
//! registered at run time through its route API. Ingress rules to origins
//! are the connector's business.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

/// Canonical paths and path rules (re-exported from `gatehouse-paths`).
pub use gatehouse_paths as path;

pub mod access;
pub mod acme;
pub mod certs;
pub mod config;
pub mod liveness;
pub mod proxy;
pub mod quic_reset;
pub mod routes_api;
mod server;
pub mod tokens;
pub mod tunnels;

pub use server::{EdgeError, RunningEdge, run, start};
