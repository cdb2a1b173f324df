//! Tailscale's control transport ("ts2021"), both ends, wire-compatible
//! with Tailscale's `controlbase` and `controlhttp`: the Noise `IK`
//! handshake (Curve25519, ChaCha20-Poly1305, BLAKE2s; prologue
//! `Tailscale Control Protocol v<capability version>`) and the records
//! that follow it.
//!
//! A session starts with an HTTP upgrade ([`upgrade`]): the client's
//! initiation travels base64 in a header of `POST /ts2021`; after the
//! `101`, the server writes its response and then both ends exchange
//! records. The client's static key is its **machine key**, authenticated
//! by the handshake ([`ClientInfo`]). The server may first send an early
//! payload inside the session ([`early`]); then HTTP/2 runs over the
//! [`NoiseStream`].
//!
//! The protocol itself is sans-IO ([`respond`], [`ClientHandshake`],
//! [`Transport`]): bytes in, bytes out, keys and randomness passed in.
//! The async shell ([`accept`], [`connect`], [`NoiseStream`]) runs it over
//! any tokio byte stream. Nothing here reads a clock: time limits on the
//! handshake belong to the caller.
//!
//! Records use a **big-endian** nonce counter (the Noise specification's
//! is little-endian), which is why the primitives are used directly rather
//! than through a Noise library.

#![forbid(unsafe_code)]

pub mod early;
mod error;
pub mod fuzzing;
mod handshake;
mod keys;
mod stream;
mod transport;
pub mod upgrade;

pub use early::{EarlyPayload, encode_early_payload, parse_early_payload};
pub use error::{EarlyPayloadError, Error, HandshakeError, RecordError};
pub use handshake::{
    Accepted, ClientHandshake, ClientInfo, HEADER_LEN, INITIATION_LEN, MIN_CAPABILITY_VERSION,
    RESPONSE_LEN, Reply, error_message, initiation_version, reply_header, respond,
};
pub use keys::{MachinePrivateKey, MachinePublicKey};
pub use stream::{NoiseStream, accept, accept_with_early_payload, connect};
pub use transport::{MAX_CIPHERTEXT_LEN, MAX_PLAINTEXT_LEN, MAX_RECORD_LEN, Transport};
