//! The two halves of the DERP handshake, sans-IO. The server sends its key
//! first; the client answers with its node key and a box (client private
//! key → server public key) holding JSON about itself; the server opens it,
//! decides whether to admit the client, and answers with a box of its own
//! (server private key → client public key). Boxes are NaCl's:
//! `nonce || tag || ciphertext`.

use crate::frame::{Frame, PROTOCOL_VERSION};
use bytes::Bytes;
use crypto_box::SalsaBox;
use crypto_box::aead::Aead;
use gatehouse_disco::NodePublicKey;
use serde_json::{Map, Value};
use std::fmt;

/// A Curve25519 private key: a node's (the client side) or the relay's own.
#[derive(Clone)]
pub struct PrivateKey(crypto_box::SecretKey);

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        Self::from_bytes(b)
    }

    /// The key with these bytes (a WireGuard private key works as is).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(crypto_box::SecretKey::from(b))
    }

    /// The raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Its public key.
    pub fn public(&self) -> NodePublicKey {
        NodePublicKey(*self.0.public_key().as_bytes())
    }

    fn sealer(&self, peer: &NodePublicKey) -> SalsaBox {
        SalsaBox::new(&crypto_box::PublicKey::from(peer.0), &self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public())
    }
}

/// What the client says about itself (Go's field names; matched without
/// regard to case, unknown fields ignored, as Go's JSON decoder does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Protocol version (2).
    pub version: u32,
    /// The client answers Ping frames.
    pub can_ack_pings: bool,
    /// A prober (monitoring), not a real node.
    pub is_prober: bool,
    /// A mesh key (relay-to-relay); this relay serves no mesh, so it only
    /// records that one was presented.
    pub mesh_key: Option<String>,
    /// The client program's name.
    pub app_name: Option<String>,
}

/// What the server says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// Protocol version (2).
    pub version: u32,
    /// The per-client rate limit, bytes per second (0: none announced).
    pub rate_bytes_per_sec: u32,
    /// The burst of that limit in bytes.
    pub burst_bytes: u32,
}

