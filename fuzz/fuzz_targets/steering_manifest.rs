//! Steering rewrites the origin's HLS and DASH manifests: arbitrary text never panics the
//! rewriter, and an HLS answer it accepts names every pathway.
#![no_main]

use estuary_steering::manifest::{Pathway, steer_dash, steer_hls};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = |s: &str| url::Url::parse(s).expect("url");
    let pathways = [
        Pathway {
            id: "edge-a".into(),
            base: base("https://a.example/t/tok/v/movie/"),
        },
        Pathway {
            id: "edge-b".into(),
            base: base("https://b.example/t/tok/v/movie/"),
        },
    ];
    let server = "https://steer.example/v1/steering/hls/movie";
    if let Ok(out) = steer_hls(text, &pathways, server) {
        assert!(out.contains("edge-a") && out.contains("edge-b"));
    }
    let _ = steer_dash(text, &pathways, server);
});
