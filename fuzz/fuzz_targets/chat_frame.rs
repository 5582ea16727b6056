//! The chat relay's client frames as any WebSocket client could send them: each parsed as a
//! `ClientFrame`, then handled whole by the messaging core (`Relay::handle_input`) over a
//! store in memory, with alice (two devices) and bob connected. Never a panic.
//!
//! The input is a script, one step a line: `1`, `2` or `3` then a frame from that connection
//! (a binary frame when it is not UTF-8), `x` and a byte (which connection closes), `o` and a
//! byte (which connection opens again), `t` and a byte (seconds pass); any other line is a
//! frame from connection 1.
#![no_main]

use estuary_chat_relay::config::ChatLimits;
use estuary_chat_relay::relay::{ConnId, Input, Relay};
use estuary_chat_relay::store::SqliteStore;
use estuary_common::chat::ClientFrame;
use libfuzzer_sys::fuzz_target;

/// The devices of connections 1, 2 and 3.
const DEVICES: [(&str, &str); 3] = [("alice", "phone"), ("bob", "phone"), ("alice", "laptop")];

fn open(conn: ConnId) -> Input {
    let (user, device) = DEVICES[(conn as usize - 1) % DEVICES.len()];
    Input::Open {
        conn,
        user: user.to_owned(),
        device: device.to_owned(),
    }
}

fn frame(conn: ConnId, bytes: &[u8]) -> Input {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let _ = serde_json::from_str::<ClientFrame>(text);
            Input::Text {
                conn,
                text: text.to_owned(),
            }
        }
        Err(_) => Input::Binary { conn },
    }
}

/// Connection 1, 2 or 3 from a script byte.
fn which(b: Option<&u8>) -> ConnId {
    ConnId::from(b.copied().unwrap_or(0) % 3) + 1
}

fuzz_target!(|data: &[u8]| {
    let Ok(store) = SqliteStore::in_memory() else {
        return;
    };
    let mut relay = Relay::new(store, ChatLimits::default(), ());
    let mut now: u64 = 1_700_000_000_000;
    for conn in 1..=3 {
        relay.handle_input(now, open(conn));
    }
    for line in data.split(|b| *b == b'\n') {
        now += 10;
        let input = match line.split_first() {
            Some((b'1'..=b'3', rest)) => frame(ConnId::from(line[0] - b'0'), rest),
            Some((b'x', rest)) => Input::Closed {
                conn: which(rest.first()),
            },
            Some((b'o', rest)) => open(which(rest.first())),
            Some((b't', rest)) => {
                now += u64::from(rest.first().copied().unwrap_or(1)) * 1000;
                continue;
            }
            _ => frame(1, line),
        };
        relay.handle_input(now, input);
    }
    for conn in 1..=3 {
        relay.handle_input(now, Input::Closed { conn });
    }
});
