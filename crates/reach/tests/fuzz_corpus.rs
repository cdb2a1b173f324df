//! Replays the committed fuzz corpus of the `manifests` target through the
//! same code it runs, so every `cargo test` checks those inputs never panic
//! and that every refusal names a position in the input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_reach::Analysis;
use std::path::Path;

#[test]
fn manifests_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let (mut accepted, mut refused) = (0, 0);
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match Analysis::load(&[("fuzz.yaml", &text)]) {
            Ok(a) => {
                let _ = a.engine.list();
                accepted += 1;
            }
            Err(e) => {
                assert!(e.to_string().starts_with("fuzz.yaml:"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
