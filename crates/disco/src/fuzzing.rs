//! The bodies of the fuzz targets `disco_packet` and `stun`
//! (`fuzz/fuzz_targets/`), here so that `cargo test` replays the committed
//! corpus through the same checks.

use crate::disco::{self, Message};
use crate::{DiscoPrivateKey, classify, stun};

/// Private key of the fuzzed receiver.
pub const RECEIVER_KEY: [u8; 32] = [2; 32];
/// Private key of the one sender it knows.
pub const SENDER_KEY: [u8; 32] = [1; 32];

/// Any bytes as a disco packet from the known sender, and as the plaintext
/// of a box: no panic; whatever decodes survives an encode and decode.
/// Returns whether the packet opened.
pub fn disco_packet(data: &[u8]) -> bool {
    let _ = classify(data);
    let _ = disco::sender(data);
    if let Ok(m) = Message::decode(data) {
        assert_eq!(Message::decode(&m.encode()), Ok(m));
    }
    let me = DiscoPrivateKey::from_bytes(RECEIVER_KEY);
    let from = DiscoPrivateKey::from_bytes(SENDER_KEY).public();
    match disco::open(&me.shared(&from), data) {
        Ok(m) => {
            assert_eq!(Message::decode(&m.encode()), Ok(m));
            true
        }
        Err(_) => false,
    }
}

/// Any bytes as a STUN message, for the responder and for the client: no
/// panic; a request that parses is answered with a response that parses
/// back to its transaction id. Returns whether either parsed.
pub fn stun_message(data: &[u8]) -> bool {
    let _ = classify(data);
    let mut parsed = false;
    if let Ok(tx) = stun::parse_binding_request(data) {
        let addr = "192.0.2.1:41641".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(
            stun::parse_binding_response(&stun::binding_response(&tx, addr)),
            Ok((tx, addr))
        );
        parsed = true;
    }
    if stun::parse_binding_response(data).is_ok() {
        parsed = true;
    }
    parsed
}
