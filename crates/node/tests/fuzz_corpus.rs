//! Replays the committed fuzz corpus of the node's decoders through the
//! same functions the fuzz targets run, so every `cargo test` checks that
//! those inputs never panic and keep their decoders' promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

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

fn replay(name: &str, f: fn(&[u8])) {
    for (file, bytes) in corpus(name) {
        // Every input and every prefix of it (short inputs only).
        let prefixes = if bytes.len() <= 256 {
            0..=bytes.len()
        } else {
            bytes.len()..=bytes.len()
        };
        for n in prefixes {
            let r = std::panic::catch_unwind(|| f(&bytes[..n]));
            assert!(r.is_ok(), "{file}: panicked on the first {n} bytes");
        }
    }
}

#[test]
fn socks5_corpus() {
    replay("socks5", gatehouse_node::fuzz::socks5);
}

#[test]
fn http_connect_corpus() {
    replay("http_connect", gatehouse_node::fuzz::http_connect);
}

#[test]
fn dns_corpus() {
    replay("dns", gatehouse_node::fuzz::dns);
}

#[test]
fn loopback_header_corpus() {
    replay("loopback_header", gatehouse_node::fuzz::loopback_header);
}
