//! The sans-IO handshake and records: sizes and headers as Tailscale's
//! `controlbase` lays them out, both halves agreeing, and every kind of
//! bad input refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use gatehouse_ts2021::upgrade::{HeaderError, decode_handshake_header, encode_handshake_header};
use gatehouse_ts2021::{
    ClientHandshake, HandshakeError, MAX_PLAINTEXT_LEN, MAX_RECORD_LEN, MIN_CAPABILITY_VERSION,
    MachinePrivateKey, RecordError, Reply, Transport, error_message, reply_header, respond,
};

const VERSION: u16 = 142;

struct Session {
    client: Transport,
    server: Transport,
}

fn handshake(
    version: u16,
) -> (
    ClientHandshake,
    [u8; 101],
    MachinePrivateKey,
    MachinePrivateKey,
) {
    let (server, client) = (MachinePrivateKey::generate(), MachinePrivateKey::generate());
    let (hs, init) = ClientHandshake::new(
        &client,
        server.public(),
        version,
        MachinePrivateKey::generate(),
    )
    .unwrap();
    (hs, init, server, client)
}

fn session() -> Session {
    let (hs, init, server, _) = handshake(VERSION);
    let accepted = respond(&init, &server, &MachinePrivateKey::generate()).unwrap();
    Session {
        client: hs.finish(&accepted.response).unwrap(),
        server: accepted.transport,
    }
}

#[test]
fn messages_have_controlbase_sizes_and_headers() {
    let (hs, init, server, client) = handshake(VERSION);
    assert_eq!(init.len(), 101);
    assert_eq!(
        &init[..5],
        &[0, 142, 1, 0, 96],
        "version, type 1, length 96"
    );
    let accepted = respond(&init, &server, &MachinePrivateKey::generate()).unwrap();
    assert_eq!(accepted.response.len(), 51);
    assert_eq!(&accepted.response[..3], &[2, 0, 48], "type 2, length 48");
    assert_eq!(accepted.client.machine_key, client.public());
    assert_eq!(accepted.client.version, VERSION);
    assert_eq!(reply_header([2, 0, 48]).unwrap(), Reply::Response);
    let client_transport = hs.finish(&accepted.response).unwrap();
    assert_eq!(
        client_transport.handshake_hash(),
        accepted.transport.handshake_hash()
    );
}

#[test]
fn the_machine_key_travels_sealed() {
    let (_, init, _, client) = handshake(VERSION);
    let key = client.public();
    assert!(
        !init.windows(32).any(|w| w == key.as_bytes()),
        "the client's static key must not appear in clear"
    );
}

#[test]
fn both_directions_carry_records() {
    let mut s = session();
    let mut wire = BytesMut::new();
    s.client.seal(b"client to server", &mut wire).unwrap();
    s.client.seal(b"again", &mut wire).unwrap();
    assert_eq!(
        &s.server.open(&mut wire).unwrap().unwrap()[..],
        b"client to server"
    );
    assert_eq!(&s.server.open(&mut wire).unwrap().unwrap()[..], b"again");
    assert!(s.server.open(&mut wire).unwrap().is_none());
    s.server.seal(b"server to client", &mut wire).unwrap();
    assert_eq!(
        &s.client.open(&mut wire).unwrap().unwrap()[..],
        b"server to client"
    );
}

#[test]
fn sessions_do_not_share_keys() {
    let (mut a, mut b) = (session(), session());
    assert_ne!(a.client.handshake_hash(), b.client.handshake_hash());
    let mut wire = BytesMut::new();
    a.client.seal(b"for a", &mut wire).unwrap();
    assert!(matches!(
        b.server.open(&mut wire),
        Err(RecordError::Decrypt(_))
    ));
    // Nor does a direction open its own records.
    a.client.seal(b"for a", &mut wire).unwrap();
    assert!(matches!(
        a.client.open(&mut wire),
        Err(RecordError::Decrypt(_))
    ));
}

