//! The Gatehouse connector (`gatehouse tunnel`): it dials one or more edges
//! from inside the cluster (QUIC, or TLS/TCP with HTTP/2 streams when UDP is
//! blocked), authenticates with a tunnel token, and answers each tunnel
//! stream by proxying it to an origin chosen by cloudflared-compatible
//! ingress rules. The stream I/O it shares with the edge is
//! `gatehouse-tunnel-io`'s; path rules, TLS for the public and hostnames are
//! the edge's.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

pub mod access;
pub mod connector;
pub mod control;
pub mod fuzzing;
pub mod ingress;
pub mod origin;
mod proxy;
mod reload;

pub use connector::{ConnectorConfig, ConnectorError, Transport, run};
pub use proxy::TCP_UPGRADE;
