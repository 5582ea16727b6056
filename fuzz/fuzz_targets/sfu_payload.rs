//! RTP payloads as a publisher (or anyone who got past DTLS) sends them, read by the SFU
//! before forwarding: the VP8 picture ids, and the frame height of a
//! VP8 keyframe or an H.264 sequence parameter set (single or in a STAP-A). Never a panic;
//! a height, when one is read, is one a frame can have.
#![no_main]

use estuary_sfu::peer::{MAX_FRAME_HEIGHT, h264_keyframe_height, vp8_ids, vp8_keyframe_height};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vp8_ids(data);
    if let Some(h) = vp8_keyframe_height(data) {
        assert!(h > 0 && h < 1 << 14);
    }
    if let Some(h) = h264_keyframe_height(data) {
        assert!(h > 0 && h <= MAX_FRAME_HEIGHT);
    }
});
