//! Simulcast through the SFU, with real Chromium on both ends and a real bandwidth cap.
//!
//! A network namespace joined to the root one by a veth pair (addresses 10.77.n.0/30, names
//! unique per run, removed on drop) holds a subscriber: Chromium on the meeting page with its
//! camera off. The SFU listens on the root side's address; a publisher, Chromium on the
//! meeting page sending three simulcast layers (q/h/f, a quarter, half and full 1280x720),
//! runs in the root namespace. The test reads both pages' `getStats()` once a second
//! (tests/clients/simulcast_page.mjs) and the SFU's `/metrics`:
//! 1. the subscriber reaches the top layer (decoded frame height 720), and the two layers
//!    nobody receives are paused at the publisher (dynacast: their received counters stop);
//! 2. a `tbf` qdisc caps the SFU-to-subscriber direction at 300 kbit/s: the SFU switches the
//!    subscriber down (a `down` switch, a decoded height of at most 360) and it keeps
//!    decoding;
//! 3. the cap is removed (and checked gone): the subscriber comes back to 720;
//! 4. it asks for at most 360 lines (`subscribe` with `max_height`): it gets the half layer.
//!
//! Needs root (namespaces, tc); without it the test fails, never skips. netem is not in
//! this kernel; tbf is.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sfu::{Sfu, room_token};

/// Runs a command that must succeed.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace and a veth pair into it; both removed on drop.
struct Netns {
    ns: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Self {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test needs root (network namespaces and tc)"
        );
        let pid = std::process::id();
        let n = pid % 250 + 1;
        let ns = format!("estsc{pid}");
        let host_if = format!("esc{}h", pid % 100_000);
        let peer_if = format!("esc{}s", pid % 100_000);
        let host_ip = format!("10.77.{n}.1");
        let me = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        sh(&["ip", "link", "set", &peer_if, "netns", &ns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.77.{n}.2/30"),
            "dev",
            &peer_if,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &peer_if, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        me
    }

    fn qdiscs(&self) -> String {
        let out = Command::new("tc")
            .args(["qdisc", "show", "dev", &self.host_if])
            .output()
            .expect("tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A page in Chromium (tests/clients/simulcast_page.mjs) and the stats lines it printed.
struct Page {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Page {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let keep = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    common::lock(&keep).push(v);
                }
            }
        });
        Self { child, lines }
    }

    /// Sends the script a command line.
    fn command(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("command");
        stdin.flush().expect("flush");
    }

