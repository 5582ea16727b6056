//! The video-aware RAM policy through the real binary: a viewer a few segments behind another
//! on the same stream is served from RAM even while a third viewer streams more bytes than the
//! RAM tier holds. Recency-based policies (S3-FIFO, LRU) lose those segments to the third
//! viewer's one-time reads; the same trace under `policy = "s3fifo"` shows the difference.

mod common;

use common::origin::{Object, Origin};
use common::*;

const SEGMENT: usize = 200_000;
const STEPS: u32 = 30;
/// How many segments the trailing viewer is behind the leader.
const LAG: u32 = 4;
/// Segments of a stream nobody follows, read per step: 5 x 200 KB per step, so that between
/// the leader's and the trailer's read of a segment more than the RAM tier (4 MiB) goes by.
const NOISE_PER_STEP: u32 = 5;

fn seg(stream: &str, index: u32) -> String {
    format!("/v/{stream}/720p/seg_{index:05}.m4s")
}

/// Runs the trace against an edge with `policy`; returns how many times the origin was asked
/// for the leader's stream in all.
async fn replay(policy: &str) -> usize {
    let origin = Origin::start().await;
    for i in 0..STEPS + LAG {
        origin.put(
            &seg("shared", i),
            Object::new(pattern(SEGMENT + i as usize)),
        );
    }
    for i in 0..(STEPS + LAG) * NOISE_PER_STEP {
        origin.put(&seg("alone", i), Object::new(pattern(SEGMENT + 7)));
    }
    let mut site = Site::new(&format!("policy-{policy}"));
    site.protected.clear();
    // RAM only: a miss in RAM is an origin fetch.
    site.extra = format!(
        "[cache]\nram = \"4MiB\"\npolicy = \"{policy}\"\n[upstream]\norigin = [\"{}\"]\n",
        origin.url()
    );
    let _edge = site.start();
    let get = |path: String, sid: &'static str| {
        let site = &site;
        async move {
            let header = format!("sid=\"{sid}\"");
            let (status, _, body) =
                plain_get(site, &path, &[("cmcd-session", header.as_str())]).await;
            assert_eq!(status, 200, "{path}");
            body.len()
        }
    };
    let mut noise = 0;
    for step in 0..STEPS + LAG {
        if step < STEPS {
            assert_eq!(
                get(seg("shared", step), "lead").await,
                SEGMENT + step as usize
            );
        }
        for _ in 0..NOISE_PER_STEP {
            get(seg("alone", noise), "alone").await;
            noise += 1;
        }
        if step >= LAG {
            let i = step - LAG;
            assert_eq!(get(seg("shared", i), "trail").await, SEGMENT + i as usize);
        }
    }
    (0..STEPS).map(|i| origin.hits(&seg("shared", i))).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_viewer_is_served_from_ram() {
    let video = replay("video").await;
    let s3fifo = replay("s3fifo").await;
    eprintln!("origin fetches of the shared stream: video {video}, s3fifo {s3fifo}");
    // The leader fills each segment once; the trailer should find nearly all of them in RAM
    // (a few misses while the policy learns the viewers' pace are allowed).
    assert!(
        video <= STEPS as usize + 5,
        "video policy: {video} origin fetches for {STEPS} segments read twice"
    );
    // The same trace with S3-FIFO refetches most of them: the test tells the policies apart.
    assert!(
        s3fifo >= video + 10,
        "s3fifo: {s3fifo} origin fetches, video: {video}"
    );
}