/// A handshake that fails.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Another frame came where the handshake expected one.
    #[error("expected {expected} during the handshake, got {got}")]
    UnexpectedFrame {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The box does not open: wrong keys or tampered.
    #[error("the {0} box does not open")]
    Unauthentic(&'static str),
    /// The JSON inside the box is not what it must be.
    #[error("malformed {what} JSON")]
    Json {
        /// Which message.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A field of the JSON has the wrong type.
    #[error("field {0:?} of the client info has the wrong type")]
    FieldType(String),
}

fn random_nonce() -> [u8; 24] {
    let mut n = [0u8; 24];
    rand::fill(&mut n);
    n
}

fn seal(sealer: &SalsaBox, json: &[u8]) -> ([u8; 24], Bytes) {
    let nonce = random_nonce();
    // Sealing into memory cannot fail.
    let sealed = sealer.encrypt((&nonce).into(), json).unwrap_or_default();
    (nonce, Bytes::from(sealed))
}

fn frame_name(f: &Frame) -> String {
    let s = format!("{f:?}");
    s.split([' ', '(', '{'])
        .next()
        .unwrap_or("frame")
        .to_owned()
}

/// The server's first frame.
pub fn server_key_frame(server: &PrivateKey) -> Frame {
    Frame::ServerKey {
        key: server.public(),
    }
}

/// Opens the client's ClientInfo frame: its node key and what it says.
/// Proof that the client holds the key's private half: the box opens only
/// with it.
pub fn open_client_info(
    server: &PrivateKey,
    frame: &Frame,
) -> Result<(NodePublicKey, ClientInfo), HandshakeError> {
    let Frame::ClientInfo { key, nonce, sealed } = frame else {
        return Err(HandshakeError::UnexpectedFrame {
            expected: "ClientInfo",
            got: frame_name(frame),
        });
    };
    let json = server
        .sealer(key)
        .decrypt(nonce.into(), &sealed[..])
        .map_err(|_| HandshakeError::Unauthentic("client info"))?;
    Ok((*key, parse_client_info(&json)?))
}

/// Parses the ClientInfo JSON as Go does: keys matched without regard to
/// case, unknown keys ignored, a field of the wrong type refused.
pub fn parse_client_info(json: &[u8]) -> Result<ClientInfo, HandshakeError> {
    let map: Map<String, Value> =
        serde_json::from_slice(json).map_err(|source| HandshakeError::Json {
            what: "client info",
            source,
        })?;
    let mut info = ClientInfo::default();
    for (k, v) in map {
        let wrong = || HandshakeError::FieldType(k.clone());
        match k.to_ascii_lowercase().as_str() {
            "version" => {
                info.version = v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(wrong)?
            }
            "canackpings" => info.can_ack_pings = v.as_bool().ok_or_else(wrong)?,
            "isprober" => info.is_prober = v.as_bool().ok_or_else(wrong)?,
            "meshkey" => info.mesh_key = Some(v.as_str().ok_or_else(wrong)?.to_owned()),
            "appname" => info.app_name = Some(v.as_str().ok_or_else(wrong)?.to_owned()),
            _ => {}
        }
    }
    Ok(info)
}

/// The ServerInfo frame for the client `client`.
pub fn server_info_frame(server: &PrivateKey, client: &NodePublicKey, info: &ServerInfo) -> Frame {
    let mut m = Map::new();
    m.insert("version".into(), info.version.into());
    if info.rate_bytes_per_sec > 0 {
        m.insert(
            "TokenBucketBytesPerSecond".into(),
            info.rate_bytes_per_sec.into(),
        );
        m.insert("TokenBucketBytesBurst".into(), info.burst_bytes.into());
    }
    let json = Value::Object(m).to_string();
    let (nonce, sealed) = seal(&server.sealer(client), json.as_bytes());
    Frame::ServerInfo { nonce, sealed }
}

/// The client's ClientInfo frame, answering the server's key.
pub fn client_info_frame(client: &PrivateKey, server: &NodePublicKey, info: &ClientInfo) -> Frame {
    let mut m = Map::new();
    m.insert("version".into(), info.version.into());
    m.insert("CanAckPings".into(), info.can_ack_pings.into());
    if info.is_prober {
        m.insert("IsProber".into(), true.into());
    }
    if let Some(name) = &info.app_name {
        m.insert("AppName".into(), name.clone().into());
    }
    let json = Value::Object(m).to_string();
    let (nonce, sealed) = seal(&client.sealer(server), json.as_bytes());
    Frame::ClientInfo {
        key: client.public(),
        nonce,
        sealed,
    }
}

/// The server's key from its first frame.
pub fn read_server_key(frame: &Frame) -> Result<NodePublicKey, HandshakeError> {
    match frame {
        Frame::ServerKey { key } => Ok(*key),
        other => Err(HandshakeError::UnexpectedFrame {
            expected: "ServerKey",
            got: frame_name(other),
        }),
    }
}

/// Opens the server's ServerInfo frame.
pub fn open_server_info(
    client: &PrivateKey,
    server: &NodePublicKey,
    frame: &Frame,
) -> Result<ServerInfo, HandshakeError> {
    let Frame::ServerInfo { nonce, sealed } = frame else {
        return Err(HandshakeError::UnexpectedFrame {
            expected: "ServerInfo",
            got: frame_name(frame),
        });
    };
    let json = client
        .sealer(server)
        .decrypt(nonce.into(), &sealed[..])
        .map_err(|_| HandshakeError::Unauthentic("server info"))?;
    let map: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|source| HandshakeError::Json {
            what: "server info",
            source,
        })?;
    let mut info = ServerInfo::default();
    for (k, v) in map {
        let n = v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        match k.to_ascii_lowercase().as_str() {
            "version" => info.version = n,
            "tokenbucketbytespersecond" => info.rate_bytes_per_sec = n,
            "tokenbucketbytesburst" => info.burst_bytes = n,
            _ => {}
        }
    }
    Ok(info)
}

/// What a Tailscale client sends.
pub fn default_client_info() -> ClientInfo {
    ClientInfo {
        version: PROTOCOL_VERSION,
        can_ack_pings: true,
        ..ClientInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_agree() {
        let (server, client) = (PrivateKey::generate(), PrivateKey::generate());
        let skey = read_server_key(&server_key_frame(&server)).unwrap();
        assert_eq!(skey, server.public());
        let ci = client_info_frame(&client, &skey, &default_client_info());
        let (who, info) = open_client_info(&server, &ci).unwrap();
        assert_eq!(who, client.public());
        assert_eq!(info, default_client_info());
        let si = ServerInfo {
            version: 2,
            rate_bytes_per_sec: 1000,
            burst_bytes: 70000,
        };
        let f = server_info_frame(&server, &who, &si);
        assert_eq!(open_server_info(&client, &skey, &f).unwrap(), si);
        // Someone else's key in a ClientInfo: the box does not open.
        let Frame::ClientInfo { nonce, sealed, .. } = ci else {
            panic!()
        };
        let forged = Frame::ClientInfo {
            key: PrivateKey::generate().public(),
            nonce,
            sealed,
        };
        assert!(matches!(
            open_client_info(&server, &forged),
            Err(HandshakeError::Unauthentic(_))
        ));
        assert!(matches!(
            open_client_info(&server, &Frame::KeepAlive),
            Err(HandshakeError::UnexpectedFrame { .. })
        ));
    }

    #[test]
    fn client_info_json_like_go() {
        let i = parse_client_info(br#"{"version":2,"CanAckPings":true}"#).unwrap();
        assert_eq!((i.version, i.can_ack_pings), (2, true));
        // Case-insensitive keys, unknown keys ignored; tailscale-rs's
        // snake_case mesh_key is not a mesh key.
        let i = parse_client_info(br#"{"VERSION":2,"canackpings":true,"mesh_key":"none","x":[1]}"#)
            .unwrap();
        assert_eq!((i.version, i.can_ack_pings, i.mesh_key), (2, true, None));
        assert!(matches!(
            parse_client_info(br#"{"version":"2"}"#),
            Err(HandshakeError::FieldType(_))
        ));
        assert!(matches!(
            parse_client_info(b"[1]"),
            Err(HandshakeError::Json { .. })
        ));
        assert!(matches!(
            parse_client_info(b""),
            Err(HandshakeError::Json { .. })
        ));
    }
}
