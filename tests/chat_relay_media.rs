//! Media through the CDN: a relay with `[media]` hands out an upload credential for the real
//! origin and a signed edge URL; a real JPEG goes up over TUS (Python, plain HTTP), the
//! origin checks and publishes it as is, alice sends it, and bob's signed URL fetches the
//! same bytes from a real edge that fills from the origin. Then every misuse: a larger
//! upload, another asset's credential, a reused or expired credential, bytes of another
//! type, a media URL the relay did not issue, a type or size the relay does not allow.
mod common;

use common::chat::{ChatRelay, MediaSites, UPLOAD_KEY_HEX, test_jpeg};

#[test]
fn chat_relay_media() {
    let sites = MediaSites::start("chat-media");
    let relay = ChatRelay::start("chat-media", &sites.relay_toml("max_size = \"1MiB\"\n"));
    let jpeg = relay.dir.path().join("photo.jpg");
    test_jpeg(&jpeg, "320x240");
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
