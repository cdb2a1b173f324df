//! Any bytes as an inventory file: refused or accepted, never a panic.
#![no_main]

use gatehouse_policy::parse_inventory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_inventory(text);
    }
});
