//! The map stream as a node reads it: newline-delimited JSON messages from
//! control, applied to the node's view. Malformed lines are errors, never
//! panics; applying any sequence of messages never panics.
#![no_main]

use gatehouse_proto::control::{MapMessage, MapState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state: Option<MapState> = None;
    for line in data.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<MapMessage>(line) else {
            continue;
        };
        match (&mut state, msg) {
            (_, MapMessage::Full(full)) => state = Some(MapState::from_full(full)),
            (Some(s), other) => s.apply(other),
            (None, _) => {}
        }
    }
});
