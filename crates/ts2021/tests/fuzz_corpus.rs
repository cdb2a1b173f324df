//! Replays the committed fuzz corpus of the initiation and record decoders
//! (`fuzz/corpus/ts2021_record`) through the checks of the fuzz target, so
//! every `cargo test` runs them. `GATEHOUSE_WRITE_CORPUS=1` (re)writes the
//! seed inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use gatehouse_ts2021::fuzzing::{
    CLIENT_EPHEMERAL, CLIENT_KEY, SERVER_KEY, initiation, records, session,
};
use gatehouse_ts2021::upgrade::encode_handshake_header;
use gatehouse_ts2021::{ClientHandshake, MachinePrivateKey, encode_early_payload};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ts2021_record")
}

fn write_seeds() {
    let (init, _, mut server) = session().unwrap();
    let old = ClientHandshake::new(
        &MachinePrivateKey::from_bytes(CLIENT_KEY),
        MachinePrivateKey::from_bytes(SERVER_KEY).public(),
        100,
        MachinePrivateKey::from_bytes(CLIENT_EPHEMERAL),
    )
    .unwrap()
    .1;
    let mut tampered = init;
    tampered[50] ^= 1;
    let mut wrong_type = init;
    wrong_type[2] = 2;

    let seal = |server: &mut gatehouse_ts2021::Transport, parts: &[&[u8]]| {
        let mut out = BytesMut::new();
        for p in parts {
            server.seal_record(p, &mut out).unwrap();
        }
        out.to_vec()
    };
    let early = encode_early_payload(br#"{"nodeKeyChallenge":"chalpub:00"}"#).unwrap();
    // Each sequence of records starts at nonce 0: a new session each.
    let two = seal(&mut session().unwrap().2, &[b"hello", b"world"]);
    let with_early = seal(
        &mut server,
        &[&early, b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"],
    );
    let empty = seal(&mut session().unwrap().2, &[b"", b"after an empty record"]);
    let mut bad_tag = two.clone();
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 1;
    let mut big = BytesMut::new();
    session()
        .unwrap()
        .2
        .seal(&vec![7u8; 9000], &mut big)
        .unwrap();

    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("init", init.to_vec()),
        ("init-base64", encode_handshake_header(&init).into_bytes()),
        ("init-old-version", old.to_vec()),
        ("init-tampered", tampered.to_vec()),
        ("init-wrong-type", wrong_type.to_vec()),
        ("init-short", init[..60].to_vec()),
        ("records-two", two.clone()),
        ("records-early-payload", with_early),
        ("records-empty-first", empty),
        ("records-split", big.to_vec()),
        ("records-bad-tag", bad_tag),
        ("records-truncated", two[..30].to_vec()),
        ("record-oversize", vec![4, 0x0f, 0xfe, 1, 2, 3]),
        ("record-wrong-type", vec![3, 0, 2, b'n', b'o']),
        ("record-short", vec![4, 0, 3, 1, 2, 3]),
        ("empty", vec![]),
    ];
    std::fs::create_dir_all(dir()).unwrap();
    for (name, b) in seeds {
        std::fs::write(dir().join(name), b).unwrap();
    }
}

fn corpus() -> Vec<Vec<u8>> {
    if std::env::var_os("GATEHOUSE_WRITE_CORPUS").is_some() {
        write_seeds();
    }
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus");
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn ts2021_record_corpus() {
    let inputs = corpus();
    let accepted = inputs.iter().filter(|b| initiation(b)).count();
    let opened: Vec<usize> = inputs.iter().map(|b| records(b)).collect();
    assert!(
        accepted > 0 && accepted < inputs.len(),
        "the corpus should hold initiations accepted and refused"
    );
    assert!(
        opened.iter().any(|&n| n >= 2) && opened.contains(&0),
        "the corpus should hold records that open and ones that do not"
    );
}
