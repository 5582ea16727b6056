//! The SFU end to end with an independent WebRTC stack: aiortc publishes over WHIP and
//! another aiortc watches over WHEP, on loopback; the watcher decodes what it receives.
//! Then DELETE ends both sessions, and the signaling refusals answer with their codes.

mod common;

use common::sfu::{Sfu, room_token, sign, synthetic_offer};

/// A watcher decodes the publisher's video and audio (counts, not timings: ~30 video frames
/// and ~50 audio frames a second are sent; at least a third must arrive decoded).
fn publish_and_watch(codec: &str, codec_name: &str) {
    let sfu = Sfu::start(&format!("sfu-pair-{codec}"), "");
    let out = sfu.client(
        "pair",
        "r1",
        &["--seconds", "5", "--codec", codec, "--delete"],
    );
    let w = &out["watcher"];
    assert_eq!(w["status"], 201, "{out}");
    assert_eq!(w["codec"], codec_name, "{out}");
    let video = w["video_frames"].as_u64().expect("video frames");
    let audio = w["audio_frames"].as_u64().expect("audio frames");
    assert!(video >= 50, "only {video} video frames decoded: {out}");
    assert!(audio >= 80, "only {audio} audio frames decoded: {out}");
    assert_eq!(
        (w["width"].as_u64(), w["height"].as_u64()),
        (Some(640), Some(480))
    );
    // DELETE on each Location ended the sessions.
    assert_eq!(w["delete"], 200, "{out}");
    assert_eq!(out["publisher"]["delete"], 200, "{out}");
    assert!(
        w["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("/whep/r1/")),
        "{out}"
    );
    assert_eq!(sfu.wait_metric("estuary_sfu_peers", &[], |v| v == 0.0), 0.0);
    assert_eq!(sfu.metric("estuary_sfu_rooms", &[]), 0.0);
    let forwarded = sfu.wait_metric(
        "estuary_sfu_forwarded_packets_total",
        &["kind=\"video\""],
        |v| v >= video as f64,
    );
    assert!(
        forwarded >= video as f64,
        "{forwarded} video packets forwarded"
    );
    assert!(sfu.metric("estuary_sfu_forward_latency_seconds_count", &[]) > 0.0);
    assert_eq!(
        sfu.metric("estuary_sfu_peers_total", &["kind=\"whip\""]),
        1.0
    );
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}

#[test]
fn vp8_and_opus_published_over_whip_are_decoded_by_a_whep_watcher() {
    publish_and_watch("vp8", "VP8");
}

#[test]
fn h264_and_opus_published_over_whip_are_decoded_by_a_whep_watcher() {
    publish_and_watch("h264", "H264");
}

/// The frame counts above mean something: a watcher that did not negotiate the publisher's
/// video codec decodes no video at all (and still hears the audio).
#[test]
fn a_watcher_without_the_publishers_codec_decodes_no_video() {
    let sfu = Sfu::start("sfu-codec-mismatch", "");
    let out = sfu.client(
        "pair",
        "r1",
        &["--seconds", "4", "--codec", "h264", "--watch-codec", "vp8"],
    );
    let w = &out["watcher"];
    assert_eq!(w["codec"], "VP8", "{out}");
    assert_eq!(w["video_frames"], 0, "{out}");
    assert!(w["audio_frames"].as_u64().unwrap_or(0) >= 60, "{out}");
    assert!(
        sfu.wait_metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"not_forwarded\""],
            |v| v > 0.0
        ) > 0.0
    );
}

