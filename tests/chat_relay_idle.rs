//! A peer that vanished (it never answers the relay's pings) is closed with 4001 after
//! `[limits] idle_timeout`; a client that answers them stays.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_closes_silent_peers() {
    let relay = ChatRelay::start("chat-idle", "[limits]\nidle_timeout = \"1s\"\n");
    relay.run_scenario("idle", &[]);
}
