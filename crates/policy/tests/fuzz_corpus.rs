//! Replays the committed fuzz corpus through the same code the fuzz targets
//! run, so every `cargo test` checks that those inputs never panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_policy::{parse_inventory, parse_policy, run_tests};
use std::path::Path;
use std::sync::Arc;

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {name}");
    out
}

#[test]
fn policy_corpus() {
    let mut accepted = 0;
    for (name, bytes) in corpus("policy") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(p) = parse_policy(text) {
            accepted += 1;
            let _ = run_tests(&Arc::new(p), &[]);
        } else {
            eprintln!("refused: {name}");
        }
    }
    assert!(accepted > 0, "the corpus should hold valid policies too");
}

#[test]
fn inventory_corpus() {
    for (_, bytes) in corpus("inventory") {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse_inventory(text);
        }
    }
}
