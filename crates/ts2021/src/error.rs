//! What can go wrong, one enum per layer: the handshake, the records, the
//! early payload, and [`Error`] for the async functions that do I/O.

/// A handshake refused, by either end.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The initiation is not the 101 bytes of a Noise IK first message.
    #[error("handshake initiation is {len} bytes, expected 101")]
    InitiationSize {
        /// Its length.
        len: usize,
    },
    /// A handshake message of another type than expected.
    #[error("handshake message of type {got}, expected {want}")]
    MessageType {
        /// The type byte received.
        got: u8,
        /// The type expected.
        want: u8,
    },
    /// The initiation's length field is not 96.
    #[error("handshake initiation declares {declared} payload bytes, expected 96")]
    InitiationLength {
        /// The declared length.
        declared: u16,
    },
    /// The client's capability version is older than the server supports.
    #[error("client capability version {version} is below the minimum {min}")]
    UnsupportedVersion {
        /// The version the client sent.
        version: u16,
        /// The oldest version accepted ([`crate::MIN_CAPABILITY_VERSION`]).
        min: u16,
    },
    /// A Diffie-Hellman step gave all zeros: the peer sent a low-order key.
    #[error("low-order key in the {step} step of the handshake")]
    LowOrderKey {
        /// The Noise token (`es`, `ss`, `ee`, `se`).
        step: &'static str,
    },
    /// A handshake message did not authenticate: wrong keys, wrong
    /// version, or tampered bytes.
    #[error("handshake message failed to authenticate ({step})")]
    Decrypt {
        /// What was being opened.
        step: &'static str,
        /// The AEAD's error.
        #[source]
        source: chacha20poly1305::Error,
    },
    /// The response's length field is not 48.
    #[error("handshake response declares {declared} payload bytes, expected 48")]
    ResponseLength {
        /// The declared length.
        declared: u16,
    },
    /// The response is not the 51 bytes of a Noise IK second message.
    #[error("handshake response is {len} bytes, expected 51")]
    ResponseSize {
        /// Its length.
        len: usize,
    },
    /// The server refused the handshake with an (unauthenticated) message.
    #[error("server refused the handshake: {message:?}")]
    Refused {
        /// The server's text, as sent (lossily decoded as UTF-8).
        message: String,
    },
}

impl HandshakeError {
    /// The fixed text a server sends the client (in an error message of
    /// type 3) when it refuses an initiation for this reason; `None` when
    /// the refusal is silent, as for a failed authentication. Never
    /// contains anything the client sent.
    pub fn client_message(&self) -> Option<&'static str> {
        match self {
            Self::InitiationSize { .. } => Some("handshake initiation has the wrong size"),
            Self::MessageType { .. } => Some("handshake initiation has the wrong type"),
            Self::InitiationLength { .. } => Some("handshake initiation has the wrong length"),
            Self::UnsupportedVersion { .. } => Some("unsupported client version"),
            _ => None,
        }
    }
}

/// A record refused. The receiving (or sending) direction is dead after
/// any of these: the two ends' nonces are no longer in step.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A message of another type than a record (4).
    #[error("message of type {got} where a record (4) was expected")]
    Type {
        /// The type byte received.
        got: u8,
    },
    /// A record longer than the protocol's 4,096 bytes.
    #[error("record of {len} bytes exceeds the 4096-byte maximum")]
    TooLarge {
        /// Header plus declared payload.
        len: usize,
    },
    /// The record did not authenticate (tampered, reordered, or shorter
    /// than its tag).
    #[error("record failed to authenticate")]
    Decrypt(#[source] chacha20poly1305::Error),
    /// The cipher refused to seal (it cannot for a record's sizes).
    #[error("record could not be sealed")]
    Seal(#[source] chacha20poly1305::Error),
    /// 2^64 - 1 records went one way: no nonce is left for this key.
    #[error("cipher exhausted: no nonce left for this key")]
    NonceExhausted,
    /// This direction already failed; nothing more is read or written.
    #[error("direction closed by an earlier error")]
    Dead,
}

/// An early payload refused by the client.
#[derive(Debug, thiserror::Error)]
pub enum EarlyPayloadError {
    /// The declared length is above the 10 MiB a client accepts.
    #[error("early payload of {len} bytes exceeds the 10 MiB maximum")]
    TooLarge {
        /// The declared length.
        len: u64,
    },
}

/// Errors of the async handshakes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying stream failed.
    #[error("I/O error during the control handshake")]
    Io(#[from] std::io::Error),
    /// The handshake was refused.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A record could not be sealed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The early payload given to send is too large.
    #[error(transparent)]
    EarlyPayload(#[from] EarlyPayloadError),
}
