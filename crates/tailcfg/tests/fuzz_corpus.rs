//! Replays the committed fuzz corpus of `tailcfg_map_request` through the
//! checks the fuzz target makes, so every `cargo test` runs them: requests
//! and frames read back as what was read, bad input is an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_tailcfg::{
    Compression, FrameDecoder, FrameEncoder, MapRequest, MapResponse, RegisterRequest, from_json,
};
use std::path::Path;

fn round_trip<T>(data: &[u8]) -> bool
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    match from_json::<T>(data) {
        Ok(msg) => {
            let again = serde_json::to_vec(&msg).unwrap();
            assert_eq!(from_json::<T>(&again).unwrap(), msg);
            true
        }
        Err(_) => false,
    }
}

fn frames(data: &[u8], compression: Compression) -> (usize, bool) {
    let mut d = FrameDecoder::new(compression).with_max_len(1 << 20);
    d.push(data);
    let mut n = 0;
    loop {
        match d.next_response() {
            Ok(Some(msg)) => {
                n += 1;
                let frame = FrameEncoder::new(compression)
                    .unwrap()
                    .encode(&msg)
                    .unwrap();
                let mut again = FrameDecoder::new(compression);
                again.push(&frame);
                assert_eq!(again.next_response().unwrap(), Some(msg));
            }
            Ok(None) => return (n, false),
            Err(_) => return (n, true),
        }
    }
}

#[test]
fn tailcfg_map_request_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tailcfg_map_request");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let (mut requests, mut refused, mut frames_read, mut frame_errors) = (0, 0, 0, 0);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let map = round_trip::<MapRequest>(&data);
        let reg = round_trip::<RegisterRequest>(&data);
        round_trip::<MapResponse>(&data);
        if name.starts_with("map-request") {
            assert!(map, "{name}");
            requests += 1;
        }
        if name.starts_with("register") {
            assert!(reg, "{name}");
            requests += 1;
        }
        if name.starts_with("bad-") {
            assert!(!map && !reg, "{name}");
            refused += 1;
        }
        for c in [Compression::None, Compression::Zstd] {
            let (n, err) = frames(&data, c);
            frames_read += n;
            frame_errors += usize::from(err);
        }
        if name == "frame-zstd-full-delta-keepalive" {
            assert_eq!(frames(&data, Compression::Zstd), (3, false));
        }
        if name == "frame-plain-full" {
            assert_eq!(frames(&data, Compression::None), (1, false));
        }
        if name == "frame-zstd-corrupt" || name == "frame-huge-length" {
            assert!(frames(&data, Compression::Zstd).1, "{name}");
        }
    }
    assert!(requests >= 6 && refused >= 3, "{requests} {refused}");
    assert!(
        frames_read >= 5 && frame_errors > 0,
        "{frames_read} {frame_errors}"
    );
}
