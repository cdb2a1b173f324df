//! Replays the committed fuzz corpus of the tunnel frame decoder through the
//! same checks the fuzz target makes, so every `cargo test` runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use gatehouse_proto::{decode, encode};
use std::path::Path;

#[test]
fn tunnel_frame_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tunnel_frame");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let (mut frames, mut errors) = (0, 0);
    for f in files {
        let mut buf = BytesMut::from(&std::fs::read(&f).unwrap()[..]);
        loop {
            match decode(&mut buf) {
                Ok(Some(frame)) => {
                    frames += 1;
                    let mut out = BytesMut::new();
                    encode(&frame, &mut out).unwrap();
                    assert_eq!(decode(&mut out).unwrap(), Some(frame), "{}", f.display());
                }
                Ok(None) => break,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
    }
    assert!(
        frames > 0 && errors > 0,
        "the corpus should hold valid and invalid input"
    );
}
