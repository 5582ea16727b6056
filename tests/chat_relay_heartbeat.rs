//! With `[control_plane]` the relay registers as a `chat-relay` node, is polled up by the
//! monitor, and reports its open WebSockets as load.
mod common;

use std::time::Duration;

use common::chat::ChatRelay;
use common::cp_site::{ControlPlane, cred};

#[test]
fn chat_relay_registers_with_the_control_plane() {
    let cp = ControlPlane::new("chat-cp");
    let _cp_process = cp.start();
    let relay = ChatRelay::start(
        "chat-heartbeat",
        &format!(
            "[control_plane]\nurl = \"{}\"\ntoken = \"{}\"\ninterval = \"1s\"\n",
            cp.url(),
            cred("relay-test")
        ),
    );
    let node = cp.wait_node("relay-test", true, Duration::from_secs(20));
    assert_eq!(node["role"], "chat-relay");
    assert_eq!(node["site"], "lab");
    assert_eq!(node["addresses"]["http"], format!("http://{}", relay.addr));
}
