//! Each device of a user has its own inbox; the delivered tick comes once per user; a second connection of a device replaces the first.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_multi_device() {
    let relay = ChatRelay::start("chat-multi-device", "");
    relay.run_scenario("multi-device", &[]);
}
