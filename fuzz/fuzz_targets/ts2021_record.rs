//! Any bytes as a client's handshake initiation (raw, and as the text of
//! the upgrade request's header) and as records from the server: no
//! panic; an accepted initiation is well-formed; nothing opens after a
//! refused record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_ts2021::fuzzing::initiation(data);
    gatehouse_ts2021::fuzzing::records(data);
});
