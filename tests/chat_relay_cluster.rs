//! Two relays on one NATS JetStream log (a real `nats-server -js`): 1:1 messages, receipts and
//! a group cross relays; the second relay is killed with kill -9 mid-conversation and its
//! users, reconnecting to the first, get exactly what they had not acked; nothing a relay
//! acknowledged is lost. Restarted on its store, the killed relay catches up with the log and
//! serves again.
mod common;

use common::chat::{ChatRelay, Nats};

#[test]
fn chat_relays_share_a_log_and_survive_kill_9() {
    let nats = Nats::start("chat-cluster-nats");
    let a = ChatRelay::start_node("chat-cluster-a", "relay-a", "lab", &nats.cluster_toml());
    let mut b = ChatRelay::start_node("chat-cluster-b", "relay-b", "lab", &nats.cluster_toml());
    let pid = b.process().pid().to_string();
    let url_b = format!("ws://{}", b.addr);
    let result = a.run_scenario("cluster", &["--url2", &url_b, "--pid", &pid]);
    assert_eq!(result["ok"], true);
    if let Some(p) = b.process.as_mut() {
        assert!(
            !p.wait_exit(std::time::Duration::from_secs(5)),
            "killed, not exited"
        );
    }
    // Restarted on its store, the relay applies what it missed and follows the log again.
    b.restart();
    a.run_scenario("cluster-rejoin", &["--url2", &url_b]);
    assert_eq!(
        b.process()
            .metric("estuary_chat_relay_store_errors_total", &[]),
        0.0
    );
}
