//! A meeting participant's WebSocket text frames (`sfu/src/signal.rs`), as any holder of a
//! room token could send them, and the upstream SFU's frames to a cascade link and the
//! cascade order's upstream URL (`sfu/src/cascade.rs`). Never a panic; an accepted frame is
//! within the size limit, and a frame over it is refused before it is parsed.
#![no_main]

use estuary_sfu::signal::{MAX_FRAME_BYTES, ParseError, parse, parse_track_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(_) => assert!(text.len() <= MAX_FRAME_BYTES),
        Err(ParseError::TooBig) => assert!(text.len() > MAX_FRAME_BYTES),
        Err(_) => {}
    }
    let _ = parse_track_id(text);
    if estuary_sfu::cascade::parse_upstream_msg(text).is_some() {
        assert!(text.len() <= MAX_FRAME_BYTES);
    }
    let _ = estuary_sfu::cascade::parse_upstream(text);
});
