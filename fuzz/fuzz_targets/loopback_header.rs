//! Any bytes as the loopback data plane's connection header: decoded or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_node::fuzz::loopback_header(data));
