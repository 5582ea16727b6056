//! `estuary check-config` tells a chat relay config from an edge's and checks it; the relay
//! refuses `[cluster]` (not implemented yet) and typos with the key's name.
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
        text.replace("/var/lib/estuary/chat-relay/chat.db", &store.display().to_string()),
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
fn cluster_is_refused_at_start_until_it_is_implemented() {
    let relay = ChatRelay::start("chat-cluster", "");
    let text = std::fs::read_to_string(relay.config()).expect("read")
        + "[cluster]\nnats = \"nats://127.0.0.1:4222\"\n";
    let path = relay.dir.path().join("cluster.toml");
    std::fs::write(&path, text).expect("write");
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("chat-relay")
        .arg("--config")
        .arg(&path));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not implemented"),
        "{err}"
    );
}
