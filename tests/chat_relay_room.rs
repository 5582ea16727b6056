//! A live room with 2,000 members: one member stops reading and is closed with 4002 ("too
//! slow") once its send queue is full, while every other member goes on receiving every
//! message in order; the room forgets the dropped member.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_room_drops_a_slow_reader_and_keeps_the_others() {
    let relay = ChatRelay::start(
        "chat-room",
        "[limits]\nmax_connections_per_ip = 5000\nmax_connections = 5000\n[chat]\nsend_queue = 16\nmessages_per_second = 1000\nsocket_send_buffer = 4096\n",
    );
    let result = relay.run_scenario("room", &["--members", "2000", "--timeout", "240"]);
    eprintln!("room: {result}");
    let p = relay.process();
    assert_eq!(
        p.metric("estuary_chat_relay_slow_readers_closed_total", &[]),
        1.0,
        "only the slow reader was dropped"
    );
    assert_eq!(p.metric("estuary_chat_relay_rooms", &[]), 1.0);
}
