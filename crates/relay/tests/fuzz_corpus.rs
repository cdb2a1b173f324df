//! Replays the committed fuzz corpus of the DERP decoder
//! (`fuzz/corpus/derp_frame`) through the checks of the fuzz target, so
//! every `cargo test` runs them. `GATEHOUSE_WRITE_CORPUS=1` (re)writes the
//! seed inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use gatehouse_relay::NodePublicKey;
use gatehouse_relay::frame::{self, Frame, PeerGoneReason};
use gatehouse_relay::fuzzing::{SERVER_KEY, derp_stream};
use gatehouse_relay::handshake::{self, PrivateKey};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/derp_frame")
}

fn frames(fs: &[Frame]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for f in fs {
        frame::encode(f, &mut b);
    }
    b.to_vec()
}

fn write_seeds() {
    let server = PrivateKey::from_bytes(SERVER_KEY);
    let client = PrivateKey::from_bytes([4; 32]);
    let ci =
        handshake::client_info_frame(&client, &server.public(), &handshake::default_client_info());
    let k = NodePublicKey([5; 32]);
    let send = |p: &'static [u8]| Frame::SendPacket {
        dst: k,
        packet: Bytes::from_static(p),
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "handshake-then-traffic",
            frames(&[
                ci.clone(),
                Frame::NotePreferred(true),
                send(b"\x01\0\0\0wireguard"),
                send(b"TS\xf0\x9f\x92\xacdisco-looking"),
                Frame::Ping([1; 8]),
            ]),
        ),
        ("handshake-only", frames(std::slice::from_ref(&ci))),
        (
            "client-info-wrong-key",
            frames(&[Frame::ClientInfo {
                key: k,
                nonce: [0; 24],
                sealed: Bytes::from_static(&[0; 40]),
            }]),
        ),
        (
            "server-frames",
            frames(&[
                Frame::ServerKey { key: k },
                Frame::RecvPacket {
                    src: k,
                    packet: Bytes::from_static(b"x"),
                },
                Frame::PeerGone {
                    key: k,
                    reason: PeerGoneReason::NotHere,
                },
                Frame::Health("degraded".into()),
                Frame::Restarting {
                    reconnect_in: Duration::from_millis(500),
                    try_for: Duration::from_secs(60),
                },
                Frame::KeepAlive,
            ]),
        ),
        (
            "truncated",
            frames(&[ci.clone(), send(b"abcdef")])[..150].to_vec(),
        ),
        (
            "short-send-packet",
            [
                frames(std::slice::from_ref(&ci)),
                vec![4, 0, 0, 0, 3, 1, 2, 3],
            ]
            .concat(),
        ),
        ("huge-length", vec![4, 0xff, 0xff, 0xff, 0xff]),
        (
            "mesh-and-unknown",
            [
                frames(std::slice::from_ref(&ci)),
                vec![0x10, 0, 0, 0, 0, 0x77, 0, 0, 0, 1, 9],
            ]
            .concat(),
        ),
        (
            "bad-note-preferred",
            [frames(std::slice::from_ref(&ci)), vec![7, 0, 0, 0, 2, 1, 1]].concat(),
        ),
        (
            "client-info-json",
            br#"{"version":2,"CanAckPings":true,"meshKey":"00"}"#.to_vec(),
        ),
        ("empty", vec![]),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir().join(name), bytes).unwrap();
    }
}

#[test]
fn derp_frame_corpus() {
    if std::env::var_os("GATEHOUSE_WRITE_CORPUS").is_some() {
        write_seeds();
    }
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let (mut decoded, mut errors, mut opened) = (0, 0, 0);
    for f in files {
        let (n, err, ok) = derp_stream(&std::fs::read(&f).unwrap());
        decoded += n;
        errors += usize::from(err);
        opened += usize::from(ok);
    }
    assert!(
        decoded > 0 && errors > 0 && opened > 0,
        "the corpus should hold valid and invalid input"
    );
}