#[test]
fn signaling_refusals_answer_with_their_codes() {
    let sfu = Sfu::start(
        "sfu-refusals",
        "[rooms]\nmax_participants = 2\nmax_publishers = 1\n",
    );
    let whip = synthetic_offer("sendonly");
    let whep = synthetic_offer("recvonly");
    let sdp = Some("application/sdp");
    // No token, a token that is not one, another room's token, another key's token.
    let (s, _, _) = sfu.request("POST", "/whip/r1", None, sdp, &whip);
    assert_eq!(s, 401);
    let (s, _, _) = sfu.request("POST", "/whip/r1", Some("nonsense"), sdp, &whip);
    assert_eq!(s, 401);
    let (s, _, _) = sfu.request("POST", "/whip/r1", Some(&room_token("r2")), sdp, &whip);
    assert_eq!(s, 403);
    let other_key = sign("/rooms/r1", "k1", common::KEY2_HEX);
    let (s, _, _) = sfu.request("POST", "/whep/r1", Some(&other_key), sdp, &whep);
    assert_eq!(s, 403);
    // Wrong content type, bad SDP, an offer in the wrong direction.
    let t = room_token("r1");
    let (s, _, _) = sfu.request("POST", "/whip/r1", Some(&t), Some("text/plain"), &whip);
    assert_eq!(s, 415);
    let (s, _, body) = sfu.offer("whip", "r1", "v=0\r\nthis is not sdp\r\n");
    assert_eq!(s, 400, "{body}");
    let (s, _, body) = sfu.offer("whip", "r1", &whep);
    assert_eq!(s, 400, "a recvonly offer over WHIP: {body}");
    assert!(body.contains("sendonly"), "{body}");
    let (s, _, _) = sfu.offer("whep", "r1", &whip);
    assert_eq!(s, 400);
    // Accepted: 201 with an SDP answer and a Location; the SFU is ICE-lite.
    let (s, head, answer) = sfu.offer("whip", "r1", &whip);
    assert_eq!(s, 201, "{answer}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/sdp"), "{head}");
    assert!(head.contains("location: /whip/r1/"), "{head}");
    assert!(
        answer.contains("a=ice-lite") && answer.contains(&format!(" {} typ host", sfu.udp.port())),
        "{answer}"
    );
    // Limits: one publisher, two participants.
    let (s, _, _) = sfu.offer("whip", "r1", &whip);
    assert_eq!(s, 409, "a second publisher");
    let (s, _, _) = sfu.offer("whep", "r1", &whep);
    assert_eq!(s, 201);
    let (s, _, _) = sfu.offer("whep", "r1", &whep);
    assert_eq!(s, 409, "a third participant");
    // CORS preflight.
    let (s, head, _) = sfu.request("OPTIONS", "/whep/r1", None, None, "");
    assert_eq!(s, 204);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-methods: post, delete, options"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: authorization, content-type"),
        "{head}"
    );
    // Trickle ICE and ICE restarts (PATCH) are not served: the answer holds our candidate.
    let (s, _, _) = sfu.request(
        "PATCH",
        "/whip/r1/0123",
        Some(&t),
        Some("application/trickle-ice-sdpfrag"),
        "a=end-of-candidates\r\n",
    );
    assert_eq!(s, 405);
    // DELETE: an unknown session is 404; a known one needs the room's token.
    let (s, _, _) = sfu.request("DELETE", "/whip/r1/0123", Some(&t), None, "");
    assert_eq!(s, 404);
    for (reason, at_least) in [
        ("no_token", 2.0),
        ("bad_token", 2.0),
        ("wrong_type", 1.0),
        ("bad_sdp", 3.0),
        ("room_full", 2.0),
    ] {
        let v = sfu.metric(
            "estuary_sfu_signaling_refused_total",
            &[&format!("reason=\"{reason}\"")],
        );
        assert!(v >= at_least, "{reason}: {v}");
    }
    assert_eq!(sfu.metric("estuary_sfu_rooms", &[]), 1.0);
    assert_eq!(sfu.metric("estuary_sfu_peers", &[]), 2.0);
}

#[test]
fn delete_ends_a_session_and_a_draining_sfu_refuses_new_ones() {
    // The config ends in [shutdown]: this goes there.
    let mut sfu = Sfu::start("sfu-delete", "lame_duck = \"3s\"\n");
    let whip = synthetic_offer("sendonly");
    let t = room_token("r1");
    let (s, head, _) = sfu.offer("whip", "r1", &whip);
    assert_eq!(s, 201);
    let location = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("location: ")
                .map(str::to_owned)
        })
        .expect("Location");
    assert_eq!(sfu.metric("estuary_sfu_peers", &["kind=\"whip\""]), 1.0);
    // Another room's token may not end it.
    let (s, _, _) = sfu.request("DELETE", &location, Some(&room_token("r2")), None, "");
    assert_eq!(s, 403);
    let (s, _, _) = sfu.request("DELETE", &location, Some(&t), None, "");
    assert_eq!(s, 200);
    assert_eq!(sfu.metric("estuary_sfu_peers", &[]), 0.0);
    assert_eq!(sfu.metric("estuary_sfu_rooms", &[]), 0.0);
    let (s, _, _) = sfu.request("DELETE", &location, Some(&t), None, "");
    assert_eq!(s, 404, "a session ends once");
    // SIGTERM: during the lame-duck period new sessions get 503 and /readyz too.
    sfu.process.signal("TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (s, _, _) = sfu.offer("whip", "r1", &whip);
    assert_eq!(s, 503);
    let (s, _) = common::http_get_raw(sfu.http, "/readyz").expect("readyz");
    assert_eq!(s, 503);
    assert!(sfu.process.wait_exit(std::time::Duration::from_secs(20)));
}

