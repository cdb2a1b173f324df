//! The body of the fuzz target `ts2021_record` (`fuzz/fuzz_targets/`),
//! here so that `cargo test` replays the committed corpus through the same
//! checks. Every key is fixed, so the session's keys are too and a corpus
//! can hold records that open.

use crate::early::{EarlyPayload, parse_early_payload};
use crate::handshake::{ClientHandshake, initiation_version, respond};
use crate::keys::MachinePrivateKey;
use crate::transport::Transport;
use crate::upgrade::decode_handshake_header;
use bytes::BytesMut;

/// The server's static key.
pub const SERVER_KEY: [u8; 32] = [1; 32];
/// The client's machine key.
pub const CLIENT_KEY: [u8; 32] = [2; 32];
/// The server's ephemeral key.
pub const SERVER_EPHEMERAL: [u8; 32] = [3; 32];
/// The client's ephemeral key.
pub const CLIENT_EPHEMERAL: [u8; 32] = [4; 32];
/// The capability version of the fixed session.
pub const VERSION: u16 = 130;

/// The fixed session: the initiation and both ends' transports (client,
/// server).
pub fn session() -> Option<([u8; 101], Transport, Transport)> {
    let server = MachinePrivateKey::from_bytes(SERVER_KEY);
    let (client, init) = ClientHandshake::new(
        &MachinePrivateKey::from_bytes(CLIENT_KEY),
        server.public(),
        VERSION,
        MachinePrivateKey::from_bytes(CLIENT_EPHEMERAL),
    )
    .ok()?;
    let accepted = respond(
        &init,
        &server,
        &MachinePrivateKey::from_bytes(SERVER_EPHEMERAL),
    )
    .ok()?;
    let client = client.finish(&accepted.response).ok()?;
    Some((init, client, accepted.transport))
}

/// Any bytes as an initiation (raw, and as the upgrade header's text) at
/// the fixed server: no panic; an accepted one has a well-formed header
/// and names the client's static key. Returns whether it was accepted.
pub fn initiation(data: &[u8]) -> bool {
    let server = MachinePrivateKey::from_bytes(SERVER_KEY);
    let ephemeral = MachinePrivateKey::from_bytes(SERVER_EPHEMERAL);
    if let Ok(init) = decode_handshake_header(data) {
        let _ = respond(&init, &server, &ephemeral);
    }
    match respond(data, &server, &ephemeral) {
        Ok(accepted) => {
            assert_eq!(initiation_version(data).ok(), Some(accepted.client.version));
            true
        }
        Err(_) => false,
    }
}

/// Any bytes as records from the fixed server to the fixed client: no
/// panic; once a record is refused nothing more opens; the plaintext goes
/// through the early-payload parser. Returns how many records opened.
pub fn records(data: &[u8]) -> usize {
    let Some((_, mut client, mut server)) = session() else {
        return 0;
    };
    let mut buf = BytesMut::from(data);
    let mut plain = Vec::new();
    let mut opened = 0;
    loop {
        match client.open(&mut buf) {
            Ok(Some(p)) => {
                opened += 1;
                plain.extend_from_slice(&p);
            }
            Ok(None) => break,
            Err(_) => {
                assert!(client.open(&mut BytesMut::from(data)).is_err());
                break;
            }
        }
    }
    if let Ok(EarlyPayload::Present { len }) = parse_early_payload(&plain) {
        assert!(plain.len() >= 9 + len);
    }
    // The other direction's key opens none of them.
    assert!(!matches!(
        server.open(&mut BytesMut::from(data)),
        Ok(Some(_))
    ));
    opened
}
