//! Any bytes as a STUN message for the responder and the client: no panic;
//! a request that parses gets a response that parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_disco::fuzzing::stun_message(data);
});
