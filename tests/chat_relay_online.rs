//! 1:1 with both users online: sent, delivered and read ticks, typing, ping, history and presence to subscribers.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_online() {
    let relay = ChatRelay::start("chat-online", "");
    relay.run_scenario("online", &[]);
}
