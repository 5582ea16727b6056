//! Bad tokens are refused before the upgrade (401/403); invalid JSON, unknown types, bad
//! fields, binary frames and sending to a group one is not in get error frames; an oversized
//! frame is closed with 1009 and a flood with 1008; the relay stays up for everyone else.
mod common;

use common::chat::ChatRelay;

#[test]
fn chat_relay_bad_input() {
    let relay = ChatRelay::start("chat-bad", "");
    let result = relay.run_scenario("bad-input", &[]);
    let p = relay.process();
    assert_eq!(
        p.metric(
            "estuary_chat_relay_frames_refused_total",
            &["code=\"flood\""]
        ),
        1.0
    );
    assert_eq!(
        p.metric(
            "estuary_chat_relay_frames_refused_total",
            &["code=\"too_big\""]
        ),
        1.0
    );
    assert!(
        p.metric(
            "estuary_chat_relay_tokens_refused_total",
            &["reason=\"expired\""]
        ) >= 1.0
    );
    assert!(result["flood"]["rate_limited"].as_u64().unwrap_or(0) >= 1);
}
