//! A device that acked some of its inbox and reconnects gets only the rest, then live messages after it.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_reconnect() {
    let relay = ChatRelay::start("chat-reconnect", "");
    relay.run_scenario("reconnect", &[]);
}
