//! What a Tailscale client sends to control (`MapRequest` and
//! `RegisterRequest` JSON) and what control streams back (map frames):
//! arbitrary bytes are an error or a message, never a panic, and every
//! message read is written back and read again as the same message.
#![no_main]

use gatehouse_tailcfg::{
    Compression, FrameDecoder, FrameEncoder, MapRequest, MapResponse, RegisterRequest, from_json,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(msg) = from_json::<T>(data) {
        let again = serde_json::to_vec(&msg).expect("a message read is written");
        let back: T = from_json(&again).expect("a message written is read");
        assert_eq!(back, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<MapRequest>(data);
    round_trip::<RegisterRequest>(data);
    round_trip::<MapResponse>(data);
    for compression in [Compression::None, Compression::Zstd] {
        let mut d = FrameDecoder::new(compression).with_max_len(1 << 20);
        d.push(data);
        while let Ok(Some(msg)) = d.next_response() {
            let frame = FrameEncoder::new(compression)
                .and_then(|mut e| e.encode(&msg))
                .expect("a message read is framed");
            let mut again = FrameDecoder::new(compression);
            again.push(&frame);
            assert_eq!(again.next_response().expect("a frame made is read"), Some(msg));
        }
    }
});
