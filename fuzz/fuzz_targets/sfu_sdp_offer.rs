//! A WHIP or WHEP offer as any client could POST it (the first byte picks which): parsed by
//! str0m and answered by a fresh ICE-lite `Rtc` in RTP mode, with the SFU's direction check
//! (`RtcFactory::answer`). Never a panic; an accepted offer has at least one audio or video
//! m-line and an answer with our ICE-lite attribute.
#![no_main]

use std::sync::LazyLock;
use std::time::Instant;

use estuary_sfu::config::Codec;
use estuary_sfu::peer::{PeerKind, RtcFactory};
use libfuzzer_sys::fuzz_target;

static FACTORY: LazyLock<RtcFactory> = LazyLock::new(|| {
    RtcFactory::new(
        vec![Codec::Opus, Codec::Vp8, Codec::H264],
        "127.0.0.1:7301".parse().expect("addr"),
    )
    .expect("a DTLS certificate")
});

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let kind = if which % 2 == 0 { PeerKind::Whip } else { PeerKind::Whep };
    if let Ok(a) = FACTORY.answer(
        Instant::now(),
        kind,
        "fuzzufrag0000000",
        "fuzzpass00000000000000000000000000",
        text,
    ) {
        assert!(!a.media.is_empty());
        assert!(a.answer.contains("a=ice-lite"));
    }
});
