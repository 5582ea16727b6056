//! The offline push hook: a message stored for a user with no device connected anywhere
//! sends an event (no body) to the configured webhook, with its bearer token; a 503 is
//! retried; users online get none.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_pushes_for_offline_users() {
    let port = common::free_port();
    let relay = ChatRelay::start(
        "chat-push",
        &format!("[push]\nwebhook = \"http://127.0.0.1:{port}/push\"\ntoken = \"push-secret\"\n"),
    );
    let result = relay.run_scenario("push", &["--webhook-port", &port.to_string()]);
    assert_eq!(result["requests"], 3, "two events, the first retried once");
    let p = relay.process();
    assert_eq!(
        p.metric("estuary_chat_relay_push_events_total", &["result=\"sent\""]),
        2.0
    );
    assert_eq!(
        p.metric(
            "estuary_chat_relay_push_events_total",
            &["result=\"failed\""]
        ),
        0.0
    );
}
