//! An ICE-TCP connection's bytes (RFC 4571 framing), read in chunks whose sizes the input's
//! first bytes choose. Never a panic; the decoder holds at most one frame; re-encoding the
//! frames and decoding again in one chunk gives the same frames.
#![no_main]

use estuary_sfu::tcp_framing::{Decoder, MAX_FRAME, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, mut rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut d = Decoder::new();
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let n = step.min(rest.len());
        d.push(&rest[..n], &mut |f| frames.push(f.to_vec()))
            .expect("no limit below 65535");
        assert!(d.pending() <= MAX_FRAME + 2);
        rest = &rest[n..];
    }
    let mut wire = Vec::new();
    for f in &frames {
        encode(f, &mut wire).expect("a decoded frame fits");
    }
    let mut again = Vec::new();
    Decoder::new()
        .push(&wire, &mut |f| again.push(f.to_vec()))
        .expect("no limit below 65535");
    // With a limit: never more than it, never a panic.
    let limit = usize::from(cut) * 8;
    let mut limited = Decoder::with_max_frame(limit);
    let _ = limited.push(data, &mut |f| assert!(f.len() <= limit));
    assert!(limited.pending() <= limit + 2);
    assert_eq!(frames, again);
});
