//! Replays the committed fuzz corpus of the control protocol's decoders (join
//! strings, the map stream, CSRs) through the same code the fuzz targets run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_control::ca::MeshCa;
use gatehouse_proto::control::{MapMessage, MapState};
use std::path::Path;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {name}");
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn join_corpus() {
    for bytes in corpus("join") {
        if let Ok(j) = gatehouse_client::Join::parse(std::str::from_utf8(&bytes).unwrap_or("")) {
            let again = gatehouse_client::Join::parse(&j.url()).unwrap();
            assert_eq!((again.host, again.port), (j.host, j.port));
        }
    }
}

#[test]
fn map_stream_corpus() {
    let mut applied = 0;
    for bytes in corpus("map_stream") {
        let mut state: Option<MapState> = None;
        for line in bytes.split(|b| *b == b'\n') {
            let Ok(msg) = serde_json::from_slice::<MapMessage>(line) else {
                continue;
            };
            applied += 1;
            match (&mut state, msg) {
                (_, MapMessage::Full(full)) => state = Some(MapState::from_full(full)),
                (Some(s), other) => s.apply(other),
                (None, _) => {}
            }
        }
    }
    assert!(applied > 0);
}

#[test]
fn csr_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::load_or_create(dir.path(), "fuzz.internal", &[]).unwrap();
    let mut signed = 0;
    for bytes in corpus("csr") {
        if let Ok(pem) = std::str::from_utf8(&bytes)
            && ca
                .sign_serving(
                    pem,
                    &["node.fuzz.internal".to_string()],
                    time::Duration::hours(1),
                )
                .is_ok()
        {
            signed += 1;
        }
    }
    assert!(signed > 0, "the corpus should hold a valid CSR");
}
