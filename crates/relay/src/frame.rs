//! DERP frames: `type(1) || length u32be || payload(length)`. Decoding is
//! incremental over a byte buffer (the stream may split or merge frames
//! anywhere); encoding appends to a buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gatehouse_disco::NodePublicKey;
use std::time::Duration;

/// `"DERP🔑"`: the first eight bytes of the ServerKey frame.
pub const MAGIC: [u8; 8] = *b"DERP\xf0\x9f\x94\x91";
/// Type and length.
pub const HEADER_LEN: usize = 5;
/// Largest packet a client may send or receive.
pub const MAX_PACKET: usize = 64 << 10;
/// The protocol version spoken (RecvPacket carries the source key).
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame after the handshake: a SendPacket of a full packet.
pub const MAX_FRAME: usize = 32 + MAX_PACKET;
/// Largest ClientInfo accepted (Tailscale's clients send about 130 bytes).
pub const MAX_CLIENT_INFO: usize = 16 << 10;
/// Largest ServerKey or ServerInfo a client accepts.
pub const MAX_SERVER_HANDSHAKE: usize = 1 << 20;
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

/// Frame type bytes.
pub mod kind {
    /// Server → client: magic and the server's public key.
    pub const SERVER_KEY: u8 = 0x01;
    /// Client → server: its key, a nonce and a sealed JSON.
    pub const CLIENT_INFO: u8 = 0x02;
    /// Server → client: a nonce and a sealed JSON.
    pub const SERVER_INFO: u8 = 0x03;
    /// Client → server: destination key and packet.
    pub const SEND_PACKET: u8 = 0x04;
    /// Server → client: source key and packet.
    pub const RECV_PACKET: u8 = 0x05;
    /// Server → client: nothing (keeps the connection's read deadline).
    pub const KEEP_ALIVE: u8 = 0x06;
    /// Client → server: whether this relay is the client's home.
    pub const NOTE_PREFERRED: u8 = 0x07;
    /// Server → client: a peer left, or is not here.
    pub const PEER_GONE: u8 = 0x08;
    /// Server → mesh peer (not served).
    pub const PEER_PRESENT: u8 = 0x09;
    /// Mesh peer → server (not served).
    pub const FORWARD_PACKET: u8 = 0x0a;
    /// Mesh peer → server (not served).
    pub const WATCH_CONNS: u8 = 0x10;
    /// Mesh peer → server (not served).
    pub const CLOSE_PEER: u8 = 0x11;
    /// Either way: eight bytes to echo.
    pub const PING: u8 = 0x12;
    /// The echo of a Ping.
    pub const PONG: u8 = 0x13;
    /// Server → client: a problem, or empty when healthy again.
    pub const HEALTH: u8 = 0x14;
    /// Server → client: the server restarts; reconnect in, try for.
    pub const RESTARTING: u8 = 0x15;
}

/// Why a PeerGone was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerGoneReason {
    /// The peer was here and left.
    Disconnected,
    /// The relay does not know the destination of a packet sent to it.
    NotHere,
    /// Another reason byte (newer servers).
    Other(u8),
}

impl PeerGoneReason {
    fn byte(self) -> u8 {
        match self {
            PeerGoneReason::Disconnected => 0x00,
            PeerGoneReason::NotHere => 0x01,
            PeerGoneReason::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            0x00 => PeerGoneReason::Disconnected,
            0x01 => PeerGoneReason::NotHere,
            b => PeerGoneReason::Other(b),
        }
    }
}

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The server's public key (extra bytes after it are ignored).
    ServerKey {
        /// The key.
        key: NodePublicKey,
    },
    /// The client's key and its sealed information.
    ClientInfo {
        /// The client's node key.
        key: NodePublicKey,
        /// Nonce of the box.
        nonce: [u8; NONCE_LEN],
        /// `tag || ciphertext`.
        sealed: Bytes,
    },
    /// The server's sealed information.
    ServerInfo {
        /// Nonce of the box.
        nonce: [u8; NONCE_LEN],
        /// `tag || ciphertext`.
        sealed: Bytes,
    },
    /// A packet for `dst`.
    SendPacket {
        /// Destination node key.
        dst: NodePublicKey,
        /// The packet.
        packet: Bytes,
    },
    /// A packet from `src`.
    RecvPacket {
        /// Source node key.
        src: NodePublicKey,
        /// The packet.
        packet: Bytes,
    },
    /// Keeps the connection alive.
    KeepAlive,
    /// Whether the relay is the client's home.
    NotePreferred(bool),
    /// A peer is gone.
    PeerGone {
        /// The peer.
        key: NodePublicKey,
        /// Why.
        reason: PeerGoneReason,
    },
    /// Eight bytes to echo (a server reads 8 to 1000 bytes and echoes the
    /// first eight).
    Ping([u8; 8]),
    /// The echo.
    Pong([u8; 8]),
    /// A health problem; empty when healthy again.
    Health(String),
    /// The server restarts.
    Restarting {
        /// When to reconnect.
        reconnect_in: Duration,
        /// How long to keep trying.
        try_for: Duration,
    },
    /// A frame of the relay mesh (servers of one region), which this relay
    /// does not serve.
    Mesh(u8),
    /// A type this codec does not know: skipped, as Tailscale's peers do.
    Unknown(u8),
}