#[test]
fn every_flipped_bit_of_the_initiation_is_refused() {
    let (_, init, server, _) = handshake(VERSION);
    let eph = MachinePrivateKey::generate();
    assert!(respond(&init, &server, &eph).is_ok());
    for i in 0..init.len() {
        for bit in 0..8 {
            let mut bad = init;
            bad[i] ^= 1 << bit;
            assert!(respond(&bad, &server, &eph).is_err(), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn every_flipped_bit_of_the_response_is_refused() {
    let (_, init, server, client) = handshake(VERSION);
    let accepted = respond(&init, &server, &MachinePrivateKey::generate()).unwrap();
    for i in 0..accepted.response.len() {
        for bit in 0..8 {
            // A handshake state is used once: make it again with the same
            // ephemeral key so the same response applies.
            let eph = [7u8; 32];
            let (hs, init) = ClientHandshake::new(
                &client,
                server.public(),
                VERSION,
                MachinePrivateKey::from_bytes(eph),
            )
            .unwrap();
            let server_eph = MachinePrivateKey::from_bytes([8; 32]);
            let mut bad = respond(&init, &server, &server_eph).unwrap().response;
            bad[i] ^= 1 << bit;
            assert!(hs.finish(&bad).is_err(), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn a_handshake_for_another_server_is_refused() {
    let (_, init, _, _) = handshake(VERSION);
    let stranger = MachinePrivateKey::generate();
    let err = respond(&init, &stranger, &MachinePrivateKey::generate()).unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Decrypt {
                step: "machine key",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.client_message(),
        None,
        "authentication failures are silent"
    );
}

#[test]
fn old_capability_versions_are_refused_with_a_message() {
    let (_, init, server, _) = handshake(MIN_CAPABILITY_VERSION - 1);
    let err = respond(&init, &server, &MachinePrivateKey::generate()).unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::UnsupportedVersion {
                version: 112,
                min: 113
            }
        ),
        "{err}"
    );
    assert_eq!(err.client_message(), Some("unsupported client version"));
    let (_, init, server, _) = handshake(MIN_CAPABILITY_VERSION);
    assert!(respond(&init, &server, &MachinePrivateKey::generate()).is_ok());
}

#[test]
fn malformed_initiations_are_refused_with_a_message() {
    let (_, init, server, _) = handshake(VERSION);
    let eph = MachinePrivateKey::generate();
    let check = |bad: &[u8], want: &str| {
        let err = respond(bad, &server, &eph).unwrap_err();
        assert!(err.client_message().is_some(), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    };
    check(&init[..100], "100 bytes");
    check(&[init.as_slice(), &[0]].concat(), "102 bytes");
    check(&[], "0 bytes");
    let mut t = init;
    t[2] = 4;
    check(&t, "type 4");
    let mut l = init;
    l[4] = 95;
    check(&l, "95 payload bytes");
}

#[test]
fn low_order_keys_are_refused() {
    let (_, mut init, server, _) = handshake(VERSION);
    init[5..37].fill(0);
    let err = respond(&init, &server, &MachinePrivateKey::generate()).unwrap_err();
    assert!(
        matches!(err, HandshakeError::LowOrderKey { step: "es" }),
        "{err}"
    );
    let zero = gatehouse_ts2021::MachinePublicKey([0; 32]);
    let err = ClientHandshake::new(
        &MachinePrivateKey::generate(),
        zero,
        VERSION,
        MachinePrivateKey::generate(),
    )
    .unwrap_err();
    assert!(matches!(err, HandshakeError::LowOrderKey { .. }), "{err}");
}

#[test]
fn reply_headers() {
    let msg = error_message("no");
    assert_eq!(msg, [3, 0, 2, b'n', b'o']);
    assert_eq!(reply_header([3, 0, 2]).unwrap(), Reply::Error { len: 2 });
    assert!(matches!(
        reply_header([2, 0, 47]),
        Err(HandshakeError::ResponseLength { declared: 47 })
    ));
    assert!(matches!(
        reply_header([4, 0, 48]),
        Err(HandshakeError::MessageType { got: 4, want: 2 })
    ));
    let long = "x".repeat(70_000);
    assert_eq!(error_message(&long).len(), 3 + 65_535);
    let (hs, _, _, _) = handshake(VERSION);
    assert!(matches!(
        hs.finish(&[3, 0, 48, 0, 0]),
        Err(HandshakeError::ResponseSize { len: 5 })
    ));
}

#[test]
fn records_are_split_at_the_maximum() {
    let mut s = session();
    let mut wire = BytesMut::new();
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    s.server.seal(&data, &mut wire).unwrap();
    assert_eq!(wire.len(), 3 * (3 + 16) + 10_000);
    assert_eq!(&wire[..3], &[4, 0x0f, 0xfd], "a full record is 4,096 bytes");
    let mut got = Vec::new();
    while let Some(p) = s.client.open(&mut wire).unwrap() {
        assert!(p.len() <= MAX_PLAINTEXT_LEN);
        got.extend_from_slice(&p);
    }
    assert_eq!(got, data);
    let mut out = BytesMut::new();
    assert!(matches!(
        s.server
            .seal_record(&data[..MAX_PLAINTEXT_LEN + 1], &mut out),
        Err(RecordError::TooLarge { len: 4097 })
    ));
    s.server.seal(b"", &mut out).unwrap();
    assert!(out.is_empty(), "no record for nothing");
}

#[test]
fn empty_records_open_to_nothing() {
    let mut s = session();
    let mut wire = BytesMut::new();
    s.client.seal_record(b"", &mut wire).unwrap();
    assert_eq!(&wire[..3], &[4, 0, 16]);
    assert_eq!(s.server.open(&mut wire).unwrap().unwrap().len(), 0);
}

#[test]
fn oversize_records_are_refused_from_the_header() {
    let mut s = session();
    // 3 + 4,094 > 4,096: refused before the body arrives.
    let mut wire = BytesMut::from(&[4u8, 0x0f, 0xfe][..]);
    assert!(matches!(
        s.server.open(&mut wire),
        Err(RecordError::TooLarge { len: 4097 })
    ));
    assert!(matches!(s.server.open(&mut wire), Err(RecordError::Dead)));
    // Exactly the maximum only waits for the rest.
    let mut s = session();
    let mut wire = BytesMut::from(&[4u8, 0x0f, 0xfd][..]);
    assert!(s.server.open(&mut wire).unwrap().is_none());
    assert_eq!(MAX_RECORD_LEN, 4096);
}

#[test]
fn wrong_types_short_records_reordering_and_replays_are_refused() {
    let mut s = session();
    let mut wire = BytesMut::new();
    s.client.seal(b"x", &mut wire).unwrap();
    wire[0] = 3;
    assert!(matches!(
        s.server.open(&mut wire),
        Err(RecordError::Type { got: 3 })
    ));

    let mut s = session();
    let mut wire = BytesMut::from(&[4u8, 0, 15][..]);
    wire.extend_from_slice(&[0; 15]);
    assert!(matches!(
        s.server.open(&mut wire),
        Err(RecordError::Decrypt(_))
    ));

    let mut s = session();
    let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
    s.client.seal(b"first", &mut a).unwrap();
    s.client.seal(b"second", &mut b).unwrap();
    assert!(matches!(
        s.server.open(&mut b),
        Err(RecordError::Decrypt(_))
    ));

    let mut s = session();
    let mut a = BytesMut::new();
    s.client.seal(b"once", &mut a).unwrap();
    let mut replay = a.clone();
    assert!(s.server.open(&mut a).unwrap().is_some());
    assert!(matches!(
        s.server.open(&mut replay),
        Err(RecordError::Decrypt(_))
    ));
}

#[test]
fn handshake_header_decoding() {
    let (_, init, _, _) = handshake(VERSION);
    let text = encode_handshake_header(&init);
    assert_eq!(decode_handshake_header(text.as_bytes()).unwrap(), init);
    assert!(matches!(
        decode_handshake_header(b""),
        Err(HeaderError::Missing)
    ));
    assert!(matches!(
        decode_handshake_header(&[b'A'; 2000]),
        Err(HeaderError::TooLong { len: 2000 })
    ));
    let err = decode_handshake_header(b"not*base64").unwrap_err();
    assert!(matches!(err, HeaderError::Base64(_)));
    assert!(std::error::Error::source(&err).is_some(), "keeps its cause");
    assert!(gatehouse_ts2021::upgrade::is_upgrade_protocol(
        b"Tailscale-Control-Protocol"
    ));
    assert!(!gatehouse_ts2021::upgrade::is_upgrade_protocol(
        b"websocket"
    ));
}
