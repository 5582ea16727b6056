//! `estuary check-config` tells a chat relay config from an edge's and checks it; the relay
//! refuses typos with the key's name; a clustered relay refuses to start without its NATS or
//! on a lone relay's store.
mod common;

use std::process::Command;

use common::chat::ChatRelay;
use common::{TempDir, run};

fn check_config(path: &std::path::Path) -> (bool, String) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("check-config")
        .arg(path));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_example_passes_check_config_once_its_folder_exists() {
    let dir = TempDir::new("chat-example");
    let text = include_str!("../docs/chat-relay.example.toml");
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).expect("write");
    let (ok, out) = check_config(&path);
    assert!(!ok && out.contains("store.path"), "{out}");
    let store = dir.path().join("chat.db");
    std::fs::write(
        &path,
        text.replace(
            "/var/lib/estuary/chat-relay/chat.db",
            &store.display().to_string(),
        ),
    )
    .expect("write");
    let (ok, out) = check_config(&path);
    assert!(ok && out.contains("a valid chat-relay config"), "{out}");
    std::fs::write(
        &path,
        text.replace("/var/lib/estuary/chat-relay/chat.db", "chat.db")
            .replace("history_max =", "history_maxx ="),
    )
    .expect("write");
    let (ok, out) = check_config(&path);
    assert!(
        !ok && out.contains("chat-relay config") && out.contains("chat.history_maxx"),
        "{out}"
    );
}

#[test]
fn a_clustered_relay_needs_its_nats_and_a_store_of_its_own() {
    let mut relay = ChatRelay::start("chat-cluster-refused", "");
    relay.run_scenario("online", &[]);
    relay.process = None;
    let base = std::fs::read_to_string(relay.config()).expect("read");
    let start = |cluster: &str| {
        let path = relay.dir.path().join("cluster.toml");
        std::fs::write(&path, format!("{base}{cluster}")).expect("write");
        let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
            .arg("chat-relay")
            .arg("--config")
            .arg(&path));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Nobody listens there: a clear error naming the key, not a hang.
    let port = common::free_port();
    let err = start(&format!(
        "[cluster]\nnats = \"nats://127.0.0.1:{port}\"\ntimeout = \"1s\"\n"
    ));
    assert!(err.contains("cluster.nats"), "{err}");
    // A store that holds a lone relay's messages is not silently merged into a cluster.
    let nats = common::chat::Nats::start("chat-cluster-refused-nats");
    let err = start(&nats.cluster_toml());
    assert!(err.contains("ran without [cluster]"), "{err}");
}

#[test]
fn check_config_names_a_bad_media_key_of_the_relay_and_the_origin() {
    let dir = TempDir::new("chat-media-config");
    let store = dir.path().join("chat.db");
    let relay = include_str!("../docs/chat-relay.example.toml").replace(
        "/var/lib/estuary/chat-relay/chat.db",
        &store.display().to_string(),
    );
    let media = "[media]\norigin = \"http://127.0.0.1:8080\"\ncdn = \"http://127.0.0.1:8081\"\nupload_key = { kid = \"relay\", secret = \"00112233445566778899aabbccddeeff\" }\ncdn_key = { kid = \"k1\", secret = \"ffeeddccbbaa99887766554433221100\" }\n";
    let path = dir.path().join("relay.toml");
    for (extra, ok, needle) in [
        (media.to_owned(), true, "a valid chat-relay config"),
        (
            media.replace("ffeeddccbbaa99887766554433221100", "ffee"),
            false,
            "media.cdn_key.secret",
        ),
        (
            format!("{media}mime_types = [\"application/x-msdownload\"]\n"),
            false,
            "media.mime_types",
        ),
        (format!("{media}upload_tll = \"1m\"\n"), false, "upload_tll"),
    ] {
        std::fs::write(&path, format!("{relay}\n{extra}")).expect("write");
        let (passed, out) = check_config(&path);
        assert!(passed == ok && out.contains(needle), "{extra}\n{out}");
    }
    // The origin's side of the shared secret.
    let origin = include_str!("../docs/origin.example.toml").replace(
        "# [auth.upload_keys]",
        "[auth.upload_keys]\nrelay = \"0011\"\n# [auth.upload_keys]",
    );
    let path = dir.path().join("origin.toml");
    std::fs::write(&path, origin).expect("write");
    let (passed, out) = check_config(&path);
    assert!(!passed && out.contains("auth.upload_keys.relay"), "{out}");
}
