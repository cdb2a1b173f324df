//! Any bytes as DNS queries through the mesh resolver: decoded or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_node::fuzz::dns(data));
