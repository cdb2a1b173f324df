//! Replays the committed fuzz corpus of the disco and STUN decoders
//! (`fuzz/corpus/disco_packet`, `fuzz/corpus/stun`) through the checks of
//! the fuzz targets, so every `cargo test` runs them.
//! `GATEHOUSE_WRITE_CORPUS=1` (re)writes the seed inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_disco::disco::{self, Message};
use gatehouse_disco::fuzzing::{RECEIVER_KEY, SENDER_KEY, disco_packet, stun_message};
use gatehouse_disco::{DiscoPrivateKey, NodePublicKey, stun};
use std::path::{Path, PathBuf};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name)
}

fn write_seeds() {
    let (me, from) = (
        DiscoPrivateKey::from_bytes(RECEIVER_KEY),
        DiscoPrivateKey::from_bytes(SENDER_KEY),
    );
    let shared = from.shared(&me.public());
    let seal = |m: &Message| disco::seal(&from.public(), &shared, &[6; 24], m);
    let ping = Message::Ping {
        tx_id: [1; 12],
        node_key: Some(NodePublicKey([2; 32])),
        padding: 0,
    };
    let pong = Message::Pong {
        tx_id: [1; 12],
        src: "192.0.2.7:41641".parse().unwrap(),
    };
    let cmm = Message::CallMeMaybe {
        endpoints: vec![
            "198.51.100.1:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
        ],
    };
    let mut tampered = seal(&ping);
    tampered[80] ^= 1;
    let stranger = disco::seal_to(&DiscoPrivateKey::from_bytes([9; 32]), &me.public(), &ping);
    let disco_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("ping", seal(&ping)),
        ("pong", seal(&pong)),
        ("call-me-maybe", seal(&cmm)),
        (
            "ping-padded",
            seal(&Message::Ping {
                tx_id: [3; 12],
                node_key: Some(NodePublicKey([4; 32])),
                padding: 100,
            }),
        ),
        ("tampered", tampered),
        ("unknown-sender", stranger),
        ("header-only", seal(&ping)[..62].to_vec()),
        ("plain-ping", ping.encode()),
        ("plain-pong-short", vec![2, 0, 1, 2, 3]),
        ("plain-cmm-odd", vec![3, 0, 1, 2, 3, 4]),
        ("plain-relay-type", vec![4, 0]),
        ("wireguard", vec![1, 0, 0, 0, 9, 9, 9, 9]),
    ];
    for (name, b) in disco_seeds {
        std::fs::write(dir("disco_packet").join(name), b).unwrap();
    }
    let req = stun::binding_request(&[7; 12]);
    let mut bad_fp = req.clone();
    bad_fp[39] ^= 0xff;
    let mut plain = req[..20].to_vec();
    plain[3] = 0;
    let stun_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("request", req.clone()),
        ("request-no-attributes", plain),
        ("request-bad-fingerprint", bad_fp),
        ("request-truncated", req[..30].to_vec()),
        (
            "response-v4",
            stun::binding_response(&[7; 12], "192.0.2.1:32853".parse().unwrap()),
        ),
        (
            "response-v6",
            stun::binding_response(&[7; 12], "[2001:db8::1]:3478".parse().unwrap()),
        ),
        ("response-mapped-address", {
            let mut r = vec![1, 1, 0, 12, 0x21, 0x12, 0xa4, 0x42];
            r.extend_from_slice(&[7; 12]);
            r.extend_from_slice(&[0, 1, 0, 8, 0, 1, 0x12, 0x34, 198, 51, 100, 9]);
            r
        }),
        ("attribute-overrun", {
            let mut r = req[..20].to_vec();
            r[3] = 8;
            r.extend_from_slice(&[0x80, 0x22, 0x00, 0x40, 1, 2, 3, 4]);
            r
        }),
        ("wrong-cookie", {
            let mut r = req.clone();
            r[4] = 0;
            r
        }),
        ("empty", vec![]),
    ];
    for (name, b) in stun_seeds {
        std::fs::write(dir("stun").join(name), b).unwrap();
    }
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    if std::env::var_os("GATEHOUSE_WRITE_CORPUS").is_some() {
        write_seeds();
    }
    let mut files: Vec<_> = std::fs::read_dir(dir(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus {name}");
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn disco_packet_corpus() {
    let opened = corpus("disco_packet")
        .iter()
        .filter(|b| disco_packet(b))
        .count();
    let total = corpus("disco_packet").len();
    assert!(
        opened > 0 && opened < total,
        "the corpus should hold packets that open and ones that do not"
    );
}

#[test]
fn stun_corpus() {
    let parsed = corpus("stun").iter().filter(|b| stun_message(b)).count();
    let total = corpus("stun").len();
    assert!(
        parsed > 0 && parsed < total,
        "the corpus should hold valid and invalid messages"
    );
}
