//! Disco packets: `magic(6) || sender disco key(32) || nonce(24) || box`,
//! the box (tag first, as NaCl lays it out) holding `type(1) || version(1)
//! || payload`. The same bytes travel over UDP and, unchanged, inside a
//! relay's SendPacket.

use crate::key::{DiscoPrivateKey, DiscoPublicKey, DiscoShared, NodePublicKey};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// `"TS💬"`: the first six bytes of every disco packet.
pub const MAGIC: [u8; 6] = *b"TS\xf0\x9f\x92\xac";
/// Bytes before the box: magic, sender key, nonce.
pub const HEADER_LEN: usize = 6 + 32 + 24;
/// The box's authentication tag.
pub const TAG_LEN: usize = 16;
/// The smallest packet that can be a disco packet (an empty box).
pub const MIN_LEN: usize = HEADER_LEN;
/// Transaction ids of pings (and of STUN).
pub type TxId = [u8; 12];
/// Largest packet this codec seals or opens (a relay's packet limit).
pub const MAX_LEN: usize = 64 << 10;

/// The message types (disco.go's numbering).
const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
const VERSION: u8 = 0;
const ENDPOINT_LEN: usize = 18;
const PONG_LEN: usize = 12 + ENDPOINT_LEN;

/// Why a packet is not a disco message we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoError {
    /// Shorter than a header, or without the magic.
    #[error("not a disco packet")]
    NotDisco,
    /// Larger than this codec handles.
    #[error("disco packet of {0} bytes is too large")]
    TooLarge(usize),
    /// The box does not open with our key and the sender's.
    #[error("disco box does not open (wrong keys or tampered)")]
    Unauthentic,
    /// The box opened but holds fewer than the two bytes of type and version.
    #[error("disco message is empty")]
    Empty,
    /// A type this codec does not handle (e.g. the peer-relay messages
    /// 0x04-0x09, which Gatehouse never asks for).
    #[error("unsupported disco message type {0:#04x}")]
    UnsupportedType(u8),
    /// A message shorter than its type requires.
    #[error("disco message of type {ty:#04x} is too short ({len} bytes)")]
    Short {
        /// The type.
        ty: u8,
        /// Payload bytes present.
        len: usize,
    },
}

/// A disco message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A path probe.
    Ping {
        /// Matches the Pong to the Ping.
        tx_id: TxId,
        /// The sender's node key (absent from very old clients).
        node_key: Option<NodePublicKey>,
        /// Zero bytes after the node key (path-MTU probes).
        padding: usize,
    },
    /// The answer to a Ping.
    Pong {
        /// The Ping's transaction id.
        tx_id: TxId,
        /// Where the Ping came from, as its receiver saw it.
        src: SocketAddr,
    },
    /// "Ping me at these addresses" (accepted over a relay only).
    CallMeMaybe {
        /// The sender's endpoints.
        endpoints: Vec<SocketAddr>,
    },
}

/// Whether `packet` starts like a disco packet (magic and a sender key):
/// the test a relay and the UDP demultiplexer make without keys.
pub fn looks_like_disco(packet: &[u8]) -> bool {
    packet.len() >= 6 + 32 && packet.starts_with(&MAGIC)
}

/// The sender's disco key, for choosing the shared key to open with.
pub fn sender(packet: &[u8]) -> Result<DiscoPublicKey, DiscoError> {
    if packet.len() < HEADER_LEN || !packet.starts_with(&MAGIC) {
        return Err(DiscoError::NotDisco);
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&packet[6..38]);
    Ok(DiscoPublicKey(k))
}

