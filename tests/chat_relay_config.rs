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
