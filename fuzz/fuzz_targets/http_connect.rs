//! Any bytes as HTTP CONNECT request heads: decoded or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_node::fuzz::http_connect(data));
