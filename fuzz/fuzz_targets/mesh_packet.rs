//! Decrypted IP packets from a peer: header parsing, the compiled filter,
//! the flow table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_mesh::fuzzing::packet(data);
});
