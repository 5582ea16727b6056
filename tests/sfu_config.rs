//! `estuary check-config` tells an SFU config from the others' and checks it as `estuary sfu`
//! does; a typo or a bad value is refused with its key's name, and the SFU refuses to start on
//! the same file with the same message.
mod common;

use std::process::Command;

use common::{TempDir, run};

fn estuary(args: &[&str], path: &std::path::Path) -> (bool, String) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .args(args)
        .arg(path));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_example_passes_check_config_and_typos_name_their_key() {
    let dir = TempDir::new("sfu-example");
    let text = include_str!("../docs/sfu.example.toml");
    let path = dir.path().join("sfu.toml");
    std::fs::write(&path, text).expect("write");
    let (ok, out) = estuary(&["check-config"], &path);
    assert!(ok && out.contains("a valid sfu config"), "{out}");

    std::fs::write(&path, text.replace("udp_queue =", "udp_queu =")).expect("write");
    let (ok, out) = estuary(&["check-config"], &path);
    assert!(
        !ok && out.contains("sfu config") && out.contains("media.udp_queu"),
        "{out}"
    );
    // The service refuses the same file with the same key.
    let (ok, out) = estuary(&["sfu", "--config"], &path);
    assert!(!ok && out.contains("media.udp_queu"), "{out}");

    std::fs::write(
        &path,
        text.replace("max_publishers = 25", "max_publishers = 500"),
    )
    .expect("write");
    let (ok, out) = estuary(&["check-config"], &path);
    assert!(!ok && out.contains("rooms.max_publishers"), "{out}");

    std::fs::write(
        &path,
        text.replace("public_ip = \"127.0.0.1\"", "public_ip = \"0.0.0.0\""),
    )
    .expect("write");
    let (ok, out) = estuary(&["check-config"], &path);
    assert!(!ok && out.contains("listen.public_ip"), "{out}");

    std::fs::write(&path, text.replace("\"h264\"]", "\"h265\"]")).expect("write");
    let (ok, out) = estuary(&["check-config"], &path);
    assert!(!ok && out.contains("media.codecs"), "{out}");

    // Out-of-range or mistyped values name their key, in check-config and at start.
    for (line, key, bads) in [
        (
            "max_audio_forwarded = 3",
            "rooms.max_audio_forwarded",
            &["0", "65", "\"three\""][..],
        ),
        (
            "max_publisher_kbps = 8000",
            "rooms.max_publisher_kbps",
            &["0", "31", "\"fast\""][..],
        ),
    ] {
        let name = line.split(" = ").next().unwrap_or_default();
        for bad in bads {
            std::fs::write(&path, text.replace(line, &format!("{name} = {bad}"))).expect("write");
            let (ok, out) = estuary(&["check-config"], &path);
            assert!(!ok && out.contains(key), "{bad}: {out}");
            let (ok, out) = estuary(&["sfu", "--config"], &path);
            assert!(!ok && out.contains(key), "{bad}: {out}");
        }
    }

    // ICE-TCP on the signaling port is refused before anything binds.
    std::fs::write(
        &path,
        text.replace("tcp = \"127.0.0.1:7301\"", "tcp = \"127.0.0.1:7300\""),
    )
    .expect("write");
    let (ok, out) = estuary(&["check-config"], &path);
    assert!(!ok && out.contains("listen.tcp"), "{out}");
}
