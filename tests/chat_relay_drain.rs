//! SIGTERM: every WebSocket gets a close frame 1001 and the relay exits cleanly.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_drain_closes_with_1001() {
    let mut relay = ChatRelay::start("chat-drain", "");
    let pid = relay.process().pid().to_string();
    relay.run_scenario("drain", &["--pid", &pid]);
    let mut p = relay.process.take().expect("running");
    assert!(
        p.wait_exit(std::time::Duration::from_secs(10)),
        "{}",
        p.log()
    );
}
