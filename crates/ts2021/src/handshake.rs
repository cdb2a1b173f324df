//! The handshake, sans-IO: Noise `IK` with Curve25519, ChaCha20-Poly1305
//! and BLAKE2s, the prologue `Tailscale Control Protocol v<version>`, and
//! Tailscale's two framed messages.
//!
//! ```text
//! initiation (client → server, 101 bytes; sent in the upgrade request's header)
//!   2  capability version, big-endian
//!   1  type 1
//!   2  payload length 96, big-endian
//!   32 client ephemeral public key            -> e
//!   48 client machine public key, sealed      -> es, s
//!   16 tag over the empty payload             -> ss
//! response (server → client, 51 bytes; the first bytes after the 101)
//!   1  type 2
//!   2  payload length 48, big-endian
//!   32 server ephemeral public key            <- e, ee
//!   16 tag over the empty payload             <- se
//! error (server → client, instead of a response; unauthenticated)
//!   1  type 3
//!   2  length, big-endian
//!   …  text
//! ```

use crate::error::HandshakeError;
use crate::keys::{MachinePrivateKey, MachinePublicKey};
use crate::transport::Transport;
use blake2::{Blake2s256, Digest};
use chacha20poly1305::{AeadInPlace, ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hmac::{Mac, SimpleHmac};
use std::fmt;

/// The Noise protocol name, hashed into the initial state.
const PROTOCOL_NAME: &[u8] = b"Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The prologue is this followed by the decimal capability version.
const PROLOGUE_PREFIX: &str = "Tailscale Control Protocol v";

/// The oldest client capability version a server accepts (Tailscale
/// v1.80); older clients are refused during the handshake.
pub const MIN_CAPABILITY_VERSION: u16 = 113;

/// Size of the client's initiation message.
pub const INITIATION_LEN: usize = 101;
/// Size of the server's response message.
pub const RESPONSE_LEN: usize = 51;
/// Size of the header of every message but the initiation.
pub const HEADER_LEN: usize = 3;
const INITIATION_HEADER_LEN: usize = 5;

pub(crate) const TYPE_INITIATION: u8 = 1;
pub(crate) const TYPE_RESPONSE: u8 = 2;
pub(crate) const TYPE_ERROR: u8 = 3;
pub(crate) const TYPE_RECORD: u8 = 4;

const TAG_LEN: usize = 16;

/// Who completed a handshake with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's static key: its machine key, authenticated by the
    /// handshake.
    pub machine_key: MachinePublicKey,
    /// The capability version the client announced, bound into the
    /// handshake by the prologue.
    pub version: u16,
}

/// A handshake the server accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The response message to send the client.
    pub response: [u8; RESPONSE_LEN],
    /// The client.
    pub client: ClientInfo,
    /// The session's record ciphers.
    pub transport: Transport,
}

/// Reads the clear header of an initiation: its capability version, after
/// checking size, type and length (but not the version's minimum).
pub fn initiation_version(init: &[u8]) -> Result<u16, HandshakeError> {
    if init.len() != INITIATION_LEN {
        return Err(HandshakeError::InitiationSize { len: init.len() });
    }
    if init[2] != TYPE_INITIATION {
        return Err(HandshakeError::MessageType {
            got: init[2],
            want: TYPE_INITIATION,
        });
    }
    let declared = u16::from_be_bytes([init[3], init[4]]);
    if usize::from(declared) != INITIATION_LEN - INITIATION_HEADER_LEN {
        return Err(HandshakeError::InitiationLength { declared });
    }
    Ok(u16::from_be_bytes([init[0], init[1]]))
}

