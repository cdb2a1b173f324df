//! Any bytes as a manifest file: read, modelled, compiled, listed and
//! linted, or refused with a position; never a panic.
#![no_main]

use gatehouse_lint::lint;
use gatehouse_reach::Analysis;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Analysis::load(&[("fuzz.yaml", text)]) {
        Ok(a) => {
            let _ = a.engine.list();
        }
        Err(e) => {
            // Every refusal names a position inside the input.
            let s = e.to_string();
            assert!(s.starts_with("fuzz.yaml:"), "{s}");
        }
    }
    let _ = lint(&[("fuzz.yaml", text)]);
});