/// Bytes that are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length over the limit for this point of the connection.
    #[error("frame of type {ty:#04x} and {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The type.
        ty: u8,
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A payload too short or long for its type.
    #[error("frame of type {ty:#04x} has a malformed payload of {len} bytes")]
    Malformed {
        /// The type.
        ty: u8,
        /// The payload length.
        len: usize,
    },
    /// A ServerKey without the magic.
    #[error("server key frame without the DERP magic")]
    BadMagic,
}

fn key_at(b: &[u8], at: usize) -> NodePublicKey {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&b[at..at + KEY_LEN]);
    NodePublicKey(k)
}

/// Decodes the next frame from `buf`, consuming it: `Ok(None)` until a
/// whole frame is there. A length above `max` is an error as soon as the
/// header is read, so a peer cannot make us buffer more.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some(need) = needed(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < need {
        return Ok(None);
    }
    let ty = buf[0];
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(need - HEADER_LEN).freeze();
    parse(ty, payload).map(Some)
}

/// The length of the frame at the head of `buf` (header included), once
/// its header is there.
pub fn needed(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let [ty, a, b, c, d, ..] = *buf else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { ty, len, max });
    }
    Ok(Some(HEADER_LEN + len))
}

/// Parses the payload of a frame of type `ty`.
pub fn parse(ty: u8, p: Bytes) -> Result<Frame, FrameError> {
    let bad = || FrameError::Malformed { ty, len: p.len() };
    let frame = match ty {
        kind::SERVER_KEY => {
            if p.len() < 8 + KEY_LEN {
                return Err(bad());
            }
            if p[..8] != MAGIC {
                return Err(FrameError::BadMagic);
            }
            Frame::ServerKey { key: key_at(&p, 8) }
        }
        kind::CLIENT_INFO => {
            if p.len() < KEY_LEN + NONCE_LEN {
                return Err(bad());
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&p[KEY_LEN..KEY_LEN + NONCE_LEN]);
            Frame::ClientInfo {
                key: key_at(&p, 0),
                nonce,
                sealed: p.slice(KEY_LEN + NONCE_LEN..),
            }
        }
        kind::SERVER_INFO => {
            if p.len() < NONCE_LEN {
                return Err(bad());
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&p[..NONCE_LEN]);
            Frame::ServerInfo {
                nonce,
                sealed: p.slice(NONCE_LEN..),
            }
        }
        kind::SEND_PACKET | kind::RECV_PACKET => {
            if p.len() < KEY_LEN || p.len() > KEY_LEN + MAX_PACKET {
                return Err(bad());
            }
            let key = key_at(&p, 0);
            let packet = p.slice(KEY_LEN..);
            if ty == kind::SEND_PACKET {
                Frame::SendPacket { dst: key, packet }
            } else {
                Frame::RecvPacket { src: key, packet }
            }
        }
        kind::KEEP_ALIVE => Frame::KeepAlive,
        kind::NOTE_PREFERRED => match *p {
            [b] => Frame::NotePreferred(b != 0),
            _ => return Err(bad()),
        },
        kind::PEER_GONE => {
            if p.len() < KEY_LEN {
                return Err(bad());
            }
            Frame::PeerGone {
                key: key_at(&p, 0),
                // Old servers send no reason: disconnected.
                reason: PeerGoneReason::from_byte(p.get(KEY_LEN).copied().unwrap_or(0)),
            }
        }
        kind::PING | kind::PONG => {
            if p.len() < 8 || p.len() > 1000 {
                return Err(bad());
            }
            let mut d = [0u8; 8];
            d.copy_from_slice(&p[..8]);
            if ty == kind::PING {
                Frame::Ping(d)
            } else {
                Frame::Pong(d)
            }
        }
        kind::HEALTH => Frame::Health(String::from_utf8_lossy(&p).into_owned()),
        kind::RESTARTING => {
            if p.len() < 8 {
                return Err(bad());
            }
            let ms =
                |at: usize| u64::from(u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]));
            Frame::Restarting {
                reconnect_in: Duration::from_millis(ms(0)),
                try_for: Duration::from_millis(ms(4)),
            }
        }
        kind::PEER_PRESENT | kind::FORWARD_PACKET | kind::WATCH_CONNS | kind::CLOSE_PEER => {
            Frame::Mesh(ty)
        }
        other => Frame::Unknown(other),
    };
    Ok(frame)
}

