//! ICMP and ICMPv6 echo messages from a peer: the parser and the answer the
//! data plane builds from them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_mesh::fuzzing::echo(data);
});
