//! Any bytes as what a client sends a relay: the handshake's ClientInfo
//! (opened with the relay's key) and the frames after it. No panic; every
//! decoded frame survives an encode and decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_relay::fuzzing::derp_stream(data);
});