fn header(out: &mut BytesMut, ty: u8, len: usize) {
    out.reserve(HEADER_LEN + len);
    out.put_u8(ty);
    // Every frame built here is far below 4 GiB.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// Appends a RecvPacket without building a [`Frame`] (the relay's hot path).
pub fn encode_recv_packet(out: &mut BytesMut, src: &NodePublicKey, packet: &[u8]) {
    header(out, kind::RECV_PACKET, KEY_LEN + packet.len());
    out.put_slice(src.as_bytes());
    out.put_slice(packet);
}

/// Appends a SendPacket without building a [`Frame`] (the client's hot path).
pub fn encode_send_packet(out: &mut BytesMut, dst: &NodePublicKey, packet: &[u8]) {
    header(out, kind::SEND_PACKET, KEY_LEN + packet.len());
    out.put_slice(dst.as_bytes());
    out.put_slice(packet);
}

/// Appends `frame`. [`Frame::Mesh`] and [`Frame::Unknown`] become empty
/// frames of their type.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::ServerKey { key } => {
            header(out, kind::SERVER_KEY, 8 + KEY_LEN);
            out.put_slice(&MAGIC);
            out.put_slice(key.as_bytes());
        }
        Frame::ClientInfo { key, nonce, sealed } => {
            header(out, kind::CLIENT_INFO, KEY_LEN + NONCE_LEN + sealed.len());
            out.put_slice(key.as_bytes());
            out.put_slice(nonce);
            out.put_slice(sealed);
        }
        Frame::ServerInfo { nonce, sealed } => {
            header(out, kind::SERVER_INFO, NONCE_LEN + sealed.len());
            out.put_slice(nonce);
            out.put_slice(sealed);
        }
        Frame::SendPacket { dst, packet } => encode_send_packet(out, dst, packet),
        Frame::RecvPacket { src, packet } => encode_recv_packet(out, src, packet),
        Frame::KeepAlive => header(out, kind::KEEP_ALIVE, 0),
        Frame::NotePreferred(p) => {
            header(out, kind::NOTE_PREFERRED, 1);
            out.put_u8(u8::from(*p));
        }
        Frame::PeerGone { key, reason } => {
            header(out, kind::PEER_GONE, KEY_LEN + 1);
            out.put_slice(key.as_bytes());
            out.put_u8(reason.byte());
        }
        Frame::Ping(d) | Frame::Pong(d) => {
            let ty = if matches!(frame, Frame::Ping(_)) {
                kind::PING
            } else {
                kind::PONG
            };
            header(out, ty, 8);
            out.put_slice(d);
        }
        Frame::Health(text) => {
            header(out, kind::HEALTH, text.len());
            out.put_slice(text.as_bytes());
        }
        Frame::Restarting {
            reconnect_in,
            try_for,
        } => {
            let ms = |d: &Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
            header(out, kind::RESTARTING, 8);
            out.put_u32(ms(reconnect_in));
            out.put_u32(ms(try_for));
        }
        Frame::Mesh(ty) | Frame::Unknown(ty) => header(out, *ty, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round(f: &Frame) -> Frame {
        let mut b = BytesMut::new();
        encode(f, &mut b);
        let got = decode(&mut b, MAX_CLIENT_INFO + MAX_FRAME)
            .unwrap()
            .unwrap();
        assert!(b.is_empty());
        got
    }

    #[test]
    fn server_key_bytes() {
        let mut b = BytesMut::new();
        encode(
            &Frame::ServerKey {
                key: NodePublicKey([7; 32]),
            },
            &mut b,
        );
        assert_eq!(&b[..5], &[1, 0, 0, 0, 40]);
        assert_eq!(&b[5..13], &[0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91]);
        // Extra bytes after the key are tolerated; a wrong magic is not.
        let mut p = b[5..].to_vec();
        p.extend_from_slice(b"future");
        assert!(matches!(
            parse(1, p.clone().into()),
            Ok(Frame::ServerKey { .. })
        ));
        p[0] = b'X';
        assert_eq!(parse(1, p.into()), Err(FrameError::BadMagic));
    }

    #[test]
    fn incremental_and_limits() {
        let mut all = BytesMut::new();
        let f1 = Frame::SendPacket {
            dst: NodePublicKey([1; 32]),
            packet: Bytes::from_static(b"hi"),
        };
        encode(&f1, &mut all);
        encode(&Frame::KeepAlive, &mut all);
        // Byte by byte: nothing until whole.
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf, MAX_FRAME).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![f1, Frame::KeepAlive]);
        // A header announcing too much is refused before the payload comes.
        let mut big = BytesMut::from(&[4u8, 0, 1, 0, 33][..]);
        assert_eq!(
            decode(&mut big, MAX_FRAME),
            Err(FrameError::TooLarge {
                ty: 4,
                len: 65569,
                max: MAX_FRAME
            })
        );
        // Payloads wrong for their type.
        for (ty, len) in [
            (4u8, 31usize),
            (7, 0),
            (7, 2),
            (0x12, 7),
            (0x12, 1001),
            (8, 31),
            (0x15, 7),
            (2, 55),
        ] {
            assert_eq!(
                parse(ty, vec![0; len].into()),
                Err(FrameError::Malformed { ty, len })
            );
        }
        assert_eq!(parse(0x12, vec![5; 1000].into()), Ok(Frame::Ping([5; 8])));
        assert_eq!(parse(0x0a, Bytes::new()), Ok(Frame::Mesh(0x0a)));
        assert_eq!(
            parse(0x42, Bytes::from_static(b"x")),
            Ok(Frame::Unknown(0x42))
        );
        assert_eq!(
            parse(8, vec![3; 32].into()),
            Ok(Frame::PeerGone {
                key: NodePublicKey([3; 32]),
                reason: PeerGoneReason::Disconnected
            })
        );
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let key = any::<[u8; 32]>().prop_map(NodePublicKey);
        let data = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
        prop_oneof![
            key.clone().prop_map(|key| Frame::ServerKey { key }),
            (key.clone(), any::<[u8; 24]>(), data.clone())
                .prop_map(|(key, nonce, sealed)| Frame::ClientInfo { key, nonce, sealed }),
            (any::<[u8; 24]>(), data.clone())
                .prop_map(|(nonce, sealed)| Frame::ServerInfo { nonce, sealed }),
            (key.clone(), data.clone()).prop_map(|(dst, packet)| Frame::SendPacket { dst, packet }),
            (key.clone(), data).prop_map(|(src, packet)| Frame::RecvPacket { src, packet }),
            Just(Frame::KeepAlive),
            any::<bool>().prop_map(Frame::NotePreferred),
            (key, 0u8..3).prop_map(|(key, r)| Frame::PeerGone {
                key,
                reason: PeerGoneReason::from_byte(r)
            }),
            any::<[u8; 8]>().prop_map(Frame::Ping),
            any::<[u8; 8]>().prop_map(Frame::Pong),
            "[a-z ]{0,40}".prop_map(Frame::Health),
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Frame::Restarting {
                reconnect_in: Duration::from_millis(a.into()),
                try_for: Duration::from_millis(b.into()),
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(f in frame()) {
            prop_assert_eq!(round(&f), f);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut b, MAX_FRAME) {}
        }
    }
}