/// Watchers joining a running stream one second apart each start at a keyframe the SFU asks
/// the publisher for, and each decodes the stream.
#[test]
fn watchers_joining_a_running_stream_each_decode_it() {
    let sfu = Sfu::start("sfu-late-watchers", "");
    let out = sfu.client("pair", "r1", &["--seconds", "4", "--watchers", "3"]);
    let watchers = out["watchers"].as_array().expect("watchers");
    assert_eq!(watchers.len(), 3, "{out}");
    for w in watchers {
        assert!(w["video_frames"].as_u64().unwrap_or(0) >= 40, "{out}");
        assert!(w["audio_frames"].as_u64().unwrap_or(0) >= 60, "{out}");
    }
    // One keyframe request per watcher that joined, at least (none are throttled a second
    // apart with keyframe_interval_min = 500ms).
    let sent = sfu.wait_metric(
        "estuary_sfu_keyframe_requests_total",
        &["result=\"sent\""],
        |v| v >= 3.0,
    );
    assert!(sent >= 3.0, "{sent} keyframe requests sent");
}

/// Watchers already in the room when the publisher arrives receive its tracks. Run with two
/// shards: then a reader thread takes the datagrams off the socket and hands them to the
/// room's shard (the only shard, every other test's, reads the socket itself).
#[test]
fn watchers_who_come_before_the_publisher_receive_it() {
    let sfu = Sfu::start("sfu-early-watchers", "[media]\nshards = 2\n");
    let (_, text) = common::http_get_raw(sfu.http, "/metrics").expect("metrics");
    assert!(
        text.contains("estuary_sfu_shed_layers{shard=\"1\","),
        "two shards: {text}"
    );
    let out = sfu.client(
        "pair",
        "r1",
        &["--seconds", "4", "--watchers", "2", "--watch-first"],
    );
    for w in out["watchers"].as_array().expect("watchers") {
        assert!(w["video_frames"].as_u64().unwrap_or(0) >= 50, "{out}");
        assert!(w["audio_frames"].as_u64().unwrap_or(0) >= 80, "{out}");
    }
}

/// With `[listen] admin`, `/metrics`, `/healthz` and `/readyz` answer there and not beside
/// WHIP/WHEP.
#[test]
fn admin_endpoints_move_to_their_own_address() {
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .expect("addr");
    let sfu = Sfu::start_with("sfu-admin", Some(admin), "127.0.0.1", "");
    let (s, text) = common::http_get_raw(admin, "/metrics").expect("admin metrics");
    assert_eq!(s, 200);
    assert!(text.contains("estuary_sfu_peers"), "{text}");
    let (s, _) = common::http_get_raw(admin, "/readyz").expect("readyz");
    assert_eq!(s, 200);
    let (s, _) = common::http_get_raw(sfu.http, "/metrics").expect("signaling port");
    assert_eq!(s, 404);
    let (s, _, _) = sfu.offer("whip", "r1", &synthetic_offer("sendonly"));
    assert_eq!(s, 201);
}

