//! The body of the fuzz target `derp_frame` (`fuzz/fuzz_targets/`), here so
//! that `cargo test` replays the committed corpus through the same checks.

use crate::frame::{self, MAX_CLIENT_INFO};
use crate::handshake::{self, PrivateKey};
use bytes::BytesMut;

/// The relay's private key in the fuzzed handshake.
pub const SERVER_KEY: [u8; 32] = [3; 32];

/// Any bytes as what a client sends a relay: the first frame as the
/// handshake's ClientInfo, the rest as frames after it. No panic; every
/// frame decoded survives an encode and decode. Returns (frames decoded,
/// whether the stream ended in an error, whether the handshake opened).
pub fn derp_stream(data: &[u8]) -> (usize, bool, bool) {
    let server = PrivateKey::from_bytes(SERVER_KEY);
    let _ = handshake::parse_client_info(data);
    let mut buf = BytesMut::from(data);
    let opened = match frame::decode(&mut buf, MAX_CLIENT_INFO) {
        Ok(Some(f)) => handshake::open_client_info(&server, &f).is_ok(),
        Ok(None) => return (0, false, false),
        Err(_) => return (0, true, false),
    };
    let mut n = 1;
    loop {
        match frame::decode(&mut buf, frame::MAX_FRAME) {
            Ok(Some(f)) => {
                n += 1;
                let mut out = BytesMut::new();
                frame::encode(&f, &mut out);
                // Skipped kinds re-encode without their payload and decode
                // to the same kind again.
                assert_eq!(frame::decode(&mut out, usize::MAX), Ok(Some(f)));
            }
            Ok(None) => return (n, false, opened),
            Err(_) => return (n, true, opened),
        }
    }
}