fn put_endpoint(out: &mut Vec<u8>, addr: &SocketAddr) {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn get_endpoint(b: &[u8]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let port = u16::from_be_bytes([b[16], b[17]]);
    SocketAddr::new(Ipv6Addr::from(ip).to_canonical(), port)
}

impl Message {
    /// `type || version || payload`: the plaintext inside the box.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Message::Ping {
                tx_id,
                node_key,
                padding,
            } => {
                out.extend_from_slice(&[TYPE_PING, VERSION]);
                out.extend_from_slice(tx_id);
                if let Some(k) = node_key {
                    out.extend_from_slice(k.as_bytes());
                    out.resize(out.len() + padding, 0);
                }
            }
            Message::Pong { tx_id, src } => {
                out.extend_from_slice(&[TYPE_PONG, VERSION]);
                out.extend_from_slice(tx_id);
                put_endpoint(&mut out, src);
            }
            Message::CallMeMaybe { endpoints } => {
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, VERSION]);
                for e in endpoints {
                    put_endpoint(&mut out, e);
                }
            }
        }
        out
    }

    /// Parses the plaintext of a box, as Tailscale's parser does: trailing
    /// bytes are ignored; a CallMeMaybe of another version or whose length
    /// is not a multiple of 18 is an empty list.
    pub fn decode(plain: &[u8]) -> Result<Message, DiscoError> {
        let [ty, version, payload @ ..] = plain else {
            return Err(DiscoError::Empty);
        };
        let short = || DiscoError::Short {
            ty: *ty,
            len: payload.len(),
        };
        match *ty {
            TYPE_PING => {
                let tx_id: TxId = payload
                    .get(..12)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(short)?;
                let rest = &payload[12..];
                let (node_key, padding) = match rest.get(..32) {
                    Some(k) => {
                        let mut key = [0u8; 32];
                        key.copy_from_slice(k);
                        (Some(NodePublicKey(key)), rest.len() - 32)
                    }
                    None => (None, 0),
                };
                Ok(Message::Ping {
                    tx_id,
                    node_key,
                    padding,
                })
            }
            TYPE_PONG => {
                if payload.len() < PONG_LEN {
                    return Err(short());
                }
                let mut tx_id = [0u8; 12];
                tx_id.copy_from_slice(&payload[..12]);
                Ok(Message::Pong {
                    tx_id,
                    src: get_endpoint(&payload[12..PONG_LEN]),
                })
            }
            TYPE_CALL_ME_MAYBE => {
                let endpoints = if *version != VERSION
                    || payload.is_empty()
                    || payload.len() % ENDPOINT_LEN != 0
                {
                    Vec::new()
                } else {
                    payload
                        .chunks_exact(ENDPOINT_LEN)
                        .map(get_endpoint)
                        .collect()
                };
                Ok(Message::CallMeMaybe { endpoints })
            }
            other => Err(DiscoError::UnsupportedType(other)),
        }
    }
}

