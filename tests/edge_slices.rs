//! Large objects kept in fixed-size slices, and the disk tier's admission filter, against a
//! real HTTP/1.1 origin on loopback that answers byte ranges.

mod common;

use std::time::Duration;

use common::origin::{Object, Origin};
use common::*;

const MIB: usize = 1024 * 1024;

/// A 1 MiB slice size, objects up to 2 MiB kept whole.
const SLICED: &str = "ram = \"64MiB\"\ndisk = \"256MiB\"\nmax_object = \"2MiB\"\nslice = \"1MiB\"\ndisk_min_fills = 1";

fn slice_range(index: usize) -> Option<String> {
    Some(format!("bytes={}-{}", index * MIB, (index + 1) * MIB - 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_request_fills_only_the_slices_it_needs() {
    let origin = Origin::start().await;
    let body = pattern(20 * MIB + 12_345);
    origin.put("/v/movie/progressive.mp4", Object::new(body.clone()));
    let site = cached_site_with("slices", &[origin.url()], SLICED, "");
    let edge = site.start();
    let path = "/v/movie/progressive.mp4";

    // A seek into the middle costs one slice upstream, not the file.
    let (status, headers, got) =
        plain_get(&site, path, &[("range", "bytes=10500000-10600000")]).await;
    assert_eq!(status, 206, "{headers:?}");
    assert_eq!(
        headers["content-range"],
        format!("bytes 10500000-10600000/{}", body.len()).as_str()
    );
    assert!(
        got[..] == body[10_500_000..=10_600_000],
        "range bytes differ"
    );
    assert_eq!(origin.ranges(path), vec![slice_range(10)]);

    // A range across a slice boundary fills the next slice only.
    let (status, _, got) = plain_get(&site, path, &[("range", "bytes=11000000-11600000")]).await;
    assert_eq!(status, 206);
    assert!(got[..] == body[11_000_000..=11_600_000]);
    assert_eq!(origin.ranges(path), vec![slice_range(10), slice_range(11)]);

    // The whole object: every other slice once, the two cached ones not again; byte-exact,
    // including the short last slice.
    let (status, headers, got) = plain_get(&site, path, &[]).await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    assert!(
        got == body,
        "whole body differs ({} bytes): {}",
        got.len(),
        edge.log()
    );
    let ranges = origin.ranges(path);
    assert_eq!(ranges.len(), 21, "{ranges:?}");
    for index in 0..21 {
        assert_eq!(
            ranges.iter().filter(|r| **r == slice_range(index)).count(),
            1,
            "slice {index} fetched other than once: {ranges:?}"
        );
    }

    // Now every slice is cached: a hit, nothing upstream; conditionals and HEAD from the index.
    let (status, headers, got) = plain_get(&site, path, &[]).await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (200, &"HIT".parse().expect("hv"))
    );
    assert!(got == body);
    let etag = headers["etag"].to_str().expect("etag").to_owned();
    let (status, _, _) = plain_get(&site, path, &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    let (status, headers, got) = curl_like_head(&site, path).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    assert!(got.is_empty());
    let (status, headers, _) = plain_get(&site, path, &[("range", "bytes=99999999-")]).await;
    assert_eq!(status, 416);
    assert_eq!(
        headers["content-range"],
        format!("bytes */{}", body.len()).as_str()
    );
    assert_eq!(origin.ranges(path).len(), 21);

    // Small objects are still one fill and one entry.
    origin.put("/v/movie/seg.m4s", Object::new(pattern(300_000)));
    let (status, _, got) = plain_get(&site, "/v/movie/seg.m4s", &[]).await;
    assert_eq!((status, got.len()), (200, 300_000));
    let (_, headers, _) = plain_get(&site, "/v/movie/seg.m4s", &[]).await;
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(origin.hits("/v/movie/seg.m4s"), 1);
    drop(edge);
}

/// HEAD over plain HTTP/1.1.
async fn curl_like_head(site: &Site, path: &str) -> (u16, http::HeaderMap, bytes::Bytes) {
    let (out, _, ok) = curl(&["-sS", "-I", &site.url(path)]);
    assert!(ok, "curl -I failed");
    let text = String::from_utf8_lossy(&out).to_string();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            headers.insert(k, v);
        }
    }
    (status, headers, bytes::Bytes::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_object_is_never_mixed_with_slices_of_the_old_one() {
    let origin = Origin::start().await;
    let path = "/v/changing/file.mp4";
    let old = pattern(5 * MIB);
    origin.put(path, Object::new(old.clone()));
    let site = cached_site_with("slice-change", &[origin.url()], SLICED, "");
    let _edge = site.start();
    let (status, _, got) = plain_get(&site, path, &[("range", "bytes=0-99")]).await;
    assert_eq!((status, &got[..]), (206, &old[..100]));

    // The origin's object changes (new bytes, new ETag) while the edge's index is fresh.
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    origin.put(path, Object::new(new.clone()));
    // A slice not cached yet: the origin answers If-Range with the new whole object, which the
    // edge refuses to splice in; the response is cut rather than completed with wrong bytes.
    let (status, _, got) = plain_get(&site, path, &[("range", "bytes=3000000-3000099")]).await;
    assert_eq!(
        (status, &got[..]),
        (206, &b"<cut>"[..]),
        "a slice of another version was served"
    );
    // The index was dropped: the next request learns the new version, byte-exact.
    let (status, _, got) = plain_get(&site, path, &[]).await;
    assert_eq!(status, 200);
    assert!(
        got[..] == new[..],
        "the whole object after the change differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_without_ranges_still_works() {
    let origin = Origin::start().await;
    let path = "/v/noranges/file.mp4";
    let body = pattern(3 * MIB);
    origin.put(
        path,
        Object {
            ranges: false,
            ..Object::new(body.clone())
        },
    );
    // max_object 2 MiB: a 3 MiB object that cannot be sliced is relayed, not cached.
    let site = cached_site_with("no-ranges", &[origin.url()], SLICED, "");
    let _edge = site.start();
    let (status, _, got) = plain_get(&site, path, &[("range", "bytes=2500000-2500009")]).await;
    assert_eq!((status, &got[..]), (206, &body[2_500_000..2_500_010]));
    let (status, _, got) = plain_get(&site, path, &[]).await;
    assert_eq!(status, 200);
    assert!(got == body);
    assert_eq!(origin.hits(path), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hit_wonders_stay_off_the_disk() {
    let mut origin = Origin::start().await;
    let objects: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("/v/w/seg_{i}.m4s"), pattern(400_000 + i)))
        .collect();
    for (path, body) in &objects {
        origin.put(path, Object::new(body.clone()));
    }
    // A 1 MiB RAM tier holds two of these at most; an object goes to disk on its second fill.
    // S3-FIFO evicts the first object for the later ones; the video policy would rather keep
    // the first segments of a stream and let the later ones bypass RAM, which this test of the
    // disk admission filter does not want.
    let cache = "ram = \"1MiB\"\ndisk = \"64MiB\"\nmax_object = \"1MiB\"\nslice = \"1MiB\"\ndisk_min_fills = 2\npolicy = \"s3fifo\"";
    let site = cached_site_with("admission", &[origin.url()], cache, "");
    let mut edge = site.start();
    for (path, body) in &objects {
        let (status, _, got) = plain_get(&site, path, &[]).await;
        assert_eq!((status, got[..] == body[..]), (200, true), "{path}");
    }
    // The first object was evicted from RAM by the others: its second fill goes to disk.
    let (first, first_body) = &objects[0];
    let (status, headers, _) = plain_get(&site, first, &[]).await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (200, &"MISS".parse().expect("hv"))
    );
    assert_eq!(origin.hits(first), 2);
    assert!(edge.metric("estuary_edge_cache_ram_evictions_total", &[]) >= 1.0);
    assert!(
        edge.metric(
            "estuary_edge_cache_disk_admissions_total",
            &["result=\"rejected\""]
        ) >= 8.0
    );
    assert!(
        edge.metric(
            "estuary_edge_cache_disk_admissions_total",
            &["result=\"admitted\""]
        ) >= 1.0
    );

    // After a restart with the origin down, only the object filled twice is on disk.
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(30)));
    origin.stop();
    let _edge = site.start();
    let (status, headers, got) = plain_get(&site, first, &[]).await;
    assert_eq!(status, 200, "{headers:?}");
    assert!(got[..] == first_body[..]);
    for (path, _) in &objects[1..] {
        let (status, _, _) = plain_get(&site, path, &[]).await;
        assert_eq!(status, 502, "{path} was written to disk after one fill");
    }
}
