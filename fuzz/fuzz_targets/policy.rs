//! Any bytes as a policy file: the parser must refuse or accept, never panic,
//! and an accepted policy must compile and run its tests without panicking.
#![no_main]

use gatehouse_policy::{parse_policy, run_tests};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = parse_policy(text) {
        let _ = run_tests(&Arc::new(policy), &[]);
    }
});