/// A whole disco packet from `me` to the peer whose shared key is `shared`,
/// sealed with `nonce` (which must be fresh: [`random_nonce`]).
pub fn seal(me: &DiscoPublicKey, shared: &DiscoShared, nonce: &[u8; 24], msg: &Message) -> Vec<u8> {
    let boxed = shared.seal(nonce, &msg.encode());
    let mut out = Vec::with_capacity(HEADER_LEN + boxed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(me.as_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&boxed);
    out
}

/// [`seal`] with a fresh random nonce and the shared key computed here.
pub fn seal_to(me: &DiscoPrivateKey, peer: &DiscoPublicKey, msg: &Message) -> Vec<u8> {
    seal(&me.public(), &me.shared(peer), &random_nonce(), msg)
}

/// A random 24-byte nonce.
pub fn random_nonce() -> [u8; 24] {
    let mut n = [0u8; 24];
    rand::fill(&mut n);
    n
}

/// Opens a disco packet with the shared key of its sender (look the sender
/// up with [`sender`] first; drop packets from unknown senders unopened).
pub fn open(shared: &DiscoShared, packet: &[u8]) -> Result<Message, DiscoError> {
    if packet.len() > MAX_LEN {
        return Err(DiscoError::TooLarge(packet.len()));
    }
    if packet.len() < HEADER_LEN || !packet.starts_with(&MAGIC) {
        return Err(DiscoError::NotDisco);
    }
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&packet[38..HEADER_LEN]);
    let plain = shared
        .open(&nonce, &packet[HEADER_LEN..])
        .ok_or(DiscoError::Unauthentic)?;
    Message::decode(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ping_is_124_bytes_and_opens() {
        let (a, b) = (DiscoPrivateKey::generate(), DiscoPrivateKey::generate());
        let msg = Message::Ping {
            tx_id: [3; 12],
            node_key: Some(NodePublicKey([4; 32])),
            padding: 0,
        };
        let pkt = seal_to(&a, &b.public(), &msg);
        assert_eq!(pkt.len(), 124);
        assert!(looks_like_disco(&pkt));
        assert_eq!(sender(&pkt), Ok(a.public()));
        assert_eq!(open(&b.shared(&a.public()), &pkt), Ok(msg));
        // Another receiver, a flipped bit, a truncation: refused.
        let c = DiscoPrivateKey::generate();
        assert_eq!(
            open(&c.shared(&a.public()), &pkt),
            Err(DiscoError::Unauthentic)
        );
        let mut bad = pkt.clone();
        bad[100] ^= 1;
        assert_eq!(
            open(&b.shared(&a.public()), &bad),
            Err(DiscoError::Unauthentic)
        );
        assert_eq!(
            open(&b.shared(&a.public()), &pkt[..40]),
            Err(DiscoError::NotDisco)
        );
    }

    #[test]
    fn pong_bytes() {
        let msg = Message::Pong {
            tx_id: [1; 12],
            src: "192.0.2.7:41641".parse().unwrap(),
        };
        let enc = msg.encode();
        assert_eq!(enc.len(), 2 + 30);
        assert_eq!(&enc[..2], &[2, 0]);
        // v4-mapped address, big-endian port.
        assert_eq!(
            &enc[14..30],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]
        );
        assert_eq!(&enc[30..], &41641u16.to_be_bytes());
        assert_eq!(Message::decode(&enc), Ok(msg));
    }

    #[test]
    fn lenient_like_tailscale() {
        // A ping without node key (old clients), trailing bytes on a pong.
        let mut old = vec![1, 0];
        old.extend_from_slice(&[5; 12]);
        assert_eq!(
            Message::decode(&old),
            Ok(Message::Ping {
                tx_id: [5; 12],
                node_key: None,
                padding: 0
            })
        );
        let mut pong = Message::Pong {
            tx_id: [0; 12],
            src: "[2001:db8::1]:7".parse().unwrap(),
        }
        .encode();
        pong.extend_from_slice(b"extra");
        assert!(matches!(Message::decode(&pong), Ok(Message::Pong { .. })));
        // CallMeMaybe: odd length or another version => no endpoints.
        assert_eq!(
            Message::decode(&[3, 0, 1, 2, 3]),
            Ok(Message::CallMeMaybe { endpoints: vec![] })
        );
        assert_eq!(
            Message::decode(&[3, 1]),
            Ok(Message::CallMeMaybe { endpoints: vec![] })
        );
        assert_eq!(
            Message::decode(&[2, 0, 1]),
            Err(DiscoError::Short { ty: 2, len: 1 })
        );
        assert_eq!(
            Message::decode(&[7, 0]),
            Err(DiscoError::UnsupportedType(7))
        );
        assert_eq!(Message::decode(&[1]), Err(DiscoError::Empty));
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).to_canonical(), p)),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<[u8; 12]>(),
                proptest::option::of(any::<[u8; 32]>()),
                0usize..64
            )
                .prop_map(|(tx_id, k, padding)| Message::Ping {
                    tx_id,
                    padding: if k.is_some() { padding } else { 0 },
                    node_key: k.map(NodePublicKey),
                }),
            (any::<[u8; 12]>(), addr()).prop_map(|(tx_id, src)| Message::Pong { tx_id, src }),
            proptest::collection::vec(addr(), 1..8)
                .prop_map(|endpoints| Message::CallMeMaybe { endpoints }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(msg in message(), nonce in any::<[u8; 24]>()) {
            let (a, b) = (DiscoPrivateKey::from_bytes([1; 32]), DiscoPrivateKey::from_bytes([2; 32]));
            let pkt = seal(&a.public(), &a.shared(&b.public()), &nonce, &msg);
            prop_assert_eq!(open(&b.shared(&a.public()), &pkt), Ok(msg));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
            let shared = DiscoPrivateKey::from_bytes([1; 32]).shared(&DiscoPublicKey([2; 32]));
            let _ = open(&shared, &bytes);
        }
    }
}
