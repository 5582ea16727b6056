//! What the relay said `sent` survives kill -9: after a restart on the same store the
//! recipient gets it, and a retry of the same client id is not a second message.
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::chat::ChatRelay;

#[test]
fn chat_relay_kill9_after_sent() {
    let mut relay = ChatRelay::start("chat-kill9", "");
    let mut sender = relay
        .scenario("kill9-send", &[])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(sender.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let sent: serde_json::Value = serde_json::from_str(&line).expect("sent ids");
    assert_eq!(sent["sent"].as_array().map(Vec::len), Some(3), "{line}");
    // The moment the last `sent` arrived: no drain, no flush, no goodbye.
    relay.process().signal("KILL");
    let mut dead = relay.process.take().expect("running");
    assert!(!dead.wait_exit(std::time::Duration::from_secs(5)));
    let _ = sender.wait();
    relay.restart();
    relay.run_scenario("kill9-receive", &["--expect", &sent["sent"].to_string()]);
    assert_eq!(
        relay
            .process()
            .metric("estuary_chat_relay_inbox_depth_messages", &[]),
        3.0,
        "the restarted relay counts the inbox it found"
    );
}