    fn last(&self) -> serde_json::Value {
        common::lock(&self.lines)
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the latest stats satisfy `ok` (polling; a generous deadline).
    fn wait(&self, what: &str, within: Duration, ok: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let v = self.last();
            let page_errors = v["pageErrors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["type"] == "page_error"));
            assert!(
                v["problems"].as_array().is_none_or(|p| p.is_empty()) && !page_errors,
                "page problems: {v}"
            );
            if ok(&v) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out: {what}; last: {v}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // Closing stdin makes the script close Chromium and exit.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two Chromium tests run one after the other: four browsers at once on a 2-core machine
/// would starve the capped subscriber's estimate.
static ONE_CHROMIUM_TEST_AT_A_TIME: Mutex<()> = Mutex::new(());

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/simulcast_page.mjs"
);

/// The subscriber's inbound video: (frame height, frames decoded).
fn inbound(v: &serde_json::Value) -> (u64, u64) {
    v["inbound"]
        .as_array()
        .and_then(|a| a.first())
        .map(|s| {
            (
                s["frameHeight"].as_u64().unwrap_or(0),
                s["framesDecoded"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

#[test]
fn a_capped_subscriber_moves_down_a_layer_and_back_up() {
    let _one = common::lock(&ONE_CHROMIUM_TEST_AT_A_TIME);
    let net = Netns::new();
    let sfu = Sfu::start_on("sfu-simulcast", &net.host_ip, "");
    let url = |name: &str, extra: &str| {
        format!(
            "{}/rooms/sc?name={name}&token={}{extra}",
            sfu.url(),
            room_token("sc")
        )
    };
    let mut cmd = Command::new("node");
    cmd.args([SCRIPT, "publish", &url("pub", "")]);
    let publisher = Page::start(cmd);
    publisher.wait("the publisher joins", Duration::from_secs(60), |v| {
        v["joined"] == true && v["outbound"].as_array().is_some_and(|a| a.len() == 3)
    });

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns, "node", SCRIPT, "subscribe"])
        .arg(url("sub", "&camera=off&fit=off"));
    let mut subscriber = Page::start(cmd);

    // 1. The top layer, decoded; the other two paused at the publisher.
    subscriber.wait(
        "the subscriber decodes the top layer (720 lines)",
        Duration::from_secs(150),
        |v| {
            let (h, n) = inbound(v);
            h == 720 && n > 0
        },
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sfu.metric("estuary_sfu_layers_paused", &[]) != 2.0 {
        assert!(
            Instant::now() < deadline,
            "two layers paused; publisher: {}",
            publisher.last()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    publisher.wait(
        "the publisher's page sends only the top layer",
        Duration::from_secs(30),
        |v| v["activeLayers"] == serde_json::json!(["f"]),
    );
    std::thread::sleep(Duration::from_secs(2));
    let layer = |l: &str| {
        sfu.metric(
            "estuary_sfu_layer_received_packets_total",
            &[&format!("layer=\"{l}\"")],
        )
    };
    // The subscriber may move between h and f meanwhile (its estimate is live), never to q
    // on this uncapped link: q, which nobody receives, stops arriving; the others do not.
    // On a loaded machine the live estimate can dip far enough for the subscriber to take q
    // for a while (then q is wanted and arrives, rightly): up to six 4-second windows are
    // watched, and in one of them q must stop while the upper layers go on.
    let upper = || layer("1") + layer("2");
    let mut seen = Vec::new();
    let paused = (0..6).any(|_| {
        let (q0, u0) = (layer("0"), upper());
        std::thread::sleep(Duration::from_secs(4));
        let (q1, u1) = (layer("0"), upper());
        seen.push(format!("q {q0} -> {q1}, upper {u0} -> {u1}"));
        q1 - q0 < 5.0 && u1 - u0 > 100.0
    });
    assert!(
        paused,
        "the unwatched lowest layer kept arriving or the upper ones did not, in every window ({seen:?}); publisher: {}",
        publisher.last()
    );

    // 2. The cap: down a layer, still decoding.
    let down0 = sfu.metric("estuary_sfu_layer_switches_total", &["direction=\"down\""]);
    sh(&[
        "tc",
        "qdisc",
        "add",
        "dev",
        &net.host_if,
        "root",
        "tbf",
        "rate",
        "300kbit",
        "burst",
        "16kb",
        "latency",
        "50ms",
    ]);
    assert!(net.qdiscs().contains("tbf"), "{}", net.qdiscs());
    subscriber.wait(
        "the capped subscriber is on a lower layer",
        Duration::from_secs(120),
        |v| {
            let (h, n) = inbound(v);
            h > 0 && h <= 360 && n > 0
        },
    );
    let down = sfu.wait_metric(
        "estuary_sfu_layer_switches_total",
        &["direction=\"down\""],
        |v| v > down0,
    );
    assert!(
        down > down0,
        "the SFU switched it down; subscriber: {}; publisher: {}",
        subscriber.last(),
        publisher.last()
    );
    let (_, decoded) = inbound(&subscriber.last());
    subscriber.wait(
        "the capped subscriber keeps decoding",
        Duration::from_secs(30),
        |v| inbound(v).1 > decoded + 20,
    );

    // 3. The cap goes: back to the top.
    let up0 = sfu.metric("estuary_sfu_layer_switches_total", &["direction=\"up\""]);
    sh(&["tc", "qdisc", "del", "dev", &net.host_if, "root"]);
    assert!(!net.qdiscs().contains("tbf"), "{}", net.qdiscs());
    subscriber.wait(
        "the uncapped subscriber is back on the top layer",
        Duration::from_secs(180),
        |v| inbound(v).0 == 720,
    );
    assert!(sfu.metric("estuary_sfu_layer_switches_total", &["direction=\"up\""]) > up0);

    // 4. The subscriber asks for at most 360 lines: the half-size layer.
    subscriber.command("max_height 360");
    subscriber.wait(
        "the subscriber gets the layer of its requested height",
        Duration::from_secs(60),
        |v| inbound(v).0 == 360,
    );

    // Chromium did send three layers (each at some point), of three sizes.
    let p = publisher.last();
    let mut heights: Vec<u64> = p["outbound"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|o| o["bytesSent"].as_u64().unwrap_or(0) > 0 && !o["rid"].is_null())
                .map(|o| o["frameHeight"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    heights.sort();
    assert_eq!(heights.len(), 3, "three rids sent: {p}");
    for l in ["0", "1", "2"] {
        assert!(layer(l) > 0.0, "layer {l} reached the SFU");
    }
    assert!(sfu.metric("estuary_sfu_subscriber_bandwidth_bps_count", &[]) > 0.0);
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
    eprintln!("publisher: {p}\nsubscriber: {}", subscriber.last());
}

/// A Chromium publisher of three simulcast layers (joined, its layers reported) and a
/// Chromium subscriber with its camera off, both on loopback in `room` of `sfu`.
fn pages_on_loopback(sfu: &Sfu, room: &str) -> (Page, Page) {
    let url = |name: &str, extra: &str| {
        format!(
            "{}/rooms/{room}?name={name}&token={}{extra}",
            sfu.url(),
            room_token(room)
        )
    };
    let mut cmd = Command::new("node");
    cmd.args([SCRIPT, "publish", &url("pub", "")]);
    let publisher = Page::start(cmd);
    publisher.wait("the publisher joins", Duration::from_secs(60), |v| {
        v["joined"] == true && v["outbound"].as_array().is_some_and(|a| a.len() == 3)
    });
    let mut cmd = Command::new("node");
    cmd.args([SCRIPT, "subscribe", &url("sub", "&camera=off&fit=off")]);
    (publisher, Page::start(cmd))
}

/// Overload sheds simulcast layers before it drops calls: with `[media] shed_layers_above`
/// set so low that the shard counts as overloaded from its first media, every room sheds its
/// two upper layers (`estuary_sfu_shed_layers` 2): a subscriber that would take the top layer
/// (720 lines, as the test above shows on an open link) decodes the lowest (180 lines), and
/// both calls go on. Publisher and subscriber are Chromium on loopback.
#[test]
fn an_overloaded_sfu_sheds_upper_layers_and_keeps_its_calls() {
    let _one = common::lock(&ONE_CHROMIUM_TEST_AT_A_TIME);
    let sfu = Sfu::start(
        "sfu-shed",
        "[media]\nshed_layers_above = 0.000001\nrestore_layers_below = 0.0000005\n",
    );
    let (publisher, subscriber) = pages_on_loopback(&sfu, "shed");
    subscriber.wait(
        "the subscriber decodes the publisher",
        Duration::from_secs(120),
        |v| inbound(v).1 > 0,
    );
    let shed = sfu.wait_metric("estuary_sfu_shed_layers", &["shard=\"0\""], |v| v == 2.0);
    assert_eq!(shed, 2.0, "the shard shed two layers");
    // The lowest layer (a quarter of 720 lines), and frames keep coming.
    subscriber.wait(
        "the subscriber is on the lowest layer",
        Duration::from_secs(60),
        |v| {
            let (h, n) = inbound(v);
            h > 0 && h <= 180 && n > 0
        },
    );
    let (_, decoded) = inbound(&subscriber.last());
    subscriber.wait(
        "the subscriber keeps decoding the lowest layer",
        Duration::from_secs(30),
        |v| {
            let (h, n) = inbound(v);
            h <= 180 && n > decoded + 20
        },
    );
    // Both calls stand.
    assert_eq!(
        sfu.metric("estuary_sfu_peers", &["kind=\"meeting\""]),
        2.0,
        "both participants are still in the call"
    );
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
    drop(publisher);
    drop(subscriber);
}

/// The publisher's bitrate limit reaches a real browser: with `[rooms] max_publisher_kbps =
/// 300` in the answer (`b=AS:300`), the meeting page in Chromium keeps its simulcast video
/// (all layers together) to it, so the SFU's policer has next to nothing to drop; the
/// control, with the default limit (8000), shows the same page sending well above 300 kbit/s.
/// (Chromium itself does not apply `b=AS` to simulcast: the page sets each layer's
/// `maxBitrate` from it; without that, the first run of this test measured 666 kbit/s sent
/// and 298 of 395 packets dropped.)
#[test]
fn a_chromium_publisher_keeps_to_the_bitrate_limit_of_the_answer() {
    let _one = common::lock(&ONE_CHROMIUM_TEST_AT_A_TIME);
    let sent = |extra: &str, name: &str| -> (f64, f64, f64, serde_json::Value) {
        let sfu = Sfu::start(name, extra);
        // The subscriber takes the top layer whatever its bandwidth (the SFU runs without
        // a bandwidth estimator here), so that layer is the one the page sends throughout.
        let (publisher, subscriber) = pages_on_loopback(&sfu, "bw");
        publisher.wait(
            "the page sends its top layer",
            Duration::from_secs(120),
            |v| {
                v["outbound"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|o| o["rid"] == "f" && o["bytesSent"].as_u64().unwrap_or(0) > 0)
                })
            },
        );
        // The encoder's rate settles; then 8 s are measured.
        std::thread::sleep(Duration::from_secs(6));
        let total = |v: &serde_json::Value| -> f64 {
            v["outbound"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| {
                            (o["bytesSent"].as_u64().unwrap_or(0)
                                + o["headerBytesSent"].as_u64().unwrap_or(0))
                                as f64
                        })
                        .sum()
                })
                .unwrap_or(0.0)
        };
        let (v0, t0) = (publisher.last(), std::time::Instant::now());
        assert_eq!(
            v0["activeLayers"],
            serde_json::json!(["f"]),
            "the top layer is the one sent: {v0}"
        );
        let received0 = sfu.metric("estuary_sfu_received_packets_total", &["kind=\"video\""]);
        let dropped0 = sfu.metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"over_bitrate\""],
        );
        std::thread::sleep(Duration::from_secs(8));
        let v1 = publisher.last();
        let kbps = (total(&v1) - total(&v0)) * 8.0 / 1000.0 / t0.elapsed().as_secs_f64();
        let received =
            sfu.metric("estuary_sfu_received_packets_total", &["kind=\"video\""]) - received0;
        let dropped = sfu.metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"over_bitrate\""],
        ) - dropped0;
        drop(subscriber);
        (kbps, received, dropped, v1)
    };
    let (kbps, received, dropped, last) = sent(
        "[media]\nbwe_initial_bps = 0\n[rooms]\nmax_publisher_kbps = 300\n",
        "sfu-bitrate-limit",
    );
    eprintln!("limit 300: {kbps:.0} kbit/s, {dropped} of {received} dropped; {last}");
    assert!(received > 100.0, "video arrived: {last}");
    assert!(
        kbps <= 300.0 * 1.1,
        "Chromium sent {kbps:.0} kbit/s against a limit of 300: {last}"
    );
    assert!(
        dropped <= received * 0.02,
        "the policer dropped {dropped} of {received}"
    );
    let (kbps, _, dropped, last) = sent("[media]\nbwe_initial_bps = 0\n", "sfu-bitrate-default");
    eprintln!("default limit: {kbps:.0} kbit/s; {last}");
    assert!(
        kbps > 450.0,
        "the control sends more than the limit above: {kbps:.0} kbit/s: {last}"
    );
    assert_eq!(dropped, 0.0);
}

/// H.264 simulcast (an SFU answering H.264 only, so Chromium encodes its three layers with
/// OpenH264, as Safari would with its own encoder): the SFU reads each layer's height from
/// the sequence parameter sets of its keyframes, so a subscriber asking for at most 360
/// lines gets the half-size layer; without heights it would keep the top one. (No bandwidth
/// estimator here: the layer follows the requested height alone.)
#[test]
fn an_h264_simulcast_subscriber_gets_the_layer_of_its_requested_height() {
    let _one = common::lock(&ONE_CHROMIUM_TEST_AT_A_TIME);
    let sfu = Sfu::start(
        "sfu-h264-simulcast",
        "[media]\ncodecs = [\"opus\", \"h264\"]\nbwe_initial_bps = 0\n",
    );
    let (_publisher, mut subscriber) = pages_on_loopback(&sfu, "h264");
    subscriber.wait(
        "the subscriber decodes the top H.264 layer",
        Duration::from_secs(120),
        |v| {
            let (h, n) = inbound(v);
            h == 720 && n > 0 && v["inbound"][0]["codec"] == "video/H264"
        },
    );
    subscriber.command("max_height 360");
    subscriber.wait(
        "the subscriber gets the layer of its requested height",
        Duration::from_secs(60),
        |v| inbound(v).0 == 360 && v["inbound"][0]["codec"] == "video/H264",
    );
    let (_, decoded) = inbound(&subscriber.last());
    subscriber.wait("and keeps decoding it", Duration::from_secs(30), |v| {
        let (h, n) = inbound(v);
        h == 360 && n > decoded + 20
    });
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}

/// A WHIP offer with three rids (as OBS or a browser's WHIP client sends) is answered with
/// the SFU receiving them as simulcast. Signaling only: no WHIP client here sends simulcast
/// media (aiortc cannot).
#[test]
fn a_whip_offer_with_simulcast_rids_is_answered_with_them() {
    let sfu = Sfu::start("sfu-simulcast-whip", "");
    let fingerprint = vec!["AB"; 32].join(":");
    let offer = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
         a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
         a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=sendonly\r\na=rtcp-mux\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
         a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
         a=rtpmap:96 VP8/90000\r\na=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n\
         a=simulcast:send q;h;f\r\n"
    );
    let (status, _, answer) = sfu.offer("whip", "w1", &offer);
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer.contains("a=simulcast:recv q;h;f"),
        "the answer receives the three layers: {answer}"
    );
}
