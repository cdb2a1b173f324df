//! The DERP relay protocol, wire-compatible with Tailscale's: frames and
//! both halves of the handshake (sans-IO), the relay server (registry of
//! clients by node key, forwarding, admission of this network's nodes
//! only, rate limits, keepalives, its HTTP paths and a STUN responder), and
//! a client that keeps a connection to a relay.
//!
//! Who may connect is decided outside (an [`Admission`]: control's node
//! set); TLS configuration and listeners belong to the embedding process.

#![forbid(unsafe_code)]

pub mod client;
#[cfg(feature = "standalone")]
pub mod config;
pub mod frame;
pub mod fuzzing;
pub mod handshake;
pub mod ratelimit;
pub mod server;
#[cfg(feature = "standalone")]
pub mod standalone;
#[cfg(feature = "standalone")]
pub mod sync;
pub mod wire;

pub use client::{ClientConfig, ClientError, Event, RelayClient};
pub use frame::{Frame, FrameError, PeerGoneReason};
pub use gatehouse_disco::NodePublicKey;
pub use handshake::PrivateKey;
pub use ratelimit::Rate;
pub use server::{
    Admission, ConfigError, KeySet, PATHS, RelayConfig, RelayMetrics, RelayServer,
    meta_certificate, serve_stun,
};
