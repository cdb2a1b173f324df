//! Client of Gatehouse control (`docs/protocol/control.md`). It owns the
//! client side of trust (pinning control's CA from a join string, then
//! trusting only that CA), a node's identity (keys generated locally and
//! kept in a state directory; only public keys and CSRs leave), registration,
//! the map stream, and typed calls of the admin API. The node's data plane
//! and the CLI live elsewhere.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

mod http;
mod identity;
mod join;
mod tls;

pub use http::{AdminClient, ClientError, MapStream, NodeClient, TlsError, register};
pub use identity::{IDENTITY_FILE, Identity, IdentityError, PendingIdentity};
pub use join::{Join, JoinError};
pub use tls::{ca_fingerprint, fetch_pinned_ca};

/// Registration can fail making keys or talking to control.
#[derive(Debug, thiserror::Error)]
pub enum IdentityOrClientError {
    /// Keys or CSRs.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Control.
    #[error(transparent)]
    Client(#[from] ClientError),
}
