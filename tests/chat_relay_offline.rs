//! A recipient offline: everything is kept in its device's inbox and delivered once, in order, on reconnect; acked, it is gone.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_offline() {
    let relay = ChatRelay::start("chat-offline", "");
    relay.run_scenario("offline", &[]);
}
