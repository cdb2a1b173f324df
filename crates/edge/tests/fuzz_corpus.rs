//! Replays the committed fuzz corpus of the path canonicaliser through the
//! same checks the fuzz target makes, so every `cargo test` runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_edge::path::canonicalize;
use std::path::Path;

#[test]
fn path_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/path");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let (mut ok, mut refused) = (0, 0);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        match canonicalize(text) {
            Ok(c) => {
                ok += 1;
                assert_eq!(
                    canonicalize(&c).as_deref(),
                    Ok(c.as_str()),
                    "{}",
                    f.display()
                );
            }
            Err(_) => refused += 1,
        }
    }
    assert!(ok > 0 && refused > 0);
}
