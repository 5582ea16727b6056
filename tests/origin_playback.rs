//! An uploaded clip, packaged by the origin, plays in headless Chromium with hls.js and
//! dash.js straight from `estuary origin`, and through an edge that fills from it.

mod common;

use std::time::Duration;

use common::origin_site::*;
use common::*;

#[test]
fn a_packaged_upload_plays_with_hls_js_and_dash_js_from_the_origin_and_through_an_edge() {
    let site = OriginSite::new("origin-play");
    let clip = make_clip(site.dir.path(), "clip.mp4", 10, "640x360");
    let origin = site.start();
    // A TUS upload in one PATCH with curl.
    assert_eq!(site.upload(&clip, "played"), (201, 204));
    let v = site.wait_for_asset("played", Duration::from_secs(240));
    assert_eq!(v["state"], "ready", "{v}: {}", origin.log());

    // Straight from the origin.
    play_in_chromium("hls", &site.url("/v/played/master.m3u8"), 5);
    play_in_chromium("dash", &site.url("/v/played/manifest.mpd"), 5);

    // Through an edge that fills from the origin.
    let mut edge_site = Site::new("edge-play");
    edge_site.protected.clear();
    edge_site.extra = format!(
        "[cors]\nallow_origins = [\"*\"]\n[cache]\nram = \"64MiB\"\n[upstream]\norigin = [\"{}\"]\n",
        site.url("")
    );
    let edge = edge_site.start();
    play_in_chromium("hls", &edge_site.url("/v/played/master.m3u8"), 5);
    play_in_chromium("dash", &edge_site.url("/v/played/manifest.mpd"), 5);
    assert!(
        edge.metric(
            "estuary_edge_fills_total",
            &["source=\"origin\"", "result=\"ok\""]
        ) > 0.0
    );
    assert_eq!(
        edge.metric("estuary_edge_integrity_failures_total", &[]),
        0.0
    );
}
