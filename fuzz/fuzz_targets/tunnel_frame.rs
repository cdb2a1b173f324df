//! Any bytes as a tunnel stream: the decoder must return frames or an
//! error, never panic; every frame it returns must survive an encode and
//! decode round trip unchanged.
#![no_main]

use bytes::BytesMut;
use gatehouse_proto::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode(&mut buf) {
        let mut out = BytesMut::new();
        if encode(&frame, &mut out).is_ok() {
            assert_eq!(decode(&mut out).ok().flatten().as_ref(), Some(&frame));
            assert!(out.is_empty());
        }
    }
});
