//! Any bytes as a cloudflared-style ingress file, a `service:` value and a
//! URL: no panic; a valid file ends with its only catch-all and routes any
//! request to one of its rules; a URL prints as text that reads back the
//! same or, as in cloudflared, not at all; a service's dial address is a
//! host and a port.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_tunnel::fuzzing::ingress(data);
});
