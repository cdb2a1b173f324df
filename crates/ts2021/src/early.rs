//! The optional early payload: the first plaintext the server sends inside
//! the session, before HTTP/2, may be
//!
//! ```text
//! 5  magic \xff\xff\xffTS (never the start of an HTTP/2 frame)
//! 4  length, big-endian
//! …  JSON (Tailscale's `EarlyNoise`: a node-key challenge)
//! ```
//!
//! A client reads the first 9 plaintext bytes: with the magic they are this
//! header, otherwise they are the start of the server's HTTP/2 and are
//! handed on unchanged.

use crate::error::EarlyPayloadError;

/// The 5 bytes an early payload starts with.
pub const EARLY_PAYLOAD_MAGIC: &[u8; 5] = b"\xff\xff\xffTS";
/// Header size: the magic and the length.
pub const EARLY_PAYLOAD_HEADER_LEN: usize = 9;
/// The longest early payload a client accepts (as Tailscale's client).
pub const MAX_EARLY_PAYLOAD_LEN: usize = 10 << 20;

/// An early payload's plaintext: header then `json`.
pub fn encode_early_payload(json: &[u8]) -> Result<Vec<u8>, EarlyPayloadError> {
    if json.len() > MAX_EARLY_PAYLOAD_LEN {
        return Err(EarlyPayloadError::TooLarge {
            len: json.len() as u64,
        });
    }
    let mut out = Vec::with_capacity(EARLY_PAYLOAD_HEADER_LEN + json.len());
    out.extend_from_slice(EARLY_PAYLOAD_MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    Ok(out)
}

/// What the start of the server's plaintext holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyPayload {
    /// Fewer bytes than needed to tell, or than the payload declares.
    Incomplete,
    /// No early payload: the bytes are the server's HTTP/2.
    Absent,
    /// An early payload whose JSON is `plain[9..9 + len]`.
    Present {
        /// Length of the JSON.
        len: usize,
    },
}

/// Looks at the start of the server's plaintext (as much as has arrived).
pub fn parse_early_payload(plain: &[u8]) -> Result<EarlyPayload, EarlyPayloadError> {
    if plain.len() < EARLY_PAYLOAD_HEADER_LEN {
        return Ok(EarlyPayload::Incomplete);
    }
    if &plain[..5] != EARLY_PAYLOAD_MAGIC {
        return Ok(EarlyPayload::Absent);
    }
    let len = u32::from_be_bytes([plain[5], plain[6], plain[7], plain[8]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_EARLY_PAYLOAD_LEN {
        return Err(EarlyPayloadError::TooLarge { len: len as u64 });
    }
    if plain.len() - EARLY_PAYLOAD_HEADER_LEN < len {
        return Ok(EarlyPayload::Incomplete);
    }
    Ok(EarlyPayload::Present { len })
}
