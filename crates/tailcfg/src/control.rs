//! Messages around the Noise channel: the server's keys (`GET /key`) and
//! the early payload sent before HTTP/2.

use crate::key::{ChallengePublic, MachinePublic};
use crate::node::CapVer;
use serde::{Deserialize, Serialize};

/// The capability version of the Tailscale release these types follow
/// (1.102).
pub const CURRENT_CAPABILITY_VERSION: CapVer = 142;

/// The oldest capability version a server need accept (Tailscale 1.80),
/// from which a node's `AllowedIPs` may be left out and `HomeDERP` is read.
pub const MIN_CAPABILITY_VERSION: CapVer = 113;

/// The reply to `GET /key?v=<capver>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OverTlsPublicKeyResponse {
    /// The key of the old NaCl transport: zero for every client that
    /// speaks Noise.
    #[serde(rename = "legacyPublicKey")]
    pub legacy_public_key: MachinePublic,
    /// The server's Noise static key.
    #[serde(rename = "publicKey")]
    pub public_key: MachinePublic,
}

/// The optional payload the server sends inside the Noise channel before
/// HTTP/2 starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarlyNoise {
    /// A per-connection key the client uses to prove it holds its node key.
    #[serde(rename = "nodeKeyChallenge")]
    pub node_key_challenge: ChallengePublic,
}

/// The 5 bytes that start an early payload (where an HTTP/2 frame header
/// would otherwise be).
pub const EARLY_PAYLOAD_MAGIC: &[u8; 5] = b"\xff\xff\xffTS";

impl EarlyNoise {
    /// The early payload as sent: the magic, a 4-byte big-endian length,
    /// then the JSON.
    pub fn to_payload(&self) -> Vec<u8> {
        let json = format!("{{\"nodeKeyChallenge\":\"{}\"}}", self.node_key_challenge);
        let mut out = Vec::with_capacity(9 + json.len());
        out.extend_from_slice(EARLY_PAYLOAD_MAGIC);
        out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(json.as_bytes());
        out
    }
}
