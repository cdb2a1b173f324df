//! The HTTP upgrade that starts a session, as Tailscale's clients send it:
//!
//! ```text
//! POST /ts2021 HTTP/1.1
//! Upgrade: tailscale-control-protocol
//! Connection: upgrade
//! X-Tailscale-Handshake: <base64 of the 101-byte initiation>
//! ```
//!
//! The server answers `101 Switching Protocols` with the same `Upgrade`
//! and `Connection` headers; the connection then carries the handshake
//! response and records.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The path of the upgrade request.
pub const UPGRADE_PATH: &str = "/ts2021";
/// The `Upgrade` header's value, in the request and the 101.
pub const UPGRADE_PROTOCOL: &str = "tailscale-control-protocol";
/// The request header carrying the initiation, base64 (standard alphabet,
/// padded).
pub const HANDSHAKE_HEADER: &str = "X-Tailscale-Handshake";
/// The most header text decoded: far more than a 101-byte initiation needs.
const MAX_HEADER_LEN: usize = 1024;

/// A handshake header that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The header is absent or empty.
    #[error("missing {HANDSHAKE_HEADER} header")]
    Missing,
    /// The header is longer than any initiation.
    #[error("{HANDSHAKE_HEADER} header of {len} bytes is too long")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The header is not standard base64.
    #[error("{HANDSHAKE_HEADER} header is not valid base64")]
    Base64(#[source] base64::DecodeError),
}

/// The header value carrying `init`.
pub fn encode_handshake_header(init: &[u8]) -> String {
    STANDARD.encode(init)
}

/// The initiation in a header value (the bytes are then checked by
/// [`crate::respond`] or [`crate::accept`]).
pub fn decode_handshake_header(value: &[u8]) -> Result<Vec<u8>, HeaderError> {
    if value.is_empty() {
        return Err(HeaderError::Missing);
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong { len: value.len() });
    }
    STANDARD.decode(value).map_err(HeaderError::Base64)
}

/// Whether an `Upgrade` header value asks for this protocol (compared
/// without regard to case, as Tailscale's server does).
pub fn is_upgrade_protocol(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes())
}