/// A publisher that vanishes without a DELETE (its process killed) is closed once ICE has
/// seen nothing from it and `[media] ice_disconnect_grace` has passed; its room goes with it.
#[test]
fn a_publisher_that_vanishes_is_closed() {
    let sfu = Sfu::start("sfu-vanish", "[media]\nice_disconnect_grace = \"1s\"\n");
    let _slot = common::sfu::ClientSlot::take();
    let mut publisher = sfu
        .client_command("publish", "r1", &["--seconds", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let received = sfu.wait_metric("estuary_sfu_received_packets_total", &[], |v| v > 50.0);
    assert!(
        received > 50.0,
        "the publisher never sent: {}",
        sfu.process.log()
    );
    assert_eq!(sfu.metric("estuary_sfu_peers", &["kind=\"whip\""]), 1.0);
    publisher.kill().expect("kill");
    let _ = publisher.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sfu.metric("estuary_sfu_peers", &[]) > 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        sfu.metric("estuary_sfu_peers", &[]),
        0.0,
        "{}",
        sfu.process.log()
    );
    assert_eq!(sfu.metric("estuary_sfu_rooms", &[]), 0.0);
}

/// Real pictures (FFmpeg's moving test pattern through aiortc's encoder): frames span several
/// packets and keyframes many, so decoding proves whole frames cross the SFU in order, with
/// their marker bits, for both codecs.
fn moving_pattern(codec: &str) {
    let sfu = Sfu::start(&format!("sfu-testsrc-{codec}"), "");
    let out = sfu.client(
        "pair",
        "r1",
        &["--seconds", "5", "--codec", codec, "--source", "testsrc"],
    );
    let w = &out["watcher"];
    let frames = w["video_frames"].as_u64().unwrap_or(0);
    assert!(frames >= 50, "{out}");
    assert!(w["audio_frames"].as_u64().unwrap_or(0) >= 80, "{out}");
    assert_eq!(
        (w["width"].as_u64(), w["height"].as_u64()),
        (Some(640), Some(480))
    );
    let packets = sfu.wait_metric(
        "estuary_sfu_forwarded_packets_total",
        &["kind=\"video\""],
        |v| v >= 1.5 * frames as f64,
    );
    let bytes = sfu.metric("estuary_sfu_forwarded_bytes_total", &["kind=\"video\""]);
    // The check is meaningful only if frames really were several packets each.
    assert!(
        packets >= 1.5 * frames as f64,
        "{packets} packets for {frames} frames"
    );
    assert!(
        bytes / packets > 500.0,
        "{bytes} bytes in {packets} packets"
    );
}

#[test]
fn a_moving_vp8_pattern_in_frames_of_many_packets_is_decoded() {
    moving_pattern("vp8");
}

#[test]
fn a_moving_h264_pattern_in_frames_of_many_packets_is_decoded() {
    moving_pattern("h264");
}

/// A watcher behind a lossy link (a userspace proxy dropping 5% of the media towards the
/// clients) reports the holes with NACKs, which the SFU answers from its send buffer, and
/// keeps decoding.
#[test]
fn a_watcher_behind_a_lossy_link_sends_nacks_and_keeps_decoding() {
    // The candidates say 127.0.0.2, where the proxy listens; the SFU is on 127.0.0.1.
    let sfu = Sfu::start_with("sfu-nack", None, "127.0.0.2", "");
    let front = std::net::SocketAddr::from(([127, 0, 0, 2], sfu.udp.port()));
    let proxy = common::udp_proxy::LossProxy::start(front, sfu.udp, 5, 42);
    let out = sfu.client("pair", "r1", &["--seconds", "6", "--source", "testsrc"]);
    let w = &out["watcher"];
    assert!(w["video_frames"].as_u64().unwrap_or(0) >= 60, "{out}");
    assert!(w["audio_frames"].as_u64().unwrap_or(0) >= 100, "{out}");
    let dropped = proxy.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 20, "the proxy dropped only {dropped} datagrams");
    let nacks = sfu.wait_metric(
        "estuary_sfu_nacks_total",
        &["direction=\"received\""],
        |v| v > 0.0,
    );
    assert!(nacks > 0.0, "no NACK from the watcher reached the SFU");
    // The default publisher limit (8 Mbit/s) does not bite on aiortc's few hundred kbit/s.
    assert_eq!(
        sfu.metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"over_bitrate\""]
        ),
        0.0
    );
    eprintln!(
        "{dropped} datagrams dropped, {nacks} NACKs, {} video frames decoded",
        w["video_frames"]
    );
}

/// `[rooms] max_publisher_kbps`: the WHIP answer tells the publisher (`b=AS` in each video
/// section), and the video a publisher sends over it is dropped and counted (aiortc
/// ignores the answer's limit, as a hostile publisher would); its audio, within its own
/// limit, all goes through.
#[test]
fn a_publisher_over_its_bitrate_limit_is_told_and_cut_to_it() {
    let sfu = Sfu::start("sfu-bitrate", "[rooms]\nmax_publisher_kbps = 100\n");
    let video_offer = synthetic_offer("sendonly")
        .replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
        )
        .replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:96 VP8/90000");
    let (s, _, answer) = sfu.offer("whip", "told", &video_offer);
    assert_eq!(s, 201, "{answer}");
    assert!(answer.contains("\r\nb=AS:100\r\n"), "{answer}");
    assert!(
        !answer.contains("b=TIAS"),
        "one b= line: str0m parsers take no more"
    );
    let seconds = 6;
    let out = sfu.client(
        "pair",
        "r1",
        &["--seconds", &seconds.to_string(), "--source", "testsrc"],
    );
    eprintln!("{out}");
    let over = sfu.metric(
        "estuary_sfu_dropped_packets_total",
        &["reason=\"over_bitrate\""],
    );
    assert!(over >= 100.0, "only {over} packets dropped over the limit");
    // What reached the watcher: at most the limit over the session (12,500 bytes a second,
    // a second's worth at once), generously bounded by 12 s of it; aiortc sends about four
    // times the limit.
    let sent = sfu.metric("estuary_sfu_forwarded_bytes_total", &["kind=\"video\""]);
    assert!(sent <= 12_500.0 * 12.0, "{sent} bytes of video forwarded");
    assert!(sent > 0.0);
    // Audio: 50 frames a second for the watcher's seconds, all of it (half is plenty).
    let audio = out["watcher"]["audio_frames"].as_u64().unwrap_or(0);
    assert!(audio >= 25 * seconds, "{out}");
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}
