//! Any bytes as a disco packet from a known sender and as a box's
//! plaintext: no panic; whatever decodes survives an encode and decode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_disco::fuzzing::disco_packet(data);
});
