//! Any bytes as SOCKS5 greeting and request bytes: decoded or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_node::fuzz::socks5(data));
