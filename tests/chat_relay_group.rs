//! A 100-member group (the default member limit): a message reaches every member in order,
//! each member's ack gives its own delivered tick; over the limit, outsiders and members who
//! left are refused with error frames.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_group_of_100() {
    let relay = ChatRelay::start("chat-group", "");
    let result = relay.run_scenario("group", &[]);
    eprintln!("fan-out to 99 members: {}", result["fanout_seconds"]);
    let p = relay.process();
    assert_eq!(
        p.metric(
            "estuary_chat_relay_receipts_total",
            &["state=\"delivered\""]
        ),
        297.0
    );
    assert_eq!(
        p.metric("estuary_chat_relay_messages_out_total", &[]),
        297.0
    );
    assert_eq!(
        p.metric("estuary_chat_relay_inbox_depth_messages", &[]),
        0.0
    );
}
