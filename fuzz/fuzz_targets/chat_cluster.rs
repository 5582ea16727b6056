//! What the other relays of a chat cluster hand a relay, as a hostile relay (or anyone with
//! the cluster's NATS credential) could write it: entries of the shared log (JSON, as the
//! follower reads them off JetStream; invalid ones are skipped there, as here), applied in
//! order to the replica, and signals (JSON, as read off the signal subject), handled by the
//! messaging core, between frames of the relay's own clients. Never a panic; the log is
//! applied to its end (no entry stops it).
//!
//! The input is a script, one step a line: `l` then a log entry, `s` then a signal, `t` and a
//! byte (seconds pass); any other line is a frame from connection 1 (alice) or, after `2`,
//! connection 2 (bob).
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use estuary_chat_relay::config::ChatLimits;
use estuary_chat_relay::relay::{Input, Relay};
use estuary_chat_relay::store::replicated::Log;
use estuary_chat_relay::store::{ReplicatedStore, SqliteStore, StoreResult};
use estuary_common::chat::{LogEntry, Signal};
use libfuzzer_sys::fuzz_target;

/// The shared log in memory: the relay's own appends and the hostile ones, in one order.
#[derive(Clone, Default)]
struct VecLog {
    entries: Rc<RefCell<Vec<LogEntry>>>,
    read: usize,
}

impl Log for VecLog {
    fn append(&mut self, entry: &LogEntry) -> StoreResult<u64> {
        let mut entries = self.entries.borrow_mut();
        entries.push(entry.clone());
        Ok(entries.len() as u64)
    }

    fn next(&mut self, _wait: Duration) -> StoreResult<Option<(u64, LogEntry)>> {
        let next = self.entries.borrow().get(self.read).cloned();
        if next.is_some() {
            self.read += 1;
        }
        Ok(next.map(|e| (self.read as u64, e)))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(local) = SqliteStore::in_memory() else {
        return;
    };
    let log = VecLog::default();
    let Ok(store) = ReplicatedStore::new(local, log.clone(), "CHAT", Duration::from_millis(10))
    else {
        return;
    };
    let mut relay = Relay::new(store, ChatLimits::default(), ()).in_cluster("a");
    let mut now: u64 = 1_700_000_000_000;
    for (conn, user) in [(1, "alice"), (2, "bob")] {
        relay.handle_input(
            now,
            Input::Open {
                conn,
                user: user.to_owned(),
                device: "phone".to_owned(),
            },
        );
    }
    let mut hostile = log.clone();
    for line in data.split(|b| *b == b'\n') {
        now += 10;
        let input = match line.split_first() {
            Some((b'l', rest)) => {
                if let Ok(entry) = serde_json::from_slice::<LogEntry>(rest) {
                    let _ = hostile.append(&entry);
                }
                Input::LogAdvanced
            }
            Some((b's', rest)) => match serde_json::from_slice::<Signal>(rest) {
                Ok(signal) => Input::Signal(signal),
                Err(_) => continue,
            },
            Some((b't', rest)) => {
                now += u64::from(rest.first().copied().unwrap_or(1)) * 1_000;
                Input::Tick
            }
            Some((b'2', rest)) => Input::Text {
                conn: 2,
                text: String::from_utf8_lossy(rest).into_owned(),
            },
            _ => Input::Text {
                conn: 1,
                text: String::from_utf8_lossy(line).into_owned(),
            },
        };
        relay.handle_input(now, input);
    }
    let applied = relay.store_mut().applied();
    assert_eq!(
        applied,
        log.entries.borrow().len() as u64,
        "the log was not applied to its end"
    );
});