/// The server's half: checks the client's initiation, authenticates the
/// client's machine key and answers. `ephemeral` is a fresh key for this
/// handshake only ([`MachinePrivateKey::generate`]).
///
/// A refusal whose [`HandshakeError::client_message`] is `Some` should be
/// sent to the client with [`error_message`].
pub fn respond(
    init: &[u8],
    server_key: &MachinePrivateKey,
    ephemeral: &MachinePrivateKey,
) -> Result<Accepted, HandshakeError> {
    let version = initiation_version(init)?;
    if version < MIN_CAPABILITY_VERSION {
        return Err(HandshakeError::UnsupportedVersion {
            version,
            min: MIN_CAPABILITY_VERSION,
        });
    }
    let mut s = SymmetricState::new(version, &server_key.public());

    // -> e, es, s, ss
    let client_ephemeral = public_at(&init[5..37]);
    s.mix_hash(&client_ephemeral.0);
    let k = s.mix_dh(server_key, &client_ephemeral, "es")?;
    let mut machine_key = [0u8; 32];
    s.decrypt_and_hash(&k, &init[37..85], &mut machine_key, "machine key")?;
    let machine_key = MachinePublicKey(machine_key);
    let k = s.mix_dh(server_key, &machine_key, "ss")?;
    s.decrypt_and_hash(&k, &init[85..101], &mut [], "initiation")?;

    // <- e, ee, se
    let mut response = [0u8; RESPONSE_LEN];
    response[0] = TYPE_RESPONSE;
    response[1..3].copy_from_slice(&((RESPONSE_LEN - HEADER_LEN) as u16).to_be_bytes());
    let our_ephemeral = ephemeral.public();
    response[3..35].copy_from_slice(&our_ephemeral.0);
    s.mix_hash(&our_ephemeral.0);
    s.mix_dh(ephemeral, &client_ephemeral, "ee")?;
    let k = s.mix_dh(ephemeral, &machine_key, "se")?;
    s.encrypt_and_hash(&k, &mut response[35..51]);

    let (to_server, to_client) = s.split();
    Ok(Accepted {
        response,
        client: ClientInfo {
            machine_key,
            version,
        },
        transport: Transport::new(to_client, to_server, s.h),
    })
}

/// An error message (type 3) carrying `text`, cut to 65,535 bytes.
pub fn error_message(text: &str) -> Vec<u8> {
    let text = &text.as_bytes()[..text.len().min(usize::from(u16::MAX))];
    let mut msg = Vec::with_capacity(HEADER_LEN + text.len());
    msg.push(TYPE_ERROR);
    msg.extend_from_slice(&(text.len() as u16).to_be_bytes());
    msg.extend_from_slice(text);
    msg
}

/// What the 3-byte header of the server's first message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A response: read [`RESPONSE_LEN`] - [`HEADER_LEN`] more bytes.
    Response,
    /// A refusal: read this many bytes of text.
    Error {
        /// Length of the text.
        len: usize,
    },
}

/// Reads the header of the server's first message.
pub fn reply_header(header: [u8; HEADER_LEN]) -> Result<Reply, HandshakeError> {
    let declared = u16::from_be_bytes([header[1], header[2]]);
    match header[0] {
        TYPE_RESPONSE if usize::from(declared) == RESPONSE_LEN - HEADER_LEN => Ok(Reply::Response),
        TYPE_RESPONSE => Err(HandshakeError::ResponseLength { declared }),
        TYPE_ERROR => Ok(Reply::Error {
            len: usize::from(declared),
        }),
        got => Err(HandshakeError::MessageType {
            got,
            want: TYPE_RESPONSE,
        }),
    }
}

/// The client's half, between sending the initiation and reading the
/// response.
pub struct ClientHandshake {
    s: SymmetricState,
    key: MachinePrivateKey,
    ephemeral: MachinePrivateKey,
    server: MachinePublicKey,
    version: u16,
}

impl ClientHandshake {
    /// Starts a handshake from the machine key `key` to the server whose
    /// key is `server`, announcing capability `version`. `ephemeral` is a
    /// fresh key for this handshake only. Returns the initiation to send
    /// (raw, or base64 in the upgrade request's header).
    pub fn new(
        key: &MachinePrivateKey,
        server: MachinePublicKey,
        version: u16,
        ephemeral: MachinePrivateKey,
    ) -> Result<(Self, [u8; INITIATION_LEN]), HandshakeError> {
        let mut s = SymmetricState::new(version, &server);
        let mut init = [0u8; INITIATION_LEN];
        init[0..2].copy_from_slice(&version.to_be_bytes());
        init[2] = TYPE_INITIATION;
        init[3..5]
            .copy_from_slice(&((INITIATION_LEN - INITIATION_HEADER_LEN) as u16).to_be_bytes());

        let e = ephemeral.public();
        init[5..37].copy_from_slice(&e.0);
        s.mix_hash(&e.0);
        let k = s.mix_dh(&ephemeral, &server, "es")?;
        init[37..69].copy_from_slice(&key.public().0);
        s.encrypt_and_hash(&k, &mut init[37..85]);
        let k = s.mix_dh(key, &server, "ss")?;
        s.encrypt_and_hash(&k, &mut init[85..101]);
        Ok((
            Self {
                s,
                key: key.clone(),
                ephemeral,
                server,
                version,
            },
            init,
        ))
    }

    /// The capability version announced.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The server key the handshake is addressed to.
    pub fn server(&self) -> MachinePublicKey {
        self.server
    }

