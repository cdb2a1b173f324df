//! Replays the committed fuzz corpus of the `catalog` target.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_render::{NetpolKind, Target, parse_catalog, render};
use std::path::Path;

#[test]
fn catalog_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/catalog");
    let mut accepted = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let Ok(text) = std::fs::read_to_string(e.unwrap().path()) else {
            continue;
        };
        if let Ok(c) = parse_catalog(&text) {
            accepted += 1;
            for t in [Target::Tailscale, Target::Gatehouse] {
                for n in [NetpolKind::Cilium, NetpolKind::Kubernetes] {
                    assert!(!render(&c, t, n, "fuzz").is_empty());
                }
            }
        }
    }
    assert!(accepted > 0);
}
