//! Media through the CDN: a relay with `[media]` hands out an upload credential for the real
//! origin and a signed edge URL; a real JPEG goes up over TUS (Python, plain HTTP), the
//! origin checks and publishes it as is, alice sends it, and bob's signed URL fetches the
//! same bytes from a real edge that fills from the origin. Then every misuse: a larger
//! upload, another asset's credential, a reused or expired credential, bytes of another
//! type, a media URL the relay did not issue, a type or size the relay does not allow.
mod common;

use common::chat::ChatRelay;
use common::origin_site::OriginSite;
use common::{KEY2_HEX, cached_site};

/// The secret relays and the origin share for upload credentials.
const UPLOAD_KEY_HEX: &str = "5a5b5c5d5e5f606162636465666768696a6b6c6d6e6f70717273747576777879";

#[test]
fn chat_relay_media() {
    let mut origin = OriginSite::new("chat-media-origin");
    origin.extra = format!("[auth.upload_keys]\nrelay-media = \"{UPLOAD_KEY_HEX}\"\n");
    let _origin = origin.start();
    let mut edge = cached_site("chat-media-edge", &[origin.url("")], "");
    // Everything under /v/ needs a token, as in production.
    edge.protected = vec!["/v/".into()];
    let _edge = edge.start();
    let relay = ChatRelay::start(
        "chat-media",
        &format!(
            "[media]\norigin = \"{}\"\ncdn = \"{}\"\nupload_key = {{ kid = \"relay-media\", secret = \"{UPLOAD_KEY_HEX}\" }}\ncdn_key = {{ kid = \"k2\", secret = \"{KEY2_HEX}\" }}\nmax_size = \"1MiB\"\n",
            origin.url(""),
            edge.url(""),
        ),
    );
    let jpeg = relay.dir.path().join("photo.jpg");
    common::media::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240",
        "-frames:v",
        "1",
        jpeg.to_str().expect("path"),
    ]);
    let result = relay.run_scenario(
        "media",
        &[
            "--file",
            jpeg.to_str().expect("path"),
            "--upload-key",
            UPLOAD_KEY_HEX,
            "--max-size",
            &(1u64 << 20).to_string(),
        ],
    );
    assert_eq!(result["ok"], true, "{result}");
    assert!(
        relay
            .process()
            .metric("estuary_chat_relay_media_uploads_total", &[])
            >= 4.0
    );
    assert!(
        relay
            .process()
            .metric("estuary_chat_relay_frames_refused_total", &["bad_media"])
            >= 7.0
    );
}
