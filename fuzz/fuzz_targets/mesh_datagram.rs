//! UDP datagrams arriving at a node's WireGuard core (and the same bytes as
//! an outbound packet).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_mesh::fuzzing::datagram(data);
});