    /// Finishes with the server's whole response (header included).
    pub fn finish(mut self, response: &[u8]) -> Result<Transport, HandshakeError> {
        if response.len() != RESPONSE_LEN {
            return Err(HandshakeError::ResponseSize {
                len: response.len(),
            });
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&response[..HEADER_LEN]);
        if let Reply::Error { .. } = reply_header(header)? {
            return Err(HandshakeError::MessageType {
                got: TYPE_ERROR,
                want: TYPE_RESPONSE,
            });
        }
        let server_ephemeral = public_at(&response[3..35]);
        self.s.mix_hash(&server_ephemeral.0);
        self.s.mix_dh(&self.ephemeral, &server_ephemeral, "ee")?;
        let k = self.s.mix_dh(&self.key, &server_ephemeral, "se")?;
        self.s
            .decrypt_and_hash(&k, &response[35..51], &mut [], "response")?;
        let (to_server, to_client) = self.s.split();
        Ok(Transport::new(to_server, to_client, self.s.h))
    }
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("server", &self.server)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn public_at(bytes: &[u8]) -> MachinePublicKey {
    let mut k = [0u8; 32];
    k.copy_from_slice(bytes);
    MachinePublicKey(k)
}

/// Noise's SymmetricState: the handshake hash `h` and chaining key `ck`.
/// Each cipher key is used for one message only, so always with nonce 0.
struct SymmetricState {
    h: [u8; 32],
    ck: [u8; 32],
}

impl SymmetricState {
    /// The state after the prologue and the pre-message `<- s`.
    fn new(version: u16, server: &MachinePublicKey) -> Self {
        let h: [u8; 32] = Blake2s256::digest(PROTOCOL_NAME).into();
        let mut s = Self { h, ck: h };
        s.mix_hash(format!("{PROLOGUE_PREFIX}{version}").as_bytes());
        s.mix_hash(&server.0);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = Blake2s256::new()
            .chain_update(self.h)
            .chain_update(data)
            .finalize()
            .into();
    }

    /// MixKey(DH(private, public)); returns the new cipher key.
    fn mix_dh(
        &mut self,
        private: &MachinePrivateKey,
        public: &MachinePublicKey,
        step: &'static str,
    ) -> Result<[u8; 32], HandshakeError> {
        let shared = private
            .dh(public)
            .ok_or(HandshakeError::LowOrderKey { step })?;
        let (ck, k) = hkdf2(&self.ck, &shared);
        self.ck = ck;
        Ok(k)
    }

    /// Seals `buf` in place: its last 16 bytes receive the tag over the
    /// bytes before them. Then mixes the ciphertext into `h`.
    fn encrypt_and_hash(&mut self, key: &[u8; 32], buf: &mut [u8]) {
        let split = buf.len() - TAG_LEN;
        let (plain, tag_out) = buf.split_at_mut(split);
        let aead = ChaCha20Poly1305::new(key.into());
        // Sealing fails only for plaintexts over 256 GiB.
        if let Ok(tag) = aead.encrypt_in_place_detached(&Nonce::default(), &self.h, plain) {
            tag_out.copy_from_slice(&tag);
        }
        self.mix_hash(buf);
    }

    /// Opens `ciphertext` (plaintext then tag) into `plain`, then mixes the
    /// ciphertext into `h`.
    fn decrypt_and_hash(
        &mut self,
        key: &[u8; 32],
        ciphertext: &[u8],
        plain: &mut [u8],
        step: &'static str,
    ) -> Result<(), HandshakeError> {
        let refused = |source| HandshakeError::Decrypt { step, source };
        let (body, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag
            .try_into()
            .map_err(|_| refused(chacha20poly1305::Error))?;
        plain.copy_from_slice(body);
        let aead = ChaCha20Poly1305::new(key.into());
        aead.decrypt_in_place_detached(&Nonce::default(), &self.h, plain, &Tag::from(tag))
            .map_err(refused)?;
        self.mix_hash(ciphertext);
        Ok(())
    }

    /// The two transport keys: initiator to responder, responder to
    /// initiator.
    fn split(&self) -> ([u8; 32], [u8; 32]) {
        hkdf2(&self.ck, &[])
    }
}

/// Noise's HKDF with HMAC-BLAKE2s, two outputs (RFC 5869 with the chaining
/// key as salt).
fn hkdf2(ck: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let prk = hmac(ck, &[input]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    (t1, t2)
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC pads a key shorter than the hash's 64-byte block with zeros;
    // doing it here gives the fixed-size key its constructor takes.
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut mac = <SimpleHmac<Blake2s256> as KeyInit>::new(&block.into());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}
